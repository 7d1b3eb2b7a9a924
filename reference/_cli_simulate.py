"""``hessbatch simulate``: the wall-clock time of a schedule on P workers (paper, Appendix C).

Reads what a run did (``metrics.json`` of ``hessbatch train``, ``results.json`` of
``hessbatch mushroom``) or replays an eigenvalue trace through the methods (as
``hessbatch schedule``), and predicts its time with :func:`hessbatch.predict` on a machine
profile given by options or a JSON file. ``--calibrate`` measures the profile on this machine
(needs torch) and compares the prediction with the epoch times a real run measured.
``--paper-table3`` recomputes the paper's Table 3 from its own inputs: the BL and GG rows are
predictions; the ABS and ABSA rows replay schedules chosen to fit the printed totals (the paper
does not print its schedules), so they check consistency, not a prediction. Standard library only,
except ``--calibrate`` (torch) and the plot (matplotlib, optional).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import io
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._cli_common import (AggFigures, add_scheduler_arguments, config_from_args, format_table,
                          int_list)
from ._outputs import check_out_dir, write_files
from ._costmodel import (MachineProfile, Workload, predict, scaling_curve,
                         workload_from_schedule)
from ._scheduler import METHODS, SchedulerConfig

DESCRIPTION = """\
Predict the wall-clock time of a training schedule on P data-parallel workers with the paper's
cost model (Appendix C). Per parameter update on B samples (a of them adversarial):

    t_update + (B t_sample + a t_adv) / P  +  allreduce(P)
    allreduce(P) = 2 (P-1) alpha + 2 (P-1)/P |theta| beta        (ring all-reduce)

and per eigenvalue check of k Hessian-vector products on a Hessian batch of H samples:
t_check + k (H t_hvp / P + allreduce(P)). At P = 1 nothing is communicated.

What is simulated (any mix; each gives one row per method):
  FILE ...            a run's metrics.json (hessbatch train) or results.json (hessbatch
                      mushroom), or a folder holding one
  --trace FILE/--demo an eigenvalue trace replayed through --methods, as `hessbatch schedule`
  --paper-table3      the paper's Table 3 (ResNet18 on ImageNet, P = 512) from its own inputs
                      (BL, GG: predictions; ABS, ABSA: schedules fitted to the totals)

The machine: --profile FILE (JSON, e.g. written by --calibrate) and/or the options of the
"machine profile" group, which override the file. Output: a table of the time by part at
--processes P, a strong-scaling table over --scaling (total seconds per method, and where
communication starts to dominate), --format json, and with --out DIR: simulate.json and
scaling.png (time against P; needs matplotlib).

--calibrate (needs torch) measures the profile on this machine for the model of a
metrics.json (or of a short `hessbatch train` run it makes itself, see --train-args):
per-sample forward/backward, optimizer step, FGSM and HVP times, and all-reduce latency and
bandwidth between 2 local gloo processes; then compares the predicted epoch times with the
measured ones of that run and reports the error.

examples:
  hessbatch simulate --paper-table3
  hessbatch simulate --demo --methods bl,gg,abs --samples-per-epoch 50000 --epochs 90 \\
      --processes 64 --n-params 11689512 --latency 5e-6 --inverse-bandwidth 1e-9 \\
      --time-per-sample 2e-3 --time-per-check 1.0
  hessbatch simulate runs/abs/metrics.json --profile profile.json --out runs/abs/sim
  hessbatch simulate --calibrate --out runs/calib"""

# The paper's Table 3 inputs (ALGORITHM.md section 5): ResNet18 (I3) on ImageNet, 512 processes.
IMAGENET_TRAIN = 1_281_167
RESNET18_PARAMS = 11_689_512
TABLE3_PROCESSES = 512
TABLE3 = {"bl": 16666.0, "gg": 6150.0, "abs": 2666.0, "absa": 3467.0}
TABLE3_COMPUTE = {"bl": 0.022, "gg": 0.022, "abs": 0.022, "absa": 0.036}
TABLE3_COMM = 0.015
TABLE3_EIG = 1.15
# One schedule each that reproduces ABS/ABSA (the paper does not print them; docs/simulate.md):
# B0 = 256 doubled (by an eigenvalue drop) at the end of these epochs, one check per epoch.
TABLE3_GROWTH = {"abs": (5, 13, 21, 29, 37), "absa": (4, 13, 22, 31, 40, 49)}

_DEFAULT_SCALING = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_PROFILE_OPTIONS = ("processes", "n_params", "alpha", "beta", "time_per_update",
                    "time_per_sample", "time_per_adversarial_sample", "time_per_hvp_sample",
                    "time_per_check", "hessian_batch", "hvps_per_check")


# --------------------------------------------------------------------------------------------
# the paper's Table 3


def table3_profile(method: str) -> MachineProfile:
    """The paper's Table 3 machine: P = 512, 0.022 s (ABSA 0.036 s) compute and 0.015 s of
    communication per update, 1.15 s per eigenvalue.

    The paper gives the all-reduce time, not alpha and beta; at fixed P only their sum matters,
    so alpha = 0 and beta is solved from ``2 (P-1)/P |theta| beta = 0.015`` with ResNet18's
    |theta| = 11,689,512.
    """
    p, n = TABLE3_PROCESSES, RESNET18_PARAMS
    return MachineProfile(processes=p, n_params=n, alpha=0.0,
                          beta=TABLE3_COMM / (2 * (p - 1) / p * n),
                          time_per_update=TABLE3_COMPUTE[method], time_per_check=TABLE3_EIG,
                          hvps_per_check=0)


def table3_config(method: str) -> SchedulerConfig:
    """The schedule behind each Table 3 row: 90 epochs of ImageNet from B0 = 256.

    bl: 256 throughout. gg: x10 at the ends of epochs 30, 60 and 80 (256, 2560, 25600,
    256000). abs/absa: doubled at :data:`TABLE3_GROWTH` up to 256 * 2**k.
    """
    base = dict(method=method, lr=0.1, batch_size=256, samples_per_epoch=IMAGENET_TRAIN,
                epochs=90)
    if method == "bl":
        return SchedulerConfig(**base)
    if method == "gg":
        return SchedulerConfig(**base, max_batch_size=256_000, lr_decay_epochs=(30, 60, 80),
                               lr_decay_factor=0.1)
    return SchedulerConfig(**base, max_batch_size=256 * 2 ** len(TABLE3_GROWTH[method]))


def growth_trace(growth_epochs, epochs: int = 90) -> list[float]:
    """An eigenvalue per epoch that halves at each growth epoch and is flat otherwise: with one
    check per epoch, alpha = 2 and gaps under the patience, the batch grows exactly there."""
    lam, out = 1.0, []
    for e in range(1, epochs + 1):
        if e in growth_epochs:
            lam /= 2
        out.append(lam)
    return out


def table3_workload(method: str, last_batch: str = "step") -> Workload:
    """Updates and checks of a Table 3 row, replayed through the core (bl in closed form: its
    batch never changes, so it is ``90 * ceil(N / 256)`` updates, or floor with "drop")."""
    cfg = table3_config(method)
    if method == "bl":
        per = (math.ceil if last_batch == "step" else math.floor)(IMAGENET_TRAIN / 256)
        return Workload(90 * per, 90 * min(per * 256, IMAGENET_TRAIN), 0, 0, 0)
    trace = growth_trace(TABLE3_GROWTH.get(method, ()))
    return workload_from_schedule(cfg, trace, last_batch=last_batch)


def implied_updates(method: str, checks: int) -> float:
    """Updates that Table 3's total implies for ``checks`` eigenvalue checks:
    ``(T - 1.15 C) / (compute + 0.015)``."""
    return (TABLE3[method] - TABLE3_EIG * checks) / (TABLE3_COMPUTE[method] + TABLE3_COMM)


def paper_table3(last_batch: str = "step") -> list[dict[str, Any]]:
    """Table 3 recomputed: one dict per method with the counts, our total and the paper's.

    The replay takes a few seconds (about 300,000 scheduler steps); the result is a pure
    function of ``last_batch`` and is computed once per process.
    """
    if last_batch not in ("step", "drop"):
        raise ValueError(f"last_batch must be 'step' or 'drop', got {last_batch!r}")
    return copy.deepcopy(_paper_table3(last_batch))


@functools.lru_cache(maxsize=2)
def _paper_table3(last_batch: str) -> list[dict[str, Any]]:
    rows = []
    for method in ("bl", "gg", "abs", "absa"):
        w = table3_workload(method, last_batch)
        cost = predict(w, table3_profile(method))
        cfg = table3_config(method)
        rows.append({
            "method": method, "updates": w.updates, "checks": w.checks,
            "largest_batch": cfg.max_batch_size,
            "growth_epochs": list(TABLE3_GROWTH.get(method, (30, 60, 80) if method == "gg"
                                                     else ())),
            "compute_per_update": TABLE3_COMPUTE[method],
            "predicted": cost.total, "paper": TABLE3[method],
            "relative_error": cost.total / TABLE3[method] - 1,
            "implied_updates_at_0_checks": implied_updates(method, 0),
            "implied_updates_at_90_checks": implied_updates(method, 90),
            "breakdown": cost.to_dict()})
    return rows


# --------------------------------------------------------------------------------------------
# reading runs


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def resolve_input(path: str | Path) -> Path:
    """A file, or the metrics.json / results.json inside a folder.

    Raises:
        ValueError: neither exists.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("metrics.json", "results.json"):
            if (path / name).is_file():
                return path / name
        raise ValueError(f"{path}: a folder without metrics.json (hessbatch train) or "
                         "results.json (hessbatch mushroom)")
    if not path.is_file():
        raise ValueError(f"{path}: no such file; give a metrics.json, a results.json or the "
                         "folder of either")
    return path


def _count(source: str, where: str, value: Any) -> int:
    """An int >= 0 read from a file, or one line naming the file, the field and the problem."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{source}: {where} is {value!r}; expected a whole number >= 0")
    return value


def _seconds(source: str, where: str, value: Any) -> float:
    """A finite float >= 0 read from a file (NaN and strings refused, with the field)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{source}: {where} is {value!r}; expected a finite number of "
                         "seconds >= 0")
    return float(value)


def _object(source: str, where: str, value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {where} is {json.dumps(value)[:40]}; expected an object "
                         f"({what})")
    return value


def runs_from_metrics(doc: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """One run from a ``hessbatch train`` metrics.json: its per-epoch workloads and the
    measured seconds of each epoch (train + adversarial + eigenvalue; evaluation excluded).

    Raises:
        ValueError: the document lacks a field ``hessbatch train`` writes, or holds a value of
            the wrong kind (a string count, a NaN time): one line naming the file and field.
    """
    for key in ("history", "scheduler"):
        if key not in doc:
            raise ValueError(f"{source}: not a metrics.json of `hessbatch train` (no {key!r})")
    cfg = _object(source, "'scheduler'", doc["scheduler"], "the scheduler's options")
    spec = _object(source, "'spec'", doc.get("spec", {}), "the run's options")
    hist = doc["history"]
    if not isinstance(hist, list):
        raise ValueError(f"{source}: 'history' is {type(hist).__name__}; expected a list of "
                         "epochs")
    if not hist:
        raise ValueError(f"{source}: the run has no finished epoch yet")
    epochs, measured = [], []
    prev_u = prev_s = 0
    need = ("updates", "samples", "adversarial_samples", "eigenvalues", "eigenvalues_skipped",
            "hvps", "time_train", "time_adversarial", "time_eigenvalue")
    for i, m in enumerate(hist):
        m = _object(source, f"history[{i}]", m, "one epoch")
        missing = [k for k in need if k not in m]
        if missing:
            raise ValueError(f"{source}: history[{i}] lacks {missing}")
        c = {k: _count(source, f"history[{i}].{k}", m[k])
             for k in ("updates", "samples", "adversarial_samples", "eigenvalues_skipped",
                       "hvps")}
        t = {k: _seconds(source, f"history[{i}].{k}", m[k])
             for k in ("time_train", "time_adversarial", "time_eigenvalue")}
        if not isinstance(m["eigenvalues"], list):
            raise ValueError(f"{source}: history[{i}].eigenvalues is {m['eigenvalues']!r}; "
                             "expected a list")
        try:
            epochs.append(Workload(c["updates"] - prev_u, c["samples"] - prev_s,
                                   c["adversarial_samples"],
                                   len(m["eigenvalues"]) + c["eigenvalues_skipped"], c["hvps"]))
        except ValueError as exc:
            raise ValueError(f"{source}: history[{i}]: {exc} (updates and samples are running "
                             "totals, so they never decrease)") from None
        measured.append(t["time_train"] + t["time_adversarial"] + t["time_eigenvalue"])
        prev_u, prev_s = c["updates"], c["samples"]
    total = Workload()
    for w in epochs:
        total = total + w
    label = str(cfg.get("method", spec.get("method", "?")))
    return [{"label": label, "workload": total, "epochs": epochs, "measured_epochs": measured,
             "measured": sum(measured), "smallest_batch": cfg.get("batch_size"),
             "source": source, "kind": "metrics", "spec": spec, "scheduler": cfg,
             "n_params": None, "note": None}]


def runs_from_results(doc: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """One run per method from a ``hessbatch mushroom`` results.json.

    results.json records updates, samples, checks and HVPs, not the adversarial count: ABSA's
    adversarial time is then counted as 0 (said in the run's note).
    """
    if doc.get("format") != "hessbatch.mushroom" or "runs" not in doc:
        raise ValueError(f"{source}: not a results.json of `hessbatch mushroom` (format "
                         f"{doc.get('format')!r})")
    data = _object(source, "'data'", doc.get("data", {}), "the data set's shape")
    n_params = (None if data.get("n_features") is None
                else _count(source, "data.n_features", data["n_features"]))
    out = []
    if not isinstance(doc["runs"], list):
        raise ValueError(f"{source}: 'runs' is {type(doc['runs']).__name__}; expected a list")
    for i, r in enumerate(doc["runs"]):
        r = _object(source, f"runs[{i}]", r, "one run")
        missing = [k for k in ("method", "updates", "samples_seen", "eigenvalue_checks",
                               "hvps") if k not in r]
        if missing:
            raise ValueError(f"{source}: runs[{i}] lacks {missing}")
        cfg = _object(source, f"runs[{i}].config", r.get("config", {}), "the run's options")
        c = {k: _count(source, f"runs[{i}].{k}", r[k])
             for k in ("updates", "samples_seen", "eigenvalue_checks", "hvps")}
        note = ("adversarial samples are not in results.json: counted as 0"
                if cfg.get("method") == "absa" else None)
        try:
            work = Workload(c["updates"], c["samples_seen"], 0, c["eigenvalue_checks"],
                            c["hvps"])
        except ValueError as exc:
            raise ValueError(f"{source}: runs[{i}]: {exc}") from None
        out.append({"label": str(r["method"]),
                    "workload": work,
                    "epochs": None, "measured_epochs": None, "measured": None,
                    "smallest_batch": cfg.get("batch_size"), "source": source,
                    "kind": "results",
                    "n_params": n_params,
                    "note": note})
    return out


def load_runs(path: str | Path) -> list[dict[str, Any]]:
    """The runs of one input file (metrics.json or results.json) or folder."""
    path = resolve_input(path)
    doc = _load_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") == "hessbatch.mushroom":
        return runs_from_results(doc, str(path))
    return runs_from_metrics(doc, str(path))


def runs_from_trace(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The trace (or the demo) replayed through each method of --methods."""
    from ._cli_schedule import demo_trace, load_eigenvalues
    trace = demo_trace() if args.trace is None else load_eigenvalues(args.trace)
    out = []
    methods = (args.method,) if args.method else args.methods
    for method in methods:
        args.method = method
        cfg = config_from_args(args, samples_per_epoch=args.samples_per_epoch,
                               epochs=args.epochs)
        epochs = workload_from_schedule(cfg, trace, last_batch=args.last_batch, by_epoch=True)
        total = Workload()
        for w in epochs:
            total = total + w
        out.append({"label": method, "workload": total, "epochs": epochs,
                    "measured_epochs": None, "measured": None,
                    "smallest_batch": cfg.batch_size, "source": args.trace or "demo trace",
                    "kind": "trace", "n_params": None, "note": None})
    return out


# --------------------------------------------------------------------------------------------
# options


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"methods must be a comma-separated subset of "
                                         f"{','.join(METHODS)}, got {text!r}")
    return names


def build_parser(parser: argparse.ArgumentParser) -> None:
    # argparse takes "-1e-9" for an option (its number pattern has no exponent) and says
    # "expected one argument"; with this pattern the value reaches the profile's check, which
    # names the option and the allowed range
    parser._negative_number_matcher = re.compile(
        r"^-\d+$|^-\d*\.\d+$|^-(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
    parser.add_argument("inputs", nargs="*", metavar="FILE",
                        help="metrics.json (hessbatch train), results.json (hessbatch "
                             "mushroom) or a folder holding one")
    g = parser.add_argument_group("replay a trace (as hessbatch schedule)")
    g.add_argument("--trace", default=None, help="eigenvalue trace, JSON or CSV")
    g.add_argument("--demo", action="store_true", help="replay the built-in demo trace")
    g.add_argument("--methods", type=_methods, default=("bl", "gg", "abs", "absa"),
                   help="methods to replay the trace through (default bl,gg,abs,absa)")
    g.add_argument("--samples-per-epoch", type=int, default=50_000,
                   help="N for the replay (default %(default)s)")
    g.add_argument("--epochs", type=int, default=90,
                   help="epochs for the replay (default %(default)s)")
    add_scheduler_arguments(parser, method=None, decay_epochs="30,60,80", decay_factor=0.2,
                            help={"method": "replay this one method (same as --methods METHOD)"})

    g = parser.add_argument_group(
        "machine profile (override --profile's fields; a cost that the runs incur must be "
        "given, in a file or by an option, or measured by --calibrate; the defaults used are "
        "printed)")
    g.add_argument("--profile", type=Path, default=None,
                   help="JSON profile (as written by --calibrate into OUT/profile.json)")
    g.add_argument("--processes", "-P", type=int, default=None,
                   help="P, data-parallel processes of the main table")
    g.add_argument("--n-params", type=int, default=None,
                   help="|theta|, parameters all-reduced (default: results.json's features)")
    g.add_argument("--latency", dest="prof_alpha", type=float, default=None,
                   help="alpha of the cost model: all-reduce latency per message, seconds "
                        "(--alpha is Algorithm 1's eigenvalue ratio)")
    g.add_argument("--inverse-bandwidth", dest="prof_beta", type=float, default=None,
                   help="beta of the cost model: seconds per parameter value sent (float32: "
                        "4 bytes over the bandwidth in bytes/s)")
    g.add_argument("--time-per-update", type=float, default=None,
                   help="fixed compute per update (optimizer step), seconds")
    g.add_argument("--time-per-sample", type=float, default=None,
                   help="forward + backward of one sample on one process, seconds")
    g.add_argument("--time-per-adv-sample", dest="time_per_adversarial_sample", type=float,
                   default=None, help="making one adversarial sample, seconds")
    g.add_argument("--time-per-hvp-sample", type=float, default=None,
                   help="one Hessian-vector product per sample on one process, seconds")
    g.add_argument("--time-per-check", type=float, default=None,
                   help="fixed time per eigenvalue check, seconds")
    g.add_argument("--hessian-batch", dest="prof_hessian_batch", type=int, default=None,
                   help="H, samples per eigenvalue check")
    g.add_argument("--hvps-per-check", type=int, default=None,
                   help="HVPs per check where the run does not record them (replayed "
                        "traces)")

    g = parser.add_argument_group("output")
    g.add_argument("--scaling", type=int_list, default=_DEFAULT_SCALING,
                   help="P values of the strong-scaling curve (default 1,2,4,...,1024)")
    g.add_argument("--format", choices=("table", "json"), default="table",
                   help="table on the terminal, or one JSON document (default %(default)s)")
    g.add_argument("--out", default=None,
                   help="folder for simulate.json, scaling.png and (calibrate) profile.json; "
                        "checked before any work: it must be new or empty")
    g.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --out (its files are replaced)")
    g.add_argument("--no-plot", action="store_true", help="do not write scaling.png")
    g.add_argument("--paper-table3", action="store_true",
                   help="recompute the paper's Table 3 from its inputs and stop (BL and GG "
                        "predicted; ABS and ABSA replay schedules fitted to the printed "
                        "totals)")
    g.add_argument("--last-batch", choices=("step", "drop"), default="step",
                   help="replays and --paper-table3: a short last batch of an epoch is an "
                        "update of its own (step) or dropped (default %(default)s)")

    g = parser.add_argument_group("calibration (needs torch)")
    g.add_argument("--calibrate", action="store_true",
                   help="measure the profile on this machine for the model of the metrics.json"
                        " given (or of a short run made with --train-args) and compare the "
                        "predicted epoch times with the measured ones")
    g.add_argument("--train-args", default="--model mlp --data synthetic:2000 --epochs 3 "
                   "--method absa --batch-size 64 --max-batch 512 --check-every 500 "
                   "--patience 2 --threads 1",
                   help="options of the short `hessbatch train` run made when --calibrate gets"
                        " no metrics.json (default %(default)r)")
    g.add_argument("--repeats", type=int, default=7,
                   help="timed repetitions of each calibration measurement (default "
                        "%(default)s)")
    g.add_argument("--no-allreduce", action="store_true",
                   help="calibrate without the gloo all-reduce measurement (alpha = beta = 0)")


_OPTION_OF = {"processes": "--processes", "n_params": "--n-params", "alpha": "--latency",
              "beta": "--inverse-bandwidth", "time_per_update": "--time-per-update",
              "time_per_sample": "--time-per-sample",
              "time_per_adversarial_sample": "--time-per-adv-sample",
              "time_per_hvp_sample": "--time-per-hvp-sample",
              "time_per_check": "--time-per-check", "hessian_batch": "--hessian-batch",
              "hvps_per_check": "--hvps-per-check"}
_ARG_OF = {"alpha": "prof_alpha", "beta": "prof_beta", "hessian_batch": "prof_hessian_batch"}


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The profile fields typed on the command line."""
    return {f: getattr(args, _ARG_OF.get(f, f)) for f in _PROFILE_OPTIONS
            if getattr(args, _ARG_OF.get(f, f)) is not None}


def profile_from_args(args: argparse.Namespace, runs: list[dict[str, Any]]
                      ) -> tuple[MachineProfile, dict[str, str]]:
    """The profile and where each field came from ("option", "file", "data" or "default").

    --profile's file first (only the keys it holds count as given), then each option typed.
    """
    changes: dict[str, Any] = {}
    sources = {f: "default" for f in _PROFILE_OPTIONS}
    if args.profile is not None:
        raw = _load_json(Path(args.profile))
        if isinstance(raw, dict) and "profile" in raw and "format" not in raw:
            raw = raw["profile"]   # the whole --calibrate report
        base = MachineProfile.load(args.profile)
        for f in _PROFILE_OPTIONS:
            if isinstance(raw, dict) and f in raw:
                changes[f], sources[f] = getattr(base, f), "file"
    for f, v in _given_options(args).items():
        changes[f], sources[f] = v, "option"
    if "n_params" not in changes:
        known = {r["n_params"] for r in runs if r.get("n_params")}
        if len(known) == 1:
            changes["n_params"], sources["n_params"] = known.pop(), "data"
    try:
        return MachineProfile().replace(**changes), sources
    except (TypeError, ValueError) as exc:
        raise ValueError(f"machine profile: {exc} (see the options of `hessbatch simulate "
                         "--help`)") from None


def check_costs(profile: MachineProfile, sources: dict[str, str], runs: list[dict[str, Any]],
                scaling) -> dict[str, Any]:
    """Refuse a cost that matters and was not given, or was given as a meaningless 0.

    What matters depends on what is simulated: the all-reduce (``n_params``, ``alpha``,
    ``beta``) as soon as any P > 1 is predicted (``--processes`` or ``--scaling``); the
    adversarial time when a run made adversarial samples; the check times when a run made
    checks; some compute per update or per sample always. Fields that do not matter, or whose
    partner carries the cost, keep their default, which is returned to be printed.

    Returns:
        ``{field: value}`` of the defaults used for fields that enter a prediction.

    Raises:
        ValueError: every missing or zero cost at once, each with its option and the fix.
    """
    given = {f for f, src in sources.items() if src != "default"}

    def name(f: str) -> str:
        return _OPTION_OF[f] + (f" ({f!r} of the --profile file)" if sources[f] == "file"
                                else " (calibrated)" if sources[f] == "calibrated" else "")

    problems: list[str] = []
    used_defaults: dict[str, Any] = {}
    work = [r["workload"] for r in runs]
    top_p = max([profile.processes, *scaling])
    if top_p > 1:
        missing = [_OPTION_OF[f] for f in ("n_params", "alpha", "beta") if f not in given]
        if missing:
            problems.append(
                f"{', '.join(missing)} not given, and P up to {top_p} is predicted (--processes "
                "or --scaling): the all-reduce time needs the parameter count, the latency and "
                "the inverse bandwidth; give them (or --profile FILE, or --calibrate), or "
                "predict one process only with --processes 1 --scaling 1")
        if "n_params" in given and profile.n_params == 0:
            problems.append(f"{name('n_params')} is 0: a model has at least one parameter; "
                            "give its parameter count")
        if "beta" in given and profile.beta == 0:
            problems.append(f"{name('beta')} is 0 (an infinitely fast network); give "
                            "seconds per value, e.g. 4 bytes / 10 GB/s = 4e-10")
    if any(w.updates for w in work):
        if not (profile.time_per_sample > 0 or profile.time_per_update > 0):
            problems.append("no compute time: give --time-per-sample (and/or "
                            "--time-per-update) > 0, or --profile FILE, or --calibrate")
        for f in ("time_per_sample", "time_per_update"):
            if f not in given:
                used_defaults[f] = getattr(profile, f)
    if any(w.adversarial_samples for w in work):
        if not profile.time_per_adversarial_sample > 0:
            n = sum(w.adversarial_samples for w in work)
            f = "time_per_adversarial_sample"
            state = f"{name(f)} is 0" if f in given else f"{_OPTION_OF[f]} is not given"
            problems.append(f"{state}, but the runs make {n:,} "
                            "adversarial samples (ABSA's work would be free); give the "
                            "seconds to make one, or --calibrate")
    if any(w.checks for w in work):
        if not (profile.time_per_hvp_sample > 0 or profile.time_per_check > 0):
            problems.append("the runs make eigenvalue checks but neither "
                            "--time-per-hvp-sample nor --time-per-check is > 0 (the checks "
                            "would be free); give them, or --calibrate")
        for f in ("time_per_hvp_sample", "time_per_check"):
            if f not in given:
                used_defaults[f] = getattr(profile, f)
        if profile.time_per_hvp_sample > 0 and "hessian_batch" not in given:
            used_defaults["hessian_batch"] = profile.hessian_batch
        if any(w.checks and w.hvps is None for w in work) and "hvps_per_check" not in given:
            used_defaults["hvps_per_check"] = profile.hvps_per_check
    if top_p > 1 and "processes" not in given:
        used_defaults["processes"] = profile.processes
    if problems:
        raise ValueError("machine profile: " + "; ".join(problems))
    return used_defaults


# --------------------------------------------------------------------------------------------
# output


def _scaling(run: dict[str, Any], profile: MachineProfile, ps) -> dict[str, Any]:
    rows = scaling_curve(run["workload"], profile, ps, smallest_batch=run["smallest_batch"])
    best = min(rows, key=lambda r: r["total"])
    dominated = next((r["processes"] for r in rows if r["communication_share"] >= 0.5), None)
    return {"rows": rows, "best_processes": best["processes"], "best_total": best["total"],
            "communication_dominates_from": dominated}


def plot_scaling(results: list[dict[str, Any]], title: str) -> bytes | None:
    """Time against P for each run (log-log), communication dashed, as PNG bytes; None
    without matplotlib."""
    # matplotlib is optional (the [plot] extra) and the core imports only the standard library
    # at module level: it is looked up here, at call time, and its absence is not an error.
    try:
        plt = AggFigures()   # the process's matplotlib backend is left alone
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for res in results:
        rows = res["scaling"]["rows"]
        ps = [r["processes"] for r in rows]
        line, = ax.loglog(ps, [r["total"] for r in rows], marker=".", label=res["label"])
        comm = [r["communication"] + r["eigenvalue_communication"] for r in rows]
        if any(c > 0 for c in comm):
            ax.loglog([p for p, c in zip(ps, comm) if c > 0], [c for c in comm if c > 0],
                      linestyle="--", color=line.get_color(), alpha=0.6)
        dom = res["scaling"]["communication_dominates_from"]
        if dom is not None:
            ax.axvline(dom, color=line.get_color(), linestyle=":", alpha=0.5)
    ax.set_xlabel("processes P")
    ax.set_ylabel("predicted time, s (dashed: communication)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _print_table3(rows: list[dict[str, Any]], last_batch: str) -> None:
    print(f"The paper's Table 3 (ResNet18 on ImageNet, N = {IMAGENET_TRAIN:,}, 90 epochs, "
          f"P = {TABLE3_PROCESSES}): {TABLE3_COMM} s communication per update, "
          f"{TABLE3_EIG} s per eigenvalue; short last batch: "
          f"{'one update of its own' if last_batch == 'step' else 'dropped'}")
    table = [(r["method"], r["largest_batch"],
              ",".join(map(str, r["growth_epochs"])) or "-", r["compute_per_update"],
              r["updates"], r["checks"], f"{r['predicted']:.1f}", f"{r['paper']:.0f}",
              f"{100 * r['relative_error']:+.3f}%") for r in rows]
    print(format_table(["method", "B_max", "grows after epochs", "compute/upd", "updates",
                        "checks", "ours s", "paper s", "diff"], table))
    for r in rows:
        if r["method"] in ("abs", "absa"):
            print(f"{r['method']}: {r['paper']:.0f} s = U x {r['compute_per_update'] + TABLE3_COMM:.3f}"
                  f" + C x {TABLE3_EIG}; with one check per epoch (C <= 90): U from "
                  f"{r['implied_updates_at_90_checks']:,.0f} (C = 90) to "
                  f"{r['implied_updates_at_0_checks']:,.0f} (C = 0)")
    print("Only the bl and gg rows are predictions. The paper does not print the abs/absa "
          "schedules: the ones above were chosen so that their totals match (one member of "
          "each family of schedules that fit), so those rows show consistency, not a "
          "reproduction.")
    print(f"abs vs bl: {rows[0]['predicted'] / rows[2]['predicted']:.2f}x faster "
          f"(paper {TABLE3['bl'] / TABLE3['abs']:.2f}x)")


def _calibrate(args: argparse.Namespace, runs: list[dict[str, Any]]
               ) -> tuple[MachineProfile, dict[str, Any], dict[str, Any]]:
    """Measure a profile for the run's model; returns (profile, details, the run)."""
    try:
        from hessbatch.deep._calibrate import calibrate_from_spec, short_train
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("hessbatch"):
            raise
        raise ValueError(f"--calibrate needs {exc.name!r}, which is not installed; pip install "
                         "'hessbatch[deep]'") from None
    metrics = [r for r in runs if r["kind"] == "metrics"]
    if len(metrics) > 1:
        raise ValueError(f"--calibrate takes at most one metrics.json, got {len(metrics)}")
    if any(r["kind"] != "metrics" for r in runs):
        raise ValueError("--calibrate compares with a `hessbatch train` run: give one "
                         "metrics.json (or none, to make a short run), not a results.json or "
                         "a trace")
    if not metrics:
        import shlex
        folder = (args.out / "train") if args.out is not None else Path(tempfile.mkdtemp())
        targs = shlex.split(args.train_args)
        print(f"calibration run: hessbatch train {' '.join(targs)} --out {folder}",
              file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for simulate's own output
            short_train(targs, folder)
        runs.extend(load_runs(folder / "metrics.json"))
        metrics = runs[-1:]
    run = metrics[0]
    spec, cfg = run["spec"], run["scheduler"]
    if not spec:
        raise ValueError(f"{run['source']}: no 'spec' to rebuild the model from")
    print(f"calibrating {spec.get('model')} on {spec.get('data')} ({args.repeats} repeats each"
          f"{'' if args.no_allreduce else ', all-reduce with 2 gloo processes'})",
          file=sys.stderr)
    profile, details = calibrate_from_spec(spec, cfg, repeats=args.repeats,
                                           allreduce=not args.no_allreduce)
    return profile, details, run


def compare_epochs(run: dict[str, Any], profile: MachineProfile) -> list[dict[str, Any]]:
    """Predicted (at P = 1) against measured seconds, epoch by epoch."""
    single = profile.replace(processes=1)
    rows = []
    for i, (w, t) in enumerate(zip(run["epochs"], run["measured_epochs"])):
        pred = predict(w, single).total
        rows.append({"epoch": i + 1, "updates": w.updates, "samples": w.samples,
                     "adversarial": w.adversarial_samples, "checks": w.checks,
                     "hvps": w.hvps, "measured": t, "predicted": pred,
                     "relative_error": pred / t - 1 if t > 0 else math.nan})
    return rows


def run(args: argparse.Namespace) -> int:
    if args.paper_table3:
        rows = paper_table3(args.last_batch)
        if args.format == "json":
            json.dump({"table3": rows}, sys.stdout, indent=1)
            print()
        else:
            _print_table3(rows, args.last_batch)
        return 0
    # the output folder first: a bad --out is reported before any work (docs/reliability.md)
    out = check_out_dir(args.out, overwrite=args.overwrite,
                        outputs=("simulate.json", "scaling.png", "profile.json"))
    if args.trace is not None and args.demo:
        raise ValueError("give either --trace FILE or --demo, not both")
    if any(p < 1 for p in args.scaling) or not args.scaling:
        raise ValueError(f"--scaling must list processes >= 1, got {list(args.scaling)}")
    runs: list[dict[str, Any]] = []
    for path in args.inputs:
        runs.extend(load_runs(path))
    if args.trace is not None or args.demo:
        runs.extend(runs_from_trace(args))
    calibration = None
    files: dict[str, Any] = {}
    if args.calibrate:
        args.out = out
        measured_profile, details, crun = _calibrate(args, runs)
        if args.profile is not None:
            print("note: --calibrate measures the profile; --profile is ignored",
                  file=sys.stderr)
            args.profile = None
        files["profile.json"] = json.dumps(dict(measured_profile.to_dict(), notes=details),
                                           indent=1, allow_nan=False)
        # options given on the command line (say --processes) still apply on top
        given = _given_options(args)
        profile = measured_profile.replace(**given)
        sources = {f: "option" if f in given else "calibrated" for f in _PROFILE_OPTIONS}
        if "allreduce" not in details:   # --no-allreduce: alpha and beta were not measured
            sources.update({f: "default" for f in ("alpha", "beta") if f not in given})
        cmp_rows = compare_epochs(crun, measured_profile)
        meas = sum(r["measured"] for r in cmp_rows)
        pred = sum(r["predicted"] for r in cmp_rows)
        calibration = {"profile": measured_profile.to_dict(), "details": details,
                       "run": crun["source"], "epochs": cmp_rows, "measured": meas,
                       "predicted": pred, "relative_error": pred / meas - 1 if meas else None}
    else:
        profile, sources = profile_from_args(args, runs)
    if not runs:
        raise ValueError("nothing to simulate: give a metrics.json/results.json, --trace FILE, "
                         "--demo, --paper-table3 or --calibrate")
    defaults = check_costs(profile, sources, runs, args.scaling)
    if len({r["source"] for r in runs}) > 1:  # name the file only where several are mixed
        for r in runs:
            r["label"] = f"{r['label']} ({Path(r['source']).parent.name or r['source']})" \
                if r["kind"] != "trace" else r["label"]
    results = []
    for r in runs:
        cost = predict(r["workload"], profile)
        results.append({"label": r["label"], "source": r["source"],
                        "workload": r["workload"].to_dict(), "prediction": cost.to_dict(),
                        "measured": r["measured"], "note": r["note"],
                        "scaling": _scaling(r, profile, args.scaling)})
    doc = {"profile": profile.to_dict(), "profile_sources": sources,
           "defaults_used": defaults, "runs": results, "calibration": calibration}
    if out is not None:
        files["simulate.json"] = json.dumps(doc, indent=1, default=str, allow_nan=False)
        if not args.no_plot:
            title = (f"strong scaling, |theta| = {profile.n_params:,}, alpha = "
                     f"{profile.alpha:.3g} s, beta = {profile.beta:.3g} s/value")
            png = plot_scaling(results, title)
            if png is None:
                print("scaling.png not written: matplotlib is missing; pip install "
                      "'hessbatch[plot]'", file=sys.stderr)
            else:
                files["scaling.png"] = png
        write_files(out, files)   # all or nothing
    if args.format == "json":
        json.dump(doc, sys.stdout, indent=1, default=str, allow_nan=False)
        print()
        return 0
    _print_report(profile, results, calibration, args, defaults)
    return 0


def _print_report(profile: MachineProfile, results, calibration, args, defaults) -> None:
    p = profile
    if defaults:
        print("defaults used (not given, not measured): " + ", ".join(
            f"{_OPTION_OF[f]} {v}" + (" (not modelled)" if v == 0 else "")
            for f, v in defaults.items()))
    print(f"profile: P = {p.processes}, |theta| = {p.n_params:,}, alpha = {p.alpha:.3g} s, "
          f"beta = {p.beta:.3g} s/value (one all-reduce {p.allreduce:.3g} s), t_update = "
          f"{p.time_per_update:.3g} s, t_sample = {p.time_per_sample:.3g} s, t_adv = "
          f"{p.time_per_adversarial_sample:.3g} s, t_hvp = {p.time_per_hvp_sample:.3g} s/sample,"
          f" t_check = {p.time_per_check:.3g} s, H = {p.hessian_batch}")
    table = []
    for r in results:
        w, c = r["workload"], r["prediction"]
        table.append((r["label"], w["updates"], w["samples"], w["adversarial_samples"],
                      w["checks"], c["compute"], c["adversarial"], c["communication"],
                      c["eigenvalue"], c["total"],
                      "-" if r["measured"] is None else r["measured"]))
    print(format_table(["run", "updates", "samples", "adv", "checks", "compute s", "adv s",
                        "comm s", "eig s", f"total s (P={p.processes})", "measured s"], table))
    for r in results:
        if r["note"]:
            print(f"note: {r['label']}: {r['note']}")
    ps = list(args.scaling)
    print(f"\nstrong scaling (total seconds; everything but P as in the profile):")
    srows = []
    for i, pp in enumerate(ps):
        srows.append([pp] + [r["scaling"]["rows"][i]["total"] for r in results])
    print(format_table(["P"] + [r["label"] for r in results], srows))
    for r in results:
        s = r["scaling"]
        dom = s["communication_dominates_from"]
        idle = [row["processes"] for row in s["rows"] if row["idle_processes"]]
        print(f"{r['label']}: fastest at P = {s['best_processes']} ({s['best_total']:.4g} s); "
              + (f"communication is over half the time from P = {dom}" if dom is not None
                 else "communication stays under half the time")
              + (f"; P >= {idle[0]} exceeds the smallest batch (idle processes, the model "
                 "is optimistic there)" if idle else ""))
    if calibration is not None:
        print(f"\ncalibration: predicted vs measured epoch times of {calibration['run']} "
              "(train + adversarial + eigenvalue, at P = 1)")
        print(format_table(["epoch", "updates", "samples", "adv", "checks", "HVPs",
                            "measured s", "predicted s", "error"],
                           [(r["epoch"], r["updates"], r["samples"], r["adversarial"],
                             r["checks"], r["hvps"], r["measured"], r["predicted"],
                             f"{100 * r['relative_error']:+.1f}%") for r in calibration["epochs"]]))
        print(f"total: measured {calibration['measured']:.4g} s, predicted "
              f"{calibration['predicted']:.4g} s, error {100 * calibration['relative_error']:+.1f}%")
        spread = calibration["details"].get("model", {}).get("spread", {})
        if spread:
            print(f"spread of the {calibration['details']['model'].get('repeats')} repeats "
                  "((max - min) / median; the median is used): " + ", ".join(
                      f"{k} {100 * v:.0f}%" for k, v in spread.items()))
        ar = calibration["details"].get("allreduce")
        if ar:
            print(f"all-reduce, 2 local gloo processes: alpha = {ar['alpha']:.3g} s, beta = "
                  f"{ar['beta']:.3g} s/value ({4 / ar['beta'] / 1e9 if ar['beta'] else math.inf:.3g}"
                  f" GB/s); points (values, s): "
                  + ", ".join(f"({n}, {t:.3g})" for n, t in ar["points"])
                  + " (fastest of the repeats; median over fastest - 1: "
                  + ", ".join(f"{100 * v:.0f}%" for v in ar.get("spread_median_over_min",
                                                                 {}).values()) + ")")
