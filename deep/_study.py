"""The precursor study (Yao et al., NeurIPS 2018) as a resumable batch of runs.

For every (activation, method, batch size, seed) the study trains a model with
:class:`~hessbatch.deep.Trainer` (the same options as ``hessbatch train``) and measures, at the
end of training, in float64 by default:

* the top k eigenvalues of the Hessian of the mean training loss over the *whole* training set
  (:func:`~hessbatch.deep._spectrum.top_k_eigenvalues`, block Lanczos, micro-batched products);
* its trace (Hutchinson, Rademacher probes) with the standard error;
* test accuracy under FGSM and PGD at each eps;
* the training loss along the top eigenvector and along a random direction of the same (unit)
  norm, ``theta + t d`` for ``t`` in ``[-r, r]``;
* the top and bottom eigenvalue of the input-space Hessian at clean and at FGSM test points.

Then, for each (activation, method, seed), the loss and accuracy along the straight line from the
smallest-batch to the largest-batch solution, ``lam`` in ``[-0.5, 1.5]``.

Layout of the output folder::

    DIR/study.json                 the options (a second call must match them)
    DIR/runs/<run>/checkpoint.pt   the trainer's checkpoint (every epoch: resumable)
    DIR/runs/<run>/measure.json    written last: a run with it is finished and skipped
    DIR/interpolation/<line>.json  one per (activation, method, seed)
    DIR/results.json, DIR/*.csv, DIR/*.png

A run is named ``<activation>-<method>-b<B>-s<seed>``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hessbatch import Scheduler
from hessbatch._cli_common import AggFigures, Progress, config_from_args, format_table
from hessbatch._outputs import write_file, write_files

from ._adversarial import fgsm
from ._cli_train import _SPEC_KEYS, build_from_spec
from ._hvp import unflatten
from ._robustness import attack_accuracy, dataset_loss, interpolate, loss_along
from ._spectrum import DatasetHessian, bottom_eigenvalue, hutchinson_trace, \
    input_hessian_extremes, logit_jacobian_sq_norm, top_k_eigenvalues
from ._trainer import Trainer, load_checkpoint

__all__ = ["run_name", "measure", "run_study", "MEASURE_KEYS"]

#: the options that change what a run measures (stored in study.json, must match on resume)
MEASURE_KEYS = ("top_k", "eig_tol_study", "eig_max_hvp", "bottom_max_hvp", "trace_probes",
                "hessian_samples",
                "hessian_micro_batch", "eps", "pgd_steps", "attack_samples", "landscape_radius",
                "landscape_points", "input_samples", "input_eps", "input_steps", "lambdas",
                "measure_dtype")
#: bottom < -INPUT_PSD_RTOL * top counts as "negative beyond rounding". The input Hessian is
#: always computed in float64: at a confident prediction diag(p) - p p^T nearly cancels, and in
#: float32 the rounding (about 1e-6 absolute) then exceeds a top eigenvalue of 1e-5 (measured on
#: a trained ReLU CNN: bottom/top -0.09 in float32, -1e-16 in float64 at the same point).
INPUT_PSD_RTOL = 1e-8
#: ... and the absolute part of the rounding floor, times ||J||_F^2 (see logit_jacobian_sq_norm)
INPUT_PSD_JTOL = 1e-12


def run_name(activation: str, method: str, batch: int, seed: int) -> str:
    """The folder name of one run."""
    return f"{activation}-{method}-b{batch}-s{seed}"


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _atomic_json(path: Path, doc: Any) -> None:
    write_file(path, json.dumps(doc, indent=1))


def _read_json(path: Path, what: str, need: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object the study wrote earlier, or one line naming the file, the field and the
    problem (a damaged file on resume)."""
    fix = "delete it to redo that part, or use another --out"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: damaged {what}, not valid JSON ({exc}); {fix}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: damaged {what}: expected a JSON object, got "
                         f"{type(doc).__name__}; {fix}")
    missing = [k for k in need if k not in doc]
    if missing:
        raise ValueError(f"{path}: not a {what} of hessbatch study: no {missing[0]!r} field; "
                         f"{fix}")
    return doc


# --------------------------------------------------------------------------------------------
# one run: training


def _run_namespace(args: argparse.Namespace, activation: str, method: str, batch: int,
                   seed: int) -> argparse.Namespace:
    ns = copy.copy(args)
    ns.activation, ns.method, ns.batch_size, ns.seed = activation, method, batch, seed
    # B is the fixed batch of bl and B0 of abs/absa; the cap must admit it.
    ns.max_batch_size = max(batch, args.max_batch_size or batch)
    return ns


def _snapshot_path(run_dir: Path, target: float) -> Path:
    return run_dir / "at_loss" / f"{target:g}.pt"


def _save_snapshot(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(doc, tmp)
    tmp.replace(path)


def train_run(ns: argparse.Namespace, run_dir: Path, device: torch.device, label: str,
              quiet: bool, targets: tuple[float, ...] = ()):
    """Train one run (resuming its checkpoint); returns ``(model, bundle, trainer, seconds)``.

    With ``targets`` (training losses, descending), the mean training loss over the whole
    training set is computed after every epoch (eval mode); the first epoch at which it is
    <= a target saves the model's weights as ``at_loss/<target>.pt``, and training stops
    once the last target is reached (or at ``--epochs``, the cap). ``seconds`` is the training
    wall time summed over every call that trained this run (resumes included).
    """
    spec = {k: getattr(ns, k) for k in _SPEC_KEYS}
    spec["method"] = ns.method
    bundle, model = build_from_spec(spec, device)
    config = config_from_args(ns, samples_per_epoch=len(bundle.train),
                              epochs=10 if ns.epochs is None else ns.epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=spec["momentum"],
                                weight_decay=spec["weight_decay"])
    trainer = Trainer(model, optimizer, F.cross_entropy, bundle.train, Scheduler(config),
                      test_data=bundle.test, hessian_batch_size=spec["hessian_batch"],
                      eig_method=spec["eig_method"], max_hvp=spec["max_hvp"],
                      eig_tol=spec["eig_tol"], adversary=spec["adversary"],
                      last_batch=spec["last_batch"], seed=spec["seed"])
    ckpt = run_dir / "checkpoint.pt"
    seconds = {"before": 0.0, "start": time.perf_counter()}
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        saved = state.get("extra", {}).get("spec")
        if saved != spec:
            diff = sorted(k for k in set(spec) | set(saved or {})
                          if (saved or {}).get(k) != spec.get(k))
            raise ValueError(f"{ckpt} was trained with other options ({', '.join(diff)} "
                             "differ); use another --out or the same options")
        trainer.load_state_dict(state)
        seconds["before"] = float(state.get("extra", {}).get("train_seconds", 0.0))
        if not trainer.scheduler.decision.finished:
            _log(f"{label}: resuming at epoch {state['scheduler']['state']['epoch']}", quiet)
    n = len(bundle.train)
    progress = Progress(config.epochs * n, f"{label} train", enabled=not quiet)
    progress.done = trainer.scheduler.decision.samples_seen
    last = {"t": 0.0, "n": 0}
    pending = [t for t in targets if not _snapshot_path(run_dir, t).exists()]
    xtr, ytr = (t.to(device) for t in bundle.train.tensors)

    def on_update(tr: Trainer, d) -> None:
        last["n"] += tr.update_log[-1][0]
        now = time.perf_counter()
        if now - last["t"] >= 0.5 or d.samples_seen % n == 0:
            progress.update(last["n"], f"epoch {d.epoch + 1}/{config.epochs} B={d.batch_size}")
            last.update(t=now, n=0)

    def total_seconds() -> float:
        return seconds["before"] + time.perf_counter() - seconds["start"]

    def on_epoch(tr: Trainer, m) -> None:
        if pending:
            loss, acc = dataset_loss(tr.model, xtr, ytr)
            while pending and loss <= pending[0]:
                target = pending.pop(0)
                _save_snapshot(_snapshot_path(run_dir, target), {
                    "model": copy.deepcopy(tr.model.state_dict()), "target": target,
                    "train_loss": loss, "train_accuracy": acc, "epoch": m.epoch,
                    "updates": m.updates, "batch_size": m.batch_size,
                    "largest_batch": max(h.batch_size for h in tr.history)})
                _log(f"{label}: training loss {loss:.4g} <= {target:g} at epoch {m.epoch} "
                     f"({m.updates} updates)", quiet)
        tr.save(ckpt, extra={"spec": spec, "train_seconds": total_seconds()})

    if not targets:
        trainer.run(on_update=on_update, on_epoch=on_epoch)
    # The loop has no stop hook: with targets, train one epoch per call and check between.
    while targets and pending and not trainer.scheduler.decision.finished:
        trainer.run(1, on_update=on_update, on_epoch=on_epoch)
    progress.close()
    if not ckpt.exists():
        trainer.save(ckpt, extra={"spec": spec, "train_seconds": total_seconds()})
    if pending:
        _log(f"{label}: stopped at the --epochs cap before training loss {pending[0]:g}", quiet)
    return model, bundle, trainer, total_seconds()


# --------------------------------------------------------------------------------------------
# one run: measurements


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int):
    """The first ``n`` of a seeded permutation (all when n == 0 or n >= len)."""
    if n <= 0 or n >= x.shape[0]:
        return x, y
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def measure(model: torch.nn.Module, train: tuple[torch.Tensor, torch.Tensor],
            test: tuple[torch.Tensor, torch.Tensor], opts: dict[str, Any], *, seed: int = 0,
            log=lambda msg: None) -> dict[str, Any]:
    """Every end-of-training measurement of one model (module docstring).

    Args:
        model: the trained model (not modified: a copy is measured, in ``measure_dtype``).
        train, test: ``(x, y)`` tensors on the model's device.
        opts: the :data:`MEASURE_KEYS` options.
        seed: seeds every random choice (probes, start vectors, subsets, the random direction).
        log: called with a line after each stage.

    Returns:
        A JSON-able dict.
    """
    dtype = {"float64": torch.float64, "float32": torch.float32}[opts["measure_dtype"]]
    m = copy.deepcopy(model).to(dtype)
    m.eval()
    xtr, ytr = train[0].to(dtype), train[1]
    xte, yte = test[0].to(dtype), test[1]
    out: dict[str, Any] = {"times": {}}
    t0 = time.perf_counter()
    out["train_loss"], out["train_accuracy"] = dataset_loss(m, xtr, ytr)
    out["test_loss"], out["test_accuracy"] = dataset_loss(m, xte, yte)

    xh, yh = _subset(xtr, ytr, opts["hessian_samples"], seed)
    op = DatasetHessian(m, F.cross_entropy, xh, yh, micro_batch=opts["hessian_micro_batch"])
    stage = {"name": "top-k eigenvalues", "t": time.perf_counter(), "start": time.perf_counter(),
             "passes": 0, "hvps": 0}

    def on_pass(o: DatasetHessian) -> None:
        # a line every 10 s: one pass over a large training set can take seconds
        now = time.perf_counter()
        if now - stage["t"] >= 10:
            log(f"{stage['name']}: {o.n_passes - stage['passes']} passes over {o.n_samples} "
                f"samples, {o.n_hvp - stage['hvps']} HVPs, {now - stage['start']:.0f} s")
            stage["t"] = now

    op.on_pass = on_pass
    spec = top_k_eigenvalues(op, opts["top_k"], max_hvp=opts["eig_max_hvp"],
                             tol=opts["eig_tol_study"], seed=seed)
    out["spectrum"] = spec.to_dict()
    out["spectrum"]["hessian_samples"] = int(xh.shape[0])
    out["times"]["spectrum"] = time.perf_counter() - t0
    log(f"top-{opts['top_k']} eigenvalues {', '.join(f'{v:.4g}' for v in spec.values)} "
        f"({spec.n_hvp} HVPs, {'converged' if spec.converged else 'NOT converged'})")

    t0 = time.perf_counter()
    stage.update(name="bottom eigenvalue", t=t0, start=t0, passes=op.n_passes, hvps=op.n_hvp)
    bottom = bottom_eigenvalue(op, max_hvp=opts["bottom_max_hvp"], seed=seed + 5)
    bottom["over_top"] = bottom["value"] / max(abs(spec.values[0]), 1e-300)
    out["bottom"] = bottom
    out["times"]["bottom"] = time.perf_counter() - t0
    log(f"most negative eigenvalue <= {bottom['value']:.4g} (residual {bottom['residual']:.2g}, "
        f"{bottom['n_hvp']} HVPs, {bottom['over_top']:.3g} of the top)")

    t0 = time.perf_counter()
    stage.update(name="trace", t=t0, start=t0, passes=op.n_passes, hvps=op.n_hvp)
    # deflated by the top-k Ritz vectors: the plain +-2 se interval under-covers on spectra
    # where two eigenvalues hold most of the trace (docs/study.md, "The trace's interval")
    tr = hutchinson_trace(op, opts["trace_probes"], seed=seed + 1,
                          deflate=spec.vectors if spec.vectors.shape[1] < op.dim else None)
    out["trace"] = tr.to_dict()
    out["times"]["trace"] = time.perf_counter() - t0
    log(f"trace {tr.trace:.4g}, 95% interval [{tr.low:.4g}, {tr.high:.4g}] ({tr.n_probes} "
        f"probes, top {tr.deflated} exact)")

    t0 = time.perf_counter()
    xa, ya = _subset(xte, yte, opts["attack_samples"], seed + 2)
    out["robustness"] = attack_accuracy(m, xa, ya, opts["eps"], pgd_steps=opts["pgd_steps"])
    out["robustness"]["samples"] = int(xa.shape[0])
    out["times"]["robustness"] = time.perf_counter() - t0
    log("FGSM/PGD accuracy at eps " + ", ".join(
        f"{e:g}: {f:.3f}/{p:.3f}" for e, f, p in zip(*(out["robustness"][k]
                                                        for k in ("eps", "fgsm", "pgd")))))

    t0 = time.perf_counter()
    npts, r = opts["landscape_points"], opts["landscape_radius"]
    ts = [r * (2 * i / (npts - 1) - 1) for i in range(npts)] if npts > 1 else [0.0]
    params = [p for p in m.parameters() if p.requires_grad]
    top_dir = unflatten(spec.vectors[:, 0].contiguous(), params)
    gen = torch.Generator().manual_seed(seed + 3)
    rnd = torch.randn(op.dim, generator=gen, dtype=torch.float64).to(dtype)
    rnd_dir = unflatten(rnd / rnd.norm(), params)   # same (unit) norm as the eigenvector
    out["landscape"] = {"t": ts, "top_eigenvector": loss_along(m, top_dir, ts, xh, yh),
                        "random": loss_along(m, rnd_dir, ts, xh, yh)}
    out["times"]["landscape"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    xi, yi = _subset(xte, yte, opts["input_samples"], seed + 4)
    m64 = m if dtype == torch.float64 else copy.deepcopy(m).to(torch.float64)
    xi = xi.to(torch.float64)
    res = {}
    for kind, pts in (("clean", xi), ("fgsm", fgsm(m64, F.cross_entropy, xi, yi,
                                                   opts["input_eps"]))):
        top, bottom = input_hessian_extremes(m64, pts, yi, steps=opts["input_steps"],
                                             seed=seed)
        scale = top.abs().clamp_min(1e-300)
        floor = INPUT_PSD_RTOL * scale + INPUT_PSD_JTOL * logit_jacobian_sq_norm(m64, pts)
        neg = bottom < -floor
        res[kind] = {"top": top.tolist(), "bottom": bottom.tolist(),
                     "max_top": float(top.max()), "min_bottom": float(bottom.min()),
                     "min_bottom_over_top": float((bottom / scale).min()),
                     "negative_fraction": float(neg.double().mean()),
                     "negative_rtol": INPUT_PSD_RTOL,
                     "rounding_floor": floor.tolist()}
    res["eps"] = opts["input_eps"]
    out["input_hessian"] = res
    out["times"]["input_hessian"] = time.perf_counter() - t0
    log(f"input Hessian: min bottom/top clean {res['clean']['min_bottom_over_top']:.3g}, "
        f"fgsm {res['fgsm']['min_bottom_over_top']:.3g}; negative at "
        f"{100 * res['clean']['negative_fraction']:.0f}% / "
        f"{100 * res['fgsm']['negative_fraction']:.0f}% of points")
    return out


# --------------------------------------------------------------------------------------------
# the study


def _study_options(args: argparse.Namespace) -> dict[str, Any]:
    keys = set(_SPEC_KEYS) - {"activation", "seed"}
    doc = {k: getattr(args, k) for k in sorted(keys)}
    doc.update({k: getattr(args, k) for k in MEASURE_KEYS})
    for k in ("lr", "max_batch_size", "micro_batch_size", "decay_epochs", "decay_factor",
              "alpha", "beta", "check_every", "patience", "adv_eps", "adv_fraction",
              "adv_decay", "adv_stop", "warmup_epochs", "epochs"):
        v = getattr(args, k)
        doc[k] = list(v) if isinstance(v, tuple) else v
    doc["eps"] = list(doc["eps"])
    doc["lambdas"] = list(doc["lambdas"])
    doc["loss_targets"] = list(args.loss_targets or ())
    return doc


def _check_study_file(out: Path, opts: dict[str, Any]) -> None:
    path = out / "study.json"
    if path.exists():
        saved = _read_json(path, "study.json", ("options",))["options"]
        if not isinstance(saved, dict):
            raise ValueError(f"{path}: 'options' is {type(saved).__name__}, not an object; "
                             "delete it to redo that part, or use another --out")
        diff = sorted(k for k in set(saved) | set(opts) if saved.get(k) != opts.get(k))
        if diff:
            raise ValueError(
                f"{out} holds a study run with other options ({', '.join(diff)} differ, e.g. "
                f"{diff[0]}: {saved.get(diff[0])!r} there, {opts.get(diff[0])!r} now); use "
                "another --out, or the same options (the run list may change freely)")
    else:
        _atomic_json(path, {"options": opts})


def run_study(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Train and measure every run, skipping finished ones; write every output."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    opts = _study_options(args)
    _check_study_file(out, opts)
    mopts = {k: getattr(args, k) for k in MEASURE_KEYS}
    grid = [(a, m, b, s) for a in args.activations for m in args.methods
            for b in args.batch_sizes for s in args.seeds]
    runs = []
    started = time.perf_counter()
    for i, (act, method, batch, seed) in enumerate(grid, 1):
        name = run_name(act, method, batch, seed)
        run_dir = out / "runs" / name
        label = f"[{i}/{len(grid)}] {name}"
        done = run_dir / "measure.json"
        if done.exists():
            _log(f"{label}: finished earlier, skipped", args.quiet)
            runs.append(_read_json(done, "measure.json", _RUN_FIELDS))
            continue
        ns = _run_namespace(args, act, method, batch, seed)
        if method in ("abs", "absa") and batch >= ns.max_batch_size:
            _log(f"{label}: warning: B = {batch} is already --max-batch, so {method} never "
                 "checks an eigenvalue nor uses an adversary: this run is bl; raise "
                 "--max-batch to study it", args.quiet)
        targets = tuple(args.loss_targets or ())
        model, bundle, trainer, t_train = train_run(ns, run_dir, device, label, args.quiet,
                                                    targets)
        t0 = time.perf_counter()
        _log(f"{label}: trained in {t_train:.0f} s, test accuracy "
             f"{100 * (trainer.history[-1].test_accuracy or 0):.2f}%; measuring", args.quiet)
        x, y = bundle.train.tensors
        xt, yt = bundle.test.tensors
        train = (x.to(device), y.to(device))
        test = (xt.to(device), yt.to(device))
        res = measure(model, train, test, mopts, seed=seed,
                      log=lambda msg: _log(f"{label}: {msg}", args.quiet))
        res.update(name=name, activation=act, method=method, batch_size=batch, seed=seed,
                   epochs=trainer.history[-1].epoch if trainer.history else 0,
                   updates=trainer.history[-1].updates if trainer.history else None,
                   largest_batch=max(m.batch_size for m in trainer.history)
                   if trainer.history else None,
                   train_time=t_train, measure_time=time.perf_counter() - t0)
        if targets:
            res["at_loss"] = _measure_targets(model, run_dir, targets, train, test, mopts,
                                              seed, res, label, args.quiet)
        _atomic_json(done, res)
        runs.append(res)
        elapsed = time.perf_counter() - started
        _log(f"{label}: done ({elapsed / 60:.1f} min so far)", args.quiet)
    lines = _interpolations(args, out, device, grid)
    doc = {"options": opts, "runs": runs, "interpolation": lines}
    files: dict[str, Any] = {"results.json": json.dumps(doc, indent=1), **csv_files(doc)}
    pngs = plot_files(doc)
    if pngs is None:
        print("PNGs not written: matplotlib is missing; pip install 'hessbatch[plot]'",
              file=sys.stderr)
    write_files(out, {**files, **(pngs or {})})   # all or nothing
    return doc


#: what a finished run's measure.json must hold (a damaged one is named, not a KeyError)
_RUN_FIELDS = ("name", "activation", "method", "batch_size", "seed", "spectrum", "trace",
               "robustness", "landscape", "input_hessian")
_MEASURED = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "spectrum", "bottom",
             "trace", "robustness", "landscape", "input_hessian", "times")


def _measure_targets(model: torch.nn.Module, run_dir: Path, targets: tuple[float, ...],
                     train, test, mopts: dict[str, Any], seed: int, final: dict[str, Any],
                     label: str, quiet: bool) -> list[dict[str, Any]]:
    """Every measurement of the model saved at each training-loss target (matched loss).

    A target first reached at the last epoch trained is the final model: its measurement is
    ``final``'s, not repeated.
    """
    out = []
    for target in targets:
        path = _snapshot_path(run_dir, target)
        if not path.exists():
            out.append({"target": target, "reached": False})
            continue
        snap = torch.load(path, map_location=train[0].device, weights_only=True)
        row = {"target": target, "reached": True,
               **{k: snap[k] for k in ("epoch", "updates", "batch_size", "largest_batch")},
               "train_loss_at_stop": snap["train_loss"]}
        if snap["epoch"] == final["epochs"]:
            row.update({k: final[k] for k in _MEASURED})
        else:
            m = copy.deepcopy(model)
            m.load_state_dict(snap["model"])
            row.update(measure(m, train, test, mopts, seed=seed,
                               log=lambda msg: _log(f"{label} at loss {target:g}: {msg}",
                                                    quiet)))
        out.append(row)
    return out


def _interpolations(args, out: Path, device: torch.device, grid) -> list[dict[str, Any]]:
    """Small-to-large-batch lines, one per (activation, method, seed) with >= 2 batch sizes."""
    if len(args.batch_sizes) < 2:
        return []
    small, large = min(args.batch_sizes), max(args.batch_sizes)
    lines = []
    for act in args.activations:
        for method in args.methods:
            for seed in args.seeds:
                path = out / "interpolation" / f"{act}-{method}-s{seed}.json"
                if path.exists():
                    lines.append(_read_json(path, "interpolation line",
                                            ("lambda", "train_loss", "test_loss", "train_acc",
                                             "test_acc")))
                    continue
                ca = load_checkpoint(out / "runs" / run_name(act, method, small, seed)
                                     / "checkpoint.pt")
                cb = load_checkpoint(out / "runs" / run_name(act, method, large, seed)
                                     / "checkpoint.pt")
                bundle, model = build_from_spec(ca["extra"]["spec"], device)
                data = {"train": tuple(t.to(device) for t in bundle.train.tensors),
                        "test": tuple(t.to(device) for t in bundle.test.tensors)}
                res = interpolate(model, ca["model"], cb["model"], args.lambdas, data)
                res.update(activation=act, method=method, seed=seed, small_batch=small,
                           large_batch=large)
                _atomic_json(path, res)
                lines.append(res)
    return lines


# --------------------------------------------------------------------------------------------
# outputs


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_csvs(out: Path, doc: dict[str, Any]) -> None:
    """Write :func:`csv_files` into ``out`` (all or nothing)."""
    write_files(out, csv_files(doc))


def csv_files(doc: dict[str, Any]) -> dict[str, str]:
    """runs.csv, at_loss.csv, spectrum.csv, robustness.csv, landscape.csv, input_hessian.csv,
    interpolation.csv."""
    key = ["activation", "method", "batch_size", "seed"]
    runs = doc["runs"]
    files: dict[str, str] = {}
    files["runs.csv"] = _csv_text(
        key + ["updates", "largest_batch", "train_loss", "train_accuracy", "test_loss",
                      "test_accuracy", "top_eigenvalue", "bottom_eigenvalue", "trace",
                      "trace_stderr", "trace_low95", "trace_high95",
                      "input_min_bottom_over_top_clean", "input_min_bottom_over_top_fgsm",
                      "train_time_s", "measure_time_s"],
               [[r[k] for k in key] + [r["updates"], r["largest_batch"], r["train_loss"],
                                       r["train_accuracy"], r["test_loss"], r["test_accuracy"],
                                       r["spectrum"]["values"][0], r["bottom"]["value"],
                                       r["trace"]["trace"], r["trace"]["stderr"],
                                       r["trace"]["low"], r["trace"]["high"],
                                       r["input_hessian"]["clean"]["min_bottom_over_top"],
                                       r["input_hessian"]["fgsm"]["min_bottom_over_top"],
                                       r["train_time"], r["measure_time"]] for r in runs])
    eps_max = doc["options"]["eps"][-1]
    files["at_loss.csv"] = _csv_text(
        key + ["target", "reached", "epoch", "updates", "largest_batch", "train_loss",
                      "test_accuracy", "top_eigenvalue", "bottom_eigenvalue", "trace",
                      "trace_low95", "trace_high95", f"fgsm_{eps_max:g}", f"pgd_{eps_max:g}"]
               + [f"pgd_{e:g}" for e in doc["options"]["eps"][:-1]],
               [[r[k] for k in key] + ([a["target"], True, a["epoch"], a["updates"],
                                        a["largest_batch"], a["train_loss"],
                                        a["test_accuracy"], a["spectrum"]["values"][0],
                                        a["bottom"]["value"], a["trace"]["trace"],
                                        a["trace"]["low"], a["trace"]["high"],
                                        a["robustness"]["fgsm"][-1], a["robustness"]["pgd"][-1]]
                                       + a["robustness"]["pgd"][:-1]
                                       if a["reached"] else [a["target"], False])
                for r in runs for a in r.get("at_loss", [])])
    files["spectrum.csv"] = _csv_text(key + ["rank", "eigenvalue", "residual", "converged"],
               [[r[k] for k in key] + [i + 1, v, res, r["spectrum"]["converged"]]
                for r in runs for i, (v, res) in enumerate(zip(r["spectrum"]["values"],
                                                                r["spectrum"]["residuals"]))])
    files["robustness.csv"] = _csv_text(key + ["attack", "eps", "accuracy"],
               [[r[k] for k in key] + [a, e, acc] for r in runs for a in ("fgsm", "pgd")
                for e, acc in zip(r["robustness"]["eps"], r["robustness"][a])])
    files["landscape.csv"] = _csv_text(key + ["direction", "t", "train_loss"],
               [[r[k] for k in key] + [d, t, v] for r in runs
                for d in ("top_eigenvector", "random")
                for t, v in zip(r["landscape"]["t"], r["landscape"][d])])
    files["input_hessian.csv"] = _csv_text(key + ["point", "sample", "top", "bottom"],
               [[r[k] for k in key] + [p, i, t, b] for r in runs for p in ("clean", "fgsm")
                for i, (t, b) in enumerate(zip(r["input_hessian"][p]["top"],
                                               r["input_hessian"][p]["bottom"]))])
    files["interpolation.csv"] = _csv_text(
        ["activation", "method", "seed", "small_batch", "large_batch", "lambda",
                "train_loss", "train_accuracy", "test_loss", "test_accuracy"],
               [[ln["activation"], ln["method"], ln["seed"], ln["small_batch"],
                 ln["large_batch"], lam, a, b, c, d]
                for ln in doc["interpolation"]
                for lam, a, b, c, d in zip(ln["lambda"], ln["train_loss"], ln["train_acc"],
                                           ln["test_loss"], ln["test_acc"])])
    return files


def _groups(runs):
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["activation"], r["method"], r["batch_size"]), []).append(r)
    return groups


def _b_label(method: str, b: int) -> str:
    """B of a bl run, B0 (the initial batch) of an abs/absa run."""
    return f"B={b}" if method == "bl" else f"B0={b}"


def _mean(v):
    v = [x for x in v if x is not None]
    return sum(v) / len(v) if v else math.nan


def summary_table(doc: dict[str, Any]) -> str:
    """One line per (activation, method, B), means over seeds."""
    rows = []
    for (act, method, b), rs in sorted(_groups(doc["runs"]).items()):
        eps = rs[0]["robustness"]["eps"]
        rows.append((
            act, method, b, len(rs), round(100 * _mean([r["test_accuracy"] for r in rs]), 2),
            _mean([r["spectrum"]["values"][0] for r in rs]),
            _mean([r["trace"]["trace"] for r in rs]),
            min(r["bottom"]["value"] for r in rs),
            round(100 * _mean([r["robustness"]["fgsm"][-1] for r in rs]), 1),
            round(100 * _mean([r["robustness"]["pgd"][-1] for r in rs]), 1),
            min(r["input_hessian"]["clean"]["min_bottom_over_top"] for r in rs),
            min(r["input_hessian"]["fgsm"]["min_bottom_over_top"] for r in rs)))
    eps_max = doc["options"]["eps"][-1]
    return format_table(("act", "method", "B", "seeds", "test acc %", "lambda_1", "trace",
                         "lambda_min <=",
                         f"FGSM {eps_max:g} %", f"PGD {eps_max:g} %", "inH min b/t clean",
                         "inH min b/t fgsm"), rows)


def write_plots(out: Path, doc: dict[str, Any]) -> bool:
    """Write :func:`plot_files` into ``out``; False without matplotlib."""
    pngs = plot_files(doc)
    if pngs is None:
        return False
    if pngs:
        write_files(out, pngs)
    return True


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_files(doc: dict[str, Any]) -> dict[str, bytes] | None:
    """spectrum.png, vs_loss.png, robustness.png, landscape.png, interpolation.png as PNG
    bytes; None without matplotlib."""
    try:
        plt = AggFigures()   # the process's matplotlib backend is left alone
    except ImportError:
        return None
    pngs: dict[str, bytes] = {}
    runs = doc["runs"]
    if not runs:
        return pngs
    series = sorted({(r["activation"], r["method"]) for r in runs})
    groups = _groups(runs)

    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    for act, method in series:
        bs = sorted(b for (a, m, b) in groups if (a, m) == (act, method))
        # bl at its B; abs/absa at the largest batch it reached (mean over seeds), labelled B0
        xs = [b if method == "bl" else _mean([r["largest_batch"]
                                              for r in groups[(act, method, b)]]) for b in bs]
        lab = f"{act} {method}" if method == "bl" else f"{act} {method} (at final B; B0 marked)"
        for panel, get in ((0, lambda r: r["spectrum"]["values"][0]),
                           (1, lambda r: r["trace"]["trace"]),
                           (2, lambda r: r["test_accuracy"] * 100)):
            line, = ax[panel].plot(xs, [_mean([get(r) for r in groups[(act, method, b)]])
                                        for b in bs], marker="o", label=lab)
            for x, b in zip(xs, bs):
                rs = groups[(act, method, b)]
                if panel == 1:   # each run's 95% interval (deflated Hutchinson)
                    ys = [r["trace"]["trace"] for r in rs]
                    lo = [y - r["trace"].get("low", y) for y, r in zip(ys, rs)]
                    hi = [r["trace"].get("high", y) - y for y, r in zip(ys, rs)]
                    ax[1].errorbar([x] * len(rs), ys, yerr=[lo, hi], fmt=".", ms=3, alpha=0.5,
                                   color=line.get_color(), capsize=2)
                else:
                    ax[panel].scatter([x] * len(rs), [get(r) for r in rs], s=8, alpha=0.4,
                                      color=line.get_color())
                if method != "bl":
                    ax[panel].annotate(f"B0={b}", (x, _mean([get(r) for r in rs])),
                                       fontsize=6, textcoords="offset points", xytext=(3, 3))
    for a, title in zip(ax, ("top Hessian eigenvalue", "Hessian trace, 95% intervals",
                             "test accuracy (%)")):
        a.set_xscale("log", base=2)
        a.set_xlabel("batch size B (bl: fixed; abs/absa: final)")
        a.set_title(title)
        a.grid(alpha=0.3)
    ax[0].set_yscale("log")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    pngs["spectrum.png"] = _png(plt, fig)

    # against the training loss: every measured model (end of training and each loss target)
    # (a target reached at the last epoch trained is the final model: drawn once)
    points = [(r, r) for r in runs] + [(r, a) for r in runs for a in r.get("at_loss", [])
                                       if a["reached"] and a["epoch"] != r.get("epochs")]
    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    eps = doc["options"]["eps"][-1]
    for b in sorted({r["batch_size"] for r in runs}):
        for act, method in series:
            pts = [a for r, a in points if (r["batch_size"], r["activation"], r["method"])
                   == (b, act, method)]
            if not pts:
                continue
            xl = [a["train_loss"] for a in pts]
            for panel, ys in ((0, [a["spectrum"]["values"][0] for a in pts]),
                              (1, [a["trace"]["trace"] for a in pts]),
                              (2, [100 * a["robustness"]["pgd"][-1] for a in pts])):
                ax[panel].scatter(xl, ys, s=14, label=f"{act} {method} B={b}")
    for a, title in zip(ax, ("top Hessian eigenvalue", "Hessian trace",
                             f"PGD accuracy at eps {eps:g} (%)")):
        a.set_xscale("log")
        a.tick_params(axis="x", which="minor", labelbottom=False)
        a.set_xlabel("training loss (whole training set)")
        a.set_title(title)
        a.grid(alpha=0.3)
    ax[0].set_yscale("log")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    pngs["vs_loss.png"] = _png(plt, fig)

    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 4), squeeze=False)
    for a, (act, method) in zip(axes[0], series):
        for (ga, gm, b), rs in sorted(groups.items()):
            if (ga, gm) != (act, method):
                continue
            eps = rs[0]["robustness"]["eps"]
            line, = a.plot(eps, [100 * _mean([r["robustness"]["fgsm"][i] for r in rs])
                                 for i in range(len(eps))], marker=".",
                           label=f"{_b_label(method, b)} FGSM")
            a.plot(eps, [100 * _mean([r["robustness"]["pgd"][i] for r in rs])
                         for i in range(len(eps))], linestyle="--", color=line.get_color(),
                   label=f"{_b_label(method, b)} PGD")
        a.set_title(f"{act} {method}")
        a.set_xlabel("eps (L-inf)")
        a.set_ylabel("test accuracy (%)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    pngs["robustness.png"] = _png(plt, fig)

    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 4), squeeze=False)
    for a, (act, method) in zip(axes[0], series):
        for (ga, gm, b), rs in sorted(groups.items()):
            if (ga, gm) != (act, method):
                continue
            color = None
            for i, r in enumerate(rs):   # every seed, one colour per B
                line, = a.plot(r["landscape"]["t"], r["landscape"]["top_eigenvector"],
                               color=color, lw=1,
                               label=f"{_b_label(method, b)} top eigvec" if i == 0 else None)
                color = line.get_color()
                a.plot(r["landscape"]["t"], r["landscape"]["random"], linestyle=":",
                       color=color, lw=1, label=f"{_b_label(method, b)} random" if i == 0 else None)
        seeds = sorted({r["seed"] for (ga, gm, _), rs in groups.items()
                        if (ga, gm) == (act, method) for r in rs})
        a.set_title(f"{act} {method}, seeds {','.join(map(str, seeds))}")
        a.set_xlabel("t (unit-norm direction)")
        a.set_ylabel("training loss")
        a.set_yscale("log")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    pngs["landscape.png"] = _png(plt, fig)

    if doc["interpolation"]:
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for ln in doc["interpolation"]:
            lab = f"{ln['activation']} {ln['method']} s{ln['seed']}"
            line, = ax[0].plot(ln["lambda"], ln["train_loss"], label=f"{lab} train")
            ax[0].plot(ln["lambda"], ln["test_loss"], linestyle="--", color=line.get_color())
            ax[1].plot(ln["lambda"], [100 * v for v in ln["test_acc"]], color=line.get_color(),
                       label=lab)
        ln = doc["interpolation"][0]
        for a in ax:
            a.axvline(0, color="gray", lw=0.5)
            a.axvline(1, color="gray", lw=0.5)
            a.set_xlabel(f"lambda (0: B={ln['small_batch']}, 1: B={ln['large_batch']})")
            a.grid(alpha=0.3)
        ax[0].set_yscale("log")
        ax[0].set_ylabel("loss (solid train, dashed test)")
        ax[1].set_ylabel("test accuracy (%)")
        ax[1].legend(fontsize=7)
        fig.tight_layout()
        pngs["interpolation.png"] = _png(plt, fig)
    return pngs
