"""``hessbatch mushroom``: GD, SGD, ABS and ABSA on the UCI mushroom data (paper, Appendix A).

Every stochastic method shares one eta0 that satisfies Theorem 1's condition
eta0 <= 1 / (L (M_G + B_max)) (M_G = M_V + 1, the paper's reading; --condition variance puts M_V
in its place), so SGD runs at lr = eta0 * B0 and ABS/ABSA start there and keep
lr = eta0 * B as the core grows the batch; sgd-limit is SGD at Theorem 1's largest eta0 for its
own batch, 1 / (L (M_G + B0)). ABS/ABSA run once per --hessian-batch (default: the full
training set and the paper's random 128 rows). Gradient descent runs at several steps, given in
units of 1/L (1/L is what Theorem 1 allows a full batch; larger steps are a better-tuned GD).
The table reports, for each run, the updates, the gradient samples and the rows read by
Hessian-vector products needed to reach each target gap F(theta) - F* (absolute, F* from
Newton's method), the final gap, the validation accuracy and the largest batch. docs/convex.md
explains every choice; docs/results.md reports the outcome.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from typing import Any

import numpy as np

from hessbatch import SchedulerConfig, __version__
from hessbatch._cli_common import (Progress, add_scheduler_arguments, check_memory,
                                   config_from_args, format_table)
from hessbatch._outputs import check_out_dir, write_files
from hessbatch.theory import bound_sequence, max_eta0, noise_floor

from ._data import Dataset, _read_svmlight, load_mushroom, split_dataset
from ._driver import SAMPLINGS, RunResult, full_batch_config, train
from ._model import LogisticRegression, memory_lower_bound

DESCRIPTION = __doc__.split("\n\n", 1)[1] if __doc__ else None

_KNOWN = ("gd", "sgd", "sgd-limit", "bl", "fb", "gg", "abs", "absa")
_DEFAULT_METHODS = ("gd", "sgd-limit", "sgd", "abs", "absa")
_QUICK = dict(epochs=12, gd_updates=150, max_batch_size=400, gd_steps="1,8")


def _float_list(text: str) -> tuple[float, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1,4,16, got {text!r}") from None


def _methods(text: str) -> tuple[str, ...]:
    out = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    bad = [m for m in out if m not in _KNOWN]
    if bad or not out:
        raise argparse.ArgumentTypeError(
            f"methods must be a comma-separated subset of {','.join(_KNOWN)}, got {text!r}")
    return out


def _hessian_batches(text: str) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for t in (t.strip().lower() for t in text.split(",")):
        if t == "full":
            out.append(None)
        else:
            try:
                out.append(int(t))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected 'full' and/or row counts, comma-separated (e.g. full,128), got "
                    f"{text!r}") from None
    if not out or len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(
            f"expected distinct entries such as full,128, got {text!r}")
    return tuple(out)


def _hb_label(method: str, hb: int | None) -> str:
    return method if hb is None else f"{method} H={hb}"


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Add every option of ``hessbatch mushroom``."""
    g = parser.add_argument_group("problem")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the train/validation split and of every run (default %(default)s)")
    g.add_argument("--lam", type=float, default=1e-3,
                   help="L2 strength lam > 0; the strong convexity c of Theorem 1 "
                        "(default %(default)s)")
    g.add_argument("--n-train", type=int, default=None,
                   help="training rows (default 6905 for mushroom, 85%% of the rows for --data)")
    g.add_argument("--data", default=None, metavar="FILE",
                   help="a LIBSVM/svmlight file to use instead of the shipped mushroom data "
                        "(binary labels, mapped to 0/1)")

    r = parser.add_argument_group("runs")
    r.add_argument("--methods", type=_methods, default=None,
                   help="comma-separated runs among gd (one per --gd-steps), sgd (fixed batch "
                        "B0 at the shared eta0 * B0), sgd-limit (fixed batch B0 at Theorem 1's "
                        "largest eta0 for B_max = B0, 1/(L (M_G + B0)), times --eta0-scale), "
                        "bl, fb, gg, abs, absa (default gd,sgd-limit,sgd,abs,absa; without "
                        "sgd-limit when --lr is given)")
    r.add_argument("--epochs", type=int, default=None,
                   help="epochs (passes' worth of samples) of every stochastic run "
                        "(default 500; 12 with --quick)")
    r.add_argument("--sampling", choices=SAMPLINGS, default="iid",
                   help="iid: batches drawn with replacement (Theorem 1's assumption); shuffle: "
                        "a fresh permutation per epoch (default %(default)s)")
    r.add_argument("--eta0-scale", type=float, default=1.0,
                   help="eta0 = SCALE / (L (M_G + B_max)); above 1 leaves Theorem 1's condition "
                        "(default %(default)s)")
    r.add_argument("--condition", choices=("paper", "variance"), default="paper",
                   help="Theorem 1's step-size condition: paper = 1/(L (M_G + B_max)) with "
                        "M_G = M_V + 1 = 1 here; variance = 1/(L (M_V + B_max)) "
                        "(default %(default)s)")
    r.add_argument("--gd-steps", type=_float_list, default=None,
                   help="gradient-descent steps in units of 1/L, comma-separated "
                        "(default 1,2,4,8,16; 1,8 with --quick)")
    r.add_argument("--gd-updates", type=int, default=None,
                   help="updates of each GD run (default 4000; 150 with --quick)")
    r.add_argument("--targets", type=_float_list, default=(1e-3, 1e-4),
                   help="optimality gaps F - F* to report the updates for (default 1e-3,1e-4)")
    r.add_argument("--quick", action="store_true",
                   help="a small version for tests and smoke checks (seconds): fewer epochs and "
                        "GD updates, B_max 400; explicit options still win")

    e = parser.add_argument_group("eigenvalue checks")
    e.add_argument("--hessian-batch", type=_hessian_batches, default=None,
                   metavar="LIST",
                   help="Hessian batch of the eigenvalue checks, comma-separated: 'full' (the "
                        "whole training set, deterministic) and/or a row count k (a fresh "
                        "random batch of k rows per check, the paper's 128); abs and absa run "
                        "once per entry, labelled 'abs' (full) and 'abs H=k' (default full,128; "
                        "full alone when the training set has 128 rows or fewer)")
    e.add_argument("--eig-method", choices=("power", "lanczos"), default="power",
                   help="eigen-solver (default %(default)s)")
    e.add_argument("--eig-tol", type=float, default=1e-3,
                   help="relative tolerance of the eigen-solver (default %(default)s)")
    e.add_argument("--eig-max-iter", type=int, default=100,
                   help="most HVPs per eigenvalue (default %(default)s)")

    # The shared group's --method/--lr mean one training run elsewhere; here the comparison
    # picks its methods (--methods) and the lr comes from Theorem 1 unless given.
    add_scheduler_arguments(
        parser, method=None, lr=None, batch_size=100, max_batch_size=None, decay_epochs="",
        decay_factor=0.2, help={
            "method": "run only this scheduler method (same as --methods METHOD)",
            "lr": ("eta at B0 for every stochastic run (default: Theorem 1's largest, "
                   "B0 / (L (M_G + B_max)) times --eta0-scale)"),
            "max_batch_size": ("B_max, the largest batch of abs/absa/gg/fb "
                               "(default 800; 400 with --quick)")})

    o = parser.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="write results.json, curves.csv and (with matplotlib) gap.png here; "
                        "it must be new or empty unless --overwrite (checked before the runs)")
    o.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --out: its files are replaced (all at once)")
    o.add_argument("--no-plot", action="store_true",
                   help="with --out, skip gap.png (no matplotlib import)")
    o.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="kernels: compiled Numba (default) or the plain NumPy path")
    o.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


# --------------------------------------------------------------------------------------------


def _resolve(args: argparse.Namespace) -> None:
    for name, value in _QUICK.items():
        if getattr(args, name, None) is None and args.quick:
            setattr(args, name, _float_list(value) if name == "gd_steps" else value)
    defaults = dict(epochs=500, gd_updates=4000, max_batch_size=800, gd_steps=(1, 2, 4, 8, 16))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.method is not None:
        args.methods = ("sgd",) if args.method == "bl" else (args.method,)
    elif args.methods is None:
        args.methods = tuple(m for m in _DEFAULT_METHODS
                             if not (m == "sgd-limit" and args.lr is not None))
    if args.lr is not None and "sgd-limit" in args.methods:
        raise ValueError("--lr sets one lr at B0 for every stochastic run, but sgd-limit takes "
                         "its own (Theorem 1's limit for B0); drop --lr or sgd-limit from "
                         f"--methods, got --lr {args.lr:g} with --methods {','.join(args.methods)}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be finite and > 0, got {args.lr:g} (it is eta at B0; leave "
                         "it out for Theorem 1's largest)")
    if not (math.isfinite(args.lam) and args.lam > 0):
        raise ValueError(f"--lam must be finite and > 0 (Theorem 1 needs a strongly convex "
                         f"F), got {args.lam:g}")
    for name in ("epochs", "gd_updates"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.eta0_scale) and args.eta0_scale > 0):
        raise ValueError(f"--eta0-scale must be finite and > 0, got {args.eta0_scale}")
    if any(not (math.isfinite(s) and s > 0) for s in args.gd_steps):
        raise ValueError(f"--gd-steps must be finite and > 0, got {args.gd_steps}")
    if any(not (math.isfinite(t) and t > 0) for t in args.targets):
        raise ValueError(f"--targets must be finite and > 0, got {args.targets}")
    if not (math.isfinite(args.eig_tol) and args.eig_tol > 0):
        raise ValueError(f"--eig-tol must be finite and > 0, got {args.eig_tol}")
    if args.eig_max_iter < 1:
        raise ValueError(f"--eig-max-iter must be >= 1, got {args.eig_max_iter}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.micro_batch_size is not None and args.micro_batch_size < 1:
        raise ValueError(f"--micro-batch must be >= 1, got {args.micro_batch_size}")
    if args.max_batch_size < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch_size}")


def _dataset(args: argparse.Namespace) -> Dataset:
    if args.data is None:
        return load_mushroom(seed=args.seed, n_train=6905 if args.n_train is None else args.n_train)
    rows = _read_svmlight(args.data)  # parsed and checked; no dense X yet
    n, d = rows.shape
    n_train = args.n_train if args.n_train is not None else max(1, int(round(0.85 * n)))
    _check_memory(args, n, min(max(n_train, 1), n), d)
    X, y = rows.dense()
    return split_dataset(X, y, n_train=args.n_train, seed=args.seed, source=args.data)


def _check_memory(args: argparse.Namespace, n: int, n_train: int, d: int) -> None:
    """Refuse before allocating when the data and the d x d Hessian cannot fit in memory."""
    need = memory_lower_bound(n, n_train, d)
    data = f"--data {args.data}"
    check_memory([
        (f"the dense rows, {n} x {d} float64, and the model's copy of the training rows",
         need["data"],
         f"{data} is too wide or too long for this machine: check its largest feature index"),
        (f"the d x d Hessian, d = {d} features, which Newton's method and Theorem 1's L "
         f"build explicitly", need["hessian"],
         f"{data} has d = {d} features, and the explicit Hessian is d x d: use data with "
         "fewer features (is its largest index a typo?)"),
    ], command=f"hessbatch mushroom --data {args.data}")


def _config(args, method: str, n: int, lr: float) -> SchedulerConfig:
    # the shared builder: a bad option is reported under the name the user typed
    fields: dict[str, Any] = {"method": method}
    if lr != args.lr:
        fields["lr"] = lr            # derived from Theorem 1: not an option's value
    if method == "bl":
        fields["max_batch_size"] = args.batch_size
    return config_from_args(args, samples_per_epoch=n, epochs=args.epochs, **fields)


def _row(run: RunResult, step: float, f_star: float, targets, ds: Dataset,
         model: LogisticRegression, seconds: float) -> dict[str, Any]:
    val = (model.accuracy(run.theta, ds.X_val, ds.y_val)
           if len(ds.y_val) and not run.diverged else None)
    row: dict[str, Any] = {"method": run.label, "scheduler_method": run.method, "lr_start": step,
                           "updates": run.updates}
    for t in targets:
        row[f"updates_to_{t:g}"] = run.updates_to_gap(f_star, t)
        row[f"samples_to_{t:g}"] = run.samples_to_gap(f_star, t)
    for t in targets:
        row[f"hvp_rows_to_{t:g}"] = run.hvp_rows_to_gap(f_star, t)
    row.update(samples_seen=run.samples_seen, hvp_rows=run.total_hvp_rows,
               final_gap=float(run.loss[-1] - f_star) if not run.diverged else None,
               diverged=run.diverged,
               val_accuracy=val,
               train_accuracy=None if run.diverged else model.accuracy(run.theta),
               largest_batch=run.max_batch, eigenvalue_checks=run.eigenvalue_checks,
               hvps=run.total_hvps, seconds=round(seconds, 3))
    return row


def _bound_line(consts, gap0: float, etas: dict[str, float]) -> str:
    """Theorem 1's noise floor G per eta0 and whether the bound can say anything there."""
    parts = []
    for name, eta in etas.items():
        g = noise_floor(consts, eta)
        parts.append(f"G = {g:.4g} for {name} ("
                     + ("vacuous: G >= F(0) - F*, the bound never falls below the start gap"
                        if g >= gap0 else "informative: the bound falls towards G") + ")")
    return (f"Theorem 1 (i.i.d. runs): E F - F* <= G + prod(1 - b_t eta0 c) (F(0) - F* - G), "
            f"F(0) - F* = {gap0:.4g}, G = eta0 L M / (2c): " + "; ".join(parts))


def _theorem1(consts, run: RunResult, gap0: float,
              condition: str = "paper") -> dict[str, Any] | None:
    """Theorem 1 for one run: its eta0 (lr / B), the condition, G and the bound at the end.

    None for a run that is not Theorem 1's setting (GD: full batches, not i.i.d. draws)."""
    if run.sampling != "iid":
        return None
    eta0 = float(run.config.lr / run.config.batch_size)
    b_max = int(run.config.max_batch_size)
    met = eta0 <= max_eta0(consts, b_max, condition) * (1 + 1e-12)
    # the bound's recursion along the batches the run used (its condition may fail: GD > 1/L)
    bound = bound_sequence(consts, eta0, gap0, [int(b) for b in run.batch_size[1:]],
                           b_max=b_max, enforce_condition=False)[-1]
    return {"eta0": eta0, "condition": condition, "condition_met": met,
            "noise_floor": noise_floor(consts, eta0), "gap0": gap0, "bound_at_end": bound if met else None}


def run(args: argparse.Namespace) -> int:
    """Run the comparison, print the table, write the files; returns the exit code."""
    _resolve(args)
    args.out = check_out_dir(args.out, overwrite=args.overwrite,  # before any work
                             outputs=("results.json", "curves.csv", "gap.png"))
    ds = _dataset(args)
    model = LogisticRegression(ds.X_train, ds.y_train, args.lam, backend=args.backend)
    n = model.n_samples
    if args.batch_size > n:
        raise ValueError(f"--batch-size must not exceed the training rows ({n}), got "
                         f"{args.batch_size}")
    if args.max_batch_size > n:
        raise ValueError(f"--max-batch must not exceed the training rows ({n}): a batch larger "
                         f"than the data, got {args.max_batch_size}")
    if args.hessian_batch is None:
        args.hessian_batch = (None, 128) if n > 128 else (None,)
    for hb in args.hessian_batch:
        if hb is not None and not 1 <= hb <= n:
            raise ValueError(f"--hessian-batch (hessian_batch) must be 'full' or in [1, {n}] "
                             f"(the training rows), got {hb}")
    for m in {"bl" if m in ("sgd", "sgd-limit") else m for m in args.methods} - {"gd"}:
        _config(args, m, n, 1.0)  # the scheduler options, checked before L and Newton's method
    consts = model.constants()
    opt = model.solve()
    f_star = opt.f_star
    eta0_max = max_eta0(consts, args.max_batch_size, args.condition)
    eta0 = args.eta0_scale * eta0_max
    lr0 = eta0 * args.batch_size if args.lr is None else args.lr
    eta0 = lr0 / args.batch_size
    within = eta0 <= eta0_max * (1 + 1e-12)
    out = sys.stdout
    print(f"hessbatch mushroom {__version__}: {ds!r}", file=out)
    print(f"lam = {args.lam:g}; Theorem 1 constants L = {consts.L:.6g}, c = {consts.c:.6g}, "
          f"M = {consts.M:.6g}, M_V = {consts.M_V:g} (M_G = {consts.M_G:g}); F* = {f_star:.12g} "
          f"(Newton, {opt.iterations} steps, ||grad|| = {opt.grad_norm:.1e})", file=out)
    print(f"eta0 = {eta0:.6g} (lr {lr0:.6g} at B0 = {args.batch_size}, B_max = "
          f"{args.max_batch_size}): Theorem 1's {args.condition} condition eta0 <= "
          f"{'1/(L (M_G + B_max))' if args.condition == 'paper' else '1/(L (M_V + B_max))'} = "
          f"{eta0_max:.6g} is "
          f"{'met' if within else 'NOT met'}; gaps are absolute, F - F*", file=out)
    eta0_own = args.eta0_scale * max_eta0(consts, args.batch_size, args.condition)
    if "sgd-limit" in args.methods:
        print(f"sgd-limit: eta0 = {eta0_own:.6g} (lr {eta0_own * args.batch_size:.6g} at B = "
              f"{args.batch_size}), Theorem 1's limit 1/(L (M_G + B0)) for its own batch"
              + ("" if args.eta0_scale == 1 else f" times {args.eta0_scale:g}"), file=out)
    gap0 = model.loss(np.zeros(model.n_features)) - f_star
    shared = [m for m in args.methods if m not in ("gd", "sgd-limit")]
    etas = {", ".join(shared): eta0} if shared else {}
    if "sgd-limit" in args.methods:
        etas["sgd-limit"] = eta0_own
    if etas:
        print(_bound_line(consts, gap0, etas), file=out)
    out.flush()

    jobs: list[tuple[str, SchedulerConfig, str, float, int | None]] = []
    for m in args.methods:
        if m == "gd":
            for s in args.gd_steps:
                jobs.append((f"gd {s:g}/L", full_batch_config(n, s / consts.L, args.gd_updates),
                             "shuffle", s / consts.L, None))
        elif m == "sgd-limit":
            lr_own = eta0_own * args.batch_size
            jobs.append((f"sgd-limit B={args.batch_size}", _config(args, "bl", n, lr_own),
                         args.sampling, lr_own, None))
        elif m in ("abs", "absa"):     # the methods that compute eigenvalues
            for hb in args.hessian_batch:
                jobs.append((_hb_label(m, hb), _config(args, m, n, lr0), args.sampling, lr0, hb))
        else:
            method = "bl" if m == "sgd" else m
            label = f"sgd B={args.batch_size}" if m == "sgd" else m
            jobs.append((label, _config(args, method, n, lr0), args.sampling, lr0, None))

    runs, rows = [], []
    for label, cfg, sampling, step, hb in jobs:
        progress = Progress(cfg.epochs, f"{label:>12}", enabled=not args.no_progress)
        t0 = time.perf_counter()
        res = train(model, cfg, seed=args.seed, sampling=sampling, label=label,
                    hessian_batch=hb, eig_method=args.eig_method,
                    eig_tol=args.eig_tol, eig_max_iter=args.eig_max_iter, progress=progress)
        progress.close()
        runs.append(res)
        rows.append(_row(res, step, f_star, args.targets, ds, model, time.perf_counter() - t0))
        if res.method in ("abs", "absa"):
            rows[-1]["hessian_batch"] = "full" if hb is None else hb
        rows[-1]["theorem1"] = _theorem1(consts, res, gap0, args.condition)

    headers = ["method", "lr at B0", "updates"]
    for t in args.targets:
        headers += [f"upd to {t:g}", f"samples to {t:g}", f"HVP rows to {t:g}"]
    headers += ["samples seen", "HVP rows", "final gap", "val acc", "max B", "HVPs"]
    table = []
    for row in rows:
        cells = [row["method"], row["lr_start"], row["updates"]]
        for t in args.targets:
            u = row[f"updates_to_{t:g}"]
            s = row[f"samples_to_{t:g}"]
            h = row[f"hvp_rows_to_{t:g}"]
            cells += ["-" if u is None else u, "-" if s is None else s, "-" if h is None else h]
        cells += [row["samples_seen"], row["hvp_rows"],
                  "diverged" if row["diverged"] else row["final_gap"],
                  "-" if row["val_accuracy"] is None else f"{100 * row['val_accuracy']:.2f}%",
                  row["largest_batch"], row["hvps"]]
        table.append(cells)
    print(format_table(headers, table), file=out)
    print("('-': target not reached within the run's budget; samples: rows read by gradients, "
          "HVP rows: rows read by the eigenvalue checks' Hessian-vector products)", file=out)

    if args.out is not None:
        _write_outputs(args, ds, consts, opt, eta0, lr0, within, runs, rows, f_star)
    return 0


def _write_outputs(args, ds, consts, opt, eta0, lr0, within, runs, rows, f_star) -> None:
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
               if k not in ("func",) and not k.startswith("_")}
    options["out"] = str(args.out)
    result = {
        "format": "hessbatch.mushroom", "version": 1, "hessbatch": __version__,
        "seed": args.seed, "lam": args.lam, "f_star": f_star,
        "newton": {"iterations": opt.iterations, "grad_norm": opt.grad_norm},
        "constants": consts.to_dict(), "eta0": eta0, "lr_at_b0": lr0,
        "theorem1_condition_met": within, "theorem1_condition": args.condition,
        "data": {"source": ds.source, "n_train": len(ds.y_train), "n_val": len(ds.y_val),
                 "n_features": ds.n_features, "split_seed": ds.seed, **ds.info},
        "gap": "absolute: F(theta) - F*, F the regularised training loss",
        "options": options,
        "runs": [dict(row, config=run.config.to_dict(), sampling=run.sampling)
                 for row, run in zip(rows, runs)],
    }
    files: dict[str, str | bytes] = {
        "results.json": json.dumps(result, indent=2, allow_nan=False,
                                   default=_json_default) + "\n"}
    fh = io.StringIO(newline="")
    w = csv.writer(fh)
    names = list(runs[0].curves()) if runs else []
    w.writerow(["method"] + names + ["gap"])
    for run in runs:
        cols = list(run.curves().values())
        gap = run.gap(f_star)
        for i in range(len(run.update)):
            w.writerow([run.label] + [_cell(c[i]) for c in cols] + [_cell(gap[i])])
    files["curves.csv"] = fh.getvalue()
    png = None if args.no_plot else _plot(args, runs, f_star)
    if png is not None:
        files["gap.png"] = png
    # one set: results.json, curves.csv and gap.png are all from this run, or all old
    written = write_files(args.out, files)
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stdout)


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else repr(float(v))
    return str(v)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _plot(args, runs, f_star) -> bytes | None:
    """gap.png's bytes (None without matplotlib). Agg canvas: the process's backend is kept."""
    try:
        import matplotlib  # noqa: F401  (first: a blocked or missing matplotlib fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: pip install 'hessbatch[plot]' to get the plot "
              "(gap.png)", file=sys.stdout)
        return None
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    styles = {"abs": "-", "absa": ":", "sgd": "-.", "sgd-limit": (0, (5, 1, 1, 1)), "gd": "--"}
    for run in runs:
        gap = run.gap(f_star)
        ok = (gap > 0) & (run.update > 0)          # log axes: the start row is off-scale
        style = styles.get(run.label.split()[0], "-")
        axes[0].loglog(run.update[ok], gap[ok], ls=style, label=run.label, lw=1.3)
        axes[1].loglog(run.samples[ok], gap[ok], ls=style, label=run.label, lw=1.3)
    for t in args.targets:
        for ax in axes:
            ax.axhline(t, color="grey", lw=0.6, ls=":")
    floor = min(args.targets) / 100 if args.targets else 1e-8
    for ax in axes:
        ax.set_ylim(bottom=floor)
    axes[0].set_xlabel("parameter updates")
    axes[1].set_xlabel("samples")
    for ax in axes:
        ax.set_ylabel("F(theta) - F*")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mushroom, L2 logistic regression (lam={args.lam:g}): gap against updates "
                 f"and samples")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()
