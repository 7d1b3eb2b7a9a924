"""Input perturbations for ABSA: FGSM, and random signs of the same size as an ablation.

FGSM (Goodfellow et al. 2015), as ALGORITHM.md step 1 uses it::

    x_adv = clip(x + eps * sign(grad_x loss_fn(model(x), y)), lo, hi)

computed with the model in eval mode (BatchNorm uses, and does not update, its running
statistics), every module's mode restored after. Only the input is differentiated, so no
parameter's ``.grad`` is created or changed, and the result is detached.

The ablation asks whether the noise has to be adversarial: :func:`random_sign` moves every
input coordinate by the same ``eps`` (the same L-infinity and L2 size as FGSM) in a random
direction, ``x + eps * s`` with ``s`` uniform on ``{-1, +1}``, clipped the same way.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ._hvp import check_loss_fn, check_model, eval_mode

__all__ = ["fgsm", "random_sign"]


def _check_common(x: object, eps: object, clip: object) -> tuple[float, float] | None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (inputs scaled to the clip range), "
                        f"got dtype {x.dtype}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if clip is None:
        return None
    if not (isinstance(clip, (tuple, list)) and len(clip) == 2
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clip)):
        raise TypeError(f"clip must be None or a (low, high) pair of numbers, got {clip!r}")
    lo, hi = float(clip[0]), float(clip[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"clip must be a finite (low, high) pair with low < high, got {clip!r}")
    return lo, hi


def _clip(x: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    return x if bounds is None else x.clamp(bounds[0], bounds[1])


def fgsm(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
         x: torch.Tensor, y: torch.Tensor, eps: float,
         clip: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """The FGSM version of a batch: ``clip(x + eps * sign(grad_x loss_fn(model(x), y)))``.

    Args:
        model: any ``nn.Module``; eval mode during the computation, modes restored after.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        x: floating-point inputs, leading dimension = samples, on the model's device.
        y: targets with the same number of samples.
        eps: step size (L-infinity radius), finite and >= 0 (paper: 0.005 on [0, 1] inputs).
        clip: the input range ``(low, high)``, or ``None`` for no clipping.

    Returns:
        A detached tensor like ``x``. Coordinates where the gradient is exactly 0 are not moved.

    Raises:
        TypeError, ValueError: bad model, loss, x, y, eps or clip; a non-finite loss.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 2)
        >>> x, y = torch.rand(8, 4), torch.randint(2, (8,))
        >>> xa = fgsm(model, torch.nn.functional.cross_entropy, x, y, 0.01)
        >>> bool(((xa - x).abs() <= 0.01 + 1e-7).all()), xa.requires_grad
        (True, False)
    """
    check_model(model)
    check_loss_fn(loss_fn)
    bounds = _check_common(x, eps, clip)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a tensor, got {type(y).__name__}")
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must share the leading (sample) dimension, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        return x.detach().clone()
    xr = x.detach().clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        loss = loss_fn(model(xr), y)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a scalar tensor")
        if not torch.isfinite(loss.detach()):
            raise ValueError(f"the loss is {loss.item()}: FGSM needs a finite loss")
        # autograd.grad w.r.t. the input only: the parameters' .grad stay as they were.
        (g,) = torch.autograd.grad(loss, xr)
    return _clip(x.detach() + eps * g.sign(), bounds).detach()


def random_sign(x: torch.Tensor, eps: float, clip: tuple[float, float] | None = (0.0, 1.0),
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``clip(x + eps * s)`` with independent random signs ``s`` in {-1, +1}: FGSM's size, no aim.

    Args:
        x: floating-point inputs.
        eps: step size, finite and >= 0.
        clip: the input range ``(low, high)``, or ``None``.
        generator: a ``torch.Generator`` (on ``x``'s device, or on the CPU: the signs are then
            drawn there and moved) for reproducible noise; ``None`` uses torch's global RNG.

    Returns:
        A detached tensor like ``x``.

    Raises:
        TypeError, ValueError: bad x, eps, clip or generator.

    Example:
        >>> import torch
        >>> x = torch.full((2, 3), 0.5)
        >>> xr = random_sign(x, 0.1, generator=torch.Generator().manual_seed(0))
        >>> sorted(set(torch.round((xr - x).abs() * 10).flatten().tolist()))
        [1.0]
    """
    bounds = _check_common(x, eps, clip)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    dev = generator.device if generator is not None else x.device
    bits = torch.randint(0, 2, x.shape, generator=generator, device=dev)
    s = (2 * bits - 1).to(device=x.device, dtype=x.dtype)
    return _clip(x.detach() + eps * s, bounds).detach()
