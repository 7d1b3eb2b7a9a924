"""Warm vs cold starts of the eigenvalue solver in an ABS run on MNIST-5k (issue 11).

Runs the MNIST-5k ABS recipe of docs/results.md (small CNN, ReLU, SGD momentum 0.9, weight decay
5e-4, 20 epochs, lr 0.05 at B0 = 128 decayed by 0.2 after epochs 10 and 15, B_max 2048, a check
every 2000 samples, Hessian batch 128, Lanczos, at most 10 HVPs, tol 1e-2) twice per seed: with
the default warm start and with ``warm_start=False`` (a cold random start at every check, as
before). At every check it also computes a reference eigenvalue on the same Hessian batch
(Lanczos, 40 products, no early stop, cold start) to measure each solver's error.

Run:  python benchmarks/bench_warm_start.py [--seeds 0] [--epochs 20] [--out runs/warm_start]

Prints a Markdown table (mean HVPs per check, error against the reference, time in the
eigenvalues, final accuracy, updates) and writes one JSON file per run.

Part ``replay`` (issue 22): the decision threshold and the warm-start guard on recorded checks.
One ABS run per seed with the default trainer (cold starts, full rule) records, at each check,
the model's weights, the Hessian batch, the solver seed and the scheduler's threshold
``lam_ref / alpha`` (None at the first check); then every check is solved again, on the same
weights and batch, by each variant (cold / warm chained from the previous check; with or without
threshold; warm guard on or off) and by a reference (Lanczos, 40 products, no early stop). It
prints HVPs per check and how many decisions ("value <= threshold") differ from the
reference's. No training loop is changed: the runs are the default solver's.

Run:  python benchmarks/bench_warm_start.py --part replay --seeds 0,1 --epochs 8
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
from hessbatch.deep import Trainer, WarmStartEigenvalue, top_eigenvalue

from _mnist5k_abs import mnist5k_abs  # a sibling module of benchmarks/


class Recorder:
    """Wraps the trainer's eigenvalue function; records each check and a reference value."""

    def __init__(self, inner: WarmStartEigenvalue, ref_hvp: int):
        self.inner, self.ref_hvp, self.rows = inner, ref_hvp, []

    def __call__(self, model, loss_fn, batches, *, seed, **kw):
        # kw: what the loop passes on (issue 22: threshold=lam_ref / alpha, once wired)
        t0 = time.perf_counter()
        r = self.inner(model, loss_fn, batches, seed=seed, **kw)
        dt = time.perf_counter() - t0
        ref = top_eigenvalue(model, loss_fn, batches, max_hvp=self.ref_hvp, tol=0.0,
                             seed=seed + 1)
        self.rows.append({"value": r.value, "n_hvp": r.n_hvp, "converged": r.converged,
                          "status": r.status, "threshold": kw.get("threshold"),
                          "warm": r.warm, "reference": ref.value, "time": dt,
                          "history": list(r.history), "residuals": list(r.residuals)})
        return r

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def one_run(seed: int, warm: bool, epochs: int, ref_hvp: int) -> dict:
    bundle, model, opt, cfg = mnist5k_abs(seed, epochs)
    rec = Recorder(WarmStartEigenvalue(warm_start=warm), ref_hvp)
    tr = Trainer(model, opt, F.cross_entropy, bundle.train, Scheduler(cfg),
                 test_data=bundle.test, eigenvalue_fn=rec, hessian_batch_size=128, seed=seed)
    t0 = time.perf_counter()
    hist = tr.run()
    return {"seed": seed, "warm": warm, "checks": rec.rows, "wall": time.perf_counter() - t0,
            "accuracy": hist[-1].test_accuracy, "updates": hist[-1].updates,
            "final_batch": hist[-1].batch_size}


def summary(run: dict) -> dict:
    rows = run["checks"]
    # a lower bound (stopped above the threshold) is not an estimate of the value: no error
    err = [abs(r["value"] - r["reference"]) / abs(r["reference"]) for r in rows
           if r.get("status") != "lower_bound"] or [0.0]
    return {"checks": len(rows), "hvps": statistics.mean(r["n_hvp"] for r in rows),
            "median_err": statistics.median(err), "max_err": max(err),
            "within_1e-2": sum(e <= 1e-2 for e in err) / len(err),
            "eig_time": sum(r["time"] for r in rows), "accuracy": run["accuracy"],
            "updates": run["updates"], "final_batch": run["final_batch"]}


class _Snapshot:
    """The default eigenvalue function, recording what each check saw."""

    def __init__(self, scheduler):
        self.inner, self.scheduler, self.checks = WarmStartEigenvalue(
            warm_start=False, extend_hvp=10), scheduler, []

    def __call__(self, model, loss_fn, batches, *, seed):
        st, cfg = self.scheduler.state, self.scheduler.config
        thr = None if st.lam_ref is None else st.lam_ref / cfg.alpha
        r = self.inner(model, loss_fn, batches, seed=seed)
        self.checks.append({"state": {k: v.detach().clone() for k, v in
                                      model.state_dict().items()},
                            "batches": [(x.clone(), y.clone()) for x, y in batches],
                            "seed": seed, "threshold": thr, "value": r.value,
                            "n_hvp": r.n_hvp})
        return r

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def record(seed: int, epochs: int):
    bundle, model, opt, cfg = mnist5k_abs(seed, epochs)
    sch = Scheduler(cfg)
    snap = _Snapshot(sch)
    tr = Trainer(model, opt, F.cross_entropy, bundle.train, sch, eigenvalue_fn=snap,
                 hessian_batch_size=128, seed=seed)
    tr.run()
    return model, snap.checks


VARIANTS = {  # name: (warm, threshold, confirm_warm)
    "cold, full rule (before)": (False, False, True),
    "cold + threshold": (False, True, True),
    "warm + threshold, no guard": (True, True, False),
    "warm + threshold + guard": (True, True, True),
    "warm, full rule + guard": (True, False, True),
}


def replay(model, checks, ref_hvp: int) -> dict:
    rows = {k: [] for k in VARIANTS}
    vec = {k: None for k in VARIANTS}
    for c in checks:
        model.load_state_dict(c["state"])
        ref = top_eigenvalue(model, F.cross_entropy, c["batches"], max_hvp=ref_hvp, tol=0.0,
                             seed=c["seed"] + 1)
        thr = c["threshold"]
        for name, (warm, use_thr, guard) in VARIANTS.items():
            r = top_eigenvalue(model, F.cross_entropy, c["batches"], seed=c["seed"],
                               start=vec[name] if warm else None, confirm_warm=guard,
                               threshold=thr if use_thr else None, extend_hvp=10)
            vec[name] = r.vector
            decision = None if thr is None else (r.value <= thr)
            ref_decision = None if thr is None else (ref.value <= thr)
            rows[name].append({"n_hvp": r.n_hvp, "status": r.status,
                               "err": None if r.is_lower_bound else
                               abs(r.value - ref.value) / abs(ref.value),
                               "changed": decision != ref_decision,
                               "drop": bool(ref_decision), "first": thr is None})
    return rows


def main_replay(args) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, 1 thread")
    print(f"command: python benchmarks/bench_warm_start.py --part replay --seeds {args.seeds} "
          f"--epochs {args.epochs} --ref-hvp {args.ref_hvp}")
    allrows = {k: [] for k in VARIANTS}
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        path = args.out / f"replay_seed{seed}_epochs{args.epochs}.json"
        if path.is_file():  # a seed already replayed (e.g. by another process): reuse it
            rows = json.loads(path.read_text())
        else:
            t0 = time.perf_counter()
            model, checks = record(seed, args.epochs)
            rows = replay(model, checks, args.ref_hvp)
            path.write_text(json.dumps(rows))
            print(f"seed {seed}: {len(checks)} checks, recorded HVPs/check "
                  f"{statistics.mean(c['n_hvp'] for c in checks):.2f}, "
                  f"{sum(r['drop'] for r in rows['cold + threshold'])} drops by the "
                  f"reference, {time.perf_counter() - t0:.0f} s", flush=True)
        for k in VARIANTS:
            allrows[k] += rows[k]
    print("| variant | checks | mean HVPs/check | HVPs/check, no-drop checks | HVPs/check, "
          "first + drop checks | lower bounds | not converged | decisions changed | "
          "max rel. err (values) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, rows in allrows.items():
        nd = [r["n_hvp"] for r in rows if not (r["drop"] or r["first"])]
        dec = [r["n_hvp"] for r in rows if r["drop"] or r["first"]]
        errs = [r["err"] for r in rows if r["err"] is not None]
        print(f"| {k} | {len(rows)} | {statistics.mean(r['n_hvp'] for r in rows):.2f} | "
              f"{statistics.mean(nd):.2f} | {statistics.mean(dec):.2f} | "
              f"{sum(r['status'] == 'lower_bound' for r in rows)} | "
              f"{sum(r['status'] == 'not_converged' for r in rows)} | "
              f"{sum(r['changed'] for r in rows)} | {max(errs):.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("runs", "replay"), default="runs")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--ref-hvp", type=int, default=40)
    ap.add_argument("--mode", choices=("both", "warm", "cold"), default="both")
    ap.add_argument("--out", type=Path, default=Path("runs/warm_start"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.part == "replay":
        main_replay(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    modes = [True, False] if args.mode == "both" else [args.mode == "warm"]
    print(f"machine: {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, 1 thread")
    print(f"command: python benchmarks/bench_warm_start.py --seeds {args.seeds} "
          f"--epochs {args.epochs} --ref-hvp {args.ref_hvp}")
    print("| seed | start | checks | mean HVPs/check | median rel. err | max rel. err | "
          "within 1e-2 | eig. time (s) | test acc. | updates |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for warm in modes:
            path = args.out / f"seed{seed}_{'warm' if warm else 'cold'}.json"
            if path.is_file():
                run = json.loads(path.read_text())
            else:
                run = one_run(seed, warm, args.epochs, args.ref_hvp)
                path.write_text(json.dumps(run))
            s = summary(run)
            print(f"| {seed} | {'warm' if warm else 'cold'} | {s['checks']} | {s['hvps']:.2f} | "
                  f"{s['median_err']:.1e} | {s['max_err']:.1e} | {100 * s['within_1e-2']:.0f}% | "
                  f"{s['eig_time']:.1f} | {s['accuracy']:.4f} | {s['updates']} |", flush=True)


if __name__ == "__main__":
    main()
