"""``hessbatch train``: BL, FB, GG, ABS or ABSA on a PyTorch model, with metrics and curves.

Example (the MNIST-5k demo, about a minute on two CPU cores)::

    hessbatch train --method abs --model cnn --data mnist5k --epochs 10 --out runs/abs

writes ``runs/abs/metrics.json`` (every epoch's metrics and the configuration),
``runs/abs/curves.png`` (with matplotlib) and ``runs/abs/checkpoint.pt`` (resume with
``--resume runs/abs/checkpoint.pt``; the top eigenvalue with ``hessbatch eig``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from hessbatch import Scheduler, SchedulerConfig
from hessbatch._cli_common import Progress, add_scheduler_arguments, config_from_args, \
    format_table

from . import _cli_distributed
from ._data import load_data
from ._models import ACTIVATIONS, MODELS, make_model
from ._trainer import EpochMetrics, Trainer, load_checkpoint

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
    g.add_argument("--data", default="mnist5k",
                   help="mnist5k (shipped), cifar10:PATH (folder of the python-version "
                        "batches) or synthetic[:N[:CxHxW]] (default %(default)s)")
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
    g.add_argument("--out", type=Path, default=None,
                   help="folder for metrics.json, curves.png and checkpoint.pt "
                        "(default: write nothing)")
    g.add_argument("--checkpoint-every", type=int, default=1,
                   help="epochs between checkpoints in --out; 0: only at the end "
                        "(default %(default)s)")
    g.add_argument("--resume", type=Path, default=None,
                   help="continue from a checkpoint.pt; the model, data, optimizer and "
                        "schedule options are taken from it")
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


def build_from_spec(spec: dict[str, Any], device: torch.device):
    """Data bundle and a freshly initialised model (seeded) from a run's spec."""
    bundle = load_data(spec["data"], seed=spec["seed"], test_fraction=spec["test_fraction"],
                       default_shape=(3, 32, 32) if spec["model"] == "resnet18"
                       else (1, 28, 28))
    torch.manual_seed(spec["seed"])  # the model's initial weights
    model = make_model(spec["model"], bundle.input_shape, bundle.num_classes,
                       activation=spec["activation"], width=spec["width"]).to(device)
    dtype = _cli_distributed.dtype_of(spec.get("dtype"))  # checkpoints before --dtype: float32
    if dtype != torch.float32:
        model = model.to(dtype)
        bundle = dataclasses.replace(bundle, **{
            part: TensorDataset(getattr(bundle, part).tensors[0].to(dtype),
                                *getattr(bundle, part).tensors[1:])
            for part in ("train", "test")})
    return bundle, model


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

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ep = [m.epoch for m in history]
    fig, ax = plt.subplots(2, 2, figsize=(9, 6.5))
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(out: Path, trainer: Trainer, spec: dict[str, Any], final: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"spec": spec, "scheduler": trainer.scheduler.config.to_dict(),
           "history": [m.to_dict() for m in trainer.history],
           "summary": summary(trainer.history) if trainer.history else None,
           "finished": trainer.scheduler.decision.finished}
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out / "metrics.json")
    if final and trainer.history:
        title = (f"{spec['method']} {spec['model']}/{spec['activation']} on {spec['data']}, "
                 f"seed {spec['seed']}")
        if not plot_curves(trainer.history, out / "curves.png", title):
            print("curves.png not written: matplotlib is missing; pip install "
                  "'hessbatch[plot]' to get the plot", file=sys.stderr)


# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Train as the options say; returns the exit code."""
    _check_args(args)
    if _cli_distributed.wants_launch(args):
        return _cli_distributed.launch(args)  # --nproc N: N workers, each runs this function
    device = resolve_device(args.device)
    ctx = _cli_distributed.setup(args, device)  # a torchrun/elastic worker; None otherwise
    device = ctx.device if ctx is not None else device
    is_main = ctx is None or ctx.is_main
    if args.threads:
        torch.set_num_threads(args.threads)
    state = None
    if args.resume is not None:
        state = load_checkpoint(args.resume)
        spec = dict(state.get("extra", {}).get("spec", {}))
        missing = [k for k in _SPEC_KEYS + ("method",) if k not in spec]
        if missing:
            raise ValueError(f"{args.resume} was not written by `hessbatch train` (its spec "
                             f"lacks {missing})")
        saved = dict(state["scheduler"]["config"])
        if args.epochs is not None and args.epochs != saved["epochs"]:
            done = state["scheduler"]["state"]["epoch"]
            if args.epochs < done:
                raise ValueError(f"--epochs {args.epochs}: the checkpoint has already trained "
                                 f"{done} epochs")
            # Extending (or shortening) a run changes only the number of epochs; tau's epoch
            # moves with it, as it would have in a run started with this many epochs.
            saved["epochs"] = args.epochs
            state["scheduler"] = dict(state["scheduler"], config=saved)
        config = SchedulerConfig.from_dict(saved)
        if args.dtype is not None and args.dtype != spec.get("dtype", "float32"):
            raise ValueError(f"--dtype {args.dtype}: the checkpoint was trained in "
                             f"{spec.get('dtype', 'float32')}; leave --dtype out to resume")
        if is_main:
            print(f"resuming {args.resume}: the model, data, optimizer and schedule options "
                  "come from the checkpoint", file=sys.stderr)
    else:
        spec = {k: getattr(args, k) for k in _SPEC_KEYS}
        spec["method"] = args.method
        spec["dtype"] = args.dtype or "float32"
        config = None
    bundle, model = build_from_spec(spec, device)
    if config is None:
        config = config_from_args(args, samples_per_epoch=len(bundle.train),
                                  epochs=10 if args.epochs is None else args.epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=spec["momentum"],
                                weight_decay=spec["weight_decay"])
    params = block_parameters(model, spec["block"])
    eig_fn = None
    trainer_cls: Any = Trainer
    if ctx is not None:
        from ._distributed import DistributedTrainer
        trainer_cls = functools.partial(
            DistributedTrainer, eig_params=params, sync_batchnorm=args.sync_batchnorm,
            config_extra={"spec": spec, "checkpoint_every": args.checkpoint_every})
    elif params is not None:
        from . import top_eigenvalue

        def eig_fn(m, loss_fn, batches, *, seed):
            return top_eigenvalue(m, loss_fn, batches, params=params,
                                  method=spec["eig_method"], max_hvp=spec["max_hvp"],
                                  tol=spec["eig_tol"], seed=seed)
    trainer = trainer_cls(model, optimizer, torch.nn.functional.cross_entropy, bundle.train,
                      Scheduler(config), test_data=bundle.test, eigenvalue_fn=eig_fn,
                      hessian_batch_size=spec["hessian_batch"], eig_method=spec["eig_method"],
                      max_hvp=spec["max_hvp"], eig_tol=spec["eig_tol"],
                      adversary=spec["adversary"], last_batch=spec["last_batch"],
                      seed=spec["seed"])
    if state is not None:
        trainer.load_state_dict(state)

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
            if args.checkpoint_every and m.epoch % args.checkpoint_every == 0:
                tr.save(args.out / "checkpoint.pt", extra={"spec": spec})
            if is_main:
                write_outputs(args.out, tr, spec, final=False)

    started = time.perf_counter()
    trainer.run(on_update=on_update, on_epoch=on_epoch)
    progress.close()
    wall = time.perf_counter() - started
    if args.out is not None:
        trainer.save(args.out / "checkpoint.pt", extra={"spec": spec})
        if is_main:
            write_outputs(args.out, trainer, spec, final=True)
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
