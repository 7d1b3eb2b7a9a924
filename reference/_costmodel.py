"""The paper's cluster cost model (Appendix C): wall-clock time of a schedule on P workers.

A data-parallel run on ``P`` processes spends, per parameter update on a logical batch of ``B``
samples of which ``a`` are adversarial,

    t_update + (B * t_sample + a * t_adv) / P          computation (the batch split evenly)
    + allreduce(P)                                      gradient all-reduce (ring)

and, per eigenvalue check made of ``k`` Hessian-vector products on a Hessian batch of ``H``,

    t_check + k * (H * t_hvp / P + allreduce(P))        each HVP is averaged over the ranks

with the ring all-reduce of ``|theta|`` values (Thakur, Rabenseifner and Gropp 2005; the
paper's Appendix C)

    allreduce(P) = 2 (P - 1) alpha + 2 (P - 1) / P * |theta| * beta,

``alpha`` the latency of one message (s) and ``beta`` the inverse bandwidth (s per parameter
value sent; 4 bytes / bandwidth for float32). ``allreduce(1) = 0``: one process communicates
nothing. The model is linear in the counts, so a schedule is summarised without loss by a
:class:`Workload` (updates, samples, adversarial samples, checks, HVPs), and the time of two
pieces of a run is the sum of their times (:meth:`Workload.__add__`).

The paper's Table 3 gives its inputs per update at its P (0.022 s compute, 0.015 s
communication, 1.15 s per eigenvalue): that is ``t_update = 0.022``, ``t_sample = 0`` and an
``alpha``/``beta`` whose all-reduce at ``P = 512`` is 0.015 s (see docs/simulate.md).

Assumptions, stated so that nobody reads more into a prediction than is there: perfect load
balance (``B / P`` samples per process even when ``P`` does not divide ``B``; with ``P > B``
the compute keeps shrinking although processes sit idle, and :func:`scaling_curve` flags it),
no overlap of communication with computation, one all-reduce per update (gradient
accumulation communicates once, on the last micro-batch) and per HVP.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ._scheduler import Scheduler, SchedulerConfig, _need_int, _need_real

__all__ = [
    "PROFILE_FORMAT",
    "CostBreakdown",
    "MachineProfile",
    "Workload",
    "allreduce_time",
    "predict",
    "scaling_curve",
    "workload_from_batches",
    "workload_from_schedule",
]

PROFILE_FORMAT = "hessbatch.profile"


def allreduce_time(processes: int, n_params: int, alpha: float, beta: float) -> float:
    """Time of one ring all-reduce of ``n_params`` values over ``processes`` processes.

    ``2 (P - 1) alpha + 2 (P - 1) / P * n_params * beta``: a reduce-scatter and an all-gather,
    each ``P - 1`` messages of ``n_params / P`` values.

    Args:
        processes: P >= 1.
        n_params: |theta| >= 0, values reduced.
        alpha: latency per message, seconds, >= 0.
        beta: inverse bandwidth, seconds per value, >= 0.

    Returns:
        Seconds; exactly 0.0 for ``P = 1``.

    Raises:
        TypeError, ValueError: an argument of the wrong type or out of range, named.
    """
    _need_int("processes", processes, 1)
    _need_int("n_params", n_params, 0)
    _need_real("alpha", alpha, "finite and >= 0", lambda v: v >= 0)
    _need_real("beta", beta, "finite and >= 0", lambda v: v >= 0)
    if processes == 1:
        return 0.0
    p = processes
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n_params * beta


_PROFILE_DOC = {
    "processes": "P, data-parallel processes",
    "n_params": "|theta|, parameters all-reduced per update and per HVP",
    "alpha": "latency of one message, s",
    "beta": "inverse bandwidth, s per parameter value (4 bytes / bandwidth for float32)",
    "time_per_update": "fixed compute per update (optimizer step, overheads), s",
    "time_per_sample": "forward + backward of one sample on one process, s",
    "time_per_adversarial_sample": "extra time to make one adversarial (FGSM) sample, s",
    "time_per_hvp_sample": "one Hessian-vector product on one sample on one process, s",
    "time_per_check": "fixed time per eigenvalue check (solver, batch fetch), s",
    "hessian_batch": "H, samples of the Hessian batch of each check",
    "hvps_per_check": "HVPs per check when the workload does not count them",
}


@dataclass(frozen=True)
class MachineProfile:
    """The machine and model constants of the cost model (module docstring), validated.

    Args:
        processes: P >= 1.
        n_params: |theta| >= 0.
        alpha, beta: all-reduce latency (s) and inverse bandwidth (s per value), >= 0.
        time_per_update: t_update, seconds of fixed compute per update.
        time_per_sample: t_sample, forward+backward seconds per sample on one process.
        time_per_adversarial_sample: t_adv, seconds to make one adversarial sample.
        time_per_hvp_sample: t_hvp, seconds of one HVP per sample on one process.
        time_per_check: t_check, fixed seconds per eigenvalue check.
        hessian_batch: H >= 1.
        hvps_per_check: HVPs per check where a workload does not record them (>= 0).

    Raises:
        TypeError, ValueError: a field of the wrong type or out of range, named, with its value.
    """

    processes: int = 1
    n_params: int = 0
    alpha: float = 0.0
    beta: float = 0.0
    time_per_update: float = 0.0
    time_per_sample: float = 0.0
    time_per_adversarial_sample: float = 0.0
    time_per_hvp_sample: float = 0.0
    time_per_check: float = 0.0
    hessian_batch: int = 128
    hvps_per_check: int = 10

    def __post_init__(self) -> None:
        _need_int("processes", self.processes, 1)
        _need_int("n_params", self.n_params, 0)
        _need_int("hessian_batch", self.hessian_batch, 1)
        _need_int("hvps_per_check", self.hvps_per_check, 0)
        for name in ("alpha", "beta", "time_per_update", "time_per_sample",
                     "time_per_adversarial_sample", "time_per_hvp_sample", "time_per_check"):
            _need_real(name, getattr(self, name), "finite and >= 0", lambda v: v >= 0)

    def replace(self, **changes: Any) -> "MachineProfile":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def allreduce(self) -> float:
        """Seconds of one all-reduce of ``n_params`` values at this profile's P."""
        return allreduce_time(self.processes, self.n_params, self.alpha, self.beta)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, with the format tag and a description of each field."""
        return {"format": PROFILE_FORMAT, **dataclasses.asdict(self), "fields": _PROFILE_DOC}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MachineProfile":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass).

        Raises:
            ValueError: not a mapping, a wrong format tag, or an unknown key (named, with the
                allowed ones).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a profile must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", PROFILE_FORMAT)
        data.pop("fields", None)
        data.pop("notes", None)
        if fmt != PROFILE_FORMAT:
            raise ValueError(f"profile format must be {PROFILE_FORMAT!r}, got {fmt!r}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown profile keys {unknown}; allowed: {sorted(allowed)} "
                             "(and 'format', 'fields', 'notes')")
        for key in ("processes", "n_params", "hessian_batch", "hvps_per_check"):
            # JSON has one number type: accept 512.0 for an int field, refuse 512.5
            v = data.get(key)
            if isinstance(v, float) and v.is_integer():
                data[key] = int(v)
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "MachineProfile":
        """Read a profile JSON file (as written by ``hessbatch simulate --calibrate``).

        Raises:
            ValueError: unreadable JSON or a bad field, with the file named.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, Mapping) and "profile" in data and "format" not in data:
            data = data["profile"]  # the whole --calibrate report
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Workload:
    """What a run (or part of one) does, summed: all the cost model needs.

    Args:
        updates: parameter updates.
        samples: training samples in those updates (the sum of their batch sizes).
        adversarial_samples: samples replaced by adversarial ones.
        checks: eigenvalue checks.
        hvps: Hessian-vector products of those checks; ``None``: not recorded, and
            ``profile.hvps_per_check`` per check is assumed.

    Raises:
        TypeError, ValueError: a negative count, or more adversarial samples than samples.
    """

    updates: int = 0
    samples: int = 0
    adversarial_samples: int = 0
    checks: int = 0
    hvps: int | None = None

    def __post_init__(self) -> None:
        for name in ("updates", "samples", "adversarial_samples", "checks"):
            _need_int(name, getattr(self, name), 0)
        if self.hvps is not None:
            _need_int("hvps", self.hvps, 0)
        if self.adversarial_samples > self.samples:
            raise ValueError(f"adversarial_samples ({self.adversarial_samples}) cannot exceed "
                             f"samples ({self.samples})")
        if self.samples and not self.updates:
            raise ValueError(f"samples = {self.samples} with updates = 0: samples are only "
                             "trained on in updates")

    def __add__(self, other: "Workload") -> "Workload":
        if not isinstance(other, Workload):
            return NotImplemented
        # HVPs: recorded counts add; "not recorded" (None, with checks) stays None, and mixing
        # the two would apply profile.hvps_per_check to checks whose count is known
        ka = None if (self.hvps is None and self.checks) else (self.hvps or 0)
        kb = None if (other.hvps is None and other.checks) else (other.hvps or 0)
        if (ka is None and kb) or (kb is None and ka):
            raise ValueError("cannot add a workload whose HVPs are recorded to one whose "
                             "HVPs are not (hvps=None); record both or neither")
        hvps = None if ka is None or kb is None else ka + kb
        return Workload(self.updates + other.updates, self.samples + other.samples,
                        self.adversarial_samples + other.adversarial_samples,
                        self.checks + other.checks, hvps)

    def hvps_for(self, profile: MachineProfile) -> int:
        """HVPs of the checks: the recorded count, or ``checks * profile.hvps_per_check``."""
        return self.checks * profile.hvps_per_check if self.hvps is None else self.hvps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CostBreakdown:
    """Predicted seconds of a workload on a profile, by part.

    Fields:
        compute: ``U t_update + S t_sample / P``.
        adversarial: ``A t_adv / P``.
        communication: ``U allreduce(P)`` (the gradients).
        eigenvalue: ``C t_check + K (H t_hvp / P + allreduce(P))``.
        eigenvalue_communication: the all-reduce part of ``eigenvalue`` (``K allreduce(P)``).
        processes: the P used.
    """

    compute: float
    adversarial: float
    communication: float
    eigenvalue: float
    eigenvalue_communication: float
    processes: int

    @property
    def total(self) -> float:
        """Sum of the parts (``eigenvalue_communication`` is inside ``eigenvalue``)."""
        return self.compute + self.adversarial + self.communication + self.eigenvalue

    @property
    def communication_share(self) -> float:
        """Share of the total spent communicating (gradients and HVPs); 0 for a zero total."""
        total = self.total
        comm = self.communication + self.eigenvalue_communication
        return comm / total if total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), total=self.total,
                    communication_share=self.communication_share)


def predict(workload: Workload, profile: MachineProfile) -> CostBreakdown:
    """The cost model (module docstring) of ``workload`` on ``profile``.

    Args:
        workload: counts of the run (:class:`Workload`).
        profile: machine constants (:class:`MachineProfile`).

    Returns:
        :class:`CostBreakdown`; ``.total`` is the predicted wall-clock seconds.

    Raises:
        TypeError: an argument of the wrong type.
    """
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be a Workload, got {type(workload).__name__}")
    if not isinstance(profile, MachineProfile):
        raise TypeError(f"profile must be a MachineProfile, got {type(profile).__name__}")
    p = profile.processes
    ar = profile.allreduce
    k = workload.hvps_for(profile)
    compute = (workload.updates * profile.time_per_update
               + workload.samples * profile.time_per_sample / p)
    adversarial = workload.adversarial_samples * profile.time_per_adversarial_sample / p
    communication = workload.updates * ar
    eig_comm = k * ar
    eigenvalue = (workload.checks * profile.time_per_check
                  + k * profile.hessian_batch * profile.time_per_hvp_sample / p + eig_comm)
    return CostBreakdown(compute, adversarial, communication, eigenvalue, eig_comm, p)


def scaling_curve(workload: Workload, profile: MachineProfile,
                  processes: Iterable[int], *, smallest_batch: int | None = None
                  ) -> list[dict[str, Any]]:
    """Strong scaling: the same workload at each P (everything else in ``profile`` fixed).

    Args:
        workload, profile: as :func:`predict`; ``profile.processes`` is replaced.
        processes: the P values, each >= 1.
        smallest_batch: the smallest batch of the run; rows with P larger than it get
            ``"idle_processes": True`` (the model then assumes work that cannot be split).

    Returns:
        One dict per P: ``processes``, the breakdown's fields, ``total``, ``speedup`` (over
        the first P given), ``communication_share``, ``idle_processes``.

    Raises:
        ValueError: an empty list of P or a P < 1.
    """
    ps = list(processes)
    if not ps:
        raise ValueError("processes must list at least one P, got an empty list")
    rows = []
    base = None
    for p in ps:
        cost = predict(workload, profile.replace(processes=p))
        base = cost.total if base is None else base
        rows.append(dict(cost.to_dict(),
                         speedup=base / cost.total if cost.total > 0 else math.nan,
                         idle_processes=smallest_batch is not None and p > smallest_batch))
    return rows


def workload_from_batches(batch_sizes: Sequence[int], *,
                          adversarial: Sequence[int] | None = None, checks: int = 0,
                          hvps: int | None = None) -> Workload:
    """A :class:`Workload` from the batch size of every update.

    Args:
        batch_sizes: samples of each update, each >= 1.
        adversarial: adversarial samples of each update (same length), default none.
        checks, hvps: eigenvalue checks and their HVPs (``None``: not recorded).

    Raises:
        ValueError: a batch < 1, or ``adversarial`` of another length or above its batch.
    """
    batch_sizes = list(batch_sizes)
    adv = [0] * len(batch_sizes) if adversarial is None else list(adversarial)
    if len(adv) != len(batch_sizes):
        raise ValueError(f"adversarial has {len(adv)} entries for {len(batch_sizes)} updates")
    for i, (b, a) in enumerate(zip(batch_sizes, adv)):
        _need_int(f"batch_sizes[{i}]", b, 1)
        _need_int(f"adversarial[{i}]", a, 0)
        if a > b:
            raise ValueError(f"adversarial[{i}] = {a} exceeds batch_sizes[{i}] = {b}")
    return Workload(len(batch_sizes), sum(batch_sizes), sum(adv), checks, hvps)


def workload_from_schedule(config: SchedulerConfig, eigenvalues: Iterable[float], *,
                           last_batch: str = "step", by_epoch: bool = False
                           ) -> Workload | list[Workload]:
    """Replay ``config`` through the core's :class:`Scheduler` and count what it does.

    Training is simulated as ``config.epochs`` epochs of ``config.samples_per_epoch`` samples
    in batches of the decided size, as ``hessbatch schedule`` and ``hessbatch train`` do; each
    due eigenvalue is the next value of ``eigenvalues`` (when they run out, the last one is
    repeated, which is a plateau: only the patience rule can grow the batch then).

    Args:
        config: the schedule.
        eigenvalues: the trace (may be empty for methods that never ask).
        last_batch: ``"step"``: a short last batch of an epoch is an update of its own
            (``ceil(N / B)`` updates per epoch at a fixed B, the trainer's default);
            ``"drop"``: it is dropped (``floor(N / B)``), as ``--last-batch drop``.
        by_epoch: return one :class:`Workload` per epoch instead of their sum.

    Returns:
        The summed :class:`Workload` (``hvps`` left ``None``), or a list per epoch.

    Raises:
        ValueError: a bad ``last_batch``, or an eigenvalue the core refuses (named).
    """
    if last_batch not in ("step", "drop"):
        raise ValueError(f"last_batch must be 'step' or 'drop', got {last_batch!r}")
    sch = Scheduler(config)
    trace = list(eigenvalues)
    pos = 0
    epochs = []
    n_total = config.samples_per_epoch
    for _ in range(config.epochs):
        seen = updates = adv = checks = 0
        while seen < n_total:
            d = sch.decision
            n = min(d.batch_size, n_total - seen)
            if n < d.batch_size and last_batch == "drop" and updates:
                break
            adv += d.adversarial_count(n)
            d = sch.step(n)
            seen += n
            updates += 1
            if d.eigenvalue_due:
                if not trace:
                    raise ValueError(f"method {config.method!r} asked for an eigenvalue "
                                     "but the trace is empty; give at least one value")
                lam = trace[min(pos, len(trace) - 1)]
                pos += 1
                sch.eigenvalue(lam)
                checks += 1
        sch.end_epoch()
        epochs.append(Workload(updates, seen, adv, checks))
    if by_epoch:
        return epochs
    total = Workload()
    for w in epochs:
        total = total + w
    return total
