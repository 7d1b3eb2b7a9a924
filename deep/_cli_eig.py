"""``hessbatch eig``: the top Hessian eigenvalue of a model saved by ``hessbatch train``, or of
a user's own model (``--model-factory MODULE:FACTORY`` with ``--weights``, or ``--torchscript``).

Example::

    hessbatch eig runs/abs/checkpoint.pt --hessian-batch 512 --max-hvp 20
    hessbatch eig --model-factory mypkg.nets:make_net --weights net.pt --data mnist5k
    hessbatch eig --torchscript net_scripted.pt --data-file batch.pt --hvp-check error
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

from hessbatch._cli_common import format_table

from ._cli_train import block_parameters, build_from_spec, resolve_device, spec_of
from ._trainer import load_checkpoint

DESCRIPTION = """\
Print the top eigenvalue of the Hessian of the training loss (cross-entropy, mean over a batch
of training samples drawn with --seed) for a model saved by `hessbatch train` (CHECKPOINT: the
model and the data set are rebuilt from it), or for your own model: --model-factory
MODULE:FACTORY (an importable function returning the nn.Module; --weights loads a state_dict
saved with torch.save(model.state_dict(), FILE)) or --torchscript FILE (torch.jit.save), with
--data SPEC or --data-file FILE (torch.save((x, y), FILE)). The model is in eval mode during
the computation. Before it, one exact Hessian-vector product is compared with a central finite
difference of gradients (--hvp-check), so a model whose double backward is wrong cannot give a
silently wrong eigenvalue. Each product is reported on stderr as it finishes."""


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Add every option of ``hessbatch eig``."""
    parser.add_argument("checkpoint", type=Path, nargs="?", default=None,
                        help="checkpoint.pt written by hessbatch train (or use --model-factory "
                             "/ --torchscript for your own model)")
    parser.add_argument("--model-factory", default=None, metavar="MODULE:FACTORY",
                        help="your model: MODULE:FACTORY, an importable function (no "
                             "arguments) returning the nn.Module, e.g. mypkg.nets:make_net")
    parser.add_argument("--weights", type=Path, default=None,
                        help="state_dict file for --model-factory (torch.save(model."
                             "state_dict(), FILE)); default: the factory's weights")
    parser.add_argument("--torchscript", type=Path, default=None,
                        help="your model as a TorchScript file (torch.jit.save)")
    parser.add_argument("--data", default=None,
                        help="data for your model: mnist5k, cifar10:PATH or "
                             "synthetic[:N[:CxHxW]] (the training split, seeded by --seed)")
    parser.add_argument("--data-file", type=Path, default=None,
                        help="data for your model: a file holding (x, y) tensors "
                             "(torch.save((x, y), FILE))")
    parser.add_argument("--hessian-batch", type=int, default=None,
                        help="training samples in the Hessian batch (default: the run's, 128)")
    parser.add_argument("--micro-batch", type=int, default=256,
                        help="samples per forward/backward pass (default %(default)s)")
    parser.add_argument("--method", choices=("power", "lanczos"), default=None,
                        help="solver (default: the run's)")
    parser.add_argument("--max-hvp", type=int, default=None,
                        help="Hessian-vector products at most (default: the run's)")
    parser.add_argument("--tol", type=float, default=None,
                        help="relative tolerance (default: the run's)")
    parser.add_argument("--block", type=int, default=0,
                        help="Hessian of the last K layers with parameters only; 0: all "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the Hessian batch and the solver (default %(default)s)")
    parser.add_argument("--hvp", choices=("exact", "finite-difference"), default="exact",
                        help="Hessian-vector products: exact (double backprop) or central "
                             "finite differences of gradients, for models without double "
                             "backward (default %(default)s)")
    parser.add_argument("--hvp-check", choices=("error", "warn", "off"), default="error",
                        help="before the eigenvalue, compare one exact product with a finite "
                             "difference of gradients (float64 copy of the model) and check "
                             "that the loss is a mean over its batch; a failure is an error, "
                             "a warning, or not checked (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")


def _import_factory(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model-factory must be MODULE:FACTORY (e.g. mypkg.nets:make_net), "
                         f"got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model-factory {spec}: cannot import {module_name!r} ({exc}); "
                         "is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model-factory {spec}: {module_name} has no callable {attr!r}")
    return factory


def _user_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    if args.torchscript is not None:
        if args.model_factory is not None or args.weights is not None:
            raise ValueError("--torchscript carries its own weights: do not combine it with "
                             "--model-factory or --weights")
        if not args.torchscript.is_file():
            raise ValueError(f"--torchscript {args.torchscript}: file not found")
        return torch.jit.load(str(args.torchscript), map_location=device)
    model = _import_factory(args.model_factory)()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model-factory {args.model_factory} returned "
                         f"{type(model).__name__}, not a torch.nn.Module")
    if args.weights is not None:
        if not args.weights.is_file():
            raise ValueError(f"--weights {args.weights}: file not found")
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"--weights {args.weights}: the state_dict does not fit the model "
                             f"of --model-factory {args.model_factory} "
                             f"({str(exc).splitlines()[0]})") from None
    return model.to(device)


def _user_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    if (args.data is None) == (args.data_file is None):
        raise ValueError("a user model needs data: give exactly one of --data SPEC and "
                         "--data-file FILE")
    if args.data_file is not None:
        if not args.data_file.is_file():
            raise ValueError(f"--data-file {args.data_file}: file not found")
        pair = torch.load(args.data_file, map_location="cpu", weights_only=True)
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and
                all(isinstance(t, torch.Tensor) for t in pair) and
                pair[0].shape[:1] == pair[1].shape[:1] and pair[0].dim() > 0):
            raise ValueError(f"--data-file {args.data_file} must hold an (x, y) pair of tensors "
                             "with the same number of samples (torch.save((x, y), FILE))")
        return pair[0], pair[1]
    from ._data import load_data
    return load_data(args.data, seed=args.seed).train.tensors


class _Progress:
    """One stderr line per Hessian-vector product, so a long solve is never silent."""

    def __init__(self, budget: int) -> None:
        self.budget, self.start = budget, time.perf_counter()

    def __call__(self, k: int, estimate: float, residual: float) -> None:
        print(f"eig: product {k}/{self.budget}: estimate {estimate:.6g}, residual "
              f"{residual:.2e} ({time.perf_counter() - self.start:.1f} s)", file=sys.stderr,
              flush=True)


def run(args: argparse.Namespace) -> int:
    """Compute and print the eigenvalue; returns the exit code."""
    from . import top_eigenvalue

    for name in ("hessian_batch", "max_hvp", "micro_batch"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    user = args.model_factory is not None or args.torchscript is not None
    if user == (args.checkpoint is not None):
        raise ValueError("give either a CHECKPOINT written by hessbatch train, or your own "
                         "model with --model-factory MODULE:FACTORY [--weights FILE] or "
                         "--torchscript FILE (not both, not neither)")
    if not user and (args.data is not None or args.data_file is not None
                     or args.weights is not None):
        raise ValueError("--data, --data-file and --weights are for --model-factory / "
                         "--torchscript; a checkpoint rebuilds its own data and weights")
    device = resolve_device(args.device)
    if user:
        model = _user_model(args, device)
        x, y = _user_data(args)
        n_train = int(x.shape[0])
        defaults = {"hessian_batch": 128, "eig_method": "lanczos", "max_hvp": 10,
                    "eig_tol": 1e-2}
        label, epoch = str(args.torchscript or args.model_factory), "-"
    else:
        state = load_checkpoint(args.checkpoint)  # format, version and checksum verified
        spec = spec_of(state, args.checkpoint)
        bundle, model = build_from_spec(spec, device)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"{args.checkpoint}: the saved weights do not fit the model its "
                             f"spec describes ({str(exc).splitlines()[0]})") from None
        x, y = bundle.train.tensors
        n_train = len(bundle.train)
        defaults = spec
        label, epoch = str(args.checkpoint), state["scheduler"]["state"]["epoch"]
    if args.hessian_batch is not None and args.hessian_batch > n_train:
        raise ValueError(f"--hessian-batch {args.hessian_batch} is larger than the training set "
                         f"({n_train} samples); use at most {n_train}")
    size = min(args.hessian_batch or defaults["hessian_batch"], n_train)
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(n_train, generator=gen)[:size]
    mb = args.micro_batch
    batches = [(x[idx[i:i + mb]].to(device), y[idx[i:i + mb]].to(device))
               for i in range(0, size, mb)]
    method = args.method or defaults["eig_method"]
    params = block_parameters(model, args.block)
    loss_fn = torch.nn.functional.cross_entropy
    backend = "finite_difference" if args.hvp == "finite-difference" else "double_backprop"
    max_hvp = args.max_hvp or defaults["max_hvp"]
    check_line = None
    if args.hvp_check != "off":
        from ._selftest import HVPCheckError, check_hvp, check_mean_loss
        print("eig: checking the loss and one Hessian-vector product (float64 copy)...",
              file=sys.stderr, flush=True)
        check_mean_loss(model, loss_fn, batches[0])
        if backend == "double_backprop":
            try:
                check = check_hvp(model, loss_fn, batches, params=params, seed=args.seed,
                                  on_fail="error" if args.hvp_check == "error" else "warn")
            except HVPCheckError as exc:  # a refusal, with its message: exit 2, no traceback
                raise ValueError(f"{exc} (--hvp-check warn to compute it anyway)") from None
            check_line = check.message()
    result = top_eigenvalue(model, loss_fn, batches, params=params, method=method,
                            max_hvp=max_hvp,
                            tol=defaults["eig_tol"] if args.tol is None else args.tol,
                            seed=args.seed, backend=backend, progress=_Progress(max_hvp))
    print(format_table(
        ("model" if user else "checkpoint", "epoch", "samples", "block", "method", "HVPs",
         "converged", "top eigenvalue"),
        [(label, epoch, size, args.block or "all", method, result.n_hvp,
          "yes" if result.converged else "no", f"{result.value:.6g}")]))
    if check_line is not None:
        print(check_line, file=sys.stderr)
    if not result.converged:
        print("not converged within the HVP budget: raise --max-hvp for a tighter value",
              file=sys.stderr)
    return 0
