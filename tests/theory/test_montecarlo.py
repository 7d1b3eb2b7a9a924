"""The Monte-Carlo kernel: compiled against NumPy, reproducible, and statistically right."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from hessbatch.convex import confidence_band, sgd_runs
from hessbatch.convex._montecarlo import _pack, draw_indices, run_keys


def small_logistic(seed=0, n=120, d=9, density=0.4):
    rng = np.random.default_rng(seed)
    X = (rng.random((n, d)) < density) * rng.uniform(0.5, 2.0, (n, d))
    y = (rng.random(n) < 0.5).astype(float)
    return X, y


def schedule(T=40):
    b = np.arange(T) % 5 + 1            # varying batch sizes, 1..5
    return b, 0.05 * b


@pytest.mark.parametrize("kind", ["logistic", "least_squares"])
def test_compiled_kernel_agrees_with_numpy(kind):
    X, y = small_logistic()
    b, a = schedule()
    kw = dict(batch_sizes=b, step_sizes=a, lam=0.02, kind=kind, runs=30, seed=11,
              theta0=np.linspace(-0.5, 0.5, X.shape[1]), checkpoints=[0, 3, 17, 40])
    ref = sgd_runs(X, y, backend="numpy", **kw)
    for backend in ("numba", "numba-serial"):
        res = sgd_runs(X, y, backend=backend, **kw)
        # same index draws, different summation order only: agreement to rounding
        np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(res.thetas, ref.thetas, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(res.averages, ref.averages, rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(ref.samples, np.concatenate(([0], np.cumsum(b)))[[0, 3, 17, 40]])


def test_binary_rows_take_the_value_free_path_and_agree_with_numpy():
    rng = np.random.default_rng(8)
    X = (rng.random((80, 12)) < 0.3).astype(float)   # 0/1 data, rows of different lengths
    X[5] = 0.0                                       # and an empty row
    y = (rng.random(80) < 0.5).astype(float)
    idx, val = _pack(X)
    assert val.shape[0] == 0 and idx.dtype == np.uint16
    b, a = schedule(30)
    kw = dict(batch_sizes=b, step_sizes=a, lam=0.05, runs=20, seed=2, checkpoints=[0, 7, 30])
    np.testing.assert_allclose(sgd_runs(X, y, **kw).losses,
                               sgd_runs(X, y, backend="numpy", **kw).losses, rtol=1e-12)


def test_packed_rows_rebuild_the_matrix():
    X, _ = small_logistic(3)
    idx, val = _pack(X)
    n, d = X.shape
    rebuilt = np.zeros((n, d + 1))
    np.add.at(rebuilt, (np.repeat(np.arange(n), idx.shape[1]), idx.ravel().astype(int)),
              val.ravel())
    np.testing.assert_array_equal(rebuilt[:, :d], X)
    assert np.all(rebuilt[:, d] == 0)      # padding points at the zero slot with value 0


def test_same_seed_same_numbers_on_any_thread_count_and_chunking():
    X, y = small_logistic(1)
    b, a = schedule(25)
    kw = dict(batch_sizes=b, step_sizes=a, lam=0.01, seed=5, checkpoints=[0, 25])
    whole = sgd_runs(X, y, runs=40, threads=2, **kw)
    one = sgd_runs(X, y, runs=40, threads=1, **kw)
    serial = sgd_runs(X, y, runs=40, backend="numba-serial", **kw)
    parts = [sgd_runs(X, y, runs=15, first_run=0, **kw), sgd_runs(X, y, runs=25, first_run=15, **kw)]
    np.testing.assert_array_equal(whole.losses, one.losses)
    np.testing.assert_array_equal(whole.losses, serial.losses)
    np.testing.assert_array_equal(whole.losses, np.concatenate([p.losses for p in parts]))
    again = sgd_runs(X, y, runs=40, **kw)
    np.testing.assert_array_equal(whole.thetas, again.thetas)
    other = sgd_runs(X, y, runs=40, **{**kw, "seed": 6})
    assert not np.array_equal(whole.losses[:, 1], other.losses[:, 1])
    # independent runs differ from each other
    assert len(np.unique(whole.losses[:, 1])) == 40


def test_draws_are_uniform():
    # Pearson chi-square on 200k draws over 50 bins; critical value at 1e-4 (df = 49) from the
    # Wilson-Hilferty approximation of the chi-square quantile.
    n, df = 50, 49
    idx = draw_indices(run_keys(3, 40), 0, 5000, n).ravel()
    assert idx.min() >= 0 and idx.max() < n
    counts = np.bincount(idx, minlength=n)
    expected = idx.size / n
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    z = NormalDist().inv_cdf(1 - 1e-4)
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    assert chi2 < critical, (chi2, critical)
    # and consecutive draws are not correlated: lag-1 correlation within 4.5 standard errors
    u = idx[:-1] - (n - 1) / 2
    v = idx[1:] - (n - 1) / 2
    corr = float(np.mean(u * v) / np.mean(u * u))
    assert abs(corr) < 4.5 / math.sqrt(idx.size)


@pytest.mark.parametrize("kind", ["logistic", "least_squares"])
def test_one_step_is_unbiased(kind):
    # E[theta_1] = theta_0 - alpha grad F(theta_0) for i.i.d. mini-batches: the runs' mean
    # must be within 4.5 standard errors of it in every coordinate.
    X, y = small_logistic(2)
    theta0 = np.linspace(-1.0, 1.0, X.shape[1])
    lam, alpha, runs = 0.05, 0.3, 20_000
    res = sgd_runs(X, y, batch_sizes=[3], step_sizes=[alpha], lam=lam, kind=kind, runs=runs,
                   seed=9, theta0=theta0)
    z = X @ theta0
    slope = 1 / (1 + np.exp(-z)) - y if kind == "logistic" else z - y
    expected = theta0 - alpha * (X.T @ slope / len(y) + lam * theta0)
    se = res.thetas.std(axis=0, ddof=1) / math.sqrt(runs)
    assert np.all(np.abs(res.thetas.mean(axis=0) - expected) <= 4.5 * se + 1e-15)


def test_losses_are_the_full_training_loss():
    X, y = small_logistic(4)
    b, a = schedule(10)
    res = sgd_runs(X, y, batch_sizes=b, step_sizes=a, lam=0.1, runs=3, seed=1)
    theta = res.thetas[1]
    z = X @ theta
    loss = np.mean(np.logaddexp(0, z) - y * z) + 0.05 * theta @ theta
    assert res.losses[1, -1] == pytest.approx(loss, rel=1e-12)
    assert np.all(res.losses[:, 0] == pytest.approx(math.log(2)))


def test_averages_are_the_mean_of_the_parameters_over_the_updates():
    """The Polyak average against the parameters read at every update of the same runs."""
    X, y = small_logistic(5)
    b, a = schedule(12)
    theta0 = np.linspace(-0.3, 0.3, X.shape[1])
    kw = dict(batch_sizes=b, step_sizes=a, lam=0.05, kind="least_squares", runs=7, seed=4,
              theta0=theta0)
    every = list(range(13))
    for backend in ("numba", "numpy"):
        res = sgd_runs(X, y, checkpoints=every, backend=backend, **kw)
        # each checkpoint's loss pins the parameters: rerun to each t and average the thetas
        path = np.stack([sgd_runs(X, y, **{**kw, "batch_sizes": b[:t], "step_sizes": a[:t]},
                                  backend=backend).thetas for t in range(1, 13)], axis=1)
        np.testing.assert_allclose(res.averages, path.mean(axis=1), rtol=1e-12, atol=1e-14)
        assert not np.allclose(res.averages, res.thetas)       # not the final iterate
    none = sgd_runs(X, y, batch_sizes=[], step_sizes=[], lam=0.1, runs=2, theta0=theta0)
    np.testing.assert_array_equal(none.averages, np.tile(theta0, (2, 1)))


def test_no_updates_and_zero_steps():
    X, y = small_logistic()
    res = sgd_runs(X, y, batch_sizes=[], step_sizes=[], lam=0.1, runs=2)
    assert res.losses.shape == (2, 1) and res.checkpoints.tolist() == [0]
    res = sgd_runs(X, y, batch_sizes=[4, 4], step_sizes=[0.0, 0.0], lam=0.1, runs=2)
    np.testing.assert_array_equal(res.thetas, 0.0)


def test_confidence_band():
    rng = np.random.default_rng(0)
    v = rng.normal(3.0, 2.0, size=(400, 2))
    mean, lo, hi, sd = confidence_band(v, 0.95)
    np.testing.assert_allclose(hi - mean, 1.959964 * v.std(axis=0, ddof=1) / 20, rtol=1e-6)
    np.testing.assert_allclose(mean - lo, hi - mean)
    with pytest.raises(ValueError, match="R >= 2"):
        confidence_band(np.ones((1, 3)))
    with pytest.raises(ValueError, match="confidence must be in"):
        confidence_band(np.ones((3, 3)), 1.0)


@pytest.mark.parametrize("change,exc,match", [
    (dict(kind="hinge"), ValueError, "kind must be one of"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
    (dict(X=np.ones(5)), ValueError, "X must be a non-empty 2-d array"),
    (dict(X=np.full((6, 2), np.nan)), ValueError, "X must be finite"),
    (dict(y=np.ones(5)), ValueError, r"y must have shape \(6,\)"),
    (dict(y=np.full(6, 2.0)), ValueError, "y must be 0 or 1 for kind='logistic', got 2.0"),
    (dict(lam=-1.0), ValueError, "lam must be finite and >= 0"),
    (dict(batch_sizes=[1, 0]), ValueError, "batch_sizes must be >= 1, got 0 at index 1"),
    (dict(batch_sizes=[1.5, 1]), TypeError, "batch_sizes must hold ints"),
    (dict(step_sizes=[0.1]), ValueError, "step_sizes must have the length of batch_sizes"),
    (dict(step_sizes=[0.1, np.inf]), ValueError, "step_sizes must be finite and >= 0"),
    (dict(checkpoints=[0, 3]), ValueError, r"checkpoints must be .* in \[0, 2\]"),
    (dict(checkpoints=[2, 1]), ValueError, "strictly increasing"),
    (dict(runs=0), ValueError, "runs must be >= 1"),
    (dict(seed=-1), ValueError, r"seed must be in \[0, 2\^64\)"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(theta0=np.zeros(3)), ValueError, r"theta0 must be a finite array of shape \(2,\)"),
    (dict(threads=0), ValueError, "threads must be an int in"),
    (dict(first_run=-1), ValueError, "first_run must be an int >= 0"),
])
def test_bad_input_is_named(change, exc, match):
    kw = dict(X=np.eye(6, 2), y=np.array([0.0, 1, 0, 1, 0, 1]), batch_sizes=[1, 2],
              step_sizes=[0.1, 0.1], lam=0.1, runs=2)
    kw.update(change)
    X, y = kw.pop("X"), kw.pop("y")
    with pytest.raises(exc, match=match):
        sgd_runs(X, y, **kw)
