"""The ``hessbatch`` console script: a thin dispatcher over lazily imported subcommands.

Each subcommand lives in its own module, which defines ``build_parser(parser)`` and
``run(args) -> int``. Only the chosen module is imported, so ``hessbatch --help`` and
``hessbatch schedule`` work with the standard library alone, and a subcommand whose backend is
not installed says which extra to install instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from ._cli_common import given_options
from ._outputs import release_locks
from ._scheduler import SchedulerError

# name -> (module, extra that provides its dependencies, one-line help)
COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "mushroom": ("hessbatch.convex._cli_mushroom", "convex",
                 "the main job: GD, SGD, ABS and ABSA on the UCI mushroom data (paper, App. A)"),
    "theory": ("hessbatch.convex._cli_theory", "convex",
               "check Theorem 1's bound: exact on least squares, Monte-Carlo on mushroom"),
    "train": ("hessbatch.deep._cli_train", "deep",
              "train a PyTorch model with BL, FB, GG, ABS or ABSA"),
    "eig": ("hessbatch.deep._cli_eig", "deep",
            "top Hessian eigenvalue of a `hessbatch train` checkpoint or of your own model"),
    "schedule": ("hessbatch._cli_schedule", None,
                 "replay an eigenvalue trace through a method and print its schedule"),
    "simulate": ("hessbatch._cli_simulate", None,
                 "predict a schedule's wall-clock time on P workers (paper's App. C cost "
                 "model); --calibrate measures this machine"),
}
COMMANDS["study"] = ("hessbatch.deep._cli_study", "deep",
                     "Hessian spectrum, trace and adversarial robustness against batch size "
                     "(the precursor study, NeurIPS 2018)")

_DESCRIPTION = """\
Adaptive batch size SGD (ABS/ABSA): grow the batch, and the learning rate with it, when the top
eigenvalue of the Hessian says the loss landscape got flatter.

Run `hessbatch COMMAND --help` for the options of a command."""


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hessbatch", description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"hessbatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints --help/--version, or an error naming the bad command
        return 2
    name, rest = argv[0], argv[1:]
    _tolerant_streams()
    module_name, extra, text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a dependency"
        if missing == module_name:
            print(f"hessbatch {name}: this installation has no {module_name}; reinstall "
                  "hessbatch", file=sys.stderr)
            return 2
        if missing.startswith("hessbatch"):
            raise
        hint = f"pip install 'hessbatch[{extra}]'" if extra else "reinstall hessbatch"
        print(f"hessbatch {name}: needs {missing!r}, which is not installed; {hint}",
              file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog=f"hessbatch {name}", description=getattr(module, "DESCRIPTION", text),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    module.build_parser(parser)
    args = parser.parse_args(rest)
    args._given = given_options(parser, rest)  # typed options, even those equal to the default
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"\nhessbatch {name}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, SchedulerError) as exc:
        # Bad input (a file, an option out of range) gets its message, not a traceback;
        # HESSBATCH_DEBUG=1 shows the traceback for bug reports.
        if os.environ.get("HESSBATCH_DEBUG"):
            raise
        print(f"hessbatch {name}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        release_locks()  # the output folder's lock: the command is over


def _tolerant_streams() -> None:
    """Print what the terminal cannot encode as escapes instead of failing.

    With ``PYTHONIOENCODING=ascii`` (or a C locale) a non-ASCII ``--out`` in a message would
    raise UnicodeEncodeError *after* the run wrote everything; ``\\xe9`` is printed instead.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "") == "strict":
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # pragma: no cover - a closed or odd stream
                pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
