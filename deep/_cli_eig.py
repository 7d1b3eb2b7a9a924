"""``hessbatch eig CHECKPOINT``: the top Hessian eigenvalue of a model saved by ``hessbatch train``.

Example::

    hessbatch eig runs/abs/checkpoint.pt --hessian-batch 512 --max-hvp 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hessbatch._cli_common import format_table

from ._cli_train import block_parameters, build_from_spec, resolve_device, spec_of
from ._trainer import load_checkpoint

DESCRIPTION = """\
Print the top eigenvalue of the Hessian of the training loss (cross-entropy, mean over a batch
of training samples drawn with --seed) for a model saved by `hessbatch train`. The model and the
data set are rebuilt from the checkpoint; the model is in eval mode during the computation.
Before it, one exact Hessian-vector product is compared with a central finite difference of
gradients (--hvp-check), so a model whose double backward is wrong cannot give a silently
wrong eigenvalue."""


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Add every option of ``hessbatch eig``."""
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt written by hessbatch train")
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


def run(args: argparse.Namespace) -> int:
    """Compute and print the eigenvalue; returns the exit code."""
    from . import top_eigenvalue

    state = load_checkpoint(args.checkpoint)  # format, version and checksum verified
    spec = spec_of(state, args.checkpoint)
    for name in ("hessian_batch", "max_hvp", "micro_batch"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    device = resolve_device(args.device)
    bundle, model = build_from_spec(spec, device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{args.checkpoint}: the saved weights do not fit the model its spec "
                         f"describes ({str(exc).splitlines()[0]})") from None
    if args.hessian_batch is not None and args.hessian_batch > len(bundle.train):
        raise ValueError(f"--hessian-batch {args.hessian_batch} is larger than the training set "
                         f"({len(bundle.train)} samples); use at most {len(bundle.train)}")
    size = min(args.hessian_batch or spec["hessian_batch"], len(bundle.train))
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(bundle.train), generator=gen)[:size]
    x, y = bundle.train.tensors
    batches = [(x[idx[i:i + args.micro_batch]].to(device), y[idx[i:i + args.micro_batch]].to(device))
               for i in range(0, size, args.micro_batch)]
    method = args.method or spec["eig_method"]
    params = block_parameters(model, args.block)
    loss_fn = torch.nn.functional.cross_entropy
    backend = "finite_difference" if args.hvp == "finite-difference" else "double_backprop"
    check_line = None
    if args.hvp_check != "off":
        from ._selftest import check_hvp, check_mean_loss
        check_mean_loss(model, loss_fn, batches[0])
        if backend == "double_backprop":
            check = check_hvp(model, loss_fn, batches, params=params, seed=args.seed,
                              on_fail="error" if args.hvp_check == "error" else "warn")
            check_line = check.message()
    result = top_eigenvalue(model, loss_fn, batches, params=params, method=method,
                            max_hvp=args.max_hvp or spec["max_hvp"],
                            tol=spec["eig_tol"] if args.tol is None else args.tol,
                            seed=args.seed, backend=backend)
    epoch = state["scheduler"]["state"]["epoch"]
    print(format_table(
        ("checkpoint", "epoch", "samples", "block", "method", "HVPs", "converged",
         "top eigenvalue"),
        [(str(args.checkpoint), epoch, size, args.block or "all", method, result.n_hvp,
          "yes" if result.converged else "no", f"{result.value:.6g}")]))
    if check_line is not None:
        print(check_line, file=sys.stderr)
    if not result.converged:
        print("not converged within the HVP budget: raise --max-hvp for a tighter value",
              file=sys.stderr)
    return 0
