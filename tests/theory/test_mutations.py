"""Mutation tests: the checks behind ``hessbatch theory`` must FAIL when the implementation is
wrong. Each test applies one bug by monkeypatching (never by editing a kernel) and expects the
check that is meant to catch it to say FAIL; the true implementation passes the same checks
(tests/theory/test_cli_theory.py and test_controls.py). The full-size runs of the command under
every mutation are in benchmarks/theory_mutations.py and docs/results.md.

Which check catches what:

* the sharp logistic regime (exact gaps on a balanced one-row instance, tight by construction):
  every bug in the bound's arithmetic, the constants and the condition, and the kernel's step
  and batch (its Monte-Carlo runs must agree with the exact gaps);
* the second-order model check on mushroom from theta*: the kernel's step and a biased gradient;
* least squares, exact recursion against the kernel (default since issue 23): step and batch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessbatch import theory as thm
from hessbatch.convex import LeastSquares, LogisticRegression, least_squares_check
from hessbatch.convex import _montecarlo as mcm
from hessbatch.convex import _theory_check as tc
from hessbatch.convex._sharp_logistic import BalancedRow


# ---- the mutations -----------------------------------------------------------------------------


def _kernel(monkeypatch, *, step=1.0, batch=0, bias=0.0):
    """The Monte-Carlo kernel with its step times ``step``, ``batch`` rows fewer per update, or
    a residual bias (the targets shifted, the losses still taken on the true targets)."""
    real = tc.sgd_runs
    real_loss = mcm._full_loss_np

    def mutated(X, y, **kw):
        kw["step_sizes"] = np.asarray(kw["step_sizes"], dtype=np.float64) * step
        kw["batch_sizes"] = np.asarray(kw["batch_sizes"]) - batch
        if not bias:
            return real(X, y, **kw)
        with monkeypatch.context() as m:
            m.setattr(mcm, "_check_labels", lambda y_, kind: None)
            m.setattr(mcm, "_full_loss_np",
                      lambda X_, y_, lam, kind, th: real_loss(X_, np.asarray(y, float), lam,
                                                              kind, th))
            # slope = p - (y - bias) = p - y + bias
            return real(X, np.asarray(y, dtype=np.float64) - bias, **kw)

    monkeypatch.setattr(tc, "sgd_runs", mutated)


def _exponent(monkeypatch, p):
    """The bound's contraction prod (1 - b eta0 c)^p instead of ^1."""
    def bounds(L, c, M, eta0, gap0, batches):
        g = eta0 * L * M / (2.0 * c)
        with np.errstate(all="ignore"):
            prod = np.concatenate(([1.0], np.cumprod((1.0 - batches * eta0 * c) ** p)))
            return prod * (gap0 - g) + g
    monkeypatch.setattr(tc, "_np_bounds", bounds)


def _condition(monkeypatch, factor=2.0):
    real = thm.max_eta0
    monkeypatch.setattr(thm, "max_eta0", lambda *a, **kw: factor * real(*a, **kw))


def _constant(monkeypatch, name, factor):
    """Every problem's constants with ``name`` divided by ``factor`` (L: eta0 follows)."""
    for cls in (LogisticRegression, LeastSquares, BalancedRow):
        real = cls.constants

        def wrong(self, *a, real=real, **kw):
            k = real(self, *a, **kw)
            d = k.to_dict()
            d[name] /= factor
            return thm.Constants(**d)
        monkeypatch.setattr(cls, "constants", wrong)


# ---- the sharp logistic regime ---------------------------------------------------------------


def test_the_sharp_regime_passes_with_the_truth_and_says_how_sharp():
    rep = tc.sharp_logistic_check(runs=10_000)
    assert rep["passed"] and not rep["failures"]
    k = rep["constants"]
    assert k["M"] == 5.5 and k["c"] == 11.0 and k["L"] == pytest.approx(16.5, rel=1e-12)
    # the noise term is tight at update 1 from theta*: bound / exact gap = 1 + O(alpha)
    assert 1.0 < rep["regimes"]["optimum"]["bound_over_gap"][0] < 1.01
    assert all(rep["regimes"][r]["mc_agrees"] == [True] * 6 for r in ("optimum", "flattest"))
    assert {c["name"]: c["verdict"] for c in rep["controls"]} == {
        "M=0": "FAIL", "M/2": "FAIL", "M/1.2": "FAIL", "c*2": "FAIL", "L/2": "FAIL",
        "L/1.2": "FAIL"}
    # both sides pinned: M and L (through the condition) detected from 0.25 % on, c from
    # f = 2 - alpha c = 1.467 (exact arithmetic of the first update along v)
    for const in ("M", "L"):
        assert 1.0 < rep["sensitivity"][const]["factor"] < 1.01
    assert rep["sensitivity"]["c"]["factor"] == pytest.approx(2 - 4 * rep["eta0"] * 11.0,
                                                              rel=2e-3)


@pytest.mark.parametrize("mutation", [
    "exponent 2", "exponent 1/2", "condition x2", "M/4.7", "L/10"])
def test_the_sharp_regime_fails_every_bug_of_the_bound(monkeypatch, mutation):
    {"exponent 2": lambda: _exponent(monkeypatch, 2.0),
     "exponent 1/2": lambda: _exponent(monkeypatch, 0.5),
     "condition x2": lambda: _condition(monkeypatch, 2.0),
     "M/4.7": lambda: _constant(monkeypatch, "M", 4.7),
     "L/10": lambda: _constant(monkeypatch, "L", 10.0)}[mutation]()
    rep = tc.sharp_logistic_check(runs=0)
    assert not rep["passed"] and rep["failures"]


@pytest.mark.parametrize("mutation", ["step x1.1", "step x2", "batch B-1"])
def test_the_sharp_regime_fails_every_bug_of_the_kernel_step_and_batch(monkeypatch, mutation):
    {"step x1.1": lambda: _kernel(monkeypatch, step=1.1),
     "step x2": lambda: _kernel(monkeypatch, step=2.0),
     "batch B-1": lambda: _kernel(monkeypatch, batch=1)}[mutation]()
    rep = tc.sharp_logistic_check(runs=10_000)
    assert not rep["passed"]
    assert any("disagrees with the exact gap" in f for f in rep["failures"])


def test_a_contradiction_in_the_constants_is_a_fail_with_its_reason(monkeypatch):
    _constant(monkeypatch, "L", 10.0)          # L = 1.65 < c = 11: no function has that
    rep = tc.sharp_logistic_check(runs=0)
    assert not rep["passed"] and "contradict" in rep["failures"][0]


# ---- the second-order model check on mushroom -------------------------------------------------


@pytest.fixture(scope="module")
def mushroom_opt():
    from hessbatch import SchedulerConfig
    from hessbatch.convex import load_mushroom
    ds = load_mushroom(seed=0)
    model = LogisticRegression(ds.X_train, ds.y_train, 0.1)
    sol = model.solve()
    eta0 = thm.max_eta0(model.constants(), 1600)
    sch = thm.scheduler_batches(SchedulerConfig(method="bl", lr=100 * eta0, batch_size=100,
                                                samples_per_epoch=ds.X_train.shape[0],
                                                epochs=1))
    return model, np.asarray(sol.theta), float(sol.f_star), eta0, sch


def _model_check(mushroom_opt, runs=600):
    """The model check of mushroom_check on SGD's first epoch from theta* (600 runs, the
    checkpoints where the prediction moves most), through the same functions."""
    model, theta, f_star, eta0, sch = mushroom_opt
    cps = [0, 1, 2, 4, 8, 16, 32, 64, sch.updates]
    losses = tc._monte_carlo(model.X, model.y, "logistic", 0.1, sch, eta0, cps, runs, 0, None,
                             None, "sgd", theta0=theta)
    return tc._second_order_check(model, theta, f_star, eta0, {"sgd": sch}, {"sgd": cps},
                                  {"sgd": losses}, 0.999)


def test_the_model_check_passes_the_true_kernel_and_fails_its_own_controls(mushroom_opt):
    so = _model_check(mushroom_opt)
    assert so["passed"] and so["controls_fail"]
    r = so["schedules"]["sgd"]
    assert abs(r["ratio"] - 1) <= r["allowed"] and r["allowed"] < 0.13
    # the controls fail in the direction of their error: a larger predicted gap, ratio below 1
    for c in so["controls"]:
        v = c["schedules"]["sgd"]
        assert v["ratio"] < 1 - v["allowed"]


@pytest.mark.parametrize("mutation", ["step x1.1", "bias +0.01"])
def test_the_model_check_fails_a_wrong_step_and_a_biased_gradient(monkeypatch, mushroom_opt,
                                                                  mutation):
    if mutation == "step x1.1":
        _kernel(monkeypatch, step=1.1)
    else:
        _kernel(monkeypatch, bias=0.01)
    so = _model_check(mushroom_opt)
    r = so["schedules"]["sgd"]
    assert not so["passed"] and r["ratio"] > 1 + r["allowed"]


# ---- least squares: the kernel against the exact recursion, by default -------------------------


@pytest.mark.parametrize("mutation", ["step x1.1", "step x2", "batch B-1"])
def test_least_squares_default_fails_a_wrong_kernel(monkeypatch, mutation):
    {"step x1.1": lambda: _kernel(monkeypatch, step=1.1),
     "step x2": lambda: _kernel(monkeypatch, step=2.0),
     "batch B-1": lambda: _kernel(monkeypatch, batch=1)}[mutation]()
    rep = least_squares_check(epochs=2, regimes=("zero",), controls=False, sharp=False)
    assert rep.settings["runs"] == tc.LEAST_SQUARES_RUNS == 10_000
    assert not rep.passed
    assert any(not r["mc_agrees"] for sc in rep.schedules.values() for r in sc.rows)


def test_least_squares_default_fails_a_biased_gradient_through_the_mean_iterate(monkeypatch):
    _kernel(monkeypatch, bias=0.01)
    rep = least_squares_check(regimes=("zero",), controls=False, sharp=False)   # defaults
    assert not rep.passed
    sgd = rep.schedules["sgd"].mean_check
    assert sgd["verdict"] == "FAIL" and sgd["max_abs_t"] > sgd["limit"] > 4
    # the mean gap alone cannot see it (the bias moves the gap by about 5e-7 against gaps
    # near 1e-3): every gap row agrees, which is why the mean iterate is compared
    assert all(r["mc_agrees"] for sc in rep.schedules.values() for r in sc.rows)
    # the control, a kernel with that very bias, agrees with these runs, and the line says why
    from hessbatch.convex._cli_theory import format_report
    assert "KERNEL MEAN: FAIL; its control (residual bias +0.01, the exact mean of a kernel " \
        "whose residuals are off by that much) passes: the runs look like a kernel with that " \
        "very bias" in format_report(rep)


def test_the_model_check_line_says_why_a_control_passes():
    from hessbatch.convex._cli_theory import _second_order_lines

    def so(passed, control_verdicts):
        ctrls = [{"name": n, "verdict": v, "schedules": {"sgd": {"ratio": 1.0}}}
                 for n, v in zip(("step x1.1", "noise x1.2"), control_verdicts)]
        return {"tolerance": 0.03, "t": 4.0, "passed": passed, "controls": ctrls,
                "controls_fail": all(v == "FAIL" for v in control_verdicts),
                "schedules": {"sgd": {"ratio": 1.0, "se": 0.01, "allowed": 0.07,
                                      "verdict": "PASS" if passed else "FAIL"}}}
    last = lambda d: _second_order_lines(d)[-1]      # noqa: E731
    assert last(so(True, ["FAIL", "FAIL"])) == "MODEL CHECK: PASS; its controls all FAIL"
    assert "too few runs" in last(so(True, ["PASS", "FAIL"]))
    assert last(so(False, ["PASS", "PASS"])).startswith("MODEL CHECK: FAIL; its controls 0 of 2")
    assert "the runs look like a kernel with that error" in last(so(False, ["PASS", "PASS"]))


def test_the_mean_check_passes_the_true_kernel_and_fails_its_control():
    rep = least_squares_check(regimes=("zero",), controls=False, sharp=False)
    assert rep.passed
    for sc in rep.schedules.values():
        m = sc.mean_check
        assert m["verdict"] == "PASS" and m["max_abs_t"] <= m["limit"]
        assert m["runs"] == 10_000 and len(m["t"]) == 2
    # the control: the exact mean of a kernel with residuals off by 0.01, far outside
    sgd = rep.schedules["sgd"].mean_check["control"]
    assert sgd["verdict"] == "FAIL" and sgd["max_abs_t"] > 2 * rep.schedules["sgd"].mean_check[
        "limit"]
    # with 2000 runs the same control is within the noise: the verdict says so
    from hessbatch.convex._cli_theory import format_report
    few = least_squares_check(regimes=("zero",), controls=False, sharp=False, runs=2000)
    assert all(sc.mean_check["control"]["verdict"] == "PASS" for sc in few.schedules.values())
    assert "passes: too few runs to see that bias" in format_report(few)
    assert "KERNEL MEAN: PASS; its control (residual bias +0.01" in format_report(rep)


def test_the_mean_statistic_is_calibrated_under_the_true_kernel():
    """Under the true kernel each t is (nearly) Student t with R - 1 degrees of freedom: over
    300 independent experiments (R = 200 runs each, seeds 0..299, both eigen-directions),
    the share of |t| > 1.96 is binomial(600, 0.05) up to the normal approximation of the
    average iterate; a wrong exact mean, a wrong standard error (e.g. final iterates'
    spread), or a t that ignored the basis would move it far out."""
    from hessbatch.convex import make_least_squares, sgd_runs
    prob = make_least_squares(200, 2, 2.0, 0.5, 0.0, 0)
    batches = np.full(100, 4, dtype=np.int64)
    eta = 0.0135
    ts = []
    for seed in range(300):
        res = sgd_runs(prob.A, prob.y, batch_sizes=batches, step_sizes=batches * eta, lam=0.0,
                       kind="least_squares", runs=200, seed=seed)
        m = tc._mean_check(prob, batches, eta, np.zeros(2), res.averages, 1.96)
        ts.extend(m["t"])
    ts = np.abs(np.array(ts))
    # binomial(600, 0.05): mean 30, sd 5.3; [12, 52] is beyond 3.3 sd on either side
    assert 12 <= int(np.sum(ts > 1.96)) <= 52
    # E[t^2] = (R-1)/(R-3) ~ 1.01; its estimate over 600 values has sd ~ 0.06
    assert 0.8 < float(np.mean(ts ** 2)) < 1.25


def test_the_mean_check_fails_a_wrong_exact_mean():
    """The check's own arithmetic: the true runs against an exact mean that is off by the
    bias's shift must FAIL (the same failure the control shows, computed independently)."""
    from hessbatch.convex import LeastSquares, make_least_squares, sgd_runs
    prob = make_least_squares(200, 2, 2.0, 0.5, 0.0, 0)
    batches = np.full(500, 4, dtype=np.int64)
    eta = 0.0135
    res = sgd_runs(prob.A, prob.y, batch_sizes=batches, step_sizes=batches * eta, lam=0.0,
                   kind="least_squares", runs=10_000, seed=0)
    t = thm.t_quantile(1 - 0.001 / 8, 9_999)
    assert tc._mean_check(prob, batches, eta, np.zeros(2), res.averages, t)["verdict"] == \
        "PASS"
    wrong = LeastSquares(prob.A, prob.y + 0.01, 0.0)       # the other sign of the bias
    assert tc._mean_check(wrong, batches, eta, np.zeros(2), res.averages, t)["verdict"] == \
        "FAIL"


@pytest.mark.parametrize("mutation", [
    "exponent 2", "exponent 1/2", "condition x2", "M/4.7", "L/10"])
def test_least_squares_default_fails_every_bug_of_the_bound(monkeypatch, mutation):
    # the least-squares command runs the sharp regime exactly by default: a self-test of the
    # bound's arithmetic, the condition and the constants' code
    {"exponent 2": lambda: _exponent(monkeypatch, 2.0),
     "exponent 1/2": lambda: _exponent(monkeypatch, 0.5),
     "condition x2": lambda: _condition(monkeypatch, 2.0),
     "M/4.7": lambda: _constant(monkeypatch, "M", 4.7),
     "L/10": lambda: _constant(monkeypatch, "L", 10.0)}[mutation]()
    if mutation == "L/10":
        # on the default problem L / 10 = 0.1 < c = 0.5: the computed constants contradict
        # each other, which is a FAIL of the check (its own code is wrong), not a bad option
        with pytest.raises(tc.ConstantsContradiction, match="c must be <= L") as err:
            least_squares_check(epochs=2, regimes=("zero",), controls=False, runs=0)
        assert "the code that computes them is wrong" in err.value.failures[0]
        return
    rep = least_squares_check(epochs=2, regimes=("zero",), controls=False, runs=0)
    assert not rep.passed and not rep.sharp_check["passed"]
    # and without the self-test, exponent 2 (a looser bound) is only a loss of sharpness here
    if mutation == "exponent 2":
        assert least_squares_check(epochs=2, regimes=("zero",), controls=False, runs=0,
                                   sharp=False).passed


@pytest.mark.parametrize("problem", ["least-squares", "mushroom"])
def test_the_command_says_fail_for_contradicting_constants(monkeypatch, tmp_path, capsys,
                                                           problem):
    """End to end: L/10 makes the computed constants impossible (c > L) on least squares; the
    command prints RESULT: FAIL, exits 1 (not 2, the exit of a bad option) and writes a
    theory.json that says so, replacing an earlier run's plot."""
    from hessbatch.cli import main
    out = tmp_path / "t"
    out.mkdir()
    (out / "theory.png").write_bytes(b"an earlier run's plot")
    factor = 10.0 if problem == "least-squares" else 1e4     # mushroom: L / 1e4 < c = 0.1
    _constant(monkeypatch, "L", factor)
    code = main(["theory", "--problem", problem, "--quiet", "--out", str(out), "--overwrite",
                 "--runs", "0" if problem == "least-squares" else "2"])
    text = capsys.readouterr().out
    assert code == 1
    assert "RESULT: FAIL (the constants computed for the " + problem in text
    import json
    doc = json.loads((out / "theory.json").read_text())
    assert doc == {"problem": problem, "passed": False, "failures": doc["failures"]}
    assert "c must be <= L" in doc["failures"][0]
    assert not (out / "theory.png").exists()
