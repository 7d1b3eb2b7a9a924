"""Theorem 1 of Yao, Gholami, Keutzer and Mahoney as executable arithmetic (standard library only).

The theorem (ALGORITHM.md section 3; the statement is **rebuilt**, the proof is the standard
one, written out in docs/theory.md). A finite sum ``F(theta) = (1/N) sum_i f_i(theta)`` with

* ``grad F`` L-Lipschitz, ``F`` c-strongly convex, ``F* = min F``;
* ``grad f_i(theta)``, ``i`` uniform, unbiased for ``grad F(theta)`` with
  ``Var <= M + M_G * ||grad F(theta)||^2`` at every ``theta``;

is minimised by SGD on mini-batches of ``b_t`` samples drawn independently, with the step
``alpha_t = b_t * eta0`` (the linear scaling rule that ABS keeps on every growth). If

    0 < eta0 <= 1 / (L * (M_G + b_max)),        b_max = max_t b_t        (step-size condition)

then, with the noise floor ``G = eta0 * L * M / (2 c)``,

    E[F(theta_t)] - F*  <=  prod_{k<t} (1 - b_k * eta0 * c) * (F(theta_0) - F* - G)  +  G.

Invariants the functions below rely on and check: ``0 < c <= L`` (a function cannot curve more
strongly than it is smooth), ``M, M_G >= 0``, every contraction factor ``1 - b_k eta0 c`` lies in
``[0, 1)`` under the condition (because ``b_k eta0 c <= b_k c / (L (M_G + b_k)) <= 1``), and the
noise floor ``G`` does not depend on the batch schedule. So a schedule that grows ``b_t``
contracts the bound faster *per update*, while *per sample* (``sum_k b_k``) the contraction
``prod (1 - b_k eta0 c) ~ exp(-eta0 c sum_k b_k)`` is about the same: that is the paper's argument
for ABS in one line.

This module is the pure-Python half of the checks. ``hessbatch.convex`` computes the constants of
concrete problems (least squares exactly, logistic regression by the usual bounds) and the
gaps the bound is checked against; ``hessbatch theory`` runs the checks from the command line.

Example:
    >>> k = Constants(L=4.0, c=0.5, M=2.0, M_G=1.0)
    >>> eta0 = max_eta0(k, b_max=7)             # 1 / (4 * (1 + 7))
    >>> eta0
    0.03125
    >>> noise_floor(k, eta0)                    # 0.03125 * 4 * 2 / (2 * 0.5)
    0.25
    >>> [round(v, 6) for v in bound_sequence(k, eta0, gap0=1.25, batch_sizes=[1, 7])]
    [1.25, 1.234375, 1.126709]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ._scheduler import Scheduler, SchedulerConfig

__all__ = [
    "Constants",
    "Schedule",
    "max_eta0",
    "check_eta0",
    "noise_floor",
    "contraction_factors",
    "bound_sequence",
    "first_violation",
    "scheduler_batches",
]


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # NumPy scalars are not int/float subclasses everywhere: accept what has __float__,
        # but refuse booleans and strings (float("1.0") would pass silently).
        if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
            raise TypeError(f"{name} must be a real number, got {value!r} "
                            f"({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _batch(name: str, value: Any) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1 (samples per update), got {value}")
    return value


@dataclass(frozen=True)
class Constants:
    """The four constants of Theorem 1's assumptions, validated on construction.

    Args:
        L: Lipschitz constant of ``grad F`` (the largest Hessian eigenvalue for a quadratic), > 0.
        c: strong convexity modulus (the smallest Hessian eigenvalue), ``0 < c <= L``.
        M: the constant part of the per-sample gradient variance bound, >= 0.
        M_G: the part proportional to ``||grad F||^2``, >= 0.

    Raises:
        TypeError: a constant that is not a real number.
        ValueError: a constant out of range, naming it, the value and the allowed range; in
            particular ``c > L``, which no function satisfies (the assumptions contradict).

    Example:
        >>> Constants(L=1.0, c=2.0, M=0.0, M_G=0.0)
        Traceback (most recent call last):
        ...
        ValueError: c must be <= L = 1.0 (strong convexity cannot exceed smoothness), got 2.0
    """

    L: float
    c: float
    M: float
    M_G: float

    def __post_init__(self) -> None:
        for name in ("L", "c", "M", "M_G"):
            object.__setattr__(self, name, _real(name, getattr(self, name)))
        if self.L <= 0:
            raise ValueError(f"L must be > 0 (a Lipschitz constant of grad F), got {self.L!r}")
        if self.c <= 0:
            raise ValueError(f"c must be > 0 (Theorem 1 needs strong convexity), got {self.c!r}")
        if self.c > self.L * (1 + 1e-12):
            raise ValueError(f"c must be <= L = {self.L!r} (strong convexity cannot exceed "
                             f"smoothness), got {self.c!r}")
        if self.M < 0:
            raise ValueError(f"M must be >= 0 (a variance bound), got {self.M!r}")
        if self.M_G < 0:
            raise ValueError(f"M_G must be >= 0 (a variance bound), got {self.M_G!r}")

    def to_dict(self) -> dict[str, float]:
        return {"L": self.L, "c": self.c, "M": self.M, "M_G": self.M_G}


def max_eta0(constants: Constants, b_max: int) -> float:
    """The largest ``eta0`` the step-size condition allows: ``1 / (L (M_G + b_max))``.

    Args:
        constants: the problem's :class:`Constants` (or any object with attributes
            ``L, c, M, M_G``, validated the same way; so for every function here).
        b_max: the largest batch of the schedule, >= 1.

    Returns:
        ``1 / (L * (M_G + b_max))``.

    Example:
        >>> max_eta0(Constants(L=2.0, c=1.0, M=0.0, M_G=3.0), b_max=5)
        0.0625
    """
    constants = _constants(constants)
    b_max = _batch("b_max", b_max)
    return 1.0 / (constants.L * (constants.M_G + b_max))


def check_eta0(constants: Constants, eta0: float, b_max: int) -> float:
    """Check Theorem 1's step-size condition ``0 < eta0 <= 1 / (L (M_G + b_max))``.

    A relative slack of ``1e-12`` absorbs the rounding of an ``eta0`` computed as
    :func:`max_eta0`.

    Returns:
        ``eta0`` as a float, when the condition holds.

    Raises:
        ValueError: ``eta0 <= 0`` or past the condition; the message gives the largest allowed
            value and by what factor ``eta0`` exceeds it.

    Example:
        >>> k = Constants(L=2.0, c=1.0, M=0.0, M_G=3.0)
        >>> check_eta0(k, 0.1, b_max=5)
        Traceback (most recent call last):
        ...
        ValueError: eta0 must be <= 1/(L*(M_G+b_max)) = 0.0625 (L=2, M_G=3, b_max=5), got 0.1 (1.6 times the limit)
    """
    constants = _constants(constants)
    eta0 = _real("eta0", eta0)
    if eta0 <= 0:
        raise ValueError(f"eta0 must be > 0, got {eta0!r}")
    limit = max_eta0(constants, b_max)
    if eta0 > limit * (1 + 1e-12):
        raise ValueError(
            f"eta0 must be <= 1/(L*(M_G+b_max)) = {limit:.6g} (L={constants.L:.6g}, "
            f"M_G={constants.M_G:.6g}, b_max={b_max}), got {eta0!r} "
            f"({eta0 / limit:.3g} times the limit)")
    return eta0


def noise_floor(constants: Constants, eta0: float) -> float:
    """The noise floor ``G = eta0 L M / (2 c)`` that the bound tends to; no batch size enters.

    Example:
        >>> noise_floor(Constants(L=2.0, c=0.5, M=3.0, M_G=0.0), eta0=0.1)
        0.6000000000000001
    """
    constants = _constants(constants)
    eta0 = _real("eta0", eta0)
    if eta0 <= 0:
        raise ValueError(f"eta0 must be > 0, got {eta0!r}")
    return eta0 * constants.L * constants.M / (2.0 * constants.c)


def contraction_factors(constants: Constants, eta0: float,
                        batch_sizes: Iterable[int]) -> list[float]:
    """The per-update factors ``1 - b_k eta0 c`` of the bound (no condition checked).

    Example:
        >>> contraction_factors(Constants(L=1.0, c=0.5, M=0.0, M_G=0.0), 0.1, [1, 2, 4])
        [0.95, 0.9, 0.8]
    """
    constants = _constants(constants)
    eta0 = _real("eta0", eta0)
    return [1.0 - _batch(f"batch_sizes[{k}]", b) * eta0 * constants.c
            for k, b in enumerate(batch_sizes)]


def bound_sequence(constants: Constants, eta0: float, gap0: float,
                   batch_sizes: Sequence[int], *, b_max: int | None = None,
                   enforce_condition: bool = True) -> list[float]:
    """Theorem 1's bound on ``E[F(theta_t)] - F*`` for ``t = 0, ..., T`` along a batch schedule.

    ``bound_0 = gap0`` and ``bound_{t+1} - G = (1 - b_t eta0 c) (bound_t - G)``, i.e.
    ``bound_t = prod_{k<t} (1 - b_k eta0 c) (gap0 - G) + G``, computed by the recursion so that
    no product underflows before it must.

    Args:
        constants: :class:`Constants` of the problem.
        eta0: the step per sample; update ``t`` uses the step ``b_t * eta0``.
        gap0: ``F(theta_0) - F*``, finite and >= 0.
        batch_sizes: ``b_0, ..., b_{T-1}``, ints >= 1 (any order: the theorem needs no
            monotonicity).
        b_max: the ``b_max`` of the condition (default ``max(batch_sizes)``); must be at least
            every ``b_t``.
        enforce_condition: check the step-size condition (default). ``False`` computes the
            formula anyway, which the tests use to show that the bound fails past the condition.

    Returns:
        ``[bound_0, ..., bound_T]``, ``T + 1`` floats.

    Raises:
        TypeError, ValueError: a batch size that is not an int >= 1 (its index is named), a
            ``b_max`` below a batch size, ``gap0`` negative or not finite, or ``eta0`` past the
            condition when ``enforce_condition`` is true.

    Example:
        >>> k = Constants(L=1.0, c=0.5, M=0.2, M_G=0.0)
        >>> [round(v, 4) for v in bound_sequence(k, 0.25, 1.0, [2, 2])]
        [1.0, 0.7625, 0.5844]
    """
    constants = _constants(constants)
    batches = [_batch(f"batch_sizes[{k}]", b) for k, b in enumerate(batch_sizes)]
    gap0 = _real("gap0", gap0)
    if gap0 < 0:
        raise ValueError(f"gap0 must be >= 0 (F(theta_0) - F*), got {gap0!r}")
    if b_max is None:
        b_max = max(batches, default=1)
    b_max = _batch("b_max", b_max)
    if batches and max(batches) > b_max:
        k = max(range(len(batches)), key=batches.__getitem__)
        raise ValueError(f"b_max must be >= every batch size, got b_max={b_max} and "
                         f"batch_sizes[{k}]={batches[k]}")
    if enforce_condition:
        eta0 = check_eta0(constants, eta0, b_max)
    g = noise_floor(constants, eta0)
    out = [gap0]
    excess = gap0 - g
    for b in batches:
        excess *= 1.0 - b * eta0 * constants.c
        out.append(excess + g)
    return out


def first_violation(gaps: Sequence[float], bounds: Sequence[float], *, rtol: float = 1e-9,
                    atol: float = 0.0) -> int | None:
    """Index of the first ``t`` with ``gaps[t] > bounds[t] (1 + rtol) + atol``, or ``None``.

    The tolerances are for gaps computed exactly up to rounding (least squares); a Monte-Carlo
    check compares a lower confidence limit instead and leaves them at 0.

    Raises:
        ValueError: sequences of different lengths, or a NaN in either.
    """
    if len(gaps) != len(bounds):
        raise ValueError(f"gaps and bounds must have the same length, got {len(gaps)} and "
                         f"{len(bounds)}")
    for t, (g, b) in enumerate(zip(gaps, bounds)):
        g, b = float(g), float(b)
        if math.isnan(g) or math.isnan(b):
            raise ValueError(f"gaps[{t}]={g!r}, bounds[{t}]={b!r}: NaN cannot be checked")
        if g > b * (1.0 + rtol) + atol:
            return t
    return None


def _constants(value: Any) -> Constants:
    """``value`` as :class:`Constants`: itself, or any object with ``L, c, M, M_G`` attributes
    (such as a backend's own record), validated on the way."""
    if isinstance(value, Constants):
        return value
    if all(hasattr(value, name) for name in ("L", "c", "M", "M_G")):
        return Constants(L=value.L, c=value.c, M=value.M, M_G=value.M_G)
    raise TypeError(f"constants must be a hessbatch.theory.Constants (or have attributes L, c, "
                    f"M, M_G), got {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# batch schedules taken from the scheduler core


@dataclass(frozen=True)
class Schedule:
    """A batch schedule decided by :class:`hessbatch.Scheduler`, one entry per update.

    Fields:
        batch_sizes: ``b_t`` for every update ``t`` (samples drawn i.i.d. for that update).
        lrs: the core's learning rate for every update; ``lrs[t] = eta0 * b_t`` when the
            config has no lr decay (checked by :func:`scheduler_batches`).
        epoch_ends: the update count at the end of each epoch.
        eigenvalues: ``(update count, eigenvalue)`` for every check that was reported.
    """

    batch_sizes: tuple[int, ...]
    lrs: tuple[float, ...]
    epoch_ends: tuple[int, ...]
    eigenvalues: tuple[tuple[int, float], ...]

    @property
    def updates(self) -> int:
        return len(self.batch_sizes)

    @property
    def samples(self) -> int:
        return sum(self.batch_sizes)

    def to_dict(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.batch_sizes), "lrs": list(self.lrs),
                "epoch_ends": list(self.epoch_ends),
                "eigenvalues": [list(p) for p in self.eigenvalues]}


class _Replay:
    """An eigenvalue source that replays values in order and repeats the last one."""

    def __init__(self, values: Iterable[float]):
        self._values = list(values)
        self._next = 0

    def __call__(self, _batches: Sequence[int]) -> float:
        if not self._values:
            raise ValueError("eigenvalue: the iterable of eigenvalues is empty, but the "
                             "scheduler asked for one")
        value = self._values[min(self._next, len(self._values) - 1)]
        self._next += 1
        return value


def scheduler_batches(config: SchedulerConfig,
                      eigenvalue: Callable[[Sequence[int]], float] | Iterable[float] | None = None,
                      ) -> Schedule:
    """Run :class:`hessbatch.Scheduler` over all epochs of ``config`` and record its batches.

    With i.i.d. sampling an epoch is a sample budget, not a pass over the data, so every update
    takes the full decided batch ``B`` and an epoch ends at the first update whose cumulative
    samples reach ``epoch * samples_per_epoch`` (no short last batch: the schedule stays
    non-decreasing for ``abs`` and the core's lr equals ``eta0 * B`` at every update). Every
    epoch has at least one update, so with ``B > samples_per_epoch`` an epoch is one update.

    Args:
        config: the schedule (``bl`` for plain SGD, ``abs`` for ABS, ...). For Theorem 1 the lr
            must follow the linear scaling rule: no lr decay, so ``lr_decay_epochs=()``.
        eigenvalue: what to report when the core asks for an eigenvalue. Either a callable
            receiving the batch sizes of the updates made so far (so a caller can advance a
            model to the current iterate and measure its Hessian), or an iterable of values
            used in order (the last one repeats when it runs out), or ``None`` for methods that
            never ask.

    Returns:
        The :class:`Schedule`.

    Raises:
        ValueError: an eigenvalue is due and ``eigenvalue`` is ``None`` or an empty iterable;
            an eigenvalue the core refuses (negative, NaN).

    Example:
        >>> cfg = SchedulerConfig(method="abs", lr=0.01, batch_size=10, max_batch_size=40,
        ...                       samples_per_epoch=30, epochs=4, check_every=30, patience=1)
        >>> s = scheduler_batches(cfg, [5.0, 5.0, 5.0])
        >>> s.batch_sizes, s.epoch_ends
        ((10, 10, 10, 10, 10, 10, 20, 20, 40), (3, 6, 8, 9))
    """
    if not isinstance(config, SchedulerConfig):
        raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
    source = eigenvalue if eigenvalue is None or callable(eigenvalue) else _Replay(eigenvalue)
    sch = Scheduler(config)
    batches: list[int] = []
    lrs: list[float] = []
    ends: list[int] = []
    eigs: list[tuple[int, float]] = []
    n = config.samples_per_epoch
    for epoch in range(1, config.epochs + 1):
        # at least one update per epoch (the core requires it), then up to the sample budget
        start = len(batches)
        while len(batches) == start or sch.decision.samples_seen < epoch * n:
            d = sch.decision
            batches.append(d.batch_size)
            lrs.append(d.lr)
            d = sch.step(d.batch_size)
            if d.eigenvalue_due:
                if source is None:
                    raise ValueError(f"eigenvalue: method {config.method!r} asked for an "
                                     "eigenvalue and none was given")
                lam = source(tuple(batches))
                sch.eigenvalue(lam)
                eigs.append((len(batches), float(lam)))
        sch.end_epoch()
        ends.append(len(batches))
    return Schedule(tuple(batches), tuple(lrs), tuple(ends), tuple(eigs))
