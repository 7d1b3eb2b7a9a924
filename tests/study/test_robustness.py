"""PGD against FGSM, landscapes and interpolation, and the input-space Hessian (saddle-free)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hessbatch.deep import MLP, SmallCNN, fgsm
from hessbatch.deep._robustness import attack_accuracy, interpolate, loss_along, pgd
from hessbatch.deep._spectrum import input_hessian_dense, input_hessian_extremes


class Bump(nn.Module):
    """Two classes on a 1-D input: class 1 wins only in the narrow band |x - 0.35| < 0.02.

    From x0 = 0.3 with label 0 the gradient points into the band, but FGSM's single step of
    eps = 0.1 jumps over it to 0.4 (still class 0); small projected steps walk into it."""

    def forward(self, x):
        z = x.reshape(x.shape[0], -1)[:, :1]
        return torch.cat([torch.zeros_like(z), 0.4 - 1000.0 * (z - 0.35) ** 2], dim=1)


def test_pgd_beats_fgsm_where_it_must():
    model = Bump()
    x = torch.tensor([[0.30], [0.31], [0.29]], dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    assert (model(x).argmax(1) == 0).all()                       # clean: correct
    xf = fgsm(model, F.cross_entropy, x, y, 0.1)
    assert (model(xf).argmax(1) == 0).all()                      # FGSM overshoots the band
    xp = pgd(model, x, y, 0.1, steps=10)
    assert (model(xp).argmax(1) == 1).all()                      # PGD lands in it
    acc = attack_accuracy(model, x, y, [0.0, 0.1], pgd_steps=10)
    assert acc == {"eps": [0.0, 0.1], "fgsm": [1.0, 1.0], "pgd": [1.0, 0.0]}


@settings(max_examples=30)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3), steps=st.integers(1, 6),
       act=st.sampled_from(["relu", "softplus"]))
def test_pgd_is_never_weaker_than_fgsm_and_stays_in_the_ball(seed, eps, steps, act):
    torch.manual_seed(seed)
    model = MLP((1, 3, 3), 4, hidden=(8,), activation=act).double()
    x = torch.rand(16, 1, 3, 3, dtype=torch.float64)
    y = torch.randint(4, (16,))
    xf = fgsm(model, F.cross_entropy, x, y, eps)
    xp = pgd(model, x, y, eps, steps=steps)
    assert ((xp - x).abs() <= eps + 1e-12).all() and (xp >= 0).all() and (xp <= 1).all()
    with torch.no_grad():
        wrong_f = model(xf).argmax(1) != y
        wrong_p = model(xp).argmax(1) != y
        lf = F.cross_entropy(model(xf), y, reduction="none")
        lp = F.cross_entropy(model(xp), y, reduction="none")
    assert not (wrong_f & ~wrong_p).any()                 # FGSM's errors are PGD's errors
    assert (lp[~wrong_p] >= lf[~wrong_p] - 1e-12).all()   # and PGD's loss is no lower
    if steps == 1:
        torch.testing.assert_close(xp, xf)


def test_pgd_rejects_bad_arguments():
    model, x, y = nn.Linear(2, 2), torch.rand(3, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="eps must be"):
        pgd(model, x, y, -0.1)
    with pytest.raises(ValueError, match="steps must be"):
        pgd(model, x, y, 0.1, steps=0)


def test_landscape_and_interpolation_are_exact_on_known_points():
    torch.manual_seed(0)
    model = MLP((1, 2, 2), 3, hidden=(4,)).double()
    x, y = torch.rand(20, 1, 2, 2, dtype=torch.float64), torch.randint(3, (20,))
    before = [p.detach().clone() for p in model.parameters()]
    base = F.cross_entropy(model(x), y).item()
    d = [torch.randn_like(p) for p in model.parameters()]
    ls = loss_along(model, d, [0.0, 0.5], x, y)
    assert ls[0] == pytest.approx(base, rel=1e-12)
    with torch.no_grad():
        moved = {n: p + 0.5 * di for (n, p), di in zip(model.named_parameters(), d)}
    other = MLP((1, 2, 2), 3, hidden=(4,)).double()
    other.load_state_dict(moved)
    assert ls[1] == pytest.approx(F.cross_entropy(other(x), y).item(), rel=1e-12)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))   # restored
    sa, sb = model.state_dict(), other.state_dict()
    res = interpolate(model, sa, sb, [0.0, 1.0, 2.0], {"train": (x, y)})
    assert res["train_loss"][0] == pytest.approx(base, rel=1e-12)
    assert res["train_loss"][1] == pytest.approx(ls[1], rel=1e-12)
    # lambda = 2 is theta_a + 2 (theta_b - theta_a) = theta + 1.0 d
    assert res["train_loss"][2] == pytest.approx(loss_along(model, d, [1.0], x, y)[0],
                                                 rel=1e-10)


# --------------------------------------------------------------------------------------------
# the input-space Hessian


def _relu_net(kind, seed):
    torch.manual_seed(seed)
    if kind == "mlp":
        return MLP((1, 4, 4), 5, hidden=(12, 8), activation="relu").double(), (1, 4, 4)
    return SmallCNN((1, 6, 6), 4, width=3, hidden=8, activation="relu").double(), (1, 6, 6)


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 5.0), kind=st.sampled_from(["mlp",
                                                                                       "cnn"]))
def test_relu_input_hessian_is_psd_and_is_the_gauss_newton_term(seed, scale, kind):
    """J^T (diag p - p p^T) J exactly (a.e.): eigvalsh >= -rounding, and equal to the formula."""
    model, shape = _relu_net(kind, seed)
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.rand(3, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(model.num_classes, (3,), generator=g)
    h = input_hessian_dense(model, x, y)
    ev = torch.linalg.eigvalsh(h)
    assert (ev[:, 0] >= -1e-10 * ev.abs().amax(dim=1).clamp_min(1e-300)).all(), ev[:, 0]
    model.eval()
    for i in range(3):
        xi = x[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda z: model(z)[0], xi).reshape(
            model.num_classes, -1)
        p = torch.softmax(model(xi)[0], 0).detach()
        gn = jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
        torch.testing.assert_close(h[i], gn, rtol=1e-9, atol=1e-12)


def test_softplus_input_hessian_is_not_always_psd():
    torch.manual_seed(0)
    model = MLP((1, 4, 4), 5, hidden=(12, 8), activation="softplus").double()
    x = 3 * torch.rand(8, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(5, (8,))
    ev = torch.linalg.eigvalsh(input_hessian_dense(model, x, y))
    neg = ev[:, 0] < -1e-6 * ev[:, -1]
    assert neg.any()            # softplus: some points have negative curvature in the input
    # ... and Lanczos proves it: its smallest Ritz value is a Rayleigh quotient
    top, bottom = input_hessian_extremes(model, x, y, steps=16)
    assert (bottom[neg] < 0).all()


@pytest.mark.parametrize("act", ["relu", "softplus"])
def test_lanczos_extremes_match_eigvalsh(act):
    torch.manual_seed(1)
    model = MLP((1, 4, 4), 5, hidden=(12, 8), activation=act).double()
    x, y = torch.rand(6, 1, 4, 4, dtype=torch.float64), torch.randint(5, (6,))
    ev = torch.linalg.eigvalsh(input_hessian_dense(model, x, y))
    top, bottom = input_hessian_extremes(model, x, y, steps=16, seed=3)
    scale = ev.abs().amax(dim=1)
    assert (ev[:, -1] > 1e-5).all()                   # a curved case, not a dead network
    assert ((top - ev[:, -1]).abs() <= 1e-8 * scale).all()
    assert ((bottom - ev[:, 0]).abs() <= 1e-8 * scale).all()
    # a few steps already bracket the spectrum from inside (Ritz values interlace)
    top3, bottom3 = input_hessian_extremes(model, x, y, steps=3, seed=3)
    assert (top3 <= ev[:, -1] + 1e-12 * scale).all()
    assert (bottom3 >= ev[:, 0] - 1e-12 * scale).all()


def test_logit_jacobian_norm_matches_autograd_jacobian():
    from hessbatch.deep._spectrum import logit_jacobian_sq_norm

    torch.manual_seed(2)
    model = MLP((1, 3, 3), 4, hidden=(6,), activation="softplus").double()
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    got = logit_jacobian_sq_norm(model, x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda z: model(z)[0], x[i:i + 1])
        assert got[i].item() == pytest.approx(jac.pow(2).sum().item(), rel=1e-12)
