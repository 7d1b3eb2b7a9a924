"""Robustness and 1-D loss landscapes for the precursor study.

* :func:`pgd`: the iterated attack. The first step is FGSM's full step ``eps * sign(grad)``;
  then ``steps - 1`` steps of ``step_size`` (default ``2.5 eps / steps``), each projected back
  onto ``{x' : ||x' - x||_inf <= eps}`` and the input range. Every sample keeps its *worst*
  iterate: the first one that is misclassified, else the one of highest loss. The FGSM point is
  an iterate, so PGD's error set contains FGSM's and its accuracy is never higher.
* :func:`attack_accuracy`: test accuracy under FGSM and PGD at a list of eps.
* :func:`loss_along`: the loss at ``theta + t d`` for a direction ``d`` and a grid of ``t``.
* :func:`interpolate`: the loss and accuracy at ``theta(lam) = lam theta_b + (1 - lam)
  theta_a`` (the paper's parametric plot, ``lam`` beyond ``[0, 1]``).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._adversarial import fgsm

__all__ = ["pgd", "attack_accuracy", "dataset_loss", "loss_along", "interpolate"]


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return float(eps)


def _per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    with torch.no_grad():
        out = model(x)
        return F.cross_entropy(out, y, reduction="none"), out.argmax(dim=1) != y


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None,
        clip: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy in the L-infinity ball (module docstring).

    Args:
        model: a classifier returning logits; eval mode during the attack, modes restored.
        x, y: inputs and int64 labels.
        eps: the ball's radius, >= 0.
        steps: iterations, >= 1 (1 is FGSM).
        step_size: the step after the first (default ``2.5 eps / steps``).
        clip: input range or None.

    Returns:
        The worst iterate of each sample, detached.

    Raises:
        TypeError, ValueError: bad eps, steps or step size.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.rand(5, 4), torch.randint(3, (5,))
        >>> xa = pgd(model, x, y, 0.1, steps=5)
        >>> bool(((xa - x).abs() <= 0.1 + 1e-6).all())
        True
    """
    eps = _check_eps(eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    alpha = 2.5 * eps / steps if step_size is None else _check_eps(step_size)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        x0 = x.detach()
        cur = fgsm(model, F.cross_entropy, x0, y, eps, clip=clip)
        best = cur.clone()
        best_loss, best_wrong = _per_sample(model, cur, y)
        for _ in range(steps - 1):
            xr = cur.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xr), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, xr)
            cur = cur + alpha * g.sign()
            cur = torch.max(torch.min(cur, x0 + eps), x0 - eps)
            if clip is not None:
                cur = cur.clamp(clip[0], clip[1])
            cur = cur.detach()
            loss_i, wrong_i = _per_sample(model, cur, y)
            # a misclassified iterate beats any correct one; among equals, the higher loss
            take = (wrong_i & ~best_wrong) | ((wrong_i == best_wrong) & (loss_i > best_loss))
            best[take] = cur[take]
            best_loss = torch.where(take, loss_i, best_loss)
            best_wrong = best_wrong | wrong_i
    finally:
        for m, flag in modes:
            m.training = flag
    return best.detach()


def attack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float],
                    *, pgd_steps: int = 10, batch: int = 500,
                    clip: tuple[float, float] | None = (0.0, 1.0)) -> dict[str, list[float]]:
    """Accuracy on ``(x, y)`` under FGSM and under PGD at each eps.

    Returns:
        ``{"eps": [...], "fgsm": [...], "pgd": [...]}`` (accuracies in [0, 1]).
    """
    eps_list = [_check_eps(e) for e in eps_list]
    out: dict[str, list[float]] = {"eps": eps_list, "fgsm": [], "pgd": []}
    n = x.shape[0]
    for eps in eps_list:
        right_f = right_p = 0
        for s in range(0, n, batch):
            xb, yb = x[s:s + batch], y[s:s + batch]
            xf = fgsm(model, F.cross_entropy, xb, yb, eps, clip=clip)
            xp = pgd(model, xb, yb, eps, steps=pgd_steps, clip=clip)
            right_f += int((~_per_sample(model, xf, yb)[1]).sum())
            right_p += int((~_per_sample(model, xp, yb)[1]).sum())
        out["fgsm"].append(right_f / n)
        out["pgd"].append(right_p / n)
    return out


def dataset_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch: int = 2000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``(x, y)``, eval mode, no gradients."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    loss, right = 0.0, 0
    try:
        for s in range(0, x.shape[0], batch):
            li, wrong = _per_sample(model, x[s:s + batch], y[s:s + batch])
            loss += float(li.sum())
            right += int((~wrong).sum())
    finally:
        for m, flag in modes:
            m.training = flag
    return loss / x.shape[0], right / x.shape[0]


def loss_along(model: nn.Module, direction: Sequence[torch.Tensor], ts: Sequence[float],
               x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Mean loss at ``theta + t d`` for each ``t`` (``d`` one tensor per parameter).

    The parameters are restored afterwards, also on error.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if len(direction) != len(params):
        raise ValueError(f"direction must hold one tensor per parameter ({len(params)}), got "
                         f"{len(direction)}")
    theta0 = [p.detach().clone() for p in params]
    out = []
    try:
        for t in ts:
            with torch.no_grad():
                for p, p0, d in zip(params, theta0, direction):
                    p.copy_(p0 + float(t) * d)
            out.append(dataset_loss(model, x, y)[0])
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, theta0):
                p.copy_(p0)
    return out


def interpolate(model: nn.Module, state_a: Mapping[str, torch.Tensor],
                state_b: Mapping[str, torch.Tensor], lambdas: Sequence[float],
                data: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
                ) -> dict[str, list[float]]:
    """Loss and accuracy along ``lam theta_b + (1 - lam) theta_a`` on each named data set.

    Floating-point buffers (BatchNorm statistics) are interpolated the same way; integer ones
    are taken from ``state_a``. ``model``'s own state is restored afterwards.

    Returns:
        ``{"lambda": [...], "<name>_loss": [...], "<name>_acc": [...]}``.

    Raises:
        ValueError: the two states do not have the same keys and shapes.
    """
    if set(state_a) != set(state_b) or any(state_a[k].shape != state_b[k].shape
                                           for k in state_a):
        raise ValueError("interpolate needs two states of the same architecture")
    # copies: a state may share storage with the model (model.state_dict() does)
    state_a = {k: v.detach().clone() for k, v in state_a.items()}
    state_b = {k: v.detach().clone() for k, v in state_b.items()}
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, list[float]] = {"lambda": [float(v) for v in lambdas]}
    try:
        for lam in lambdas:
            mixed = {}
            for k, a in state_a.items():
                b = state_b[k]
                if a.is_floating_point():
                    mixed[k] = (float(lam) * b.to(a.dtype) + (1 - float(lam)) * a)
                else:
                    mixed[k] = a
            model.load_state_dict({k: v.to(saved[k].dtype) for k, v in mixed.items()})
            for name, (x, y) in data.items():
                loss, acc = dataset_loss(model, x, y)
                out.setdefault(f"{name}_loss", []).append(loss)
                out.setdefault(f"{name}_acc", []).append(acc)
    finally:
        model.load_state_dict(saved)
    return out
