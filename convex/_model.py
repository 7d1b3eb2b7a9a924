"""L2-regularised logistic regression: the finite sum of Theorem 1 on the mushroom data.

With rows x_i of X (n x d), labels y_i in {0, 1}, z_i = x_i . theta and p_i = sigmoid(z_i)::

    F(theta)   = (1/n) sum_i f_i(theta),   f_i(theta) = softplus(z_i) - y_i z_i + (lam/2)||theta||^2
    grad F     = X^T (p - y) / n + lam theta
    H(theta)   = X^T diag(p (1 - p)) X / n + lam I

Every method takes an optional ``idx`` (row indices, repeats allowed): then the same formula
runs on the mini-batch S = idx, with 1/|S| in place of 1/n. Theorem 1's constants
(ALGORITHM.md section 3), exact for this model:

* c = lam (H >= lam I), L = lambda_max(X^T X) / (4 n) + lam (p (1 - p) <= 1/4, reached at
  theta = 0), M = max_i ||x_i||^2 (the per-sample gradient minus its mean lam theta is
  (p_i - y_i) x_i with |p_i - y_i| <= 1, so its variance is at most M), M_V = 0 (so the
  paper's M_G = M_V + 1 = 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

# Theorem 1's constants are one record for every problem: the core's (re-exported here).
from hessbatch.theory import Constants

from ._data import check_arrays
from ._eigen import EigenResult, top_eigenvalue
from ._kernels import BACKENDS, get_kernels

__all__ = ["Constants", "LogisticRegression", "NewtonResult", "memory_lower_bound"]


def memory_lower_bound(n_rows: int, n_train: int, n_features: int) -> dict[str, int]:
    """Bytes a mushroom-style run surely holds at once, from the data's shape alone.

    When :meth:`LogisticRegression.constants` runs, these float64 arrays are alive together:
    the data set's rows (``n_rows x d``, the :class:`Dataset`), the model's own copy of the
    training rows (``n_train x d``), and the explicit d x d Hessian (:meth:`solve` builds it
    again for Newton's method). Everything else (the copy LAPACK factorises, CSR copies,
    batches, vectors) comes on top, so the sum is a lower bound: a run above the memory
    available cannot fit, whatever else it does (tests/convex/test_reliability.py measures a
    run's peak with tracemalloc against it).

    Returns:
        ``{"data": bytes, "hessian": bytes}``.

    Example:
        >>> memory_lower_bound(8124, 6905, 117)["hessian"]
        109512
    """
    d = int(n_features)
    return {"data": 8 * d * (int(n_rows) + int(n_train)), "hessian": 8 * d * d}


@dataclass(frozen=True)
class NewtonResult:
    """The optimum found by :meth:`LogisticRegression.solve`.

    Fields:
        theta: theta*, shape (d,).
        f_star: F(theta*).
        grad_norm: ||grad F(theta*)||_2 (below the requested tolerance).
        iterations: Newton steps taken.
    """

    theta: np.ndarray
    f_star: float
    grad_norm: float
    iterations: int


class LogisticRegression:
    """L2-regularised logistic regression on fixed data, with exact curvature.

    The loss, its gradient, Hessian-vector products, the explicit Hessian and FGSM run on the
    full data or on a mini-batch of row indices; see the module docstring for the math.

    Args:
        X: (n, d) finite features.
        y: (n,) labels in {0, 1}.
        lam: L2 strength, > 0 (Theorem 1 needs strong convexity).
        backend: ``"numba"`` (compiled, default) or ``"numpy"`` (the reference path).
        feature_range: bounds that FGSM clips to: a pair of scalars or of (d,) arrays. Default:
            each column's min and max in X (so a constant column, the intercept, is never moved).

    Raises:
        TypeError, ValueError: bad X, y (see :func:`check_arrays`), lam, backend or range.

    Example:
        >>> from hessbatch.convex import load_mushroom
        >>> ds = load_mushroom()
        >>> model = LogisticRegression(ds.X_train, ds.y_train, lam=1e-3)
        >>> theta = np.zeros(model.n_features)
        >>> round(model.loss(theta), 6)          # log 2 at theta = 0
        0.693147
        >>> opt = model.solve()
        >>> opt.grad_norm < 1e-10
        True
    """

    def __init__(self, X: Any, y: Any, lam: float, *, backend: str = "numba",
                 feature_range: tuple[Any, Any] | None = None):
        self.X, self.y = check_arrays(X, y)
        if not isinstance(lam, (int, float, np.floating)) or isinstance(lam, bool):
            raise TypeError(f"lam must be a real number, got {lam!r} ({type(lam).__name__})")
        if not (np.isfinite(lam) and lam > 0):
            raise ValueError(f"lam must be finite and > 0 (Theorem 1 needs a strongly convex "
                             f"F), got {lam!r}")
        self.lam = float(lam)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self._k = get_kernels(backend, self.X)
        d = self.X.shape[1]
        if feature_range is None:
            lo, hi = self.X.min(axis=0), self.X.max(axis=0)
        else:
            try:
                lo, hi = feature_range
            except (TypeError, ValueError):
                raise ValueError(f"feature_range must be a pair (lo, hi), got "
                                 f"{feature_range!r}") from None
            lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (d,))
            hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (d,))
            if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo <= hi)):
                raise ValueError(f"feature_range must be finite with lo <= hi, got "
                                 f"{feature_range!r}")
        self.lo = np.ascontiguousarray(lo, dtype=np.float64)
        self.hi = np.ascontiguousarray(hi, dtype=np.float64)
        self._all = np.arange(self.X.shape[0], dtype=np.int64)

    # ----------------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def with_backend(self, backend: str) -> "LogisticRegression":
        """The same problem (data, lam, feature range) on another kernel backend."""
        return LogisticRegression(self.X, self.y, self.lam, backend=backend,
                                  feature_range=(self.lo, self.hi))

    def _theta(self, theta: Any, name: str = "theta") -> np.ndarray:
        t = np.asarray(theta, dtype=np.float64)
        if t.shape != (self.n_features,):
            raise ValueError(f"{name} must have shape ({self.n_features},), got {t.shape}")
        return np.ascontiguousarray(t)

    def _idx(self, idx: Any) -> np.ndarray:
        if idx is None:
            return self._all
        a = np.asarray(idx)
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"idx must be a 1-D array of row indices (ints), got dtype "
                            f"{a.dtype} and shape {a.shape}")
        if a.size == 0:
            raise ValueError("idx must select at least one row, got an empty batch")
        if a.min() < 0 or a.max() >= self.n_samples:
            raise ValueError(f"idx must be in [0, {self.n_samples - 1}], got values in "
                             f"[{a.min()}, {a.max()}]")
        return np.ascontiguousarray(a, dtype=np.int64)

    # ----------------------------------------------------------------------------------------
    def loss(self, theta: Any, idx: Any = None) -> float:
        """F(theta), or F_S(theta) on the rows ``idx``.

        Example: ``model.loss(theta, idx=np.array([0, 5, 5]))`` (repeats count twice).
        """
        return self._k.loss(self.X, self.y, self._idx(idx), self._theta(theta), self.lam)

    def gradient(self, theta: Any, idx: Any = None) -> np.ndarray:
        """grad F(theta) = X^T (p - y) / n + lam theta (on ``idx`` if given)."""
        return self.loss_and_gradient(theta, idx)[1]

    def loss_and_gradient(self, theta: Any, idx: Any = None, *, adv_count: int = 0,
                          adv_eps: float = 0.0) -> tuple[float, np.ndarray]:
        """(F_S, grad F_S) in one pass, with FGSM on the first ``adv_count`` rows of the batch.

        Args:
            theta: (d,) parameters.
            idx: row indices of the batch (default: all rows, in order).
            adv_count: rows at the start of the batch replaced by
                ``clip(x + adv_eps * sign((p - y) theta), lo, hi)`` before the gradient (ABSA).
            adv_eps: the FGSM step, >= 0.

        Raises:
            ValueError: adv_count outside [0, batch size], adv_eps < 0, bad shapes.
        """
        idx = self._idx(idx)
        if not isinstance(adv_count, (int, np.integer)) or not 0 <= adv_count <= len(idx):
            raise ValueError(f"adv_count must be an int in [0, {len(idx)}] (the batch size), "
                             f"got {adv_count!r}")
        if not (np.isfinite(adv_eps) and adv_eps >= 0):
            raise ValueError(f"adv_eps must be finite and >= 0, got {adv_eps!r}")
        return self._k.loss_grad(self.X, self.y, idx, self._theta(theta), self.lam,
                                 int(adv_count), float(adv_eps), self.lo, self.hi)

    def hvp(self, theta: Any, v: Any, idx: Any = None) -> np.ndarray:
        """The Hessian-vector product H(theta) v (on ``idx`` if given), exact."""
        return self._k.hvp(self.X, self.y, self._idx(idx), self._theta(theta),
                           self._theta(v, "v"), self.lam)

    def hessian(self, theta: Any, idx: Any = None) -> np.ndarray:
        """The explicit d x d Hessian X_S^T diag(p (1 - p)) X_S / |S| + lam I."""
        return self._k.hessian(self.X, self.y, self._idx(idx), self._theta(theta), self.lam)

    def fgsm(self, theta: Any, eps: float, idx: Any = None) -> np.ndarray:
        """FGSM copies of the rows ``idx``: clip(x + eps sign((p - y) theta), lo, hi).

        Returns:
            A new (|S|, d) array; X itself is never modified.
        """
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
        return self._k.fgsm(self.X, self.y, self._idx(idx), self._theta(theta), float(eps),
                            self.lo, self.hi)

    def top_eigenvalue(self, theta: Any, idx: Any = None, *, method: str = "power",
                       tol: float = 1e-3, max_iter: int = 100,
                       seed: int | np.random.Generator = 0, start: Any = None,
                       warm_mix: float = 0.1, threshold: float | None = None, extend: int = 0,
                       confirm_warm: bool = True) -> EigenResult:
        """Largest eigenvalue of H(theta) (on ``idx`` if given) from HVPs; see ``top_eigenvalue``
        (``start``/``warm_mix``: a warm start from a previous eigenvector; ``threshold``,
        ``extend``, ``confirm_warm``: the decision threshold, the extension of a deciding
        check and the warm-start guard).

        The result's ``rows_per_matvec`` is ``len(idx)`` (n for the full data): each HVP reads
        every row of the batch once, so ``rows_read`` is the check's cost in samples.

        Example:
            >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
            >>> model = LogisticRegression(X, [0, 1, 1], lam=0.1)
            >>> r = model.top_eigenvalue(np.zeros(2), tol=1e-10)
            >>> round(r.value, 6), r.converged       # (3/4) / 3 + 0.1: the mean direction
            (0.35, True)
            >>> r.rows_read == 3 * r.n_matvec
            True
        """
        t = self._theta(theta)
        rows = self._idx(idx)
        res = top_eigenvalue(lambda v: self._k.hvp(self.X, self.y, rows, t, v, self.lam),
                             self.n_features, method=method, tol=tol, max_iter=max_iter,
                             seed=seed, start=start, warm_mix=warm_mix, threshold=threshold,
                             extend=extend, confirm_warm=confirm_warm)
        # each HVP reads every row of the batch once (a repeated index counts each time)
        return dataclasses.replace(res, rows_per_matvec=int(len(rows)))

    def predict_proba(self, theta: Any, X: Any = None) -> np.ndarray:
        """sigmoid(X theta) on the training data or on another (m, d) array."""
        t = self._theta(theta)
        X = self.X if X is None else np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (m, {self.n_features}), got {X.shape}")
        z = X @ t
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def accuracy(self, theta: Any, X: Any = None, y: Any = None) -> float:
        """Fraction of rows whose label equals [p >= 1/2] (training data by default)."""
        if (X is None) != (y is None):
            raise ValueError("give both X and y, or neither (training data)")
        if X is None:
            X, y = self.X, self.y
        else:
            X, y = check_arrays(X, y)
        if len(y) == 0:
            raise ValueError("accuracy needs at least one row")
        return float(np.mean((self.predict_proba(theta, X) >= 0.5) == (y == 1)))

    # ----------------------------------------------------------------------------------------
    def constants(self) -> Constants:
        """Theorem 1's L, c, M, M_V for this problem (module docstring; M_G = M_V + 1 = 1)."""
        # H(0) = X^T X / (4 n) + lam I exactly (p = 1/2 for every row), so its top eigenvalue
        # is L itself
        L = float(np.linalg.eigvalsh(self.hessian(np.zeros(self.n_features)))[-1])
        M = float(np.max(np.einsum("ij,ij->i", self.X, self.X)))
        return Constants(L=L, c=self.lam, M=M, M_V=0.0)

    def solve(self, *, tol: float = 1e-10, max_iter: int = 100) -> NewtonResult:
        """theta* and F* by damped Newton's method on the full data.

        Newton direction from the explicit Hessian, Armijo backtracking from step 1 (from
        theta = 0 the full step can overshoot on nearly separable data), stopped when
        ||grad F||_2 < tol.

        Raises:
            ValueError: tol <= 0 or max_iter < 1.
            RuntimeError: no convergence in max_iter steps (not expected for lam > 0).
        """
        if not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"tol must be > 0, got {tol!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        theta = np.zeros(self.n_features)
        f, g = self.loss_and_gradient(theta)
        for it in range(max_iter + 1):
            gnorm = float(np.linalg.norm(g))
            if gnorm < tol:
                return NewtonResult(theta=theta, f_star=f, grad_norm=gnorm, iterations=it)
            if it == max_iter:
                break
            step = np.linalg.solve(self.hessian(theta), g)
            slope = float(g @ step)
            t = 1.0
            # Once the Newton decrement g.H^-1.g is at rounding level, F cannot resolve a
            # decrease any more: take the full step (quadratic convergence region).
            while slope > 1e-12:
                fc = self.loss(theta - t * step)
                if fc <= f - 1e-4 * t * slope or t < 1e-10:
                    break
                t *= 0.5
            cand = theta - t * step
            theta = cand
            f, g = self.loss_and_gradient(theta)
        raise RuntimeError(f"Newton's method did not reach ||grad F|| < {tol} in {max_iter} "
                           f"steps (last {gnorm:.3e})")

    def __repr__(self) -> str:
        return (f"LogisticRegression(n={self.n_samples}, d={self.n_features}, lam={self.lam}, "
                f"backend={self.backend!r})")
