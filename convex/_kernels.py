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
on x). The NumPy path works on the dense rows; the Numba kernels read the rows in compressed
sparse row form (mushroom rows hold 22 ones in 117 columns). Both have the same signatures and
are tested against each other; the Numba kernels are serial, so the same inputs give the same
bits on any number of cores.
"""

from __future__ import annotations

import numpy as np

try:  # the NumPy path works without numba
    import numba
except ImportError:  # pragma: no cover - numba is a dependency of the convex extra
    numba = None

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


# --------------------------------------------------------------------------------------------
# Numba path: the rows are read in compressed sparse row form (indptr, indices, values). The
# mushroom rows hold 22 ones in 117 columns, so a sparse dot product does a fifth of the work of
# a dense one and reads a fifth of the memory; dense user data simply has every entry stored.


# reassoc lets LLVM vectorise the reductions; serial loops keep the result independent of the
# thread count (bit-for-bit reproducible on one machine). No nnan/ninf: the stable softplus
# branches and the divergence check rely on inf/nan behaving as IEEE says.
if numba is not None:
    jit = numba.njit(cache=True, fastmath={"reassoc", "contract"})
else:  # pragma: no cover
    def jit(f):
        return f


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


class _NumbaKernels:
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
        return _NUMPY
    if numba is None:
        raise ValueError("backend='numba' needs numba: pip install 'hessbatch[convex]' "
                         "(or use backend='numpy')")
    return _NumbaKernels(X)
