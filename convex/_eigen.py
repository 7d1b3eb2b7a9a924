"""Top eigenvalue of a symmetric positive semi-definite operator from matrix-vector products.

The solvers only see a matvec ``v -> A v`` (for the convex model, a Hessian-vector product), so
the same code serves the full-data Hessian, a mini-batch Hessian or an explicit matrix. Each
returns the number of matvecs it spent: that, not wall time, is the cost the paper's schedule
pays at every eigenvalue check.

* power iteration: v <- A v / ||A v||, Rayleigh quotient lam = v . A v, stopped when
  |lam_k - lam_{k-1}| <= tol * |lam_k| (Algorithm 1's setting: tol 1e-2, at most 10 products;
  the defaults here are tighter because a convex Hessian of dimension 117 is cheap);
* Lanczos with full re-orthogonalisation: the Ritz value of the k x k tridiagonal matrix,
  stopped when the residual bound beta_k |s_k| <= tol * lam (Kaniel-Paige theory: fewer
  matvecs than power iteration when the top eigenvalue is not well separated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["EigenResult", "top_eigenvalue"]


@dataclass(frozen=True)
class EigenResult:
    """What an eigen-solver found.

    Fields:
        value: the estimate of the largest eigenvalue.
        vector: its unit eigenvector estimate, shape (d,).
        n_matvec: matrix-vector products spent (HVPs, for a Hessian).
        converged: whether the stopping test passed before ``max_iter``.
        rows_per_matvec: data rows each product read (a Hessian batch of that many rows), so
            that ``n_matvec * rows_per_matvec`` is the sample cost of the check; None when the
            operator is not a data Hessian (an explicit matrix or a plain matvec).
    """

    value: float
    vector: np.ndarray
    n_matvec: int
    converged: bool
    rows_per_matvec: int | None = None

    @property
    def rows_read(self) -> int | None:
        """Data rows read by all the products: ``n_matvec * rows_per_matvec`` (None: unknown)."""
        return None if self.rows_per_matvec is None else self.n_matvec * self.rows_per_matvec


def top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray] | np.ndarray, dim: int | None = None,
                   *, method: str = "power", tol: float = 1e-3, max_iter: int = 100,
                   seed: int | np.random.Generator = 0) -> EigenResult:
    """Largest eigenvalue of a symmetric PSD operator by power iteration or Lanczos.

    Args:
        matvec: a callable ``v -> A v`` on float64 vectors of length ``dim``, or the matrix A.
        dim: the dimension (taken from the matrix when A is given).
        method: ``"power"`` or ``"lanczos"``.
        tol: relative tolerance, > 0 (see the module docstring for each stopping test).
        max_iter: at most this many matvecs, >= 1.
        seed: seed or Generator for the random unit start vector.

    Returns:
        An :class:`EigenResult`; ``converged`` is False when ``max_iter`` ran out first.

    Raises:
        ValueError, TypeError: bad method, tol, max_iter, dim, or a matvec returning the wrong
            shape or a non-finite vector.

    Example:
        >>> r = top_eigenvalue(np.diag([1.0, 2.0, 5.0]), method="lanczos", tol=1e-10)
        >>> round(r.value, 8), r.n_matvec <= 3
        (5.0, True)
    """
    if isinstance(matvec, np.ndarray):
        A = np.asarray(matvec, dtype=np.float64)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"matvec as a matrix must be square, got shape {A.shape}")
        dim = A.shape[0]
        matvec = A.__matmul__
    if not callable(matvec):
        raise TypeError(f"matvec must be callable or a square matrix, got {type(matvec).__name__}")
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    if method not in ("power", "lanczos"):
        raise ValueError(f"method must be 'power' or 'lanczos', got {method!r}")
    if not (isinstance(tol, (int, float)) and np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    v = rng.standard_normal(int(dim))
    v /= np.linalg.norm(v)

    def apply(x: np.ndarray) -> np.ndarray:
        w = np.asarray(matvec(x), dtype=np.float64)
        if w.shape != (dim,):
            raise ValueError(f"matvec returned shape {w.shape}, expected ({dim},)")
        if not np.all(np.isfinite(w)):
            raise ValueError("matvec returned a non-finite vector (NaN/inf parameters?)")
        return w

    if method == "power":
        return _power(apply, v, tol, int(max_iter))
    return _lanczos(apply, v, tol, int(max_iter))


def _power(apply, v, tol, max_iter):
    lam_prev = None
    lam = 0.0
    for k in range(1, max_iter + 1):
        w = apply(v)
        lam = float(v @ w)
        norm = float(np.linalg.norm(w))
        if norm == 0.0:  # A v = 0: v is in the null space, the operator is zero on it
            return EigenResult(0.0, v, k, True)
        if lam_prev is not None and abs(lam - lam_prev) <= tol * abs(lam):
            return EigenResult(lam, w / norm, k, True)
        lam_prev = lam
        v = w / norm
    return EigenResult(lam, v, max_iter, False)


def _lanczos(apply, v, tol, max_iter):
    dim = v.shape[0]
    steps = min(max_iter, dim)
    Q = np.zeros((steps + 1, dim))
    alphas, betas = [], []
    Q[0] = v
    value, vec, converged = 0.0, v, False
    k = 0
    for k in range(1, steps + 1):
        w = apply(Q[k - 1])
        a = float(Q[k - 1] @ w)
        alphas.append(a)
        # full re-orthogonalisation (twice is enough) keeps the basis orthonormal in floats
        for _ in range(2):
            w -= Q[:k].T @ (Q[:k] @ w)
        b = float(np.linalg.norm(w))
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        evals, evecs = np.linalg.eigh(T)
        value = float(evals[-1])
        s = evecs[:, -1]
        vec = Q[:k].T @ s
        if b * abs(s[-1]) <= tol * abs(value) or b <= 1e-14 * max(abs(value), 1.0) or k == dim:
            converged = True
            break
        betas.append(b)
        Q[k] = w / b
    vec = vec / np.linalg.norm(vec)
    return EigenResult(value, vec, k, converged)
