"""Least-squares finite sums: Theorem 1's constants exactly, and E[F(theta_t)] of SGD exactly.

For a quadratic finite sum the gradient of one sample is affine in the parameters, so mini-batch
SGD with i.i.d. sampling moves the first and second moments of the error ``e = theta - theta*``
by *linear* recursions. Iterating them gives ``E[F(theta_t)] - F*`` with no sampling noise at
all: Theorem 1's bound can then be checked as an inequality between two exact numbers.

The problem (``A`` is ``N x d`` with rows ``a_i``, ``lam >= 0``)::

    f_i(theta) = 1/2 (a_i . theta - y_i)^2 + lam/2 ||theta||^2,      F = (1/N) sum_i f_i
    grad f_i(theta) = H_i theta - a_i y_i,   H_i = a_i a_i^T + lam I,   H = A^T A / N + lam I

Constants of Theorem 1, exactly: ``L = lambda_max(H)``, ``c = lambda_min(H)``. Writing
``D_i = H_i - H = a_i a_i^T - A^T A / N`` and ``r_i = grad f_i(theta*)`` (whose mean is
``grad F(theta*) = 0``), the gradient variance at ``theta* + e`` is the quadratic

    Var(e) = (1/N) sum_i ||D_i e + r_i||^2 = e^T S e + 2 u^T e + m0,
    S = (1/N) sum_i D_i^2,   u = (1/N) sum_i D_i r_i,   m0 = (1/N) sum_i ||r_i||^2,

and ``||grad F||^2 = e^T H^2 e``. For a given ``M_V`` the smallest ``M`` with
``Var <= M + M_V ||grad F||^2`` everywhere is ``M = m0 + u^T (M_V H^2 - S)^{-1} u``, finite exactly
when ``M_V > w_max = lambda_max(H^{-1} S H^{-1})``; the supremum is attained at
``e = (M_V H^2 - S)^{-1} u``, so this ``M`` is tight. (The paper's second-moment constant is
``M_G = M_V + 1``.)

The moment recursions, for an update on ``b`` i.i.d. samples with step ``alpha``
(``m = E[e]``, ``P = E[e e^T]``, ``Q = I - alpha H``, ``rbar = grad F(theta*)``, zero up to
rounding but kept so that the recursion is exact for the computed ``theta*``)::

    m+ = Q m - alpha rbar
    P+ = Q P Q - alpha (Q m rbar^T + rbar m^T Q) + alpha^2 rbar rbar^T + (alpha^2 / b) Sigma(m, P)
    Sigma(m, P) = (1/N) sum_i (D_i P D_i + D_i m rc_i^T + rc_i m^T D_i + rc_i rc_i^T)
    E[F(theta)] - F* = rbar^T m + 1/2 tr(H P)

where ``rc_i = r_i - rbar``; ``Sigma`` is the expected covariance of one sample's gradient. The
per-step cost is ``O(N d^2)`` (``(1/N) sum_i D_i P D_i = (1/N) sum_i (a_i^T P a_i) a_i a_i^T - C P C``
with ``C = A^T A / N``). docs/theory.md derives all of this.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from hessbatch.theory import Constants

__all__ = ["LeastSquares", "make_least_squares"]


def _as_matrix(name: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or \
            np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = np.array(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it holds NaN or infinity")
    return arr



def check_schedule(batch_sizes: Any, step_sizes: Any) -> tuple[np.ndarray, np.ndarray]:
    """A schedule of exact expectations: 1-d batch sizes (ints >= 1) and step sizes of the same
    length, as arrays (one check for every exact recursion here)."""
    b = np.asarray(batch_sizes)
    a = np.asarray(step_sizes, dtype=np.float64)
    if b.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"batch_sizes and step_sizes must be 1-d of the same length, got "
                         f"shapes {b.shape} and {a.shape}")
    if b.size and (not np.issubdtype(b.dtype, np.integer) or b.min() < 1):
        raise ValueError(f"batch_sizes must be ints >= 1, got {b[:8].tolist()}...")
    return b, a

class LeastSquares:
    """L2-regularised least squares ``F(theta) = ||A theta - y||^2 / (2N) + lam/2 ||theta||^2``.

    Everything Theorem 1 needs, exactly: the constants (:meth:`constants`), the gradient
    variance as a quadratic (:meth:`gradient_variance`), the optimum, and the expected gap of
    mini-batch SGD with i.i.d. sampling along any batch/step schedule (:meth:`expected_gaps`).

    Args:
        A: ``(N, d)`` design matrix, finite.
        y: ``(N,)`` targets, finite.
        lam: ridge parameter ``lam >= 0``. ``F`` must be strongly convex: ``A^T A / N + lam I``
            positive definite (``lam > 0``, or ``A`` of full column rank).

    Raises:
        TypeError: non-numeric arrays.
        ValueError: wrong shapes, NaN or infinity, ``lam < 0``, or an ``F`` that is not
            strongly convex (the smallest Hessian eigenvalue is named).

    Example:
        >>> p = LeastSquares(np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), np.ones(3), lam=0.1)
        >>> k = p.constants()
        >>> round(k.L, 6), round(k.c, 6)
        (1.867592, 0.665741)
        >>> float(np.linalg.norm(p.gradient(p.theta_star))) < 1e-12
        True
    """

    def __init__(self, A, y, lam: float = 0.0):
        A = _as_matrix("A", A)
        y = _as_matrix("y", y)
        if A.ndim != 2 or A.shape[0] < 1 or A.shape[1] < 1:
            raise ValueError(f"A must be a non-empty 2-d array (N, d), got shape {A.shape}")
        if y.shape != (A.shape[0],):
            raise ValueError(f"y must have shape ({A.shape[0]},) to match A, got {y.shape}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)):
            raise TypeError(f"lam must be a real number, got {lam!r}")
        lam = float(lam)
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
        self.A, self.y, self.lam = A, y, lam
        self.n_samples, self.dim = A.shape
        n = self.n_samples
        self._C = A.T @ A / n
        self.hessian = self._C + lam * np.eye(self.dim)
        eig = np.linalg.eigvalsh(self.hessian)
        if eig[0] <= 1e-12 * max(eig[-1], 1e-300):
            raise ValueError(
                f"F is not strongly convex: the smallest Hessian eigenvalue is {eig[0]:.3g} "
                f"(largest {eig[-1]:.3g}); use lam > 0 or an A of full column rank")
        self.hessian_eigenvalues = eig
        self.theta_star = np.linalg.solve(self.hessian, A.T @ y / n)
        self.f_star = self.loss(self.theta_star)
        # per-sample gradients at the optimum, their mean (0 up to rounding) and centred part
        self._r = self.per_sample_gradients(self.theta_star)
        self._rbar = self._r.mean(axis=0)
        self._rc = self._r - self._rbar
        self._Rc = self._rc.T @ self._rc / n
        self._S = None

    # ---- loss and gradients -----------------------------------------------------------------

    def _theta(self, theta) -> np.ndarray:
        theta = _as_matrix("theta", theta)
        if theta.shape != (self.dim,):
            raise ValueError(f"theta must have shape ({self.dim},), got {theta.shape}")
        return theta

    def loss(self, theta) -> float:
        """``F(theta) = ||A theta - y||^2 / (2N) + lam/2 ||theta||^2``."""
        theta = self._theta(theta)
        res = self.A @ theta - self.y
        return float(res @ res / (2 * self.n_samples) + 0.5 * self.lam * theta @ theta)

    def gradient(self, theta) -> np.ndarray:
        """``grad F(theta) = A^T (A theta - y) / N + lam theta``."""
        theta = self._theta(theta)
        return self.A.T @ (self.A @ theta - self.y) / self.n_samples + self.lam * theta

    def per_sample_gradients(self, theta) -> np.ndarray:
        """``(N, d)`` array whose row ``i`` is ``grad f_i(theta)``."""
        theta = self._theta(theta)
        return (self.A @ theta - self.y)[:, None] * self.A + self.lam * theta

    def gradient_variance(self, theta) -> float:
        """``(1/N) sum_i ||grad f_i(theta) - grad F(theta)||^2``, the variance of one sample's
        gradient under uniform sampling (computed directly, not from the quadratic)."""
        g = self.per_sample_gradients(theta)
        return float(np.mean(np.sum((g - g.mean(axis=0)) ** 2, axis=1)))

    # ---- the variance as a quadratic and Theorem 1's constants ------------------------------

    def variance_quadratic(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(S, u, m0)`` with ``Var(theta* + e) = e^T S e + 2 u^T e + m0`` exactly."""
        if self._S is None:
            A, n, C = self.A, self.n_samples, self._C
            # S = (1/N) sum_i D_i^2 with D_i = a_i a_i^T - C: sum of PSD terms, kept PSD
            # numerically by never subtracting E[H_i^2] - H^2.
            sq = np.sum(A * A, axis=1)
            Ca = A @ C                                              # rows: C a_i
            S = (A.T * sq) @ A / n - (Ca.T @ A + A.T @ Ca) / n + C @ C
            self._S = 0.5 * (S + S.T)
            ar = np.sum(A * self._rc, axis=1)                       # a_i . rc_i
            self._u = A.T @ ar / n - C @ self._rc.mean(axis=0)
            self._m0 = float(np.trace(self._Rc))
        return self._S, self._u, self._m0

    def _whitened(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues ``w`` of ``H^{-1} S H^{-1}`` and the coordinates of ``H^{-1} u``."""
        S, u, _ = self.variance_quadratic()
        Hinv = np.linalg.inv(self.hessian)
        W = Hinv @ S @ Hinv
        w, Q = np.linalg.eigh(0.5 * (W + W.T))
        return np.maximum(w, 0.0), Q.T @ (Hinv @ u)

    @property
    def min_M_V(self) -> float:
        """``w_max = lambda_max(H^{-1} S H^{-1})``: ``M`` is finite only for ``M_V`` above it."""
        return float(self._whitened()[0][-1])

    def M_for(self, M_V: float) -> float:
        """The smallest ``M`` with ``Var <= M + M_V ||grad F||^2`` for every ``theta``.

        ``M = m0 + u^T (M_V H^2 - S)^{-1} u``.

        Raises:
            ValueError: ``M_V <= w_max`` (:attr:`min_M_V`), where no finite ``M`` exists
                (unless the variance has no part along the critical directions).
        """
        M_V = float(M_V)
        if not math.isfinite(M_V) or M_V < 0:
            raise ValueError(f"M_V must be finite and >= 0, got {M_V!r}")
        w, z = self._whitened()
        _, _, m0 = self.variance_quadratic()
        gap = M_V - w
        scale = max(float(w[-1]), 1e-300)
        for k in range(len(w)):
            if gap[k] <= 1e-12 * scale and (gap[k] < 0 or z[k] ** 2 > 1e-24 * (1 + m0)):
                raise ValueError(
                    f"M_V must be > {w[-1]:.6g} = lambda_max(H^-1 S H^-1) for a finite M, "
                    f"got {M_V!r}")
        safe = np.where(gap > 1e-12 * scale, gap, np.inf)
        return float(m0 + np.sum(z * z / safe))

    def constants(self, M_V: float | None = None) -> Constants:
        """Theorem 1's ``L, c, M, M_V``, exactly (``M_G = M_V + 1`` follows).

        Args:
            M_V: the multiplicative variance constant; ``M`` is then the smallest valid value
                (:meth:`M_for`). Default: ``2 * w_max`` (0 when ``S = 0``).

        Returns:
            :class:`hessbatch.theory.Constants`.
        """
        if M_V is None:
            # twice the critical value: M stays moderate, and a w_max that is rounding noise
            # (S = 0 exactly when N = 1) still gets a valid, tiny M_V
            M_V = 2.0 * self.min_M_V
        eig = self.hessian_eigenvalues
        return Constants(L=float(eig[-1]), c=float(eig[0]), M=self.M_for(M_V), M_V=float(M_V))

    # ---- exact expectations of SGD ----------------------------------------------------------

    def expected_gaps(self, batch_sizes: Sequence[int], step_sizes: Sequence[float],
                      theta0=None, *, moments: bool = False):
        """Exact ``E[F(theta_t)] - F*``, ``t = 0..T``, of SGD with i.i.d. mini-batches.

        Update ``t`` draws ``b_t`` indices uniformly with replacement and sets
        ``theta <- theta - alpha_t * (1/b_t) sum_j grad f_{i_j}(theta)``.

        Args:
            batch_sizes: ``b_0..b_{T-1}``, ints >= 1.
            step_sizes: ``alpha_0..alpha_{T-1}``, finite (Theorem 1 uses ``alpha_t = b_t eta0``).
            theta0: the deterministic start (default zeros).
            moments: also return the final ``(E[theta], E[(theta - theta*)(theta - theta*)^T])``.

        Returns:
            ``(T + 1,)`` array of expected gaps (and the moments when asked).

        Raises:
            ValueError: lengths that differ, batch sizes < 1, non-finite steps.

        Example:
            >>> p = LeastSquares(np.array([[1.0], [2.0]]), np.array([1.0, 0.0]))
            >>> p.expected_gaps([1, 1], [0.1, 0.1]).round(6).tolist()
            [0.05, 0.03125, 0.021781]
        """
        b, a = check_schedule(batch_sizes, step_sizes)
        if not np.all(np.isfinite(a)):
            raise ValueError("step_sizes must be finite")
        theta0 = np.zeros(self.dim) if theta0 is None else self._theta(theta0)
        A, n, C, H = self.A, self.n_samples, self._C, self.hessian
        rbar, rc, Rc = self._rbar, self._rc, self._Rc
        rc_mean = rc.mean(axis=0)
        m = theta0 - self.theta_star
        P = np.outer(m, m)
        eye = np.eye(self.dim)
        out = np.empty(b.size + 1)
        out[0] = rbar @ m + 0.5 * np.sum(H * P)
        for t in range(b.size):
            alpha, bt = a[t], float(b[t])
            Q = eye - alpha * H
            # Sigma(m, P): expected covariance of one sample's gradient
            w = np.einsum("ij,jk,ik->i", A, P, A)
            DPD = (A.T * w) @ A / n - C @ P @ C
            X1 = (A.T * (A @ m)) @ rc / n - np.outer(C @ m, rc_mean)
            sigma = DPD + X1 + X1.T + Rc
            Qm = Q @ m
            cross = np.outer(Qm, rbar)
            P = Q @ P @ Q - alpha * (cross + cross.T) + alpha * alpha * np.outer(rbar, rbar) \
                + (alpha * alpha / bt) * sigma
            P = 0.5 * (P + P.T)
            m = Qm - alpha * rbar
            out[t + 1] = rbar @ m + 0.5 * np.sum(H * P)
        if moments:
            return out, (m + self.theta_star, P)
        return out


    def expected_iterates(self, batch_sizes: Sequence[int], step_sizes: Sequence[float],
                          theta0=None) -> np.ndarray:
        """Exact ``E[theta_t]``, ``t = 0..T``, of SGD with i.i.d. mini-batches (as
        :meth:`expected_gaps`): the mini-batch gradient is affine in ``theta`` and unbiased, so
        the mean follows the full-gradient recursion ``m+ = (I - alpha H) m - alpha rbar`` for
        ``m = E[theta] - theta*``, whatever the batch size.

        Returns:
            ``(T + 1, d)`` array.

        Example:
            >>> p = LeastSquares(np.array([[1.0], [2.0]]), np.array([1.0, 0.0]))
            >>> p.expected_iterates([1, 1], [0.1, 0.1]).round(6).tolist()
            [[0.0], [0.05], [0.0875]]
        """
        b, a = check_schedule(batch_sizes, step_sizes)
        if not np.all(np.isfinite(a)):
            raise ValueError("step_sizes must be finite")
        theta0 = np.zeros(self.dim) if theta0 is None else self._theta(theta0)
        out = np.empty((b.size + 1, self.dim))
        m = theta0 - self.theta_star
        out[0] = theta0
        for t in range(b.size):
            m = m - a[t] * (self.hessian @ m + self._rbar)
            out[t + 1] = m + self.theta_star
        return out

    def stationary_gap(self, batch_size: int, step: float) -> float:
        """The limit of ``E[F(theta_t)] - F*`` under SGD at a constant batch and step.

        The moment recursion of :meth:`expected_gaps` is affine in ``(m, P)``; its fixed point
        is solved directly (a ``d^2 x d^2`` linear system), so the limit is exact up to
        rounding and needs no long run.

        Args:
            batch_size: ``b >= 1``.
            step: ``alpha > 0``.

        Returns:
            The stationary expected gap.

        Raises:
            ValueError: a step at which the recursion does not converge (spectral radius of its
                linear part >= 1): SGD's second moment diverges, there is no limit.

        Example:
            >>> p = LeastSquares(np.array([[1.0], [2.0]]), np.array([1.0, 0.0]))
            >>> g = p.expected_gaps([1] * 3000, [0.1] * 3000)[-1]
            >>> bool(abs(p.stationary_gap(1, 0.1) / g - 1) < 1e-9)
            True
        """
        b = int(batch_size)
        alpha = float(step)
        if b < 1 or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"batch_size must be >= 1 and step finite and > 0, got {batch_size!r}"
                             f" and {step!r}")
        d, n = self.dim, self.n_samples
        A, C, H = self.A, self._C, self.hessian
        rbar, rc, Rc = self._rbar, self._rc, self._Rc
        eye = np.eye(d)
        Q = eye - alpha * H
        # the mean's fixed point: m = Q m - alpha rbar  ->  m = -H^{-1} rbar
        m = -np.linalg.solve(H, rbar)

        def linear(P):
            w = np.einsum("ij,jk,ik->i", A, P, A)
            return Q @ P @ Q + (alpha * alpha / b) * ((A.T * w) @ A / n - C @ P @ C)

        X1 = (A.T * (A @ m)) @ rc / n - np.outer(C @ m, rc.mean(axis=0))
        cross = np.outer(Q @ m, rbar)
        const = -alpha * (cross + cross.T) + alpha * alpha * np.outer(rbar, rbar) \
            + (alpha * alpha / b) * (X1 + X1.T + Rc)
        T = np.empty((d * d, d * d))
        for j in range(d * d):
            E = np.zeros(d * d)
            E[j] = 1.0
            T[:, j] = linear(E.reshape(d, d)).ravel()
        radius = float(np.max(np.abs(np.linalg.eigvals(T))))
        if radius >= 1.0:
            raise ValueError(f"SGD's second moment diverges at batch {b}, step {alpha!r} "
                             f"(spectral radius {radius:.6g} >= 1): no stationary gap")
        P = np.linalg.solve(np.eye(d * d) - T, const.ravel()).reshape(d, d)
        P = 0.5 * (P + P.T)
        return float(rbar @ m + 0.5 * np.sum(H * P))


def make_least_squares(n_samples: int = 200, dim: int = 10, cond: float = 100.0,
                       noise: float = 0.5, lam: float = 0.0, seed: int = 0) -> LeastSquares:
    """A random least-squares problem with a chosen Hessian condition number.

    ``A = U diag(s) V^T`` with random orthonormal ``U`` (``N x d``) and ``V``; the singular
    values make the eigenvalues of ``A^T A / N`` spread geometrically over ``[1/cond, 1]``
    (then ``lam`` is added). Rows get unequal norms, so the per-sample curvature varies.
    ``y = A theta_true + noise * eps`` with ``theta_true, eps`` standard normal.

    Args:
        n_samples: N >= dim (so that ``A`` has full column rank).
        dim: d >= 1.
        cond: condition number of ``A^T A / N``, >= 1.
        noise: standard deviation of the target noise, >= 0 (it sets ``M``).
        lam: ridge parameter, >= 0.
        seed: seed of the NumPy generator.

    Raises:
        ValueError: any argument out of range, named.

    Example:
        >>> p = make_least_squares(50, 4, cond=10.0, seed=1)
        >>> k = p.constants()
        >>> round(k.L / k.c, 6)
        10.0
    """
    for name, value, low in (("n_samples", n_samples, 1), ("dim", dim, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if n_samples < dim:
        raise ValueError(f"n_samples must be >= dim = {dim} (full column rank), got {n_samples}")
    for name, value, low in (("cond", cond, 1.0), ("noise", noise, 0.0), ("lam", lam, 0.0)):
        if not isinstance(value, (int, float, np.floating, np.integer)) or \
                not math.isfinite(value) or value < low:
            raise ValueError(f"{name} must be finite and >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n_samples, dim)))
    V, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    eig = np.geomspace(1.0, 1.0 / cond, dim) if dim > 1 else np.ones(1)
    A = (U * np.sqrt(eig * n_samples)) @ V.T
    theta_true = rng.standard_normal(dim)
    y = A @ theta_true + noise * rng.standard_normal(n_samples)
    return LeastSquares(A, y, lam)
