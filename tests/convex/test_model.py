"""Logistic regression: exact math checked against brute force, the two kernel paths against
each other, Theorem 1's constants, Newton's optimum, FGSM, the eigen-solvers, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessbatch.theory import max_eta0
from hessbatch.convex import LogisticRegression, load_mushroom, top_eigenvalue

BACKENDS = ("numba", "numpy")


@pytest.fixture(scope="module")
def ds():
    return load_mushroom(seed=0)


@pytest.fixture(scope="module")
def models(ds):
    m = LogisticRegression(ds.X_train, ds.y_train, lam=1e-3)
    return {"numba": m, "numpy": m.with_backend("numpy")}


@pytest.fixture(scope="module")
def optimum(models):
    return models["numba"].solve()


def _theta(seed, scale=0.3, d=117):
    return np.random.default_rng(seed).standard_normal(d) * scale


def _brute_loss(X, y, theta, lam):
    # straight from the definition, one sample at a time, in Python floats
    total = 0.0
    for xi, yi in zip(X, y):
        z = float(xi @ theta)
        total += math.log1p(math.exp(-abs(z))) + max(z, 0.0) - yi * z
    return total / len(y) + 0.5 * lam * float(theta @ theta)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_at_zero_is_log2_and_matches_definition(models, ds, backend):
    m = models[backend]
    assert m.loss(np.zeros(117)) == pytest.approx(math.log(2), rel=1e-14)
    th = _theta(1)
    idx = np.array([0, 7, 7, 100, 6904])
    want = _brute_loss(ds.X_train[idx], ds.y_train[idx], th, 1e-3)
    assert m.loss(th, idx) == pytest.approx(want, rel=1e-13)
    # a repeated row counts twice
    parts = [m.loss(th, np.array([i])) for i in idx]
    assert m.loss(th, idx) == pytest.approx(np.mean(parts), rel=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_matches_central_differences(models, backend):
    m = models[backend]
    th = _theta(2)
    idx = np.random.default_rng(0).integers(0, m.n_samples, 64)
    # the full-data difference quotients are slow on the dense NumPy path: one batch there
    for rows in ((None, idx) if backend == "numba" else (idx,)):
        g = m.gradient(th, rows)
        h = 1e-5
        fd = np.array([(m.loss(th + h * e, rows) - m.loss(th - h * e, rows)) / (2 * h)
                       for e in np.eye(117)])
        assert np.max(np.abs(g - fd)) < 1e-8 * max(1.0, np.max(np.abs(g)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hvp_equals_explicit_hessian(models, ds, backend):
    m = models[backend]
    rng = np.random.default_rng(3)
    th, v = _theta(3), rng.standard_normal(117)
    idx = rng.integers(0, m.n_samples, 50)
    for rows in (None, idx):
        sel = ds.X_train if rows is None else ds.X_train[rows]
        p = 1.0 / (1.0 + np.exp(-(sel @ th)))
        H = sum(pi * (1 - pi) * np.outer(xi, xi) for pi, xi in zip(p, sel)) / len(sel)
        H += 1e-3 * np.eye(117)
        assert np.allclose(m.hessian(th, rows), H, rtol=0, atol=1e-13)
        assert np.allclose(m.hvp(th, v, rows), H @ v, rtol=0, atol=1e-12)


def test_hessian_column_is_the_slope_of_the_gradient(models):
    m = models["numba"]
    th = _theta(4)
    H = m.hessian(th)
    h = 1e-6
    for j in (0, 25, 116):
        e = np.zeros(117)
        e[j] = h
        slope = (m.gradient(th + e) - m.gradient(th - e)) / (2 * h)
        assert np.max(np.abs(slope - H[:, j])) < 1e-8


def test_numba_and_numpy_paths_agree(models):
    a, b = models["numba"], models["numpy"]
    rng = np.random.default_rng(5)
    for trial in range(5):
        th, v = _theta(10 + trial, scale=1.0), rng.standard_normal(117)
        idx = rng.integers(0, a.n_samples, rng.integers(1, 300))
        for rows in (None, idx):
            assert a.loss(th, rows) == pytest.approx(b.loss(th, rows), rel=1e-13, abs=1e-15)
            la, ga = a.loss_and_gradient(th, rows)
            lb, gb = b.loss_and_gradient(th, rows)
            assert la == pytest.approx(lb, rel=1e-13) and np.allclose(ga, gb, rtol=0, atol=1e-14)
            assert np.allclose(a.hvp(th, v, rows), b.hvp(th, v, rows), rtol=0, atol=1e-13)
        k = int(rng.integers(0, len(idx) + 1))
        la, ga = a.loss_and_gradient(th, idx, adv_count=k, adv_eps=0.05)
        lb, gb = b.loss_and_gradient(th, idx, adv_count=k, adv_eps=0.05)
        assert la == pytest.approx(lb, rel=1e-13) and np.allclose(ga, gb, rtol=0, atol=1e-14)
        assert np.array_equal(a.fgsm(th, 0.05, idx), b.fgsm(th, 0.05, idx))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fgsm_moves_each_feature_by_eps_uphill_within_the_range(models, ds, backend):
    m = models[backend]
    th = _theta(6, scale=1.0)
    idx = np.arange(0, 6905, 37)
    eps = 0.2
    X = ds.X_train[idx]
    Xa = m.fgsm(th, eps, idx)
    assert np.all(Xa >= 0) and np.all(Xa <= 1)                  # one-hot range [0, 1]
    delta = Xa - X
    assert np.all(np.isclose(np.abs(delta), 0) | np.isclose(np.abs(delta), eps))
    r = 1 / (1 + np.exp(-(X @ th))) - ds.y_train[idx]
    grad_x = r[:, None] * th[None, :]
    assert np.all(delta * grad_x >= 0)                          # never downhill
    moved = np.abs(delta) > 0
    # a feature moves unless clipped to its column's range: a 1 pushed up or a 0 pushed down
    # stays put, and so does the constant intercept column (its range is [1, 1])
    lo, hi = ds.X_train.min(axis=0), ds.X_train.max(axis=0)
    free = ((grad_x > 0) & (X < hi)) | ((grad_x < 0) & (X > lo))
    assert np.array_equal(moved, free)
    j = ds.feature_names.index("veil-type=p")                   # constant column: intercept
    assert np.all(Xa[:, j] == 1)
    # the per-sample loss is convex in x, so an uphill step cannot lower it
    y = ds.y_train[idx]
    za, z = Xa @ th, X @ th
    assert np.all(np.logaddexp(0, za) - y * za >= np.logaddexp(0, z) - y * z - 1e-15)
    assert np.array_equal(m.fgsm(np.zeros(117), eps, idx), X)   # theta = 0: no direction


@pytest.mark.parametrize("backend", BACKENDS)
def test_adversarial_gradient_is_the_gradient_on_the_fgsm_batch(models, ds, backend):
    m = models[backend]
    th = _theta(7, scale=1.0)
    idx = np.array([3, 3, 50, 900, 12, 4000, 6000])
    k = 3
    Xb = ds.X_train[idx].copy()
    Xb[:k] = m.fgsm(th, 0.1, idx[:k])
    ref = LogisticRegression(Xb, ds.y_train[idx], lam=1e-3, backend="numpy")
    loss, grad = m.loss_and_gradient(th, idx, adv_count=k, adv_eps=0.1)
    assert loss == pytest.approx(ref.loss(th), rel=1e-13)
    assert np.allclose(grad, ref.gradient(th), rtol=0, atol=1e-14)


def test_constants_are_exact_for_this_model(models, ds, optimum):
    m = models["numba"]
    C = m.constants()
    X, n, lam = ds.X_train, len(ds.y_train), 1e-3
    # L from the data alone, not from the model's Hessian: p (1 - p) <= 1/4, with equality at
    # theta = 0, so H(theta) <= X^T X / (4 n) + lam I and L = sigma_max(X)^2 / (4 n) + lam
    sigma = np.linalg.svd(X, compute_uv=False)[0]
    assert C.L == pytest.approx(sigma ** 2 / (4 * n) + lam, rel=1e-12)
    # ... and it bounds the Hessian everywhere: H(0) - H(theta) is PSD, both Hessians built
    # here from the rows (H = X^T diag(p (1 - p)) X / n + lam I)
    H0 = X.T @ X / (4 * n) + lam * np.eye(117)
    for s in range(3):
        th = _theta(20 + s, scale=2.0)
        p = 1.0 / (1.0 + np.exp(-(X @ th)))
        H = (X * (p * (1 - p))[:, None]).T @ X / n + lam * np.eye(117)
        assert np.linalg.eigvalsh(H0 - H)[0] >= -1e-12
        assert np.linalg.eigvalsh(H)[-1] <= C.L * (1 + 1e-12)
    assert C.c == 1e-3 and C.M_V == 0.0 and C.M_G == 1.0
    assert C.M == 22.0                                             # 22 ones per row
    # one-hot blocks are linearly dependent: the Hessian's smallest eigenvalue is lam itself
    assert np.linalg.eigvalsh(m.hessian(optimum.theta))[0] == pytest.approx(1e-3, rel=1e-9)
    # the per-sample gradient variance (exact, over all rows) is below M at any theta
    for s in range(3):
        th = _theta(30 + s, scale=2.0)
        r = 1 / (1 + np.exp(-(ds.X_train @ th))) - ds.y_train
        G = ds.X_train * r[:, None] + 1e-3 * th
        var = np.mean(np.sum((G - G.mean(axis=0)) ** 2, axis=1))
        assert var <= C.M + C.M_V * np.sum(G.mean(axis=0) ** 2)
    assert max_eta0(C, 800) == pytest.approx(1 / (C.L * 801))
    assert max_eta0(C, 800, condition="variance") == pytest.approx(1 / (C.L * 800))
    with pytest.raises(ValueError, match="b_max"):
        max_eta0(C, 0)


def test_newton_optimum(models, optimum):
    m = models["numba"]
    assert optimum.grad_norm < 1e-10
    assert np.linalg.norm(m.gradient(optimum.theta)) < 1e-10
    # the NumPy path agrees that this is the optimum
    assert models["numpy"].loss(optimum.theta) == pytest.approx(optimum.f_star, rel=1e-13)
    assert np.linalg.norm(models["numpy"].gradient(optimum.theta)) < 1e-10
    rng = np.random.default_rng(8)
    for _ in range(5):
        th = optimum.theta + rng.standard_normal(117) * 0.5
        gap = m.loss(th) - optimum.f_star
        # strong convexity: F(theta) - F* >= (c/2) ||theta - theta*||^2
        assert gap >= 0.5e-3 * np.sum((th - optimum.theta) ** 2) * (1 - 1e-9)
    assert m.accuracy(optimum.theta) > 0.99


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_model_top_eigenvalue_matches_eigvalsh(models, method):
    m = models["numba"]
    for th in (np.zeros(117), _theta(9, scale=1.0)):
        want = np.linalg.eigvalsh(m.hessian(th))[-1]
        r = m.top_eigenvalue(th, method=method, tol=1e-10, max_iter=500)
        assert r.converged and r.value == pytest.approx(want, rel=1e-8)
        assert np.linalg.norm(m.hvp(th, r.vector) - r.value * r.vector) < 1e-4 * want
        idx = np.arange(0, 6905, 11)
        want_b = np.linalg.eigvalsh(m.hessian(th, idx))[-1]
        assert m.top_eigenvalue(th, idx, method=method, tol=1e-10, max_iter=500).value == \
            pytest.approx(want_b, rel=1e-8)


# ---------------------------------------------------------------------------------------------
# the eigen-solvers on matrices with known answers


def test_eigensolvers_on_known_spectra():
    # block-diagonal: a 2x2 block with eigenvalues 1 and 7, then a diagonal; top is 7
    B = np.array([[4.0, 3.0], [3.0, 4.0]])
    A = np.zeros((6, 6))
    A[:2, :2] = B
    A[2:, 2:] = np.diag([6.5, 2.0, 0.5, 0.0])
    for method in ("power", "lanczos"):
        r = top_eigenvalue(A, method=method, tol=1e-12, max_iter=2000, seed=1)
        assert r.converged and r.value == pytest.approx(7.0, rel=1e-9)
        assert abs(abs(r.vector[:2] @ np.array([1, 1]) / math.sqrt(2)) - 1) < 1e-5
    # Lanczos needs far fewer products when the top of the spectrum is clustered
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    lam = np.concatenate([[1.0, 0.99, 0.98], np.linspace(0, 0.9, 197)])
    A = (Q * lam) @ Q.T
    p = top_eigenvalue(A, method="power", tol=1e-8, max_iter=5000)
    q = top_eigenvalue(lambda v: A @ v, 200, method="lanczos", tol=1e-8, max_iter=200)
    assert q.converged and q.value == pytest.approx(1.0, rel=1e-7)
    # power iteration stops when successive Rayleigh quotients differ by <= tol * lam; their
    # error shrinks by r^2 = 0.98 per product, so it stops within about tol r^2 / (1 - r^2)
    # = 5e-7 of the top (4.9e-7 measured over 20 start vectors): 1e-6 holds
    assert p.converged and p.value == pytest.approx(1.0, rel=1e-6)
    assert q.n_matvec < p.n_matvec / 3
    # a budget too small is reported, not hidden
    r = top_eigenvalue(A, method="power", tol=1e-12, max_iter=3)
    assert not r.converged and r.n_matvec == 3


@pytest.mark.parametrize("kwargs,err,match", [
    ({"method": "qr"}, ValueError, "method"),
    ({"tol": 0}, ValueError, "tol"),
    ({"tol": float("nan")}, ValueError, "tol"),
    ({"max_iter": 0}, ValueError, "max_iter"),
])
def test_eigensolver_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        top_eigenvalue(np.eye(3), **kwargs)


def test_eigensolver_rejects_bad_matvec():
    with pytest.raises(ValueError, match="shape"):
        top_eigenvalue(lambda v: v[:2], 3)
    with pytest.raises(ValueError, match="non-finite"):
        top_eigenvalue(lambda v: v * np.nan, 3)
    with pytest.raises(ValueError, match="square"):
        top_eigenvalue(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dim"):
        top_eigenvalue(lambda v: v, 0)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("lam,err", [(0.0, ValueError), (-1e-3, ValueError),
                                     (float("nan"), ValueError), (float("inf"), ValueError),
                                     ("1e-3", TypeError), (None, TypeError)])
def test_lam_must_be_positive(ds, lam, err):
    with pytest.raises(err, match="lam"):
        LogisticRegression(ds.X_val, ds.y_val, lam)


def test_model_input_errors(ds, models):
    with pytest.raises(ValueError, match="backend"):
        LogisticRegression(ds.X_val, ds.y_val, 1e-3, backend="torch")
    with pytest.raises(ValueError, match="0 or 1"):
        LogisticRegression(ds.X_val, ds.y_val * 2 - 1, 1e-3)
    with pytest.raises(ValueError, match="finite"):
        X = ds.X_val.copy()
        X[3, 3] = np.nan
        LogisticRegression(X, ds.y_val, 1e-3)
    with pytest.raises(ValueError, match="at least one sample"):
        LogisticRegression(np.zeros((0, 117)), np.zeros(0), 1e-3)
    with pytest.raises(ValueError, match="feature_range"):
        LogisticRegression(ds.X_val, ds.y_val, 1e-3, feature_range=(1.0, 0.0))
    m = models["numba"]
    with pytest.raises(ValueError, match=r"theta must have shape \(117,\)"):
        m.loss(np.zeros(116))
    with pytest.raises(ValueError, match="idx must be in"):
        m.loss(np.zeros(117), np.array([0, 6905]))
    with pytest.raises(ValueError, match="empty batch"):
        m.gradient(np.zeros(117), np.array([], dtype=np.int64))
    with pytest.raises(TypeError, match="idx"):
        m.gradient(np.zeros(117), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="adv_count"):
        m.loss_and_gradient(np.zeros(117), np.array([0, 1]), adv_count=3, adv_eps=0.1)
    with pytest.raises(ValueError, match="adv_eps"):
        m.loss_and_gradient(np.zeros(117), np.array([0, 1]), adv_count=1, adv_eps=-0.1)
    with pytest.raises(ValueError, match="eps"):
        m.fgsm(np.zeros(117), float("nan"))
    with pytest.raises(ValueError, match="shape"):
        m.accuracy(np.zeros(117), np.zeros((2, 5)), np.zeros(2))


def test_warm_start_in_the_convex_backend(models):
    """The core's warm start from the NumPy side: from the exact eigenvector the solver needs
    fewer products than cold, and from the second one it still finds the top (exact checks)."""
    from hessbatch.convex import make_eigenvalue_fn
    m = models["numba"]
    th = _theta(3, scale=1.0)
    w, V = np.linalg.eigh(m.hessian(th))
    cold = m.top_eigenvalue(th, method="lanczos", tol=1e-8, max_iter=117, seed=0)
    warm = m.top_eigenvalue(th, method="lanczos", tol=1e-8, max_iter=117, seed=0,
                            start=V[:, -1], warm_mix=1e-3, confirm_warm=False)
    assert warm.value == pytest.approx(w[-1], rel=1e-8)
    assert warm.n_matvec < cold.n_matvec
    other = m.top_eigenvalue(th, method="lanczos", tol=1e-10, max_iter=117, seed=0,
                             start=V[:, -2])
    assert other.value == pytest.approx(w[-1], rel=1e-8)
    with pytest.raises(ValueError, match="start must be a vector of shape"):
        m.top_eigenvalue(th, start=np.ones(3))
    f_warm = make_eigenvalue_fn(m, method="lanczos", tol=1e-6, warm_start=True,
                                confirm_warm=False)
    f_cold = make_eigenvalue_fn(m, method="lanczos", tol=1e-6)
    a = [f_warm(th).n_matvec for _ in range(3)]
    b = [f_cold(th).n_matvec for _ in range(3)]
    assert sum(a[1:]) < sum(b[1:])       # same theta: the kept vector is the answer
