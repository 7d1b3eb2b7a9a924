"""HVPs per top-eigenvalue estimate on mushroom Hessians: power iteration against Lanczos.

    python benchmarks/bench_convex_eigen.py [--seeds 5]

A count, not a timing: for the full-data Hessian and for random 128-row Hessian batches (the
paper's reference setting) at three points of a training run (theta = 0, theta*/2, theta*),
the median number of HVPs each solver spends at each tolerance over ``--seeds`` start vectors,
and the largest relative error against ``numpy.linalg.eigvalsh`` of the explicit Hessian.
Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from hessbatch.convex import LogisticRegression, load_mushroom


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="start vectors (and batches) per cell")
    args = p.parse_args()
    ds = load_mushroom(seed=0)
    model = LogisticRegression(ds.X_train, ds.y_train, lam=1e-3)
    star = model.solve().theta
    points = {"theta = 0": np.zeros(117), "theta*/2": star / 2, "theta*": star}
    print(f"command: python benchmarks/bench_convex_eigen.py --seeds {args.seeds}")
    print()
    print("| Hessian | point | tol | power: HVPs | power: max rel. error | "
          "Lanczos: HVPs | Lanczos: max rel. error |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for hess in ("full data", "batch of 128"):
        for label, theta in points.items():
            for tol in (1e-2, 1e-3, 1e-6):
                cells = []
                for method in ("power", "lanczos"):
                    counts, errors = [], []
                    for s in range(args.seeds):
                        idx = None
                        if hess != "full data":
                            idx = np.sort(np.random.default_rng(100 + s).choice(
                                model.n_samples, 128, replace=False))
                        truth = np.linalg.eigvalsh(model.hessian(theta, idx))[-1]
                        r = model.top_eigenvalue(theta, idx, method=method, tol=tol,
                                                 max_iter=500, seed=s)
                        counts.append(r.n_matvec)
                        errors.append(abs(r.value - truth) / truth)
                    cells += [f"{statistics.median(counts):g}", f"{max(errors):.1e}"]
                print(f"| {hess} | {label} | {tol:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
