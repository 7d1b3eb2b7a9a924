"""The top-eigenvalue solver, written once: power iteration and Lanczos over backend vector ops.

Both backends need the largest eigenvalue of a symmetric operator ``A`` that they can only
apply (``v -> A v``, a Hessian-vector product). The loop, the stopping rule, the warm start and
the accuracy contract live here, in the standard library; a backend supplies the few operations
on *its* vectors (NumPy arrays, flat torch tensors) through :class:`VectorOps`:

========================  ============================================================
``ops.dim``               the dimension d (an int)
``ops.matvec(v)``         ``A v`` (a new vector)
``ops.dot(u, v)``         ``u . v`` as a Python float
``ops.axpy(a, x, y)``     ``a x + y`` (a new vector; ``x``, ``y`` unchanged)
``ops.scale(a, x)``       ``a x`` (a new vector)
``ops.norm(v)``           ``|v|_2`` as a Python float
``ops.random(seed)``      a Gaussian vector from ``seed`` (normalised here)
========================  ============================================================

The solvers, with ``max_iter`` the product budget:

* :func:`power_iteration`: ``v <- A v / |A v|``; the estimate is the Rayleigh quotient
  ``lam_k = v_k . A v_k``, stopped when ``|lam_k - lam_{k-1}| <= tol |lam_k|``. Converges to
  the eigenvalue of largest magnitude at the rate ``|lam_2 / lam_1|`` per product.
* :func:`lanczos`: k products build an orthonormal Krylov basis ``V_k`` (full
  re-orthogonalisation, two Gram-Schmidt passes, vector by vector) and the tridiagonal
  ``T_k = V_k^T A V_k``; the estimate is the largest eigenvalue ``theta`` of ``T_k``, its
  Ritz residual ``|A y - theta y| = beta_{k+1} |s_k|`` comes for free (``y = V_k s``). Stopping
  rule ``"squared"`` (the deep default): residual ``<= tol^2 |theta|``; ``"linear"``: residual
  ``<= tol |theta|``. Also stopped, converged, when the Krylov space is invariant
  (``beta <= 1e-12 max |alpha|``) or is all of R^d.

The small eigenproblem of ``T_k`` is solved here without NumPy: Sturm-sequence bisection for
the eigenvalues (absolute error about ``eps |T|``, as good as a dense solver) and inverse
iteration on the positive definite ``(theta + sigma) I - T`` for the top eigenvector.

Warm start (:func:`start_vector`): from the previous check's top eigenvector ``u`` mixed with a
random unit vector ``r``, ``v0 = (u + mix r) / |u + mix r|``. The eigenvector of a Hessian moves
little between checks, so the solver starts close to the answer; the random part keeps every
direction in the Krylov space, so a new top direction can still be found (a cold start has
only ``1/sqrt(d)`` of it, the warm one ``mix/sqrt(d)`` plus what ``u`` carries). That is not
enough when ``u`` has become the *second* eigenvector: the residual test can pass on
``lambda_2``. :func:`solve` guards it: a warm value that decides a growth is confirmed by the
cold solve of the same seed.

Decision threshold (``threshold=``, both solvers): ABS asks one question per check, is the top
eigenvalue at or below ``lam_ref / alpha``? For a symmetric ``A`` every estimate either solver
makes is a Rayleigh quotient or a Ritz value, so ``estimate <= lambda_1`` (Courant-Fischer:
``theta_k = max_{v in K_k} v.Av / v.v``). Hence as soon as an estimate is *strictly above* the
threshold the answer "no drop" is certain: the solver stops there and says so
(``SolverResult.lower_bound``: ``value`` is then only a lower bound of ``lambda_1``, not the
eigenvalue). Otherwise it runs its normal stopping rule, and a check whose value will decide a
growth (at or below the threshold, or no threshold at all: the first check) may spend up to
``extend`` more products before it is reported ``converged=False``. An estimate equal to the
threshold is not above it and decides nothing early. Rounding: the products are computed in the
backend's dtype, so "certain" holds up to the product's own rounding error (float32: about
1e-7 |A|), far below any relative tolerance in use.

Accuracy contract (deep backend, tested): with the defaults (Lanczos, 10 products, tol 1e-2)
the value is within 1e-2 relative of the exact top eigenvalue on small models whose top two
eigenvalues are within 10%, from any start, cold or warm. Non-finite products are detected
once per product from the scalars ``alpha`` and ``beta`` (no per-element test of each vector).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence

__all__ = ["SolverResult", "VectorOps", "lanczos", "power_iteration", "solve", "start_vector",
           "tridiagonal_eigenvalues", "tridiagonal_top", "LANCZOS_RULES", "STATUSES"]

LANCZOS_RULES = ("squared", "linear")
_EPS = sys.float_info.epsilon


class VectorOps(Protocol):
    """What a backend supplies: see the table in the module docstring."""

    dim: int

    def matvec(self, v: Any) -> Any: ...
    def dot(self, u: Any, v: Any) -> float: ...
    def axpy(self, a: float, x: Any, y: Any) -> Any: ...
    def scale(self, a: float, x: Any) -> Any: ...
    def norm(self, v: Any) -> float: ...
    def random(self, seed: Any) -> Any: ...


@dataclass(frozen=True)
class SolverResult:
    """What a solver found, in the backend's vector type.

    Fields:
        value: the eigenvalue estimate.
        vector: its unit eigenvector estimate (the Ritz vector; for power iteration the vector
            whose Rayleigh quotient is ``value``).
        n_matvec: products spent.
        converged: whether the stopping test passed within the budget.
        residual: ``|A v - value v|`` (power: computed; Lanczos: the Ritz estimate).
        history: the estimate after each product.
        residuals: the residual after each product.
        ritz_values: Lanczos only: all eigenvalues of the final ``T_k``, largest first.
        lower_bound: True when the solver stopped because an estimate was strictly above
            ``threshold``: ``value`` is then a certain lower bound of ``lambda_1`` (not the
            eigenvalue, and ``converged`` is False), enough to answer "no drop".
        threshold: the decision threshold the solver was given (None: none).
        extended: products spent beyond ``max_iter`` (the ``extend`` budget of a check whose
            value decides a growth; 0 when none were needed).
        confirmed: :func:`solve` only: a warm-started value that would decide a growth was
            checked by the cold solve of the same seed (the products of both are counted).
    """

    value: float
    vector: Any
    n_matvec: int
    converged: bool
    residual: float
    history: tuple = ()
    residuals: tuple = ()
    ritz_values: tuple = ()
    lower_bound: bool = False
    threshold: float | None = None
    extended: int = 0
    confirmed: bool = False

    @property
    def status(self) -> str:
        """``"lower_bound"`` (stopped above the threshold), ``"converged"`` or
        ``"not_converged"``: what a training loop records per check."""
        if self.lower_bound:
            return "lower_bound"
        return "converged" if self.converged else "not_converged"


STATUSES = ("lower_bound", "converged", "not_converged")


def _check_budget(max_iter: object, tol: object) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) \
            or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")


def _check_decision(threshold: object, extend: object) -> float | None:
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
        raise ValueError(f"extend must be an int >= 0 (products added for a check whose value "
                         f"decides a growth), got {extend!r}")
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not math.isfinite(threshold):
        raise ValueError(f"threshold must be None or a finite number (the decision threshold "
                         f"lam_ref / alpha), got {threshold!r}")
    return float(threshold)


def _finite(x: float, what: str) -> float:
    if not math.isfinite(x):
        raise ValueError(f"the product A v is non-finite ({what} = {x}): NaN/inf parameters, "
                         "a diverged model or non-finite inputs")
    return x


def start_vector(ops: VectorOps, seed: Any, warm: Any = None, mix: float = 0.1) -> Any:
    """The unit start vector: random from ``seed``, or ``warm`` mixed with a random part.

    ``v0 = r / |r|`` (cold, ``warm is None``) or ``v0 = (u + mix r/|r|) / |u + mix r/|r||``
    with ``u = warm / |warm|``.

    Args:
        ops: the backend's vector operations.
        seed: passed to ``ops.random``.
        warm: the previous top eigenvector (any non-zero vector), or None.
        mix: weight of the random part, finite and >= 0 (0: the warm vector alone, which can
            never find a top direction orthogonal to it).

    Raises:
        ValueError: a bad ``mix``, a zero or non-finite ``warm``.
    """
    if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not math.isfinite(mix) \
            or mix < 0:
        raise ValueError(f"warm_mix must be a finite number >= 0, got {mix!r}")
    r = ops.random(seed)
    r = ops.scale(1.0 / ops.norm(r), r)
    if warm is None:
        return r
    n = ops.norm(warm)
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"the warm-start vector must be finite and non-zero, its norm is {n}")
    v = ops.axpy(float(mix), r, ops.scale(1.0 / n, warm))
    nv = ops.norm(v)
    if nv == 0.0:  # warm = -mix r exactly: nothing to keep
        return r
    return ops.scale(1.0 / nv, v)


# ------------------------------------------------------------------------------------------
# power iteration

def power_iteration(ops: VectorOps, v0: Any, *, max_iter: int, tol: float,
                    threshold: float | None = None, extend: int = 0,
                    callback: Any = None) -> SolverResult:
    """Power iteration from the unit vector ``v0``; at most ``max_iter`` products.

    Args:
        ops, v0, max_iter, tol: as for :func:`lanczos`.
        threshold: decision threshold: stop as soon as the Rayleigh quotient ``v.Av`` (a lower
            bound of ``lambda_1`` for symmetric ``A``) is strictly above it
            (``lower_bound=True``). None: the normal rule only.
        extend: up to this many products beyond ``max_iter`` when the rule has not passed and
            no estimate is above ``threshold`` (the value then decides a growth).
        callback: called as ``callback(k, estimate, residual)`` after the k-th product (for
            progress reports; None: nothing).

    Returns:
        A :class:`SolverResult` with ``ritz_values == ()``.

    Raises:
        ValueError: bad budget or threshold, or a non-finite product.
    """
    _check_budget(max_iter, tol)
    threshold = _check_decision(threshold, extend)
    v = v0
    history: list[float] = []
    residuals: list[float] = []
    lam, res, converged, lower = 0.0, math.inf, False, False
    steps = max_iter + extend
    for i in range(steps):
        w = ops.matvec(v)
        lam = _finite(ops.dot(v, w), "v . Av")
        wn = _finite(ops.norm(w), "|Av|")
        res = ops.norm(ops.axpy(-lam, v, w))
        prev = history[-1] if history else None
        history.append(lam)
        residuals.append(res)
        if callback is not None:
            callback(len(history), lam, res)
        if wn == 0.0:  # A v = 0: v is an exact eigenvector for 0
            converged = True
            break
        if prev is not None and abs(lam - prev) <= tol * abs(lam):
            converged = True
            break
        if threshold is not None and lam > threshold:
            lower = True   # v.Av <= lambda_1: "no drop" is certain
            break
        if i < steps - 1:
            v = ops.scale(1.0 / wn, w)
    n = len(history)
    return SolverResult(lam, v, n, converged, res, tuple(history), tuple(residuals),
                        lower_bound=lower, threshold=threshold, extended=max(0, n - max_iter))


# ------------------------------------------------------------------------------------------
# Lanczos

def lanczos(ops: VectorOps, v0: Any, *, max_iter: int, tol: float,
            rule: str = "squared", threshold: float | None = None,
            extend: int = 0, callback: Any = None) -> SolverResult:
    """Lanczos with full re-orthogonalisation from the unit vector ``v0``.

    Args:
        ops: the backend's vector operations (``ops.dim`` caps the number of steps).
        v0: unit start vector.
        max_iter: at most this many products (>= 1).
        tol: relative tolerance (>= 0; 0 runs the whole budget).
        rule: ``"squared"`` (residual <= tol^2 |theta|) or ``"linear"`` (<= tol |theta|).
            Why squared: a small residual only says theta is near *some* eigenvalue, and early
            on that can be the second one while the top direction has not entered the Krylov
            space (docs/deep_curvature.md measures both).
        threshold: decision threshold: stop as soon as the Ritz value ``theta_k`` (a lower
            bound of ``lambda_1``: Courant-Fischer) is strictly above it, with
            ``lower_bound=True``. None: the normal rule only.
        extend: up to this many products beyond ``max_iter`` when the rule has not passed and
            no Ritz value is above ``threshold``, i.e. when the value decides a growth (the
            Krylov space is extended, nothing is thrown away).
        callback: called as ``callback(k, theta_k, residual_k)`` after the k-th product.

    Returns:
        A :class:`SolverResult`.

    Raises:
        ValueError: bad budget or rule, or a non-finite product.
    """
    _check_budget(max_iter, tol)
    threshold = _check_decision(threshold, extend)
    if rule not in LANCZOS_RULES:
        raise ValueError(f"rule must be one of {LANCZOS_RULES}, got {rule!r}")
    bound = tol * tol if rule == "squared" else tol
    dim = int(ops.dim)
    basis = [v0]
    alphas: list[float] = []
    betas: list[float] = []          # betas[j] couples basis j and j+1
    history: list[float] = []
    residuals: list[float] = []
    theta, res, s, converged, lower = 0.0, math.inf, [1.0], False, False
    steps = min(max_iter + extend, dim)
    for j in range(steps):
        w = ops.matvec(basis[j])
        alpha = _finite(ops.dot(basis[j], w), "alpha")
        alphas.append(alpha)
        # Full re-orthogonalisation, two passes ("twice is enough"): without it the basis loses
        # orthogonality as soon as a Ritz value converges and spurious copies appear.
        for _ in range(2):
            for b in basis:
                w = ops.axpy(-ops.dot(b, w), b, w)
        beta = _finite(ops.norm(w), "beta")
        theta, s = tridiagonal_top(alphas, betas)
        res = beta * abs(s[-1])
        history.append(theta)
        residuals.append(res)
        if callback is not None:
            callback(len(history), theta, res)
        k = len(alphas)
        if (beta <= 1e-12 * max(abs(a) for a in alphas) or k == dim
                or res <= bound * max(abs(theta), 1e-300)):
            converged = True
            break
        if threshold is not None and theta > threshold:
            lower = True   # theta_k <= lambda_1: "no drop" is certain
            break
        if j + 1 < steps:
            betas.append(beta)
            basis.append(ops.scale(1.0 / beta, w))
    basis = basis[:len(alphas)]
    y = ops.scale(s[0], basis[0])
    for c, b in zip(s[1:], basis[1:]):
        y = ops.axpy(c, b, y)
    y = ops.scale(1.0 / ops.norm(y), y)
    ritz = tuple(sorted(tridiagonal_eigenvalues(alphas, betas), reverse=True))
    n = len(history)
    return SolverResult(theta, y, n, converged, res, tuple(history), tuple(residuals), ritz,
                        lower_bound=lower, threshold=threshold, extended=max(0, n - max_iter))


# ------------------------------------------------------------------------------------------
# one eigenvalue check: start vector, solver, warm-start guard

METHODS = ("lanczos", "power")


def solve(ops: VectorOps, seed: Any, *, method: str = "lanczos", max_iter: int, tol: float,
          rule: str = "squared", warm: Any = None, mix: float = 0.1,
          threshold: float | None = None, extend: int = 0,
          confirm_warm: bool = True, callback: Any = None) -> SolverResult:
    """One eigenvalue check as both backends run it: the start vector of :func:`start_vector`,
    :func:`lanczos` or :func:`power_iteration`, and the guard of a warm start.

    The guard: a warm start can stop on ``lambda_2`` when the old top direction has become the
    second one (the residual test passes on a true eigenpair; measured in
    docs/deep_curvature.md, and a larger random part does not cure it). A lower bound above
    ``threshold`` is certain whatever the start, so it needs nothing; but a warm value that
    decides a growth (at or below ``threshold``, or no threshold) is confirmed by the cold solve
    of the same ``seed`` (``confirm_warm``), with the same threshold: the result is the cold
    one if it is a lower bound (no drop after all), else the larger of the two values (each is
    at most ``lambda_1``). Both solves' products are counted; ``confirmed=True``.

    Args:
        ops: the backend's vector operations.
        seed: passed to ``ops.random`` (the cold start, and the random part of a warm one).
        method: ``"lanczos"`` or ``"power"``.
        max_iter, tol, rule, threshold, extend: as for :func:`lanczos`
            (``rule`` is Lanczos only).
        warm, mix: as for :func:`start_vector` (``warm=None``: a cold start).
        confirm_warm: run the guard (default True).
        callback: as for :func:`lanczos` (the confirming solve counts its products from 1).

    Returns:
        A :class:`SolverResult`.

    Raises:
        ValueError: bad options (named), a non-finite product.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(confirm_warm, bool):
        raise ValueError(f"confirm_warm must be a bool, got {confirm_warm!r}")

    def run(v0: Any) -> SolverResult:
        if method == "power":
            return power_iteration(ops, v0, max_iter=max_iter, tol=tol, threshold=threshold,
                                   extend=extend, callback=callback)
        return lanczos(ops, v0, max_iter=max_iter, tol=tol, rule=rule, threshold=threshold,
                       extend=extend, callback=callback)

    first = run(start_vector(ops, seed, warm=warm, mix=mix))
    if warm is None or not confirm_warm or first.lower_bound:
        return first
    cold = run(start_vector(ops, seed))
    best = cold if (cold.lower_bound or cold.value >= first.value) else first
    return replace(best, n_matvec=first.n_matvec + cold.n_matvec,
                   history=first.history + cold.history,
                   residuals=first.residuals + cold.residuals,
                   extended=first.extended + cold.extended, confirmed=True)


# ------------------------------------------------------------------------------------------
# the symmetric tridiagonal eigenproblem, in the standard library

def _check_tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> tuple[list, list]:
    a = [float(x) for x in alphas]
    b = [float(x) for x in betas]
    if not a:
        raise ValueError("the tridiagonal matrix needs at least one diagonal entry")
    if len(b) != len(a) - 1:
        raise ValueError(f"a {len(a)} x {len(a)} tridiagonal matrix has {len(a) - 1} "
                         f"off-diagonal entries, got {len(b)}")
    if not all(math.isfinite(x) for x in a + b):
        raise ValueError("the tridiagonal matrix has non-finite entries")
    return a, b


def _gershgorin(a: list, b: list) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for i, ai in enumerate(a):
        r = (abs(b[i - 1]) if i > 0 else 0.0) + (abs(b[i]) if i < len(b) else 0.0)
        lo, hi = min(lo, ai - r), max(hi, ai + r)
    return lo, hi


def _count_below(a: list, b2: list, x: float, pivmin: float) -> int:
    """Number of eigenvalues of T below x: negative pivots of the LDL^T of T - x I (Sylvester)."""
    count, q = 0, 1.0
    for i, ai in enumerate(a):
        q = ai - x - (b2[i - 1] / q if i > 0 else 0.0)
        if abs(q) < pivmin:
            q = -pivmin
        if q < 0:
            count += 1
    return count


def _bisect(a: list, b2: list, index: int, lo: float, hi: float, pivmin: float,
            atol: float) -> float:
    """The index-th smallest eigenvalue (0-based) in [lo, hi], by bisection."""
    while hi - lo > 2 * _EPS * max(abs(lo), abs(hi)) + atol:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _count_below(a, b2, mid, pivmin) > index:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def _setup(a: list, b: list) -> tuple[list, float, float, float, float]:
    b2 = [x * x for x in b]
    lo, hi = _gershgorin(a, b)
    scale = max(abs(lo), abs(hi), 1e-300)
    pivmin = sys.float_info.min * max(1.0, max(b2, default=1.0))
    # widen a little: the Gershgorin interval is closed, bisection wants a strict one
    pad = 2 * _EPS * scale + pivmin
    return b2, lo - pad, hi + pad, pivmin, _EPS * scale


def tridiagonal_eigenvalues(alphas: Sequence[float], betas: Sequence[float]) -> list[float]:
    """All eigenvalues of the symmetric tridiagonal T (diagonal ``alphas``, off-diagonal
    ``betas``), ascending, by Sturm-sequence bisection (absolute error about ``eps |T|``).

    Raises:
        ValueError: mismatched lengths, an empty or non-finite matrix.

    Example:
        >>> [round(x, 12) for x in tridiagonal_eigenvalues([2.0, 2.0], [1.0])]
        [1.0, 3.0]
    """
    a, b = _check_tridiagonal(alphas, betas)
    b2, lo, hi, pivmin, atol = _setup(a, b)
    return [_bisect(a, b2, i, lo, hi, pivmin, atol) for i in range(len(a))]


def tridiagonal_top(alphas: Sequence[float], betas: Sequence[float]) -> tuple[float, list]:
    """The largest eigenvalue of T and a unit eigenvector for it.

    The eigenvalue by bisection; the vector by three steps of inverse iteration on
    ``M = (theta + sigma) I - T``, ``sigma = 1e-10 |T|``: M is positive definite (its
    eigenvalues are ``sigma + theta - lambda_i >= sigma`` up to rounding), so its LDL^T solve
    needs no pivoting, and each step shrinks the other components by
    ``sigma / (sigma + theta - lambda_i)``.

    Raises:
        ValueError: as :func:`tridiagonal_eigenvalues`.

    Example:
        >>> theta, s = tridiagonal_top([2.0, 2.0], [1.0])
        >>> round(theta, 12), [round(abs(x), 12) for x in s]
        (3.0, [0.707106781187, 0.707106781187])
    """
    a, b = _check_tridiagonal(alphas, betas)
    n = len(a)
    if n == 1:
        return a[0], [1.0]
    b2, lo, hi, pivmin, atol = _setup(a, b)
    theta = _bisect(a, b2, n - 1, lo, hi, pivmin, atol)
    norm_t = max(abs(lo), abs(hi), 1e-300)
    shift = theta + 1e-10 * norm_t
    # M = shift I - T: diagonal shift - a_i, off-diagonal -b_i. LDL^T: d_0 = m_0,
    # l_i = -b_i / d_i, d_{i+1} = m_{i+1} - b_i^2 / d_i.
    d = [0.0] * n
    ell = [0.0] * (n - 1)
    d[0] = shift - a[0]
    tiny = _EPS * norm_t * 1e-6 + sys.float_info.min
    if d[0] <= tiny:
        d[0] = tiny
    for i in range(n - 1):
        ell[i] = -b[i] / d[i]
        d[i + 1] = (shift - a[i + 1]) - b2[i] / d[i]
        if d[i + 1] <= tiny:
            d[i + 1] = tiny
    x = [1.0] * n
    for _ in range(3):
        # solve L D L^T z = x
        z = x[:]
        for i in range(1, n):
            z[i] -= ell[i - 1] * z[i - 1]
        for i in range(n):
            z[i] /= d[i]
        for i in range(n - 2, -1, -1):
            z[i] -= ell[i] * z[i + 1]
        nz = math.sqrt(sum(t * t for t in z))
        if not (math.isfinite(nz) and nz > 0):
            break
        x = [t / nz for t in z]
    return theta, x
