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
    rep = least_squares_check(epochs=2, regimes=("zero",), controls=False)   # runs: 2000
    assert rep.settings["runs"] == 2000
    assert not rep.passed
    assert any(not r["mc_agrees"] for sc in rep.schedules.values() for r in sc.rows)


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
        # on the default problem L / 10 = 0.1 < c = 0.5: the constants contradict each other,
        # which Constants refuses before any check (the command: exit 2, naming it)
        with pytest.raises(ValueError, match="c must be <= L"):
            least_squares_check(epochs=2, regimes=("zero",), controls=False, runs=0)
        return
    rep = least_squares_check(epochs=2, regimes=("zero",), controls=False, runs=0)
    assert not rep.passed and not rep.sharp_check["passed"]
    # and without the self-test, exponent 2 (a looser bound) is only a loss of sharpness here
    if mutation == "exponent 2":
        assert least_squares_check(epochs=2, regimes=("zero",), controls=False, runs=0,
                                   sharp=False).passed
