"""Benchmark the deep curvature code: HVP cost, and top-eigenvalue accuracy against pyhessian.

Part ``hvp``: one Hessian-vector product with the gradient graph reused (what an eigenvalue
computation pays per product) against one gradient on the same batch, side by side, medians of
interleaved repeats; also the other ways of computing a product (graph rebuilt each time,
forward-over-reverse) and the cost of a 10-product eigenvalue with and without graph reuse.

Part ``stop``: why Lanczos stops on a residual of ``tol^2 |theta|``: 10-product runs on many
small models with exact spectra, and what each stopping rule would have returned.

Part ``eig``: the top eigenvalue at a fixed budget of k Hessian-vector products, our Lanczos and
power iteration against ``pyhessian`` 0.1 (PyPI) power iteration, side by side, over several
start vectors: relative error against the exact value (small CNN: the dense float64 Hessian and
``eigvalsh``; ResNet18: a long Lanczos run as reference, its residual printed) and median time.
pyhessian is a benchmark-only dependency (``pip install --no-deps pyhessian``); without it the
comparison runs against our own power iteration only, and says so.

Usage::

    python benchmarks/bench_deep_curvature.py                 # both parts (~15 min on 2 cores)
    python benchmarks/bench_deep_curvature.py --part hvp --repeats 7
    python benchmarks/bench_deep_curvature.py --part eig --seeds 5 --json out.json
    python benchmarks/bench_deep_curvature.py --part stop --models 60
    python benchmarks/bench_deep_curvature.py --part decide     # issue 22, ResNet18 cold
    python benchmarks/bench_deep_curvature.py --part warmguard  # issue 22, warm-start guard
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from hessbatch._cli_common import format_table
from hessbatch.deep import (MLP, HessianOperator, SmallCNN, load_mnist5k, make_model,
                            synthetic_classification, top_eigenvalue)

try:  # benchmark-only dependency, never imported by the package or the tests
    from pyhessian import hessian as PyHessian
except ImportError:  # pragma: no cover - depends on the environment
    PyHessian = None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _median_times(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, the callables interleaved in every round (after one
    warm-up round), so that load from other work hits them all alike."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------------------------------
# part 1: cost of one HVP

def bench_hvp(repeats: int) -> list[dict]:
    cases = [("mlp", "relu", None, (1, 28, 28), 128), ("mlp", "softplus", None, (1, 28, 28), 128),
             ("cnn", "relu", None, (1, 28, 28), 128), ("cnn", "softplus", None, (1, 28, 28), 128),
             ("resnet18", "relu", 16, (3, 32, 32), 32), ("resnet18", "relu", 64, (3, 32, 32), 32)]
    rows = []
    for name, act, width, shape, bs in cases:
        torch.manual_seed(0)
        model = make_model(name, shape, 10, activation=act, width=width)
        x, y = torch.rand(bs, *shape), torch.randint(10, (bs,))
        params = [p for p in model.parameters()]
        v = [torch.randn_like(p) for p in params]
        op = HessianOperator(model, F.cross_entropy, [(x, y)])
        lazy = HessianOperator(model, F.cross_entropy, [(x, y)], reuse_graph=False)
        fwr = HessianOperator(model, F.cross_entropy, [(x, y)], backend="forward_over_reverse")

        def gradient():
            with torch.enable_grad():
                model.eval()  # the same mode as the products: a like-for-like comparison
                torch.autograd.grad(F.cross_entropy(model(x), y), params)
                model.train()

        fns = {"gradient": gradient,
               "build": lambda: HessianOperator(model, F.cross_entropy, [(x, y)]),
               "hvp_reuse": lambda: op.matvec(v),
               "hvp_rebuild": lambda: lazy.matvec(v),
               "hvp_fwd_rev": lambda: fwr.matvec(v)}
        label = f"{name}({act}{'' if width is None else f', width {width}'})"
        _log(f"hvp: {label}, batch {bs} ...")
        # The MLP's products take milliseconds: more rounds for a steady median.
        t = _median_times(fns, repeats * (10 if name == "mlp" else 1))
        rows.append({"model": label, "params": sum(p.numel() for p in params), "batch": bs,
                     **{f"t_{k}": s for k, s in t.items()},
                     "hvp_over_grad": t["hvp_reuse"] / t["gradient"],
                     "rebuild_over_grad": t["hvp_rebuild"] / t["gradient"],
                     "fwdrev_over_grad": t["hvp_fwd_rev"] / t["gradient"],
                     "eig10_reuse_over_rebuild":
                         (t["build"] + 10 * t["hvp_reuse"]) / (10 * t["hvp_rebuild"])})
    return rows


# ------------------------------------------------------------------------------------------
# part 2: top eigenvalue at a fixed HVP budget

def _pyhessian_power(model, x, y, k, seed):
    """pyhessian's power iteration with exactly k products (tol=0 never stops early)."""
    torch.manual_seed(seed)                          # pyhessian draws its start from torch's RNG
    modes = [(m, m.training) for m in model.modules()]
    h = PyHessian(model, F.cross_entropy, data=(x, y), cuda=False)
    value, _ = h.eigenvalues(maxIter=k, tol=0.0)
    for m, t in modes:                               # pyhessian leaves the model in eval mode
        m.training = t
    model.zero_grad(set_to_none=True)                # ... and its .grad fields set
    return value[0]


def _train_briefly(model, x, y, epochs, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)


def _compare(label, model, x, y, exact1, exact2, budgets, seeds, ref_note) -> list[dict]:
    rows = []
    for k in budgets:
        runs = {"ours: lanczos": [], "ours: power": [], "pyhessian: power": []}
        for seed in range(seeds):
            for name in runs:
                if name.startswith("pyhessian") and PyHessian is None:
                    continue
                t = time.perf_counter()
                if name == "pyhessian: power":
                    value = _pyhessian_power(model, x, y, k, seed)
                else:
                    r = top_eigenvalue(model, F.cross_entropy, [(x, y)], tol=0.0, max_hvp=k,
                                       method=name.split()[-1], seed=seed)
                    value = r.value
                runs[name].append((abs(value - exact1) / abs(exact1), time.perf_counter() - t))
        for name, res in runs.items():
            if not res:
                continue
            errs, times = [e for e, _ in res], [s for _, s in res]
            rows.append({"case": label, "hvp": k, "method": name,
                         "median_rel_err": statistics.median(errs), "max_rel_err": max(errs),
                         "median_time_s": statistics.median(times),
                         "lambda1": exact1, "lambda2_over_lambda1": exact2 / exact1,
                         "reference": ref_note})
    # What the trainer runs: the defaults (Lanczos, at most 10 products, tol 1e-2).
    errs, hvps, times = [], [], []
    for seed in range(seeds):
        t = time.perf_counter()
        r = top_eigenvalue(model, F.cross_entropy, [(x, y)], seed=seed)
        times.append(time.perf_counter() - t)
        errs.append(abs(r.value - exact1) / abs(exact1))
        hvps.append(r.n_hvp)
    rows.append({"case": label, "hvp": f"<=10 (mean {statistics.mean(hvps):.1f})",
                 "method": "ours: default", "median_rel_err": statistics.median(errs),
                 "max_rel_err": max(errs), "median_time_s": statistics.median(times),
                 "lambda1": exact1,
                 "lambda2_over_lambda1": exact2 / exact1, "reference": ref_note})
    return rows


def bench_eig(seeds: int, budgets: tuple[int, ...], resnet_ref_hvp: int) -> list[dict]:
    rows = []
    data = load_mnist5k()
    xs, ys = data.tensors
    # MNIST at 14 x 14 (2 x 2 average pooling) keeps the CNN's dense Hessian at ~1k x 1k, so
    # the exact value costs seconds, not the hour a 28 x 28 one would on two cores.
    xs = F.avg_pool2d(xs, 2)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(xs), generator=g)
    hx, hy = xs[idx[:128]], ys[idx[:128]]           # the Hessian batch (the paper's 128)
    for state in ("init", "trained 2 epochs"):
        torch.manual_seed(0)
        model = SmallCNN((1, 14, 14), 10, width=2, hidden=16, activation="relu")
        if state != "init":
            _train_briefly(model, xs[idx[128:]], ys[idx[128:]], 2, seed=0)
        _log(f"eig: small CNN ({state}): exact Hessian ...")
        m64 = SmallCNN((1, 14, 14), 10, width=2, hidden=16, activation="relu").double()
        m64.load_state_dict(model.state_dict())
        dense = HessianOperator(m64, F.cross_entropy, [(hx.double(), hy)]).dense()
        ev = torch.linalg.eigvalsh((dense + dense.T) / 2)
        label = (f"small CNN, MNIST 14x14, {sum(p.numel() for p in model.parameters())} params, "
                 f"{state}")
        rows += _compare(label, model, hx, hy, ev[-1].item(), ev[-2].item(), budgets, seeds,
                         "exact (dense float64 Hessian, eigvalsh)")
    # ResNet18 (base 16) on CIFAR-shaped synthetic images: exact is out of reach, the
    # reference is a long Lanczos run whose residual bounds its own error.
    torch.manual_seed(0)
    model = make_model("resnet18", (3, 32, 32), 10, width=16)
    sx, sy = synthetic_classification(64, (3, 32, 32), 10, seed=0).tensors
    _log(f"eig: ResNet18 reference ({resnet_ref_hvp} Lanczos products) ...")
    ref = top_eigenvalue(model, F.cross_entropy, [(sx, sy)], max_hvp=resnet_ref_hvp, tol=0.0,
                         seed=12345)
    # The Ritz residual estimate can fall below float32's rounding floor; measure the true one.
    op = HessianOperator(model, F.cross_entropy, [(sx, sy)])
    hy = op.matvec(ref.vector)
    true_res = torch.sqrt(sum(((h - ref.value * v) ** 2).sum() for h, v in zip(hy, ref.vector)))
    op_note = (f"Lanczos {resnet_ref_hvp} HVPs, true residual |Hv - lam v| / lam = "
               f"{float(true_res) / ref.value:.1e} (an eigenvalue lies within it)")
    # The reference's second Ritz value estimates lambda_2 (from below, so the gap printed is
    # an upper bound on lambda_2 / lambda_1's distance from 1).
    label = f"ResNet18 base 16, {sum(p.numel() for p in model.parameters())} params, init"
    _log("eig: ResNet18 comparison ...")
    rows += _compare(label, model, sx, sy, ref.value, ref.ritz_values[1], budgets, seeds, op_note)
    return rows


# ------------------------------------------------------------------------------------------
# part 3: the Lanczos stopping rule and the accuracy requirement, over many small models

def _small_case(kind: int, seed: int):
    torch.manual_seed(seed)
    if kind == 0:
        m = MLP((6,), 4, hidden=(10,), activation="softplus").double()
        x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(4, (64,))
    elif kind == 1:
        m = SmallCNN((1, 8, 8), 3, width=2, hidden=8, activation="softplus").double()
        x, y = torch.rand(32, 1, 8, 8, dtype=torch.float64), torch.randint(3, (32,))
    else:
        m = MLP((8,), 3, hidden=(12, 6), activation="elu").double()
        x, y = torch.randn(48, 8, dtype=torch.float64), torch.randint(3, (48,))
    return m, x, y


def bench_stop(models: int, starts: int, tol: float = 1e-2) -> dict:
    """Full 10-product Lanczos and power runs on many small models with exact spectra; then
    what each stopping rule would have returned."""
    runs = []
    for i in range(models):
        kind = i % 3
        model, x, y = _small_case(kind, i)
        dense = HessianOperator(model, F.cross_entropy, [(x, y)]).dense()
        ev = torch.linalg.eigvalsh((dense + dense.T) / 2)
        lam1, lam2 = ev[-1].item(), ev[-2].item()
        for s in range(starts):
            lz = top_eigenvalue(model, F.cross_entropy, [(x, y)], tol=0.0, max_hvp=10, seed=s)
            pw = top_eigenvalue(model, F.cross_entropy, [(x, y)], tol=0.0, max_hvp=10, seed=s,
                                method="power")
            runs.append((kind, lam1, lam2, lz.history, lz.residuals, pw.history))
        _log(f"stop: model {i + 1}/{models}")

    def stop_at(hist, res, factor):
        for k in range(len(hist)):
            if res[k] <= factor * abs(hist[k]):
                return k
        return len(hist) - 1

    rules = {"residual <= tol |theta|": tol, "residual <= tol^2 |theta| (ours)": tol * tol,
             "full budget (10)": 0.0}
    table = []
    for name, factor in rules.items():
        errs, hvps, spoiled = [], [], 0
        for kind, lam1, lam2, hist, res, _ in runs:
            k = stop_at(hist, res, factor) if factor > 0 else len(hist) - 1
            e = abs(hist[k] - lam1) / lam1
            errs.append(e)
            hvps.append(k + 1)
            spoiled += e > tol and abs(hist[-1] - lam1) / lam1 <= tol
        close = [e for e, r in zip(errs, runs) if r[2] >= 0.9 * r[1]]
        table.append({"rule": name, "mean_hvp": statistics.mean(hvps),
                      "within_tol": sum(e <= tol for e in errs) / len(errs),
                      "spoiled": spoiled, "close_within_tol":
                          (sum(e <= tol for e in close), len(close)),
                      "max_err": max(errs)})
    perr = [abs(r[5][-1] - r[1]) / r[1] for r in runs]
    close_p = [e for e, r in zip(perr, runs) if r[2] >= 0.9 * r[1]]
    table.append({"rule": "power, 10 products", "mean_hvp": 10.0,
                  "within_tol": sum(e <= tol for e in perr) / len(perr), "spoiled": 0,
                  "close_within_tol": (sum(e <= tol for e in close_p), len(close_p)),
                  "max_err": max(perr)})
    return {"runs": len(runs), "models": models, "starts": starts, "table": table}


# ------------------------------------------------------------------------------------------
# part decide (issue 22): a check whose value decides a growth, on ResNet18, cold starts

def bench_decide(starts: int, ref_hvp: int, extend: int, width: int | None) -> list[dict]:
    """ResNet18 (3x16x16, batch 32) at initialisation, cold starts: the default solver (10
    products, tol 1e-2) against the same with ``extend`` more products for a deciding check
    (no threshold: the first check, or a drop), each against a long Lanczos reference on the
    same batch. The extended run is the default run continued (same start, same Krylov space),
    so the default's result is read from its first 10 products: one solve per start."""
    torch.manual_seed(0)
    model = make_model("resnet18", (3, 16, 16), 10, activation="relu", width=width)
    x, y = torch.rand(32, 3, 16, 16), torch.randint(10, (32,))
    ref = top_eigenvalue(model, F.cross_entropy, [(x, y)], max_hvp=ref_hvp, tol=0.0, seed=999)
    _log(f"decide: reference {ref.value:.6g}, residual {ref.residual:.1e}")
    rows = []
    for s in range(starts):
        r = top_eigenvalue(model, F.cross_entropy, [(x, y)], seed=s, extend_hvp=extend)
        default_done = r.n_hvp <= 10
        default_value = r.value if default_done else r.history[9]
        rows.append({"variant": "default (10 products)", "seed": s, "n_hvp": min(r.n_hvp, 10),
                     "status": "converged" if default_done and r.converged else "not_converged",
                     "err": abs(default_value - ref.value) / ref.value, "ref": ref.value,
                     "ref_residual": ref.residual})
        rows.append({"variant": f"+ extend_hvp={extend}", "seed": s, "n_hvp": r.n_hvp,
                     "status": r.status, "err": abs(r.value - ref.value) / ref.value,
                     "ref": ref.value, "ref_residual": ref.residual})
        _log(f"decide: seed {s}: {r.n_hvp} HVPs, {r.status}, err at 10 {rows[-2]['err']:.1e}, "
             f"at the end {rows[-1]['err']:.1e}")
    return rows


# ------------------------------------------------------------------------------------------
# part warmguard (issue 22): warm starts on the second eigenvector, random part vs guard

def _guard_case(kind: str, seed: int):
    """The four models of the accuracy test (tests/deep_curvature/test_eigen.py), float64."""
    torch.manual_seed(seed)
    if kind == "mlp_softplus":
        m = MLP((6,), 4, hidden=(10,), activation="softplus").double()
        return m, torch.randn(64, 6, dtype=torch.float64), torch.randint(4, (64,))
    if kind == "cnn_softplus":
        m = SmallCNN((1, 8, 8), 3, width=2, hidden=8, activation="softplus").double()
        return m, torch.rand(32, 1, 8, 8, dtype=torch.float64), torch.randint(3, (32,))
    m = MLP((8,), 3, hidden=(12, 6), activation="elu").double()
    return m, torch.randn(48, 8, dtype=torch.float64), torch.randint(3, (48,))


def bench_warmguard(starts: int) -> list[dict]:
    from hessbatch.deep._hvp import unflatten
    rows: dict = {}
    for kind, seed in (("mlp_softplus", 24), ("cnn_softplus", 7), ("cnn_softplus", 16),
                       ("mlp_elu", 50)):
        model, x, y = _guard_case(kind, seed)
        op = HessianOperator(model, F.cross_entropy, [(x, y)])
        ev, vecs = torch.linalg.eigh(op.dense())
        lam1 = ev[-1].item()
        u1, u2 = unflatten(vecs[:, -1], op.params), unflatten(vecs[:, -2], op.params)
        for s in range(starts):
            def add(name, r):
                rows.setdefault(name, []).append((abs(r.value - lam1) / lam1, r.n_hvp))
            add("cold", top_eigenvalue(model, F.cross_entropy, [(x, y)], seed=s))
            for mix in (0.1, 0.3, 1.0, 3.0):
                for which, u in (("top", u1), ("second", u2)):
                    add(f"warm from the {which} eigenvector, mix {mix}, no guard",
                        top_eigenvalue(model, F.cross_entropy, [(x, y)], seed=s, start=u,
                                       warm_mix=mix, confirm_warm=False))
            for which, u in (("top", u1), ("second", u2)):
                add(f"warm from the {which} eigenvector, mix 0.1, guard",
                    top_eigenvalue(model, F.cross_entropy, [(x, y)], seed=s, start=u))
    return [{"start": k, "solves": len(v), "off_1e-2": sum(e > 1e-2 for e, _ in v),
             "mean_hvp": statistics.mean(n for _, n in v), "max_err": max(e for e, _ in v)}
            for k, v in rows.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("hvp", "eig", "stop", "decide", "warmguard", "all"),
                   default="all",
                   help="hvp: HVP cost; eig: accuracy vs pyhessian; stop: Lanczos stopping rule "
                        "over many small models; decide, warmguard: issue 22 (ResNet18 "
                        "deciding checks; the warm-start guard) (default %(default)s: the "
                        "first three)")
    p.add_argument("--models", type=int, default=60,
                   help="small models in the stopping-rule study (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds per HVP measurement (default %(default)s)")
    p.add_argument("--seeds", type=int, default=5,
                   help="start vectors per eigenvalue comparison (default %(default)s)")
    p.add_argument("--budgets", default="5,10,20",
                   help="HVP budgets of the eigenvalue comparison (default %(default)s)")
    p.add_argument("--resnet-ref-hvp", type=int, default=60,
                   help="Lanczos products of the ResNet18 reference value (default %(default)s)")
    p.add_argument("--resnet-width", type=int, default=None,
                   help="ResNet18 width of part decide (default: the model's, 64)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default %(default)s: steadier on a shared machine)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    for name in ("repeats", "seeds", "resnet_ref_hvp", "threads", "models"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        budgets = tuple(int(b) for b in args.budgets.split(","))
    except ValueError:
        p.error(f"--budgets must be comma-separated ints, got {args.budgets!r}")
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s); pyhessian: "
          f"{'0.1 installed' if PyHessian is not None else 'NOT installed (own power only)'}")
    out = {}
    if args.part in ("hvp", "all"):
        rows = bench_hvp(args.repeats)
        out["hvp"] = rows
        print("\nOne HVP vs one gradient, same batch (medians of interleaved repeats, ms)")
        print(format_table(
            ("model", "params", "batch", "gradient", "HVP reuse", "HVP/grad", "rebuild/grad",
             "fwd-rev/grad", "eig10 reuse/rebuild"),
            [(r["model"], r["params"], r["batch"], f"{1e3 * r['t_gradient']:.1f}",
              f"{1e3 * r['t_hvp_reuse']:.1f}", f"{r['hvp_over_grad']:.2f}",
              f"{r['rebuild_over_grad']:.2f}", f"{r['fwdrev_over_grad']:.2f}",
              f"{r['eig10_reuse_over_rebuild']:.2f}") for r in rows]))
    if args.part in ("eig", "all"):
        rows = bench_eig(args.seeds, budgets, args.resnet_ref_hvp)
        out["eig"] = rows
        print(f"\nTop eigenvalue at a fixed HVP budget, {args.seeds} start vectors")
        print(format_table(
            ("case", "lam2/lam1", "HVPs", "method", "median rel err", "max rel err",
             "median time s"),
            [(r["case"], f"{r['lambda2_over_lambda1']:.3f}", r["hvp"], r["method"],
              f"{r['median_rel_err']:.1e}", f"{r['max_rel_err']:.1e}",
              f"{r['median_time_s']:.2f}") for r in rows]))
        for note in sorted({r["reference"] for r in rows}):
            print(f"reference: {note}")
    if args.part in ("stop", "all"):
        res = bench_stop(args.models, 8)
        out["stop"] = res
        print(f"\nLanczos stopping rule: {res['models']} small models (softplus MLP, softplus CNN,"
              f" ELU MLP) x {res['starts']} start vectors = {res['runs']} runs, tol 1e-2, "
              "exact spectra")
        print(format_table(
            ("rule", "mean HVPs", "within 1e-2", "spoiled", "top-2 within 10%: ok/runs",
             "max rel err"),
            [(r["rule"], f"{r['mean_hvp']:.2f}", f"{100 * r['within_tol']:.1f}%", r["spoiled"],
              f"{r['close_within_tol'][0]}/{r['close_within_tol'][1]}", f"{r['max_err']:.1e}")
             for r in res["table"]]))
        print("spoiled: runs that the full budget gets within 1e-2 but the rule stops outside it")
    if args.part == "decide":
        rows = bench_decide(args.seeds, args.resnet_ref_hvp, 10, args.resnet_width)
        out["decide"] = rows
        print(f"\nResNet18 (width {args.resnet_width or 64}) 3x16x16, batch 32, cold starts: a "
              f"deciding check (reference: "
              f"{args.resnet_ref_hvp}-product Lanczos, {rows[0]['ref']:.6g}, residual "
              f"{rows[0]['ref_residual']:.1e})")
        table = []
        for name in dict.fromkeys(r["variant"] for r in rows):
            rs = [r for r in rows if r["variant"] == name]
            table.append((name, len(rs), f"{statistics.mean(r['n_hvp'] for r in rs):.1f}",
                          sum(r["status"] == "not_converged" for r in rs),
                          sum(r["err"] > 1e-2 for r in rs), f"{max(r['err'] for r in rs):.1e}"))
        print(format_table(("solver", "starts", "mean HVPs", "not converged", "> 1e-2 off",
                            "max rel err"), table))
    if args.part == "warmguard":
        rows = bench_warmguard(8)
        out["warmguard"] = rows
        print("\nWarm starts on the four accuracy-test models x 8 seeds, no threshold (every "
              "value decides), against eigvalsh")
        print(format_table(("start", "solves", "> 1e-2 off", "mean HVPs", "max rel err"),
                           [(r["start"], r["solves"], r["off_1e-2"], f"{r['mean_hvp']:.2f}",
                             f"{r['max_err']:.1e}") for r in rows]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
