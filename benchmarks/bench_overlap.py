"""Does the gradient all-reduce overlap the backward pass? 2 gloo processes on the CPU.

Two DDP set-ups train the same model on the same micro-batches, side by side in the same two
processes (steps alternate in blocks, so background load hits both alike):

* ``async``: the hook the executor uses (:func:`hessbatch.deep._distributed._mean_hook`):
  divide the bucket by W, launch DDP's all-reduce asynchronously, return its future; the
  backward pass goes on computing the next buckets while earlier ones are on the wire;
* ``waiting``: the hook before issue 19 (re-created here only): divide, all-reduce and *wait*
  for it before the backward pass may continue (no overlap).

Both give the same averaged gradient; the benchmark checks they agree bit for bit on the
first step (same sums in the same order), then times one forward + backward per step (the
optimizer step is left out: it is the same for both). Small buckets (``--bucket-mb``) make
several all-reduces per backward pass, as a large model has with DDP's 25 MB default.

What one machine can show: with gloo over loopback the "network" is a memory copy through the
kernel, done by gloo's own thread, so overlap lets the two ranks' copies run while autograd
computes. The figure is this machine's, not a prediction for a network between nodes.

Run:  python benchmarks/bench_overlap.py [--repeats 7] [--steps 10] [--width 1024]
      [--depth 6] [--batch 64] [--bucket-mb 1] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def waiting_hook(state, bucket):
    """The old hook: average, all-reduce, and wait before the backward pass goes on."""
    buf = bucket.buffer()
    buf.div_(state.world_size)
    dist.all_reduce(buf, group=state.group)          # blocking: no overlap
    fut = torch.futures.Future()
    fut.set_result(buf)
    return fut


class _State:  # what the hooks read: group, world size, and the executor hook's comm clock
    def __init__(self, world: int):
        self.group, self.world_size, self.grad_comm_time = None, world, 0.0
        self.calls = 0


def _counted(hook):
    def run(state, bucket):
        state.calls += 1
        return hook(state, bucket)
    return run


def _model(args) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(args.depth):
        layers += [nn.Linear(args.width, args.width), nn.Tanh()]
    layers.append(nn.Linear(args.width, 10))
    return nn.Sequential(*layers)


def _worker(rank: int, world: int, init: str, args, queue) -> None:
    from hessbatch.deep._distributed import _mean_hook

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ddps, states = {}, {}
    for name, hook in (("async", _mean_hook), ("waiting", waiting_hook)):
        ddp = nn.parallel.DistributedDataParallel(_model(args), bucket_cap_mb=args.bucket_mb)
        state = _State(world)
        ddp.register_comm_hook(state, _counted(hook))
        ddps[name] = ddp
        states[name] = state
    g = torch.Generator().manual_seed(1 + rank)
    x = torch.randn(args.batch, args.width, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    def step(ddp):
        ddp.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(ddp(x), y).backward()

    # the same gradient, bit for bit
    for ddp in ddps.values():
        step(ddp)
    grads = [torch.cat([p.grad.flatten() for p in d.module.parameters()]) for d in ddps.values()]
    same = bool(torch.equal(grads[0], grads[1]))
    for ddp in ddps.values():      # warm-up (DDP rebuilds its buckets after the first step)
        for _ in range(3):
            step(ddp)
    before = states["async"].calls
    step(ddps["async"])
    buckets = states["async"].calls - before  # all-reduces per backward pass
    times: dict[str, list[float]] = {k: [] for k in ddps}
    for _ in range(args.repeats):
        for name, ddp in ddps.items():
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(ddp)
            dist.barrier()
            times[name].append((time.perf_counter() - t0) / args.steps)
    # compute alone: the same forward + backward without DDP (no communication)
    plain = _model(args)
    alone = []
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            plain.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(plain(x), y).backward()
        alone.append((time.perf_counter() - t0) / args.steps)
        dist.barrier()
    if rank == 0:
        queue.put({"same_gradient": same, "buckets": buckets, "times": times, "alone": alone})
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bucket-mb", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{tmp}/rendezvous"
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        mp.spawn(_worker, args=(world, init, args, queue), nprocs=world, join=True)
        res = queue.get()
    med = {k: statistics.median(v) for k, v in res["times"].items()}
    alone = statistics.median(res["alone"])
    params = sum(p.numel() for p in _model(args).parameters())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}")
    print(f"model: MLP {args.depth} x {args.width} ({params / 1e6:.2f} M float32 parameters, "
          f"{params * 4 / 2**20:.1f} MiB of gradient), batch {args.batch} per rank, "
          f"{res['buckets']} DDP buckets ({args.bucket_mb:g} MB cap), 2 gloo ranks x "
          f"{args.threads} thread(s); medians of {args.repeats} blocks of {args.steps} steps")
    print(f"same averaged gradient from both hooks (bit for bit): {res['same_gradient']}")
    print(f"{'set-up':<26}{'ms / step':>10}{'vs compute':>12}")
    print(f"{'compute alone (no DDP)':<26}{alone * 1e3:>10.2f}{1.0:>12.2f}")
    for k in ("waiting", "async"):
        print(f"{k + ' hook':<26}{med[k] * 1e3:>10.2f}{med[k] / alone:>12.2f}")
    saved = 1 - med["async"] / med["waiting"]
    print(f"async saves {saved * 100:.1f}% of the waiting hook's step time; communication "
          f"on top of compute: waiting {(med['waiting'] - alone) * 1e3:.2f} ms, async "
          f"{(med['async'] - alone) * 1e3:.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "params": params, **res, "median": med,
                       "alone_median": alone}, f, indent=1)


if __name__ == "__main__":
    main()
