"""CUDA figures for benchmarks/gpu_check.sh: curvature cost on ResNet18 and a BL-vs-ABS epoch.

``--part curvature``: ResNet18 (CIFAR layout, base width 64, 11.2M parameters), batch 128 of
random 3x32x32 images, float32, eval mode. Medians over ``--repeats`` of: one gradient, one
Hessian-vector product through the kept gradient graph (what each product of an eigenvalue
costs), one rebuilt product (``reuse_graph=False``), and a whole top eigenvalue (Lanczos, at
most 10 products, tol 1e-2, graph built once), each timed with ``torch.cuda.synchronize``.

``--part epoch``: the trainer on ResNet18, ``--samples`` synthetic 3x32x32 images, B = 128: BL
against ABS configured never to grow (alpha and patience out of reach), so the only difference
is one top eigenvalue per epoch (Hessian batch 128, at most 10 products). One warm-up epoch
each, then ``--epochs`` timed epochs alternating BL, ABS; medians; no evaluation.

Every figure is printed and written as JSON to ``--out`` (a folder). Runs on the CPU too
(``--device cpu``, slowly), which is how the script was checked on a machine without a GPU.

Run:  python benchmarks/bench_gpu.py --part all --device cuda --out gpu_check_out
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from hessbatch import SchedulerConfig
from hessbatch.deep import HessianOperator, ResNet18, Trainer, synthetic_classification, \
    top_eigenvalue


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, repeats: int) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_curvature(device: torch.device, repeats: int, batch: int, width: int) -> dict:
    torch.manual_seed(0)
    model = ResNet18((3, 32, 32), 10, base=width).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(10, (batch,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]

    def gradient():
        loss = F.cross_entropy(model(x), y)
        torch.autograd.grad(loss, params)

    op = HessianOperator(model, F.cross_entropy, [(x, y)])
    t_grad = _median_time(gradient, device, repeats)
    t_hvp = _median_time(lambda: op.matvec(v), device, repeats)
    op.release()
    rebuilt = HessianOperator(model, F.cross_entropy, [(x, y)], reuse_graph=False)
    t_rebuild = _median_time(lambda: rebuilt.matvec(v), device, repeats)
    res = {}

    def eig():
        res["r"] = top_eigenvalue(model, F.cross_entropy, [(x, y)], max_hvp=10, tol=1e-2,
                                  seed=0)
    t_eig = _median_time(eig, device, max(1, repeats // 2))
    return {"model": f"ResNet18 width {width}", "params": sum(p.numel() for p in params),
            "batch": batch, "gradient_ms": 1e3 * t_grad, "hvp_ms": 1e3 * t_hvp,
            "hvp_rebuilt_ms": 1e3 * t_rebuild, "hvp_over_gradient": t_hvp / t_grad,
            "rebuilt_over_gradient": t_rebuild / t_grad, "eigenvalue_ms": 1e3 * t_eig,
            "eigenvalue_hvps": res["r"].n_hvp, "eigenvalue": res["r"].value}


def _trainer(method: str, n: int, device: torch.device, width: int) -> Trainer:
    data = synthetic_classification(n, (3, 32, 32), 10, seed=0)
    torch.manual_seed(0)
    model = ResNet18((3, 32, 32), 10, base=width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    cfg = SchedulerConfig(method=method, lr=0.02, batch_size=128, max_batch_size=2048,
                          samples_per_epoch=n, epochs=100, alpha=1e12, patience=10 ** 9)
    return Trainer(model, opt, F.cross_entropy, data, cfg, hessian_batch_size=128, max_hvp=10,
                   eig_tol=1e-2, seed=0)


def bench_epoch(device: torch.device, n: int, epochs: int, width: int) -> dict:
    trainers = {m: _trainer(m, n, device, width) for m in ("bl", "abs")}
    walls: dict[str, list[float]] = {"bl": [], "abs": []}
    eig: list[float] = []
    for m, tr in trainers.items():
        tr.train_epoch()  # warm-up
    for _ in range(epochs):
        for m, tr in trainers.items():
            _sync(device)
            t0 = time.perf_counter()
            met = tr.train_epoch()
            _sync(device)
            walls[m].append(time.perf_counter() - t0)
            if m == "abs":
                eig.append(met.time_eigenvalue)
    bl, ab = statistics.median(walls["bl"]), statistics.median(walls["abs"])
    return {"samples_per_epoch": n, "width": width, "bl_epoch_s": bl, "abs_epoch_s": ab,
            "abs_over_bl": ab / bl, "eigenvalue_s": statistics.median(eig),
            "epochs_timed": epochs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("curvature", "epoch", "all"), default="all")
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu", "torch": torch.__version__}
    if args.part in ("curvature", "all"):
        r = dict(info, **bench_curvature(device, args.repeats, args.batch, args.width))
        (args.out / "curvature.json").write_text(json.dumps(r, indent=1))
        print(json.dumps(r, indent=1))
    if args.part in ("epoch", "all"):
        r = dict(info, **bench_epoch(device, args.samples, args.epochs, args.width))
        (args.out / "bl_vs_abs_epoch.json").write_text(json.dumps(r, indent=1))
        print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
