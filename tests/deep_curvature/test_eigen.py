"""Top eigenvalue: power iteration and Lanczos against eigvalsh of exact float64 Hessians
(float64 models, and float32 models against the float64 Hessian at the same weights)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessbatch.deep import (MLP, EigenResult, HessianOperator, SmallCNN, lanczos,
                            power_iteration, top_eigenvalue)
from hessbatch.deep._hvp import flatten


def _quadratic(eigs, seed=0):
    """Least squares with a known Hessian: L(w) = mean_i (x_i . w - y_i)^2 = |X w - y|^2 / N,
    H = 2 X^T X / N, built as Q diag(eigs) Q^T."""
    d = len(eigs)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = torch.diag(torch.tensor(eigs, dtype=torch.float64).sqrt() * math.sqrt(d / 2)) @ q.T
    model = nn.Linear(d, 1, bias=False).double()
    return model, x, torch.randn(d, 1, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_known_spectrum(method):
    eigs = [5.0, 2.0, 1.0, 0.5, 0.25, 0.1]
    model, x, y = _quadratic(eigs)
    H = HessianOperator(model, F.mse_loss, [(x, y)]).dense()
    torch.testing.assert_close(torch.linalg.eigvalsh(H),
                               torch.tensor(sorted(eigs), dtype=torch.float64))
    budget = 6 if method == "lanczos" else 60       # power: rate 2/5 per product
    r = top_eigenvalue(model, F.mse_loss, [(x, y)], method=method, max_hvp=budget, tol=1e-12)
    assert abs(r.value - 5.0) <= 1e-9
    assert r.converged and r.n_hvp <= budget
    if method == "lanczos" and r.n_hvp == len(eigs):
        # A full Krylov space: the Ritz values are the whole spectrum.
        torch.testing.assert_close(torch.tensor(r.ritz_values), torch.tensor(sorted(eigs)[::-1]),
                                   rtol=1e-9, atol=1e-9)
    if method == "power":
        assert r.ritz_values == ()


def _tiny_mlp(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(5, 6), nn.Softplus(), nn.Linear(6, 3)).double()
    x = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randint(3, (30,))
    return m, x, y


def test_lanczos_with_full_budget_is_exact(exact_hessian, ce):
    model, x, y = _tiny_mlp()
    ev = torch.linalg.eigvalsh(exact_hessian(model, ce, x, y))
    dim = ev.numel()
    r = top_eigenvalue(model, ce, [(x, y)], method="lanczos", max_hvp=dim, tol=0.0)
    assert abs(r.value - ev[-1].item()) <= 1e-9 * ev[-1].item()
    assert abs(r.ritz_values[1] - ev[-2].item()) <= 1e-8 * ev[-1].item()


# The requirement: on small models whose top two eigenvalues lie within 10% of each
# other, the default method is within 1e-2 relative of the exact value with at most 10 HVPs.
# Each case is a (model, data) draw whose spectrum meets the precondition, asserted below so
# that a change of torch's random streams cannot make the test vacuous.
def _case(kind, seed):
    torch.manual_seed(seed)
    if kind == "mlp_softplus":
        m = MLP((6,), 4, hidden=(10,), activation="softplus").double()
        x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(4, (64,))
    elif kind == "cnn_softplus":
        m = SmallCNN((1, 8, 8), 3, width=2, hidden=8, activation="softplus").double()
        x, y = torch.rand(32, 1, 8, 8, dtype=torch.float64), torch.randint(3, (32,))
    else:
        m = MLP((8,), 3, hidden=(12, 6), activation="elu").double()
        x, y = torch.randn(48, 8, dtype=torch.float64), torch.randint(3, (48,))
    return m, x, y


@pytest.mark.parametrize("kind,seed", [("mlp_softplus", 24), ("cnn_softplus", 7),
                                       ("cnn_softplus", 16), ("mlp_elu", 50)])
def test_default_meets_the_accuracy_requirement_on_close_top_eigenvalues(kind, seed,
                                                                          exact_hessian, ce):
    model, x, y = _case(kind, seed)
    ev = torch.linalg.eigvalsh(exact_hessian(model, ce, x, y))
    lam1, lam2 = ev[-1].item(), ev[-2].item()
    assert 0.9 * lam1 <= lam2 <= lam1, "precondition: top two within 10%"
    for start in range(8):
        r = top_eigenvalue(model, ce, [(x, y)], seed=start)   # defaults: lanczos, 10, 1e-2
        assert r.method == "lanczos" and r.n_hvp <= 10
        assert abs(r.value - lam1) <= 1e-2 * lam1, (start, r.value, lam1)


# float32, the dtype training runs in: the same cases cast to float32, against eigvalsh of the
# exact float64 Hessian at the same weights and data (float32 values are exact in float64).
# Tolerances: the default must still meet the 1e-2 requirement. With a full Krylov budget the
# Lanczos value is exact but for rounding: each float32 HVP entry is a sum over at most 419
# parameters and 64 samples, so its error is about sqrt(n) u ~ 1e-6 (worst case n u ~ 2.5e-5),
# u = 2^-24; the Rayleigh quotient inherits that relative error. 1e-5 is ~170 u; measured: at
# most 1.3e-7 on these cases. (float64 gets 1e-9 above.)
F32_REL = 1e-5


@pytest.mark.parametrize("kind,seed", [("mlp_softplus", 24), ("cnn_softplus", 7),
                                       ("cnn_softplus", 16), ("mlp_elu", 50)])
def test_float32_meets_the_accuracy_requirement_and_is_exact_to_rounding(kind, seed,
                                                                          exact_hessian, ce):
    model, x, y = _case(kind, seed)
    model, x = model.float(), x.float()
    ref = copy.deepcopy(model).double()
    ev = torch.linalg.eigvalsh(exact_hessian(ref, ce, x.double(), y))
    lam1, lam2 = ev[-1].item(), ev[-2].item()
    assert 0.9 * lam1 <= lam2 <= lam1, "precondition: top two within 10%"
    for start in range(8):
        r = top_eigenvalue(model, ce, [(x, y)], seed=start)   # defaults: lanczos, 10, 1e-2
        assert r.n_hvp <= 10 and abs(r.value - lam1) <= 1e-2 * lam1, (start, r.value, lam1)
    full = top_eigenvalue(model, ce, [(x, y)], method="lanczos", max_hvp=ev.numel(), tol=0.0)
    assert all(p.dtype == torch.float32 for p in full.vector)
    assert abs(full.value - lam1) <= F32_REL * lam1, (full.value, lam1)


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_result_is_an_honest_eigenpair(method, exact_hessian, ce):
    """value is the Rayleigh quotient of the unit vector, residual is |H v - value v|, and some
    exact eigenvalue lies within the residual (symmetric Bauer-Fike)."""
    model, x, y = _tiny_mlp(1)
    H = exact_hessian(model, ce, x, y)
    ev = torch.linalg.eigvalsh(H)
    for max_hvp in (3, 10):
        r = top_eigenvalue(model, ce, [(x, y)], method=method, max_hvp=max_hvp, tol=0.0)
        v = flatten(r.vector)
        assert abs(v.norm().item() - 1) <= 1e-12
        hv = H @ v
        assert abs(torch.dot(v, hv).item() - r.value) <= 1e-10 * abs(r.value)
        true_res = (hv - r.value * v).norm().item()
        assert abs(true_res - r.residual) <= 1e-8 * abs(r.value) + 1e-6 * true_res
        assert (ev - r.value).abs().min().item() <= r.residual + 1e-12
        assert len(r.history) == r.n_hvp == len(r.residuals) == max_hvp


def test_lanczos_estimates_never_decrease(ce):
    """The top Ritz value of nested Krylov spaces is non-decreasing (Cauchy interlacing)."""
    model, x, y = _tiny_mlp(2)
    r = top_eigenvalue(model, ce, [(x, y)], method="lanczos", max_hvp=15, tol=0.0)
    assert all(b >= a - 1e-12 for a, b in zip(r.history, r.history[1:]))


def test_block_eigenvalue_matches_the_block(exact_hessian, ce):
    model, x, y = _tiny_mlp(3)
    block = list(model[2].parameters())
    ev = torch.linalg.eigvalsh(exact_hessian(model, ce, x, y, params=block))
    r = top_eigenvalue(model, ce, [(x, y)], params=block, max_hvp=len(ev), tol=0.0)
    assert abs(r.value - ev[-1].item()) <= 1e-9 * ev[-1].item()
    assert [t.shape for t in r.vector] == [p.shape for p in block]


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_same_seed_same_numbers_and_split_invariance(method, ce):
    model, x, y = _tiny_mlp(4)
    a = top_eigenvalue(model, ce, [(x, y)], method=method, seed=5)
    b = top_eigenvalue(model, ce, [(x, y)], method=method, seed=5)
    assert a.value == b.value and a.history == b.history
    assert all(torch.equal(s, t) for s, t in zip(a.vector, b.vector))
    split = top_eigenvalue(model, ce, [(x[:7], y[:7]), (x[7:], y[7:])], method=method, seed=5)
    assert split.n_hvp == a.n_hvp and abs(split.value - a.value) <= 1e-12 * abs(a.value)
    other = top_eigenvalue(model, ce, [(x, y)], method=method, seed=6, max_hvp=3, tol=0.0)
    assert other.history != top_eigenvalue(model, ce, [(x, y)], method=method, seed=5,
                                           max_hvp=3, tol=0.0).history


def test_backends_give_the_same_eigenvalue(ce):
    model, x, y = _tiny_mlp(5)
    a = top_eigenvalue(model, ce, [(x, y)], tol=0.0)
    b = top_eigenvalue(model, ce, [(x, y)], tol=0.0, backend="forward_over_reverse")
    c = top_eigenvalue(model, ce, [(x, y)], tol=0.0, reuse_graph=False)
    assert abs(a.value - b.value) <= 1e-10 * a.value
    assert abs(a.value - c.value) <= 1e-12 * a.value


def test_stopping_and_convergence_flag(ce):
    model, x, y = _tiny_mlp(6)
    full = top_eigenvalue(model, ce, [(x, y)], max_hvp=12, tol=0.0)
    assert full.n_hvp == 12 and not full.converged
    loose = top_eigenvalue(model, ce, [(x, y)], max_hvp=40, tol=0.1)
    assert loose.converged and loose.n_hvp < 40
    assert loose.residual <= 0.1 ** 2 * loose.value
    one = top_eigenvalue(model, ce, [(x, y)], method="power", max_hvp=1)
    assert one.n_hvp == 1 and not one.converged and one.value == one.history[0]
    p = top_eigenvalue(model, ce, [(x, y)], method="power", max_hvp=200, tol=1e-3)
    assert p.converged and p.n_hvp < 200
    assert abs(p.history[-1] - p.history[-2]) <= 1e-3 * abs(p.value)
    assert float(p) == p.value and isinstance(p, EigenResult)


@pytest.mark.parametrize("solver", [power_iteration, lanczos])
def test_zero_hessian(solver):
    model = nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    op = HessianOperator(model, lambda out, t: out.mean(), [(x, torch.zeros(4))])
    r = solver(op, max_hvp=10)
    assert r.value == 0.0 and r.converged and r.n_hvp == 1 and r.residual == 0.0


def test_modes_and_buffers_restored(ce):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Softplus(), nn.Dropout(0.5),
                          nn.Linear(5, 3))
    model(torch.randn(10, 4))
    model[3].eval()
    modes = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    x, y = torch.randn(16, 4), torch.randint(3, (16,))
    r1 = top_eigenvalue(model, ce, [(x, y)])
    r2 = top_eigenvalue(model, ce, [(x, y)])
    assert r1.value == r2.value                  # eval mode: dropout off, BN running stats
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(method="arnoldi"), ValueError, "method must be one of"),
    (dict(max_hvp=0), ValueError, "max_hvp must be >= 1, got 0"),
    (dict(max_hvp=2.0), TypeError, "max_hvp must be an int"),
    (dict(max_hvp=True), TypeError, "max_hvp must be an int"),
    (dict(tol=-1e-3), ValueError, "tol must be a finite number >= 0, got -0.001"),
    (dict(tol=math.nan), ValueError, "tol must be a finite number"),
    (dict(tol="1e-2"), TypeError, "tol must be a float"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(params=[torch.zeros(2, requires_grad=True)]), ValueError, "not a parameter"),
])
def test_top_eigenvalue_rejects_bad_options(kwargs, exc, match, ce):
    model, x, y = _tiny_mlp()
    with pytest.raises(exc, match=match):
        top_eigenvalue(model, ce, [(x, y)], **kwargs)


# ------------------------------------------------------------------------------ issue 22
# The decision threshold: stop as soon as "no drop" is certain; extend a deciding check.

@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("kind,seed", [("mlp_softplus", 24), ("cnn_softplus", 7)])
def test_threshold_gives_a_certain_lower_bound_or_the_plain_result(kind, seed, method,
                                                                   exact_hessian, ce):
    model, x, y = _case(kind, seed)
    lam1 = torch.linalg.eigvalsh(exact_hessian(model, ce, x, y))[-1].item()
    early = 0
    for s in range(4):
        plain = top_eigenvalue(model, ce, [(x, y)], seed=s, method=method)
        for frac in (0.3, 0.7, 0.95, 1.0, 1.2):
            thr = frac * lam1
            r = top_eigenvalue(model, ce, [(x, y)], seed=s, method=method, threshold=thr)
            assert r.threshold == thr and r.n_hvps == r.n_hvp
            if r.is_lower_bound:
                early += 1
                assert thr < r.value <= lam1 * (1 + 1e-12) and r.status == "lower_bound"
                assert not r.converged and r.n_hvp <= plain.n_hvp
            else:
                # the normal rule ran: bit for bit the run without a threshold
                assert (r.value, r.n_hvp, r.history) == (plain.value, plain.n_hvp, plain.history)
                assert r.status == ("converged" if r.converged else "not_converged")
            if frac >= 1.0:
                assert not r.is_lower_bound
    assert early >= 8


def test_extend_hvp_resolves_a_deciding_check_that_max_hvp_leaves_unconverged(exact_hessian,
                                                                               ce):
    model, x, y = _case("cnn_softplus", 16)
    lam1 = torch.linalg.eigvalsh(exact_hessian(model, ce, x, y))[-1].item()
    short = [top_eigenvalue(model, ce, [(x, y)], seed=s, max_hvp=3) for s in range(4)]
    assert all(r.status == "not_converged" and r.n_hvp == 3 for r in short)
    assert max(abs(r.value - lam1) / lam1 for r in short) > 1e-2     # silently off before
    for s in range(4):
        r = top_eigenvalue(model, ce, [(x, y)], seed=s, max_hvp=3, extend_hvp=20)
        assert r.converged and r.extended == r.n_hvp - 3 > 0
        assert abs(r.value - lam1) <= 1e-2 * lam1
        # no drop certain at once: the extension is not spent
        lb = top_eigenvalue(model, ce, [(x, y)], seed=s, max_hvp=3, extend_hvp=20,
                            threshold=0.1 * lam1)
        assert lb.is_lower_bound and lb.extended == 0 and lb.n_hvp <= 3


def test_warm_start_function_counts_and_warns_once_on_unconverged_checks(ce):
    from hessbatch.deep import NotConvergedWarning, WarmStartEigenvalue
    model, x, y = _case("cnn_softplus", 16)
    f = WarmStartEigenvalue(max_hvp=2, extend_hvp=0, hvp_check="off", warm_start=False)
    with pytest.warns(NotConvergedWarning, match="did not converge within 2 .*counted") as rec:
        for s in range(3):
            f(model, ce, [(x, y)], seed=s)
    assert len([w for w in rec if issubclass(w.category, NotConvergedWarning)]) == 1
    assert f.n_not_converged == 3 and [e["status"] for e in f.log] == ["not_converged"] * 3
    g = WarmStartEigenvalue(max_hvp=2, extend_hvp=0, hvp_check="off", warm_start=False)
    g.load_state_dict(f.state_dict())
    assert g.log == f.log and g.n_not_converged == 3
    # a threshold far below: each check is a certain lower bound after one product
    lb = f(model, ce, [(x, y)], seed=9, threshold=1e-9)
    assert lb.is_lower_bound and lb.n_hvp == 1 and f.log[-1]["status"] == "lower_bound"
    with pytest.raises(ValueError, match="threshold must be None or a finite number"):
        f(model, ce, [(x, y)], seed=0, threshold=float("nan"))
    with pytest.raises(ValueError, match="extend_hvp must be >= 0"):
        WarmStartEigenvalue(extend_hvp=-1)
