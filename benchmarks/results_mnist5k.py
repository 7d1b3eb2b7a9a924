"""Regenerate the MNIST-5k table of docs/results.md (section "Deep: MNIST-5k").

Runs ``hessbatch train`` for every method of the paper's table (BL at B0 and at B_max, FB, GG,
ABS, ABSA) and the two ablations the reviewers asked for (softplus instead of ReLU; random
signs instead of FGSM), for several seeds, then prints the aggregated tables in Markdown.
Each run writes ``runs/mnist5k/<name>/seed<k>/metrics.json``; finished runs are not redone, so
an interrupted regeneration continues where it stopped.

Run:  python benchmarks/results_mnist5k.py [--seeds 0,1,2] [--jobs 2] [--out runs/mnist5k]
      python benchmarks/results_mnist5k.py --table-only     # aggregate what is there

On two CPU cores, with one torch thread per run and two runs at a time, the whole table (30
runs of 20 epochs) takes about half an hour.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The common recipe: small CNN, SGD momentum 0.9, weight decay 5e-4, 20 epochs, lr 0.05 at
# B0 = 128, decayed by 0.2 after epochs 10 and 15; B_max = 2048 (half the training set);
# ABS/ABSA check the eigenvalue every 2000 samples (half an epoch, 40 checks in a run: the
# paper's C1 ran 90 checks in 90 epochs), Hessian batch 128, at most 10 HVPs (Lanczos).
COMMON = ["--model", "cnn", "--data", "mnist5k", "--epochs", "20", "--lr", "0.05",
          "--batch-size", "128", "--max-batch", "2048", "--decay-epochs", "10,15",
          "--decay-factor", "0.2", "--check-every", "2000", "--hessian-batch", "128",
          "--max-hvp", "10", "--threads", "1", "--quiet"]

RUNS: dict[str, list[str]] = {
    "BL B0": ["--method", "bl", "--max-batch", "128"],
    "BL Bmax": ["--method", "bl", "--batch-size", "2048"],
    "FB": ["--method", "fb"],
    "GG": ["--method", "gg"],
    "ABS": ["--method", "abs"],
    "ABSA": ["--method", "absa"],
    "ABSA random": ["--method", "absa", "--adversary", "random"],
    "BL B0 softplus": ["--method", "bl", "--max-batch", "128", "--activation", "softplus"],
    "ABS softplus": ["--method", "abs", "--activation", "softplus"],
    "ABSA softplus": ["--method", "absa", "--activation", "softplus"],
}
MAIN = ["BL B0", "BL Bmax", "FB", "GG", "ABS", "ABSA"]
ABLATIONS = ["ABSA", "ABSA random", "BL B0", "BL B0 softplus", "ABS", "ABS softplus",
             "ABSA softplus"]


def folder(out: Path, name: str, seed: int) -> Path:
    return out / name.replace(" ", "_") / f"seed{seed}"


def finished(path: Path) -> bool:
    try:
        return bool(json.loads((path / "metrics.json").read_text())["finished"])
    except (OSError, ValueError, KeyError):
        return False


def train(out: Path, name: str, seed: int) -> tuple[str, int, float, int]:
    path = folder(out, name, seed)
    if finished(path):
        return name, seed, 0.0, 0
    path.mkdir(parents=True, exist_ok=True)
    lock = path / ".running"
    try:  # another regeneration already runs it (delete a stale .running after a crash)
        lock.touch(exist_ok=False)
    except FileExistsError:
        return name, seed, 0.0, -1
    try:
        return _train(path, name, seed)
    finally:
        lock.unlink(missing_ok=True)


def _train(path: Path, name: str, seed: int) -> tuple[str, int, float, int]:
    # later options win in argparse, so a run's own options override the common ones
    # --overwrite: the folder holds this script's .running lock, and an unfinished run from
    # an earlier attempt is started again from scratch (finished ones are skipped above)
    cmd = [sys.executable, "-m", "hessbatch.cli", "train", *COMMON, *RUNS[name],
           "--seed", str(seed), "--out", str(path), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / "log.txt").write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
    return name, seed, time.perf_counter() - t0, proc.returncode


def load(out: Path, name: str, seeds: list[int]) -> list[dict]:
    docs = []
    for s in seeds:
        p = folder(out, name, s) / "metrics.json"
        if p.is_file():
            doc = json.loads(p.read_text())
            if doc.get("finished"):
                docs.append(doc)
    return docs


def fmt_mean(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(out: Path, names: list[str], seeds: list[int]) -> str:
    base = load(out, "BL B0", seeds)
    base_updates = statistics.mean(d["summary"]["updates"] for d in base) if base else None
    lines = ["| run | test accuracy % (mean ± sd) | per seed | updates | fewer than BL B0 | "
             "largest B | eigenvalues | time train / eig / adv s |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        docs = load(out, name, seeds)
        if not docs:
            lines.append(f"| {name} | (not run) | | | | | | |")
            continue
        acc = [100 * d["summary"]["test_accuracy"] for d in docs]
        upd = [d["summary"]["updates"] for d in docs]
        big = sorted({d["summary"]["largest_batch"] for d in docs})
        eig = [d["summary"]["eigenvalues"] for d in docs]
        tt = [d["summary"][k] for k in ("time_train", "time_eigenvalue", "time_adversarial")
              for d in docs]
        n = len(docs)
        times = " / ".join(f"{statistics.mean(tt[i * n:(i + 1) * n]):.0f}" for i in range(3))
        lines.append(
            f"| {name} | {fmt_mean(acc)} | {', '.join(f'{a:.1f}' for a in acc)} | "
            f"{statistics.mean(upd):.0f} | "
            f"{'-' if base_updates is None else f'{base_updates / statistics.mean(upd):.2f}x'}"
            f" | {', '.join(map(str, big))} | "
            f"{statistics.mean(eig):.0f} | {times} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--out", type=Path, default=Path("runs/mnist5k"), help="output folder")
    p.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    p.add_argument("--table-only", action="store_true", help="aggregate existing runs only")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.only.split(",") if args.only else list(RUNS)
    if not args.table_only:
        # the main table first, seeds outermost: a partial regeneration gives whole rows early
        order = [n for n in MAIN if n in names] + [n for n in names if n not in MAIN]
        main_part = [n for n in order if n in MAIN]
        jobs = ([(n, s) for s in seeds for n in main_part]
                + [(n, s) for s in seeds for n in order if n not in MAIN])
        started = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            for name, seed, wall, rc in pool.map(lambda j: train(args.out, *j), jobs):
                status = {0: "ok", -1: "skipped: running elsewhere"}.get(
                    rc, f"FAILED (exit {rc}, see log.txt)")
                print(f"{name:16s} seed {seed}: {wall:6.1f} s {status}", file=sys.stderr,
                      flush=True)
        print(f"all runs: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print("Main table (the paper's format)\n")
    print(table(args.out, MAIN, seeds))
    print("\nAblations: FGSM vs random signs, ReLU vs softplus\n")
    print(table(args.out, ABLATIONS, seeds))


if __name__ == "__main__":
    main()
