"""Mushroom, several seeds: SGD's updates against ABS's with independent sample streams.

    python benchmarks/results_mushroom_seeds.py [--seeds 0,1,2,3,4,5,6,7] [--epochs 500]
        [--out runs/mushroom-seeds]

At one seed, ``hessbatch mushroom`` gives SGD and ABS the same batch stream: the driver draws
i.i.d. rows from one generator per seed, and 8 draws of 100 rows are the same rows as 4 draws of
200 or one of 800. Its SGD/ABS comparison is therefore *paired* (same samples, only the grouping
into updates differs), which removes most of the sampling noise from the ratio. This script
measures the ratio with *independent* streams as well: for each seed s, ABS runs with stream
seed s and each SGD run with stream seed s + 10000 (``numpy.random.SeedSequence`` of distinct
integers gives independent streams), on the same training split (split seed 0, 6905 rows,
lam = 1e-3, B0 = 100, B_max = 800, the defaults of ``hessbatch mushroom``; the full-data
Hessian for ABS's checks, as in its ``abs`` row).

Two comparisons, each in updates to every target gap F - F* (absolute):

* **own limit** (the lead comparison): SGD at batch 100 with Theorem 1's largest step for its
  own batch, eta0 = 1/(L (M_G + 100)), against ABS with the largest for B_max = 800,
  eta0 = 1/(L (M_G + 800)): each method at the step size the theorem allows it;
* **shared eta0**: both at eta0 = 1/(L (M_G + 800)), so that SGD's lr is ABS's starting lr (the
  table of ``hessbatch mushroom``); given independent and paired (SGD at stream seed s).

Prints per-seed rows and mean, sample standard deviation, min and max of each ratio
``SGD updates / ABS updates``; with ``--out`` writes ``seeds.json`` (every run's counts).
Deterministic for given seeds on one machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

from hessbatch import SchedulerConfig
from hessbatch.convex import LogisticRegression, load_mushroom, train
from hessbatch.theory import max_eta0

OFFSET = 10_000   # SGD's stream seed is s + OFFSET: independent of ABS's stream s


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7",
                   help="comma-separated stream seeds, at least 5 (default %(default)s)")
    p.add_argument("--epochs", type=int, default=500, help="epochs of every run (default 500)")
    p.add_argument("--targets", default="1e-3,1e-4", help="gaps F - F* (default %(default)s)")
    p.add_argument("--split-seed", type=int, default=0, help="train/validation split (default 0)")
    p.add_argument("--lam", type=float, default=1e-3, help="L2 strength (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=100, help="B0 (default 100)")
    p.add_argument("--max-batch", type=int, default=800, help="ABS's B_max (default 800)")
    p.add_argument("--condition", choices=("paper", "variance"), default="paper",
                   help="Theorem 1's step-size convention for both eta0 (docs/theory.md): paper "
                        "= 1/(L (M_G + B)), variance = 1/(L (M_V + B)); the 8-seed figures in "
                        "docs/results.md were made with variance (default %(default)s)")
    p.add_argument("--out", default=None, help="write seeds.json here")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        args.targets = [float(t) for t in args.targets.split(",") if t.strip()]
    except ValueError as exc:
        p.error(f"--seeds and --targets take comma-separated numbers: {exc}")
    if len(args.seeds) < 5 or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds needs at least 5 distinct seeds for a spread, got {args.seeds}")
    if any(s < 0 or s >= OFFSET for s in args.seeds):
        p.error(f"--seeds must lie in [0, {OFFSET}) so that SGD's streams (s + {OFFSET}) "
                f"differ from every ABS stream, got {args.seeds}")
    return args


def _counts(run, f_star, targets) -> dict:
    out = {"updates": run.updates, "samples_seen": run.samples_seen,
           "hvp_rows": run.total_hvp_rows, "final_gap": float(run.loss[-1] - f_star)}
    for t in targets:
        out[f"updates_to_{t:g}"] = run.updates_to_gap(f_star, t)
        out[f"samples_to_{t:g}"] = run.samples_to_gap(f_star, t)
    return out


def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values),
            "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> int:
    args = _parse(argv)
    ds = load_mushroom(seed=args.split_seed)
    model = LogisticRegression(ds.X_train, ds.y_train, args.lam)
    n, C = model.n_samples, model.constants()
    f_star = model.solve().f_star
    b0, bmax = args.batch_size, args.max_batch
    eta_shared = max_eta0(C, bmax, args.condition)
    eta_own = max_eta0(C, b0, args.condition)

    def cfg(method, eta, b_max):
        return SchedulerConfig(method=method, lr=eta * b0, batch_size=b0, max_batch_size=b_max,
                               samples_per_epoch=n, epochs=args.epochs)

    jobs = {"abs": (cfg("abs", eta_shared, bmax), 0),
            "sgd_shared_paired": (cfg("bl", eta_shared, b0), 0),
            "sgd_shared": (cfg("bl", eta_shared, b0), OFFSET),
            "sgd_own": (cfg("bl", eta_own, b0), OFFSET)}
    print(f"mushroom, split seed {args.split_seed}, lam = {args.lam:g}, L = {C.L:.6g}: "
          f"{args.condition} condition: eta0 shared = {eta_shared:.6g} (B = {bmax}), SGD's "
          f"own limit = {eta_own:.6g} (B = {b0}); {args.epochs} epochs; seeds {args.seeds}",
          flush=True)
    t_start = time.perf_counter()
    per_seed = []
    for s in args.seeds:
        rec = {"seed": s}
        for name, (c, off) in jobs.items():
            rec[name] = _counts(train(model, c, seed=s + off), f_star, args.targets)
        per_seed.append(rec)
        print(f"  seed {s} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr,
              flush=True)

    comparisons = {"own limit (independent)": "sgd_own", "shared eta0 (independent)":
                   "sgd_shared", "shared eta0 (paired)": "sgd_shared_paired"}
    summary = {}
    print()
    for t in args.targets:
        key = f"updates_to_{t:g}"
        print(f"updates to F - F* <= {t:g}")
        head = f"{'seed':>5} {'ABS':>7} {'SGD own':>8} {'SGD shared':>11} {'paired':>7}" \
               f" {'own/ABS':>8} {'shared/ABS':>11} {'paired/ABS':>11}"
        print(head)
        for rec in per_seed:
            a = rec["abs"][key]
            cells = [rec[j][key] for j in ("sgd_own", "sgd_shared", "sgd_shared_paired")]
            ratios = ["-" if (a is None or c is None) else f"{c / a:.3f}" for c in cells]
            print(f"{rec['seed']:>5} {a if a is not None else '-':>7} {cells[0] or '-':>8} "
                  f"{cells[1] or '-':>11} {cells[2] or '-':>7} {ratios[0]:>8} {ratios[1]:>11} "
                  f"{ratios[2]:>11}")
        for label, job in comparisons.items():
            vals = [rec[job][key] / rec["abs"][key] for rec in per_seed
                    if rec[job][key] is not None and rec["abs"][key] is not None]
            missing = len(per_seed) - len(vals)
            if len(vals) >= 2:
                sm = _summary(vals)
                summary[f"{label}, {key}"] = dict(sm, missing=missing)
                print(f"  SGD/ABS updates, {label}: mean {sm['mean']:.3f}, sd {sm['sd']:.3f}, "
                      f"min {sm['min']:.3f}, max {sm['max']:.3f} over {sm['n']} seeds"
                      + (f" ({missing} did not reach the target)" if missing else ""))
            else:
                print(f"  SGD/ABS updates, {label}: target reached by both in {len(vals)} "
                      f"of {len(per_seed)} seeds")
        print()
    elapsed = time.perf_counter() - t_start
    print(f"{elapsed:.0f} s wall on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; numpy {np.__version__}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "seeds.json")
        data = {"command": "python benchmarks/results_mushroom_seeds.py " + " ".join(
                    sys.argv[1:] if argv is None else argv),
                "split_seed": args.split_seed, "lam": args.lam, "L": C.L, "f_star": f_star,
                "eta0_shared": eta_shared, "eta0_sgd_own": eta_own, "epochs": args.epochs,
                "sgd_stream_offset": OFFSET, "per_seed": per_seed, "summary": summary,
                "seconds": elapsed}
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.replace(path + ".tmp", path)
        print(f"wrote {path}")
    return 0 if all(math.isfinite(r["abs"]["final_gap"]) for r in per_seed) else 1


if __name__ == "__main__":
    sys.exit(main())
