"""The data-parallel side of ``hessbatch train``: ``--nproc``, ``--dtype`` and worker set-up.

Two ways to run N workers, one code path:

* ``hessbatch train --nproc N ...`` starts N local workers through torch.distributed's elastic
  launcher (:func:`torch.distributed.launcher.api.elastic_launch`, the engine of torchrun) with
  a c10d rendezvous on a free local port and ``--max-restarts`` restarts;
* ``torchrun --nproc_per_node N [--nnodes ... --rdzv-endpoint ...] --no-python hessbatch train
  ...`` (or ``python -m torch.distributed.run ... -m hessbatch.cli train ...``): each worker
  finds torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...)
  and joins the process group itself.

A worker uses gloo on the CPU and nccl on CUDA (``--backend`` overrides), device
``cuda:LOCAL_RANK`` for ``--device cuda``. Only rank 0 prints tables and writes outputs. After
a restart (``TORCHELASTIC_RESTART_COUNT > 0``) a worker resumes from ``--out/checkpoint.pt``
when it exists.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

_DTYPES = ("float32", "float64")
_BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class WorkerContext:
    """What a worker of a data-parallel run knows about itself."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    restart: int          # torchelastic's restart count (0: first attempt)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dtype`` (in the model-and-data group) and the data-parallel options."""
    groups = {g.title: g for g in parser._action_groups}
    g = groups.get("model and data", parser)
    g.add_argument("--dtype", choices=_DTYPES, default=None,
                   help="floating-point type of the model and the data; float64 makes runs on "
                        "different numbers of processes comparable to 1e-10 (default float32; "
                        "with --resume: the checkpoint's)")
    g = parser.add_argument_group(
        "data parallelism (torch.distributed; docs/distributed.md)")
    g.add_argument("--nproc", type=int, default=1,
                   help="start this many local worker processes through torch.distributed's "
                        "elastic launcher; each takes 1/N of every logical batch, so B must be "
                        "a multiple of N x micro-batch. Under torchrun leave it out "
                        "(default %(default)s: one process, no torch.distributed)")
    g.add_argument("--max-restarts", type=int, default=0,
                   help="with --nproc: restart the workers this many times after a failure; "
                        "they resume from --out/checkpoint.pt (default %(default)s)")
    g.add_argument("--backend", choices=_BACKENDS, default=None,
                   help="torch.distributed backend (default: nccl for --device cuda, gloo "
                        "for cpu)")
    g.add_argument("--sync-batchnorm", action="store_true",
                   help="BatchNorm statistics over all ranks (SyncBatchNorm, CUDA only); "
                        "default: per rank")
    g.add_argument("--dist-timeout", type=float, default=600.0,
                   help="seconds a collective may wait for the other ranks before the run "
                        "fails (default %(default)s)")


def launched() -> bool:
    """Whether this process is a worker started by torchrun / the elastic agent."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ
        and "MASTER_ADDR" in os.environ)


def check_arguments(args: argparse.Namespace) -> None:
    """The data-parallel options on their own (before anything is started)."""
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.max_restarts < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {args.max_restarts}")
    if args.max_restarts and args.nproc == 1 and not launched():
        raise ValueError("--max-restarts needs --nproc N (the elastic launcher restarts "
                         "workers); got --nproc 1")
    if not (args.dist_timeout > 0):
        raise ValueError(f"--dist-timeout must be > 0 seconds, got {args.dist_timeout}")
    if args.sync_batchnorm and args.nproc == 1 and not launched():
        raise ValueError("--sync-batchnorm needs several processes (--nproc N or torchrun)")
    if args.nproc > 1 and not launched() and str(args.device).startswith("cuda"):
        count = torch.cuda.device_count()
        if args.device == "cuda" and args.nproc > count:
            raise ValueError(f"--nproc {args.nproc} --device cuda: one GPU per worker, and "
                             f"this machine has {count}; use --nproc {max(count, 1)} or fewer")


def wants_launch(args: argparse.Namespace) -> bool:
    """``--nproc N > 1`` outside torchrun: this process becomes the launcher."""
    check_arguments(args)
    return args.nproc > 1 and not launched()


def launch(args: argparse.Namespace, entry: Any) -> int:
    """Run ``entry(args)`` (``hessbatch train``'s worker, a module-level function) on
    ``args.nproc`` local workers under the elastic agent. This module never imports the
    command's own module: the command hands its entry point in.

    Returns:
        0 when every worker finished, 2 when the workers refused the configuration (the
        message is printed once), 1 when a worker failed after the allowed restarts.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if args.max_restarts and args.out is None:
        print("hessbatch train: warning: --max-restarts without --out: a restarted run has no "
              "checkpoint to resume from and starts again from the beginning", file=sys.stderr)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=args.nproc,
        run_id=f"hessbatch-{uuid.uuid4().hex[:12]}", rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # the agent picks a free port (torchrun --standalone)
        max_restarts=args.max_restarts, monitor_interval=0.1, start_method="spawn")
    try:
        results = elastic_launch(config, entry)(args)
    except ChildFailedError as exc:
        print(f"hessbatch train: a worker failed after {args.max_restarts} restart(s):\n{exc}",
              file=sys.stderr)
        return 1
    codes = [int(rc or 0) for rc in results.values()]
    return max(codes) if codes else 0


def worker_exit(run: Any, args: argparse.Namespace) -> int:
    """``run(args)`` in a worker: an error found before training (on every rank) is reported
    once and not retried (exit 2); later errors propagate (the agent restarts the workers)."""
    from hessbatch import SchedulerError

    from . import _distributed

    try:
        return int(run(args) or 0)
    except (ValueError, TypeError, OSError, SchedulerError) as exc:
        if not _distributed.training_started():
            # Found before training (every rank finds it): report once, do not restart.
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"hessbatch train: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup(args: argparse.Namespace, device: torch.device) -> WorkerContext | None:
    """Join the process group when this process is a torchrun/elastic worker; else None.

    Sets the worker's device (``cuda:LOCAL_RANK`` for a plain ``--device cuda``), its CPU
    threads (``--threads``, default ``cores // local workers``) and, after a restart, points
    ``--resume`` at ``--out/checkpoint.pt`` when it exists.
    """
    if not launched():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if args.nproc not in (1, local_world):
        raise ValueError(f"--nproc {args.nproc} inside a launched worker group of "
                         f"{local_world} local workers: under torchrun leave --nproc out")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = args.backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("--backend nccl needs --device cuda (nccl moves CUDA tensors only); "
                         "use gloo on the CPU")
    if backend == "nccl" and local_world > 1 and args.device != "cuda":
        raise ValueError(f"--device {args.device} puts all {local_world} local workers on one "
                         "GPU, which nccl refuses; use --device cuda (worker LOCAL_RANK gets "
                         "cuda:LOCAL_RANK)")
    if not args.threads:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart and args.out is not None and (args.out / "checkpoint.pt").is_file():
        args.resume = args.out / "checkpoint.pt"
        print(f"[rank {rank}] restart {restart}: resuming from {args.resume}", file=sys.stderr)
    if not torch.distributed.is_initialized():
        timeout = timedelta(seconds=args.dist_timeout)
        kw: dict = {}
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):
            # The agent's store outlives a restart, and the keys of the failed attempt (rank
            # 0's old gloo address) are still in it: a restarted rank could read them and fail
            # with "Connection refused". One key prefix per attempt keeps the attempts apart.
            base = torch.distributed.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=world,
                is_master=False, timeout=timeout)
            kw = dict(store=torch.distributed.PrefixStore(f"hessbatch/attempt_{restart}", base),
                      rank=rank, world_size=world)
        torch.distributed.init_process_group(
            backend, timeout=timeout, device_id=device if backend == "nccl" else None, **kw)
        atexit.register(_destroy)
    return WorkerContext(rank, world, local_rank, device, backend, restart)


def _destroy() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def dtype_of(name: str | None) -> torch.dtype:
    """``"float32"`` / ``"float64"`` (None: float32) as a torch dtype."""
    name = name or "float32"
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {name!r}")
    return getattr(torch, name)
