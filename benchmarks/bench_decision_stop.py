"""The decision threshold in whole ABS runs on MNIST-5k: stop on against stop off (issue 22).

Runs the MNIST-5k ABS recipe of docs/results.md (small CNN, ReLU, SGD momentum 0.9, weight decay
5e-4, lr 0.05 at B0 = 128 decayed by 0.2 after epochs 10 and 15 when the run is that long,
B_max 2048, a check every 2000 samples, Hessian batch 128) with the trainer's DEFAULT eigenvalue
function (Lanczos, 10 HVPs + ``extend_hvp`` 10 on deciding checks, tol 1e-2, cold starts), twice
per seed: ``decision_stop=True`` (the default: the solver stops once "no drop" is certain) and
``decision_stop=False`` (the full-precision solver, CLI ``--full-eigenvalue``). Same seed, same
data split, same initial weights, same Hessian batches.

Per run it reports HVPs per check over the whole run (drops and the first check included, from
``EpochMetrics.checks``), the check statuses, the batch-size schedule (per epoch: largest B,
B decided for the next update, updates so far) and whether it equals the full-rule run's of the same
seed, the final test accuracy, the wall time of the run and of its eigenvalues, and the
eigenvalue time over the training time (``time_train``: forward, backward, update) of the run,
the overhead over BL of this recipe (two checks per epoch, batches growing).

With ``--warm`` a third run per seed uses the decision stop with ``warm_start=True`` (the
warm-start guard on, as in the trainer); its schedule is compared with the full-rule run's too.

Run:  python benchmarks/bench_decision_stop.py [--seeds 0,1,2] [--epochs 8] [--warm] [--out DIR]

(one torch thread; a run already in ``DIR`` is read back, so seeds can run in separate
processes.) The overhead over BL at 4,000 samples per epoch is
``python benchmarks/bench_deep_trainer.py --sizes 4000 --repeats 3``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hessbatch import Scheduler
from hessbatch.deep import Trainer

from _mnist5k_abs import mnist5k_abs  # a sibling module of benchmarks/


def one_run(seed: int, stop: bool, epochs: int, warm: bool = False) -> dict:
    """One default-trainer ABS run on MNIST-5k; ``stop``: ``decision_stop``; ``warm``:
    ``warm_start`` (default False, as the trainer's)."""
    bundle, model, opt, cfg = mnist5k_abs(seed, epochs)
    tr = Trainer(model, opt, F.cross_entropy, bundle.train, Scheduler(cfg),
                 test_data=bundle.test, hessian_batch_size=128, seed=seed,
                 decision_stop=stop, warm_start=warm)
    t0 = time.perf_counter()
    hist = tr.run()
    wall = time.perf_counter() - t0
    return {"seed": seed, "decision_stop": stop, "warm_start": warm, "epochs": epochs,
            "wall": wall,
            "time_eigenvalue": sum(m.time_eigenvalue for m in hist),
            "time_train": sum(m.time_train for m in hist),
            "accuracy": hist[-1].test_accuracy,
            "schedule": [[m.batch_size, m.next_batch_size, m.updates] for m in hist],
            "checks": [c for m in hist for c in m.checks],
            "not_converged": sum(m.eigenvalues_not_converged for m in hist)}


def summary(run: dict) -> dict:
    checks = run["checks"]
    status = {s: sum(c["status"] == s for c in checks)
              for s in ("lower_bound", "converged", "not_converged")}
    return {"checks": len(checks), "hvps": sum(c["hvps"] for c in checks),
            "per_check": statistics.mean(c["hvps"] for c in checks), **status}


def fmt_schedule(sched: list) -> str:
    """Batch size per epoch, run-length encoded: '128x3, 256x2, ...'."""
    out, prev, n = [], None, 0
    for b, _, _ in sched:
        if b == prev:
            n += 1
        else:
            if prev is not None:
                out.append(f"{prev}x{n}")
            prev, n = b, 1
    out.append(f"{prev}x{n}")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--warm", action="store_true",
                    help="also run the decision stop with warm_start=True")
    ap.add_argument("--out", type=Path, default=Path("runs/decision_stop"))
    args = ap.parse_args()
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1, got {args.epochs}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers like 0,1,2, got "
                         f"{args.seeds!r}") from None
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"1 thread")
    print(f"command: python benchmarks/bench_decision_stop.py --seeds {args.seeds} "
          f"--epochs {args.epochs}{' --warm' if args.warm else ''}")
    print("| seed | solver | checks | HVPs (run) | HVPs/check | lower bounds | converged | "
          "not converged | B per epoch | same schedule | test acc. | wall s | eig. s | "
          "eig. / train |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    variants = {"stop": (True, False), "full": (False, False)}  # name: (decision_stop, warm)
    if args.warm:
        variants["stop_warm"] = (True, True)
    label = {"stop": "decision stop", "full": "full (--full-eigenvalue)",
             "stop_warm": "decision stop, warm start"}
    per_check = {k: [] for k in variants}
    same_all = True
    for seed in seeds:
        runs = {}
        for name, (stop, warm) in variants.items():
            path = args.out / f"seed{seed}_epochs{args.epochs}_{name}.json"
            if path.is_file():
                runs[name] = json.loads(path.read_text())
            else:
                runs[name] = one_run(seed, stop, args.epochs, warm)
                path.write_text(json.dumps(runs[name]))
        for name in variants:
            r, s = runs[name], summary(runs[name])
            same = r["schedule"] == runs["full"]["schedule"]
            same_all &= same
            per_check[name] += [c["hvps"] for c in r["checks"]]
            print(f"| {seed} | {label[name]} | "
                  f"{s['checks']} | {s['hvps']} | {s['per_check']:.2f} | {s['lower_bound']} | "
                  f"{s['converged']} | {s['not_converged']} | {fmt_schedule(r['schedule'])} | "
                  f"{'yes' if same else 'NO'} | {r['accuracy']:.4f} | {r['wall']:.1f} | "
                  f"{r['time_eigenvalue']:.1f} | "
                  f"{100 * r['time_eigenvalue'] / r['time_train']:.0f}% |", flush=True)
    print()
    for name, v in per_check.items():
        print(f"{label[name]}: {len(v)} checks, {statistics.mean(v):.2f} HVPs per check")
    print(f"same batch-size schedule in every run: {'yes' if same_all else 'NO'}")


if __name__ == "__main__":
    main()
