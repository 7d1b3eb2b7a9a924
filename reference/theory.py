"""Theorem 1 of Yao, Gholami, Keutzer and Mahoney as executable arithmetic (standard library only).

The theorem (ALGORITHM.md section 3; the statement is **rebuilt**, the proof is the standard
one, written out in docs/theory.md). A finite sum ``F(theta) = (1/N) sum_i f_i(theta)`` with

* ``grad F`` L-Lipschitz, ``F`` c-strongly convex, ``F* = min F``;
* ``grad f_i(theta)``, ``i`` uniform, unbiased for ``grad F(theta)`` with
  ``Var <= M + M_V * ||grad F(theta)||^2`` at every ``theta``; equivalently (the paper, after
  Bottou, Curtis and Nocedal) ``E||grad f_i||^2 <= M + M_G ||grad F||^2`` with ``M_G = M_V + 1``;

is minimised by SGD on mini-batches of ``b_t`` samples drawn independently, with the step
``alpha_t = b_t * eta0`` (the linear scaling rule that ABS keeps on every growth). If

    0 < eta0 <= 1 / (L * (M_G + b_max)),        b_max = max_t b_t        (step-size condition)

then, with the noise floor ``G = eta0 * L * M / (2 c)``,

    E[F(theta_t)] - F*  <=  prod_{k<t} (1 - b_k * eta0 * c) * (F(theta_0) - F* - G)  +  G.

Two conventions for the condition (``condition=``), both proved in docs/theory.md:

* ``"paper"`` (default; **rebuilt**): ``M_G = M_V + 1``, the second-moment constant that the
  paper's text and its citation of Bottou, Curtis and Nocedal point to;
* ``"variance"`` (**ours**): ``M_V`` in its place, ``eta0 <= 1 / (L (M_V + b_max))``, slightly
  less restrictive; the proof's step 4 needs only this.

Invariants the functions below rely on and check: ``0 < c <= L`` (a function cannot curve more
strongly than it is smooth), ``M, M_V >= 0``, every contraction factor ``1 - b_k eta0 c`` lies in
``[0, 1)`` under the condition (because ``b_k eta0 c <= b_k c / (L (M_G + b_k)) <= 1``), and the
noise floor ``G`` does not depend on the batch schedule. So a schedule that grows ``b_t``
contracts the bound faster *per update*, while *per sample* (``sum_k b_k``) the contraction
``prod (1 - b_k eta0 c) ~ exp(-eta0 c sum_k b_k)`` is about the same: that is the paper's argument
for ABS in one line.

This module is the pure-Python half of the checks. ``hessbatch.convex`` computes the constants of
concrete problems (least squares exactly, logistic regression by the usual bounds) and the
gaps the bound is checked against; ``hessbatch theory`` runs the checks from the command line.

Example:
    >>> k = Constants(L=4.0, c=0.5, M=2.0, M_V=0.0)   # M_G = M_V + 1 = 1
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

CONDITIONS = ("paper", "variance")

__all__ = [
    "CONDITIONS",
    "Constants",
    "Schedule",
    "max_eta0",
    "check_eta0",
    "noise_floor",
    "contraction_factors",
    "bound_sequence",
    "first_violation",
    "scheduler_batches",
    "raw_bounds",
    "Control",
    "wrong_constants",
    "standard_controls",
    "detection_factor",
    "t_cdf",
    "t_quantile",
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
    """The constants of Theorem 1's assumptions, validated on construction.

    Args:
        L: Lipschitz constant of ``grad F`` (the largest Hessian eigenvalue for a quadratic), > 0.
        c: strong convexity modulus (the smallest Hessian eigenvalue), ``0 < c <= L``.
        M: the constant part of the per-sample gradient variance bound, >= 0.
        M_V: the part of the variance bound proportional to ``||grad F||^2``, >= 0.

    The paper's second-moment constant is the property ``M_G = M_V + 1``.

    Raises:
        TypeError: a constant that is not a real number.
        ValueError: a constant out of range, naming it, the value and the allowed range; in
            particular ``c > L``, which no function satisfies (the assumptions contradict).

    Example:
        >>> Constants(L=1.0, c=0.5, M=0.0, M_V=2.0).M_G
        3.0
        >>> Constants(L=1.0, c=2.0, M=0.0, M_V=0.0)
        Traceback (most recent call last):
        ...
        ValueError: c must be <= L = 1.0 (strong convexity cannot exceed smoothness), got 2.0
    """

    L: float
    c: float
    M: float
    M_V: float

    def __post_init__(self) -> None:
        for name in ("L", "c", "M", "M_V"):
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
        if self.M_V < 0:
            raise ValueError(f"M_V must be >= 0 (a variance bound), got {self.M_V!r}")

    @property
    def M_G(self) -> float:
        """The paper's second-moment constant: ``E||grad f_i||^2 <= M + M_G ||grad F||^2``."""
        return self.M_V + 1.0

    def coefficient(self, condition: str = "paper") -> float:
        """The constant the step-size condition adds to ``b_max``: ``M_G`` or ``M_V``."""
        return self.M_G if _condition(condition) == "paper" else self.M_V

    def to_dict(self) -> dict[str, float]:
        """``{"L", "c", "M", "M_V"}``: ``Constants(**d)`` rebuilds the record."""
        return {"L": self.L, "c": self.c, "M": self.M, "M_V": self.M_V}


def _condition(condition: Any) -> str:
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS} ('paper': M_G = M_V + 1 in "
                         f"eta0 <= 1/(L (M_G + b_max)); 'variance': M_V in its place), got "
                         f"{condition!r}")
    return condition


def _condition_text(constants: "Constants", condition: str) -> str:
    if condition == "paper":
        return f"1/(L*(M_G+b_max)), paper condition, M_G = M_V + 1 = {constants.M_G:.6g}"
    return f"1/(L*(M_V+b_max)), variance condition, M_V = {constants.M_V:.6g}"


def max_eta0(constants: Constants, b_max: int, condition: str = "paper") -> float:
    """The largest ``eta0`` the step-size condition allows.

    ``1 / (L (M_G + b_max))`` with ``M_G = M_V + 1`` (``condition="paper"``, the default), or
    ``1 / (L (M_V + b_max))`` (``condition="variance"``).

    Args:
        constants: the problem's :class:`Constants` (or any object with attributes
            ``L, c, M, M_V``, validated the same way; so for every function here).
        b_max: the largest batch of the schedule, >= 1.
        condition: ``"paper"`` or ``"variance"``.

    Example:
        >>> k = Constants(L=2.0, c=1.0, M=0.0, M_V=2.0)
        >>> max_eta0(k, b_max=5), max_eta0(k, b_max=5, condition="variance")
        (0.0625, 0.07142857142857142)
    """
    constants = _constants(constants)
    b_max = _batch("b_max", b_max)
    return 1.0 / (constants.L * (constants.coefficient(condition) + b_max))


def check_eta0(constants: Constants, eta0: float, b_max: int,
               condition: str = "paper") -> float:
    """Check Theorem 1's step-size condition ``0 < eta0 <= max_eta0(constants, b_max)``.

    A relative slack of ``1e-12`` absorbs the rounding of an ``eta0`` computed as
    :func:`max_eta0`.

    Returns:
        ``eta0`` as a float, when the condition holds.

    Raises:
        ValueError: ``eta0 <= 0`` or past the condition; the message names the convention,
            gives the largest allowed value and by what factor ``eta0`` exceeds it.

    Example:
        >>> k = Constants(L=2.0, c=1.0, M=0.0, M_V=2.0)
        >>> check_eta0(k, 0.1, b_max=5)
        Traceback (most recent call last):
        ...
        ValueError: eta0 must be <= 1/(L*(M_G+b_max)), paper condition, M_G = M_V + 1 = 3 (L=2, b_max=5) = 0.0625, got 0.1 (1.6 times the limit)
    """
    constants = _constants(constants)
    condition = _condition(condition)
    eta0 = _real("eta0", eta0)
    if eta0 <= 0:
        raise ValueError(f"eta0 must be > 0, got {eta0!r}")
    limit = max_eta0(constants, b_max, condition)
    if eta0 > limit * (1 + 1e-12):
        raise ValueError(
            f"eta0 must be <= {_condition_text(constants, condition)} (L={constants.L:.6g}, "
            f"b_max={b_max}) = {limit:.6g}, got {eta0!r} ({eta0 / limit:.3g} times the limit)")
    return eta0


def noise_floor(constants: Constants, eta0: float) -> float:
    """The noise floor ``G = eta0 L M / (2 c)`` that the bound tends to; no batch size enters.

    Example:
        >>> noise_floor(Constants(L=2.0, c=0.5, M=3.0, M_V=0.0), eta0=0.1)
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
        >>> contraction_factors(Constants(L=1.0, c=0.5, M=0.0, M_V=0.0), 0.1, [1, 2, 4])
        [0.95, 0.9, 0.8]
    """
    constants = _constants(constants)
    eta0 = _real("eta0", eta0)
    return [1.0 - _batch(f"batch_sizes[{k}]", b) * eta0 * constants.c
            for k, b in enumerate(batch_sizes)]


def bound_sequence(constants: Constants, eta0: float, gap0: float,
                   batch_sizes: Sequence[int], *, b_max: int | None = None,
                   enforce_condition: bool = True, condition: str = "paper") -> list[float]:
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
        condition: the convention of the condition checked, ``"paper"`` or ``"variance"``.

    Returns:
        ``[bound_0, ..., bound_T]``, ``T + 1`` floats.

    Raises:
        TypeError, ValueError: a batch size that is not an int >= 1 (its index is named), a
            ``b_max`` below a batch size, ``gap0`` negative or not finite, or ``eta0`` past the
            condition when ``enforce_condition`` is true.

    Example:
        >>> k = Constants(L=1.0, c=0.5, M=0.2, M_V=0.0)
        >>> [round(v, 4) for v in bound_sequence(k, 0.25, 1.0, [2, 2], condition="variance")]
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
        eta0 = check_eta0(constants, eta0, b_max, condition)
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
    """``value`` as :class:`Constants`: itself, or any object with ``L, c, M, M_V`` attributes
    (such as a backend's own record), validated on the way."""
    if isinstance(value, Constants):
        return value
    if all(hasattr(value, name) for name in ("L", "c", "M", "M_V")):
        return Constants(L=value.L, c=value.c, M=value.M, M_V=value.M_V)
    raise TypeError(f"constants must be a hessbatch.theory.Constants (or have attributes L, c, "
                    f"M, M_V), got {type(value).__name__}")


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


# --------------------------------------------------------------------------------------------
# negative controls: the same check with wrong constants must fail


def raw_bounds(L: float, c: float, M: float, eta0: float, gap0: float,
               batch_sizes: Sequence[int]) -> list[float]:
    """The bound's formula with *no* validation of the constants, for negative controls.

    ``bound_{t+1} - G = (1 - b_t eta0 c)(bound_t - G)``, ``G = eta0 L M / (2c)``, exactly as
    :func:`bound_sequence`, but ``c > L``, ``M = 0`` or a factor ``1 - b eta0 c < 0`` are
    accepted: a control deliberately states constants that no theorem backs, and the check
    must then find a violation. Only ``c > 0`` is required (``G`` divides by it).

    Example:
        >>> raw_bounds(1.0, 2.0, 0.0, 0.25, 1.0, [1, 1])       # c > L: refused by Constants
        [1.0, 0.5, 0.25]
    """
    L, c, M, eta0, gap0 = (float(v) for v in (L, c, M, eta0, gap0))
    if not c > 0:
        raise ValueError(f"c must be > 0 in a control (G divides by it), got {c!r}")
    g = eta0 * L * M / (2.0 * c)
    out = [gap0]
    excess = gap0 - g
    for b in batch_sizes:
        excess *= 1.0 - b * eta0 * c
        out.append(excess + g)
    return out


@dataclass(frozen=True)
class Control:
    """A negative control: Theorem 1's check with one constant deliberately wrong.

    Fields:
        name: how reports print it, e.g. ``"M/2"``.
        constant: which constant is wrong: ``"M"``, ``"L"``, ``"c"`` or ``"M_V"``.
        factor: the error, applied as ``M / factor``, ``L / factor``, ``c * factor`` or
            ``M_V / factor`` (``math.inf`` means ``M = 0`` or ``M_V = 0``). Each direction
            makes the bound smaller (or, for ``M_V``, allows a larger step), so a check that
            cannot tell right from wrong passes it.
        L, c, M, M_V: the wrong constants themselves.
        rerun: ``True`` when the control changes the run, not just the bound: a smaller
            ``M_V`` or ``L`` lets the condition allow a larger ``eta0``, so the gaps must be
            recomputed at that ``eta0`` (possible exactly on least squares and on the sharp
            logistic instance, not on a Monte-Carlo check). ``M_V`` controls always rerun;
            ``L`` controls do when asked (``wrong_constants(..., rerun=True)``).
    """

    name: str
    constant: str
    factor: float
    L: float
    c: float
    M: float
    M_V: float
    rerun: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "constant": self.constant, "factor": self.factor,
                "constants": {"L": self.L, "c": self.c, "M": self.M, "M_V": self.M_V},
                "rerun": self.rerun}


_DIRECTIONS = {"M": "/", "L": "/", "c": "*", "M_V": "/"}


def wrong_constants(constants: Constants, constant: str, factor: float, *,
                    rerun: bool | None = None) -> Control:
    """The :class:`Control` with ``constant`` wrong by ``factor`` (``inf``: zero).

    ``rerun`` (default: only for ``M_V``) marks a control that changes the run: the step the
    condition allows is recomputed from the wrong constants and the gaps are observed again at
    it. ``L`` is a real control only that way: at a fixed ``eta0`` the bound uses ``L`` and ``M``
    only through ``G = eta0 L M / (2c)``, so ``L / f`` is the same bound as ``M / f``.

    Raises:
        ValueError: an unknown constant, or a factor that is not > 1 (a factor of 1 is the
            true constant; below 1 the bound gets looser and proves nothing).
    """
    k = _constants(constants)
    if constant not in _DIRECTIONS:
        raise ValueError(f"constant must be one of {sorted(_DIRECTIONS)}, got {constant!r}")
    factor = float(factor)
    if not factor > 1:
        raise ValueError(f"factor must be > 1 (a wrong constant that tightens the bound), got "
                         f"{factor!r}")
    if constant == "c" and math.isinf(factor):
        raise ValueError("factor must be finite for c (c * inf is no constant)")
    vals = {"L": k.L, "c": k.c, "M": k.M, "M_V": k.M_V}
    if constant == "c":
        vals["c"] = k.c * factor
        name = f"c*{factor:g}"
    else:
        vals[constant] = 0.0 if math.isinf(factor) else vals[constant] / factor
        name = f"{constant}=0" if math.isinf(factor) else f"{constant}/{factor:g}"
    if rerun is None:
        rerun = constant == "M_V"
    return Control(name, constant, factor, rerun=bool(rerun), **vals)


def standard_controls(constants: Constants, *, include_M_V: bool = False,
                      include_L: bool = True) -> list[Control]:
    """The controls every ``hessbatch theory`` run makes: ``M=0, M/2, c*2``, and ``L/2`` through
    the condition (``eta0`` from the wrong ``L``, the run observed again; ``include_L=False``
    leaves it out where the run cannot be repeated exactly) (and, where the problem has a
    fitted ``M_V > 0``, ``M_V/2`` and ``M_V=0``)."""
    out = [wrong_constants(constants, "M", math.inf), wrong_constants(constants, "M", 2.0),
           wrong_constants(constants, "c", 2.0)]
    if include_L:
        out.append(wrong_constants(constants, "L", 2.0, rerun=True))
    if include_M_V and _constants(constants).M_V > 0:
        out += [wrong_constants(constants, "M_V", 2.0), wrong_constants(constants, "M_V", math.inf)]
    return out


def detection_factor(violated: Callable[[float], bool], *, max_factor: float = 1e3,
                     rel_tol: float = 1e-3) -> float | None:
    """The smallest error factor ``f > 1`` that a check detects, by bisection on ``log f``.

    ``violated(f)`` runs the check with one constant wrong by ``f`` and says whether it found a
    violation; it must be monotone (a larger error is easier to detect), as it is for every
    constant of :func:`wrong_constants` (the bound is monotone in each). Returns ``None`` when
    even ``max_factor`` passes: the check is not sensitive to that constant on this problem.
    The result is within ``rel_tol`` (relative) above the true threshold.

    Example:
        >>> round(detection_factor(lambda f: f > 1.3), 2)
        1.3
    """
    if not violated(max_factor):
        return None
    lo, hi = 1.0, float(max_factor)
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        if violated(mid):
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------------------------
# Student's t quantile (standard library only), for one-sided Monte-Carlo limits


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError("incomplete beta: continued fraction did not converge")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom."""
    df = float(df)
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df!r}")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t with ``df`` degrees of freedom, ``0 < p < 1``.

    Computed by bisection on :func:`t_cdf` (incomplete beta by continued fraction) to about
    1e-12 relative; exact enough for confidence limits and no SciPy needed.

    Example:
        >>> round(t_quantile(0.975, 10), 6)
        2.228139
    """
    p = float(p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e300:
            raise ArithmeticError("t_quantile: p too close to 1")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)
