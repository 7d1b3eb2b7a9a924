"""Issue 11: warm starts (accuracy contract, checkpoint), the HVP self-test and its failures,
the mean-loss check, the finite-difference HVP, and clear errors for what torch fails on."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessbatch import Scheduler, SchedulerConfig
from hessbatch.deep import (MLP, HessianOperator, HVPCheckError, HVPCheckWarning, Trainer,
                            WarmStartEigenvalue, check_hvp, check_mean_loss, top_eigenvalue)
from hessbatch.deep._hvp import flatten, unflatten

from .test_eigen import _case


class _DetachedSoftplus(torch.autograd.Function):
    """softplus whose backward detaches its input: right gradient, wrong Hessian, no error."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.softplus(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x.detach())


class _Act(nn.Module):
    def forward(self, x):
        return _DetachedSoftplus.apply(x)


def _mlp(act, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 10), act, nn.Linear(10, 4)).to(dtype)
    return m, torch.randn(40, 6, dtype=dtype), torch.randint(4, (40,))


# ------------------------------------------------------------------------------ warm start

@pytest.mark.parametrize("kind,seed", [("mlp_softplus", 24), ("cnn_softplus", 7),
                                       ("mlp_elu", 50)])
def test_warm_start_keeps_the_accuracy_contract(kind, seed, exact_hessian, ce):
    """Default budget, from warm starts that are right or random junk, the warm solve alone
    (confirm_warm=False): within 1e-2 of eigvalsh; from the right one, in fewer products than
    cold. (From the exact *second* eigenvector it can stop at lambda_2: see the next test.)"""
    model, x, y = _case(kind, seed)
    H = exact_hessian(model, ce, x, y)
    ev, vecs = torch.linalg.eigh(H)
    lam1 = ev[-1].item()
    params = [p for p in model.parameters() if p.requires_grad]
    top, second = unflatten(vecs[:, -1], params), unflatten(vecs[:, -2], params)
    g = torch.Generator().manual_seed(seed)
    junk = unflatten(torch.randn(H.shape[0], generator=g, dtype=torch.float64), params)
    cold_hvps, warm_hvps = [], []
    for s in range(6):
        cold = top_eigenvalue(model, ce, [(x, y)], seed=s)
        cold_hvps.append(cold.n_hvp)
        for start in (top, junk):
            r = top_eigenvalue(model, ce, [(x, y)], seed=s, start=start, confirm_warm=False)
            assert r.warm and r.n_hvp <= 10 and not r.confirmed
            assert abs(r.value - lam1) <= 1e-2 * lam1, (s, r.value, lam1)
        warm_hvps.append(top_eigenvalue(model, ce, [(x, y)], seed=s, start=top,
                                        confirm_warm=False).n_hvp)
    assert sum(warm_hvps) < sum(cold_hvps)


def test_warm_start_function_keeps_the_vector_and_checkpoints_it(ce):
    model, x, y = _mlp(nn.Softplus(), dtype=torch.float64)
    f = WarmStartEigenvalue(max_hvp=10, confirm_warm=False)
    r1 = f(model, ce, [(x, y)], seed=1)
    assert not r1.warm and f.checked and f.vector is r1.vector
    r2 = f(model, ce, [(x, y)], seed=2)
    assert r2.warm and r2.n_hvp <= r1.n_hvp
    # the default guard confirms a warm value given without a threshold (it decides)
    guarded = WarmStartEigenvalue(max_hvp=10)
    guarded(model, ce, [(x, y)], seed=1)
    r3 = guarded(model, ce, [(x, y)], seed=2)
    assert r3.warm and r3.confirmed and r3.value >= r2.value
    assert [e["confirmed"] for e in guarded.log] == [False, True]
    g = WarmStartEigenvalue(max_hvp=10, confirm_warm=False)
    g.load_state_dict(f.state_dict())
    a, b = f(model, ce, [(x, y)], seed=3), g(model, ce, [(x, y)], seed=3)
    assert a.value == b.value and a.history == b.history
    off = WarmStartEigenvalue(warm_start=False)
    off(model, ce, [(x, y)], seed=1)
    assert not off(model, ce, [(x, y)], seed=2).warm
    with pytest.raises(ValueError, match="not a warm-start state"):
        g.load_state_dict({"format": "other"})
    with pytest.raises(ValueError, match="warm_mix must be a finite number >= 0"):
        WarmStartEigenvalue(warm_mix=-0.1)
    with pytest.raises(ValueError, match="hvp_check must be"):
        WarmStartEigenvalue(hvp_check="maybe")


def test_trainer_warm_start_option_resumes_bit_for_bit(tmp_path):
    from hessbatch.deep import synthetic_classification

    def build(warm=True):
        kw = {} if warm is None else {"warm_start": warm}
        torch.manual_seed(0)
        data = synthetic_classification(256, (1, 6, 6), 4, seed=0)
        model = MLP((1, 6, 6), 4, hidden=(12,), activation="softplus")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        cfg = SchedulerConfig(method="abs", lr=0.1, batch_size=32, max_batch_size=128,
                              samples_per_epoch=256, epochs=3, check_every=64)
        return Trainer(model, opt, F.cross_entropy, data, Scheduler(cfg), hessian_batch_size=64,
                       seed=3, **kw)

    assert not build(warm=None).eigenvalue_fn.warm_start   # off by default
    full = build()
    full.run()
    assert isinstance(full.eigenvalue_fn, WarmStartEigenvalue)
    assert full.eigenvalue_fn.vector is not None
    h = full.history[-1].hvps_per_check
    # no threshold from this loop: every warm value decides, so it is confirmed by a cold
    # solve: at most 2 x 10
    assert h is not None and 1 <= h <= 20
    part = build()
    part.run(epochs=1)
    path = part.save(tmp_path / "ck.pt")
    resumed = build()
    resumed.load_state_dict(torch.load(path, weights_only=True))
    resumed.run()
    assert resumed.events == full.events[len(part.events):]
    assert part.events == full.events[:len(part.events)]
    cold = build(warm=False)
    cold.run()
    assert cold.events != full.events   # the start vectors differ, so the values do


def test_warm_start_from_the_second_eigenvector_can_stop_at_lambda_2_and_the_guard_catches_it(
        exact_hessian, ce):
    """When the old top direction has become exactly the second one, the tol^2 residual test
    can pass on lambda_2 before the random part has brought the new top direction in (the warm
    solve alone, confirm_warm=False: 8 of 32 solves over the four accuracy models, more than
    1e-2 off; a larger random part does not cure it: docs/deep_curvature.md). The guard
    (default): a warm value that decides a growth is confirmed by the cold solve of the same
    seed, and the larger value is kept: every solve within 1e-2. (Fails on the code before
    issue 22, which had no guard.) A lower bound above a threshold needs no confirmation."""
    model, x, y = _case("mlp_softplus", 24)
    ev, vecs = torch.linalg.eigh(exact_hessian(model, ce, x, y))
    lam1 = ev[-1].item()
    params = [p for p in model.parameters() if p.requires_grad]
    second = unflatten(vecs[:, -2], params)
    raw = [abs(top_eigenvalue(model, ce, [(x, y)], seed=s, start=second,
                              confirm_warm=False).value - lam1) / lam1 for s in range(8)]
    assert max(raw) > 1e-2          # some warm starts stop on lambda_2 ...
    assert min(raw) <= 1e-2         # ... not all
    for s in range(8):
        r = top_eigenvalue(model, ce, [(x, y)], seed=s, start=second)
        cold = top_eigenvalue(model, ce, [(x, y)], seed=s)
        assert r.confirmed and abs(r.value - lam1) <= 1e-2 * lam1, (s, r.value, lam1)
        assert r.value >= cold.value and r.n_hvp > cold.n_hvp   # both solves counted
        # far below lambda_2: "no drop" is certain on the warm solve, no confirmation
        lb = top_eigenvalue(model, ce, [(x, y)], seed=s, start=second, threshold=0.5 * lam1)
        assert lb.is_lower_bound and not lb.confirmed and 0.5 * lam1 < lb.value <= lam1


# ------------------------------------------------------------------------------ self-tests

def test_hvp_check_passes_on_a_correct_model_and_fails_on_a_detached_backward(ce):
    good, x, y = _mlp(nn.Softplus())
    r = check_hvp(good, ce, [(x, y)], seed=0)
    assert r.ok and r.rel_error <= 1e-6 and r.dtype == "float64"
    assert next(good.parameters()).dtype == torch.float32   # the model itself is untouched
    bad, x, y = _mlp(_Act())
    with pytest.raises(HVPCheckError, match="FAILED.*once_differentiable.*finite-difference"):
        check_hvp(bad, ce, [(x, y)], seed=0)
    with pytest.warns(HVPCheckWarning, match="FAILED"):
        res = check_hvp(bad, ce, [(x, y)], seed=0, on_fail="warn")
    assert not res.ok and res.rel_error > 100 * res.allowed
    # the native float32 check is weaker but still sees a 10% error
    assert not check_hvp(bad, ce, [(x, y)], precision="native", on_fail="ignore").ok
    # and the trainer's eigenvalue function runs it on its first call
    f = WarmStartEigenvalue()
    with pytest.raises(HVPCheckError):
        f(bad, ce, [(x, y)], seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        WarmStartEigenvalue(hvp_check="warn")(bad, ce, [(x, y)], seed=0)
    assert any(issubclass(w.category, HVPCheckWarning) for w in caught)
    assert WarmStartEigenvalue(hvp_check="off")(bad, ce, [(x, y)], seed=0).n_hvp >= 1


def test_hvp_check_relu_cnn_is_not_a_false_alarm(ce):
    from hessbatch.deep import SmallCNN
    torch.manual_seed(0)
    m = SmallCNN((1, 12, 12), 3, width=2, hidden=8, activation="relu")
    x, y = torch.rand(32, 1, 12, 12), torch.randint(3, (32,))
    for s in range(3):
        assert check_hvp(m, ce, [(x, y)], seed=s).ok


def test_mean_loss_check(ce):
    model, x, y = _mlp(nn.Tanh())
    assert check_mean_loss(model, ce, (x, y)) <= 1e-5
    with pytest.raises(ValueError, match="mean loss over its batch.*reduction='sum'"):
        check_mean_loss(model, lambda o, t: F.cross_entropy(o, t, reduction="sum"), (x, y))
    w = torch.tensor([1.0, 5.0, 1.0, 0.2])
    with pytest.raises(ValueError, match="weighted mean"):
        check_mean_loss(model, lambda o, t: F.cross_entropy(o, t, weight=w), (x, y))
    f = WarmStartEigenvalue()
    with pytest.raises(ValueError, match="mean loss over its batch"):
        f(model, lambda o, t: F.cross_entropy(o, t, reduction="sum"), [(x, y)], seed=0)


# ------------------------------------------------------------------------------ finite differences

@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_finite_difference_hvp_against_the_exact_product(dtype, bound, ce):
    model, x, y = _mlp(nn.Softplus(), seed=1, dtype=dtype)
    exact = HessianOperator(model, ce, [(x, y)])
    fd = HessianOperator(model, ce, [(x, y)], backend="finite-difference")
    assert fd.backend == "finite_difference"
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(10):
        v = torch.randn(exact.dim, generator=g, dtype=torch.float64).to(dtype)
        a = flatten(exact.matvec(unflatten(v, exact.params)))
        b = flatten(fd.matvec(unflatten(v, fd.params)))
        worst = max(worst, float((a - b).norm() / a.norm()))
    assert worst <= bound
    before = [p.detach().clone() for p in model.parameters()]
    r = top_eigenvalue(model, ce, [(x, y)], backend="finite_difference", tol=0.0)
    ref = top_eigenvalue(model, ce, [(x, y)], tol=0.0)
    assert abs(r.value - ref.value) <= 10 * bound * ref.value
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ------------------------------------------------------------------------------ clear errors

def test_clear_errors_for_inference_mode_sparse_and_mixed_dtypes(ce):
    model, x, y = _mlp(nn.Tanh())
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            top_eigenvalue(model, ce, [(x, y)])
    emb = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(8, 3))
    idx, t = torch.randint(10, (6, 2)), torch.randint(3, (6,))
    with pytest.raises(ValueError, match="sparse=True.*sparse=False"):
        top_eigenvalue(emb, ce, [(idx, t)])
    # leaving the sparse embedding out of the block is fine
    assert top_eigenvalue(emb, ce, [(idx, t)], params=list(emb[2].parameters())).n_hvp >= 1
    mixed, x, y = _mlp(nn.Tanh())
    mixed[2].double()
    with pytest.raises(TypeError, match=r"mixed dtypes \['torch.float32', 'torch.float64'\]"):
        top_eigenvalue(mixed, ce, [(x, y)])


class _NoDoubleTanh(torch.autograd.Function):
    """tanh whose backward is once_differentiable: the HVP through it is silently wrong."""
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


def test_once_differentiable_is_silently_wrong_and_the_self_test_catches_it(ce):
    class Act(nn.Module):
        def forward(self, x):
            return _NoDoubleTanh.apply(x)

    model, x, y = _mlp(Act())
    wrong = top_eigenvalue(model, ce, [(x, y)], tol=0.0)       # no error from torch
    fd = top_eigenvalue(model, ce, [(x, y)], tol=0.0, backend="finite-difference")
    assert abs(wrong.value - fd.value) > 0.05 * fd.value
    with pytest.raises(HVPCheckError, match="FAILED"):
        check_hvp(model, ce, [(x, y)])


def test_a_missing_double_backward_names_the_finite_difference_option(ce):
    class Attention(nn.Module):   # CPU flash attention has no double backward
        def __init__(self):
            super().__init__()
            self.q, self.o = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            h = self.q(x).view(x.shape[0], 1, 2, 4)
            return self.o(F.scaled_dot_product_attention(h, h, h).mean(dim=(1, 2)))

    torch.manual_seed(0)
    model, x, y = Attention(), torch.randn(8, 2, 4), torch.randint(3, (8,))
    with pytest.raises(RuntimeError, match="backend='finite_difference'"):
        top_eigenvalue(model, ce, [(x, y)])
    r = top_eigenvalue(model, ce, [(x, y)], backend="finite-difference")
    assert r.value > 0 and r.n_hvp <= 10


def test_trainer_stops_on_a_sum_loss_at_the_first_check():
    from hessbatch.deep import synthetic_classification
    torch.manual_seed(0)
    data = synthetic_classification(128, (1, 4, 4), 3, seed=0)
    model = MLP((1, 4, 4), 3, hidden=(8,), activation="softplus")
    cfg = SchedulerConfig(method="abs", lr=0.01, batch_size=32, max_batch_size=128,
                          samples_per_epoch=128, epochs=1, check_every=64)
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01),
                 lambda o, t: F.cross_entropy(o, t, reduction="sum"), data, Scheduler(cfg),
                 hessian_batch_size=32)
    with pytest.raises(ValueError, match="mean loss over its batch"):
        tr.run()
    assert tr.events[-1][0] == "step"      # stopped at the check, nothing was skipped


def _noise_trainer(rule, patience=2):
    from hessbatch.deep import synthetic_classification
    from hessbatch.deep._noise import NoiseAwareEigenvalue
    torch.manual_seed(0)
    data = synthetic_classification(256, (1, 4, 4), 3, seed=0)
    model = MLP((1, 4, 4), 3, hidden=(8,), activation="softplus")
    cfg = SchedulerConfig(method="abs", lr=0.05, batch_size=32, max_batch_size=256,
                          samples_per_epoch=256, epochs=2, check_every=64, patience=patience)
    sch = Scheduler(cfg)
    eig = NoiseAwareEigenvalue(sch, rule)
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), F.cross_entropy, data,
                 sch, eigenvalue_fn=eig, hessian_batch_size=64, seed=1)
    return tr, eig


def test_noise_aware_eigenvalue_in_the_trainer():
    from hessbatch._noise_rule import NoiseRuleConfig
    from hessbatch.deep._noise import NoiseAwareEigenvalue
    # a guard that never opens: every check skipped, B never grows, no reference set
    tr, eig = _noise_trainer(NoiseRuleConfig(min_loss_fraction=1e-9))
    tr.run()
    assert all(e["action"] == "skip" for e in eig.log) and len(eig.log) == 8
    assert sum(m.eigenvalues_skipped for m in tr.history) == 8
    assert tr.scheduler.state.lam_ref is None and tr.scheduler.state.batch_size == 32
    # the rule off: the reported values are the plain solver's (same seeds), patience grows B
    tr, eig = _noise_trainer(NoiseRuleConfig())
    tr.run()
    assert [e["value"] for e in eig.log] == [e["mean"] for e in eig.log]
    assert tr.scheduler.state.batch_size > 32
    with pytest.raises(ValueError, match="parts must be an int >= 2"):
        NoiseAwareEigenvalue(tr.scheduler, NoiseRuleConfig(), parts=1)
    with pytest.raises(TypeError, match="scheduler must be"):
        NoiseAwareEigenvalue(None, NoiseRuleConfig())


@pytest.mark.filterwarnings("ignore")
def test_activation_checkpointing_reentrant_is_caught_non_reentrant_passes(ce):
    from torch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self, reentrant):
            super().__init__()
            self.a, self.b = nn.Sequential(nn.Linear(6, 10), nn.Softplus()), nn.Linear(10, 4)
            self.reentrant = reentrant

        def forward(self, x):
            return self.b(checkpoint(self.a, x, use_reentrant=self.reentrant))

    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(4, (40,))
    bad = check_hvp(Net(True), ce, [(x, y)], on_fail="ignore")
    assert not bad.ok and bad.rel_error > 0.1          # the first block's curvature is dropped
    good = check_hvp(Net(False), ce, [(x, y)])
    assert good.ok and good.rel_error <= 1e-6
    # the finite-difference backend sees the checkpointed blocks too
    m = Net(False).double()
    exact = HessianOperator(m, ce, [(x.double(), y)], reuse_graph=False)
    fd = HessianOperator(m, ce, [(x.double(), y)], backend="finite_difference")
    v = [torch.randn_like(p) for p in exact.params]
    a, b = flatten(exact.matvec(v)), flatten(fd.matvec(v))
    assert float((a - b).norm() / a.norm()) <= 1e-6


# ------------------------------------------------------------------------------ issue 22, section 4
# A self-test that cannot be fooled. Each test below fails on the code before issue 22.

class _CastNet(nn.Module):
    """A float32 model whose forward casts its logits with .float() (LLM style), optionally
    with a non-differentiable backward, a bfloat16 autocast head, or a bf16 round trip."""

    def __init__(self, nodouble=False, bf16_head=False, round_trip=False):
        super().__init__()
        self.a, self.b = nn.Linear(6, 10), nn.Linear(10, 4)
        self.nodouble, self.bf16_head, self.round_trip = nodouble, bf16_head, round_trip

    def forward(self, x):
        h = self.a(x)
        h = _NoDoubleTanh.apply(h) if self.nodouble else torch.tanh(h)
        if self.round_trip:
            h = h.bfloat16().to(x.dtype)
        if self.bf16_head:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.b(h).float()
        return self.b(h).float()


def _cast_case(**kw):
    torch.manual_seed(0)
    return _CastNet(**kw), torch.randn(40, 6), torch.randint(4, (40,))


def test_a_float_cast_is_reported_and_checked_at_its_real_precision(ce):
    """Before: the float64 copy computed in float32 behind the cast, the step was float64's,
    and the allowance widened to 1.4-2.0, so the check passed whatever the error. Now forward
    hooks see the cast, the check runs at float32 precision with a float32 allowance (never
    widened), and the correct model passes."""
    m, x, y = _cast_case()
    r = check_hvp(m, ce, [(x, y)], seed=0)
    assert r.verdict == "pass" and r.dtype == "float32"
    assert "(model):float32" in r.low_precision and r.allowed == pytest.approx(3.45e-3, rel=1e-2)
    assert r.rel_error <= 1e-3 and "does not compute in float64" in r.message()


def test_once_differentiable_behind_a_float_cast_is_caught_in_the_check_and_the_trainer(ce):
    """Before: passed the check (allowance widened) and ran 12.6% low with no warning."""
    m, x, y = _cast_case(nodouble=True)
    r = check_hvp(m, ce, [(x, y)], seed=0, on_fail="ignore")
    assert r.verdict == "fail" and r.rel_error > 100 * r.allowed and r.spread < r.allowed
    with pytest.raises(HVPCheckError, match="FAILED.*once_differentiable"):
        check_hvp(m, ce, [(x, y)], seed=0)
    with pytest.raises(HVPCheckError):
        WarmStartEigenvalue()(m, ce, [(x, y)], seed=0)


def test_finite_difference_backend_on_a_float_cast_model(ce):
    """Before: the step assumed float64, but the copy computed in float32: 59-105% off per
    product. Now the step comes from a ladder around the precision the hooks see."""
    m, x, y = _cast_case()
    exact = HessianOperator(m, ce, [(x, y)])
    fd = HessianOperator(m, ce, [(x, y)], backend="finite_difference")
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(5):
        v = torch.randn(exact.dim, generator=g)
        a = flatten(exact.matvec(unflatten(v, exact.params)))
        b = flatten(fd.matvec(unflatten(v, fd.params)))
        worst = max(worst, float((a - b).norm() / a.norm()))
    assert worst <= 1e-3
    assert "(model):float32" in fd.fd_low_precision and fd.fd_step_scale > 1e-4


def test_bfloat16_autocast_in_the_forward_is_caught_by_the_native_comparison(ce):
    """Before: the float64 copy is not touched by autocast (it only lowers float32), so the
    check passed while every product of the float32 model ran in bfloat16."""
    m, x, y = _cast_case(bf16_head=True)
    r = check_hvp(m, ce, [(x, y)], seed=0, on_fail="ignore")
    assert r.verdict == "fail" and r.native_rel_error > 1e-3
    assert r.rel_error <= r.allowed            # the float64 product itself is right
    with pytest.raises(HVPCheckError, match="reduced precision.*outside autocast"):
        check_hvp(m, ce, [(x, y)], seed=0)
    good, x, y = _cast_case()
    assert check_hvp(good, ce, [(x, y)], seed=0).native_rel_error <= 1e-5


def test_an_active_autocast_warns(ce):
    from hessbatch.deep._hvp import ReducedPrecisionWarning
    model, x, y = _mlp(nn.Softplus())
    with pytest.warns(ReducedPrecisionWarning, match=r"active autocast \(cpu:bfloat16\)"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            top_eigenvalue(model, ce, [(x, y)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReducedPrecisionWarning)
        top_eigenvalue(model, ce, [(x, y)])        # no autocast: no warning


def test_an_unresolvable_finite_difference_is_inconclusive_not_a_pass(ce):
    """A bfloat16 round trip hidden inside a module (no hook can see it): the finite
    difference cannot resolve the product. Before, the allowance widened to 4 x the spread
    and the check passed; now it is inconclusive, with a warning."""
    m, x, y = _cast_case(round_trip=True)
    with pytest.warns(HVPCheckWarning, match="INCONCLUSIVE"):
        r = check_hvp(m, ce, [(x, y)], seed=0)
    assert r.verdict == "inconclusive" and not r.ok
    assert r.allowed <= 3.5e-3 < r.spread     # the allowance did not grow to fit the noise


def test_batchnorm_without_running_stats_is_named(ce):
    """Before: caught by the mean-loss check but blamed on a sum or class weights."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, track_running_stats=False),
                      nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(3, (32,))
    with pytest.raises(ValueError, match=r"batch statistics.*'1'.*BatchNorm1d.*"
                                         r"track_running_stats=False") as exc:
        check_mean_loss(m, ce, (x, y))
    assert "reduction='sum'" not in str(exc.value)
