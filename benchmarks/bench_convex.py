"""Convex kernels and a whole ABS run: Numba vs the NumPy path vs torch (CPU), side by side.

    python benchmarks/bench_convex.py [--repeats 7] [--epochs 20] [--threads 1]

Every path runs on the same data (mushroom training split, 6905 x 117, float64) with the same
thread count (default 1: the Numba kernels are serial, and a busy 2-core machine makes threaded
BLAS erratic), every figure is the median of ``--repeats`` timings taken in alternation, and
the ratios are against the NumPy path measured in the same loop. The torch path implements the
same closed forms (no autograd) on dense tensors and is driven by the same driver, through the
kernel interface the model uses. Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="timings per figure (median)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the whole ABS run")
    p.add_argument("--threads", type=int, default=1, help="BLAS/torch threads (default 1)")
    return p.parse_args()


ARGS = _parse()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402  (after the thread settings)
import torch  # noqa: E402

from hessbatch import SchedulerConfig
from hessbatch.theory import max_eta0  # noqa: E402
from hessbatch.convex import LogisticRegression, load_mushroom, train  # noqa: E402

torch.set_num_threads(ARGS.threads)


class TorchKernels:
    """The model's kernel interface on dense float64 torch tensors (closed forms, CPU)."""

    name = "torch"

    def __init__(self, X, y):
        self.X = torch.from_numpy(X)
        self.y = torch.from_numpy(y)

    def _rows(self, idx):
        i = torch.from_numpy(idx)
        return self.X.index_select(0, i), self.y.index_select(0, i)

    def loss(self, X, y, idx, theta, lam):
        Xb, yb = self._rows(idx)
        t = torch.from_numpy(theta)
        z = Xb @ t
        return float(torch.mean(torch.nn.functional.softplus(z) - yb * z) + 0.5 * lam * (t @ t))

    def loss_grad(self, X, y, idx, theta, lam, adv_count, eps, lo, hi):
        Xb, yb = self._rows(idx)
        t = torch.from_numpy(theta)
        if adv_count:
            Xb = Xb.clone()
            r = torch.sigmoid(Xb[:adv_count] @ t) - yb[:adv_count]
            step = eps * torch.sign(r[:, None] * t[None, :])
            Xb[:adv_count] = torch.minimum(torch.maximum(Xb[:adv_count] + step,
                                                         torch.from_numpy(lo)),
                                           torch.from_numpy(hi))
        z = Xb @ t
        r = torch.sigmoid(z) - yb
        loss = torch.mean(torch.nn.functional.softplus(z) - yb * z) + 0.5 * lam * (t @ t)
        grad = Xb.T @ r / len(idx) + lam * t
        return float(loss), grad.numpy()

    def hvp(self, X, y, idx, theta, v, lam):
        Xb, _ = self._rows(idx)
        t, vv = torch.from_numpy(theta), torch.from_numpy(v)
        p = torch.sigmoid(Xb @ t)
        return (Xb.T @ (p * (1 - p) * (Xb @ vv)) / len(idx) + lam * vv).numpy()


def _median_times(fns: dict, repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each function, the functions timed in alternation."""
    for f in fns.values():
        f()                                  # warm-up (JIT compilation, caches)
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                f()
            samples[k].append((time.perf_counter() - t) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> int:
    ds = load_mushroom(seed=0)
    nb = LogisticRegression(ds.X_train, ds.y_train, lam=1e-3, backend="numba")
    npm = nb.with_backend("numpy")
    tk = TorchKernels(nb.X, nb.y)
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(117) * 0.3
    v = rng.standard_normal(117)
    full = np.arange(nb.n_samples, dtype=np.int64)
    b100 = rng.integers(0, nb.n_samples, 100)
    b800 = rng.integers(0, nb.n_samples, 800)
    X, y, lo, hi, lam = nb.X, nb.y, nb.lo, nb.hi, nb.lam
    paths = {"numba": nb._k, "numpy": npm._k, "torch": tk}
    cases = [
        ("loss, full data (6905 rows)", 20, lambda k: k.loss(X, y, full, theta, lam)),
        ("loss + gradient, full data", 20,
         lambda k: k.loss_grad(X, y, full, theta, lam, 0, 0.0, lo, hi)),
        ("gradient, batch of 100", 200,
         lambda k: k.loss_grad(X, y, b100, theta, lam, 0, 0.0, lo, hi)),
        ("gradient, batch of 100 with 20 FGSM rows", 200,
         lambda k: k.loss_grad(X, y, b100, theta, lam, 20, 0.005, lo, hi)),
        ("gradient, batch of 800", 50,
         lambda k: k.loss_grad(X, y, b800, theta, lam, 0, 0.0, lo, hi)),
        ("HVP, full data", 20, lambda k: k.hvp(X, y, full, theta, v, lam)),
    ]
    rows = []
    for name, inner, call in cases:
        t = _median_times({p: (lambda k=k: call(k)) for p, k in paths.items()}, ARGS.repeats,
                          inner)
        rows.append((name, t))

    # a whole ABS run: the driver, the core, the eigenvalue checks and the per-update full loss
    eta0 = max_eta0(nb.constants(), 800)
    cfg = SchedulerConfig(method="abs", lr=100 * eta0, batch_size=100, max_batch_size=800,
                          samples_per_epoch=nb.n_samples, epochs=ARGS.epochs, patience=2)
    tmodel = nb.with_backend("numpy")
    tmodel._k = tk
    runs = {"numba": nb, "numpy": npm, "torch": tmodel}
    t = _median_times({p: (lambda m=m: train(m, cfg, seed=0)) for p, m in runs.items()},
                      max(3, ARGS.repeats // 2), 1)
    ref = train(nb, cfg, seed=0)
    rows.append((f"whole ABS run ({ARGS.epochs} epochs, {ref.updates} updates, "
                 f"{ref.eigenvalue_checks} checks, {ref.total_hvps} HVPs)", t))

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or ''}"
          f" python {platform.python_version()}, numpy {np.__version__}, torch "
          f"{torch.__version__}, threads {ARGS.threads}")
    print(f"command: python benchmarks/bench_convex.py --repeats {ARGS.repeats} --epochs "
          f"{ARGS.epochs} --threads {ARGS.threads}")
    print()
    print("| operation | Numba | NumPy | torch | NumPy / Numba | torch / Numba |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {_fmt(t['numba'])} | {_fmt(t['numpy'])} | {_fmt(t['torch'])} | "
              f"{t['numpy'] / t['numba']:.1f}x | {t['torch'] / t['numba']:.1f}x |")
    return 0


def _fmt(seconds: float) -> str:
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-4:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


if __name__ == "__main__":
    sys.exit(main())
