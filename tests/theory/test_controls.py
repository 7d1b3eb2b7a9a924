"""Checks that can fail: negative controls, sensitivity, the one-sided statistics, the
stationary limit and the two conventions of the step-size condition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessbatch import theory as thm
from hessbatch.cli import main
from hessbatch.convex import least_squares_check, make_least_squares, one_sided_limits
from hessbatch.convex._theory_check import _np_bounds


# ---- Student's t, exactly enough -----------------------------------------------------------


@pytest.mark.parametrize("p,df,ref", [
    # published table values (e.g. any statistics text), 9 significant digits
    (0.975, 1, 12.7062047), (0.975, 2, 4.30265273), (0.975, 10, 2.22813885),
    (0.975, 30, 2.04227246), (0.95, 5, 2.01504837), (0.995, 20, 2.84533971),
])
def test_t_quantile_matches_tables(p, df, ref):
    assert thm.t_quantile(p, df) == pytest.approx(ref, rel=2e-8)
    assert thm.t_cdf(thm.t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)
    assert thm.t_quantile(1 - p, df) == pytest.approx(-ref, rel=2e-8)


def test_t_quantile_tends_to_the_normal_and_refuses_bad_input():
    from statistics import NormalDist
    assert thm.t_quantile(0.999, 10 ** 7) == pytest.approx(NormalDist().inv_cdf(0.999), rel=1e-6)
    with pytest.raises(ValueError, match="p must be in"):
        thm.t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df must be > 0"):
        thm.t_cdf(1.0, 0)


def test_one_sided_lower_limit_covers_with_the_stated_confidence():
    # 4000 experiments of 8 normal draws: the 0.95 lower limit exceeds the true mean in 5 % of
    # them. Binomial(4000, 0.05): mean 200, sd 13.8; the window is +-5 sd (false alarm < 1e-6).
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(8, 4000))
    _, lo, hi, _ = one_sided_limits(x, 0.95)
    assert 131 <= int(np.sum(lo > 3.0)) <= 269
    assert 131 <= int(np.sum(hi < 3.0)) <= 269
    # the normal quantile instead of t would be far too narrow at 8 draws (about 9 %)
    z_lo = x.mean(axis=0) - 1.6449 * x.std(axis=0, ddof=1) / math.sqrt(8)
    assert int(np.sum(z_lo > 3.0)) > 300


# ---- the bound's formula for controls -------------------------------------------------------


@given(batches=st.lists(st.integers(1, 64), max_size=40), gap0=st.floats(0, 10),
       L=st.floats(0.1, 5), c=st.floats(0.01, 10), M=st.floats(0, 10), eta0=st.floats(1e-4, 0.01))
def test_raw_and_vectorised_bounds_agree_and_equal_the_validated_one(batches, gap0, L, c, M,
                                                                      eta0):
    raw = thm.raw_bounds(L, c, M, eta0, gap0, batches)
    vec = _np_bounds(L, c, M, eta0, gap0, np.asarray(batches, dtype=np.float64))
    np.testing.assert_allclose(vec, raw, rtol=1e-12, atol=1e-14)
    if c <= L:
        k = thm.Constants(L=L, c=c, M=M, M_V=0.0)
        np.testing.assert_allclose(
            thm.bound_sequence(k, eta0, gap0, batches, b_max=64, enforce_condition=False), raw,
            rtol=1e-12, atol=1e-14)


def test_wrong_constants_and_detection_factor():
    k = thm.Constants(L=2.0, c=0.5, M=1.0, M_V=3.0)
    assert [c.name for c in thm.standard_controls(k)] == ["M=0", "M/2", "c*2", "L/2"]
    ctl = {c.name: c for c in thm.standard_controls(k, include_M_V=True)}
    assert ctl["M=0"].M == 0 and ctl["M/2"].M == 0.5 and ctl["c*2"].c == 1.0
    assert ctl["L/2"].L == 1.0 and ctl["M_V=0"].M_V == 0 and ctl["M_V/2"].rerun
    with pytest.raises(ValueError, match="factor must be > 1"):
        thm.wrong_constants(k, "M", 1.0)
    with pytest.raises(ValueError, match="constant must be one of"):
        thm.wrong_constants(k, "G", 2.0)
    assert thm.detection_factor(lambda f: f >= 1.3) == pytest.approx(1.3, rel=1e-3)
    assert thm.detection_factor(lambda f: False) is None


# ---- least squares: every bound control fails, on random problems --------------------------


def _check_sharp(rep):
    assert rep.passed, "the true constants must pass"
    bound = {c["name"]: c for c in rep.controls if c["kind"] == "bound"}
    assert set(bound) == {"M=0", "M/2", "c*2", "L/2"}
    for name, c in bound.items():
        assert c["verdict"] == "FAIL", f"control {name} passed"
        fv = c["first_violation"]
        assert fv["gap"] > fv["bound"] and c["excess"] > 0
    assert rep.sharp
    # the sensitivity is at most the control's factor, and the factor really is detected
    for const in ("M", "L"):
        assert rep.sensitivity[const]["factor"] <= 2.0
    assert rep.sensitivity["c"]["factor"] <= 2.0


def test_default_least_squares_check_is_sharp_and_reports_where():
    rep = least_squares_check()
    _check_sharp(rep)
    assert set(rep.regimes) == {"zero", "optimum", "flattest", "stationary"}
    ctl = {c["name"]: c for c in rep.controls}
    # the noise floor binds from the first update when the run starts at theta*
    assert ctl["M=0"]["first_violation"]["regime"] == "optimum"
    assert ctl["M=0"]["first_violation_update"] == 1
    # the rate term binds along the flattest direction
    assert ctl["c*2"]["first_violation"]["regime"] == "flattest"
    for reg in rep.regimes.values():
        for sc in reg.values():
            assert sc.min_slack["value"] >= 1.0 - 1e-9 and sc.min_slack["update"] >= 1
            assert len(sc.updates) == sc.schedule.updates + 1          # every update compared
    st_ = rep.regimes["stationary"]
    for sc in st_.values():
        assert abs(sc.exact[-1] / sc.limit - 1) <= 0.01
    # M_V enters only the condition: reported, with its own verdict
    assert {c["kind"] for c in rep.controls} == {"bound", "condition"}
    assert "M_V" in rep.sensitivity


@settings(max_examples=12, deadline=None)
@given(n=st.integers(20, 80), dim=st.integers(1, 2), cond=st.floats(1.0, 1.5),
       noise=st.floats(0.2, 1.0), seed=st.integers(0, 10 ** 6))
def test_least_squares_controls_fail_on_random_problems(n, dim, cond, noise, seed):
    rep = least_squares_check(n_samples=n, dim=dim, cond=cond, noise=noise, seed=seed, runs=0,
                              epochs=3, regimes=("zero", "optimum", "flattest"))
    _check_sharp(rep)


def test_the_start_at_zero_alone_cannot_tell_wrong_constants_and_says_so():
    # The check as it was before the regimes: from theta = 0 only. Every control passes, and
    # the report says so instead of hiding it.
    rep = least_squares_check(epochs=2, regimes=("zero",), runs=0)
    assert rep.passed and not rep.sharp
    assert all(c["verdict"] == "PASS" and c["first_violation"] is None for c in rep.controls)
    assert rep.sensitivity["M"]["factor"] is None
    assert rep.sensitivity["M"]["text"].startswith("not sensitive to M on this problem")
    # a worse-conditioned problem (the old default: d = 10, condition 10, lam 0.1): from theta*
    # the noise floor still catches M = 0, but M / 2 only from a factor of about 2.05
    rep = least_squares_check(dim=10, cond=10.0, lam=0.1, epochs=2, runs=0,
                              regimes=("zero", "optimum"))
    ctl = {c["name"]: c for c in rep.controls}
    assert ctl["M=0"]["verdict"] == "FAIL" and ctl["M/2"]["verdict"] == "PASS"
    assert 2.0 < rep.sensitivity["M"]["factor"] < 2.2


# ---- the stationary limit, exactly ----------------------------------------------------------


def test_stationary_gap_is_the_limit_of_the_recursion():
    p = make_least_squares(60, 3, cond=3.0, noise=0.7, seed=5)
    k = p.constants()
    eta0 = thm.max_eta0(k, 16)
    for b in (1, 16):
        g = p.expected_gaps(np.full(6000, b), np.full(6000, b * eta0))
        assert p.stationary_gap(b, b * eta0) == pytest.approx(g[-1], rel=1e-10)
    with pytest.raises(ValueError, match="diverges"):
        p.stationary_gap(1, 10.0 / k.L)


# ---- the two conventions ---------------------------------------------------------------------


def test_paper_and_variance_conditions_differ_by_the_named_constant():
    paper = least_squares_check(epochs=1, regimes=("zero",), controls=False, runs=0)
    var = least_squares_check(epochs=1, regimes=("zero",), controls=False, runs=0,
                              condition="variance")
    k = paper.constants
    assert paper.eta0 == pytest.approx(1 / (k.L * (k.M_V + 1 + 64)), rel=1e-12)
    assert var.eta0 == pytest.approx(1 / (k.L * (k.M_V + 64)), rel=1e-12)
    assert paper.passed and var.passed


def test_require_sharp_exit_codes(capsys):
    assert main(["theory", "--problem", "least-squares", "--quiet", "--require-sharp",
                 "--runs", "0"]) == 0
    out = capsys.readouterr().out
    assert "CONTROLS: all 4 bound controls FAIL" in out
    assert main(["theory", "--problem", "least-squares", "--quiet", "--epochs", "2",
                 "--regimes", "zero", "--require-sharp", "--runs", "0"]) == 3
    out = capsys.readouterr().out
    assert "not sensitive" in out and "RESULT: PASS" in out
    # without --require-sharp the exit code depends on the true-constant checks only
    assert main(["theory", "--problem", "least-squares", "--quiet", "--epochs", "2",
                 "--regimes", "zero", "--runs", "0"]) == 0
    capsys.readouterr()
    assert main(["theory", "--problem", "least-squares", "--quiet", "--check-every", "0"]) == 2
    assert "check_every must be an int >= 1" in capsys.readouterr().err
    assert main(["theory", "--problem", "least-squares", "--quiet", "--regimes", "sideways"]) == 2
    assert "regimes must be" in capsys.readouterr().err
