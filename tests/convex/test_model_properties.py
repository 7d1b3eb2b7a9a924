"""Property tests: on any small data set (dense or sparse, empty rows included), the compiled
CSR kernels equal the dense NumPy path, the HVP equals the explicit Hessian times v, and
Newton's method finds a point with a vanishing gradient."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hessbatch.convex import LogisticRegression


@st.composite
def problems(draw):
    n = draw(st.integers(1, 30))
    d = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    X = rng.standard_normal((n, d)) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    X[rng.random((n, d)) >= density] = 0.0          # sparse rows, some entirely empty
    y = (rng.random(n) < 0.5).astype(float)
    lam = draw(st.sampled_from([1e-4, 1e-2, 1.0]))
    theta = rng.standard_normal(d) * draw(st.sampled_from([0.0, 1.0, 10.0]))
    v = rng.standard_normal(d)
    idx = rng.integers(0, n, draw(st.integers(1, 2 * n)))
    adv = draw(st.integers(0, len(idx)))
    eps = draw(st.sampled_from([0.0, 0.01, 0.5]))
    return X, y, lam, theta, v, idx, adv, eps


@settings(max_examples=60)
@given(problems())
def test_compiled_path_equals_numpy_path(problem):
    X, y, lam, theta, v, idx, adv, eps = problem
    a = LogisticRegression(X, y, lam, backend="numba")
    b = LogisticRegression(X, y, lam, backend="numpy")
    scale = 1.0 + np.abs(X).sum() * (1 + np.abs(theta).max())
    for rows in (None, idx):
        assert np.isclose(a.loss(theta, rows), b.loss(theta, rows), rtol=1e-12, atol=1e-14 * scale)
        assert np.allclose(a.gradient(theta, rows), b.gradient(theta, rows), rtol=1e-11,
                           atol=1e-14 * scale)
        Ha, Hb = a.hessian(theta, rows), b.hessian(theta, rows)
        assert np.allclose(Ha, Hb, rtol=1e-11, atol=1e-14 * scale)
        assert np.allclose(a.hvp(theta, v, rows), Hb @ v, rtol=1e-10, atol=1e-13 * scale)
    la, ga = a.loss_and_gradient(theta, idx, adv_count=adv, adv_eps=eps)
    lb, gb = b.loss_and_gradient(theta, idx, adv_count=adv, adv_eps=eps)
    assert np.isclose(la, lb, rtol=1e-12, atol=1e-14 * scale)
    assert np.allclose(ga, gb, rtol=1e-11, atol=1e-14 * scale)
    assert np.array_equal(a.fgsm(theta, eps, idx), b.fgsm(theta, eps, idx))


@settings(max_examples=30)
@given(problems())
def test_newton_reaches_a_stationary_point(problem):
    X, y, lam, *_ = problem
    model = LogisticRegression(X, y, lam)
    opt = model.solve(tol=1e-9)
    assert np.linalg.norm(model.gradient(opt.theta)) < 1e-9
    # strongly convex: the optimum is below the start and below nearby points
    assert opt.f_star <= model.loss(np.zeros(X.shape[1])) + 1e-15
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert model.loss(opt.theta + 1e-3 * rng.standard_normal(X.shape[1])) >= opt.f_star
