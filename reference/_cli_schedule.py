"""``hessbatch schedule``: replay an eigenvalue trace through a method and print the schedule.

No model is trained: training is simulated as shuffled epochs of ``--samples-per-epoch``
samples (the last batch of an epoch may be short), and each time the scheduler asks for an
eigenvalue the next value of the trace is reported. What comes out is the exact sequence of
batch sizes, learning rates and adversarial fractions the method would use.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from ._cli_common import add_scheduler_arguments, config_from_args, format_table
from ._scheduler import Scheduler

DESCRIPTION = """\
Replay an eigenvalue trace through a method and print the resulting schedule, one row per
epoch: batch size, learning rate, adversarial fraction, the eigenvalues reported and what the
scheduler did with them. No model is trained.

A trace is a JSON file (a list of numbers, or an object with an "eigenvalues" list) or a CSV
file (a column named "eigenvalue", or a single column of numbers). Without a trace, --demo is
used: a built-in trace that falls, plateaus and falls again, so that both growth rules fire.

example:  hessbatch schedule --demo --method absa --max-batch 2048 --patience 3"""


def demo_trace(n: int = 60) -> list[float]:
    """A deterministic eigenvalue trace: a fast drop, a long plateau, then a slow decline."""
    values = []
    for k in range(n):
        if k < 4:
            lam = 40.0 * 0.45 ** k          # early training: curvature falls fast
        elif k < 16:
            lam = 3.6 + 0.2 * math.sin(k)   # plateau: only the patience rule can grow B
        else:
            lam = 3.6 * 0.8 ** (k - 15)     # late training: flatter and flatter
        values.append(round(lam, 6))
    return values


def load_eigenvalues(path: str | Path) -> list[float]:
    """Read an eigenvalue trace from JSON or CSV (see the command's description).

    Raises:
        ValueError: an unreadable file, or a value that is not a finite number >= 0, named by
            its position.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            if "eigenvalues" not in data:
                raise ValueError(f"{path}: a JSON object needs an 'eigenvalues' list; "
                                 f"found keys {sorted(data)}")
            data = data["eigenvalues"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of eigenvalues, got {type(data).__name__}")
        raw = [(f"item {i}", v) for i, v in enumerate(data)]
    else:
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if any(c.strip() for c in r)]
        if not rows:
            raise ValueError(f"{path}: empty file")
        col, start = 0, 0
        header = [c.strip().lower() for c in rows[0]]
        if "eigenvalue" in header:
            col, start = header.index("eigenvalue"), 1
        elif len(header) > 1:
            raise ValueError(f"{path}: several columns {rows[0]} but none named 'eigenvalue'")
        raw = [(f"line {i + 1}", r[col] if col < len(r) else "") for i, r in
               enumerate(rows) if i >= start]
    out = []
    for where, value in raw:
        try:
            lam = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {where}: {value!r} is not a number") from None
        if isinstance(value, bool) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"{path}: {where}: eigenvalue must be a finite number >= 0, "
                             f"got {value!r}")
        out.append(lam)
    if not out:
        raise ValueError(f"{path}: the trace holds no eigenvalue")
    return out


def replay_schedule(config, eigenvalues: list[float]) -> tuple[list[dict], str | None]:
    """Simulate ``config.epochs`` shuffled epochs, feeding ``eigenvalues`` when asked.

    Returns:
        (rows, note): one dict per epoch, and a note if the trace ran out before the end
        (the rows then stop at the last complete epoch).
    """
    sch = Scheduler(config)
    values = iter(eigenvalues)
    rows = []
    for _ in range(config.epochs):
        d = sch.decision
        start = dict(batch=d.batch_size, lr=d.lr, adv=d.adv_count)
        seen, reported, events = 0, [], []
        while seen < config.samples_per_epoch:
            n = min(d.batch_size, config.samples_per_epoch - seen)
            d = sch.step(n)
            seen += n
            if d.eigenvalue_due:
                lam = next(values, None)
                if lam is None:
                    return rows, (f"the trace ran out after {len(eigenvalues)} eigenvalues, "
                                  f"during epoch {d.epoch + 1}")
                d = sch.eigenvalue(lam)
                reported.append(lam)
                if "grow" in d.reason:
                    events.append(f"{d.reason.split(': ')[1].split(',')[0]} -> B={d.batch_size}")
        d = sch.end_epoch()
        if ":" in d.reason:
            events.append(d.reason.split(": ", 1)[1])
        rows.append(dict(epoch=d.epoch, updates=d.updates, samples=d.samples_seen,
                         batch_start=start["batch"], batch_end=d.batch_size,
                         lr_start=start["lr"], lr_next=d.lr, adv_start=start["adv"],
                         eigenvalues=reported, events=events))
    return rows, None


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", nargs="?", default=None,
                        help="eigenvalue trace, JSON or CSV (default: the built-in demo)")
    parser.add_argument("--demo", action="store_true",
                        help="use the built-in demo trace (the default when no file is given)")
    parser.add_argument("--samples-per-epoch", type=int, default=50_000,
                        help="N, training samples per epoch (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=90,
                        help="epochs to simulate (default %(default)s)")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="output format (default %(default)s)")
    add_scheduler_arguments(parser, decay_epochs="30,60,80", decay_factor=0.2)


def run(args: argparse.Namespace) -> int:
    if args.trace is not None and args.demo:
        raise ValueError("give either a trace file or --demo, not both")
    eigenvalues = demo_trace() if args.trace is None else load_eigenvalues(args.trace)
    config = config_from_args(args, samples_per_epoch=args.samples_per_epoch,
                              epochs=args.epochs)
    rows, note = replay_schedule(config, eigenvalues)
    if args.format == "json":
        json.dump({"config": config.to_dict(), "epochs": rows, "note": note}, sys.stdout,
                  indent=1)
        print()
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["epoch", "updates", "samples", "batch_start", "batch_end",
                         "lr_start", "lr_next", "adv_start", "eigenvalues", "events"])
        for r in rows:
            writer.writerow([r["epoch"], r["updates"], r["samples"], r["batch_start"],
                             r["batch_end"], repr(r["lr_start"]), repr(r["lr_next"]),
                             r["adv_start"], " ".join(repr(v) for v in r["eigenvalues"]),
                             "; ".join(r["events"])])
    else:
        source = "built-in demo trace" if args.trace is None else args.trace
        print(f"method {config.method}, B0 {config.batch_size}, B_max {config.max_batch_size}, "
              f"N {config.samples_per_epoch}, eigenvalues from {source}")
        table = [(r["epoch"], r["updates"], r["batch_start"], r["lr_start"], r["adv_start"],
                  " ".join(f"{v:.4g}" for v in r["eigenvalues"]), "; ".join(r["events"]))
                 for r in rows]
        print(format_table(["epoch", "updates", "B", "lr", "adv/batch", "eigenvalues",
                            "events"], table))
        if rows:
            last = rows[-1]
            print(f"largest batch {max(r['batch_end'] for r in rows)}, "
                  f"{last['updates']} parameter updates")
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0
