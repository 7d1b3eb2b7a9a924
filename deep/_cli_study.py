"""``hessbatch study``: Hessian spectrum and adversarial robustness against batch size.

Example (the MNIST-5k study of docs/results.md)::

    hessbatch study --data mnist5k --model mlp --activations relu,softplus \\
        --batch-sizes 128,512,2048 --methods bl,absa --epochs 5 --seeds 0,1 --out runs/study
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from hessbatch._cli_common import int_list
from hessbatch._outputs import check_out_dir
from hessbatch._scheduler import METHODS

from . import _cli_train
from ._models import ACTIVATIONS

DESCRIPTION = """\
The precursor study of ABS/ABSA (Yao et al., NeurIPS 2018, "Hessian-based analysis of large
batch training and robustness to adversaries") on your data: train every (activation, method,
batch size, seed) with the options of `hessbatch train`, then measure at the end of training

  * the top-k eigenvalues of the Hessian of the mean loss over the whole training set (block
    Lanczos, products accumulated over micro-batches; residual tolerance --eig-rtol),
  * its most negative eigenvalue (Lanczos on -H: an upper bound, so a negative value proves a
    saddle direction),
  * its trace (Hutchinson deflated by the top-k Ritz vectors) with a 95% interval,
  * test accuracy under FGSM and under PGD (--pgd-steps) at each --eps,
  * the training loss along the top eigenvector and a random direction of the same norm,
  * the top and bottom eigenvalues of the input-space Hessian at clean and FGSM test points
    (>= 0 up to rounding for ReLU nets by an identity, J^T (diag(p) - p p^T) J; a
    measurement only for smooth activations such as softplus),

and, per (activation, method, seed), the loss along the line from the smallest- to the
largest-batch solution, lambda in --lambdas. For bl, B is the fixed batch; for abs/absa it is
the initial batch B0 (the batch grows up to --max-batch).

With --loss-targets (e.g. 0.3,0.1,0.03) every run is also measured where its training loss
first reaches each target, and stops at the last: batch sizes compared at equal training loss,
not only at equal epochs (at_loss.csv, vs_loss.png).

Runs are checkpointed every epoch under DIR/runs/<run>; a run whose measure.json exists is
skipped, so an interrupted study resumes where it stopped (with the same options; the lists of
runs may grow). Writes DIR/results.json, one CSV per measurement, PNGs (with matplotlib) and
prints a table."""

_RENAMED = {"--method": "--methods", "--batch-size": "--batch-sizes", "--seed": "--seeds",
            "--activation": "--activations", "--resume": "--out (runs resume by themselves)",
            "--checkpoint-every": "nothing (every epoch is checkpointed)"}
# train's options that a study does not support (one process, float32 training, its own resume):
# refused by name rather than silently ignored
_UNSUPPORTED = {
    "--nproc": "the study trains each run in one process",
    "--max-restarts": "the study trains each run in one process",
    "--backend": "the study trains each run in one process",
    "--sync-batchnorm": "the study trains each run in one process",
    "--dist-timeout": "the study trains each run in one process",
    "--dtype": "the study trains in float32; --measure-dtype sets the measurements' precision",
    "--warm-start": "the study's eigenvalue checks use the defaults of hessbatch train",
    "--hvp-check": "the study's eigenvalue checks use the defaults of hessbatch train",
}


def _str_list(choices):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}, got {text!r}")
        return items
    return parse


def _float_list(text: str) -> tuple[float, ...]:
    try:
        items = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,0.01,0.05, got {text!r}") from None
    if not items:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return items


class _Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in _UNSUPPORTED:
            parser.error(f"{option_string} is an option of `hessbatch train` that the study "
                         f"does not take: {_UNSUPPORTED[option_string]}")
        parser.error(f"{option_string} is an option of `hessbatch train`; the study uses "
                     f"{_RENAMED[option_string]}")


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Every option of ``hessbatch train`` except the per-run ones, plus the study's."""
    parser.conflict_handler = "resolve"   # the study replaces some of train's options
    _cli_train.build_parser(parser)
    for action in parser._actions:    # train's help for --epochs talks about --resume
        if action.dest == "epochs":
            action.help = "epochs to train every run (default 10)"
    hidden = parser.add_argument_group()   # created after: inherits "resolve"
    for flag in (*_RENAMED, *_UNSUPPORTED):
        hidden.add_argument(flag, action=_Renamed, nargs="?", help=argparse.SUPPRESS)
    g = parser.add_argument_group("the study's runs")
    g.add_argument("--methods", type=_str_list(METHODS), default=("bl", "absa"),
                   help="methods, comma-separated (default bl,absa)")
    g.add_argument("--batch-sizes", type=int_list, default=(128, 512, 2048),
                   help="B of each run, comma-separated (default 128,512,2048)")
    g.add_argument("--seeds", type=int_list, default=(0, 1),
                   help="seeds (model, split, shuffling), comma-separated (default 0,1)")
    g.add_argument("--activations", type=_str_list(ACTIVATIONS), default=("relu",),
                   help="activations, comma-separated, e.g. relu,softplus (default relu)")
    g.add_argument("--out", required=True,
                   help="study folder: new, empty, or a study folder to resume (a second call "
                        "skips finished runs); checked before any work")
    g.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --out that holds no study (its files are replaced)")
    g.add_argument("--loss-targets", type=_float_list, default=(),
                   help="training-loss targets, e.g. 0.3,0.1,0.03: every run is measured where "
                        "its training loss (whole training set, after an epoch) first reaches "
                        "each one, and stops at the smallest; --epochs is then the cap "
                        "(default: none, every run trains --epochs)")

    g = parser.add_argument_group("measurements")
    g.add_argument("--top-k", dest="top_k", type=int, default=5,
                   help="Hessian eigenvalues to compute (default %(default)s)")
    g.add_argument("--eig-rtol", dest="eig_tol_study", type=float, default=1e-4,
                   help="block Lanczos stops when every Ritz residual is <= this times "
                        "max(|theta_i|, 0.01 theta_1) (default %(default)s)")
    g.add_argument("--eig-budget", dest="eig_max_hvp", type=int, default=400,
                   help="Hessian-vector products at most for the top-k (default %(default)s)")
    g.add_argument("--bottom-budget", dest="bottom_max_hvp", type=int, default=60,
                   help="Hessian-vector products for the most negative eigenvalue (Lanczos on "
                        "-H; its value is an upper bound whatever the budget) "
                        "(default %(default)s)")
    g.add_argument("--trace-probes", type=int, default=64,
                   help="Hutchinson probes (default %(default)s)")
    g.add_argument("--hessian-samples", type=int, default=0,
                   help="training samples in the Hessian; 0: the whole training set "
                        "(default %(default)s)")
    g.add_argument("--hessian-micro-batch", type=int, default=1000,
                   help="samples per forward pass of a Hessian product (memory bound) "
                        "(default %(default)s)")
    g.add_argument("--eps", type=_float_list, default=(0.0, 0.01, 0.02, 0.05, 0.1),
                   help="attack radii (L-inf, inputs in [0, 1]) (default 0,0.01,0.02,0.05,0.1)")
    g.add_argument("--pgd-steps", type=int, default=10,
                   help="PGD iterations (default %(default)s)")
    g.add_argument("--attack-samples", type=int, default=0,
                   help="test samples attacked; 0: all (default %(default)s)")
    g.add_argument("--landscape-radius", type=float, default=1.0,
                   help="1-D landscapes at theta + t d, |t| <= this, |d| = 1 "
                        "(default %(default)s)")
    g.add_argument("--landscape-points", type=int, default=21,
                   help="points on each landscape (default %(default)s)")
    g.add_argument("--input-samples", type=int, default=32,
                   help="test points for the input-space Hessian (default %(default)s)")
    g.add_argument("--input-eps", type=float, default=0.05,
                   help="FGSM eps of the adversarial points of the input Hessian "
                        "(default %(default)s)")
    g.add_argument("--input-steps", type=int, default=40,
                   help="Lanczos steps per input Hessian (default %(default)s)")
    g.add_argument("--lambdas", type=_float_list,
                   default=tuple(round(-0.5 + 0.1 * i, 10) for i in range(21)),
                   help="interpolation points, small batch (0) to large (1); write "
                        "--lambdas=-0.5,... with '=' since the list starts with a minus "
                        "(default -0.5,-0.4,...,1.5)")
    g.add_argument("--measure-dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the measurements (default %(default)s)")


def _check(args: argparse.Namespace) -> None:
    for name in ("batch_sizes", "seeds"):
        if not getattr(args, name):
            raise ValueError(f"--{name.replace('_', '-')} must list at least one value")
    if any(b < 1 for b in args.batch_sizes):
        raise ValueError(f"--batch-sizes must be >= 1, got {list(args.batch_sizes)}")
    if any(s < 0 for s in args.seeds):
        raise ValueError(f"--seeds must be >= 0, got {list(args.seeds)}")
    for name, low in (("top_k", 1), ("eig_max_hvp", 1), ("bottom_max_hvp", 1),
                      ("trace_probes", 2),
                      ("hessian_micro_batch", 1), ("pgd_steps", 1), ("landscape_points", 1),
                      ("input_samples", 1), ("input_steps", 1), ("hessian_samples", 0),
                      ("attack_samples", 0)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got "
                             f"{getattr(args, name)}")
    if not args.eig_tol_study > 0:
        raise ValueError(f"--eig-rtol must be > 0, got {args.eig_tol_study}")
    if any(e < 0 for e in args.eps) or args.input_eps < 0:
        raise ValueError(f"--eps and --input-eps must be >= 0, got {list(args.eps)} and "
                         f"{args.input_eps}")
    targets = list(args.loss_targets)
    if any(not (math.isfinite(t) and t > 0) for t in targets):
        raise ValueError(f"--loss-targets must be finite numbers > 0, got {targets}")
    if targets != sorted(set(targets), reverse=True):
        raise ValueError(f"--loss-targets must be distinct and decreasing (the order training "
                         f"reaches them), got {targets}; e.g. "
                         f"{','.join(f'{t:g}' for t in sorted(set(targets), reverse=True))}")
    if not args.landscape_radius > 0:
        raise ValueError(f"--landscape-radius must be > 0, got {args.landscape_radius}")
    if args.top_k > args.eig_max_hvp:
        raise ValueError(f"--eig-budget ({args.eig_max_hvp}) must be at least --top-k "
                         f"({args.top_k})")


#: every file name at the top of a study folder (for --overwrite: an old set's files that the
#: new study does not write are removed)
STUDY_OUTPUTS = ("study.json", "results.json", "runs.csv", "at_loss.csv", "spectrum.csv",
                 "robustness.csv", "landscape.csv", "input_hessian.csv", "interpolation.csv",
                 "spectrum.png", "vs_loss.png", "robustness.png", "landscape.png",
                 "interpolation.png")


def check_study_out(text: str, overwrite: bool) -> Path:
    """The study folder, checked before any work by the one output module's rules: a new or
    empty folder, the folder of an earlier study (it resumes: its study.json is the run's own),
    or, with --overwrite, any folder; never ``''`` (the current folder)."""
    study = Path(text) / "study.json" if str(text).strip() else None
    resume = study if study is not None and study.is_file() else None
    out = check_out_dir(text, overwrite=overwrite, resume_from=resume, outputs=STUDY_OUTPUTS)
    assert out is not None
    return out


def run(args: argparse.Namespace) -> int:
    """Run the study; returns the exit code."""
    from ._study import run_study, summary_table

    args.out = check_study_out(args.out, args.overwrite)
    _check(args)
    # train's own checks (epochs, widths, momentum...) on the shared options
    args.checkpoint_every = 1
    _cli_train._check_args(args)
    device = _cli_train.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    doc = run_study(args, device)
    print(summary_table(doc))
    print(f"\n{len(doc['runs'])} runs; outputs in {args.out} (results.json, runs.csv, "
          "spectrum.csv, robustness.csv, landscape.csv, input_hessian.csv, interpolation.csv, "
          "PNGs)")
    return 0
