"""Least squares: exact constants, exact E[F(theta_t)], and Theorem 1 checked with no noise.

The exact expectation is checked three ways: against a brute-force enumeration of every index
sequence (exact, tiny problems), against a large Monte-Carlo (statistical, a few cases), and
through Theorem 1 itself (Hypothesis: the bound holds within the condition, and fails well past
it, which shows the check can fail).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hessbatch import SchedulerConfig
from hessbatch import theory as thm
from hessbatch.convex import LeastSquares, make_least_squares, sgd_runs


def random_problem(seed: int, n: int, d: int, log_cond: float, noise: float,
                   lam: float) -> LeastSquares:
    """Rows with unequal norms and columns scaled over ``10**log_cond`` (ill-conditioning)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d)) * np.geomspace(1.0, 10 ** (-log_cond / 2), d)
    A *= rng.uniform(0.2, 2.0, size=(n, 1))
    y = A @ rng.standard_normal(d) + noise * rng.standard_normal(n)
    return LeastSquares(A, y, lam)


# ---- exactness of the moment recursion -------------------------------------------------------


def brute_force_gaps(p: LeastSquares, batches, steps, theta0) -> list[float]:
    """E[F(theta_t)] - F* by averaging over every index sequence (N^(sum b) paths)."""
    out = []
    grads = p.per_sample_gradients
    for t in range(len(batches) + 1):
        total, count = 0.0, 0
        draws = [itertools.product(range(p.n_samples), repeat=b) for b in batches[:t]]
        for path in itertools.product(*draws):
            theta = theta0.copy()
            for k, idx in enumerate(path):
                theta = theta - steps[k] * grads(theta)[list(idx)].mean(axis=0)
            total += p.loss(theta) - p.f_star
            count += 1
        out.append(total / count)
    return out


@pytest.mark.parametrize("n,d,lam,batches", [
    (3, 2, 0.3, [1, 2, 2]),
    (2, 3, 0.5, [2, 1, 3]),
    (4, 1, 0.0, [1, 3, 1]),
    (1, 2, 0.2, [1, 1, 1, 1]),
])
def test_expected_gaps_equal_the_average_over_every_index_sequence(n, d, lam, batches):
    rng = np.random.default_rng(n * 10 + d)
    p = LeastSquares(rng.standard_normal((n, d)), rng.standard_normal(n), lam)
    steps = rng.uniform(0.05, 0.4, size=len(batches))
    theta0 = rng.standard_normal(d)
    exact = p.expected_gaps(batches, steps, theta0)
    np.testing.assert_allclose(exact, brute_force_gaps(p, batches, steps, theta0),
                               rtol=1e-11, atol=1e-14)


def test_expected_moments_equal_the_enumeration():
    rng = np.random.default_rng(7)
    p = LeastSquares(rng.standard_normal((3, 2)), rng.standard_normal(3), 0.1)
    batches, steps, theta0 = [2, 1], [0.3, 0.2], np.array([1.0, -1.0])
    _, (mean, second) = p.expected_gaps(batches, steps, theta0, moments=True)
    thetas = []
    for path in itertools.product(itertools.product(range(3), repeat=2),
                                  itertools.product(range(3), repeat=1)):
        theta = theta0.copy()
        for k, idx in enumerate(path):
            theta = theta - steps[k] * p.per_sample_gradients(theta)[list(idx)].mean(axis=0)
        thetas.append(theta)
    thetas = np.array(thetas)
    e = thetas - p.theta_star
    np.testing.assert_allclose(mean, thetas.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(second, e.T @ e / len(e), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed,batch,steps", [(0, 4, 60), (1, 16, 40), (2, 1, 80)])
def test_expected_gaps_agree_with_a_large_monte_carlo(seed, batch, steps):
    p = make_least_squares(40, 4, cond=20.0, noise=0.8, lam=0.05, seed=seed)
    k = p.constants()
    eta0 = thm.max_eta0(k, batch)
    batches = np.full(steps, batch)
    theta0 = np.full(4, 2.0)
    exact = p.expected_gaps(batches, batches * eta0, theta0)
    checks = [steps // 4, steps // 2, steps]
    runs = 20_000
    res = sgd_runs(p.A, p.y, batch_sizes=batches, step_sizes=batches * eta0, lam=0.05,
                   kind="least_squares", runs=runs, seed=seed, theta0=theta0, checkpoints=checks)
    gaps = res.gaps(p.f_star)
    # z = 4.5 two-sided: a false alarm has probability 7e-6 per comparison
    for j, t in enumerate(checks):
        se = gaps[:, j].std(ddof=1) / math.sqrt(runs)
        assert abs(gaps[:, j].mean() - exact[t]) <= 4.5 * se, (t, gaps[:, j].mean(), exact[t])


# ---- exact constants ------------------------------------------------------------------------


def test_constants_are_the_hessian_extremes_and_a_tight_variance_bound():
    p = random_problem(3, 12, 3, 1.0, 0.7, 0.05)
    eig = np.linalg.eigvalsh(p.A.T @ p.A / 12 + 0.05 * np.eye(3))
    k = p.constants()
    assert k.L == pytest.approx(eig[-1], rel=1e-12) and k.c == pytest.approx(eig[0], rel=1e-12)
    assert k.M_V == pytest.approx(2 * p.min_M_V, rel=1e-12) and k.M_G == k.M_V + 1
    rng = np.random.default_rng(0)
    S, u, m0 = p.variance_quadratic()
    H = p.hessian
    for e in rng.standard_normal((200, 3)) * rng.uniform(0.01, 30, size=(200, 1)):
        var = p.gradient_variance(p.theta_star + e)
        # the quadratic is the variance, exactly
        assert var == pytest.approx(e @ S @ e + 2 * u @ e + m0, rel=1e-9, abs=1e-12)
        # and the constants bound it everywhere
        assert var <= k.M + k.M_V * np.sum((H @ e) ** 2) + 1e-9
    # tight: the bound is attained at e* = (M_V H^2 - S)^-1 u
    e_star = np.linalg.solve(k.M_V * H @ H - S, u)
    assert p.gradient_variance(p.theta_star + e_star) == pytest.approx(
        k.M + k.M_V * np.sum((H @ e_star) ** 2), rel=1e-9)


def test_no_finite_M_at_or_below_the_critical_M_V():
    p = random_problem(4, 10, 3, 0.5, 1.0, 0.1)
    w = p.min_M_V
    with pytest.raises(ValueError, match="M_V must be > .* for a finite M"):
        p.M_for(0.5 * w)
    # M decreases towards m0 as M_V grows
    ms = [p.M_for(f * w) for f in (1.01, 2.0, 10.0, 1e6)]
    assert all(a > b for a, b in zip(ms, ms[1:]))
    assert ms[-1] == pytest.approx(p.variance_quadratic()[2], rel=1e-4)


def test_one_sample_has_no_variance():
    p = LeastSquares(np.array([[1.0, 2.0]]), np.array([3.0]), lam=0.5)
    k = p.constants()
    assert k.M_V <= 1e-12 and k.M == pytest.approx(0.0, abs=1e-20)


def test_make_least_squares_hits_the_condition_number():
    p = make_least_squares(50, 5, cond=100.0, noise=0.0, seed=3)
    k = p.constants()
    assert k.L / k.c == pytest.approx(100.0, rel=1e-9)
    # no noise: the generating parameters solve the problem exactly, F* = 0
    assert p.f_star == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("A,y,lam,exc,match", [
    (np.ones((3, 2)), np.ones(2), 0.1, ValueError, r"y must have shape \(3,\)"),
    (np.ones(3), np.ones(3), 0.1, ValueError, "A must be a non-empty 2-d array"),
    (np.array([[1.0, np.nan]]), np.ones(1), 0.1, ValueError, "A must be finite"),
    (np.ones((2, 2)), np.array([1.0, np.inf]), 0.1, ValueError, "y must be finite"),
    (np.ones((2, 2)), np.ones(2), -1.0, ValueError, "lam must be finite and >= 0"),
    (np.ones((2, 2)), np.ones(2), "0.1", TypeError, "lam must be a real number"),
    (np.array([["a", "b"]]), np.ones(1), 0.1, TypeError, "A must be a real numeric array"),
    (np.ones((3, 2)), np.ones(3), 0.0, ValueError, "not strongly convex"),
])
def test_least_squares_bad_input(A, y, lam, exc, match):
    with pytest.raises(exc, match=match):
        LeastSquares(A, y, lam)


def test_expected_gaps_bad_input():
    p = make_least_squares(10, 2, seed=0)
    with pytest.raises(ValueError, match="same length"):
        p.expected_gaps([1, 2], [0.1])
    with pytest.raises(ValueError, match="batch_sizes must be ints >= 1"):
        p.expected_gaps([1, 0], [0.1, 0.1])
    with pytest.raises(ValueError, match="step_sizes must be finite"):
        p.expected_gaps([1], [np.nan])
    with pytest.raises(ValueError, match=r"theta must have shape \(2,\)"):
        p.expected_gaps([1], [0.1], theta0=np.zeros(3))
    with pytest.raises(ValueError, match="n_samples must be >= dim"):
        make_least_squares(3, 5)
    with pytest.raises(ValueError, match="cond must be finite and >= 1"):
        make_least_squares(10, 2, cond=0.5)


# ---- Theorem 1, exactly ---------------------------------------------------------------------


def _maybe_problem(**kw) -> LeastSquares | None:
    try:
        return random_problem(**kw)
    except ValueError as exc:  # rank-deficient without ridge: not a Theorem 1 problem
        assert "not strongly convex" in str(exc)
        return None


problems = st.builds(
    _maybe_problem, seed=st.integers(0, 2 ** 16), n=st.integers(1, 30), d=st.integers(1, 5),
    log_cond=st.floats(0.0, 3.0), noise=st.floats(0.0, 2.0),
    lam=st.sampled_from([0.0, 0.01, 0.1, 1.0])).filter(lambda p: p is not None)


@st.composite
def schedules(draw):
    """Non-decreasing batch lists: free ones, or the core's ABS driven by eigenvalue streams."""
    b_max = draw(st.integers(1, 64))
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, b_max), min_size=1, max_size=150))
        return sorted(sizes), b_max
    b0 = draw(st.sampled_from([b for b in (1, 2, 4, 8) if b_max % b == 0 and b <= b_max]))
    eigs = draw(st.lists(st.floats(0.0, 50.0), min_size=1, max_size=30))
    cfg = SchedulerConfig(method="abs", lr=0.01 * b0, batch_size=b0, max_batch_size=b_max,
                          samples_per_epoch=32, epochs=draw(st.integers(1, 6)),
                          check_every=draw(st.integers(4, 32)),
                          patience=draw(st.integers(1, 4)))
    s = thm.scheduler_batches(cfg, eigs)
    assume(s.updates <= 400)
    return list(s.batch_sizes), b_max


@settings(max_examples=200)
@given(problem=problems, schedule=schedules(), fraction=st.floats(0.05, 1.0),
       mg_factor=st.sampled_from([None, 1.05, 4.0]), start=st.floats(0.0, 5.0))
def test_theorem1_holds_at_every_update(problem, schedule, fraction, mg_factor, start):
    p = problem
    batches, b_max = schedule
    M_V = None if mg_factor is None else mg_factor * p.min_M_V
    k = p.constants(M_V)
    eta0 = fraction * thm.max_eta0(k, b_max)
    theta0 = p.theta_star + start * np.ones(p.dim)
    b = np.asarray(batches)
    exact = p.expected_gaps(b, b * eta0, theta0)
    bounds = thm.bound_sequence(k, eta0, exact[0], batches, b_max=b_max)
    t = thm.first_violation(exact, bounds, rtol=1e-9, atol=1e-12 * max(exact[0], 1e-300))
    assert t is None, f"E gap {exact[t]} > bound {bounds[t]} at update {t}"


@settings(max_examples=100)
@given(problem=problems, scale=st.floats(5.0, 10.0), extra=st.integers(0, 32))
def test_theorem1_fails_well_past_the_condition(problem, scale, extra):
    # With b_max >= M_G and eta0 = scale * 1/(L (M_G + b_max)), scale >= 5, a step at b_max has
    # alpha L >= scale / 2 >= 2.5: the mean error along the top eigenvector grows by
    # |1 - alpha L| >= 1.5 per update, so E gap grows like 1.5^(2t) while the bound grows at most
    # like 1.5^t. The check must find the violation: the property is not vacuous.
    p = problem
    k = p.constants()
    b_max = max(1, math.ceil(k.M_G)) + extra
    # (no smaller batches first: with one sample and d = 1 a step with alpha L = 1 exactly
    # would land on theta* and leave nothing to diverge)
    batches = [b_max] * 120
    eta0 = scale * thm.max_eta0(k, b_max)
    rng = np.random.default_rng(0)
    theta0 = p.theta_star + rng.standard_normal(p.dim)
    b = np.asarray(batches)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = p.expected_gaps(b, b * eta0, theta0)
    bounds = thm.bound_sequence(k, eta0, exact[0], batches, b_max=b_max,
                                enforce_condition=False)
    finite = int(np.argmax(~np.isfinite(exact))) if not np.all(np.isfinite(exact)) else len(exact)
    assert finite > 1
    assert thm.first_violation(exact[:finite], bounds[:finite]) is not None
    with pytest.raises(ValueError, match="eta0 must be <="):
        thm.bound_sequence(k, eta0, exact[0], batches, b_max=b_max)
