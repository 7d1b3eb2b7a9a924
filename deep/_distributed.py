"""Data-parallel ABS/ABSA over torch.distributed: one global schedule on N processes.

Every rank runs the same core (:class:`hessbatch.Scheduler`) and reports the same events, so
``B``, the lr, the adversarial fraction and the eigenvalue timing are decided once, globally.
What each rank does with a decision (``W`` ranks, rank ``r``; :class:`DataParallel` given to
the one executor, :class:`hessbatch.deep.LoopAdapter`)::

    perm = randperm(N)                   # the executor's generator: the same on every rank
    micro-batch k = perm[k m:(k+1) m]    # cut exactly as in one process
    rank r runs micro-batches k = r, r + W, ...; where the epoch's last round is short, a rank
        without one runs a padding micro-batch (1 sample, eval mode, weight 0)
    (loss_fn(model(x_k), y_k) * W m_k / n).backward()   # no_sync except on the last one
    DDP averages: g = (1/W) sum_r sum_k (W m_k / n) grad_k = gradient of the mean over all n

so the update is the single-process update on the same ``n`` samples, up to floating-point
summation order. The gradients go through :class:`torch.nn.parallel.DistributedDataParallel`
with a communication hook (:func:`_mean_hook`) that is DDP's own averaging all-reduce, left
asynchronous (it overlaps the backward pass; ``benchmarks/bench_overlap.py`` measures it) and
timed by a completion callback.

Curvature: :func:`torch.autograd.grad` does not go through DDP's hooks, so the Hessian of the
mean loss over a Hessian batch of ``N_H`` samples sharded ``N_H = sum_r N_r`` (contiguous
shards, :func:`shard_bounds`) is assembled by hand: ``H v = sum_r (N_r / N_H) H_r v``, one
all-reduce per product (:class:`DistributedHessianOperator`). Every rank then holds the same
Lanczos / power-iteration state and the same eigenvalue (rank 0's value is broadcast at the
end), equal to the single-process eigenvalue on the same Hessian batch up to rounding.

BatchNorm: each micro-batch is normalised over its own samples, as in one process, and the
running statistics are replayed on every rank in micro-batch order after each update
(:class:`_BatchNormStats`), so eval-mode forwards (eigenvalue, test metrics, checkpoints) see
the single-process statistics. ``sync_batchnorm=True`` converts BatchNorm layers to
:class:`torch.nn.SyncBatchNorm` (CUDA only in PyTorch; refused on the CPU before training); a
padding micro-batch then joins its round's SyncBatchNorm collectives with zero samples, so every
rank runs the same collectives. Dropout masks are seeded per micro-batch
(:func:`hessbatch.deep._loop.micro_batch_seed`), the same on any rank as in one process.

Constraints, checked before training with an error that names the fix: ``B`` must be a multiple
of ``world_size * micro_batch_size`` for every ``B`` the schedule can reach (the work is
balanced), and the Hessian batch must give every rank a sample. All ranks must be started with
the same options: a hash of the configuration (schedule, trainer options, model shapes, data
length and a digest of the data) is compared across ranks.

docs/distributed.md is the user guide (launching, what is global and what is per rank, running
on a cluster, exit codes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from hessbatch import SchedulerConfig

from ._eigen import EigenResult, _check_options, lanczos, power_iteration
from ._hvp import Batch, HessianOperator, LossFn, flatten, unflatten
from ._loop import EXTEND_HVP

__all__ = ["DataParallel", "DistributedConfigError", "DistributedHessianOperator", "DistributedTrainer",
           "check_batch_layout", "distributed_top_eigenvalue", "reachable_batch_sizes",
           "shard_bounds"]

#: Test hook: ``"RANK:UPDATE:MARKER"`` makes rank RANK kill itself (SIGKILL) before its
#: UPDATE-th update (1-based, counted from the start of the process) unless the file MARKER
#: exists, which it creates first; the restart test uses it. Unset: nothing happens.
FAULT_ENV = "HESSBATCH_TEST_KILL"


class DistributedConfigError(ValueError):
    """The ranks cannot run this configuration together (found before training starts)."""


_STARTED = {"training": False}


def training_started() -> bool:
    """Whether a :class:`DistributedTrainer` of this process has passed its start-up checks
    (before: an error is the same on every rank; after: a rank may fail alone)."""
    return _STARTED["training"]


# ------------------------------------------------------------------------------------------
# small helpers


def _require_group(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: call "
                           "torch.distributed.init_process_group first (torchrun and "
                           "`hessbatch train --nproc N` do it for you)")
    return dist.get_rank(group), dist.get_world_size(group)


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous part of ``n`` items split ``world_size``
    ways: the first ``n % world_size`` ranks get ``ceil(n / W)`` items, the others ``floor``.

    Example:
        >>> [shard_bounds(10, 3, r) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    for name, v, low in (("n", n, 0), ("world_size", world_size, 1), ("rank", rank, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size = {world_size}, got {rank}")
    q, extra = divmod(n, world_size)
    start = rank * q + min(rank, extra)
    return start, start + q + (1 if rank < extra else 0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_all_reduce(t: torch.Tensor, group: Any, op: Any = None) -> float:
    """All-reduce (sum by default) ``t`` in place; returns the seconds it took (device
    synchronised)."""
    _sync(t.device)
    t0 = time.perf_counter()
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op, group=group)
    _sync(t.device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------
# schedule constraints


def reachable_batch_sizes(config: SchedulerConfig) -> list[int]:
    """Every logical batch size the schedule can use, from the core's own growth rule.

    bl: ``B0``; fb: ``B_max``; abs/absa: ``B0`` and its growths by ``beta`` up to ``B_max``; gg:
    ``B0`` and one growth by ``1/rho`` per decay epoch. The growth is the core's
    (``round_up(beta * B)`` to the micro-batch, capped at ``B_max``), not a copy of it.
    """
    from hessbatch._scheduler import _grow, init  # the core's rule, so no copy can drift

    if not isinstance(config, SchedulerConfig):
        raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
    if config.method == "fb":
        return [config.max_batch_size]
    if config.method == "bl":
        return [config.batch_size]
    factor = config.beta if config.method in ("abs", "absa") else 1.0 / config.lr_decay_factor
    growths = math.inf if config.method in ("abs", "absa") else len(config.lr_decay_epochs)
    st = init(config)
    sizes = [st.batch_size]
    while len(sizes) - 1 < growths and sizes[-1] < config.max_batch_size:
        st = dataclasses.replace(st, batch_size=sizes[-1])
        new_b = _grow(config, st, factor)[0]
        if new_b <= sizes[-1]:
            break
        sizes.append(new_b)
    return sizes


def check_batch_layout(config: SchedulerConfig, world_size: int) -> None:
    """Raise :class:`DistributedConfigError` unless every reachable ``B`` is a multiple of
    ``world_size * micro_batch_size`` (each rank's shard is then whole micro-batches).

    Raises:
        DistributedConfigError: naming the batch sizes that do not split, and a micro-batch
            size that would.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    micro = config.micro_batch_size
    unit = world_size * micro
    sizes = reachable_batch_sizes(config)
    bad = [b for b in sizes if b % unit]
    if not bad:
        return
    hint = ""
    g = math.gcd(*sizes)
    if g % world_size == 0:
        m = g // world_size
        try:
            alt = dataclasses.replace(config, micro_batch_size=m)
            if all(b % (world_size * m) == 0 for b in reachable_batch_sizes(alt)):
                hint = f"pass --micro-batch {m} (micro_batch_size={m}) or a divisor of it, or "
        except ValueError:
            pass
    raise DistributedConfigError(
        f"with {world_size} processes every logical batch must be a multiple of world_size x "
        f"micro_batch_size = {world_size} x {micro} = {unit}, so that each rank gets whole "
        f"micro-batches; this {config.method} schedule (B0={config.batch_size}, "
        f"B_max={config.max_batch_size}) reaches B = {sizes}, of which {bad} are not. Fix: "
        f"{hint}choose batch sizes that are multiples of {unit}")


# ------------------------------------------------------------------------------------------
# configuration agreement


def _data_digest(data: Dataset | None) -> str:
    if data is None:
        return "none"
    n = len(data)  # type: ignore[arg-type]
    if isinstance(data, TensorDataset):
        h = hashlib.sha256()
        step = max(1, n // 1024)  # a strided sample: cheap on CIFAR, still catches a reseed
        for t in data.tensors:
            part = t[::step].detach().to("cpu").contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(part.view(torch.uint8).numpy().tobytes() if part.numel() else b"")
        return h.hexdigest()
    return f"{type(data).__name__}:{n}"


def config_digest(payload: Any) -> str:
    """sha256 of a JSON-able payload (keys sorted; unknown objects by ``repr``)."""
    text = json.dumps(payload, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_config(payload: Any, *, group: Any = None,
                      device: torch.device | None = None) -> str:
    """Compare the hash of ``payload`` across the ranks of ``group``; the same on all.

    Returns:
        The hex digest.

    Raises:
        DistributedConfigError: on every rank when any two ranks differ, naming the ranks.
    """
    rank, world = _require_group(group)
    digest = config_digest(payload)
    value = int.from_bytes(bytes.fromhex(digest)[:8], "little", signed=True)
    mine = torch.tensor([value], dtype=torch.int64, device=device or "cpu")
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    values = [int(t.item()) for t in every]
    if len(set(values)) > 1:
        groups: dict[int, list[int]] = {}
        for r, v in enumerate(values):
            groups.setdefault(v, []).append(r)
        seen = "; ".join(f"ranks {rs} have config hash {v & (2**64 - 1):016x}"
                         for v, rs in groups.items())
        raise DistributedConfigError(
            f"the {world} ranks were started with different options ({seen}): every rank "
            "must get the same command line (seed, data, model, dtype, schedule and solver "
            "options)")
    return digest


def state_digest(obj: Any) -> str:
    """sha256 of a state: nested dicts (keys in sorted order), lists and tuples, tensors by
    dtype, shape and bytes (on the CPU), anything else by ``repr``."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


#: what check_state compares, in the order its message names them
_STATE_PARTS = ("the model's weights and buffers", "the optimizer's state",
                "the schedule (scheduler state)", "the sampler's position and generators")


def check_same_state(parts: Sequence[Any], *, group: Any = None,
                     device: torch.device | None = None) -> None:
    """Every rank of ``group`` holds the same ``parts`` (model, optimizer, scheduler and
    sampler states, :data:`_STATE_PARTS`); gathered as digests, so it costs one all-gather.

    Raises:
        DistributedConfigError: on every rank when any two ranks differ, naming the parts and
            the ranks.
    """
    _, world = _require_group(group)
    values = [int.from_bytes(bytes.fromhex(state_digest(p))[:8], "little", signed=True)
              for p in parts]
    mine = torch.tensor(values, dtype=torch.int64, device=device or "cpu")
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    table = [t.tolist() for t in every]
    bad = []
    for j, name in enumerate(_STATE_PARTS[:len(parts)]):
        groups: dict[int, list[int]] = {}
        for r, row in enumerate(table):
            groups.setdefault(row[j], []).append(r)
        if len(groups) > 1:
            bad.append(f"{name}: " + " / ".join(f"ranks {rs}" for rs in groups.values()))
    if bad:
        raise DistributedConfigError(
            f"the {world} ranks do not hold the same training state before their first update "
            f"({'; '.join(bad)} differ): every rank must load the same checkpoint (model, "
            "optimizer and trainer or adapter state), or none; e.g. read it on rank 0 and send "
            "it with torch.distributed.broadcast_object_list")


# ------------------------------------------------------------------------------------------
# curvature


class DistributedHessianOperator(HessianOperator):
    """The Hessian of the mean loss over a Hessian batch sharded across ranks.

    Rank ``r`` holds ``N_r`` samples as ``batches`` (its shard, split as convenient). With
    ``H_r`` the Hessian of its mean loss and ``N = sum_r N_r``::

        H v = sum_r (N_r / N) H_r v        (one all-reduce of a parameter-sized vector)

    which is the Hessian of the mean loss over all ``N`` samples, the one a single process
    computes on the whole batch. The gradient is reduced the same way. Every rank must build
    the operator and call :meth:`matvec` the same number of times (collectives).

    Args:
        model, loss_fn, batches, params, backend, reuse_graph: as :class:`HessianOperator`;
            ``batches`` are this rank's (at least one sample per rank).
        group: the process group (default: the world).

    Raises:
        ValueError: on every rank, when the loss is not finite on any rank (so all ranks skip
            the eigenvalue together), or this rank's arguments are bad.
        RuntimeError: torch.distributed is not initialised.

    Attributes:
        local_samples, n_samples: this rank's ``N_r`` and the global ``N``.
        comm_time: seconds spent in this operator's all-reduces.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *,
                 params: Sequence[torch.Tensor] | None = None, backend: str = "double_backprop",
                 reuse_graph: bool = True, group: Any = None) -> None:
        self.group = group
        self.rank, self.world_size = _require_group(group)
        self.comm_time = 0.0
        failure: Exception | None = None
        try:
            super().__init__(model, loss_fn, batches, params=params, backend=backend,
                             reuse_graph=reuse_graph)
        except ValueError as exc:
            failure = exc
        # One collective before any product: every rank learns whether all could build their
        # part, so a rank with a non-finite loss cannot leave the others waiting in matvec.
        dev = self.device if failure is None else _first_device(model)
        local_n = 0 if failure is not None else self.n_samples
        local_loss = 0.0 if failure is not None else self.loss * local_n
        info = torch.tensor([float(local_n), float(failure is not None), local_loss],
                            dtype=torch.float64, device=dev)
        self.comm_time += _timed_all_reduce(info, group)
        failed, total, loss_sum = int(info[1].item()), int(info[0].item()), float(info[2])
        if failed:
            if failure is not None:
                raise failure
            raise ValueError(f"the Hessian batch's loss is not finite (or bad) on {failed} of "
                             f"{self.world_size} ranks; this rank's part was fine")
        self.local_samples = local_n
        self.n_samples = total
        self.loss = loss_sum / total
        self._share = local_n / total

    def _reduce(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = flatten(parts) * self._share
        self.comm_time += _timed_all_reduce(flat, self.group)
        return [t.detach() for t in unflatten(flat, self.params)]

    def gradient(self) -> list[torch.Tensor]:
        """The gradient of the global mean loss (all-reduced), one tensor per parameter."""
        return self._reduce(super().gradient())

    def matvec(self, vector: Sequence[torch.Tensor], *, check: bool = True
               ) -> list[torch.Tensor]:
        """``H v`` of the global Hessian: the local product, weighted, all-reduced
        (``check`` as in :meth:`HessianOperator.matvec`)."""
        return self._reduce(super().matvec(vector, check=check))

    __call__ = matvec

    def dense(self) -> torch.Tensor:
        """The explicit global Hessian (collective: every rank must call it)."""
        return super().dense()


def _first_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def distributed_top_eigenvalue(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *,
                               params: Sequence[torch.Tensor] | None = None,
                               method: str = "lanczos", max_hvp: int = 10, tol: float = 1e-2,
                               seed: int = 0, backend: str = "double_backprop",
                               reuse_graph: bool = True, group: Any = None,
                               stats: dict | None = None, threshold: float | None = None,
                               extend_hvp: int = 0) -> EigenResult:
    """:func:`hessbatch.deep.top_eigenvalue` of the Hessian over every rank's ``batches``.

    The solver runs on every rank on the all-reduced operator
    (:class:`DistributedHessianOperator`), from the same start vector (same ``seed``); rank 0's
    value is broadcast at the end so that every rank reports exactly the same number to the
    core. Collective: every rank of ``group`` must call it with the same options.

    Args:
        batches: this rank's part of the Hessian batch.
        stats: if given, ``stats["comm_time"]`` is increased by the seconds spent in
            all-reduces.
        threshold, extend_hvp: the check's decision threshold (the solver stops once "no drop"
            is certain) and the products added for a deciding check, as for
            :func:`hessbatch.deep.top_eigenvalue`; whether the value is a lower bound is
            broadcast with it.
        others: as :func:`hessbatch.deep.top_eigenvalue`.

    Returns:
        :class:`EigenResult` (``value`` identical on every rank).

    Raises:
        TypeError, ValueError: bad options; a non-finite loss on any rank (on every rank).
    """
    _check_options(method, max_hvp, tol, seed)
    op = DistributedHessianOperator(model, loss_fn, batches, params=params, backend=backend,
                                    reuse_graph=reuse_graph, group=group)
    try:
        solver = lanczos if method == "lanczos" else power_iteration
        result = solver(op, max_hvp=max_hvp, tol=float(tol), seed=seed, threshold=threshold,
                        extend_hvp=extend_hvp)
        value = torch.tensor([result.value, float(result.is_lower_bound)],
                             dtype=torch.float64, device=op.device)
        _sync(op.device)
        t0 = time.perf_counter()
        dist.broadcast(value, src=dist.get_global_rank(group, 0) if group is not None else 0,
                       group=group)
        _sync(op.device)
        op.comm_time += time.perf_counter() - t0
        return dataclasses.replace(result, value=float(value[0].item()),
                                   is_lower_bound=bool(value[1].item()))
    finally:
        op.release()
        if stats is not None:
            stats["comm_time"] = stats.get("comm_time", 0.0) + op.comm_time


# ------------------------------------------------------------------------------------------
# the trainer


class _BatchNormStats:
    """Running statistics of BatchNorm equal on every rank and to one process.

    In one process a BatchNorm layer updates its running mean and variance once per training
    forward, micro-batch after micro-batch. With round-robin micro-batches each rank sees only
    its own, so its running statistics would drift from the single-process ones (and the
    eigenvalue and the test metrics, computed in eval mode, with them). This records each
    training forward's batch mean and unbiased variance per layer (a forward pre-hook), and at
    the end of each update gathers every rank's records, puts the running statistics back to
    their value before the update and applies the records in the epoch's micro-batch order,
    with the layer's own update rule (momentum, or the cumulative average for
    ``momentum=None``). SyncBatchNorm layers are left alone (their statistics are global
    already).
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       and not isinstance(m, nn.SyncBatchNorm) and m.track_running_stats]
        self.records: list[tuple[int, list[torch.Tensor]]] = []
        self._current: list[torch.Tensor] | None = None
        self._snapshot: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for layer in self.layers:
            layer.register_forward_pre_hook(self._hook)

    def _hook(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if not layer.training or self._current is None:
            return
        x = inputs[0].detach()
        dims = [0] + list(range(2, x.dim()))
        self._current.append(x.mean(dims))
        self._current.append(x.var(dims, unbiased=True))

    def open(self) -> None:
        """Before the update's first forward."""
        self.records = []
        self._snapshot = [(m.running_mean.clone(), m.running_var.clone(),
                           m.num_batches_tracked.clone()) for m in self.layers]

    def begin(self, k: int) -> None:
        """Micro-batch ``k`` (0-based in the epoch) is about to be run."""
        self._current = []
        self.records.append((k, self._current))

    def close(self, group: Any, world: int) -> None:
        """After the update's last backward: the statistics of all ranks, in order."""
        self._current = None
        if not self.layers:
            return
        width = sum(2 * m.num_features for m in self.layers)
        dev = self.layers[0].running_mean.device
        rows = []
        for k, parts in self.records:
            if len(parts) != 2 * len(self.layers):
                continue  # padding (eval mode) or a layer skipped: nothing to apply
            rows.append(torch.cat([torch.tensor([float(k)], dtype=torch.float64, device=dev)]
                                  + [p.to(torch.float64) for p in parts]))
        count = torch.tensor([len(rows)], dtype=torch.int64, device=dev)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        most = max(int(c.item()) for c in counts)
        mine = torch.full((most, width + 1), -1.0, dtype=torch.float64, device=dev)
        for i, row in enumerate(rows):
            mine[i] = row
        every = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(every, mine, group=group)
        table = torch.cat(every)
        table = table[table[:, 0] >= 0]
        table = table[torch.argsort(table[:, 0])]
        for m, (mean, var, tracked) in zip(self.layers, self._snapshot):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
        for row in table:
            col = 1
            for m in self.layers:
                c = m.num_features
                bmean = row[col:col + c].to(m.running_mean.dtype)
                bvar = row[col + c:col + 2 * c].to(m.running_var.dtype)
                col += 2 * c
                m.num_batches_tracked.add_(1)
                f = m.momentum if m.momentum is not None \
                    else 1.0 / float(m.num_batches_tracked.item())
                m.running_mean.mul_(1 - f).add_(bmean * f)
                m.running_var.mul_(1 - f).add_(bvar * f)


def _mean_hook(parallel, bucket):  # no annotations: DDP checks them against its own types
    """DDP communication hook: DDP's own averaging all-reduce (divide, then sum), left
    asynchronous so that it overlaps the rest of the backward pass; the time each bucket is in
    flight (launch to completion) is added to ``parallel.grad_comm_time`` by a callback,
    without waiting for it."""
    buf = bucket.buffer()
    buf.div_(parallel.world_size)
    t0 = time.perf_counter()
    fut = dist.all_reduce(buf, group=parallel.group, async_op=True).get_future()

    def done(f):
        parallel.grad_comm_time += time.perf_counter() - t0
        return f.value()[0]
    return fut.then(done)


class DataParallel:
    """Data parallelism as a property of the executor: what a door needs on ``W`` ranks.

    Pass it as ``parallel=`` to :class:`hessbatch.deep.Trainer` or
    :class:`hessbatch.deep.LoopAdapter` (the Lightning callback makes its own under a DDP
    strategy). The process group must be initialised (torchrun or ``hessbatch train --nproc``
    do it). What it adds to the executor (docs/distributed.md):

    * placement: rank ``r`` receives micro-batches ``r, r + W, ...`` of each epoch (one padding
      micro-batch of weight 0 where the last round is short), so each micro-batch is the one
      a single process would run, with the same samples, dropout seed and BatchNorm batch;
    * gradients: the loss weights are ``W m / n`` and DDP averages, so the reduced gradient is
      the mean over the logical batch of ``n`` global samples (DDP's own asynchronous bucket
      all-reduce, which overlaps the backward pass);
    * BatchNorm running statistics: replayed in micro-batch order on every rank after each
      update (:class:`_BatchNormStats`), so eval-mode forwards (eigenvalue, test metrics,
      checkpoints) see the single-process statistics;
    * curvature: the Hessian batch split in contiguous shards, HVPs all-reduced
      (:func:`distributed_top_eigenvalue`); every rank reports the same value;
    * agreement: the batch layout is checked, and a hash of every option is compared across
      ranks before the first update (:class:`DistributedConfigError` on every rank).

    Args:
        group: the process group (default: the world).
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm (statistics over the ranks'
            micro-batches of one round; needs a backend that supports it, nccl on CUDA).
        eig_params: parameters of a block Hessian for the default eigenvalue (None: all).
        config_extra: plain data added to the configuration hash (the command line passes its
            options).
        ddp_kwargs: passed to :class:`~torch.nn.parallel.DistributedDataParallel`.

    Raises:
        RuntimeError: torch.distributed is not initialised.
    """

    def __init__(self, group: Any = None, *, sync_batchnorm: bool = False,
                 eig_params: Sequence[torch.Tensor] | None = None, config_extra: Any = None,
                 ddp_kwargs: dict | None = None) -> None:
        self.group = group
        self.rank, self.world_size = _require_group(group)
        self.sync_batchnorm = bool(sync_batchnorm)
        self.eig_params = list(eig_params) if eig_params is not None else None
        self.config_extra = config_extra
        self.ddp_kwargs = dict(ddp_kwargs or {})
        self.config_hash: str | None = None
        self._bn: _BatchNormStats | None = None
        self._eig_stats: dict[str, float] = {}
        self._updates = 0
        self._padding = False  # the current micro-batch is a padding one (SyncBatchNorm joins)
        self.grad_comm_time = 0.0  # seconds the gradient all-reduces were in flight

    # -- set-up ------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """SyncBatchNorm layers when asked (the parameters stay the same objects).

        Raises:
            DistributedConfigError: SyncBatchNorm asked for a model with BatchNorm on a device
                that PyTorch's SyncBatchNorm refuses (the CPU: its kernels are CUDA's).
        """
        if self.sync_batchnorm:
            dev = _first_device(model)
            has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
            if has_bn and dev.type == "cpu":
                raise DistributedConfigError(
                    f"--sync-batchnorm (sync_batchnorm=True): PyTorch {torch.__version__} runs "
                    "SyncBatchNorm on CUDA devices only (it refuses CPU tensors, and its "
                    "statistics kernels have no CPU version); use --device cuda, or leave "
                    "--sync-batchnorm out (each micro-batch is then normalised on its own, as "
                    "in one process, and the running statistics are replayed on every rank)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=self.group)
            for m in model.modules():
                if isinstance(m, nn.SyncBatchNorm):
                    m.register_forward_hook(self._join_sync_batchnorm)
        return model

    def _join_sync_batchnorm(self, layer: nn.Module, inputs: tuple, output: torch.Tensor):
        """During a padding micro-batch (eval mode, where SyncBatchNorm makes no collective)
        join the round's SyncBatchNorm collectives as a training-mode forward on *zero*
        samples: the other ranks' statistics are unchanged (count 0), the running statistics
        move as theirs do, and the backward joins their all-reduces (the empty output is tied
        into the graph with weight 0). So every rank runs the same collectives per update."""
        if not self._padding:
            return None
        from torch.nn.modules import _functions

        factor = 0.0
        if layer.track_running_stats:  # as SyncBatchNorm.forward does in training mode
            layer.num_batches_tracked.add_(1)
            factor = layer.momentum if layer.momentum is not None \
                else 1.0 / float(layer.num_batches_tracked.item())
        group = layer.process_group or dist.group.WORLD
        empty = _functions.SyncBatchNorm.apply(
            inputs[0][:0], layer.weight, layer.bias, layer.running_mean, layer.running_var,
            layer.eps, factor, group, dist.get_world_size(group))
        return output + empty.sum() * 0

    def place(self, sampler: Any) -> None:
        sampler.set_rank(self.rank, self.world_size)

    def check(self, adapter: Any, extra: Any = None) -> None:
        """The checks every rank makes identically, before any training collective."""
        config = adapter.scheduler.config
        check_batch_layout(config, self.world_size)
        hess = min(adapter.hessian_batch_size, config.samples_per_epoch)
        if config.uses_eigenvalues and hess < self.world_size:
            raise DistributedConfigError(
                f"the Hessian batch ({hess} samples) must give each of the {self.world_size} "
                f"ranks at least one sample; use hessian_batch_size >= {self.world_size}")
        extra = dict(extra or {})
        for key, value in list(extra.items()):
            if isinstance(value, Dataset) or value is None and key == "test":
                extra[key] = _data_digest(value)
        payload = {
            "scheduler": config.to_dict(),
            "executor": {"hessian_batch_size": adapter.hessian_batch_size,
                         "eig_method": adapter.eig_method, "max_hvp": adapter.max_hvp,
                         "eig_tol": adapter.eig_tol, "input_range": adapter.input_range,
                         "adversary": adapter.adversary if isinstance(adapter.adversary, str)
                         else "callable", "seed": adapter.seed,
                         "seed_micro_batches": adapter.seed_micro_batches,
                         "sync_batchnorm": self.sync_batchnorm},
            "model": [(n, tuple(p.shape), str(p.dtype)) for n, p in
                      adapter.model.named_parameters()],
            "optimizer": [type(adapter.optimizer).__name__] + [
                {k: v for k, v in g.items() if k != "params"}
                for g in adapter.optimizer.param_groups],
            "train": _data_digest(adapter.train_data), "door": extra,
            "extra": self.config_extra,
        }
        self.config_hash = check_same_config(payload, group=self.group,
                                             device=adapter.device)
        self._bn = _BatchNormStats(adapter.model)
        _STARTED["training"] = True

    def make_eigenvalue_fn(self, adapter: Any, *, warm_start: bool = False) -> Any:
        """The collective eigenvalue on the global Hessian (cold starts, no self-test)."""
        if warm_start:
            raise ValueError("warm_start=True is not supported with data parallelism (the "
                             "eigenvalue is a collective over every rank); leave it False")

        def eigenvalue(model, loss_fn, batches, *, seed, threshold=None):
            return distributed_top_eigenvalue(
                model, loss_fn, batches, params=self.eig_params, method=adapter.eig_method,
                max_hvp=adapter.max_hvp, tol=adapter.eig_tol, seed=seed, group=self.group,
                stats=self._eig_stats, threshold=threshold, extend_hvp=EXTEND_HVP)
        return eigenvalue

    def wrap(self, model: nn.Module) -> nn.Module:
        """The DDP wrapper the Trainer runs its forward/backward through (DDP's own averaging
        all-reduce; buffers are not broadcast: BatchNorm statistics are replayed instead)."""
        kw: dict[str, Any] = dict(self.ddp_kwargs)
        if not {"broadcast_buffers", "forward_sync_buffers"} & set(kw):
            newer = "forward_sync_buffers" in inspect.signature(
                nn.parallel.DistributedDataParallel).parameters
            kw["forward_sync_buffers" if newer else "broadcast_buffers"] = False
        if _first_device(model).type == "cuda":
            kw.setdefault("device_ids", [_first_device(model)])
        ddp = nn.parallel.DistributedDataParallel(model, process_group=self.group, **kw)
        ddp.register_comm_hook(self, _mean_hook)
        return ddp

    def check_state(self, adapter: Any) -> None:
        """The same model, optimizer, scheduler and sampler state on every rank: checked at
        the first update after the executor starts or loads a state (a rank that resumed
        another checkpoint, or none, would otherwise train on silently)."""
        check_same_state([adapter.model.state_dict(), adapter.optimizer.state_dict(),
                          adapter.scheduler.state_dict(), adapter.sampler.state_dict()],
                         group=self.group, device=adapter.device)

    # -- each update ---------------------------------------------------------------------------
    def open_batch(self, adapter: Any) -> None:
        self._updates += 1
        _maybe_fault(self.rank, self._updates)
        if self._bn is not None:
            self._bn.open()

    def before_forward(self, k: int, padding: bool = False) -> None:
        """Micro-batch ``k`` is about to run (``padding``: a padding micro-batch, eval mode)."""
        self._padding = padding
        if self._bn is not None and not padding:
            self._bn.begin(k)

    def close_batch(self, adapter: Any) -> None:
        self._padding = False
        if self._bn is not None:
            self._bn.close(self.group, self.world_size)

    @staticmethod
    def accumulate(ddp: nn.Module, last: bool) -> Any:
        """DDP's ``no_sync`` except on this rank's last micro-batch of the update."""
        if last or not isinstance(ddp, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return ddp.no_sync()

    # -- reductions ------------------------------------------------------------------------------
    def shard(self, n: int) -> tuple[int, int]:
        return shard_bounds(n, self.world_size, self.rank)

    def _reduce(self, values: list[float], op: Any) -> list[float]:
        dev = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend(self.group) == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=op, group=self.group)
        return [float(v) for v in t.tolist()]

    def sum_floats(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max_floats(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def take_eigenvalue_comm(self) -> float:
        return float(self._eig_stats.pop("comm_time", 0.0))

    def take_grad_comm(self) -> float:
        out, self.grad_comm_time = self.grad_comm_time, 0.0
        return out

    def barrier(self) -> None:
        dist.barrier(group=self.group)


def DistributedTrainer(model: nn.Module, optimizer: torch.optim.Optimizer,
                       loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       train_data: Dataset, scheduler: Any, *, group: Any = None,
                       sync_batchnorm: bool = False,
                       eig_params: Sequence[torch.Tensor] | None = None,
                       config_extra: Any = None, ddp_kwargs: dict | None = None,
                       **kwargs: Any) -> Any:
    """``Trainer(..., parallel=DataParallel(group, ...))``: the Trainer on every rank of a
    process group (a shorthand; the data-parallel logic is :class:`DataParallel`'s).

    Raises:
        DistributedConfigError: a batch size that does not split into whole micro-batches per
            rank, a Hessian batch smaller than the number of ranks, or ranks started with
            different options (raised on every rank, before training).
        RuntimeError: torch.distributed is not initialised.
    """
    from ._trainer import Trainer
    parallel = DataParallel(group, sync_batchnorm=sync_batchnorm, eig_params=eig_params,
                            config_extra=config_extra, ddp_kwargs=ddp_kwargs)
    return Trainer(model, optimizer, loss_fn, train_data, scheduler, parallel=parallel,
                   **kwargs)

def _maybe_fault(rank: int, update: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    try:
        r, u, marker = spec.split(":", 2)
        r, u = int(r), int(u)
    except ValueError:
        raise ValueError(f"{FAULT_ENV} must be RANK:UPDATE:MARKER_FILE, got {spec!r}") from None
    if rank == r and update == u and not os.path.exists(marker):
        Path(marker).write_text(f"rank {rank} killed itself before update {update}\n")
        os.kill(os.getpid(), signal.SIGKILL)
