"""Command-line pieces shared by every subcommand: the scheduler's options and table printing.

Every subcommand that trains reads Algorithm 1's hyper-parameters from the same options, so the
spelling, the defaults and the help text are written once, here.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Iterable, Sequence

from ._scheduler import METHODS, SchedulerConfig


def int_list(text: str) -> tuple[int, ...]:
    """Parse ``"30,60,80"`` (or an empty string) into a tuple of ints, for argparse."""
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 30,60,80, got {text!r}") from None


def add_scheduler_arguments(parser: argparse.ArgumentParser, *, method: str | None = "abs",
                            lr: float | None = 0.1, batch_size: int = 128,
                            max_batch_size: int | None = 16384, decay_epochs: str = "",
                            decay_factor: float = 0.2,
                            help: dict[str, str] | None = None) -> argparse._ArgumentGroup:
    """Add Algorithm 1's hyper-parameters as options (defaults: the paper's, ALGORITHM.md s.2).

    Args:
        method, lr, max_batch_size: defaults; ``None`` leaves the option unset, for a command
            that derives the value itself (say so in ``help``).
        help: replacement help texts, keyed by option destination (``"method"``, ``"lr"``,
            ``"max_batch_size"``, ...), for a command where an option means something narrower.
    """
    g = parser.add_argument_group("schedule (Algorithm 1 and the baselines)")
    overrides = dict(help or {})

    def add(*flags, **kw):
        action = g.add_argument(*flags, **kw)
        action.help = overrides.pop(action.dest, action.help)

    add("--method", choices=METHODS, default=method,
        help="bl: fixed batch; fb: fixed B_max with scaled lr and warm-up; gg: grow "
             "the batch instead of decaying the lr; abs: grow the batch when the "
             "Hessian's top eigenvalue drops; absa: abs plus FGSM (default %(default)s)")
    add("--lr", type=float, default=lr,
        help="eta, the base learning rate at the initial batch (default %(default)s)")
    add("--batch-size", type=int, default=batch_size,
        help="B0, the initial logical batch (bl: the fixed batch) (default %(default)s)")
    add("--max-batch", "--max-batch-size", dest="max_batch_size", type=int,
        default=max_batch_size,
        help="B_max, the largest logical batch (fb trains at it) (default %(default)s)")
    add("--micro-batch", dest="micro_batch_size", type=int, default=None,
        help="samples per forward/backward pass; B is accumulated from micro-batches "
             "(default: B0)")
    add("--decay-epochs", type=int_list, default=int_list(decay_epochs),
        help="A: epochs after which lr *= rho (gg: B /= rho), comma-separated "
             "(default %r)" % decay_epochs)
    add("--decay-factor", type=float, default=decay_factor,
        help="rho, the lr decay factor (default %(default)s)")
    add("--alpha", type=float, default=2.0,
        help="grow when the eigenvalue dropped by this ratio (default %(default)s)")
    add("--beta", type=float, default=2.0,
        help="batch growth factor (default %(default)s)")
    add("--check-every", type=int, default=None,
        help="n, samples between eigenvalue checks (default: one epoch)")
    add("--patience", type=int, default=10,
        help="kappa: grow anyway after this many checks without a drop "
             "(default %(default)s)")
    add("--adv-eps", type=float, default=0.005,
        help="FGSM step on inputs scaled to [0, 1] (absa) (default %(default)s)")
    add("--adv-fraction", type=float, default=0.2,
        help="gamma, fraction of each batch replaced by FGSM examples (absa) "
             "(default %(default)s)")
    add("--adv-decay", type=float, default=2.0,
        help="omega: gamma is divided by it at every growth (default %(default)s)")
    add("--adv-stop", type=float, default=0.5,
        help="tau: adversarial training stops after this fraction of the epochs "
             "(default %(default)s)")
    add("--warmup-epochs", type=float, default=5.0,
        help="fb: epochs of linear lr warm-up (default %(default)s)")
    add("--adv-rule", choices=("blocks", "batch"), default="blocks",
        help="absa: 'blocks' (the authors' code) makes the first floor(gamma * B0) samples of "
             "every block of B0 adversarial while gamma * B0 > 1; 'batch' the first "
             "floor(gamma * B) of the batch (default %(default)s)")
    if overrides:
        raise ValueError(f"help given for unknown scheduler options {sorted(overrides)}")
    return g


# SchedulerConfig field -> the option that sets it (messages name what the user typed)
OPTION_OF_FIELD = {
    "method": "--method", "lr": "--lr", "batch_size": "--batch-size",
    "max_batch_size": "--max-batch", "micro_batch_size": "--micro-batch",
    "lr_decay_epochs": "--decay-epochs", "lr_decay_factor": "--decay-factor", "alpha": "--alpha",
    "beta": "--beta", "check_every": "--check-every", "patience": "--patience",
    "adv_eps": "--adv-eps", "adv_fraction": "--adv-fraction", "adv_decay": "--adv-decay",
    "adv_stop": "--adv-stop", "warmup_epochs": "--warmup-epochs", "adv_rule": "--adv-rule",
}


def config_from_args(args: argparse.Namespace, *, samples_per_epoch: int,
                     epochs: int, **fields: Any) -> SchedulerConfig:
    """Build a validated :class:`SchedulerConfig` from the options of
    :func:`add_scheduler_arguments` (``fields`` replace config fields a command sets itself).

    Raises:
        ValueError, TypeError: the config's own check, with the field's name replaced by the
            option the user typed (``--lr must be finite and > 0, got -0.1``).
    """
    values = dict(
        method=args.method, lr=args.lr, batch_size=args.batch_size,
        max_batch_size=args.max_batch_size, micro_batch_size=args.micro_batch_size,
        samples_per_epoch=samples_per_epoch, epochs=epochs,
        lr_decay_epochs=tuple(args.decay_epochs), lr_decay_factor=args.decay_factor,
        alpha=args.alpha, beta=args.beta, check_every=args.check_every,
        patience=args.patience, adv_eps=args.adv_eps, adv_fraction=args.adv_fraction,
        adv_decay=args.adv_decay, adv_stop=args.adv_stop, warmup_epochs=args.warmup_epochs,
        adv_rule=args.adv_rule)
    values.update(fields)
    try:
        return SchedulerConfig(**values)
    except (ValueError, TypeError) as exc:
        # a field the command derived, or an option left unset (None), keeps its own name
        unset = {f for f, v in values.items() if v is None}
        raise type(exc)(option_message(str(exc), set(fields) | unset)) from None


def option_message(message: str, keep: Iterable[str] = ()) -> str:
    """A config error's message with its leading field name replaced by the option's.

    Fields in ``keep`` (computed by the command, or not given) keep their name.

    Example:
        >>> option_message("lr must be finite and > 0, got -0.1")
        '--lr must be finite and > 0, got -0.1'
    """
    m = re.match(r"(\w+)( .*)", message, re.S)
    if m and m.group(1) in OPTION_OF_FIELD and m.group(1) not in set(keep):
        return OPTION_OF_FIELD[m.group(1)] + m.group(2)
    return message


def given_options(parser: argparse.ArgumentParser,
                  argv: Sequence[str]) -> frozenset[str] | None:
    """The destinations of the options ``argv`` sets explicitly (typed, even to the default);
    None if the parser cannot tell (an action that needs a real default).

    ``argparse`` fills a default in for every option left out, so the parsed namespace cannot
    tell ``--batch-size 128`` from nothing when 128 is the default; a command that must know
    (``train --resume`` refuses typed options that differ from the checkpoint) reads this set,
    which ``hessbatch`` stores as ``args._given``.

    Example:
        >>> p = argparse.ArgumentParser(); _ = p.add_argument("--b", type=int, default=128)
        >>> sorted(given_options(p, ["--b", "128"])), sorted(given_options(p, []))
        (['b'], [])
    """
    unset = object()
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = unset
        parsed, _ = parser.parse_known_args(list(argv))
    except (Exception, SystemExit):  # an action that cannot start from the marker: unknown
        return None
    finally:
        for action, default in saved:
            action.default = default
    return frozenset(k for k, v in vars(parsed).items() if v is not unset)


# --------------------------------------------------------------------------------------------
# memory: refuse before allocating what cannot fit


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get now: ``MemAvailable`` on Linux, else the
    physical memory; None when the system says neither."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def format_bytes(n: float) -> str:
    """``1.5 GiB`` style: binary units, 3 significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError  # pragma: no cover


def check_memory(needs: Sequence[tuple[str, int, str]], *, command: str = "this run",
                 available: int | None = None) -> None:
    """Refuse a run whose certain allocations cannot fit in memory, before any of them.

    Args:
        needs: ``(what, bytes, fix)`` for each allocation the run is sure to make, ``what``
            naming the option it comes from (``"the d x d Hessian of --data w.svm (10000000
            features)"``) and ``fix`` what to change. Sizes are lower bounds: a run refused
            here could not have fit; one accepted may still need more.
        command: how the run is called in the message.
        available: bytes available (default :func:`available_memory`).

    Raises:
        ValueError: the sum is above the memory available; the message lists the largest
            allocations with their sizes, and the fix of the largest.
    """
    total = sum(int(b) for _, b, _ in needs)
    if available is None:
        available = available_memory()
    if available is None or total <= available:
        return
    parts = sorted(needs, key=lambda t: -int(t[1]))
    shown = "; ".join(f"{what}: {format_bytes(b)}" for what, b, _ in parts[:3] if b > 0)
    raise ValueError(f"{command} needs at least {format_bytes(total)} of memory ({shown}), "
                     f"more than the {format_bytes(available)} available; {parts[0][2]}")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned plain-text table; numbers right-aligned, floats with 4 significant digits."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    numeric = [all(_looks_numeric(r[i]) for r in body if r[i]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    return "\n".join(out)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Progress:
    """Progress on stderr: one line redrawn in place on a terminal; in a log (not a terminal)
    a plain line at every tenth of the way, so files and CI logs stay readable."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self._tenths = -1

    def update(self, n: int = 1, info: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        if self.tty:
            bar = "#" * int(24 * frac)
            self.stream.write(f"\r{self.label} [{bar:<24}] {100 * frac:5.1f}% {info}\033[K")
        elif int(10 * frac) > self._tenths:
            self._tenths = int(10 * frac)
            self.stream.write(f"{self.label} {100 * frac:5.1f}% {info}\n")
        else:
            return
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class AggFigures:
    """``subplots``/``close`` like pyplot's, on figures with their own Agg canvas.

    Library code that draws PNGs uses this instead of ``matplotlib.pyplot`` so that it never
    switches the process's backend (a notebook keeps its own); matplotlib is looked up at call
    time (the core imports only the standard library at module level).

    Raises:
        ImportError: matplotlib is not installed (callers treat it as "no plot").
    """

    def __init__(self) -> None:
        import importlib
        self._figure = importlib.import_module("matplotlib.figure").Figure
        self._canvas = importlib.import_module("matplotlib.backends.backend_agg").FigureCanvasAgg

    def subplots(self, *args, figsize=None, **kwargs):
        fig = self._figure(figsize=figsize)
        self._canvas(fig)
        return fig, fig.subplots(*args, **kwargs)

    def close(self, fig) -> None:
        """Nothing to release: the figure is not registered with pyplot."""
