"""Self-tests of the curvature signal: is the loss a mean, and is the HVP what it claims to be.

Two ways the top eigenvalue can be silently wrong, both checked on the first eigenvalue of a
run (:class:`~hessbatch.deep.WarmStartEigenvalue`) and by ``hessbatch eig``:

* **the loss is not a mean over its batch** (``reduction="sum"``, a class-weighted mean): then
  the Hessian depends on how the Hessian batch is split into micro-batches.
  :func:`check_mean_loss` compares the loss of a batch with the size-weighted mean of the losses
  of its two halves, ``L(x) = (n_1 L(x_1) + n_2 L(x_2)) / n``, which holds for every mean.
* **double backward is not what it seems** (a custom ``autograd.Function`` whose backward is
  not differentiable, a backward that detaches, reentrant activation checkpointing, reduced
  precision): the exact product is wrong with no error. :func:`check_hvp` compares one exact
  product ``H v`` with a central finite difference of two gradients,
  ``(g(theta + h v) - g(theta - h v)) / 2h``, at two steps ``h`` and ``h/2`` with
  ``h = eps^(1/3) max(|theta|, 1) / |v|`` (``eps`` the parameters' dtype epsilon: the step that
  balances the ``h^2`` truncation error against the ``eps / h`` rounding error). The
  disagreement is allowed to be ``max(tol, 4 |fd(h) - fd(h/2)| / |Hv|)``: what the dtype
  explains, or what the finite difference itself does not resolve (kinks of ReLU crossed by
  the step, rounding).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ._hvp import (Batch, HessianOperator, LossFn, check_batches, check_loss_fn, check_model,
                   _norm, eval_mode, fd_step, finite_difference_hvp, flatten, float64_copy,
                   unflatten)

__all__ = ["HVPCheck", "HVPCheckError", "HVPCheckWarning", "check_hvp", "check_mean_loss",
           "default_check_tol", "LIKELY_CAUSES"]

LIKELY_CAUSES = (
    "likely causes: a custom torch.autograd.Function whose backward is not differentiable "
    "(@once_differentiable, or a backward that detaches, uses .data, .item() or NumPy); "
    "reentrant activation checkpointing (torch.utils.checkpoint with use_reentrant=True drops "
    "the curvature of the checkpointed blocks: use use_reentrant=False); reduced precision "
    "(autocast to bfloat16/float16: compute the eigenvalue outside autocast). Models without a "
    "correct double backward can use hvp='finite-difference' (backend='finite_difference')")


class HVPCheckError(RuntimeError):
    """The exact Hessian-vector product disagrees with the finite difference of gradients."""


class HVPCheckWarning(UserWarning):
    """As :class:`HVPCheckError`, when the check is asked to warn instead of raising."""


def default_check_tol(dtype: torch.dtype) -> float:
    """The disagreement the dtype explains: ``10 sqrt(eps)`` (float32 3.5e-3, float64 1.5e-7)."""
    return 10.0 * math.sqrt(torch.finfo(dtype).eps)


@dataclass(frozen=True)
class HVPCheck:
    """The outcome of :func:`check_hvp`.

    Fields:
        rel_error: ``|Hv - fd(h/2)| / max(|Hv|, |fd(h/2)|)``.
        allowed: the disagreement allowed, ``max(tol, 4 * spread)``.
        spread: ``|fd(h) - fd(h/2)| / max(|Hv|, |fd(h/2)|)``, what the finite difference
            itself does not resolve.
        step: the step ``h``.
        ok: ``rel_error <= allowed``.
        dtype: the dtype the comparison ran in.
    """

    rel_error: float
    allowed: float
    spread: float
    step: float
    ok: bool
    dtype: str = "float64"

    def message(self) -> str:
        """A one-line verdict (with the likely causes when the check fails)."""
        head = (f"HVP self-test: the exact Hessian-vector product is {self.rel_error:.2e} "
                f"(relative) from a central finite difference of gradients (step "
                f"{self.step:.2e}, {self.dtype}); allowed {self.allowed:.2e}")
        return head if self.ok else f"{head}. FAILED: the product is wrong; {LIKELY_CAUSES}"


def check_hvp(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *,
              params: Sequence[torch.Tensor] | None = None, seed: int = 0,
              tol: float | None = None, on_fail: str = "error",
              precision: str = "float64") -> HVPCheck:
    """Compare one exact product ``H v`` (double backprop) with finite differences of gradients.

    By default the comparison runs on a float64 copy of the model and batches (the model itself
    is not touched): a float32 finite difference of a network with max-pooling or ReLU is
    1e-2 to 1 off whatever the step (kinks crossed by a large step, rounding for a small one;
    measured in docs/deep_curvature.md), while in float64 the step ``h = sqrt(eps) max(|theta|,
    1)`` gives about 1e-8. What the check catches (a backward that detaches or is not
    differentiable, wrong custom gradients) does not depend on the dtype; reduced-precision
    autocast errors do, and are not caught this way. If the float64 copy cannot run (a kernel
    without float64), the check falls back to the parameters' dtype (``precision="native"``),
    where it is much weaker (the allowed disagreement grows with the spread below), and where
    the model's own parameters are moved for the finite differences and restored bit for bit.

    Args:
        model, loss_fn, batches, params: as for :class:`~hessbatch.deep.HessianOperator`.
        seed: seeds the random unit direction ``v`` (drawn on the CPU).
        tol: allowed relative disagreement; default 1e-4 in float64 (the failures this check is
            for are 3% to 60%), :func:`default_check_tol` in a native float32.
        on_fail: ``"error"`` (raise :class:`HVPCheckError`), ``"warn"``
            (:class:`HVPCheckWarning`) or ``"ignore"`` (just return the result).
        precision: ``"float64"`` (default) or ``"native"``.

    Returns:
        :class:`HVPCheck`. Costs one product and four gradients.

    Raises:
        HVPCheckError: the check failed and ``on_fail="error"``.
        ValueError: a bad ``on_fail``, ``tol`` or ``precision``; as :class:`HessianOperator`.
    """
    if on_fail not in ("error", "warn", "ignore"):
        raise ValueError(f"on_fail must be 'error', 'warn' or 'ignore', got {on_fail!r}")
    if precision not in ("float64", "native"):
        raise ValueError(f"precision must be 'float64' or 'native', got {precision!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if precision == "float64":
        try:
            result = _check(*float64_copy(model, check_batches(batches), params), loss_fn, seed, tol,
                            precision)
        except (RuntimeError, TypeError) as exc:
            if "float64" in str(exc).lower() or "double" in str(exc).lower():
                result = _check(model, batches, params, loss_fn, seed, tol, "native")
            else:
                raise
    else:
        result = _check(model, batches, params, loss_fn, seed, tol, precision)
    if not result.ok:
        if on_fail == "error":
            raise HVPCheckError(result.message())
        if on_fail == "warn":
            warnings.warn(result.message(), HVPCheckWarning, stacklevel=2)
    return result


def _check(model, batches, params, loss_fn, seed, tol, precision) -> HVPCheck:
    op = HessianOperator(model, loss_fn, batches, params=params, reuse_graph=False)
    dtype = op.params[0].dtype
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
    v = (v / v.norm()).to(device=op.device, dtype=dtype)
    V = unflatten(v, op.params)
    exact = flatten(op.matvec(V))
    eps = torch.finfo(dtype).eps
    if dtype == torch.float64:
        h = math.sqrt(eps) * max(_norm(op.params), 1.0)
    else:
        h = fd_step(op.params, 1.0)
    fd_h = flatten(finite_difference_hvp(op, V, h))
    fd_h2 = flatten(finite_difference_hvp(op, V, h / 2))
    scale = max(float(exact.norm()), float(fd_h2.norm()), 1e-300)
    rel = float((exact - fd_h2).norm()) / scale
    spread = float((fd_h - fd_h2).norm()) / scale
    if tol is None:
        tol = 1e-4 if dtype == torch.float64 else default_check_tol(dtype)
    allowed = max(float(tol), 4.0 * spread)
    return HVPCheck(rel_error=rel, allowed=allowed, spread=spread, step=h, ok=rel <= allowed,
                    dtype=str(dtype).replace("torch.", ""))


def check_mean_loss(model: nn.Module, loss_fn: LossFn, batch: Batch, *,
                    rtol: float | None = None) -> float:
    """Check that ``loss_fn`` is a mean over its batch (what the Hessian and the gradient
    accumulation assume): ``L(x) = (n_1 L(x_1) + n_2 L(x_2)) / n`` for the two halves.

    Args:
        model, loss_fn: as for the trainer; the model runs in eval mode, under no_grad.
        batch: an ``(x, y)`` pair of at least 2 samples (a batch of 1 is not checked).
        rtol: relative tolerance; default ``1000 eps`` of the loss's dtype.

    Returns:
        The relative disagreement found.

    Raises:
        ValueError: the losses disagree beyond ``rtol`` (a sum, a weighted mean, a loss that
            depends on the batch as a whole), naming the values and the fix.
    """
    check_model(model)
    check_loss_fn(loss_fn)
    (x, y), = check_batches([batch])
    n = int(x.shape[0])
    if n < 2:
        return 0.0
    k = n // 2
    with torch.no_grad(), eval_mode(model):
        full = loss_fn(model(x), y)
        a = loss_fn(model(x[:k]), y[:k])
        b = loss_fn(model(x[k:]), y[k:])
    if not all(isinstance(t, torch.Tensor) and t.dim() == 0 for t in (full, a, b)):
        raise ValueError("loss_fn must return a scalar tensor (the mean loss of the batch)")
    full_f, split = float(full), (k * float(a) + (n - k) * float(b)) / n
    if not (math.isfinite(full_f) and math.isfinite(split)):
        return 0.0  # a non-finite loss is reported elsewhere, with its own message
    eps = torch.finfo(full.dtype).eps if full.dtype.is_floating_point else 1e-7
    rtol = 1000 * eps if rtol is None else rtol
    rel = abs(full_f - split) / max(abs(full_f), abs(split), 1e-30)
    if rel > rtol:
        hint = ""
        if abs(full_f - (float(a) + float(b))) <= rtol * max(abs(full_f), 1e-30):
            hint = " It equals the sum of the halves' losses: reduction='sum'?"
        raise ValueError(
            f"loss_fn must return the mean loss over its batch: on {n} samples it gives "
            f"{full_f:.6g}, but the size-weighted mean of its two halves' losses is "
            f"{split:.6g} (relative difference {rel:.2e} > {rtol:.1e}).{hint} A sum, or a "
            "weighted mean such as cross_entropy(weight=...), makes the Hessian and the "
            "accumulated gradient depend on how the batch is split. Fix: use "
            "reduction='mean' without class weights, or divide a sum by the batch size "
            "(weighting samples, if needed, by a factor that does not depend on the batch).")
    return rel
