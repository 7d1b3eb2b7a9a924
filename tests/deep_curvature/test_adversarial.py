"""FGSM and the random-sign ablation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessbatch.deep import fgsm, random_sign


def _linear(seed=0, d=6, c=3, n=10):
    torch.manual_seed(seed)
    model = nn.Linear(d, c).double()
    x = torch.rand(n, d, dtype=torch.float64)
    y = torch.randint(c, (n,))
    return model, x, y


def test_fgsm_follows_the_analytic_input_gradient():
    """For logits W x + b and the mean cross-entropy, grad_x = W^T (softmax - onehot) / n."""
    model, x, y = _linear()
    eps = 0.01
    p = torch.softmax(model(x), dim=1).detach()
    g = (p - F.one_hot(y, 3).double()) @ model.weight.detach() / x.shape[0]
    assert (g.abs() > 1e-12).all()                  # so that every sign is determined
    xa = fgsm(model, F.cross_entropy, x, y, eps, clip=None)
    torch.testing.assert_close(xa, x + eps * g.sign(), rtol=0, atol=1e-15)


def test_fgsm_increases_a_loss_convex_in_the_input():
    """Cross-entropy of a linear model is convex in x, so L(x + eps s) >= L(x) + eps |g|_1
    exactly (first-order lower bound along s = sign g)."""
    for seed in range(5):
        model, x, y = _linear(seed)
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y)
        (g,) = torch.autograd.grad(loss, xr)
        for eps in (1e-3, 0.1, 1.0):
            xa = fgsm(model, F.cross_entropy, x, y, eps, clip=None)
            after = F.cross_entropy(model(xa), y).item()
            assert after >= loss.item() + eps * g.abs().sum().item() - 1e-12


def test_fgsm_clips_to_the_input_range():
    model, x, y = _linear(1)
    x[0, :] = 0.0
    x[1, :] = 1.0
    eps = 0.05
    xa = fgsm(model, F.cross_entropy, x, y, eps)       # default clip (0, 1)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    free = fgsm(model, F.cross_entropy, x, y, eps, clip=None)
    torch.testing.assert_close(xa, free.clamp(0.0, 1.0), rtol=0, atol=0)
    lo_hi = fgsm(model, F.cross_entropy, x, y, 0.5, clip=(0.2, 0.7))
    assert lo_hi.min() >= 0.2 and lo_hi.max() <= 0.7
    assert torch.equal(fgsm(model, F.cross_entropy, x, y, 0.0), x)   # eps = 0: unchanged


def test_fgsm_eval_mode_and_no_side_effects():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(8, 3)).double()
    model(torch.randn(32, 4, dtype=torch.float64))  # non-trivial running statistics
    model.train()
    model[1].eval()                                 # a frozen BN inside must stay frozen
    modes = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    model[0].weight.grad = torch.ones_like(model[0].weight)
    x, y = torch.rand(16, 4, dtype=torch.float64), torch.randint(3, (16,))
    xa = fgsm(model, F.cross_entropy, x, y, 0.01)
    assert torch.equal(xa, fgsm(model, F.cross_entropy, x, y, 0.01))   # dropout off
    # The same computation done by hand with the whole model in eval mode.
    ref = nn.Sequential(*[m for m in model]).eval()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(ref(xr), y), xr)
    model.train()
    model[1].eval()
    torch.testing.assert_close(xa, (x + 0.01 * g.sign()).clamp(0, 1), rtol=0, atol=0)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    assert not xa.requires_grad and xa.grad_fn is None
    assert not x.requires_grad and x.grad is None


def test_fgsm_on_an_empty_batch_and_shapes():
    model, x, y = _linear()
    assert fgsm(model, F.cross_entropy, x[:0], y[:0], 0.1).shape == (0, 6)
    x32 = fgsm(model.float(), F.cross_entropy, x.float(), y, 0.1)
    assert x32.dtype == torch.float32 and x32.shape == x.shape


def test_random_sign_size_and_reproducibility():
    x = torch.full((50, 7), 0.5, dtype=torch.float64)
    eps = 0.01
    a = random_sign(x, eps, generator=torch.Generator().manual_seed(3))
    b = random_sign(x, eps, generator=torch.Generator().manual_seed(3))
    c = random_sign(x, eps, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close((a - x).abs(), torch.full_like(x, eps), rtol=0, atol=1e-15)
    # Same L-infinity and L2 size as FGSM with the same eps, inside the input range.
    model = nn.Linear(7, 3).double()
    f = fgsm(model, F.cross_entropy, x, torch.zeros(50, dtype=torch.long), eps)
    assert abs((a - x).norm() - (f - x).norm()) <= 1e-12
    torch.manual_seed(9)
    g1 = random_sign(x, eps)
    torch.manual_seed(9)
    assert torch.equal(g1, random_sign(x, eps))     # generator=None: torch's global RNG


def test_random_sign_is_a_fair_independent_coin():
    """n = 200000 signs: under a fair coin the fraction of + is 0.5 +- 0.5/sqrt(n) (1 sd), and
    the lag-1 correlation is 0 +- 1/sqrt(n). A 5 sd band fails with probability < 1e-6 each;
    the generator is seeded, so the test is deterministic anyway."""
    n = 200_000
    x = torch.zeros(n, dtype=torch.float64)
    s = random_sign(x, 1.0, clip=None, generator=torch.Generator().manual_seed(0))
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    frac = (s > 0).double().mean().item()
    assert abs(frac - 0.5) <= 5 * 0.5 / math.sqrt(n)
    corr = (s[1:] * s[:-1]).mean().item()
    assert abs(corr) <= 5 / math.sqrt(n)


def test_random_sign_clips():
    x = torch.tensor([[0.0, 1.0, 0.5]], dtype=torch.float64).repeat(100, 1)
    r = random_sign(x, 0.3, generator=torch.Generator().manual_seed(1))
    assert r.min() >= 0.0 and r.max() <= 1.0
    assert set(r[:, 0].tolist()) == {0.0, 0.3} and set(r[:, 1].tolist()) == {0.7, 1.0}


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(eps=-0.1), ValueError, "eps must be a finite number >= 0, got -0.1"),
    (dict(eps=math.nan), ValueError, "eps must be a finite number"),
    (dict(eps=True), TypeError, "eps must be a float"),
    (dict(eps="0.1"), TypeError, "eps must be a float"),
    (dict(clip=(1.0, 0.0)), ValueError, "low < high"),
    (dict(clip=(0.0, math.inf)), ValueError, "finite"),
    (dict(clip=(0, 1, 2)), TypeError, "clip must be None or a \\(low, high\\) pair"),
    (dict(clip="01"), TypeError, "clip must be None"),
    (dict(x="int"), TypeError, "x must be a floating-point tensor"),
    (dict(x=[0.5]), TypeError, "x must be a tensor"),
])
@pytest.mark.parametrize("which", ["fgsm", "random_sign"])
def test_both_reject_bad_input(kwargs, exc, match, which):
    model, x, y = _linear()
    args = dict(x=x, eps=0.1, clip=(0.0, 1.0))
    args.update(kwargs)
    if isinstance(args["x"], str):
        args["x"] = torch.ones(10, 6, dtype=torch.long)
    with pytest.raises(exc, match=match):
        if which == "fgsm":
            fgsm(model, F.cross_entropy, args["x"], y, args["eps"], clip=args["clip"])
        else:
            random_sign(args["x"], args["eps"], clip=args["clip"])


@pytest.mark.parametrize("case,exc,match", [
    ("model", TypeError, "model must be a torch.nn.Module"),
    ("loss", TypeError, "loss_fn must be callable"),
    ("y", ValueError, "share the leading"),
    ("ytype", TypeError, "y must be a tensor"),
    ("nan", ValueError, "FGSM needs a finite loss"),
])
def test_fgsm_rejects_bad_model_loss_targets(case, exc, match):
    model, x, y = _linear()
    args = [model, F.cross_entropy, x, y, 0.1]
    if case == "model":
        args[0] = "model"
    elif case == "loss":
        args[1] = None
    elif case == "y":
        args[3] = y[:4]
    elif case == "ytype":
        args[3] = [1, 2]
    else:
        args[2] = torch.full_like(x, math.nan)
    with pytest.raises(exc, match=match):
        fgsm(*args)


def test_random_sign_rejects_a_non_generator():
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        random_sign(torch.zeros(3), 0.1, generator=0)
