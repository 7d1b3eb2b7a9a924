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

The loops themselves are the core's (:mod:`hessbatch._solver`, standard library, shared with
``hessbatch.deep``); this module supplies only the NumPy vector operations and keeps the
convex backend's stopping rule for Lanczos (``rule="linear"``: residual <= tol |lam|; the deep
backend uses ``tol^2``). The matvec's output is checked for shape and finiteness here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from hessbatch import _solver

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
        is_lower_bound: the solver stopped because an estimate was strictly above
            ``threshold``: ``value`` is a certain lower bound of the top eigenvalue ("no drop"),
            not the eigenvalue; ``converged`` is then False.
        threshold: the decision threshold given, or None.
        extended: products spent beyond ``max_iter`` (``extend``).
        confirmed: a warm value that decides a growth was confirmed by a cold solve.
    """

    value: float
    vector: np.ndarray
    n_matvec: int
    converged: bool
    rows_per_matvec: int | None = None
    is_lower_bound: bool = False
    threshold: float | None = None
    extended: int = 0
    confirmed: bool = False

    @property
    def n_hvps(self) -> int:
        """Products spent (the same as ``n_matvec``)."""
        return self.n_matvec

    @property
    def status(self) -> str:
        """``"lower_bound"``, ``"converged"`` or ``"not_converged"``."""
        if self.is_lower_bound:
            return "lower_bound"
        return "converged" if self.converged else "not_converged"

    @property
    def rows_read(self) -> int | None:
        """Data rows read by all the products: ``n_matvec * rows_per_matvec`` (None: unknown)."""
        return None if self.rows_per_matvec is None else self.n_matvec * self.rows_per_matvec


def top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray] | np.ndarray, dim: int | None = None,
                   *, method: str = "power", tol: float = 1e-3, max_iter: int = 100,
                   seed: int | np.random.Generator = 0, start: np.ndarray | None = None,
                   warm_mix: float = 0.1, threshold: float | None = None, extend: int = 0,
                   confirm_warm: bool = True) -> EigenResult:
    """Largest eigenvalue of a symmetric PSD operator by power iteration or Lanczos.

    Args:
        matvec: a callable ``v -> A v`` on float64 vectors of length ``dim``, or the matrix A.
        dim: the dimension (taken from the matrix when A is given).
        method: ``"power"`` or ``"lanczos"``.
        tol: relative tolerance, > 0 (see the module docstring for each stopping test).
        max_iter: at most this many matvecs, >= 1.
        seed: seed or Generator for the random unit start vector.
        start: a warm start (e.g. the previous ``EigenResult.vector``), mixed with the random
            vector as ``(u + warm_mix r) / |u + warm_mix r|``; None: a cold random start.
        warm_mix: weight of the random part of a warm start (>= 0).
        threshold: the decision threshold ``lam_ref / alpha`` (None: none). The solver stops as
            soon as an estimate is strictly above it (every estimate is at most the top
            eigenvalue, so "no drop" is certain): ``is_lower_bound=True``.
        extend: up to this many matvecs beyond ``max_iter`` when the value decides a growth
            (at or below ``threshold``, or no threshold) and the rule has not passed.
        confirm_warm: a warm-started value that decides a growth is confirmed by a cold solve
            (the core's guard, :func:`hessbatch._solver.solve`); default True.

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
    if start is not None:
        start = np.asarray(start, dtype=np.float64)
        if start.shape != (dim,):
            raise ValueError(f"start must be a vector of shape ({dim},), got {start.shape}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    ops = _NumpyOps(matvec, int(dim))
    r = _solver.solve(ops, rng, method=method, max_iter=int(max_iter), tol=float(tol),
                      rule="linear", warm=start, mix=warm_mix,
                      threshold=None if threshold is None else _threshold(threshold),
                      extend=int(extend) if isinstance(extend, (int, np.integer)) and
                      not isinstance(extend, bool) else extend, confirm_warm=confirm_warm)
    return EigenResult(r.value, r.vector, r.n_matvec, r.converged, is_lower_bound=r.lower_bound,
                       threshold=r.threshold, extended=r.extended, confirmed=r.confirmed)


def _threshold(threshold: object) -> object:
    """A NumPy scalar threshold as a Python float (the core checks the value)."""
    return float(threshold) if isinstance(threshold, (np.floating, np.integer)) else threshold


class _NumpyOps:
    """The vector operations of :mod:`hessbatch._solver` on float64 NumPy vectors."""

    def __init__(self, matvec: Callable[[np.ndarray], np.ndarray], dim: int) -> None:
        self._matvec, self.dim = matvec, dim

    def matvec(self, x: np.ndarray) -> np.ndarray:
        w = np.asarray(self._matvec(x), dtype=np.float64)
        if w.shape != (self.dim,):
            raise ValueError(f"matvec returned shape {w.shape}, expected ({self.dim},)")
        if not np.all(np.isfinite(w)):
            raise ValueError("matvec returned a non-finite vector (NaN/inf parameters?)")
        return w

    @staticmethod
    def dot(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v)

    @staticmethod
    def axpy(a: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return a * x + y

    @staticmethod
    def scale(a: float, x: np.ndarray) -> np.ndarray:
        return a * x

    @staticmethod
    def norm(v: np.ndarray) -> float:
        return float(np.linalg.norm(v))

    def random(self, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(self.dim)
