"""Measure the cost model's constants (``hessbatch.MachineProfile``) for a model on this machine.

What is timed, each as the median of repeated runs after a warm-up, and how it maps to the
profile (the terms of ``hessbatch.predict``):

* ``time_per_sample``: fetching a micro-batch of ``m`` samples, its forward and backward pass
  and reading the loss, as :class:`~hessbatch.deep.Trainer` does per micro-batch, divided by
  ``m`` (so a micro-batch's fixed overhead is spread over its samples, as it is in training);
* ``time_per_update``: ``zero_grad`` and the optimizer step (SGD with momentum), once per
  update;
* ``time_per_adversarial_sample``: FGSM on a micro-batch, divided by its size;
* ``time_per_hvp_sample``: one Hessian-vector product (double backprop, graph reused) on the
  Hessian batch, divided by its size; ``time_per_check``: what one eigenvalue computation costs
  beyond its products (building the gradient graph, fetching the batch, the solver);
* ``alpha``/``beta``: ``torch.distributed.all_reduce`` between two local processes (gloo,
  spawned with ``torch.multiprocessing``), timed for several message sizes (interleaved, round
  after round, so that a change of load affects all sizes alike); the fastest repeat of each
  size is checked to grow with the size and fitted to the ring model at ``P = 2``:
  ``t(n) = 2 alpha + n beta``; timings that contradict the model are refused, not fitted.

The measurements are wall-clock on a machine that may be shared: they are as good as the
machine's quiet; the report says how many repeats and their spread.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import statistics
import time
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from hessbatch import MachineProfile

from ._adversarial import fgsm
from ._eigen import top_eigenvalue
from ._hvp import HessianOperator

__all__ = ["measure_allreduce", "measure_model", "calibrate", "fit_ring", "check_ring"]


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median and (max - min) / median of ``repeats`` timed calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return med, (max(times) - min(times)) / med if med > 0 else 0.0


def _check_pos_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def measure_model(model: nn.Module, loss_fn, dataset: TensorDataset, *, micro_batch: int,
                  hessian_batch: int = 128, max_hvp: int = 10, eig_method: str = "lanczos",
                  eig_tol: float = 1e-2, adv_eps: float = 0.005, momentum: float = 0.9,
                  weight_decay: float = 5e-4, params: Sequence[torch.Tensor] | None = None,
                  repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Per-sample and per-update times of ``model`` (module docstring), on a copy of it.

    Args:
        model: the network (copied: its weights are not touched).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        dataset: a ``TensorDataset`` of inputs and targets (samples are drawn from it).
        micro_batch: samples per forward/backward pass (the trainer's micro-batch).
        hessian_batch, max_hvp, eig_method, eig_tol, params: the eigenvalue computation as the
            run makes it (``params``: a block, or None for all parameters).
        adv_eps: FGSM step.
        momentum, weight_decay: the SGD optimizer's.
        repeats: timed repetitions of each measurement (median reported), >= 1.
        seed: draws the samples.

    Returns:
        dict with ``time_per_sample``, ``time_per_update``, ``time_per_adversarial_sample``,
        ``time_per_hvp_sample``, ``time_per_check``, ``n_params``, ``hessian_batch``,
        ``hvps_per_check`` and ``spread`` (relative max-min range of each measurement).

    Raises:
        ValueError: a size < 1, or a dataset that is not a TensorDataset.
    """
    for name, v in (("micro_batch", micro_batch), ("hessian_batch", hessian_batch),
                    ("max_hvp", max_hvp), ("repeats", repeats)):
        _check_pos_int(name, v)
    if not isinstance(dataset, TensorDataset):
        raise ValueError(f"dataset must be a TensorDataset, got {type(dataset).__name__}")
    net = copy.deepcopy(model)
    device = next(net.parameters()).device
    x_all, y_all = dataset.tensors[:2]
    n = len(dataset)
    micro = min(micro_batch, n)
    hb = min(hessian_batch, n)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=momentum,
                          weight_decay=weight_decay)
    block = None
    if params is not None:  # map the block onto the copy's parameters
        index = {id(p): i for i, p in enumerate(model.parameters())}
        mine = list(net.parameters())
        block = [mine[index[id(p)]] for p in params]

    def fetch(k: int):
        idx = torch.randint(n, (k,), generator=gen)
        return x_all[idx].to(device), y_all[idx].to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def forward_backward():
        net.train()
        x, y = fetch(micro)
        loss = loss_fn(net(x), y)
        loss.backward()
        float(loss.detach())
        sync()

    def step():
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    def adversarial():
        x, y = fetch(micro)
        x = x.clone()
        x[:] = fgsm(net, loss_fn, x, y, adv_eps)
        net.train()
        sync()

    t_fb, s_fb = _median_time(forward_backward, repeats)
    opt.zero_grad(set_to_none=True)
    forward_backward()  # gradients exist, so the step is a real one
    t_step, s_step = _median_time(step, repeats)
    t_adv, s_adv = _median_time(adversarial, repeats)

    # the operator is built after the last optimizer step: a step changes the weights in
    # place, which would invalidate its kept gradient graph
    hess = [fetch(min(micro, hb - i)) for i in range(0, hb, micro)]
    op = HessianOperator(net, loss_fn, hess, params=block)
    v = [torch.randn(p.shape, generator=gen).to(device) for p in op.params]

    def hvp():
        op.matvec(v)
        sync()

    t_hvp, s_hvp = _median_time(hvp, repeats)
    op.release()

    eig_runs = []

    def eigen():
        batches = [fetch(min(micro, hb - i)) for i in range(0, hb, micro)]
        r = top_eigenvalue(net, loss_fn, batches, params=block, method=eig_method,
                           max_hvp=max_hvp, tol=eig_tol, seed=int(torch.randint(
                               2 ** 31 - 1, (1,), generator=gen)))
        sync()
        eig_runs.append(int(r.n_hvp))

    t_eig, s_eig = _median_time(eigen, repeats)
    hvps = statistics.median(eig_runs[1:] or eig_runs)
    t_check = max(t_eig - hvps * t_hvp, 0.0)
    return {
        "time_per_sample": t_fb / micro,
        "time_per_update": t_step,
        "time_per_adversarial_sample": t_adv / micro,
        "time_per_hvp_sample": t_hvp / hb,
        "time_per_check": t_check,
        "n_params": sum(p.numel() for p in (block or list(net.parameters()))),
        "n_params_all_reduced": sum(p.numel() for p in net.parameters()),
        "hessian_batch": hb,
        "hvps_per_check": int(round(hvps)),
        "micro_batch": micro,
        "repeats": repeats,
        "spread": {"forward_backward": s_fb, "step": s_step, "adversarial": s_adv,
                   "hvp": s_hvp, "eigenvalue": s_eig},
    }


# --------------------------------------------------------------------------------------------
# all-reduce between local processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _allreduce_worker(rank: int, world: int, port: int, sizes: Sequence[int], repeats: int,
                      queue) -> None:
    """One gloo process: time ``all_reduce`` of float32 tensors of each size (rank 0 reports)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        tensors = [torch.ones(size, dtype=torch.float32) for size in sizes]
        for t in tensors:  # warm-up: connection set-up, buffers
            for _ in range(2):
                dist.all_reduce(t)
        # the sizes are interleaved, round after round, so that a change of the machine's
        # load during the measurement affects every size alike, not the fit's slope
        times = [[] for _ in sizes]
        for _ in range(repeats):
            for i, t in enumerate(tensors):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(t)
                times[i].append(time.perf_counter() - t0)
        out = []
        for size, ts_list in zip(sizes, times):
            # a collective ends when the slowest rank ends: the max over ranks of each timing
            ts = torch.tensor(ts_list, dtype=torch.float64)
            dist.all_reduce(ts, op=dist.ReduceOp.MAX)
            out.append((int(size), ts.tolist()))
        if rank == 0:
            queue.put(out)
    finally:
        dist.destroy_process_group()


def fit_ring(points: Sequence[tuple[int, float]], world_size: int) -> tuple[float, float, float]:
    """Least-squares fit of ``t(n) = 2 (P-1) alpha + 2 (P-1)/P n beta`` to ``(n, t)`` points.

    Returns:
        ``(alpha, beta, max_relative_residual)``; a negative intercept (a latency below the
        timer's resolution) is clipped to 0.

    Raises:
        ValueError: fewer than two distinct n, or a slope <= 0 (time not growing with the
            message: the points contradict the model and the fit would be noise).
    """
    xs = [float(n) for n, _ in points]
    ys = [float(t) for _, t in points]
    if len(set(xs)) < 2:
        raise ValueError(f"the fit needs two distinct message sizes, got {sorted(set(xs))}")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if not b > 0:
        raise ValueError(_contradiction(points, "the time does not grow with the message size"))
    a = max(my - b * mx, 0.0)
    p = world_size
    resid = max((abs(a + b * x - y) / y for x, y in zip(xs, ys) if y > 0), default=0.0)
    return a / (2 * (p - 1)), b / (2 * (p - 1) / p), resid


#: a larger message may time below a smaller one by at most this fraction (timer noise)
MONOTONE_RTOL = 0.25
#: the ring fit is refused when a point is further than this (relative) from the line
FIT_RTOL = 1.0


def _contradiction(points, why: str) -> str:
    shown = ", ".join(f"({n}, {t:.3g} s)" for n, t in points)
    return (f"the all-reduce timings contradict the ring model t(n) = 2 alpha + n beta: {why} "
            f"(fastest of the repeats per size: {shown}); the machine is probably too loaded "
            "to measure: rerun with more --repeats on a quieter machine, or use "
            "--no-allreduce and give --latency and --inverse-bandwidth")


def check_ring(points: Sequence[tuple[int, float]]) -> None:
    """Refuse timings that are not (nearly) non-decreasing in the message size.

    Raises:
        ValueError: a larger message more than :data:`MONOTONE_RTOL` faster than a smaller
            one, with every point in the message.
    """
    pts = sorted(points)
    for (n1, t1), (n2, t2) in zip(pts, pts[1:]):
        if t2 < (1 - MONOTONE_RTOL) * t1:
            raise ValueError(_contradiction(points, f"{n2} values took {t2:.3g} s, less than "
                                                    f"{n1} values ({t1:.3g} s)"))


def measure_allreduce(sizes: Sequence[int] = (1, 1 << 12, 1 << 16, 1 << 20), *,
                      repeats: int = 30, world_size: int = 2) -> dict[str, Any]:
    """Latency and inverse bandwidth of ``all_reduce`` between local gloo processes.

    Spawns ``world_size`` processes with ``torch.multiprocessing``; each times
    ``torch.distributed.all_reduce`` of float32 tensors of every size in ``sizes``. The
    fastest of the repeats of each size (the least disturbed by other load) is checked to be
    non-decreasing in the size (:func:`check_ring`) and fitted by least squares to the ring
    model ``t(n) = 2 (P - 1) alpha + 2 (P - 1) / P * n * beta``; a fit whose slope is not
    positive, or with a point more than :data:`FIT_RTOL` from the line, is refused.

    Args:
        sizes: tensor lengths (values), at least two distinct ones, each >= 1.
        repeats: timed repetitions per size, >= 1.
        world_size: processes, >= 2.

    Returns:
        dict with ``alpha`` (s), ``beta`` (s per float32 value), ``points``
        (``[(n, seconds), ...]``, the minima), ``spread_median_over_min`` per size,
        ``world_size`` and the fit's ``max_relative_residual``.

    Raises:
        ValueError: fewer than two distinct sizes, a size < 1, world_size < 2, or timings
            that contradict the model (named, with the points).
    """
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must hold at least two distinct lengths >= 1, got {sizes}")
    _check_pos_int("repeats", repeats)
    if not isinstance(world_size, int) or world_size < 2:
        raise ValueError(f"world_size must be an int >= 2 (an all-reduce needs two "
                         f"processes), got {world_size!r}")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_allreduce_worker, args=(world_size, port, sizes, repeats, queue),
             nprocs=world_size, join=True)
    raw = queue.get()
    # the fastest of the repeats: on a shared machine every disturbance only adds time, so the
    # minimum is the estimate least affected by other load; the spread says how much it varied
    points = [(n, min(ts)) for n, ts in raw]
    spread = {str(n): statistics.median(ts) / min(ts) - 1 for n, ts in raw if min(ts) > 0}
    check_ring(points)
    alpha, beta, resid = fit_ring(points, world_size)
    if resid > FIT_RTOL:
        raise ValueError(_contradiction(points, f"a point is {100 * resid:.0f}% away from the "
                                                "fitted line"))
    p = world_size
    return {"alpha": alpha, "beta": beta, "points": points, "world_size": p,
            "repeats": repeats, "statistic": "minimum of the repeats",
            "spread_median_over_min": spread, "max_relative_residual": resid}


def calibrate(model: nn.Module, loss_fn, dataset: TensorDataset, *, micro_batch: int,
              allreduce: bool = True, allreduce_sizes: Sequence[int] | None = None,
              **kwargs: Any) -> tuple[MachineProfile, dict[str, Any]]:
    """A :class:`hessbatch.MachineProfile` for ``model`` on this machine, with the details.

    Args:
        model, loss_fn, dataset, micro_batch, kwargs: as :func:`measure_model`.
        allreduce: also measure ``alpha``/``beta`` with two gloo processes (else they are 0).
        allreduce_sizes: message lengths for :func:`measure_allreduce` (default: 1 value,
            1/64, 1/8, 1 and 4 times the model's parameters, at least 1024).

    Returns:
        ``(profile, details)``: the profile at ``processes = 1`` and a JSON-able dict of every
        measurement.
    """
    model_part = measure_model(model, loss_fn, dataset, micro_batch=micro_batch, **kwargs)
    details: dict[str, Any] = {"model": model_part}
    alpha = beta = 0.0
    if allreduce:
        n = max(int(model_part["n_params_all_reduced"]), 1024)
        sizes = allreduce_sizes or sorted({1, max(n // 64, 2), max(n // 8, 3), n, 4 * n})
        ar = measure_allreduce(sizes)
        details["allreduce"] = ar
        alpha, beta = ar["alpha"], ar["beta"]
    profile = MachineProfile(
        processes=1, n_params=int(model_part["n_params_all_reduced"]), alpha=alpha,
        beta=beta, time_per_update=model_part["time_per_update"],
        time_per_sample=model_part["time_per_sample"],
        time_per_adversarial_sample=model_part["time_per_adversarial_sample"],
        time_per_hvp_sample=model_part["time_per_hvp_sample"],
        time_per_check=model_part["time_per_check"],
        hessian_batch=int(model_part["hessian_batch"]),
        hvps_per_check=int(model_part["hvps_per_check"]))
    if not all(math.isfinite(v) for v in (alpha, beta)):
        raise ValueError(f"the all-reduce fit gave alpha={alpha}, beta={beta}")
    return profile, details


def calibrate_from_spec(spec: dict[str, Any], scheduler: dict[str, Any], *, repeats: int = 7,
                        allreduce: bool = True) -> tuple[MachineProfile, dict[str, Any]]:
    """:func:`calibrate` for the model and data of a ``hessbatch train`` run, rebuilt from the
    ``spec`` and ``scheduler`` entries of its metrics.json (on the CPU, seeded as the run).

    Raises:
        ValueError: a spec that lacks what rebuilding the model needs (named).
    """
    from ._cli_train import block_parameters, build_from_spec
    missing = [k for k in ("model", "activation", "width", "data", "test_fraction", "seed")
               if k not in spec]
    if missing:
        raise ValueError(f"the run's spec lacks {missing}: was it written by hessbatch train?")
    bundle, model = build_from_spec(spec, torch.device("cpu"))
    params = block_parameters(model, spec.get("block", 0))
    return calibrate(
        model, torch.nn.functional.cross_entropy, bundle.train,
        micro_batch=scheduler.get("micro_batch_size") or scheduler["batch_size"],
        hessian_batch=spec.get("hessian_batch", 128), max_hvp=spec.get("max_hvp", 10),
        eig_method=spec.get("eig_method", "lanczos"), eig_tol=spec.get("eig_tol", 1e-2),
        adv_eps=scheduler.get("adv_eps", 0.005), momentum=spec.get("momentum", 0.9),
        weight_decay=spec.get("weight_decay", 5e-4), params=params, repeats=repeats,
        seed=spec.get("seed", 0), allreduce=allreduce)


def short_train(train_args: Sequence[str], out: str | os.PathLike) -> None:
    """Run ``hessbatch train`` with ``train_args`` (``--out out --quiet`` added)."""
    import argparse

    from ._cli_train import build_parser, run
    parser = argparse.ArgumentParser(prog="hessbatch train")
    build_parser(parser)
    run(parser.parse_args(list(train_args) + ["--out", str(out), "--quiet"]))
