"""The Numba twin of the kernels in ``_kernels`` (see its docstring for the math).

Imported only when ``backend="numba"`` is asked for, so the NumPy path never imports numba;
compiled through ``_jit.njit`` (cached on disk where a cache folder can be written).
"""

from __future__ import annotations

import numpy as np

from ._jit import njit

__all__ = ["NumbaKernels", "to_csr"]


# --------------------------------------------------------------------------------------------
# Numba path: the rows are read in compressed sparse row form (indptr, indices, values). The
# mushroom rows hold 22 ones in 117 columns, so a sparse dot product does a fifth of the work of
# a dense one and reads a fifth of the memory; dense user data simply has every entry stored.


# reassoc lets LLVM vectorise the reductions; serial loops keep the result independent of the
# thread count (bit-for-bit reproducible on one machine). No nnan/ninf: the stable softplus
# branches and the divergence check rely on inf/nan behaving as IEEE says.
jit = njit(cache=True, fastmath={"reassoc", "contract"})


@jit
def _nb_softplus(z):
    if z > 0.0:
        return z + np.log1p(np.exp(-z))
    return np.log1p(np.exp(z))


@jit
def _nb_sigmoid(z):
    if z >= 0.0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return e / (1.0 + e)


@jit
def _nb_dot(indptr, indices, values, i, theta):
    s = 0.0
    for k in range(indptr[i], indptr[i + 1]):
        s += values[k] * theta[indices[k]]
    return s


@jit
def _nb_regulariser(theta, lam):
    s = 0.0
    for j in range(theta.shape[0]):
        s += theta[j] * theta[j]
    return 0.5 * lam * s


@jit
def _nb_fgsm_row(indptr, indices, values, i, r, theta, eps, lo, hi, out):
    # dense FGSM copy of row i: x + eps * sign(r * theta), clipped; r = p - y
    for j in range(theta.shape[0]):
        out[j] = 0.0
    for k in range(indptr[i], indptr[i + 1]):
        out[indices[k]] = values[k]
    for j in range(theta.shape[0]):
        g = r * theta[j]
        step = eps if g > 0.0 else (-eps if g < 0.0 else 0.0)
        out[j] = min(max(out[j] + step, lo[j]), hi[j])


@jit
def nb_loss_csr(indptr, indices, values, y, idx, theta, lam):
    """F_S(theta) on CSR rows."""
    total = 0.0
    for t in range(idx.shape[0]):
        i = idx[t]
        z = _nb_dot(indptr, indices, values, i, theta)
        total += _nb_softplus(z) - y[i] * z
    return total / idx.shape[0] + _nb_regulariser(theta, lam)


@jit
def nb_loss_grad_csr(indptr, indices, values, y, idx, theta, lam, adv_count, eps, lo, hi,
                     grad):
    """F_S(theta) returned, grad F_S written into ``grad``; FGSM on the first adv_count rows."""
    d = theta.shape[0]
    n = idx.shape[0]
    for j in range(d):
        grad[j] = 0.0
    xa = np.empty(d)
    total = 0.0
    for t in range(n):
        i = idx[t]
        z = _nb_dot(indptr, indices, values, i, theta)
        if t < adv_count:
            _nb_fgsm_row(indptr, indices, values, i, _nb_sigmoid(z) - y[i], theta, eps, lo, hi,
                         xa)
            z = 0.0
            for j in range(d):
                z += xa[j] * theta[j]
            r = _nb_sigmoid(z) - y[i]
            for j in range(d):
                grad[j] += r * xa[j]
        else:
            r = _nb_sigmoid(z) - y[i]
            for k in range(indptr[i], indptr[i + 1]):
                grad[indices[k]] += r * values[k]
        total += _nb_softplus(z) - y[i] * z
    for j in range(d):
        grad[j] = grad[j] / n + lam * theta[j]
    return total / n + _nb_regulariser(theta, lam)


@jit
def nb_hvp_csr(indptr, indices, values, idx, theta, v, lam, out):
    """H_S(theta) v written into ``out``."""
    d = theta.shape[0]
    n = idx.shape[0]
    for j in range(d):
        out[j] = 0.0
    for t in range(n):
        i = idx[t]
        p = _nb_sigmoid(_nb_dot(indptr, indices, values, i, theta))
        w = p * (1.0 - p) * _nb_dot(indptr, indices, values, i, v)
        for k in range(indptr[i], indptr[i + 1]):
            out[indices[k]] += w * values[k]
    for j in range(d):
        out[j] = out[j] / n + lam * v[j]


@jit
def nb_hessian_csr(indptr, indices, values, idx, theta, lam, out):
    """The explicit Hessian H_S(theta) written into ``out`` (d, d): sum of w_i x_i x_i^T."""
    d = theta.shape[0]
    n = idx.shape[0]
    for a in range(d):
        for b in range(d):
            out[a, b] = 0.0
    for t in range(n):
        i = idx[t]
        p = _nb_sigmoid(_nb_dot(indptr, indices, values, i, theta))
        w = p * (1.0 - p)
        for ka in range(indptr[i], indptr[i + 1]):
            wa = w * values[ka]
            a = indices[ka]
            for kb in range(indptr[i], indptr[i + 1]):
                out[a, indices[kb]] += wa * values[kb]
    for a in range(d):
        for b in range(d):
            out[a, b] /= n
        out[a, a] += lam


@jit
def nb_fgsm_csr(indptr, indices, values, y, idx, theta, eps, lo, hi, out):
    """FGSM copies of the rows idx written into ``out`` (n, d)."""
    for t in range(idx.shape[0]):
        i = idx[t]
        r = _nb_sigmoid(_nb_dot(indptr, indices, values, i, theta)) - y[i]
        _nb_fgsm_row(indptr, indices, values, i, r, theta, eps, lo, hi, out[t])


def to_csr(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, values) of the non-zero entries of a dense 2-D array, row by row."""
    mask = X != 0
    indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=indptr[1:])
    rows, cols = np.nonzero(mask)
    return indptr, cols.astype(np.int64), np.ascontiguousarray(X[rows, cols])


class NumbaKernels:
    """The Numba kernels bound to one matrix (its CSR form is built once)."""

    name = "numba"

    def __init__(self, X):
        self.csr = to_csr(X)

    def loss(self, X, y, idx, theta, lam):
        return float(nb_loss_csr(*self.csr, y, idx, theta, lam))

    def loss_grad(self, X, y, idx, theta, lam, adv_count, eps, lo, hi):
        grad = np.empty(theta.shape[0])
        loss = nb_loss_grad_csr(*self.csr, y, idx, theta, lam, adv_count, eps, lo, hi, grad)
        return float(loss), grad

    def hvp(self, X, y, idx, theta, v, lam):
        out = np.empty(theta.shape[0])
        nb_hvp_csr(*self.csr, idx, theta, v, lam, out)
        return out

    def hessian(self, X, y, idx, theta, lam):
        # compiled too: a threaded BLAS product can be 40x slower on a busy 2-core machine
        out = np.empty((theta.shape[0], theta.shape[0]))
        nb_hessian_csr(*self.csr, idx, theta, lam, out)
        return out

    def fgsm(self, X, y, idx, theta, eps, lo, hi):
        out = np.empty((idx.shape[0], theta.shape[0]))
        nb_fgsm_csr(*self.csr, y, idx, theta, eps, lo, hi, out)
        return out
