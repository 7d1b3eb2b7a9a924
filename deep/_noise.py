"""The core's optional noise-aware screen (:mod:`hessbatch._noise_rule`) as an eigenvalue function.

:class:`NoiseAwareEigenvalue` is an ``eigenvalue_fn`` for :class:`~hessbatch.deep.Trainer` or
:class:`~hessbatch.deep.LoopAdapter`. At each check it computes the top eigenvalue of the
Hessian batch (the value), a standard error from the eigenvalues of ``parts`` disjoint parts of
the same batch (``stdev(parts) / sqrt(parts)``: a part of ``n / k`` samples has about ``k``
times the variance of the whole), and the mean loss on the batch (eval mode), then asks
:func:`hessbatch._noise_rule.screen` what the scheduler should see:

* ``"report"``: the value (or, for an unconfirmed drop, its upper confidence limit);
* ``"skip"`` (progress guard closed): NaN, which the trainer turns into
  ``scheduler.skip_eigenvalue()`` (counted in ``eigenvalues_skipped``; never a growth).

The cost is about twice the plain check (the parts' solves on ``n / k`` samples each).
Beyond the paper and off unless used; :attr:`log` keeps every check.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
from torch import nn

from hessbatch import Scheduler
from hessbatch._noise_rule import NoiseRuleConfig, NoiseRuleState, mean_and_stderr, screen

from ._eigen import EigenResult, WarmStartEigenvalue, top_eigenvalue
from ._hvp import Batch, LossFn, eval_mode

__all__ = ["NoiseAwareEigenvalue"]


class NoiseAwareEigenvalue:
    """An eigenvalue function that screens each check with the core's noise-aware rule.

    Args:
        scheduler: the run's :class:`~hessbatch.Scheduler` (read: ``lam_ref``, ``alpha``, epoch).
        rule: a :class:`hessbatch._noise_rule.NoiseRuleConfig`.
        parts: disjoint parts of the Hessian batch for the standard error (>= 2; used only
            when ``rule.z`` is set).
        method, max_hvp, tol, hvp_check: as for :class:`WarmStartEigenvalue` (cold starts).

    Raises:
        TypeError, ValueError: bad arguments.
    """

    def __init__(self, scheduler: Scheduler, rule: NoiseRuleConfig, *, parts: int = 4,
                 method: str = "lanczos", max_hvp: int = 10, tol: float = 1e-2,
                 hvp_check: str = "error") -> None:
        if not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a hessbatch.Scheduler, got "
                            f"{type(scheduler).__name__}")
        if not isinstance(rule, NoiseRuleConfig):
            raise TypeError(f"rule must be a NoiseRuleConfig, got {type(rule).__name__}")
        if isinstance(parts, bool) or not isinstance(parts, int) or parts < 2:
            raise ValueError(f"parts must be an int >= 2, got {parts!r}")
        self.scheduler, self.rule, self.parts = scheduler, rule, parts
        self.inner = WarmStartEigenvalue(method=method, max_hvp=max_hvp, tol=tol,
                                         warm_start=False, hvp_check=hvp_check)
        self.method, self.max_hvp, self.tol = method, max_hvp, tol
        self.state = NoiseRuleState()
        self.log: list[dict] = []

    def __call__(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *,
                 seed: int, threshold: float | None = None) -> EigenResult:
        """One screened check. ``threshold`` (a loop's ``lam_ref / alpha``) is accepted and not
        used: the screen needs the value and its standard error, not a lower bound, so this
        function never stops early."""
        full = self.inner(model, loss_fn, batches, seed=seed)
        hvps, se = full.n_hvp, 0.0
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        if self.rule.z is not None and x.shape[0] >= 2 * self.parts:
            vals = []
            for i, (xp, yp) in enumerate(zip(x.chunk(self.parts), y.chunk(self.parts))):
                r = top_eigenvalue(model, loss_fn, [(xp, yp)], method=self.method,
                                   max_hvp=self.max_hvp, tol=self.tol, seed=seed + 1 + i)
                vals.append(r.value)
                hvps += r.n_hvp
            se = mean_and_stderr(vals)[1]
        with torch.no_grad(), eval_mode(model):
            loss = float(loss_fn(model(x), y))
        sch = self.scheduler
        if not math.isfinite(loss) and self.rule.min_loss_fraction is not None:
            action, value = "skip", None     # no progress to measure on a diverged loss
        else:
            self.state, action, value = screen(
                self.rule, self.state, mean=full.value, stderr=se, lam_ref=sch.state.lam_ref,
                alpha=sch.config.alpha, loss=loss, epoch=sch.state.epoch)
        self.log.append({"mean": full.value, "stderr": se, "loss": loss, "action": action,
                         "value": value, "lam_ref": sch.state.lam_ref, "hvps": hvps})
        out = math.nan if action == "skip" else float(value)
        return dataclasses.replace(full, value=out, n_hvp=hvps)
