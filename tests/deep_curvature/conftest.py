"""Shared fixtures for the curvature and adversarial tests: exact dense Hessians in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call


def _exact_hessian(model, loss_fn, x, y, params=None):
    """Dense Hessian of loss_fn(model(x), y) w.r.t. params (default: all), by
    torch.autograd.functional.hessian over a flat vector, the model in eval mode.

    Independent of hessbatch: it differentiates a pure function of the flat parameters.
    """
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    names = {id(p): n for n, p in model.named_parameters()}
    keys = [names[id(p)] for p in params]
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def f(flat):
        theta, i = {}, 0
        for k, s in zip(keys, shapes):
            n = s.numel()
            theta[k] = flat[i:i + n].view(s)
            i += n
        return loss_fn(functional_call(model, theta, (x,), strict=False), y)

    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return torch.autograd.functional.hessian(f, flat0)
    finally:
        for m, t in was:
            m.training = t


@pytest.fixture
def exact_hessian():
    return _exact_hessian


@pytest.fixture
def ce():
    return F.cross_entropy
