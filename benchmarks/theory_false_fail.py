"""How often do the Monte-Carlo limits miss the true mean? Measured where the truth is exact.

Two problems with exact expected gaps: the default least-squares check (moment recursions) and
the sharp logistic instance of ``hessbatch theory`` (a balanced one-row design, exact by
enumeration; two copies of the row, which gives the same distribution as 200). Each experiment
is ``--runs`` Monte-Carlo runs; over ``--experiments`` experiments the script counts, per
compared update, how often each limit is on the wrong side of the true mean:

* the lower limit above the true mean: a false FAIL of "gap above the bound" (the bound is at
  least the true mean); the check uses the plain one-sided Student-t lower limit;
* the upper limit below the true mean: a false "disagrees" of a two-sided agreement check;

for the plain Student-t limits (``one_sided_limits``) and the skew-corrected ones
(``skewed_limits``), at levels 0.9, 0.99 and 0.999, and family-wise at the Bonferroni level
of a family of ``--compared`` updates (default 111: the mushroom check's own family at its
defaults, 1000 runs, 5 epochs).

On least squares it also measures the mean-iterate check of ``hessbatch theory`` (each run's
iterate averaged over its updates against the exact mean, a Student t per eigen-direction of
``H``): how often ``t`` is above the one-sided quantile of each level, per side.

    python benchmarks/theory_false_fail.py --problem sharp --experiments 4000 --runs 1000
    python benchmarks/theory_false_fail.py --problem least-squares --experiments 2000 --runs 120
    python benchmarks/theory_false_fail.py --problem least-squares --epochs 10 \
        --experiments 4000 --runs 200        # the mean check along the check's own schedule
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np

from hessbatch import SchedulerConfig
from hessbatch import theory as thm
from hessbatch.convex import make_least_squares, sgd_runs
from hessbatch.convex._montecarlo import one_sided_limits, skewed_limits


def _problem(name: str, epochs: int):
    if name == "least-squares":
        p = make_least_squares(200, 2, 2.0, 0.5, 0.0, 0)
        k = p.constants()
        eta0 = thm.max_eta0(k, 64)
        sch = thm.scheduler_batches(SchedulerConfig(method="bl", lr=4 * eta0, batch_size=4,
                                                    samples_per_epoch=200, epochs=epochs))
        b = np.asarray(sch.batch_sizes)
        exact = p.expected_gaps(b, b * eta0)
        cps = sorted({1, 2, 4, 8, 16, 32, 64, *range(0, sch.updates + 1, 25), sch.updates} - {0})
        return p.A, p.y, 0.0, "least_squares", b, b * eta0, exact, cps, p.f_star, (p, eta0)
    from hessbatch.convex._sharp_logistic import balanced_row
    from hessbatch.convex._theory_check import SHARP_DEFAULTS
    p = balanced_row(lam=SHARP_DEFAULTS["lam"], copies=2)
    k = p.constants()
    b0 = SHARP_DEFAULTS["batch_size"]
    eta0 = thm.max_eta0(k, b0)
    b = np.full(SHARP_DEFAULTS["updates"], b0)
    exact = p.expected_gaps(b, b * eta0)
    return p.X, p.y, p.lam, "logistic", b, b * eta0, exact, list(range(1, b.size + 1)), \
        p.f_star, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problem", choices=("sharp", "least-squares"), default="sharp")
    ap.add_argument("--experiments", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2, help="least squares: epochs of batch 4")
    ap.add_argument("--confidence", type=float, default=0.999)
    ap.add_argument("--compared", type=int, default=111,
                    help="the Bonferroni family size K (default: the mushroom check's, 111)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    X, y, lam, kind, b, steps, exact, cps, f_star, lsq = _problem(a.problem, a.epochs)
    per_update = 1 - (1 - a.confidence) / a.compared
    levels = {"0.9": 0.9, "0.99": 0.99, "0.999": 0.999, f"{per_update:.7g} (per update)": per_update}
    methods = {"t": one_sided_limits, "skew": skewed_limits}
    miss = {m: {side: {lv: 0 for lv in levels} for side in ("lower", "upper")} for m in methods}
    fam = {m: 0 for m in methods}
    t0 = time.perf_counter()
    truth = exact[cps]
    mean_miss = {side: {lv: 0 for lv in levels} for side in ("below", "above")}
    if lsq is not None:
        from hessbatch.convex._theory_check import _mean_check
        quant = {lv: thm.t_quantile(levels[lv], a.runs - 1) for lv in levels}
    for e in range(a.experiments):
        r = sgd_runs(X, y, batch_sizes=b, step_sizes=steps, lam=lam, kind=kind, runs=a.runs,
                     first_run=e * a.runs, seed=a.seed, checkpoints=cps)
        g = r.losses - f_star
        for m, fn in methods.items():
            for name, lv in levels.items():
                _, lo, hi, _ = fn(g, lv)
                miss[m]["lower"][name] += int(np.sum(lo > truth))
                miss[m]["upper"][name] += int(np.sum(hi < truth))
                if name.endswith("(per update)"):
                    fam[m] += int(np.any(hi < truth) or np.any(lo > truth))
        if lsq is not None:
            t = np.asarray(_mean_check(lsq[0], b, lsq[1], np.zeros(X.shape[1]), r.averages,
                                       math.inf)["t"])
            for lv, q in quant.items():
                mean_miss["below"][lv] += int(np.sum(t < -q))
                mean_miss["above"][lv] += int(np.sum(t > q))
    total = a.experiments * len(cps)
    res = {"problem": a.problem, "experiments": a.experiments, "runs": a.runs,
           "updates_per_experiment": len(cps), "comparisons": total,
           "miss_rate": {m: {side: {lv: miss[m][side][lv] / total for lv in levels}
                             for side in ("lower", "upper")} for m in methods},
           "nominal": {lv: 1 - levels[lv] for lv in levels},
           "two_sided_family_misses_at_per_update_level": fam,
           **({"mean_check": {"comparisons": a.experiments * X.shape[1],
                              "miss_rate": {side: {lv: v / (a.experiments * X.shape[1])
                                                   for lv, v in d.items()}
                                            for side, d in mean_miss.items()}}}
              if lsq is not None else {}),
           "machine": platform.processor() or platform.machine(),
           "seconds": time.perf_counter() - t0}
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
