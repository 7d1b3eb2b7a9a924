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
import signal
import socket
import sys
import time
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
    run_id: str = ""      # the same on every rank and every restart of one launch

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


#: The variables torch.distributed's env:// rendezvous reads (what torchrun sets for a worker).
DIST_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT")

#: Exit codes of ``hessbatch train`` (docs/distributed.md has the table): 2 and 3 are final,
#: a restart cannot change them, so they are not retried.
EXIT_CONFIG, EXIT_DIVERGED, EXIT_FAILED = 2, 3, 1

_AGENT = {"store": None}  # the elastic agent's store (outlives restarts), when there is one


def elastic_worker() -> bool:
    """Whether torchrun / the elastic agent started this process (it sets
    ``TORCHELASTIC_RUN_ID``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def launched() -> bool:
    """Whether this process is a worker: started by torchrun / the elastic agent, or given a
    complete env:// rendezvous (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) by other means."""
    return elastic_worker() or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ
        and "MASTER_ADDR" in os.environ)


def found_variables() -> str:
    """``NAME=value`` of the distributed variables in the environment ('' when none)."""
    return " ".join(f"{k}={os.environ[k]}" for k in DIST_VARIABLES if k in os.environ)


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
    """``--nproc N > 1`` outside torchrun: this process becomes the launcher (distributed
    variables left in the environment are ignored, with a note: the launcher gives its
    workers their own). Without ``--nproc``, an incomplete set of them is reported and
    ignored (one process)."""
    check_arguments(args)
    found = found_variables()
    if args.nproc > 1 and not elastic_worker():
        if found:
            print(f"hessbatch train: note: ignoring {found} found in the environment: --nproc "
                  f"{args.nproc} starts its own workers and gives them their own", file=sys.stderr)
        return True
    if found and not launched():
        print(f"hessbatch train: note: ignoring {found} found in the environment (not a "
              "complete torch.distributed rendezvous: RANK, WORLD_SIZE and MASTER_ADDR): "
              "training in one process", file=sys.stderr)
    return False


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
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        results = elastic_launch(config, entry)(args)
    except ChildFailedError as exc:
        codes = {int(f.exitcode) for f in exc.failures.values()}
        final = sorted(codes & {EXIT_CONFIG, EXIT_DIVERGED})
        if final:  # a configuration error or a divergence: reported by the worker, not retried
            return final[-1]
        print(f"hessbatch train: a worker failed after {args.max_restarts} restart(s):\n{exc}",
              file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, SignalException) as exc:
        sig = getattr(exc, "sigval", signal.SIGINT)
        print(f"hessbatch train: stopped by {signal.Signals(sig).name}; the workers were ended "
              "(the last checkpoint in --out is kept)", file=sys.stderr)
        return 128 + int(sig)
    codes = [int(rc or 0) for rc in results.values()]
    return max(codes) if codes else 0


def worker_exit(run: Any, args: argparse.Namespace) -> int:
    """``run(args)`` in a worker: an error found before training (on every rank) is reported
    once and not retried (exit 2); later errors propagate (the agent restarts the workers)."""
    from hessbatch import SchedulerError

    from . import _distributed

    try:
        code = int(run(args) or 0)
    except (ValueError, TypeError, OSError, SchedulerError) as exc:
        if _distributed.training_started():
            raise
        # Found before training (every rank finds it): report once, do not restart. A
        # rendezvous error is this rank's own: every rank reports it.
        if int(os.environ.get("RANK", "0")) == 0 or isinstance(exc, RendezvousError):
            print(f"hessbatch train: error: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if code in (EXIT_CONFIG, EXIT_DIVERGED):
        mark_final(code)
    return code


_FINAL_KEY = "hessbatch/final_exit"


def mark_final(code: int) -> None:
    """Record in the elastic agent's store (it outlives restarts) that this run ended with a
    code no restart can change: the workers of a restart read it and exit at once."""
    store = _AGENT["store"]
    if store is not None:
        try:
            store.set(_FINAL_KEY, str(code))
        except Exception:  # noqa: BLE001 - the agent may be gone; the exit code still says it
            pass


def _final_code(store: Any) -> int | None:
    try:
        if store.check([_FINAL_KEY]):
            return int(store.get(_FINAL_KEY).decode())
    except Exception:  # noqa: BLE001 - no such key or no store: not final
        return None
    return None


def _cpu_count() -> int:
    """The cores this process may use (the affinity mask: container CPU limits by cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _wait_for_rendezvous(addr: str, port: int, timeout: float) -> None:
    """A rank other than 0 connects to rank 0's store: wait (at most ``timeout`` seconds) until
    ``addr:port`` accepts connections, so that an absent rendezvous is one clear error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((addr, port), timeout=min(2.0, timeout)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise RendezvousError(
                    f"no rendezvous at MASTER_ADDR:MASTER_PORT = {addr}:{port} within "
                    f"--dist-timeout {timeout:g} s ({exc.strerror or exc}); the environment "
                    f"has {found_variables()}. Start rank 0 there, or unset these variables "
                    "to train in one process") from None
            time.sleep(0.2)


class RendezvousError(ValueError):
    """The process group could not be formed from the environment (found before training)."""


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
        torch.set_num_threads(max(1, _cpu_count() // max(local_world, 1)))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    run_id = None
    if not torch.distributed.is_initialized():
        timeout = timedelta(seconds=args.dist_timeout)
        kw: dict = {}
        if not elastic_worker():
            # RANK, WORLD_SIZE and MASTER_ADDR without torchrun: a hand-made launch, or
            # variables left over in a shell. Say what was found; never wait unannounced.
            if rank == 0:
                print(f"hessbatch train: joining a process group of {world} ranks from the "
                      f"environment ({found_variables()}); waiting at most --dist-timeout "
                      f"{args.dist_timeout:g} s for the other ranks (unset these variables to "
                      "train in one process)", file=sys.stderr)
            if "MASTER_PORT" not in os.environ:
                raise RendezvousError(
                    f"the environment has {found_variables()} but no MASTER_PORT: set it (the "
                    "port of rank 0's rendezvous), or unset these variables to train in one "
                    "process")
            if rank != 0:
                _wait_for_rendezvous(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                     args.dist_timeout)
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):
            # The agent's store outlives a restart, and the keys of the failed attempt (rank
            # 0's old gloo address) are still in it: a restarted rank could read them and fail
            # with "Connection refused". One key prefix per attempt keeps the attempts apart.
            base = torch.distributed.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=world,
                is_master=False, timeout=timeout)
            _AGENT["store"] = base
            final = _final_code(base)
            if final is not None:  # an earlier attempt ended with a code a retry cannot change
                if rank == 0:
                    print(f"hessbatch train: not retried: an earlier attempt of this run exited "
                          f"{final} ({'configuration error' if final == EXIT_CONFIG else 'diverged'})",
                          file=sys.stderr)
                raise SystemExit(final)
            # one run id for every rank and every attempt of this launch (the store's first)
            mine = uuid.uuid4().hex[:16]
            run_id = base.compare_set("hessbatch/run_id", "", mine).decode() or mine
            kw = dict(store=torch.distributed.PrefixStore(f"hessbatch/attempt_{restart}", base),
                      rank=rank, world_size=world)
        try:
            torch.distributed.init_process_group(
                backend, timeout=timeout, device_id=device if backend == "nccl" else None, **kw)
        except torch.distributed.DistError as exc:
            raise RendezvousError(
                f"the process group of {world} ranks did not form within --dist-timeout "
                f"{args.dist_timeout:g} s ({str(exc).splitlines()[0]}); the environment has "
                f"{found_variables()}. Start every rank, or unset these variables to train in "
                "one process") from None
        atexit.register(_destroy)
    if run_id is None:  # rank 0's, sent to every rank
        box = [uuid.uuid4().hex[:16] if rank == 0 else None]
        torch.distributed.broadcast_object_list(box, src=0)
        run_id = box[0]
    return WorkerContext(rank, world, local_rank, device, backend, restart, run_id)


def _destroy() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def dtype_of(name: str | None) -> torch.dtype:
    """``"float32"`` / ``"float64"`` (None: float32) as a torch dtype."""
    name = name or "float32"
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {name!r}")
    return getattr(torch, name)
