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
  product ``H v`` on a float64 copy with a central finite difference of two gradients,
  ``(g(theta + h v) - g(theta - h v)) / 2h``, the step chosen from a ladder around
  ``eps^(1/3) max(|theta|, 1) / |v|`` (``eps`` that of the precision the copy really computes
  in, seen by forward hooks: a ``.float()`` cast in the forward makes it float32). The verdict
  is ``pass``, ``fail`` or ``inconclusive`` (the finite difference cannot resolve the product
  to the allowed error): the allowance is never widened to fit the finite difference's noise.
  Then the model's own product (its dtype, the caller's autocast) is compared with the float64
  one: a bfloat16/float16 forward is caught there.

A normalisation that uses batch statistics in eval mode (``BatchNorm`` without running
statistics) fails the mean-loss check, and is named as the cause.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from ._hvp import (Batch, HessianOperator, LossFn, adaptive_fd, check_batches, check_loss_fn,
                   check_model, eval_mode, flatten, float64_copy, forward_dtypes, unflatten,
                   warn_if_autocast)

__all__ = ["HVPCheck", "HVPCheckError", "HVPCheckWarning", "check_hvp", "check_mean_loss",
           "default_check_tol", "LIKELY_CAUSES", "VERDICTS"]

LIKELY_CAUSES = (
    "likely causes: a custom torch.autograd.Function whose backward is not differentiable "
    "(@once_differentiable, or a backward that detaches, uses .data, .item() or NumPy); "
    "reentrant activation checkpointing (torch.utils.checkpoint with use_reentrant=True drops "
    "the curvature of the checkpointed blocks: use use_reentrant=False); reduced precision "
    "(autocast to bfloat16/float16: compute the eigenvalue outside autocast). Models without a "
    "correct double backward can use hvp='finite-difference' (backend='finite_difference')")

VERDICTS = ("pass", "fail", "inconclusive")

#: allowed relative disagreement of the model's own (native-dtype) product with the float64
#: one: what float32 rounding explains with room (measured: 1e-7 to 1e-5 on the tests' float32
#: models); a bfloat16 or float16 product (autocast) is 1e-3 to 1e-1 off.
NATIVE_TOL = 1e-3


class HVPCheckError(RuntimeError):
    """The exact Hessian-vector product disagrees with the finite difference of gradients."""


class HVPCheckWarning(UserWarning):
    """As :class:`HVPCheckError`, when the check is asked to warn instead of raising, or when
    the check is inconclusive (it could not decide)."""


def default_check_tol(dtype: torch.dtype) -> float:
    """The disagreement the dtype explains: ``10 sqrt(eps)`` (float32 3.5e-3, float64 1.5e-7)."""
    return 10.0 * math.sqrt(torch.finfo(dtype).eps)


@dataclass(frozen=True)
class HVPCheck:
    """The outcome of :func:`check_hvp`.

    Fields:
        rel_error: ``|Hv - fd| / max(|Hv|, |fd|)``, ``fd`` the finite difference at the step
            the ladder chose.
        allowed: the disagreement allowed, ``tol`` (never widened).
        spread: the finite difference's own uncertainty: the relative disagreement of the two
            neighbouring steps that agreed best.
        step: the step ``h`` chosen.
        ok: ``verdict == "pass"``.
        dtype: the precision the comparison really ran in (the lowest seen by forward hooks
            in the copy: ``"float32"`` when the forward casts with ``.float()``).
        verdict: ``"pass"`` (``rel_error <= tol`` and ``spread <= tol``), ``"fail"``
            (``rel_error > tol + 4 spread``: more than the finite difference's uncertainty can
            explain; or the native product is off), or ``"inconclusive"`` (neither: the finite
            difference cannot resolve the product to ``tol``).
        low_precision: modules (``name:dtype``) whose output in the float64 copy was not
            float64 (a cast in the forward), ``"(loss)"`` for the loss.
        native_rel_error: ``|Hv_native - Hv_64| / |Hv_64|``: the model's own product, in its
            own dtype and under the caller's autocast state, against the float64 one (None:
            not compared).
        native_dtype: the parameters' dtype.
    """

    rel_error: float
    allowed: float
    spread: float
    step: float
    ok: bool
    dtype: str = "float64"
    verdict: str = "pass"
    low_precision: tuple = ()
    native_rel_error: float | None = None
    native_dtype: str = "float64"

    def message(self) -> str:
        """A one-line verdict (with the likely causes when the check fails)."""
        head = (f"HVP self-test: the exact Hessian-vector product is {self.rel_error:.2e} "
                f"(relative) from a central finite difference of gradients (step "
                f"{self.step:.2e}, {self.dtype}, finite-difference spread {self.spread:.1e}); "
                f"allowed {self.allowed:.2e}")
        if self.native_rel_error is not None:
            head += (f"; the model's own {self.native_dtype} product is "
                     f"{self.native_rel_error:.2e} from the float64 one (allowed "
                     f"{NATIVE_TOL:.0e})")
        if self.low_precision:
            head += (f". The float64 copy does not compute in float64: "
                     f"{', '.join(self.low_precision[:4])} (a .float()/.half() cast in the "
                     "forward or the loss), so the check ran at that precision")
        if self.verdict == "pass":
            return head
        if self.verdict == "inconclusive":
            return (f"{head}. INCONCLUSIVE: the finite difference cannot resolve the product "
                    "to the allowed error (kinks crossed, or a low-precision forward); the "
                    "product is neither confirmed nor refuted. Remove casts to float32 from "
                    "the forward (or make them conditional on the input dtype) so that the "
                    "float64 copy computes in float64")
        if self.native_rel_error is not None and self.native_rel_error > NATIVE_TOL and \
                self.rel_error <= self.allowed + 4 * self.spread:
            return (f"{head}. FAILED: the product in the model's own precision is wrong "
                    "although the float64 one is right: reduced precision (autocast to "
                    "bfloat16/float16 in the forward, or half-precision parameters). Compute "
                    "the eigenvalue in float32 or float64, outside autocast")
        return f"{head}. FAILED: the product is wrong; {LIKELY_CAUSES}"


def check_hvp(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *,
              params: Sequence[torch.Tensor] | None = None, seed: int = 0,
              tol: float | None = None, on_fail: str = "error",
              precision: str = "float64", compare_native: bool = True) -> HVPCheck:
    """Compare one exact product ``H v`` (double backprop) with finite differences of gradients.

    By default the comparison runs on a float64 copy of the model and batches (the model itself
    is not touched), and forward hooks verify that the copy really computes in float64: a
    ``.float()`` cast in the forward (logits cast to float32, common in LLM code) makes it
    compute in float32, which is reported (``low_precision``) and sets the precision the check
    assumes. The finite-difference step is chosen from a ladder of steps around ``eps^(1/3)``
    (:func:`~hessbatch.deep._hvp.adaptive_fd`), whose best-agreeing pair also gives the
    difference's own uncertainty, the *spread*. Verdict: ``"pass"`` when the product agrees to
    ``tol`` and the spread is within ``tol``; ``"fail"`` when the disagreement exceeds
    ``tol + 4 spread``; otherwise ``"inconclusive"`` (a warning, never a silent pass: the
    allowance is not widened to fit the noise).

    Then (``compare_native``) the model's own product, in its dtype and under the caller's
    autocast state, is compared with the float64 one: off by more than ``NATIVE_TOL`` (1e-3)
    is a failure (bfloat16/float16 autocast in the forward, half-precision parameters). A call
    under an active autocast also warns (:class:`~hessbatch.deep._hvp.ReducedPrecisionWarning`).

    If the float64 copy cannot run (a kernel without float64), the check falls back to the
    parameters' dtype (``precision="native"``), where the model's own parameters are moved for
    the finite differences and restored bit for bit.

    Args:
        model, loss_fn, batches, params: as for :class:`~hessbatch.deep.HessianOperator`.
        seed: seeds the random unit direction ``v`` (drawn on the CPU).
        tol: allowed relative disagreement; default 1e-4 in float64 (the failures this check is
            for are 3% to 60%), :func:`default_check_tol` of the precision really used
            otherwise (float32: 3.5e-3).
        on_fail: ``"error"`` (raise :class:`HVPCheckError` on a failure), ``"warn"``
            (:class:`HVPCheckWarning`) or ``"ignore"`` (just return the result). An
            inconclusive check warns under ``"error"`` and ``"warn"``.
        precision: ``"float64"`` (default) or ``"native"``.
        compare_native: compare the native-dtype product with the float64 one (default True;
            skipped for float64 models and when the copy cannot run in float64).

    Returns:
        :class:`HVPCheck`. Costs one float64 product, eight gradients, one forward pass, and
        one native product.

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
    if not isinstance(compare_native, bool):
        raise TypeError(f"compare_native must be a bool, got {type(compare_native).__name__}")
    warn_if_autocast("check_hvp")
    batches = check_batches(batches)
    if precision == "float64":
        try:
            twin, b64, p64 = float64_copy(model, batches, params)
            result, v64, hv64 = _check(twin, b64, p64, loss_fn, seed, tol)
        except (RuntimeError, TypeError) as exc:
            if "float64" in str(exc).lower() or "double" in str(exc).lower():
                result, v64, hv64 = _check(model, batches, params, loss_fn, seed, tol)
            else:
                raise
        native_dtype = (params[0] if params else next(
            p for p in model.parameters() if p.requires_grad)).dtype
        if compare_native and native_dtype != torch.float64 and hv64 is not None:
            op = HessianOperator(model, loss_fn, batches, params=params, reuse_graph=False)
            hv = flatten(op.matvec(unflatten(v64.to(native_dtype), op.params))).double()
            rel = float((hv.cpu() - hv64.cpu()).norm()) / max(float(hv64.norm()), 1e-300)
            verdict = result.verdict
            if rel > NATIVE_TOL:
                verdict = "fail"
            result = replace(result, native_rel_error=rel,
                             native_dtype=str(native_dtype).replace("torch.", ""),
                             verdict=verdict, ok=verdict == "pass")
    else:
        result, _, _ = _check(model, batches, params, loss_fn, seed, tol)
    if result.verdict == "fail":
        if on_fail == "error":
            raise HVPCheckError(result.message())
        if on_fail == "warn":
            warnings.warn(result.message(), HVPCheckWarning, stacklevel=2)
    elif result.verdict == "inconclusive" and on_fail != "ignore":
        warnings.warn(result.message(), HVPCheckWarning, stacklevel=2)
    return result


def _check(model, batches, params, loss_fn, seed, tol):
    """One comparison in the precision the model really computes in; also returns the float64
    direction and the exact product (None when the model is not float64)."""
    op = HessianOperator(model, loss_fn, batches, params=params, reuse_graph=False)
    dtype = op.params[0].dtype
    real, low = forward_dtypes(model, loss_fn, op.batches[0])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v64 = torch.randn(op.dim, generator=gen, dtype=torch.float64)
    v64 = v64 / v64.norm()
    V = unflatten(v64.to(device=op.device, dtype=dtype), op.params)
    exact = flatten(op.matvec(V))
    fd_list, h, spread = adaptive_fd(op, V, torch.finfo(real).eps)
    fd = flatten(fd_list)
    scale = max(float(exact.norm()), float(fd.norm()), 1e-300)
    rel = float((exact - fd).norm()) / scale
    if tol is None:
        # below float32 (a bfloat16/float16 forward) the finite difference cannot check to a
        # useful accuracy: keep float32's allowance, so such a check is inconclusive or fails,
        # never a pass by a widened allowance
        tol = 1e-4 if real == torch.float64 else default_check_tol(
            real if torch.finfo(real).eps <= torch.finfo(torch.float32).eps else torch.float32)
    tol = float(tol)
    if rel <= tol and spread <= tol:
        verdict = "pass"
    elif rel > tol + 4.0 * spread:
        verdict = "fail"
    else:
        verdict = "inconclusive"
    result = HVPCheck(rel_error=rel, allowed=tol, spread=spread, step=h, ok=verdict == "pass",
                      dtype=str(real).replace("torch.", ""), verdict=verdict,
                      low_precision=tuple(low), native_dtype=str(dtype).replace("torch.", ""))
    if dtype == torch.float64:
        return result, v64.to(op.device), exact.detach()
    return result, None, None


def _batch_statistics_modules(model: nn.Module) -> list[str]:
    """Normalisation modules that use batch statistics in eval mode: ``"'name' (BatchNorm2d
    with track_running_stats=False)"``."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and (
                not m.track_running_stats or m.running_mean is None):
            out.append(f"{name or '(model)'!r} ({type(m).__name__} with "
                       "track_running_stats=False)")
    return out


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
        batch_stats = _batch_statistics_modules(model)
        if batch_stats:
            raise ValueError(
                f"the loss of a batch is not the mean of its samples' losses: on {n} samples "
                f"it gives {full_f:.6g}, the size-weighted mean of its two halves' losses "
                f"{split:.6g} (relative difference {rel:.2e}). The cause is batch statistics: "
                f"{', '.join(batch_stats[:4])} normalise with the statistics of each batch even "
                "in eval mode (no running statistics), so each sample's output depends on the "
                "whole batch and the Hessian on how the batch is split. Fix: build them with "
                "track_running_stats=True (and train so the running statistics exist), or "
                "use a per-sample normalisation (GroupNorm, LayerNorm)")
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
