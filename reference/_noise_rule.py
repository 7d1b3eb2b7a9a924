"""An optional growth rule that knows its noise (beyond the paper; off by default).

Algorithm 1 grows the batch when one eigenvalue estimate drops below ``lam_ref / alpha``. Two
Hessian batches of 128 can differ by a factor of 2 (= alpha), so a drop may be sampling noise;
and on an initial plateau the eigenvalue can fall while nothing is learnt. This module screens
each check *before* it reaches the scheduler, without changing the scheduler:

* **confidence drop test** (``z``): the backend reports the eigenvalue as a mean with a
  standard error (from k Hessian batches, or k disjoint parts of one:
  :func:`mean_and_stderr`). A drop counts only if the upper confidence limit
  ``UCL = mean + z * stderr`` is ``<= lam_ref / alpha``. An unconfirmed drop is reported to the
  scheduler as the value ``UCL`` (which is above ``lam_ref / alpha``), so the scheduler takes
  its "no drop" branch: patience counts as usual, ``lam_ref`` is unchanged. A confirmed drop is
  reported as ``mean`` and the scheduler grows and sets ``lam_ref = mean``, as in the paper.
* **progress guard** (``min_loss_fraction``, ``min_epochs``): until the training loss has
  fallen to ``min_loss_fraction`` of its first value *and* ``min_epochs`` epochs are done,
  checks are skipped (``Scheduler.skip_eigenvalue``: never a growth, patience not counted,
  no reference set). Once passed, the guard stays passed.

With the default :class:`NoiseRuleConfig` (everything off) :func:`screen` reports the mean
unchanged, so the paper's rule and its conformance traces are untouched (property-tested).
Standard library only.

Use, in a loop::

    st = NoiseRuleState()
    st, action, value = screen(cfg, st, mean=m, stderr=se, lam_ref=sch.state.lam_ref,
                               alpha=sch.config.alpha, loss=train_loss, epoch=epoch)
    d = sch.eigenvalue(value) if action == "report" else sch.skip_eigenvalue()
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["NoiseRuleConfig", "NoiseRuleState", "mean_and_stderr", "screen"]


@dataclass(frozen=True)
class NoiseRuleConfig:
    """Options of the noise-aware screen; the defaults switch everything off.

    Fields:
        z: one-sided normal quantile of the upper confidence limit (e.g. 1.645 for 95%);
            None: no confidence test.
        min_loss_fraction: progress guard: no check counts before the training loss is
            ``<=`` this fraction of its first value (in (0, 1]); None: no loss guard.
        min_epochs: progress guard: no check counts before this many epochs are done (>= 0).
    """

    z: float | None = None
    min_loss_fraction: float | None = None
    min_epochs: int = 0

    def __post_init__(self) -> None:
        if self.z is not None and (isinstance(self.z, bool) or not isinstance(self.z, (int, float))
                                   or not math.isfinite(self.z) or self.z < 0):
            raise ValueError(f"z must be None or a finite number >= 0, got {self.z!r}")
        f = self.min_loss_fraction
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float))
                              or not (0 < f <= 1)):
            raise ValueError(f"min_loss_fraction must be None or in (0, 1], got {f!r}")
        if isinstance(self.min_epochs, bool) or not isinstance(self.min_epochs, int) or \
                self.min_epochs < 0:
            raise ValueError(f"min_epochs must be an int >= 0, got {self.min_epochs!r}")

    @property
    def active(self) -> bool:
        """Whether any rule is on."""
        return self.z is not None or self.min_loss_fraction is not None or self.min_epochs > 0


@dataclass(frozen=True)
class NoiseRuleState:
    """What the screen remembers.

    Fields:
        first_loss: the first training loss seen (None before the first check).
        progressed: the progress guard has been passed (sticky).
    """

    first_loss: float | None = None
    progressed: bool = False


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error ``s / sqrt(k)`` of k >= 2 eigenvalue estimates (k = 1: stderr 0).

    Raises:
        ValueError: no values, or a non-finite one.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_and_stderr needs at least one value, got none")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"mean_and_stderr: non-finite value in {vals}")
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals) / math.sqrt(len(vals))


def screen(cfg: NoiseRuleConfig, st: NoiseRuleState, *, mean: float, stderr: float = 0.0,
           lam_ref: float | None, alpha: float, loss: float | None = None,
           epoch: int = 0) -> tuple[NoiseRuleState, str, float | None]:
    """Screen one due check: what to tell the scheduler.

    Args:
        cfg, st: the options and the state.
        mean, stderr: the eigenvalue estimate and its standard error (>= 0).
        lam_ref: the scheduler's reference (``scheduler.state.lam_ref``; None before the first).
        alpha: the scheduler's alpha.
        loss: the training loss now (needed when ``min_loss_fraction`` is set).
        epoch: epochs completed.

    Returns:
        ``(new_state, action, value)``: action ``"report"`` (call ``eigenvalue(value)``) or
        ``"skip"`` (call ``skip_eigenvalue()``; value None).

    Raises:
        ValueError: a negative or non-finite stderr, a missing loss for the loss guard.
    """
    if not (isinstance(stderr, (int, float)) and math.isfinite(stderr) and stderr >= 0):
        raise ValueError(f"stderr must be a finite number >= 0, got {stderr!r}")
    if cfg.min_loss_fraction is not None or cfg.min_epochs > 0:
        if not st.progressed:
            if cfg.min_loss_fraction is not None:
                if loss is None or not math.isfinite(loss):
                    raise ValueError(f"the progress guard needs the training loss, got {loss!r}")
                first = st.first_loss if st.first_loss is not None else float(loss)
                st = dataclasses.replace(st, first_loss=first)
                loss_ok = loss <= cfg.min_loss_fraction * first
            else:
                loss_ok = True
            if not (loss_ok and epoch >= cfg.min_epochs):
                return st, "skip", None
            st = dataclasses.replace(st, progressed=True)
    if cfg.z is None or lam_ref is None or not math.isfinite(mean):
        return st, "report", mean
    upper = mean + cfg.z * stderr
    threshold = lam_ref / alpha
    if mean <= threshold < upper:
        return st, "report", upper   # an unconfirmed drop: the scheduler sees "no drop"
    return st, "report", mean
