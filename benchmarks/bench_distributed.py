"""Data parallelism on one machine: `hessbatch train` on 1 process against 2 (gloo), per epoch.

Three set-ups train the same run (same seed, same schedule, same numbers up to rounding):

* ``1 proc x 1 thread``: the single-process baseline;
* ``1 proc x 2 threads``: the same cores as two processes, used by torch's intra-op threads;
* ``2 procs x 1 thread``: ``--nproc 2``, each rank half of every logical batch, gradients
  all-reduced by DDP over gloo, HVPs all-reduced by hand.

Each run's metrics.json gives, per epoch, the time split measured inside the trainer (the
slowest rank's): compute (forward/backward/update), gradient all-reduce, eigenvalue (and the
part of it in all-reduces), adversarial generation, evaluation. Wall time of the whole
command is measured too (it includes starting the processes). Runs alternate between the
set-ups so that background load hits all of them alike; medians over ``--repeats``.

What a 2-core machine can show: that the distributed run is correct (the tests) and what its
communication costs relative to compute at this size. It cannot show scaling: two processes
on two cores that other jobs share compete with each other and with those jobs, and gloo's
all-reduce goes through the loopback interface, not a network. A speed-up figure from this
machine is not a prediction for N GPUs.

Run:  python benchmarks/bench_distributed.py [--repeats 3] [--epochs 2] [--method absa]
      [--model cnn] [--data mnist5k] [--batch-size 128] [--micro-batch 64] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUPS = (("1 proc x 1 thread", 1, 1), ("1 proc x 2 threads", 1, 2),
          ("2 procs x 1 thread", 2, 1))
FIELDS = (("compute", "time_train"), ("grad comm", "time_grad_comm"),
          ("eigenvalue", "time_eigenvalue"), ("eig comm", "time_eigenvalue_comm"),
          ("adversarial", "time_adversarial"), ("eval", "time_eval"))


def one_run(args, nproc: int, threads: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "hessbatch.cli", "train", "--method", args.method,
           "--model", args.model, "--data", args.data, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--micro-batch", str(args.micro_batch),
           "--max-batch", str(args.max_batch), "--check-every", str(args.check_every),
           "--seed", str(args.seed), "--threads", str(threads), "--nproc", str(nproc),
           "--quiet", "--out", str(out), "--checkpoint-every", "0"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    hist = json.loads((out / "metrics.json").read_text())["history"]
    row = {"wall": wall}
    for label, key in FIELDS:
        row[label] = sum(m.get(key, 0.0) for m in hist) / len(hist)
    row["epoch"] = sum(row[label] for label, key in FIELDS if key not in
                       ("time_eigenvalue_comm",))
    row["test_accuracy"] = hist[-1]["test_accuracy"]
    row["updates"] = hist[-1]["updates"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs per set-up (median)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--method", default="absa")
    p.add_argument("--model", default="cnn")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--check-every", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the medians to this JSON file")
    args = p.parse_args(argv)
    rows: dict[str, list[dict]] = {name: [] for name, _, _ in SETUPS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, nproc, threads in SETUPS:
                out = Path(tmp) / f"{nproc}x{threads}-{rep}"
                rows[name].append(one_run(args, nproc, threads, out))
                print(f"repeat {rep + 1}/{args.repeats} {name}: "
                      f"{rows[name][-1]['wall']:.1f} s wall", file=sys.stderr)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for name, rs in rows.items()}
    base = med[SETUPS[0][0]]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end; python {platform.python_version()}")
    print(f"run: {args.method} {args.model} on {args.data}, {args.epochs} epochs, B0 "
          f"{args.batch_size}, micro-batch {args.micro_batch}; medians of {args.repeats}; "
          "seconds per epoch (slowest rank)\n")
    head = ["set-up", "compute", "grad comm", "eigenvalue", "(eig comm)", "adversarial",
            "eval", "epoch", "epoch vs 1x1", "wall s", "test acc", "updates"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, _, _ in SETUPS:
        m = med[name]
        print(f"| {name} | {m['compute']:.3f} | {m['grad comm']:.3f} | {m['eigenvalue']:.3f} | "
              f"{m['eig comm']:.3f} | {m['adversarial']:.3f} | {m['eval']:.3f} | "
              f"{m['epoch']:.3f} | {m['epoch'] / base['epoch']:.2f} | {m['wall']:.1f} | "
              f"{m['test_accuracy']:.4f} | {m['updates']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "medians": med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
