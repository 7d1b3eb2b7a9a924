"""The plain-loop adapter on CUDA gives the CPU's run (float64). Skipped without CUDA."""

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from hessbatch.deep import LoopAdapter

from .test_loop import _config, _data, _model, _optimizer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _run(device, num_workers):
    cfg = _config()
    model = _model().to(device)
    opt = _optimizer(model)
    data = _data()
    hb = LoopAdapter(model, opt, F.cross_entropy, data, cfg, seed=5, hessian_batch_size=16)
    loader = DataLoader(data, batch_sampler=hb.sampler, num_workers=num_workers,
                        pin_memory=device != "cpu", generator=torch.Generator())
    while not hb.finished:
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x, weight = hb.micro_batch(x, y)
            (F.cross_entropy(model(x), y) * weight).backward()
            if hb.update_complete:
                optimizer_step(opt)
                hb.step()
        hb.end_epoch()
    return model, hb


def optimizer_step(opt):
    opt.step()
    opt.zero_grad()


def test_adapter_on_cuda_matches_cpu():
    cpu_model, cpu = _run("cpu", 0)
    gpu_model, gpu = _run("cuda", 2)
    assert [e for e in gpu.events if e[0] != "eigenvalue"] == \
        [e for e in cpu.events if e[0] != "eigenvalue"]
    assert [v for k, v in gpu.events if k == "eigenvalue"] == pytest.approx(
        [v for k, v in cpu.events if k == "eigenvalue"], rel=1e-9)
    for a, b in zip(gpu_model.state_dict().values(), cpu_model.state_dict().values()):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-12)
