"""The data-parallel paths on CUDA with nccl (one process, world size 1): the same numbers as
the CPU in float64. Skipped without CUDA; run by benchmarks/gpu_check.sh (`pytest -m cuda`)."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from hessbatch.deep import HessianOperator, top_eigenvalue
from hessbatch.deep._distributed import DistributedHessianOperator, distributed_top_eigenvalue
from hessbatch.deep._hvp import flatten

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_available()
                                      and dist.is_nccl_available()),
                                 reason="needs CUDA and nccl")]

_spec = importlib.util.spec_from_file_location(
    "hessbatch_dist_worker_cuda", Path(__file__).resolve().parent / "_worker.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


@pytest.fixture
def nccl_group():
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                            device_id=device)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def test_nccl_hvp_and_eigenvalue_on_cuda_equal_the_cpu_ones(nccl_group):
    net, x, y, v = W.hvp_case()
    cpu = HessianOperator(net, F.cross_entropy, [(x, y)])
    gnet = copy.deepcopy(net).to(nccl_group)
    xg, yg = x.to(nccl_group), y.to(nccl_group)
    op = DistributedHessianOperator(gnet, F.cross_entropy, [(xg[:7], yg[:7]), (xg[7:], yg[7:])])
    hv = op.matvec([t.to(nccl_group) for t in v])
    assert all(t.device.type == "cuda" for t in hv) and op.n_samples == 13
    torch.testing.assert_close(flatten(hv).cpu(), flatten(cpu.matvec(v)), rtol=1e-9,
                               atol=1e-12)
    for method in ("lanczos", "power"):
        a = top_eigenvalue(net, F.cross_entropy, [(x, y)], method=method, max_hvp=20, tol=0.0,
                           seed=11)
        b = distributed_top_eigenvalue(gnet, F.cross_entropy, [(xg, yg)], method=method,
                                       max_hvp=20, tol=0.0, seed=11)
        assert math.isclose(a.value, b.value, rel_tol=1e-8), (method, a.value, b.value)


@pytest.mark.parametrize("name", ["abs", "absa"])
def test_nccl_distributed_trainer_on_cuda_matches_the_cpu_trainer(nccl_group, name):
    cpu = W.make_trainer(name, distributed=False)
    cpu.run()
    gpu = W.make_trainer(name, distributed=True, device="cuda")
    gpu.run()
    assert all(p.device.type == "cuda" for p in gpu.model.parameters())
    a, b = W.record(cpu), W.record(gpu)
    assert [m["batch_size"] for m in a["history"]] == [m["batch_size"] for m in b["history"]]
    assert [m["updates"] for m in a["history"]] == [m["updates"] for m in b["history"]]
    for k in a["weights"]:
        torch.testing.assert_close(b["weights"][k].cpu(), a["weights"][k], rtol=1e-7,
                                   atol=1e-9)
    for ma, mb in zip(a["history"], b["history"]):
        assert math.isclose(ma["train_loss"], mb["train_loss"], rel_tol=1e-7)
    assert b["times"][0]["time_grad_comm"] > 0


def test_sync_batchnorm_converts_the_layers_and_trains_on_cuda(nccl_group):
    from hessbatch import SchedulerConfig
    from hessbatch.deep import DistributedTrainer

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Softplus(),
                        nn.Linear(8, 3)).double().to(nccl_group)
    train, test = W.data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    cfg = SchedulerConfig(method="bl", lr=0.1, batch_size=8, micro_batch_size=4,
                          samples_per_epoch=len(train), epochs=1)
    tr = DistributedTrainer(net, opt, F.cross_entropy, train, cfg, test_data=test,
                            sync_batchnorm=True)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in tr.model.modules())
    before = [p.detach().clone() for p in tr.model.parameters()]
    (m,) = tr.run()
    assert math.isfinite(m.train_loss) and m.updates == math.ceil(len(train) / 8)
    assert any(not torch.equal(p, q) for p, q in zip(before, tr.model.parameters()))
