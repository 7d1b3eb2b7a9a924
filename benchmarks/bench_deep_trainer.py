"""ABS epoch overhead against BL: the cost of one top-eigenvalue computation per epoch.

Both methods train the same model on the same data at the same batch size; ABS is configured so
that it never grows the batch (alpha and patience out of reach), so the only difference is the
eigenvalue it computes once per epoch (Hessian batch of 128 fresh samples, at most 10
Hessian-vector products, the paper's setting). Epochs are timed without the test-set evaluation
(the same for both), alternating BL and ABS so that background load hits both alike. Three
figures: the ratio of the median wall times; the ratio of the median CPU times (one torch
thread: the process's CPU time is the epoch's cost, nearly immune to other jobs, while wall
time on a shared 2-core machine moves by tens of percent from one minute to the next); and the
median over ABS epochs of the eigenvalue time divided by the rest of the same epoch.

The overhead is, to first order, ``max_hvp * c * H / N``: ``c`` the cost of one HVP relative to
a gradient on the same samples, ``H`` the Hessian batch and ``N`` the samples per epoch. So it
is reported at the paper's CIFAR-10 scale (N = 50,000 per epoch, synthetic 28x28 images) and at
the MNIST-5k scale (N = 4,000) used in docs/results.md.

With ``--compare-full`` a third trainer, ABS with ``decision_stop=False`` (the full-precision
solver, CLI ``--full-eigenvalue``), is timed in the same rotation and gets its own row ("N full").
Since this ABS never grows, every check after the first is a "no drop": with the decision stop it
ends on a lower bound after about one product, a best case for the stop.

Run:  python benchmarks/bench_deep_trainer.py [--repeats 3] [--sizes 50000,4000] [--threads 1]
      [--compare-full]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch.nn import functional as F

from hessbatch import SchedulerConfig
from hessbatch._cli_common import format_table
from hessbatch.deep import SmallCNN, Trainer, synthetic_classification


HEADERS = ("N/epoch", "BL wall s", "ABS wall s", "BL cpu s", "ABS cpu s", "eig wall s",
           "HVPs", "overhead wall", "overhead cpu", "overhead inside ABS")


def make_trainer(method: str, n: int, epochs: int, batch: int, hessian: int, max_hvp: int,
                 seed: int = 0, decision_stop: bool = True) -> Trainer:
    """A trainer on ``n`` synthetic 28x28 samples; ABS never grows (alpha, patience huge).
    ``decision_stop``: the trainer's option (False: the full-precision solver)."""
    data = synthetic_classification(n, (1, 28, 28), 10, seed=seed)
    torch.manual_seed(seed)
    model = SmallCNN((1, 28, 28), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    cfg = SchedulerConfig(method=method, lr=0.02, batch_size=batch, max_batch_size=16 * batch,
                          samples_per_epoch=n, epochs=epochs, alpha=1e12, patience=10 ** 9)
    return Trainer(model, opt, F.cross_entropy, data, cfg, hessian_batch_size=hessian,
                   max_hvp=max_hvp, eig_tol=1e-2, seed=seed, decision_stop=decision_stop)


def timed_epoch(trainer: Trainer) -> tuple[float, float]:
    """Wall and CPU seconds of one epoch. With one torch thread the process's CPU time is
    what the epoch costs, almost untouched by other jobs on the machine; wall time is not."""
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train_epoch()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per method")
    p.add_argument("--sizes", default="50000,4000", help="samples per epoch, comma-separated")
    p.add_argument("--batch", type=int, default=128, help="logical batch of both methods")
    p.add_argument("--hessian-batch", type=int, default=128, help="samples per eigenvalue")
    p.add_argument("--max-hvp", type=int, default=10, help="HVPs per eigenvalue at most")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--compare-full", action="store_true",
                   help="also time ABS with decision_stop=False in the same rotation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s); small CNN (114k parameters), B = {args.batch}, Hessian "
          f"batch {args.hessian_batch}, <= {args.max_hvp} HVPs, one eigenvalue per epoch")
    rows = []
    # warm-up (allocator, first-call dispatch) on a small run of each method
    for method in ("bl", "abs"):
        make_trainer(method, 2 * args.batch, 1, args.batch, args.hessian_batch,
                     args.max_hvp).run()
    for n in (int(s) for s in args.sizes.split(",")):
        runs = {m: make_trainer(m, n, args.repeats, args.batch, args.hessian_batch,
                                args.max_hvp) for m in ("bl", "abs")}
        if args.compare_full:
            runs["abs full"] = make_trainer("abs", n, args.repeats, args.batch,
                                            args.hessian_batch, args.max_hvp,
                                            decision_stop=False)
        times = {m: [] for m in runs}
        for _ in range(args.repeats):  # alternate so that background load hits all alike
            for m, tr in runs.items():
                times[m].append(timed_epoch(tr))
        bl = times["bl"]
        w_bl, c_bl = (statistics.median(w for w, _ in bl), statistics.median(c for _, c in bl))
        for m in [k for k in runs if k != "bl"]:
            abs_ = times[m]
            eig = [e.time_eigenvalue for e in runs[m].history]
            hvps = [e.hvps for e in runs[m].history]
            w_abs, c_abs = (statistics.median(w for w, _ in abs_),
                            statistics.median(c for _, c in abs_))
            # The same overhead read inside each ABS epoch: eigenvalue time against the rest
            # of that epoch, both wall clock in the same minute of the same process.
            inside = statistics.median(e / (w - e) for e, (w, _) in zip(eig, abs_))
            rows.append((n if m == "abs" else f"{n} full", round(w_bl, 2), round(w_abs, 2),
                         round(c_bl, 2), round(c_abs, 2), round(statistics.median(eig), 3),
                         statistics.median(hvps), f"{100 * (w_abs / w_bl - 1):+.1f}%",
                         f"{100 * (c_abs / c_bl - 1):+.1f}%", f"{100 * inside:.1f}%"))
            print(format_table(HEADERS, rows[-1:]), flush=True)
    print()
    print(format_table(HEADERS, rows))


if __name__ == "__main__":
    main()
