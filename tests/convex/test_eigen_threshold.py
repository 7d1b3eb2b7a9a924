"""Issue 22 in the convex backend: the decision threshold and the warm-start guard of the
core solver, through hessbatch.convex.top_eigenvalue, against numpy.linalg.eigvalsh."""

import numpy as np
import pytest

from hessbatch.convex import top_eigenvalue


def _matrix(eigs, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T, q


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_threshold_lower_bound_is_certain_otherwise_the_plain_result(method):
    early = 0
    for seed in range(20):
        eigs = np.concatenate([[4.0, 3.8], np.random.default_rng(seed).uniform(0, 3, 10)])
        A, _ = _matrix(eigs, seed)
        lam1 = np.linalg.eigvalsh(A)[-1]
        plain = top_eigenvalue(A, method=method, tol=1e-6, max_iter=60, seed=seed)
        for thr in (0.5 * lam1, 0.9 * lam1, lam1, 1.5 * lam1):
            r = top_eigenvalue(A, method=method, tol=1e-6, max_iter=60, seed=seed, threshold=thr)
            if r.is_lower_bound:
                early += 1
                assert thr < r.value <= lam1 + 1e-12 and r.status == "lower_bound"
                assert r.n_hvps < plain.n_matvec
            else:
                assert (r.value, r.n_matvec) == (plain.value, plain.n_matvec)
            assert not (thr >= lam1 and r.is_lower_bound)
    assert early >= 20


def test_warm_guard_and_extension():
    eigs = np.array([5.0, 4.9] + [1.0] * 30)
    A, q = _matrix(eigs, 3)
    # a warm start on the second eigenvector, no random part: stuck on lambda_2 without the
    # guard; the guard's cold solve finds lambda_1
    raw = top_eigenvalue(A, method="lanczos", tol=1e-8, max_iter=40, start=q[:, 1],
                         warm_mix=0.0, confirm_warm=False)
    assert abs(raw.value - 4.9) <= 1e-8
    r = top_eigenvalue(A, method="lanczos", tol=1e-8, max_iter=40, start=q[:, 1], warm_mix=0.0)
    assert r.confirmed and abs(r.value - 5.0) <= 1e-8 and r.n_matvec > raw.n_matvec
    short = top_eigenvalue(A, method="power", tol=1e-9, max_iter=5)
    ext = top_eigenvalue(A, method="power", tol=1e-9, max_iter=5, extend=400)
    assert not short.converged and ext.converged and ext.extended == ext.n_matvec - 5
    with pytest.raises(ValueError, match="threshold must be None or a finite number"):
        top_eigenvalue(A, threshold=np.nan)
