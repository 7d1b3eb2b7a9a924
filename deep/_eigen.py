"""Top eigenvalue of the Hessian of the training loss: power iteration and Lanczos.

Both solvers only see the matrix-free operator ``v -> H v`` of :class:`HessianOperator` (the
gradient graph built once, reused by every product) and spend at most ``max_hvp`` products.

* ``"power"`` (what the paper used, ALGORITHM.md table: at most 10 products, tol 1e-2):
  ``v <- H v / |H v|``; the estimate is the Rayleigh quotient ``lam_k = v_k . H v_k`` and the
  iteration stops when ``|lam_k - lam_{k-1}| <= tol |lam_k|``. It converges to the eigenvalue of
  largest *magnitude*, at the rate ``|lam_2 / lam_1|`` per product: slowly when the top two
  eigenvalues are close (within 10%: about 0.9^k, i.e. dozens of products for 1e-2).
* ``"lanczos"`` (the default): k products build an orthonormal Krylov basis ``V_k`` (fully
  re-orthogonalised, which is affordable since k is small) and the tridiagonal
  ``T_k = V_k^T H V_k``; the estimate is the largest eigenvalue ``theta`` of ``T_k`` (the
  largest *algebraic* eigenvalue of ``H`` in the limit). Its residual
  ``|H y - theta y| = beta_{k+1} |s_k|`` (``y = V_k s`` the Ritz vector) comes for free, and
  there is an eigenvalue of ``H`` within that residual of ``theta``; the iteration stops when
  the residual is ``<= tol^2 |theta|`` (a residual of ``tol |theta|`` can be reached while
  ``theta`` still approximates the *second* eigenvalue: see the comment in :func:`lanczos`). The error decays with a Chebyshev rate in the *relative gap*
  ``(lam_1 - lam_2) / (lam_2 - lam_min)``, so Lanczos resolves a top eigenvalue standing out of
  the bulk of a Hessian spectrum in a handful of products, where power iteration cannot.
  docs/deep_curvature.md has the measurements behind the default.

The start vector is Gaussian, drawn on the CPU from ``seed`` (so a seed gives the same start on
every device), normalised; or, for a warm start, the previous eigenvector mixed with it.

With ``threshold=`` (a check's ``lam_ref / alpha``) the solver stops as soon as an estimate is
strictly above it: every estimate is at most the top eigenvalue, so "no drop" is then certain
and the result is a lower bound (``is_lower_bound``); a value that decides a growth runs the
full rule, ``extend_hvp`` more products if needed, and a warm start's such value is confirmed
by a cold solve (``confirm_warm``).

The loops, the stopping rules and the warm start are the core's (:mod:`hessbatch._solver`,
standard library, shared with ``hessbatch.convex``); this module supplies the torch vector
operations on flat tensors and the results' layout (one tensor per parameter).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from hessbatch import _solver

from ._hvp import Batch, HessianOperator, LossFn, check_vector, flatten, unflatten

__all__ = ["EigenResult", "NotConvergedWarning", "top_eigenvalue", "power_iteration",
           "lanczos"]

METHODS = ("power", "lanczos")


@dataclass(frozen=True)
class EigenResult:
    """The outcome of :func:`top_eigenvalue`.

    Attributes:
        value: the eigenvalue estimate (float).
        vector: its unit eigenvector estimate, one tensor per parameter (detached).
        n_hvp: Hessian-vector products spent.
        converged: whether the stopping test passed within ``max_hvp`` products (power: relative
            change of the estimate <= tol; Lanczos: residual <= tol**2 * |value|).
        method: ``"power"`` or ``"lanczos"``.
        residual: ``|H v - value v|`` for the returned pair (power: computed from the last
            product; Lanczos: the Ritz estimate ``beta_{k+1} |s_k|``, equal to it in exact
            arithmetic, but it can fall below the rounding floor of the true residual, about
            1e-7 |H| in float32): some eigenvalue of H lies within it of value.
        history: the estimate after each product.
        residuals: the residual after each product.
        ritz_values: Lanczos only: every eigenvalue of the final tridiagonal ``T_k``, largest
            first (the second one estimates ``lambda_2`` from below, for the gap); ``()`` for
            power iteration.
        warm: whether the solve started from a warm-start vector.
        is_lower_bound: the solver stopped because an estimate was strictly above
            ``threshold``: ``value`` is a certain lower bound of the top eigenvalue (every
            Lanczos/power estimate is at most ``lambda_1``), enough for "no drop", not the
            eigenvalue; ``converged`` is then False.
        threshold: the decision threshold given (``lam_ref / alpha``), or None.
        extended: products spent beyond ``max_hvp`` (``extend_hvp``), for a check whose value
            decides a growth.
        confirmed: a warm-started value that decides a growth was confirmed by the cold solve
            of the same seed (``confirm_warm``); ``n_hvp`` and ``history`` then cover both.
    """

    value: float
    vector: list = field(repr=False)
    n_hvp: int
    converged: bool
    method: str
    residual: float
    history: tuple = ()
    residuals: tuple = ()
    ritz_values: tuple = ()
    warm: bool = False
    is_lower_bound: bool = False
    threshold: float | None = None
    extended: int = 0
    confirmed: bool = False

    def __float__(self) -> float:
        return self.value

    @property
    def n_hvps(self) -> int:
        """Hessian-vector products spent (the same as ``n_hvp``)."""
        return self.n_hvp

    @property
    def status(self) -> str:
        """``"lower_bound"``, ``"converged"`` or ``"not_converged"`` (what metrics record)."""
        if self.is_lower_bound:
            return "lower_bound"
        return "converged" if self.converged else "not_converged"


def _check_decision(threshold: object, extend_hvp: object) -> None:
    if isinstance(extend_hvp, bool) or not isinstance(extend_hvp, int):
        raise TypeError(f"extend_hvp must be an int, got {type(extend_hvp).__name__}")
    if extend_hvp < 0:
        raise ValueError(f"extend_hvp must be >= 0, got {extend_hvp}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(
            threshold, (int, float)) or not math.isfinite(threshold)):
        raise ValueError(f"threshold must be None or a finite number (the decision threshold "
                         f"lam_ref / alpha), got {threshold!r}")


def _check_options(method: object, max_hvp: object, tol: object, seed: object) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(max_hvp, bool) or not isinstance(max_hvp, int):
        raise TypeError(f"max_hvp must be an int, got {type(max_hvp).__name__}")
    if max_hvp < 1:
        raise ValueError(f"max_hvp must be >= 1, got {max_hvp}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"tol must be a float, got {type(tol).__name__}")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")


class NotConvergedWarning(UserWarning):
    """An eigenvalue check used a value whose solver had not converged (once per function)."""


class _TorchOps:
    """The vector operations of :mod:`hessbatch._solver` on flat tensors (the parameters'
    device and dtype). Products skip the per-tensor finiteness test of the input: the core
    tests the scalars ``v . Hv`` and ``|w|`` of every product instead (one fused test)."""

    def __init__(self, op: HessianOperator) -> None:
        self.op = op
        self.dim = op.dim
        self._like = op.params[0]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return flatten(self.op.matvec(unflatten(v, self.op.params), check=False))

    @staticmethod
    def dot(u: torch.Tensor, v: torch.Tensor) -> float:
        return float(torch.dot(u, v))

    @staticmethod
    def axpy(a: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.add(y, x, alpha=a)

    @staticmethod
    def scale(a: float, x: torch.Tensor) -> torch.Tensor:
        return x * a

    @staticmethod
    def norm(v: torch.Tensor) -> float:
        return float(v.norm())

    def random(self, seed: int) -> torch.Tensor:
        # drawn on the CPU in float64, so a seed gives the same start on every device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(self.dim, generator=gen, dtype=torch.float64)
        v /= v.norm()
        return v.to(device=self._like.device, dtype=self._like.dtype)


def _warm_flat(start: object, op: HessianOperator) -> torch.Tensor | None:
    """The warm-start vector as one flat tensor, or None (cold start)."""
    if start is None:
        return None
    if isinstance(start, EigenResult):
        start = start.vector
    try:
        v = check_vector(start, op.params)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"start: {exc}") from None
    return flatten(v)


def _solve(op: HessianOperator, method: str, max_hvp: int, tol: float, seed: int,
           start: object = None, warm_mix: float = 0.1, threshold: float | None = None,
           extend_hvp: int = 0, confirm_warm: bool = True, progress=None) -> EigenResult:
    _check_decision(threshold, extend_hvp)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or callable as progress(k, estimate, "
                        f"residual), got {type(progress).__name__}")
    if not isinstance(confirm_warm, bool):
        raise TypeError(f"confirm_warm must be a bool, got {type(confirm_warm).__name__}")
    ops = _TorchOps(op)
    r = _solver.solve(ops, seed, method=method, max_iter=max_hvp, tol=float(tol),
                      rule="squared", warm=_warm_flat(start, op), mix=warm_mix,
                      threshold=threshold, extend=extend_hvp, confirm_warm=confirm_warm,
                      callback=progress)
    return EigenResult(value=r.value, vector=[t.detach() for t in unflatten(r.vector, op.params)],
                       n_hvp=r.n_matvec, converged=r.converged, method=method,
                       residual=r.residual, history=r.history, residuals=r.residuals,
                       ritz_values=r.ritz_values, warm=start is not None,
                       is_lower_bound=r.lower_bound, threshold=r.threshold,
                       extended=r.extended, confirmed=r.confirmed)


def power_iteration(op: HessianOperator, *, max_hvp: int = 10, tol: float = 1e-2,
            seed: int = 0, start: object = None, warm_mix: float = 0.1,
            threshold: float | None = None, extend_hvp: int = 0,
            confirm_warm: bool = True) -> EigenResult:
    """Power iteration on ``op`` (see the module docstring); at most ``max_hvp`` products.

    ``start``/``warm_mix``/``confirm_warm``, ``threshold``/``extend_hvp``: as for
    :func:`top_eigenvalue`.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]]); y = torch.zeros(2, 1)
        >>> op = HessianOperator(lin, torch.nn.functional.mse_loss, [(x, y)])   # H = diag(4, 1)
        >>> round(power_iteration(op, max_hvp=30, tol=1e-8).value, 4)
        4.0
    """
    _check_options("power", max_hvp, tol, seed)
    return _solve(op, "power", max_hvp, tol, seed, start, warm_mix, threshold, extend_hvp,
                  confirm_warm)


def lanczos(op: HessianOperator, *, max_hvp: int = 10, tol: float = 1e-2,
            seed: int = 0, start: object = None, warm_mix: float = 0.1,
            threshold: float | None = None, extend_hvp: int = 0,
            confirm_warm: bool = True) -> EigenResult:
    """Lanczos with full re-orthogonalisation on ``op``; at most ``max_hvp`` products.

    ``start``/``warm_mix``/``confirm_warm``, ``threshold``/``extend_hvp``: as for
    :func:`top_eigenvalue`.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]]); y = torch.zeros(2, 1)
        >>> op = HessianOperator(lin, torch.nn.functional.mse_loss, [(x, y)])   # H = diag(4, 1)
        >>> r = lanczos(op, max_hvp=10)
        >>> round(r.value, 6), r.n_hvp      # exact once the Krylov space is all of R^2
        (4.0, 2)
    """
    _check_options("lanczos", max_hvp, tol, seed)
    return _solve(op, "lanczos", max_hvp, tol, seed, start, warm_mix, threshold, extend_hvp,
                  confirm_warm)


def top_eigenvalue(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *,
                   params: Sequence[torch.Tensor] | None = None, method: str = "lanczos",
                   max_hvp: int = 10, tol: float = 1e-2, seed: int = 0,
                   backend: str = "double_backprop", reuse_graph: bool = True,
                   start: object = None, warm_mix: float = 0.1,
                   threshold: float | None = None, extend_hvp: int = 0,
                   confirm_warm: bool = True, progress=None) -> EigenResult:
    """Top eigenvalue of the Hessian of the mean loss over ``batches``.

    ``H = d^2/dtheta^2 sum_b (n_b/N) loss_fn(model(x_b), y_b)``, ``theta`` = ``params``.
    The gradient graph is built once and reused by every product (see :class:`HessianOperator`);
    the model is in eval mode during the computation and each module's mode is restored after.

    Args:
        model: any ``nn.Module``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss of a batch.
        batches: list of ``(x, y)`` tensor pairs on the model's device (the Hessian batch, split
            as convenient for memory: the result does not depend on the split).
        params: ``None`` for all parameters that require grad, or a list of the model's
            parameters for the block Hessian (e.g. those of the last k layers).
        method: ``"lanczos"`` (default, largest algebraic eigenvalue) or ``"power"`` (the paper's;
            largest magnitude).
        max_hvp: at most this many Hessian-vector products (>= 1).
        tol: relative tolerance of the stopping test (>= 0; 0 runs all ``max_hvp`` products).
        seed: seeds the start vector.
        backend: ``"double_backprop"`` or ``"forward_over_reverse"``.
        reuse_graph: keep the gradient graph between products (faster, more memory).
        start: warm start: the previous check's eigenvector (an :class:`EigenResult` or its
            ``vector``, one tensor per parameter), mixed with the random vector of ``seed`` as
            ``(u + warm_mix r) / |u + warm_mix r|``; None (default): a cold random start.
            :class:`WarmStartEigenvalue` keeps it between checks for a training loop.
        warm_mix: weight of the random part of a warm start (>= 0; default 0.1).
        confirm_warm: the warm-start guard (default True): a warm-started value that decides a
            growth (at or below ``threshold``, or no threshold) is confirmed by the cold solve
            of the same seed, and the larger value is kept (a warm start can stop on
            ``lambda_2``; a lower bound needs no confirmation). False: the warm solve alone.
        threshold: the decision threshold of the check (``lam_ref / alpha``; None at the first
            check). The solver stops as soon as an estimate is strictly above it: every
            estimate is at most the top eigenvalue, so "no drop" is then certain and the result
            says ``is_lower_bound=True`` (``value`` is a lower bound, not the eigenvalue).
            Otherwise the normal rule runs.
        extend_hvp: up to this many products beyond ``max_hvp`` when the rule has not passed
            and the value decides a growth (at or below ``threshold``, or no threshold);
            default 0 (at most ``max_hvp``).
        progress: None, or called as ``progress(k, estimate, residual)`` after each product
            (``hessbatch eig`` prints it, so a long computation is not silent).

    Returns:
        :class:`EigenResult` with ``value``, ``vector``, ``n_hvp`` (also ``n_hvps``),
        ``converged``, ``is_lower_bound``, ``residual``.

    Raises:
        TypeError, ValueError: bad arguments (each message names the parameter), or a
            non-finite loss on a batch.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(3, (32,))
        >>> r = top_eigenvalue(model, torch.nn.functional.cross_entropy, [(x, y)])
        >>> r.value > 0 and r.n_hvp <= 10
        True
    """
    _check_options(method, max_hvp, tol, seed)
    _check_decision(threshold, extend_hvp)
    op = HessianOperator(model, loss_fn, batches, params=params, backend=backend,
                         reuse_graph=reuse_graph)
    try:
        return _solve(op, method, max_hvp, float(tol), seed, start, warm_mix, threshold,
                      extend_hvp, confirm_warm, progress)
    finally:
        op.release()


class WarmStartEigenvalue:
    """The eigenvalue function of a training loop: warm starts and the first-check self-tests.

    Called as ``f(model, loss_fn, batches, *, seed)`` (the :class:`~hessbatch.deep.Trainer`'s
    ``eigenvalue_fn`` signature), it returns :func:`top_eigenvalue`'s :class:`EigenResult` and
    keeps the result's eigenvector, so that the next check starts from it, mixed with a random
    vector from ``seed``: ``v0 = (u + warm_mix r) / |u + warm_mix r|``. The top eigenvector moves
    little between checks, so fewer products reach the stopping rule; the random part keeps a
    new top direction reachable. The kept vector is part of :meth:`state_dict` (the trainer
    stores it in its checkpoints), so a resumed run is the uninterrupted one.

    On its first call it also runs the self-tests of :mod:`hessbatch.deep._selftest` (unless
    ``hvp_check="off"``): the loss must be a mean over its batch
    (:func:`~hessbatch.deep.check_mean_loss`, an error), and one exact product must agree with a
    finite difference of gradients (:func:`~hessbatch.deep.check_hvp`: an
    :class:`~hessbatch.deep.HVPCheckError`, or a warning with ``hvp_check="warn"``).

    Args:
        params: ``None`` (all parameters that require grad) or a callable ``model -> list`` of
            parameters (a block), or a fixed list.
        method, max_hvp, tol, backend: as for :func:`top_eigenvalue`.
        warm_start: start from the previous eigenvector (default True); False: every check
            starts cold, from the random vector of its seed (the paper's solver).
        warm_mix: weight of the random part (>= 0, default 0.1).
        hvp_check: ``"error"`` (default), ``"warn"`` or ``"off"``.
        extend_hvp: products added for a check whose value decides a growth when the rule has
            not passed within ``max_hvp`` (default 0, as before issue 22, so that every training
            door computes the same values until all of them pass it; 10 is what issue 22
            measures: docs/performance.md).
        confirm_warm: the warm-start guard of :func:`top_eigenvalue` (default True).

    Each call takes an optional ``threshold`` (the check's ``lam_ref / alpha``): the solver
    stops as soon as "no drop" is certain. Every check is recorded in :attr:`log`; the first
    check whose value is used unconverged raises one :class:`NotConvergedWarning`, later ones
    are counted (:attr:`n_not_converged`).

    A kept vector whose shapes do not match the parameters of the call (another model or
    block) is not used: that check starts cold.

    Attributes:
        vector: the last eigenvector (one tensor per parameter), or None.
        checked: whether the self-tests have run.

    Raises:
        ValueError, TypeError: bad options (named).
    """

    STATE_FORMAT = "hessbatch.deep.warm_start"

    def __init__(self, *, params=None, method: str = "lanczos", max_hvp: int = 10,
                 tol: float = 1e-2, backend: str = "double_backprop", warm_start: bool = True,
                 warm_mix: float = 0.1, hvp_check: str = "error", extend_hvp: int = 0,
                 confirm_warm: bool = True) -> None:
        _check_options(method, max_hvp, tol, 0)
        _check_decision(None, extend_hvp)
        if not isinstance(warm_start, bool):
            raise TypeError(f"warm_start must be a bool, got {type(warm_start).__name__}")
        if not isinstance(confirm_warm, bool):
            raise TypeError(f"confirm_warm must be a bool, got {type(confirm_warm).__name__}")
        if isinstance(warm_mix, bool) or not isinstance(warm_mix, (int, float)) or \
                not math.isfinite(warm_mix) or warm_mix < 0:
            raise ValueError(f"warm_mix must be a finite number >= 0, got {warm_mix!r}")
        if hvp_check not in ("error", "warn", "off"):
            raise ValueError(f"hvp_check must be 'error', 'warn' or 'off', got {hvp_check!r}")
        self.params, self.method, self.max_hvp, self.tol = params, method, max_hvp, float(tol)
        self.backend, self.warm_start, self.warm_mix = backend, warm_start, float(warm_mix)
        self.hvp_check, self.extend_hvp, self.confirm_warm = hvp_check, extend_hvp, confirm_warm
        self.vector: list | None = None
        self.checked = False
        #: one record per check: ``value``, ``status`` (lower_bound / converged /
        #: not_converged), ``n_hvp``, ``threshold``, ``extended``, ``warm``, ``confirmed``
        self.log: list[dict] = []
        self._warned = False

    def _params(self, model: nn.Module):
        return self.params(model) if callable(self.params) else self.params

    @property
    def n_not_converged(self) -> int:
        """Checks whose value was used although the solver had not converged."""
        return sum(r["status"] == "not_converged" for r in self.log)

    def __call__(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *,
                 seed: int, threshold: float | None = None) -> EigenResult:
        """One check. ``threshold``: the check's decision threshold ``lam_ref / alpha`` (None
        at the first check, or to get the value always): the solver stops as soon as the
        answer "no drop" is certain (``is_lower_bound``)."""
        _check_decision(threshold, self.extend_hvp)
        params = self._params(model)
        if not self.checked and self.hvp_check != "off":
            from ._selftest import check_hvp, check_mean_loss
            check_mean_loss(model, loss_fn, batches[0])
            if self.backend.replace("-", "_") != "finite_difference":
                check_hvp(model, loss_fn, batches, params=params, seed=seed,
                          on_fail="error" if self.hvp_check == "error" else "warn")
        self.checked = True
        start = self.vector if self.warm_start else None
        if start is not None:
            like = params if params is not None else [p for p in model.parameters()
                                                      if p.requires_grad]
            if [t.shape for t in start] != [p.shape for p in like]:
                start = None  # another model or block: nothing to warm-start from
        result = top_eigenvalue(model, loss_fn, batches, params=params, method=self.method,
                                max_hvp=self.max_hvp, tol=self.tol, seed=seed,
                                backend=self.backend, start=start, warm_mix=self.warm_mix,
                                threshold=threshold, extend_hvp=self.extend_hvp,
                                confirm_warm=self.confirm_warm)
        if math.isfinite(result.value) and all(bool(torch.isfinite(t).all())
                                               for t in result.vector):
            self.vector = result.vector
        self.log.append({"value": result.value, "status": result.status,
                         "n_hvp": result.n_hvp, "threshold": threshold,
                         "extended": result.extended, "warm": result.warm,
                         "confirmed": result.confirmed})
        if result.status == "not_converged" and not self._warned:
            self._warned = True
            warnings.warn(
                f"eigenvalue check {len(self.log)}: the solver did not converge within "
                f"{result.n_hvp} Hessian-vector products (max_hvp={self.max_hvp} + extend_hvp="
                f"{self.extend_hvp}; residual {result.residual:.2e}, value "
                f"{result.value:.6g}); the value is used as it is. Further non-converged checks "
                "are counted (n_not_converged, the log), not warned again; raise max_hvp or "
                "extend_hvp for tighter values", NotConvergedWarning, stacklevel=2)
        return result

    def state_dict(self) -> dict:
        """The kept eigenvector (CPU tensors), whether the self-tests have run, the log."""
        return {"format": self.STATE_FORMAT, "version": 2, "checked": self.checked,
                "vector": None if self.vector is None else [t.detach().cpu().clone()
                                                            for t in self.vector],
                "log": [dict(r) for r in self.log], "warned": self._warned}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (the vector goes to the device at the next call).
        A version-1 state (no log) is accepted.

        Raises:
            ValueError: not a warm-start state.
        """
        if not isinstance(state, dict) or state.get("format") != self.STATE_FORMAT:
            raise ValueError(f"not a warm-start state (expected format {self.STATE_FORMAT!r})")
        self.checked = bool(state["checked"])
        self.vector = None if state["vector"] is None else list(state["vector"])
        self.log = [dict(r) for r in state.get("log", [])]
        self._warned = bool(state.get("warned", False))
