"""The same computations on CUDA give the CPU's numbers (float64). Skipped without CUDA."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessbatch.deep import HessianOperator, fgsm, random_sign, top_eigenvalue
from hessbatch.deep._hvp import flatten

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Softplus(), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 4)).double()
    model(torch.randn(8, 1, 8, 8, dtype=torch.float64))
    x = torch.rand(24, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(4, (24,))
    return model, x, y


def test_hvp_and_eigenvalue_match_cpu():
    model, x, y = _model_and_data()
    gpu = nn.Sequential(*[m for m in _model_and_data()[0]]).cuda()
    gpu.load_state_dict(model.state_dict())
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    gbatches = [(a.cuda(), b.cuda()) for a, b in batches]
    v = [torch.randn_like(p) for p in model.parameters()]
    for backend in ("double_backprop", "forward_over_reverse"):
        cpu_hv = HessianOperator(model, F.cross_entropy, batches, backend=backend).matvec(v)
        gpu_hv = HessianOperator(gpu, F.cross_entropy, gbatches, backend=backend).matvec(
            [t.cuda() for t in v])
        assert all(t.device.type == "cuda" for t in gpu_hv)
        torch.testing.assert_close(flatten(gpu_hv).cpu(), flatten(cpu_hv), rtol=1e-9,
                                   atol=1e-12)
    for method in ("power", "lanczos"):
        a = top_eigenvalue(model, F.cross_entropy, batches, method=method, tol=0.0, seed=3)
        b = top_eigenvalue(gpu, F.cross_entropy, gbatches, method=method, tol=0.0, seed=3)
        assert abs(a.value - b.value) <= 1e-8 * abs(a.value)
        assert b.vector[0].device.type == "cuda"
    assert all(m.training for m in gpu.modules())


def test_perturbations_on_cuda():
    model, x, y = _model_and_data()
    gpu = nn.Sequential(*[m for m in _model_and_data()[0]]).cuda()
    gpu.load_state_dict(model.state_dict())
    a = fgsm(model, F.cross_entropy, x, y, 0.01)
    b = fgsm(gpu, F.cross_entropy, x.cuda(), y.cuda(), 0.01)
    assert b.device.type == "cuda"
    # Signs of input gradients agree except where a gradient entry is ~0.
    assert (a != b.cpu()).double().mean().item() <= 1e-3
    xc = x.cuda()
    r = random_sign(xc, 0.01, generator=torch.Generator(device="cuda").manual_seed(0))
    assert r.device.type == "cuda" and r.shape == xc.shape
    r2 = random_sign(xc, 0.01, generator=torch.Generator().manual_seed(0))   # CPU generator
    assert torch.equal(r2.cpu(), random_sign(x, 0.01, generator=torch.Generator().manual_seed(0)))
