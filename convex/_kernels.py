"""Per-batch kernels of L2-regularised logistic regression: a NumPy path and a Numba twin.

For a batch S of row indices (``idx``, repeats allowed: i.i.d. sampling draws with
replacement), with z_i = x_i . theta, p_i = sigmoid(z_i) and n = |S|::

    F_S(theta)   = (1/n) sum_{i in S} [softplus(z_i) - y_i z_i] + (lam/2) ||theta||^2
    grad F_S     = (1/n) X_S^T (p - y) + lam theta
    H_S v        = (1/n) X_S^T (p (1 - p) * X_S v) + lam v

FGSM (ABSA, step 1 of Algorithm 1) on the first ``adv_count`` rows of the batch: the gradient
of the per-sample loss with respect to the features is (p_i - y_i) theta, so::

    x_adv = clip(x + eps * sign((p_i - y_i) theta), lo, hi)        (per-feature bounds)

and the batch gradient is then taken on x_adv in place of x (the regulariser does not depend
on x). The NumPy path works on the dense rows; the Numba kernels (``_nbkernels``, imported
only for that backend) read the rows in compressed sparse row form (mushroom rows hold 22 ones in 117 columns). Both have the same signatures and
are tested against each other; the Numba kernels are serial, so the same inputs give the same
bits on any number of cores.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BACKENDS", "get_kernels"]


# --------------------------------------------------------------------------------------------
# scalar helpers, written once for both paths


def _softplus_np(z: np.ndarray) -> np.ndarray:
    # log(1 + e^z) without overflow: max(z, 0) + log1p(e^-|z|)
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _sigmoid_np(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# --------------------------------------------------------------------------------------------
# NumPy path (the reference the compiled path is tested against)


def np_loss(X, y, idx, theta, lam):
    """F_S(theta) on the rows ``idx`` (see the module docstring)."""
    Xb = X[idx]
    z = Xb @ theta
    return float(np.mean(_softplus_np(z) - y[idx] * z) + 0.5 * lam * (theta @ theta))


def np_loss_grad(X, y, idx, theta, lam, adv_count, eps, lo, hi):
    """(F_S, grad F_S) with FGSM applied to the first ``adv_count`` rows of the batch."""
    Xb = X[idx]
    yb = y[idx]
    if adv_count > 0:
        Xb = Xb.copy()
        Xb[:adv_count] = _np_fgsm_rows(Xb[:adv_count], yb[:adv_count], theta, eps, lo, hi)
    z = Xb @ theta
    r = _sigmoid_np(z) - yb
    n = len(idx)
    loss = float(np.mean(_softplus_np(z) - yb * z) + 0.5 * lam * (theta @ theta))
    return loss, Xb.T @ r / n + lam * theta


def _np_fgsm_rows(Xb, yb, theta, eps, lo, hi):
    r = _sigmoid_np(Xb @ theta) - yb
    return np.clip(Xb + eps * np.sign(r[:, None] * theta[None, :]), lo, hi)


def np_fgsm(X, y, idx, theta, eps, lo, hi):
    """The FGSM versions of the rows ``idx`` (a new (n, d) array)."""
    return _np_fgsm_rows(X[idx], y[idx], theta, eps, lo, hi)


def np_hvp(X, y, idx, theta, v, lam):
    """H_S(theta) v."""
    Xb = X[idx]
    p = _sigmoid_np(Xb @ theta)
    return Xb.T @ (p * (1.0 - p) * (Xb @ v)) / len(idx) + lam * v


def np_hessian(X, y, idx, theta, lam):
    """The explicit d x d Hessian H_S(theta) (for tests and Newton's method)."""
    Xb = X[idx]
    p = _sigmoid_np(Xb @ theta)
    H = (Xb.T * (p * (1.0 - p))) @ Xb / len(idx)
    H[np.diag_indices_from(H)] += lam
    return H


class _Kernels:
    """The five per-batch operations of one backend (plain functions, same signatures)."""

    def __init__(self, name, loss, loss_grad, hvp, hessian, fgsm):
        self.name = name
        self.loss = loss
        self.loss_grad = loss_grad
        self.hvp = hvp
        self.hessian = hessian
        self.fgsm = fgsm

    def __repr__(self) -> str:
        return f"<hessbatch.convex kernels {self.name!r}>"


BACKENDS = ("numba", "numpy")
_NUMPY = _Kernels("numpy", np_loss, np_loss_grad, np_hvp, np_hessian, np_fgsm)


def get_kernels(backend: str, X: np.ndarray):
    """The kernels of ``backend`` ("numba" or "numpy") for the matrix X.

    Both expose ``loss, loss_grad, hvp, hessian, fgsm`` with the NumPy path's signatures (X is
    passed again so that one call site serves both; the Numba kernels read their CSR copy).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy":
        return _NUMPY      # numba is never imported for this backend
    try:
        from ._nbkernels import NumbaKernels
    except ModuleNotFoundError as exc:
        if exc.name != "numba":
            raise
        raise ValueError("backend='numba' needs numba: pip install 'hessbatch[convex]' "
                         "(or use backend='numpy')") from None
    return NumbaKernels(X)
