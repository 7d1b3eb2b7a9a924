"""``hessbatch train``: BL, FB, GG, ABS or ABSA on a PyTorch model, with metrics and curves.

Example (the MNIST-5k demo, about a minute on two CPU cores)::

    hessbatch train --method abs --model cnn --data mnist5k --epochs 10 --out runs/abs

writes ``runs/abs/metrics.json`` (every epoch's metrics and the configuration),
``runs/abs/curves.png`` (with matplotlib) and ``runs/abs/checkpoint.pt`` (resume with
``--resume runs/abs/checkpoint.pt``; the top eigenvalue with ``hessbatch eig``).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from hessbatch import Scheduler, SchedulerConfig
from hessbatch._scheduler import _ROUND_TOL
from hessbatch._cli_common import Progress, add_scheduler_arguments, check_memory, \
    config_from_args, format_table
from hessbatch._outputs import check_out_dir, write_file, write_files

from . import _cli_distributed
from ._data import data_shape, load_data
from ._loop import EXTEND_HVP
from ._models import ACTIVATIONS, MODELS, make_model, parameter_count
from ._trainer import EpochMetrics, Trainer, TrainingDiverged, load_checkpoint

DESCRIPTION = """\
Train a PyTorch model with one of the paper's methods (bl, fb, gg, abs, absa). Every schedule
decision (batch size, learning rate, adversarial fraction, when the Hessian's top eigenvalue is
computed) comes from the hessbatch core; this command runs them on a model and a data set.

Prints a progress line (stderr) and a final table; with --out writes metrics.json, curves.png
(needs matplotlib) and checkpoint.pt."""

# The options a checkpoint remembers; a resumed run takes them from the checkpoint.
_SPEC_KEYS = ("model", "activation", "width", "data", "test_fraction", "seed", "momentum",
              "weight_decay", "hessian_batch", "eig_method", "max_hvp", "eig_tol", "block",
              "adversary", "last_batch")


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Add every option of ``hessbatch train``."""
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", choices=MODELS, default="cnn",
                   help="cnn: two conv layers + two linear (LeNet-like); mlp: two hidden layers;"
                        " resnet18: ResNet18 for 32x32 inputs (default %(default)s)")
    g.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                   help="activation of every hidden layer; softplus/elu are twice "
                        "differentiable (default %(default)s)")
    g.add_argument("--width", type=int, default=None,
                   help="model width (cnn: first conv channels, 16; mlp: 64; resnet18: 64)")
    g.add_argument("--batchnorm", action="store_true",
                   help="mlp: BatchNorm1d after each hidden layer (default: none)")
    g.add_argument("--dropout", type=float, default=0.0,
                   help="mlp: dropout probability after each hidden layer (default "
                        "%(default)s: none); masks are seeded per micro-batch, the same on any "
                        "number of processes")
    g.add_argument("--data", default="mnist5k",
                   help="mnist5k (shipped), cifar10:PATH (folder of the python-version "
                        "batches; cifar10-partial:PATH if some training batches are "
                        "missing) or synthetic[:N[:CxHxW]] (default %(default)s)")
    g.add_argument("--test-fraction", type=float, default=0.2,
                   help="held-out share of each class for mnist5k and synthetic, split by "
                        "--seed (default %(default)s)")
    g.add_argument("--epochs", type=int, default=None,
                   help="epochs to train (default 10; with --resume: the checkpoint's, and a "
                        "larger value extends the run)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the model, the split, shuffling, Hessian batches and noise "
                        "(default %(default)s)")

    add_scheduler_arguments(parser, method="abs", lr=0.05, batch_size=128,
                            max_batch_size=2048, decay_epochs="", decay_factor=0.2)

    g = parser.add_argument_group("optimizer, curvature and adversary")
    g.add_argument("--momentum", type=float, default=0.9,
                   help="SGD momentum (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=5e-4,
                   help="SGD weight decay (default %(default)s)")
    g.add_argument("--hessian-batch", type=int, default=128,
                   help="training samples per eigenvalue, drawn afresh each time "
                        "(default %(default)s)")
    g.add_argument("--eig-method", choices=("power", "lanczos"), default="lanczos",
                   help="top-eigenvalue solver (default %(default)s)")
    g.add_argument("--max-hvp", type=int, default=10,
                   help="Hessian-vector products per eigenvalue at most (default %(default)s)")
    g.add_argument("--eig-tol", type=float, default=1e-2,
                   help="relative tolerance of the eigenvalue (default %(default)s)")
    g.add_argument("--full-eigenvalue", action="store_true",
                   help="solve every eigenvalue check to --eig-tol; default: a check's solver "
                        "stops as soon as its estimate is above lam_ref / alpha (the answer "
                        "'no drop' is then certain: every estimate is at most the top "
                        "eigenvalue), which saves most of the HVPs (docs/deep_curvature.md)")
    g.add_argument("--warm-start", action="store_true",
                   help="start each check from the previous check's eigenvector (mixed with "
                        "10%% of a random one); off by default: measured on MNIST-5k it saves "
                        "5-7%% of the HVPs (docs/performance.md) and can stop on the second "
                        "eigenvalue (docs/deep_curvature.md); one process only")
    g.add_argument("--hvp-check", choices=("error", "warn", "off"), default="error",
                   help="at the first eigenvalue, compare one Hessian-vector product with a "
                        "finite difference of gradients (float64 copy of the model) and check "
                        "that the loss is a mean: error (default), warn, or off")
    g.add_argument("--block", type=int, default=0,
                   help="block Hessian over the parameters of the last K layers with "
                        "parameters; 0: all parameters (default %(default)s)")
    g.add_argument("--adversary", choices=("fgsm", "random"), default="fgsm",
                   help="absa: FGSM, or random signs of the same size (ablation) "
                        "(default %(default)s)")
    g.add_argument("--last-batch", choices=("step", "drop"), default="step",
                   help="a short last batch of an epoch: update on it, or drop it "
                        "(default %(default)s)")

    g = parser.add_argument_group("run")
    g.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N (default %(default)s)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--out", default=None,
                   help="folder for metrics.json, curves.png and checkpoint.pt; it must be "
                        "empty or new unless --overwrite (default: write nothing; with "
                        "--resume: the checkpoint's folder)")
    g.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --out: its files are replaced")
    g.add_argument("--checkpoint-every", type=int, default=1,
                   help="epochs between checkpoints in --out; 0: only at the end "
                        "(default %(default)s)")
    g.add_argument("--resume", type=Path, default=None,
                   help="continue from a checkpoint.pt, writing into its folder (or --out); "
                        "the model, data, optimizer and schedule options are taken from it, "
                        "and giving one with another value is an error")
    g.add_argument("--quiet", action="store_true", help="no progress line")
    _cli_distributed.add_arguments(parser)


# --------------------------------------------------------------------------------------------
# building blocks shared with `hessbatch eig`


def resolve_device(text: str) -> torch.device:
    """``cpu``/``cuda``/``cuda:N`` as a device; an error if CUDA is asked for but absent."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine "
                         "(torch.cuda.is_available() is False); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {text!r}")
    return device


def block_parameters(model: torch.nn.Module, k: int) -> list[torch.nn.Parameter] | None:
    """Parameters of the last ``k`` leaf modules that own parameters (None for k = 0: all)."""
    if k < 0:
        raise ValueError(f"--block must be >= 0, got {k}")
    if k == 0:
        return None
    owners = [m for m in model.modules()
              if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    if k > len(owners):
        raise ValueError(f"--block {k}: the model has only {len(owners)} layers with "
                         "parameters")
    return [p for m in owners[-k:] for p in m.parameters(recurse=False) if p.requires_grad]


def _default_shape(spec: dict[str, Any]) -> tuple[int, ...]:
    return (3, 32, 32) if spec["model"] == "resnet18" else (1, 28, 28)


def check_spec_memory(spec: dict[str, Any], device: torch.device) -> None:
    """Refuse, before anything is allocated, a spec whose data and model cannot fit.

    Counted from shapes alone (lower bounds): the data set and its train/test copies
    (``2 x samples x sample size``), and the model's weights and gradients (plus SGD's
    momentum buffer when momentum > 0), the model counted on the ``meta`` device.
    """
    n, shape, classes = data_shape(spec["data"], default_shape=_default_shape(spec))
    item = 8 if spec.get("dtype") == "float64" else 4
    params = parameter_count(spec["model"], shape, classes,
                             activation=spec.get("activation", "relu"), width=spec.get("width"))
    copies = 2 + (float(spec.get("momentum") or 0) > 0)
    width = "" if spec.get("width") is None else f" --width {spec['width']}"
    model = (f"the weights, gradients{' and momentum' if copies == 3 else ''} of --model "
             f"{spec['model']}{width} ({params:,} parameters)", copies * params * item,
             "lower --width" + (f" ({spec['width']} here)" if width else
                                " (the model's width knob)"))
    data = (f"--data {spec['data']} ({n:,} samples of {'x'.join(map(str, shape))}, and its "
            "train/test copies)", 2 * n * math.prod(shape) * item,
            "ask for fewer samples (synthetic:N)" if spec["data"].startswith("synthetic")
            else "free memory, or use a smaller data set")
    if device.type == "cuda":
        check_memory([data], command="the run")
        free = torch.cuda.mem_get_info(device)[0]
        check_memory([model], command=f"the run on {device}", available=free)
    else:
        check_memory([model, data], command="the run")


def build_from_spec(spec: dict[str, Any], device: torch.device):
    """Data bundle and a freshly initialised model (seeded) from a run's spec.

    Raises:
        ValueError: the data and the model cannot fit in memory (checked before either is
            allocated, :func:`check_spec_memory`), or a bad spec.
    """
    check_spec_memory(spec, device)
    bundle = load_data(spec["data"], seed=spec["seed"], test_fraction=spec["test_fraction"],
                       default_shape=_default_shape(spec))
    torch.manual_seed(spec["seed"])  # the model's initial weights
    model = make_model(spec["model"], bundle.input_shape, bundle.num_classes,
                       activation=spec["activation"], width=spec["width"],
                       batchnorm=bool(spec.get("batchnorm", False)),
                       dropout=float(spec.get("dropout", 0.0))).to(device)
    dtype = _cli_distributed.dtype_of(spec.get("dtype"))  # checkpoints before --dtype: float32
    if dtype != torch.float32:
        model = model.to(dtype)
        bundle = dataclasses.replace(bundle, **{
            part: TensorDataset(getattr(bundle, part).tensors[0].to(dtype),
                                *getattr(bundle, part).tensors[1:])
            for part in ("train", "test")})
    return bundle, model


def spec_of(state: dict[str, Any], path: Any) -> dict[str, Any]:
    """The run's spec stored in a checkpoint by `hessbatch train` (``train`` and ``eig``).

    Raises:
        ValueError: no spec, or one that lacks keys this version needs (named).
    """
    extra = state.get("extra")
    spec = extra.get("spec") if isinstance(extra, dict) else None
    if not isinstance(spec, dict):
        raise ValueError(f"{path} has no model spec: it was not written by `hessbatch train`")
    missing = [k for k in _SPEC_KEYS + ("method",) if k not in spec]
    if missing:
        raise ValueError(f"{path}: its spec lacks {missing}: it was not written by this "
                         "version of `hessbatch train`")
    return dict(spec)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("epochs", "hessian_batch", "max_hvp"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got "
                             f"{getattr(args, name)}")
    if args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    for name in ("momentum", "weight_decay"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be finite and >= 0, got {v}")
    if not args.momentum < 1:
        raise ValueError(f"--momentum must be in [0, 1), got {args.momentum} (at 1 or above "
                         "SGD's velocity never decays)")
    if args.width is not None and args.width < 1:
        raise ValueError(f"--width must be >= 1, got {args.width}")


# --------------------------------------------------------------------------------------------
# output


def summary(history: list[EpochMetrics]) -> dict[str, Any]:
    """Final accuracy, updates, largest batch and the time split of a run."""
    last = history[-1]
    return {
        "epochs": len(history), "test_accuracy": last.test_accuracy,
        "test_loss": last.test_loss, "train_loss": last.train_loss, "updates": last.updates,
        "largest_batch": max(m.batch_size for m in history),
        "eigenvalues": sum(len(m.eigenvalues) for m in history),
        "time_train": sum(m.time_train for m in history),
        "time_eigenvalue": sum(m.time_eigenvalue for m in history),
        "time_adversarial": sum(m.time_adversarial for m in history),
        "time_eval": sum(m.time_eval for m in history),
        "time_grad_comm": sum(m.time_grad_comm for m in history),
        "time_eigenvalue_comm": sum(m.time_eigenvalue_comm for m in history),
    }


def epoch_table(history: list[EpochMetrics]) -> str:
    rows = [(m.epoch, m.train_loss, m.test_accuracy, m.eigenvalue, m.batch_size, m.lr,
             m.updates, round(m.time_train, 2), round(m.time_eigenvalue, 2),
             round(m.time_adversarial, 2)) for m in history]
    return format_table(("epoch", "train loss", "test acc", "eigenvalue", "B", "lr", "updates",
                         "t train", "t eig", "t adv"), rows)


def summary_table(s: dict[str, Any]) -> str:
    acc = s["test_accuracy"]
    return format_table(
        ("test acc %", "updates", "largest B", "eigenvalues", "t train s", "t eig s",
         "t adv s", "t eval s"),
        [(None if acc is None else round(100 * acc, 2), s["updates"], s["largest_batch"],
          s["eigenvalues"], round(s["time_train"], 2), round(s["time_eigenvalue"], 2),
          round(s["time_adversarial"], 2), round(s["time_eval"], 2))])


def plot_curves(history: list[EpochMetrics], path: Path, title: str) -> bool:
    """Four panels against epochs: test accuracy, train loss, eigenvalue, batch and lr.

    Written atomically to ``path``. Returns False (and writes nothing) when matplotlib is not
    installed. Uses matplotlib's Agg canvas directly: the process's backend (a notebook's)
    is never switched.
    """
    png = curves_png(history, title)
    if png is None:
        return False
    write_file(path, png)
    return True


def curves_png(history: list[EpochMetrics], title: str) -> bytes | None:
    """The PNG bytes of :func:`plot_curves`' figure; None without matplotlib."""
    try:
        import matplotlib  # noqa: F401  (first: a blocked or missing matplotlib fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    ep = [m.epoch for m in history]
    fig = Figure(figsize=(9, 6.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 2)
    ax[0, 0].plot(ep, [100 * (m.test_accuracy or 0) for m in history], marker=".")
    ax[0, 0].set_ylabel("test accuracy (%)")
    ax[0, 1].plot(ep, [m.train_loss for m in history], marker=".")
    ax[0, 1].set_ylabel("train loss")
    ax[0, 1].set_yscale("log")
    # every eigenvalue of an epoch, spread evenly over it (checks are evenly spaced in samples)
    eig = [(m.epoch - 1 + (i + 1) / len(m.eigenvalues), v) for m in history
           for i, v in enumerate(m.eigenvalues) if v > 0]
    if eig:
        ax[1, 0].plot(*zip(*eig), marker="o", markersize=3)
        ax[1, 0].set_yscale("log")
    ax[1, 0].set_ylabel("top Hessian eigenvalue")
    ax[1, 1].step(ep, [m.batch_size for m in history], where="post", label="B")
    ax[1, 1].set_yscale("log", base=2)
    ax[1, 1].set_ylabel("batch size B")
    lr_ax = ax[1, 1].twinx()
    lr_ax.step(ep, [m.lr for m in history], where="post", color="tab:red", linestyle="--")
    lr_ax.set_ylabel("lr", color="tab:red")
    for a in ax.flat:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_outputs(out: Path, trainer: Trainer, spec: dict[str, Any], final: bool, *,
                  checkpoint: bool = False, stopped: str | None = None,
                  extra: dict[str, Any] | None = None) -> None:
    """Write metrics.json (and checkpoint.pt, and at the end curves.png) as one set.

    The files are written with :func:`hessbatch._outputs.write_files`: all old or all new, a
    failed write (disk full) replaces nothing and leaves no ``.tmp``.
    """
    doc = {"spec": spec, "scheduler": trainer.scheduler.config.to_dict(),
           "history": [m.to_dict() for m in trainer.history],
           "summary": summary(trainer.history) if trainer.history else None,
           "finished": trainer.scheduler.decision.finished}
    if stopped is not None:
        doc["stopped"] = stopped
    files: dict[str, bytes | str] = {}
    if checkpoint:
        files["checkpoint.pt"] = trainer.checkpoint_bytes(extra={"spec": spec, **(extra or {})})
    files["metrics.json"] = json.dumps(doc, indent=1)
    if final and trainer.history:
        title = (f"{spec['method']} {spec['model']}/{spec['activation']} on {spec['data']}, "
                 f"seed {spec['seed']}")
        png = curves_png(trainer.history, title)
        if png is None:
            print("curves.png not written: matplotlib is missing; pip install "
                  "'hessbatch[plot]' to get the plot", file=sys.stderr)
        else:
            files["curves.png"] = png
    write_files(out, files)


def _checkpoint_extra(trainer: Trainer) -> dict[str, Any]:
    """What a checkpoint records besides the spec: the world size it was written from."""
    return {"world_size": int(getattr(trainer, "world_size", 1))}


def _wait_for_rank0(trainer: Trainer) -> None:
    """With several ranks, every rank waits until rank 0 has written its files."""
    if trainer.parallel is not None:
        trainer.parallel.barrier()


def _output_folder(args: argparse.Namespace) -> Path | None:
    """--out checked before any work; with --resume and no --out, the checkpoint's folder."""
    if args.resume is not None and not args.resume.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.resume}")
    if args.out is None and args.resume is not None:
        args.out = str(args.resume.parent)
        print(f"writing to {args.out} (the checkpoint's folder; --out to write elsewhere)",
              file=sys.stderr)
    _refuse_foreign_folder(args)
    return check_out_dir(args.out, overwrite=args.overwrite, resume_from=args.resume,
                         outputs=("checkpoint.pt", "metrics.json", "curves.png"))


def run_id_of(path: Path) -> str | None:
    """The run id recorded in a checkpoint or a metrics.json of `hessbatch train` (None: a
    file from before run ids, or not one of ours)."""
    try:
        if path.suffix == ".json":
            spec = json.loads(path.read_text()).get("spec") or {}
        else:
            spec = (load_checkpoint(path).get("extra") or {}).get("spec") or {}
    except (OSError, ValueError, AttributeError):
        return None
    rid = spec.get("run_id") if isinstance(spec, dict) else None
    return rid if isinstance(rid, str) and rid else None


def _refuse_foreign_folder(args: argparse.Namespace) -> None:
    """``--resume FILE`` into a folder that holds another run's files is refused (it would
    replace them with FILE's continuation), unless --overwrite says to replace them."""
    if args.resume is None or args.out is None or args.overwrite:
        return
    out, res = Path(args.out), Path(args.resume)
    state = load_checkpoint(res)  # its own errors first (corrupt, another version)
    spec = (state.get("extra") or {}).get("spec")
    mine = spec.get("run_id") if isinstance(spec, dict) else None
    for name in ("checkpoint.pt", "metrics.json"):
        f = out / name
        if not f.is_file() or f.resolve() == res.resolve():
            continue
        theirs = run_id_of(f)
        same = theirs is not None and theirs == mine
        if not same and name == "checkpoint.pt":
            same = f.read_bytes() == res.read_bytes()
        if not same and theirs is None and mine is None and name == "metrics.json" \
                and (out / "checkpoint.pt").resolve() == res.resolve():
            same = True  # the folder's own checkpoint, from before run ids
        if not same:
            raise ValueError(
                f"--resume {res}: --out {out} holds {name} of another run (run id "
                f"{theirs or 'unknown'}; the checkpoint's is {mine or 'unknown'}), which the "
                f"resumed run would replace; pass --out with a new folder for the continuation "
                "(or --overwrite to replace that run's files)")


def _agree_on_resume(args: argparse.Namespace, ctx: Any) -> Path | None:
    """Every rank resumes from the same checkpoint, or every rank starts fresh.

    Rank 0 decides: ``--resume``, or after a restart ``--out/checkpoint.pt`` when it belongs
    to this run (its run id; a stale checkpoint of another run is not resumed). It sends the
    file's bytes to every rank (so ``--out`` need not be shared), and every rank checks the
    others were started the same way (``--resume`` or not); a disagreement or an error on any
    rank is one error on every rank, before training.
    """
    import tempfile

    import torch.distributed as dist

    from ._distributed import DistributedConfigError

    error, blob, source = None, None, None
    if ctx.is_main:
        try:
            source = Path(args.resume) if args.resume is not None else None
            if ctx.restart and args.out is not None:
                own = run_id_of(source) if source is not None else ctx.run_id
                ck = Path(args.out) / "checkpoint.pt"
                if ck.is_file() and run_id_of(ck) == own and own is not None:
                    source = ck
                elif ck.is_file():
                    print(f"[rank 0] restart {ctx.restart}: {ck} belongs to another run (run id "
                          f"{run_id_of(ck)}, this run's is {own}): not resumed", file=sys.stderr)
            if source is not None:
                blob = source.read_bytes()
                if ctx.restart and source != args.resume:
                    print(f"[rank 0] restart {ctx.restart}: resuming from {source}",
                          file=sys.stderr)
        except OSError as exc:
            error = f"rank 0 cannot read the checkpoint: {exc}"
    digest = hashlib.sha256(blob).hexdigest()[:16] if blob is not None else None
    mine = {"rank": ctx.rank, "resume_given": args.resume is not None, "error": error}
    every: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(every, mine)
    box = [blob, digest, None if source is None else str(source)]
    dist.broadcast_object_list(box, src=0)
    blob, digest, shown = box
    errors = [f"rank {e['rank']}: {e['error']}" for e in every if e["error"]]
    if errors:
        raise DistributedConfigError("; ".join(errors))
    given = sorted({e["resume_given"] for e in every})
    if len(given) > 1 and not ctx.restart:
        with_r = [e["rank"] for e in every if e["resume_given"]]
        without = [e["rank"] for e in every if not e["resume_given"]]
        raise DistributedConfigError(
            f"ranks {with_r} were started with --resume and ranks {without} without: every "
            "rank must get the same command line (rank 0 reads the checkpoint and sends it to "
            "the others, so --out need not be a shared folder)")
    if blob is None:
        return None
    args._resume_shown = shown
    if ctx.is_main and shown is not None:
        return Path(shown)
    fd, tmp = tempfile.mkstemp(prefix=f"hessbatch-rank{ctx.rank}-", suffix=".pt")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    atexit.register(lambda: Path(tmp).unlink(missing_ok=True))
    if hashlib.sha256(Path(tmp).read_bytes()).hexdigest()[:16] != digest:
        raise DistributedConfigError(f"rank {ctx.rank} received a checkpoint whose digest "
                                     "differs from rank 0's")
    return Path(tmp)


def _check_resume_layout(args: argparse.Namespace, config: SchedulerConfig,
                         world: int) -> None:
    """A resumed run keeps its micro-batch: name the process counts that fit it instead of
    suggesting --micro-batch (which resume refuses)."""
    from ._distributed import DistributedConfigError, reachable_batch_sizes

    sizes = reachable_batch_sizes(config)
    m = config.micro_batch_size
    if all(b % (world * m) == 0 for b in sizes):
        return
    fit = [w for w in range(1, max(sizes) // m + 1) if all(b % (w * m) == 0 for b in sizes)]
    raise DistributedConfigError(
        f"--resume {getattr(args, '_resume_shown', args.resume)}: the checkpoint's schedule "
        f"reaches B = {sizes} with micro-batches of {m}, and on {world} processes every B must "
        f"be a multiple of {world} x {m} = {world * m}; a resumed run keeps its micro-batch, so "
        f"resume on {' or '.join(str(w) for w in fit)} process(es) (--nproc), or start a fresh "
        "run")


def _parser_defaults() -> dict[str, Any]:
    parser = argparse.ArgumentParser(add_help=False)
    build_parser(parser)
    return vars(parser.parse_args([]))


# option destination -> SchedulerConfig field (the schedule options a checkpoint remembers)
_CONFIG_FIELDS = {"method": "method", "lr": "lr", "batch_size": "batch_size",
                  "max_batch_size": "max_batch_size", "micro_batch_size": "micro_batch_size",
                  "decay_epochs": "lr_decay_epochs", "decay_factor": "lr_decay_factor",
                  "alpha": "alpha", "beta": "beta", "check_every": "check_every",
                  "patience": "patience", "adv_eps": "adv_eps", "adv_fraction": "adv_fraction",
                  "adv_decay": "adv_decay", "adv_stop": "adv_stop",
                  "warmup_epochs": "warmup_epochs"}


def _refuse_changed_options(args: argparse.Namespace, spec: dict[str, Any],
                            saved: dict[str, Any]) -> None:
    """A resumed run keeps the checkpoint's options: one given with another value is an error.

    An option counts as given when it was typed (``args._given``, set by ``hessbatch``), even
    with its default value: ``--batch-size 128`` on a checkpoint trained at 32 is refused.
    Without that record (a namespace built by hand) a value other than the default counts.
    """
    defaults = _parser_defaults()
    typed = getattr(args, "_given", None)

    def norm(v):
        return tuple(v) if isinstance(v, (list, tuple)) else v

    changed = []
    pairs = [(k, spec.get(k)) for k in _SPEC_KEYS] + \
        [(dest, saved.get(field)) for dest, field in _CONFIG_FIELDS.items()] + \
        [("warm_start", spec.get("warm_start", False)),
         ("hvp_check", spec.get("hvp_check", "error")),
         ("batchnorm", spec.get("batchnorm", False)), ("dropout", spec.get("dropout", 0.0)),
         ("full_eigenvalue", not spec.get("decision_stop", True))]
    for dest, kept in pairs:
        given = getattr(args, dest)
        was_given = dest in typed if typed is not None else \
            norm(given) != norm(defaults[dest])
        if was_given and norm(given) != norm(kept):
            changed.append(f"--{dest.replace('_', '-')} {given!r} (checkpoint: {kept!r})")
    if changed:
        raise ValueError(f"--resume {args.resume}: a resumed run keeps the checkpoint's options,"
                         f" but these were given with other values: {'; '.join(changed)}; drop "
                         "them, or start a fresh run with --out elsewhere")


def _resume_epochs(args: argparse.Namespace, state: dict[str, Any],
                   saved: dict[str, Any]) -> None:
    """Apply --epochs to a resumed run when the result is what a fresh run would do.

    Only tau's epoch (absa: the adversary stops after ``adv_stop * epochs`` epochs) depends on
    the number of epochs; decay and warm-up epochs are absolute. So a new ``--epochs`` is
    accepted unless it moves tau's epoch across the epochs already trained (the checkpoint's
    adversary would then differ from a fresh run's); that case is refused with the reason.
    """
    done = state["scheduler"]["state"]["epoch"]
    new = args.epochs
    if new < done:
        raise ValueError(f"--epochs {new}: the checkpoint has already trained {done} epochs")
    if saved["method"] == "absa" and saved["adv_fraction"] > 0:
        def stop(epochs):  # first epoch end at which the adversary is over (core's rule)
            return max(0, math.ceil(saved["adv_stop"] * epochs - _ROUND_TOL))

        old_stop, new_stop = stop(saved["epochs"]), stop(new)
        if old_stop != new_stop and done >= min(old_stop, new_stop):
            raise ValueError(
                f"--epochs {new}: absa stops the adversary after tau * epochs = "
                f"{saved['adv_stop']} * epochs, epoch {new_stop} with --epochs {new} instead of "
                f"epoch {old_stop}, but the checkpoint is at epoch {done}, past the first of "
                f"them: a fresh run with --epochs {new} would have trained differently. Resume "
                f"with --epochs {saved['epochs']}, or start a fresh run")
    saved["epochs"] = new
    state["scheduler"] = dict(state["scheduler"], config=saved)
    state.pop("checksum", None)  # verified on load; the scheduler part is now rewritten


def _fit_to_data(args: argparse.Namespace, spec: dict[str, Any], n: int) -> list[str]:
    """Batch sizes against the training set: an error if given too large, a recorded note if
    a default is too large (it is lowered to fit). Returns the notes."""
    defaults, notes = _parser_defaults(), []
    if args.batch_size > n:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the training set "
                         f"({n} samples); use at most {n}")
    micro = args.micro_batch_size or args.batch_size
    if args.max_batch_size is not None and args.max_batch_size > n:
        if args.max_batch_size != defaults["max_batch_size"]:
            raise ValueError(f"--max-batch {args.max_batch_size} is larger than the training set"
                             f" ({n} samples); use at most {n}")
        fit = max(n // micro * micro, args.batch_size)
        notes.append(f"--max-batch {args.max_batch_size} (default) is larger than the training "
                     f"set ({n} samples): using {fit}, the largest multiple of the "
                     f"micro-batch {micro} that fits")
        args.max_batch_size = fit
    if spec["hessian_batch"] > n:
        if spec["hessian_batch"] != defaults["hessian_batch"]:
            raise ValueError(f"--hessian-batch {spec['hessian_batch']} is larger than the "
                             f"training set ({n} samples); use at most {n}")
        notes.append(f"--hessian-batch {spec['hessian_batch']} (default) is larger than the "
                     f"training set ({n} samples): using {n}")
        spec["hessian_batch"] = n
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return notes


def _report_divergence(exc: TrainingDiverged, args: argparse.Namespace, trainer: Trainer,
                       spec: dict[str, Any]) -> int:
    """The NaN stop: one message, metrics.json says why, the last good checkpoint is kept."""
    where = ""
    if trainer.parallel is not None and trainer.parallel.rank != 0:
        return 3  # every rank stopped at the same update; rank 0 reports and writes
    if args.out is not None:
        ck = args.out / "checkpoint.pt"
        if ck.is_file():
            epoch = load_checkpoint(ck)["scheduler"]["state"]["epoch"]
            where = f"; the last good checkpoint is {ck} (after epoch {epoch})"
        else:
            where = (f"; no checkpoint in {args.out}: it diverged in epoch {exc.epoch}, before "
                     "the first one")
        if trainer.history:
            write_outputs(args.out, trainer, spec, final=False, stopped=str(exc))
    print(f"hessbatch train: error: {exc}{where}", file=sys.stderr)
    return 3


# --------------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """The entry point of each ``--nproc`` worker (a spawned process): :func:`_train` with the
    data-parallel exit rules (:func:`hessbatch.deep._cli_distributed.worker_exit`)."""
    return _cli_distributed.worker_exit(_train, args)


def run(args: argparse.Namespace) -> int:
    """Train as the options say; returns the exit code."""
    _check_args(args)
    if args.resume is None:
        # the scheduler options, named as typed, before the data loads or a worker starts:
        # the training-set size enters only the default check period, so 1 stands in for it
        # (the config is built again from the real size after the data)
        config_from_args(args, samples_per_epoch=1,
                         epochs=10 if args.epochs is None else args.epochs)
    if _cli_distributed.wants_launch(args):
        args.out = _output_folder(args)  # checked once, before any worker starts
        return _cli_distributed.launch(args, worker)  # --nproc N: N workers, each runs worker
    if _cli_distributed.launched():
        return worker(args)  # a torchrun worker: the same exit rules as --nproc's
    return _train(args)


def _train(args: argparse.Namespace) -> int:
    """One process's training (a worker's, under torch.distributed)."""
    worker_rank = int(os.environ.get("RANK", "0")) if _cli_distributed.launched() else 0
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if restarted or worker_rank != 0:
        # a restarted worker: the first attempt checked --out (and rank 0 alone writes there;
        # the other ranks need not see the folder, nor the checkpoint: rank 0 sends it)
        args.out = None if args.out is None else Path(args.out)
    else:
        args.out = _output_folder(args)
    device = resolve_device(args.device)
    ctx = _cli_distributed.setup(args, device)  # a torchrun/elastic worker; None otherwise
    device = ctx.device if ctx is not None else device
    is_main = ctx is None or ctx.is_main
    if args.threads:
        torch.set_num_threads(args.threads)
    run_id = ctx.run_id if ctx is not None else uuid.uuid4().hex[:16]
    if ctx is not None:
        args.resume = _agree_on_resume(args, ctx)  # every rank: the same file, or none
    state = None
    if args.resume is not None:
        state = load_checkpoint(args.resume)
        spec = spec_of(state, args.resume)
        spec.setdefault("run_id", run_id)  # a checkpoint from before run ids: this run's
        saved = dict(state["scheduler"]["config"])
        _refuse_changed_options(args, spec, saved)
        if args.epochs is not None and args.epochs != saved["epochs"]:
            _resume_epochs(args, state, saved)
        config = SchedulerConfig.from_dict(saved)
        if args.dtype is not None and args.dtype != spec.get("dtype", "float32"):
            raise ValueError(f"--dtype {args.dtype}: the checkpoint was trained in "
                             f"{spec.get('dtype', 'float32')}; leave --dtype out to resume")
        if ctx is not None:
            _check_resume_layout(args, config, ctx.world_size)
        if is_main:
            print(f"resuming {getattr(args, '_resume_shown', args.resume)}: the model, data, "
                  "optimizer and schedule options come from the checkpoint", file=sys.stderr)
    else:
        spec = {k: getattr(args, k) for k in _SPEC_KEYS}
        spec["method"] = args.method
        spec["batchnorm"], spec["dropout"] = bool(args.batchnorm), float(args.dropout)
        spec["dtype"] = args.dtype or "float32"
        spec["warm_start"], spec["hvp_check"] = bool(args.warm_start), args.hvp_check
        spec["decision_stop"] = not args.full_eigenvalue
        spec["run_id"] = run_id
        config = None
    bundle, model = build_from_spec(spec, device)
    if config is None:
        epochs = 10 if args.epochs is None else args.epochs
        config = config_from_args(args, samples_per_epoch=len(bundle.train), epochs=epochs)
        notes = _fit_to_data(args, spec, len(bundle.train))  # after the values are checked
        if notes:
            spec["adjusted"] = notes  # recorded in metrics.json and the checkpoint
            config = config_from_args(args, samples_per_epoch=len(bundle.train), epochs=epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=spec["momentum"],
                                weight_decay=spec["weight_decay"])
    params = block_parameters(model, spec["block"])
    eig_fn = None
    parallel = None
    if ctx is not None:
        from ._distributed import DataParallel
        parallel = DataParallel(
            eig_params=params, sync_batchnorm=args.sync_batchnorm,
            config_extra={"spec": spec, "checkpoint_every": args.checkpoint_every})
    elif params is not None:
        from . import top_eigenvalue

        def eig_fn(m, loss_fn, batches, *, seed, threshold=None):
            return top_eigenvalue(m, loss_fn, batches, params=params,
                                  method=spec["eig_method"], max_hvp=spec["max_hvp"],
                                  tol=spec["eig_tol"], seed=seed, threshold=threshold,
                                  extend_hvp=EXTEND_HVP)
    trainer = Trainer(model, optimizer, torch.nn.functional.cross_entropy, bundle.train,
                      Scheduler(config), test_data=bundle.test, eigenvalue_fn=eig_fn,
                      parallel=parallel,
                      hessian_batch_size=spec["hessian_batch"], eig_method=spec["eig_method"],
                      max_hvp=spec["max_hvp"], eig_tol=spec["eig_tol"],
                      adversary=spec["adversary"], last_batch=spec["last_batch"],
                      seed=spec["seed"], warm_start=spec.get("warm_start", False),
                      hvp_check=spec.get("hvp_check", "error"),
                      decision_stop=spec.get("decision_stop", True))
    if state is not None:
        try:
            trainer.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{args.resume}: the saved state does not fit the model and "
                             f"optimizer its spec describes ({str(exc).splitlines()[0]})") \
                from None

    n = len(bundle.train)
    progress = Progress(config.epochs * n, f"{config.method}",
                        enabled=not args.quiet and is_main)
    progress.done = trainer.scheduler.decision.samples_seen  # resumed runs start part-way

    pending = {"n": 0, "t": 0.0}

    def on_update(tr: Trainer, d) -> None:
        # Redraw at most 5 times a second: a redraw per update floods logs of fast runs.
        pending["n"] += tr.update_log[-1][0]
        now = time.perf_counter()
        if now - pending["t"] >= 0.2 or d.samples_seen % n == 0:
            progress.update(pending["n"], f"epoch {d.epoch + 1}/{config.epochs} "
                                          f"B={d.batch_size} lr={d.lr:.4g} updates={d.updates}")
            pending.update(n=0, t=now)

    def on_epoch(tr: Trainer, m: EpochMetrics) -> None:
        if args.out is not None:
            due = bool(args.checkpoint_every and m.epoch % args.checkpoint_every == 0)
            if is_main:
                write_outputs(args.out, tr, spec, final=False, checkpoint=due,
                              extra=_checkpoint_extra(tr))
            _wait_for_rank0(tr)

    started = time.perf_counter()
    try:
        trainer.run(on_update=on_update, on_epoch=on_epoch)
    except TrainingDiverged as exc:
        progress.close()
        return _report_divergence(exc, args, trainer, spec)
    progress.close()
    wall = time.perf_counter() - started
    if args.out is not None:
        if is_main:
            write_outputs(args.out, trainer, spec, final=True, checkpoint=True,
                          extra=_checkpoint_extra(trainer))
        _wait_for_rank0(trainer)
    if not is_main:
        return 0
    if not trainer.history:
        print("nothing to train: the checkpoint has finished all its epochs")
        return 0
    print(epoch_table(trainer.history))
    print()
    print(summary_table(summary(trainer.history)))
    print(f"\n{config.method} on {spec['data']}: {wall:.1f} s wall"
          + (f"; outputs in {args.out}" if args.out is not None else ""))
    return 0
