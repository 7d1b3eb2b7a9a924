"""hessbatch: large-batch SGD that trains like small-batch SGD, by growing the batch when the
loss landscape gets flat (ABS/ABSA of Yao, Gholami, Keutzer and Mahoney, arXiv 1810.01021).

This package is the backend-agnostic core and needs only the standard library:

* :class:`Scheduler` / :class:`SchedulerConfig`: Algorithm 1 and the baselines (BL, FB, GG) as
  one state machine: events in (steps, eigenvalues, epoch ends), decisions out (batch size,
  accumulation, learning rate, adversarial fraction, when an eigenvalue is due). The pure
  functions ``init``/``on_step``/``on_eigenvalue``/``on_epoch_end``/``decide`` are the same
  machine without the object.
* :mod:`hessbatch.theory`: Theorem 1's step-size condition, noise floor and bound.
* :mod:`hessbatch.traces`: replay of the conformance traces that ports check against.
* :func:`predict` / :class:`MachineProfile` / :class:`Workload`: the paper's Appendix C cost
  model, the wall-clock time of a schedule on P data-parallel workers (``hessbatch simulate``).

The backends execute the decisions: ``hessbatch.convex`` (NumPy/Numba, logistic regression)
and ``hessbatch.deep`` (PyTorch). See docs/algorithm.md for the line-by-line map from
Algorithm 1 to the code.
"""

from ._costmodel import (
    CostBreakdown,
    MachineProfile,
    Workload,
    allreduce_time,
    predict,
    scaling_curve,
    workload_from_schedule,
)
from ._scheduler import (
    METHODS,
    STATE_FORMAT,
    STATE_VERSION,
    Decision,
    Scheduler,
    SchedulerConfig,
    SchedulerError,
    SchedulerState,
    decide,
    init,
    on_eigenvalue,
    on_epoch_end,
    on_skip_eigenvalue,
    on_step,
)

__version__ = "0.1.0"

__all__ = [
    "CostBreakdown",
    "MachineProfile",
    "Workload",
    "allreduce_time",
    "predict",
    "scaling_curve",
    "workload_from_schedule",
    "METHODS",
    "STATE_FORMAT",
    "STATE_VERSION",
    "Decision",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerError",
    "SchedulerState",
    "decide",
    "init",
    "on_eigenvalue",
    "on_epoch_end",
    "on_skip_eigenvalue",
    "on_step",
    "__version__",
]
