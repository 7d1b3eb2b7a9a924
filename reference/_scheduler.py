"""Algorithm 1 of Yao, Gholami, Keutzer and Mahoney (ABS/ABSA) as an explicit state machine.

The scheduler never touches a model. A training loop *reports events* and *reads decisions*:

* events in: ``step(n)`` (one parameter update was made on ``n`` samples), ``eigenvalue(lam)``
  (the top Hessian eigenvalue the scheduler asked for, or with ``lower_bound=True`` a lower
  bound on it), ``skip_eigenvalue()`` and ``end_epoch()``;
* decisions out (:class:`Decision`): logical batch size ``B``, micro-batch and accumulation
  steps, learning rate, adversarial sample count and step, whether an eigenvalue is due and
  the threshold ``lam_ref / alpha`` that decides it.

The same protocol drives the paper's five methods, so every comparison runs through one loop:

``bl``   fixed batch ``B0`` and lr ``eta``, decayed by ``rho`` at the epochs in ``A``.
``fb``   fixed batch ``B_max`` with ``lr = eta * B_max / B0``, reached by a linear warm-up from
         ``eta`` over ``warmup_epochs`` epochs (Goyal et al.; warm-up length **rebuilt**).
``gg``   at each epoch in ``A`` the batch is multiplied by ``1/rho`` instead of the lr by ``rho``
         (Smith et al.); once ``B_max`` caps the growth, the lr takes the part of the decay that
         the batch could not: ``lr = ((lr * rho) * B_new) / B`` (**rebuilt**), so the noise scale
         ``lr / B`` always drops by exactly ``rho``.
``abs``  Algorithm 1 without the adversary.
``absa`` Algorithm 1 with FGSM on a fraction ``gamma`` of each batch.

Algorithm 1 (ALGORITHM.md section 2), with the names used in the code::

    state: B = B0, lr = eta, lam_ref = None, d = 0, s = 0, gamma = gamma0 (absa) or 0
    each step:   adversarial samples (absa), adv_rule "blocks" (default, the authors' code):
                   the batch is cut into blocks of B0 from its start; while gamma * B0 > 1,
                   the first c = max(1, floor(gamma * B0)) samples of each block (all of a
                   shorter last block if it holds fewer); none once gamma * B0 <= 1
                 adv_rule "batch": the first max(1, floor(gamma * B)) if gamma * B >= 1
                 one update on B samples; s += B
                 if s crossed a multiple of n and B < B_max: an eigenvalue is due
    eigenvalue:  lam_ref is None        -> lam_ref = lam, d = 1                 (rebuilt)
                 lam <= lam_ref / alpha -> grow; lam_ref = lam; d = 0
                 otherwise              -> d += 1; if d >= kappa: grow; d = 0
                 (a lower bound lam > lam_ref / alpha takes the last branch; one at or below
                 it, or with no lam_ref, is refused as undecided: the check stays due)
    grow:        B_new = min(round_up(beta * B), B_max); lr = (lr * B_new) / B; gamma /= omega
                 if B_new == B_max: gamma = 0 and no eigenvalue is asked for again
    epoch end:   if epoch in A: lr *= rho;  if epoch >= tau * epochs: gamma = 0

Invariants (checked by :meth:`Scheduler.check_invariants` and by the property tests):

* ``B`` never shrinks, stays in ``[B0, B_max]`` (``B = B_max`` for ``fb``) and is a multiple
  of the micro-batch;
* a growth leaves ``lr / B`` unchanged (the noise scale of SGD);
* ``gamma`` never increases, and is 0 after ``tau * epochs`` epochs and at ``B_max``;
* no eigenvalue is asked for at ``B_max``, by a method that does not use one, or before
  ``check_every`` samples; the patience count stays below kappa (1 right after the first
  eigenvalue when kappa = 1) and is 0 before the first eigenvalue (the complete list, as
  :meth:`Scheduler.load_state_dict` checks it, is in docs/porting.md section 7);
* every lr the run can reach is a finite, normal double (the config checks
  ``((eta * B_max) / B0) * B_max <= DBL_MAX / 8`` for a method that grows the batch,
  ``eta * B_max`` finite for fb, and ``eta * rho * rho ... >= DBL_MIN``),
  and every integer stays in [0, 2**53];
* a negative, NaN or infinite eigenvalue is refused with ``ValueError`` and changes nothing:
  the check stays due, so the loop can recompute it on another batch or call
  ``skip_eigenvalue()``, which clears the check without counting it towards the patience, so a
  bad eigenvalue can never grow the batch.

Rounding, fixed here so that a port reproduces the decisions bit for bit:
``round_up(x) = m * ceil(x / m - 1e-9)`` with ``m`` the micro-batch size, and the adversarial
counts use ``floor(gamma * B0 + 1e-9)`` (blocks) or ``floor(gamma * B + 1e-9)`` (batch); the
tolerances absorb binary floating point error (``0.29 * 100`` is ``28.999999999999996``).
Errors: events out of order raise :class:`SchedulerError`; a bad config, state dict or event
argument raises ``ValueError`` or ``TypeError`` whose ``field`` attribute names the field at
fault, one exact name (docs/porting.md section 4 has the vocabulary).
docs/algorithm.md maps each line above to the code;
docs/porting.md describes the protocol and the conformance traces.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "ADV_RULES",
    "METHODS",
    "STATE_FORMAT",
    "STATE_VERSION",
    "Decision",
    "SchedulerConfig",
    "SchedulerError",
    "SchedulerState",
    "Scheduler",
    "init",
    "on_step",
    "on_eigenvalue",
    "on_skip_eigenvalue",
    "on_epoch_end",
    "decide",
]

METHODS = ("bl", "fb", "gg", "abs", "absa")
ADV_RULES = ("blocks", "batch")
STATE_FORMAT = "hessbatch.scheduler"
STATE_VERSION = 3
# What an older version leaves out, as (config defaults, state defaults): version 1 predates
# adv_rule (its schedulers ran the "batch" rule, so that is what it loads as); versions 1 and
# 2 predate lower bounds, so their last eigenvalue is a value.
_STATE_VERSIONS: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {
    1: ({"adv_rule": "batch"}, {"last_eigenvalue_bound": False}),
    2: ({}, {"last_eigenvalue_bound": False}),
    3: ({}, {})}
_ROUND_TOL = 1e-9
# Integers (batch sizes, counts, samples) stay in [0, 2**53]: every double, and so every JSON
# reader (JavaScript's included), holds them exactly (docs/porting.md, "Numerics").
MAX_INT = 2 ** 53
# The largest value of ((eta * B_max) / B0) * B_max a config of a growing method may have:
# every product lr * B' that a growth computes stays below it times e**2 (the rounding drift
# of at most 2**53 growths), so 8 = 2**3 leaves every lr the run can reach finite
# (docs/porting.md section 1).
LR_CEILING = sys.float_info.max / 8


class SchedulerError(RuntimeError):
    """An event arrived that the protocol does not allow now (events out of order)."""

    field = None  # protocol errors name no field (see docs/porting.md, section 4)


def _err(cls: type[Exception], field: str, message: str) -> Exception:
    """A ``cls`` (ValueError or TypeError) whose ``field`` attribute names the field at fault.

    ``field`` is the error contract of docs/porting.md section 4: one exact name from a fixed
    vocabulary (a config field, a state field, ``samples``, ``eigenvalue``, ``config``,
    ``state``, ``state_dict``, ``format``, ``version``), which the traces compare exactly.
    """
    exc = cls(message)
    exc.field = field  # type: ignore[attr-defined]
    return exc


# --------------------------------------------------------------------------------------------
# validation helpers: each names the parameter, the value received and what is allowed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _need_int(name: str, value: Any, low: int) -> None:
    if not _is_int(value):
        raise _err(TypeError, name,
                   f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise _err(ValueError, name, f"{name} must be >= {low}, got {value}")
    if value > MAX_INT:
        raise _err(ValueError, name,
                   f"{name} must be <= 2**53 = {MAX_INT} (the integer range every JSON reader "
                   f"and every double holds exactly), got {value}")


def _need_real(name: str, value: Any, allowed: str, ok) -> None:
    if not _is_real(value):
        raise _err(TypeError, name, f"{name} must be a real number, got {value!r} "
                   f"({type(value).__name__})")
    if isinstance(value, int) and abs(value) > sys.float_info.max:
        raise _err(ValueError, name,
                   f"{name} must be {allowed}, got {value!r} (too large for a double)")
    if not math.isfinite(value) or not ok(value):
        raise _err(ValueError, name, f"{name} must be {allowed}, got {value!r}")


def _grows(cfg: "SchedulerConfig") -> bool:
    # the methods that compute (lr * B') / B: abs and absa below B_max, gg at a decay epoch
    if cfg.method == "gg":
        return bool(cfg.lr_decay_epochs)
    return cfg.uses_eigenvalues and cfg.batch_size < cfg.max_batch_size


def _reachable_lr(cfg: "SchedulerConfig") -> tuple[float, float, float]:
    """(the largest product the run computes, its limit, the lowest lr it reaches), in the
    spec's order of operations: a growing method's products lr * B' are bounded by
    ((eta * B_max) / B0) * B_max, limit DBL_MAX / 8; fb computes eta * B_max, limit DBL_MAX;
    bl and the methods that never grow compute none (0.0). The lowest lr is eta * rho *
    rho ... (once per epoch in A, left to right)."""
    if _grows(cfg):
        highest = ((cfg.lr * cfg.max_batch_size) / cfg.batch_size) * cfg.max_batch_size
        limit = LR_CEILING
    elif cfg.method == "fb":
        highest, limit = cfg.lr * cfg.max_batch_size, sys.float_info.max
    else:
        highest, limit = 0.0, sys.float_info.max
    lowest = cfg.lr
    for _ in cfg.lr_decay_epochs:
        lowest = lowest * cfg.lr_decay_factor
    return highest, limit, lowest


def _round_up(x: float, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= x, up to floating point error."""
    return multiple * math.ceil(x / multiple - _ROUND_TOL)


# --------------------------------------------------------------------------------------------
# configuration

_REAL_FIELDS = ("lr", "lr_decay_factor", "alpha", "beta", "adv_eps", "adv_fraction",
                "adv_decay", "adv_stop", "warmup_epochs")


@dataclass(frozen=True)
class SchedulerConfig:
    """Hyper-parameters of Algorithm 1 and of the baselines, validated on construction.

    Args:
        method: ``"bl"``, ``"fb"``, ``"gg"``, ``"abs"`` or ``"absa"``.
        lr: eta, the base learning rate, used at batch size ``batch_size``.
        batch_size: B0, the initial logical batch (``bl``: the fixed batch; ``fb``: the
            reference batch of the linear scaling rule).
        samples_per_epoch: N, training samples in one epoch (sets the default check period and
            the FB warm-up length).
        epochs: total epochs (sets tau's epoch; no event is accepted after the last epoch end).
        max_batch_size: B_max, the largest logical batch (default ``batch_size``). Must be a
            multiple of the micro-batch.
        micro_batch_size: b_micro, what one forward/backward pass holds; B is built from
            ``B / b_micro`` accumulated micro-batches (default ``batch_size``; must divide
            ``batch_size`` and ``max_batch_size``).
        lr_decay_epochs: A, epochs (1-based, strictly increasing, <= epochs) at whose end the lr
            is multiplied by ``lr_decay_factor`` (``gg``: the batch divided by it).
        lr_decay_factor: rho in (0, 1].
        alpha: eigenvalue drop ratio that triggers a growth, > 1.
        beta: batch growth factor, > 1.
        check_every: n, the eigenvalue check period in samples (default one epoch).
        patience: kappa, grow after this many checks without a drop, >= 1.
        adv_eps: FGSM step on inputs scaled to [0, 1], >= 0.
        adv_fraction: gamma0 in [0, 1), the fraction of each batch replaced by FGSM (``absa``).
        adv_decay: omega >= 1, gamma is divided by it at every growth.
        adv_stop: tau in [0, 1], adversarial training stops after ``tau * epochs`` epochs.
        warmup_epochs: FB warm-up length in epochs, >= 0.
        adv_rule: how many adversarial samples, and where (``absa``). ``"blocks"`` (default,
            the authors' code): the logical batch is cut into blocks of ``batch_size`` (B0)
            samples from its start, and while ``gamma * B0 > 1`` the first
            ``max(1, floor(gamma * B0))`` samples of every block are adversarial (all of a
            shorter last block if it has fewer), none once ``gamma * B0 <= 1``. ``"batch"``:
            the first ``max(1, floor(gamma * B))`` samples of the logical batch while
            ``gamma * B >= 1`` (never vanishes before B_max when omega = beta).

    Raises:
        TypeError, ValueError: naming the field, the value received and the allowed range.

    Example:
        >>> cfg = SchedulerConfig(method="abs", lr=0.1, batch_size=128, max_batch_size=1024,
        ...                       samples_per_epoch=50_000, epochs=90)
        >>> cfg.check_every
        50000
    """

    method: str
    lr: float
    batch_size: int
    samples_per_epoch: int
    epochs: int
    max_batch_size: int | None = None
    micro_batch_size: int | None = None
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_factor: float = 0.1
    alpha: float = 2.0
    beta: float = 2.0
    check_every: int | None = None
    patience: int = 10
    adv_eps: float = 0.005
    adv_fraction: float = 0.2
    adv_decay: float = 2.0
    adv_stop: float = 0.5
    warmup_epochs: float = 5.0
    adv_rule: str = "blocks"

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise _err(TypeError, "method",
                       f"method must be a string, one of {', '.join(METHODS)}, got "
                            f"{self.method!r} ({type(self.method).__name__})")
        if self.method.lower() not in METHODS:
            raise _err(ValueError, "method",
                       f"method must be one of {', '.join(METHODS)} (any case), got "
                             f"{self.method!r}")
        object.__setattr__(self, "method", self.method.lower())
        _need_real("lr", self.lr, "finite and > 0", lambda v: v > 0)
        _need_int("batch_size", self.batch_size, 1)
        _need_int("samples_per_epoch", self.samples_per_epoch, 1)
        _need_int("epochs", self.epochs, 1)
        if self.max_batch_size is None:
            object.__setattr__(self, "max_batch_size", self.batch_size)
        _need_int("max_batch_size", self.max_batch_size, 1)
        if self.max_batch_size < self.batch_size:
            raise _err(
                ValueError, "max_batch_size",
                f"max_batch_size (B_max) must be >= batch_size (B0) = {self.batch_size}, "
                f"got {self.max_batch_size}")
        if self.micro_batch_size is None:
            object.__setattr__(self, "micro_batch_size", self.batch_size)
        _need_int("micro_batch_size", self.micro_batch_size, 1)
        for name in ("batch_size", "max_batch_size"):
            value = getattr(self, name)
            if value % self.micro_batch_size:
                raise _err(
                    ValueError, "micro_batch_size",
                    f"micro_batch_size must divide {name} = {value}, got {self.micro_batch_size}"
                    f" (choose a divisor, e.g. {math.gcd(self.batch_size, self.max_batch_size)})")
        decay = self.lr_decay_epochs
        if isinstance(decay, (str, bytes)) or not hasattr(decay, "__iter__"):
            raise _err(TypeError, "lr_decay_epochs",
                       f"lr_decay_epochs must be a sequence of ints, got {decay!r}")
        decay = tuple(decay)
        for e in decay:
            if not _is_int(e):
                raise _err(TypeError, "lr_decay_epochs",
                           f"lr_decay_epochs must hold ints, got {e!r} in {decay!r}")
        if any(not 1 <= e <= self.epochs for e in decay) or list(decay) != sorted(set(decay)):
            raise _err(
                ValueError, "lr_decay_epochs",
                f"lr_decay_epochs must be strictly increasing epochs in [1, epochs={self.epochs}],"
                f" got {decay!r} (an empty tuple means no decay)")
        object.__setattr__(self, "lr_decay_epochs", decay)
        _need_real("lr_decay_factor", self.lr_decay_factor, "in (0, 1]", lambda v: 0 < v <= 1)
        _need_real("alpha", self.alpha, "> 1 (the eigenvalue must drop to trigger a growth)",
                   lambda v: v > 1)
        _need_real("beta", self.beta, "> 1 (the batch must grow)", lambda v: v > 1)
        if self.check_every is None:
            object.__setattr__(self, "check_every", self.samples_per_epoch)
        _need_int("check_every", self.check_every, 1)
        _need_int("patience", self.patience, 1)
        _need_real("adv_eps", self.adv_eps, "finite and >= 0", lambda v: v >= 0)
        _need_real("adv_fraction", self.adv_fraction, "in [0, 1)", lambda v: 0 <= v < 1)
        _need_real("adv_decay", self.adv_decay, ">= 1", lambda v: v >= 1)
        _need_real("adv_stop", self.adv_stop, "in [0, 1]", lambda v: 0 <= v <= 1)
        _need_real("warmup_epochs", self.warmup_epochs, "finite and >= 0", lambda v: v >= 0)
        if not isinstance(self.adv_rule, str):
            raise _err(TypeError, "adv_rule",
                       f"adv_rule must be a string, one of {', '.join(ADV_RULES)}, got "
                            f"{self.adv_rule!r} ({type(self.adv_rule).__name__})")
        if self.adv_rule not in ADV_RULES:
            raise _err(ValueError, "adv_rule",
                       f"adv_rule must be one of {', '.join(ADV_RULES)}, got "
                             f"{self.adv_rule!r}")
        # Every lr the schedule can reach must stay a positive, finite, normal double. Growths
        # compute (lr * B') / B with lr / B <= eta / B0 (up to rounding) and B' <= B_max, so
        # every product is about (eta / B0) * B * B' < ((eta * B_max) / B0) * B_max; the fb
        # peak is eta * B_max, smaller still. Decays only lower the lr, and the lowest one is
        # eta times rho once per epoch in A, multiplied in that order (as the run does: no pow,
        # whose last bit differs between languages).
        highest, limit, lowest = _reachable_lr(self)
        if not highest <= limit:
            formula = "lr * max_batch_size" if limit == sys.float_info.max else \
                "((lr * max_batch_size) / batch_size) * max_batch_size"
            raise _err(
                ValueError, "lr",
                f"lr = {self.lr!r} is too large: {formula} = {highest!r} must be <= "
                f"{limit!r}, so that every lr the {self.method} schedule computes stays "
                "finite; use a smaller lr")
        if lowest < sys.float_info.min:
            raise _err(ValueError, "lr",
                f"lr = {self.lr!r} decayed by lr_decay_factor = {self.lr_decay_factor!r} at "
                f"{len(self.lr_decay_epochs)} epochs underflows to {lowest!r}; use a larger lr "
                "or lr_decay_factor, or fewer lr_decay_epochs")

        # real fields are stored as doubles (an int is accepted: 2 and 2.0 mean the same), so
        # that a saved config has one JSON type per field
        for name in _REAL_FIELDS:
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def uses_eigenvalues(self) -> bool:
        """True for the methods whose batch follows the Hessian (``abs``, ``absa``)."""
        return self.method in ("abs", "absa")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (lists for tuples)."""
        out = dataclasses.asdict(self)
        out["lr_decay_epochs"] = list(self.lr_decay_epochs)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SchedulerConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass)."""
        if not isinstance(data, Mapping):
            raise _err(TypeError, "config",
                       f"config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _err(ValueError, "config",
                       f"unknown config field(s) {unknown}; allowed: {sorted(known)}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise _err(ValueError, missing[0],
                       f"missing required config field(s) {missing}; required: {required}")
        kwargs = dict(data)
        if "lr_decay_epochs" in kwargs and isinstance(kwargs["lr_decay_epochs"], list):
            kwargs["lr_decay_epochs"] = tuple(kwargs["lr_decay_epochs"])
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# state and decisions


@dataclass(frozen=True)
class SchedulerState:
    """Everything Algorithm 1 remembers between events; plain data."""

    batch_size: int              # B: logical batch size, samples per parameter update
    lr: float                    # scheduled lr at B (fb: the peak, before the warm-up factor)
    lam_ref: float | None        # eigenvalue at the last growth by drop (or the first one)
    patience_count: int          # d: checks since lam_ref without a drop
    samples_seen: int            # s: training samples consumed, all epochs
    adv_fraction: float          # gamma: fraction of the batch made adversarial (absa only)
    epoch: int                   # completed epochs
    updates: int                 # parameter updates made
    eigenvalue_due: bool         # a check was triggered and its eigenvalue not yet reported
    epoch_start_samples: int     # s at the last epoch end: an epoch needs at least one step
    last_eigenvalue: float | None  # last eigenvalue reported (for logs; no decision uses it)
    last_eigenvalue_bound: bool  # last_eigenvalue is a lower bound ("at least"), not a value
    reason: str                  # what the last event did, for logs and traces

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Decision:
    """What the training loop must do next, derived from config and state.

    Fields:
        method: the schedule's method.
        batch_size: B, samples in the next parameter update.
        micro_batch_size: samples per forward/backward pass.
        accumulation_steps: B / micro_batch_size micro-batches to accumulate per update.
        lr: learning rate for the next update (fb: the warm-up applied).
        adv_fraction: gamma (0 unless absa with adversarial training still on); the count
            may still be 0 when gamma * B < 1.
        adv_count: samples of the next batch to replace by adversarial ones (0: none), the
            total length of ``adv_ranges``.
        adv_eps: the adversarial step size (0.0 when adv_count is 0).
        adv_rule: the config's ``adv_rule`` (``"blocks"`` or ``"batch"``).
        adv_ranges: where the adversarial samples sit in the logical batch of ``batch_size``
            samples: ``(start, stop)`` pairs, half-open, increasing, disjoint (``()``: none).
            A backend replaces exactly the samples at these positions and needs no rule of its
            own; :meth:`adversarial_ranges` gives them for a short last batch.
        eigenvalue_due: report ``eigenvalue()`` (or ``skip_eigenvalue()``) before anything else.
        eigenvalue_threshold: the question the due check asks, ``lam_ref / alpha``: an
            eigenvalue at or below it is a drop (growth, new reference); above it, a no-drop
            check that counts towards the patience whatever the value. ``None`` when no check
            is due or at the first check (no reference yet: the value itself is needed). A
            solver may stop as soon as its estimate, a lower bound on the top eigenvalue, is
            above it, and report that bound with ``eigenvalue(bound, lower_bound=True)``.
        epoch: completed epochs.
        samples_seen: training samples consumed so far.
        updates: parameter updates made so far.
        finished: all epochs have ended; no further event is accepted.
        reason: what the last event did.
    """

    method: str
    batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    lr: float
    adv_fraction: float
    adv_count: int
    adv_eps: float
    adv_rule: str
    adv_ranges: tuple[tuple[int, int], ...]
    eigenvalue_due: bool
    eigenvalue_threshold: float | None
    epoch: int
    samples_seen: int
    updates: int
    finished: bool
    reason: str

    def accumulation_for(self, micro_batch_size: int) -> int:
        """Micro-batches of ``micro_batch_size`` samples that make up the logical batch.

        Raises:
            ValueError: if it does not divide the logical batch size.
        """
        _need_int("micro_batch_size", micro_batch_size, 1)
        if self.batch_size % micro_batch_size:
            raise _err(
                ValueError, "micro_batch_size",
                f"micro_batch_size must divide the logical batch {self.batch_size}, "
                f"got {micro_batch_size}")
        return self.batch_size // micro_batch_size

    def adversarial_ranges(self, n_samples: int) -> tuple[tuple[int, int], ...]:
        """Positions of the adversarial samples in a batch of ``n_samples`` <= B samples.

        ``n_samples = batch_size`` gives ``adv_ranges``. For a short last batch: rule
        ``"blocks"`` cuts the ``n`` samples into blocks of B0 from the start like the full
        batch, so the ranges are ``adv_ranges`` clipped to ``[0, n)``; rule ``"batch"`` takes
        the first ``max(1, floor(gamma * n + 1e-9))`` if ``gamma * n >= 1 - 1e-9``.

        Raises:
            TypeError, ValueError: ``n_samples`` not an int in [0, batch_size].
        """
        _need_int("n_samples", n_samples, 0)
        if n_samples > self.batch_size:
            raise _err(ValueError, "n_samples",
                       f"n_samples must be <= batch_size = {self.batch_size} (the "
                             f"scheduler decides B), got {n_samples}")
        if n_samples == self.batch_size:
            return self.adv_ranges
        if self.adv_rule == "batch":
            return _head_ranges(_adv_count(self.adv_fraction, n_samples))
        return tuple((a, min(b, n_samples)) for a, b in self.adv_ranges if a < n_samples)

    def adversarial_count(self, n_samples: int) -> int:
        """Adversarial samples in a batch of ``n_samples`` (e.g. a short last batch): the
        total length of :meth:`adversarial_ranges`."""
        return sum(b - a for a, b in self.adversarial_ranges(n_samples))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (``adv_ranges`` as a list of [start, stop])."""
        out = dataclasses.asdict(self)
        out["adv_ranges"] = [list(r) for r in self.adv_ranges]
        return out


def _adv_count(gamma: float, batch: int) -> int:
    # Step 1, rule "batch": max(1, floor(gamma * B)) samples when gamma * B >= 1, else none.
    if gamma <= 0 or gamma * batch < 1 - _ROUND_TOL:
        return 0
    return max(1, math.floor(gamma * batch + _ROUND_TOL))


def _block_count(gamma: float, block: int) -> int:
    # Step 1, rule "blocks" (the authors' code): per block of B0 samples, max(1, floor(gamma *
    # B0)) while gamma > 1 / B0, written gamma * B0 > 1 + 1e-9 (a product, as every rule here)
    if gamma <= 0 or gamma * block <= 1 + _ROUND_TOL:
        return 0
    return max(1, math.floor(gamma * block + _ROUND_TOL))


def _head_ranges(count: int) -> tuple[tuple[int, int], ...]:
    return ((0, count),) if count else ()


def _adv_ranges(cfg: "SchedulerConfig", gamma: float, batch: int) -> tuple[tuple[int, int], ...]:
    """Where the adversarial samples of a logical batch of ``batch`` samples sit."""
    if cfg.method != "absa":
        return ()
    if cfg.adv_rule == "batch":
        return _head_ranges(_adv_count(gamma, batch))
    per_block = _block_count(gamma, cfg.batch_size)
    if not per_block:
        return ()
    return tuple((start, min(start + per_block, batch))
                 for start in range(0, batch, cfg.batch_size))


# --------------------------------------------------------------------------------------------
# the pure transition functions: (config, state, event) -> state


def _checks_active(cfg: SchedulerConfig, st: SchedulerState) -> bool:
    # Nothing is left to decide at B_max (step 4), nor for methods without eigenvalues.
    return cfg.uses_eigenvalues and st.batch_size < cfg.max_batch_size


def _finished(cfg: SchedulerConfig, st: SchedulerState) -> bool:
    return st.epoch >= cfg.epochs


def _adversary_over(cfg: SchedulerConfig, epoch: int) -> bool:
    # Step 5: epoch >= tau * epochs, with the same tolerance as the other float-to-integer
    # rules (0.07 * 100 is 7.000000000000001 in binary; the adversary stops after epoch 7).
    return epoch >= cfg.adv_stop * cfg.epochs - _ROUND_TOL


def init(cfg: SchedulerConfig) -> SchedulerState:
    """The state before the first step."""
    if cfg.method == "fb":
        batch, lr = cfg.max_batch_size, cfg.lr * cfg.max_batch_size / cfg.batch_size
    else:
        batch, lr = cfg.batch_size, cfg.lr
    gamma = cfg.adv_fraction if cfg.method == "absa" else 0.0
    if batch >= cfg.max_batch_size or _adversary_over(cfg, 0):
        gamma = 0.0  # at B_max, and from epoch 0 when tau * epochs rounds to 0, no adversary
    return SchedulerState(
        batch_size=batch, lr=float(lr), lam_ref=None, patience_count=0, samples_seen=0,
        adv_fraction=float(gamma), epoch=0, updates=0, eigenvalue_due=False,
        epoch_start_samples=0, last_eigenvalue=None, last_eigenvalue_bound=False,
        reason="start")


def _refuse_if_done_or_due(cfg: SchedulerConfig, st: SchedulerState, event: str) -> None:
    if _finished(cfg, st):
        raise SchedulerError(
            f"{event}: all {cfg.epochs} epochs have ended; no further event is accepted "
            f"(raise epochs in the config to train longer)")
    if st.eigenvalue_due:
        raise SchedulerError(
            f"{event}: an eigenvalue is due (samples_seen={st.samples_seen}); report it with "
            f"eigenvalue(lam) or clear the check with skip_eigenvalue() first")


def on_step(cfg: SchedulerConfig, st: SchedulerState, samples: int | None = None) -> SchedulerState:
    """Step 2-3: one parameter update was made on ``samples`` samples (default B).

    A short last batch of an epoch (``samples < B``) is allowed; it is stepped with the decided
    lr on the mean gradient of its samples (as PyTorch's loaders do), in every backend.
    """
    _refuse_if_done_or_due(cfg, st, "step")
    n = st.batch_size if samples is None else samples
    if not _is_int(n):
        raise _err(TypeError, "samples", f"samples must be an int, got {n!r} ({type(n).__name__})")
    if not 1 <= n <= st.batch_size:
        raise _err(ValueError, "samples",
            f"samples must be in [1, batch_size={st.batch_size}] (a short last batch is "
            f"allowed, a larger one is not: the scheduler decides B), got {n}")
    s = st.samples_seen + n
    if s > MAX_INT:
        raise _err(ValueError, "samples",
                   f"samples: {n} more samples would take samples_seen past 2**53 = {MAX_INT}, "
                   "the integer range of the schedule; start a new run")
    crossed = s // cfg.check_every > st.samples_seen // cfg.check_every
    due = crossed and _checks_active(cfg, st)
    return dataclasses.replace(
        st, samples_seen=s, updates=st.updates + 1, eigenvalue_due=due,
        reason="step: eigenvalue due" if due else "step")


def _grow(cfg: SchedulerConfig, st: SchedulerState, factor: float) -> tuple[int, float, float]:
    """Step 4: the new batch, lr (lr / B kept) and gamma after a growth by ``factor``."""
    target = factor * st.batch_size
    # Compare before rounding: a huge factor (gg with a tiny rho) must not reach math.ceil.
    new_b = (cfg.max_batch_size if target >= cfg.max_batch_size
             else min(_round_up(target, cfg.micro_batch_size), cfg.max_batch_size))
    lr = st.lr * new_b / st.batch_size
    gamma = 0.0 if new_b >= cfg.max_batch_size else st.adv_fraction / cfg.adv_decay
    return new_b, lr, gamma


def _check_eigenvalue(lam: Any) -> float:
    if not _is_real(lam):
        raise _err(TypeError, "eigenvalue",
                   f"eigenvalue must be a real number, got {lam!r} ({type(lam).__name__})")
    lam = float(lam)
    if not math.isfinite(lam):
        raise _err(
            ValueError, "eigenvalue",
            f"eigenvalue must be finite, got {lam!r}; nothing changed and the check is still "
            "due: recompute it (another Hessian batch, more iterations) or call "
            "skip_eigenvalue() (a skipped check never grows the batch)")
    if lam < 0:
        raise _err(
            ValueError, "eigenvalue",
            f"eigenvalue must be >= 0 (the top eigenvalue of the Hessian), got {lam!r}; nothing "
            "changed and the check is still due: a negative value means the solver found the "
            "most negative eigenvalue, so recompute it or call skip_eigenvalue()")
    return lam


def _threshold(cfg: SchedulerConfig, st: SchedulerState) -> float | None:
    # The question a due check asks: is the top eigenvalue <= lam_ref / alpha? (None: no check
    # is due, or the first one, which needs the value to set the reference.)
    if not st.eigenvalue_due or st.lam_ref is None:
        return None
    return st.lam_ref / cfg.alpha


def on_eigenvalue(cfg: SchedulerConfig, st: SchedulerState, lam: float, *,
                  lower_bound: bool = False) -> SchedulerState:
    """Step 3: the top eigenvalue the scheduler asked for, or a lower bound on it.

    With ``lower_bound=True``, ``lam`` says only "the top eigenvalue is at least ``lam``" (a
    Lanczos or power estimate never exceeds it). That decides the check only when ``lam`` is
    strictly above the threshold ``lam_ref / alpha``: then it is a no-drop check, counted
    towards the patience exactly as the value would be, and recorded as ``last_eigenvalue =
    lam`` with ``last_eigenvalue_bound = True``. A bound at or below the threshold, or at the
    first check (no reference), is refused with ``ValueError``: nothing changes, the check
    stays due, and the loop reports the value.
    """
    if not st.eigenvalue_due:
        raise SchedulerError(
            f"eigenvalue: none is due (samples_seen={st.samples_seen}); report one only when "
            "decision.eigenvalue_due is true")
    lam = _check_eigenvalue(lam)
    if lower_bound:
        threshold = _threshold(cfg, st)
        if threshold is None:
            raise _err(ValueError, "eigenvalue",
                       f"eigenvalue: a lower bound ({lam!r}) cannot answer the first check, "
                       "which sets the reference; nothing changed and the check is still due:"
                       " report the value (lower_bound=False)")
        if not lam > threshold:
            raise _err(ValueError, "eigenvalue",
                       f"eigenvalue: the lower bound {lam!r} is not above the threshold "
                       f"lam_ref / alpha = {threshold!r}, so it does not decide the check "
                       "(undecided); nothing changed and the check is still due: report the "
                       "value (lower_bound=False)")
    base = dict(eigenvalue_due=False, last_eigenvalue=lam, last_eigenvalue_bound=lower_bound)
    if st.lam_ref is None:
        # The first check only sets the reference (rebuilt); d = 1 counts it towards patience.
        return dataclasses.replace(st, lam_ref=lam, patience_count=1,
                                   reason="eigenvalue: first, reference set", **base)
    if not lower_bound and lam <= st.lam_ref / cfg.alpha:
        b, lr, gamma = _grow(cfg, st, cfg.beta)
        return dataclasses.replace(st, batch_size=b, lr=lr, adv_fraction=gamma, lam_ref=lam,
                                   patience_count=0, reason="eigenvalue: dropped, grow", **base)
    kind = "lower bound, " if lower_bound else ""
    d = st.patience_count + 1
    if d >= cfg.patience:
        b, lr, gamma = _grow(cfg, st, cfg.beta)
        return dataclasses.replace(st, batch_size=b, lr=lr, adv_fraction=gamma,
                                   patience_count=0,
                                   reason=f"eigenvalue: {kind}patience, grow", **base)
    return dataclasses.replace(st, patience_count=d, reason=f"eigenvalue: {kind}no drop",
                               **base)


def on_skip_eigenvalue(cfg: SchedulerConfig, st: SchedulerState) -> SchedulerState:
    """Clear a due check without an eigenvalue: nothing else changes (never a growth)."""
    if not st.eigenvalue_due:
        raise SchedulerError("skip_eigenvalue: no eigenvalue is due")
    return dataclasses.replace(st, eigenvalue_due=False, reason="eigenvalue: skipped")


def on_epoch_end(cfg: SchedulerConfig, st: SchedulerState) -> SchedulerState:
    """Step 5: lr decay at the epochs in A (gg: batch growth), adversary off after tau."""
    _refuse_if_done_or_due(cfg, st, "end_epoch")
    if st.samples_seen == st.epoch_start_samples:
        raise SchedulerError(
            f"end_epoch: no step since the last epoch end (epoch {st.epoch}); report the "
            "epoch's steps first")
    epoch = st.epoch + 1
    batch, lr, gamma, reasons = st.batch_size, st.lr, st.adv_fraction, []
    if epoch in cfg.lr_decay_epochs:
        if cfg.method == "gg":
            batch, lr, _ = _grow(cfg, st, 1.0 / cfg.lr_decay_factor)
            # the part of the decay the batch could not take goes to the lr (rebuilt)
            lr = st.lr * cfg.lr_decay_factor * batch / st.batch_size
            reasons.append("gg: batch grows" if batch > st.batch_size else "gg: lr decays")
        else:
            lr = st.lr * cfg.lr_decay_factor
            reasons.append("lr decays")
    if gamma > 0 and _adversary_over(cfg, epoch):
        gamma = 0.0
        reasons.append("adversary stops")
    return dataclasses.replace(
        st, epoch=epoch, batch_size=batch, lr=lr, adv_fraction=gamma,
        epoch_start_samples=st.samples_seen,
        reason="epoch end" + (": " + ", ".join(reasons) if reasons else ""))


def decide(cfg: SchedulerConfig, st: SchedulerState) -> Decision:
    """The decision for the next update, a pure function of config and state."""
    lr = st.lr
    if cfg.method == "fb" and cfg.warmup_epochs > 0:
        # Linear warm-up from eta to the scaled lr over the first warmup_epochs epochs.
        progress = min(1.0, st.samples_seen / (cfg.warmup_epochs * cfg.samples_per_epoch))
        lr = cfg.lr + (st.lr - cfg.lr) * progress
    ranges = _adv_ranges(cfg, st.adv_fraction, st.batch_size)
    count = sum(b - a for a, b in ranges)
    return Decision(
        method=cfg.method,
        batch_size=st.batch_size,
        micro_batch_size=cfg.micro_batch_size,
        accumulation_steps=st.batch_size // cfg.micro_batch_size,
        lr=lr,
        adv_fraction=st.adv_fraction if cfg.method == "absa" else 0.0,
        adv_count=count,
        adv_eps=cfg.adv_eps if count else 0.0,
        adv_rule=cfg.adv_rule,
        adv_ranges=ranges,
        eigenvalue_due=st.eigenvalue_due,
        eigenvalue_threshold=_threshold(cfg, st),
        epoch=st.epoch,
        samples_seen=st.samples_seen,
        updates=st.updates,
        finished=_finished(cfg, st),
        reason=st.reason,
    )


# --------------------------------------------------------------------------------------------
# state (de)serialisation


_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "batch_size": (int,), "lr": (float, int), "lam_ref": (float, int, type(None)),
    "patience_count": (int,), "samples_seen": (int,), "adv_fraction": (float, int),
    "epoch": (int,), "updates": (int,), "eigenvalue_due": (bool,),
    "epoch_start_samples": (int,), "last_eigenvalue": (float, int, type(None)),
    "last_eigenvalue_bound": (bool,), "reason": (str,),
}


_STATE_DICT_KEYS = ("format", "version", "config", "state")


def _config_of_state_dict(data: Mapping[str, Any]) -> SchedulerConfig:
    """The config of a state dict: format, version and keys checked, a version's defaults
    filled in (only where the field is absent: null is a type error as in any config)."""
    if not isinstance(data, Mapping):
        raise _err(TypeError, "state_dict",
                   f"state dict must be a mapping, got {type(data).__name__}")
    if data.get("format") != STATE_FORMAT:
        raise _err(ValueError, "format", f"not a scheduler state: format is "
                   f"{data.get('format')!r}, expected {STATE_FORMAT!r}")
    version = data.get("version")
    if not _is_int(version) or version not in _STATE_VERSIONS:
        raise _err(ValueError, "version",
                   f"scheduler state version {version!r} is not supported (this hessbatch "
                   f"reads the ints {sorted(_STATE_VERSIONS)})")
    unknown = sorted(set(data) - set(_STATE_DICT_KEYS))
    if unknown:
        raise _err(ValueError, "state_dict",
                   f"state dict has unknown keys {unknown}; it holds exactly "
                   f"{list(_STATE_DICT_KEYS)}")
    config = data.get("config")
    if not isinstance(config, Mapping):
        return SchedulerConfig.from_dict(config)  # raises the TypeError naming the config
    return SchedulerConfig.from_dict({**_STATE_VERSIONS[version][0], **config})


def _state_from_dict(cfg: SchedulerConfig, data: Mapping[str, Any],
                     version: int = STATE_VERSION) -> SchedulerState:
    if not isinstance(data, Mapping):
        raise _err(TypeError, "state", f"the state dict's state must be a mapping, got {data!r}")
    later = _STATE_VERSIONS[version][1]   # fields a later version added: absent here
    fields = [name for name in _STATE_TYPES if name not in later]
    missing = [name for name in fields if name not in data]
    extra = sorted(set(data) - set(fields))
    if missing or extra:
        raise _err(ValueError, missing[0] if missing else "state",
                   f"state has missing fields {missing} and unknown fields {extra}"
                   f" (version {version})")
    for name in fields:
        value, types = data[name], _STATE_TYPES[name]
        bad_bool = isinstance(value, bool) and bool not in types
        if bad_bool or not isinstance(value, types):
            raise _err(TypeError, name, f"state field {name} has the wrong type: {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise _err(ValueError, name, f"state field {name} = {value} is outside the "
                       f"integer range [-2**53, 2**53]")
    values = {k: (float(v) if isinstance(v, int) and float in _STATE_TYPES[k] else v)
              for k, v in {**data, **later}.items()}
    st = SchedulerState(**values)
    problems = _invariant_problems(cfg, st)
    if problems:
        raise _err(ValueError, problems[0][0], "state does not fit the config: "
                   + "; ".join(text for _, text in problems))
    return st


def _invariant_problems(cfg: SchedulerConfig, st: SchedulerState) -> list[tuple[str, str]]:
    """Every broken invariant as (the state field it is listed under, what is wrong), in the
    order of docs/porting.md section 7; a refused state dict's error names the first field."""
    out: list[tuple[str, str]] = []
    low = cfg.max_batch_size if cfg.method == "fb" else cfg.batch_size
    if not low <= st.batch_size <= cfg.max_batch_size:
        out.append(("batch_size", f"batch_size {st.batch_size} outside [{low}, "
                    f"{cfg.max_batch_size}]"))
    if st.batch_size % cfg.micro_batch_size:
        out.append(("batch_size", f"batch_size {st.batch_size} not a multiple of "
                    f"{cfg.micro_batch_size}"))
    if not (math.isfinite(st.lr) and st.lr > 0):
        out.append(("lr", f"lr {st.lr} not finite and > 0"))
    if not 0 <= st.epoch <= cfg.epochs:
        out.append(("epoch", f"epoch {st.epoch} outside [0, {cfg.epochs}]"))
    for name in ("samples_seen", "updates", "patience_count", "epoch_start_samples"):
        if getattr(st, name) < 0:
            out.append((name, f"{name} {getattr(st, name)} < 0 (a counter)"))
    if st.epoch_start_samples > st.samples_seen:
        out.append(("epoch_start_samples", "epoch_start_samples > samples_seen"))
    if st.samples_seen < st.updates:
        out.append(("samples_seen", f"samples_seen {st.samples_seen} < updates {st.updates} "
                    "(a step has >= 1)"))
    # d < kappa after every check, except d = 1 right after the first eigenvalue when kappa = 1
    if st.patience_count > max(cfg.patience - 1, 1):
        out.append(("patience_count", f"patience_count {st.patience_count} not below "
                    f"patience {cfg.patience}"))
    for name in ("lam_ref", "last_eigenvalue"):
        v = getattr(st, name)
        if v is not None and not (math.isfinite(v) and v >= 0):
            out.append((name, f"{name} {v} not finite and >= 0"))
    if st.lam_ref is None and st.patience_count:
        out.append(("patience_count", "patience_count must be 0 before the first eigenvalue "
                    "(lam_ref null)"))
    if st.lam_ref is None and st.last_eigenvalue is not None:
        out.append(("last_eigenvalue", "last_eigenvalue must be null before the first "
                    "eigenvalue (lam_ref null)"))
    if not cfg.uses_eigenvalues and st.lam_ref is not None:
        out.append(("lam_ref", f"lam_ref {st.lam_ref} for method {cfg.method}, which uses no "
                    "eigenvalue"))
    if not 0 <= st.adv_fraction <= cfg.adv_fraction:
        out.append(("adv_fraction", f"adv_fraction {st.adv_fraction} outside [0, "
                    f"{cfg.adv_fraction}]"))
    if st.adv_fraction and (cfg.method != "absa" or st.batch_size >= cfg.max_batch_size
                            or _adversary_over(cfg, st.epoch)):
        out.append(("adv_fraction", f"adv_fraction {st.adv_fraction} should be 0 here"))
    if st.eigenvalue_due and not _checks_active(cfg, st):
        out.append(("eigenvalue_due", "an eigenvalue is due where none may be asked for"))
    if st.eigenvalue_due and st.samples_seen < cfg.check_every:
        out.append(("eigenvalue_due", f"an eigenvalue is due before check_every = "
                    f"{cfg.check_every} samples"))
    if st.eigenvalue_due and _finished(cfg, st):
        out.append(("eigenvalue_due", "an eigenvalue is due after the last epoch"))
    if st.last_eigenvalue_bound and (st.lam_ref is None or st.last_eigenvalue is None
                                     or not st.last_eigenvalue > st.lam_ref / cfg.alpha):
        out.append(("last_eigenvalue_bound", f"a lower bound {st.last_eigenvalue} is only "
                    f"recorded above the threshold lam_ref / alpha (lam_ref {st.lam_ref})"))
    return out


# --------------------------------------------------------------------------------------------
# the object-oriented wrapper that training loops use


class Scheduler:
    """Algorithm 1 (and the baselines) as an object holding config and state.

    Example:
        >>> sch = Scheduler(SchedulerConfig(method="abs", lr=0.1, batch_size=100,
        ...                 max_batch_size=400, samples_per_epoch=200, epochs=3, patience=2))
        >>> d = sch.step(); d = sch.step(); d.eigenvalue_due
        True
        >>> sch.eigenvalue(8.0).batch_size          # first eigenvalue: reference only
        100
        >>> d = sch.end_epoch(); d = sch.step(); d = sch.step()
        >>> d = sch.eigenvalue(3.0); (d.batch_size, d.lr)   # dropped by more than alpha = 2
        (200, 0.2)
    """

    def __init__(self, config: SchedulerConfig):
        if not isinstance(config, SchedulerConfig):
            raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
        self._config = config
        self._state = init(config)

    @property
    def config(self) -> SchedulerConfig:
        return self._config

    @property
    def state(self) -> SchedulerState:
        return self._state

    @property
    def decision(self) -> Decision:
        """What to do next."""
        return decide(self._config, self._state)

    def step(self, samples: int | None = None) -> Decision:
        """Report one parameter update on ``samples`` samples (default: the decided B)."""
        self._state = on_step(self._config, self._state, samples)
        return self.decision

    def eigenvalue(self, value: float, *, lower_bound: bool = False) -> Decision:
        """Report the top Hessian eigenvalue asked for by ``decision.eigenvalue_due``.

        With ``lower_bound=True``, ``value`` is a lower bound on it ("at least value"), which
        is accepted only when it is strictly above ``decision.eigenvalue_threshold`` (a
        certain no-drop check); see :func:`on_eigenvalue`.
        """
        if not isinstance(lower_bound, bool):
            raise _err(TypeError, "lower_bound",
                       f"lower_bound must be True or False, got {lower_bound!r} "
                       f"({type(lower_bound).__name__})")
        self._state = on_eigenvalue(self._config, self._state, value, lower_bound=lower_bound)
        return self.decision

    def skip_eigenvalue(self) -> Decision:
        """Clear a due check without an eigenvalue (counts for nothing, never grows B)."""
        self._state = on_skip_eigenvalue(self._config, self._state)
        return self.decision

    def end_epoch(self) -> Decision:
        """Report the end of an epoch."""
        self._state = on_epoch_end(self._config, self._state)
        return self.decision

    def check_invariants(self) -> None:
        """Raise AssertionError naming every broken invariant of the current state."""
        problems = _invariant_problems(self._config, self._state)
        if problems:
            raise AssertionError("; ".join(text for _, text in problems))

    def state_dict(self) -> dict[str, Any]:
        """Versioned, JSON-able snapshot: format, version, config and state."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION,
                "config": self._config.to_dict(), "state": self._state.to_dict()}

    def load_state_dict(self, data: Mapping[str, Any]) -> None:
        """Restore a snapshot taken by :meth:`state_dict` with the same config.

        Versions 1 and 2 are read; version 1 predates ``adv_rule`` and loads as
        ``adv_rule="batch"``, the rule it ran.

        Raises:
            TypeError: the state dict, its config or its state is not a mapping, or a field
                has the wrong type.
            ValueError: wrong format or version, a config that differs from this scheduler's
                (the differing fields are named), or a state that breaks an invariant.
        """
        cfg = _config_of_state_dict(data)
        if cfg != self._config:
            diff = [f.name for f in dataclasses.fields(cfg)
                    if getattr(cfg, f.name) != getattr(self._config, f.name)]
            raise _err(ValueError, diff[0],
                       f"the saved config differs from this scheduler's in {diff}; "
                             "build the scheduler with Scheduler.from_state_dict() instead")
        self._state = _state_from_dict(cfg, data.get("state"), data["version"])

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any]) -> "Scheduler":
        """A scheduler with the saved config and state."""
        sch = cls(_config_of_state_dict(data))
        sch.load_state_dict(data)
        return sch

    def __repr__(self) -> str:
        d = self.decision
        return (f"Scheduler(method={d.method!r}, B={d.batch_size}, lr={d.lr:.6g}, "
                f"epoch={d.epoch}, updates={d.updates}, due={d.eigenvalue_due})")
