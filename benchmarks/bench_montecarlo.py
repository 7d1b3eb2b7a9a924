"""Benchmark: R independent SGD runs on mushroom, the Numba kernel against NumPy, side by side.

The workload of issue 3: 1000 runs x 5 epochs of SGD (batch 100, i.i.d. sampling, step
``100 * eta0`` with Theorem 1's largest ``eta0`` for B_max = 1600, lam = 0.1) on the mushroom
training set (6905 x 117), with the full training loss of every run at every epoch end.

Contestants (all draw the same indices, so they compute the same numbers up to rounding; the
script checks that):

* ``numba``        the kernel, ``prange`` over runs (all cores);
* ``numba-serial`` the same kernel on one thread: how much is the compiled kernel itself;
* ``numpy``        the library's NumPy reference, vectorised over runs (one loop over updates,
                   the runs' mini-batches gathered into one array per update);
* ``numpy-loop``   the direct NumPy loop: for each run, for each update, gather the batch,
                   one gradient, one step (what one writes without a kernel).

Each repetition runs every contestant once, in turn (side by side); the report gives medians of
wall time and of CPU time (all threads of the process, ``time.process_time``) and their ratios.
On a shared machine the CPU time is the steadier measure of the work done; the wall time is what
threads can shorten. Usage::

    python benchmarks/bench_montecarlo.py                   # the full workload, 3 repetitions
    python benchmarks/bench_montecarlo.py --runs 100 --repeats 2     # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

from hessbatch import theory as thm
from hessbatch.convex import LogisticRegression, load_mushroom, sgd_runs
from hessbatch.convex._montecarlo import draw_indices, run_keys


def numpy_loop(X, y, lam, batches, steps, checkpoints, runs, seed):
    """The direct NumPy loop over runs and updates (same draws as the kernel)."""
    n, d = X.shape
    keys = run_keys(seed, runs)
    losses = np.empty((runs, len(checkpoints)))
    for r in range(runs):
        theta = np.zeros(d)
        counter, c = 0, 0
        idx_all = draw_indices(keys[r:r + 1], 0, int(batches.sum()), n)[0]
        if checkpoints[0] == 0:
            z = X @ theta
            losses[r, 0] = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * lam * theta @ theta
            c = 1
        for t in range(len(batches)):
            b = int(batches[t])
            idx = idx_all[counter:counter + b]
            counter += b
            xb = X[idx]
            p = 1.0 / (1.0 + np.exp(-(xb @ theta)))
            theta = theta - steps[t] * (xb.T @ (p - y[idx]) / b + lam * theta)
            if c < len(checkpoints) and checkpoints[c] == t + 1:
                z = X @ theta
                losses[r, c] = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * lam * theta @ theta
                c += 1
    return losses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000, help="independent runs (default 1000)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per run (default 5)")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--skip", default="", help="comma-separated contestants to leave out")
    args = ap.parse_args(argv)

    ds = load_mushroom(seed=0)
    X, y = ds.X_train, ds.y_train
    lam, b0, b_max = 0.1, 100, 1600
    k = LogisticRegression(X, y, lam).constants()
    eta0 = thm.max_eta0(thm.Constants(**k.to_dict()), b_max)
    cfg_epochs = args.epochs
    n = X.shape[0]
    T = -(-cfg_epochs * n // b0)
    batches = np.full(T, b0, dtype=np.int64)
    steps = batches * eta0
    checkpoints = sorted({0, T, *[min(T, -(-e * n // b0)) for e in range(1, cfg_epochs + 1)]})
    kw = dict(batch_sizes=batches, step_sizes=steps, lam=lam, runs=args.runs, seed=0,
              checkpoints=checkpoints)

    contestants = {
        "numba": lambda: sgd_runs(X, y, backend="numba", **kw).losses,
        "numba-serial": lambda: sgd_runs(X, y, backend="numba-serial", **kw).losses,
        "numpy": lambda: sgd_runs(X, y, backend="numpy", **kw).losses,
        "numpy-loop": lambda: numpy_loop(X, y, lam, batches, steps, checkpoints, args.runs, 0),
    }
    for name in filter(None, args.skip.split(",")):
        contestants.pop(name)
    # warm-up: compile (or load the cache) before timing
    sgd_runs(X, y, **{**kw, "runs": 2, "backend": "numba"})
    sgd_runs(X, y, **{**kw, "runs": 2, "backend": "numba-serial"})

    load0 = f"{os.getloadavg()[0]:.2f}"
    times = {name: [] for name in contestants}
    cpu = {name: [] for name in contestants}
    results = {}
    for rep in range(args.repeats):
        for name, fn in contestants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"repeat {rep + 1}/{args.repeats} {name:>12}: wall {times[name][-1]:8.3f} s, "
                  f"cpu {cpu[name][-1]:8.3f} s", file=sys.stderr)

    ref = results.get("numba")
    import numba

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numba {numba.__version__} ({numba.get_num_threads()} threads), numpy "
          f"{np.__version__}, python {platform.python_version()}")
    print(f"workload: {args.runs} runs x {cfg_epochs} epochs of SGD, batch {b0}, {T} updates "
          f"and {len(checkpoints)} full-loss checkpoints per run, mushroom {n} x {X.shape[1]}")
    print(f"load average before/after: {load0} / {os.getloadavg()[0]:.2f}")
    print(f"{'contestant':>12}  {'wall s':>8}  {'(min-max)':>17}  {'cpu s':>8}  "
          f"{'wall / numba':>12}  {'cpu / numba-serial':>18}  {'max |loss diff|':>15}")
    med = {name: statistics.median(t) for name, t in times.items()}
    cmed = {name: statistics.median(t) for name, t in cpu.items()}
    for name, t in times.items():
        ratio = med[name] / med["numba"] if "numba" in med else float("nan")
        cratio = (cmed[name] / cmed["numba-serial"] if "numba-serial" in cmed
                  else float("nan"))
        diff = float(np.max(np.abs(results[name] - ref))) if ref is not None else float("nan")
        span = f"{min(t):.2f}-{max(t):.2f}"
        print(f"{name:>12}  {med[name]:8.3f}  {span:>17}  {cmed[name]:8.3f}  {ratio:12.1f}  "
              f"{cratio:18.1f}  {diff:15.2e}")
    if "numba-serial" in med and "numba" in med:
        print(f"threads alone: numba-serial / numba = {med['numba-serial'] / med['numba']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
