"""Hessian-vector products: exact against a dense float64 Hessian, both backends, batching,
blocks, graph reuse, mode/state hygiene and input validation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessbatch.deep import HessianOperator, hessian_vector_product
from hessbatch.deep._hvp import flatten, unflatten


def _mlp(seed=0, dropout=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 6), nn.Softplus()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(6, 3))
    return nn.Sequential(*layers).double()


def _cnn_bn(seed=0):
    """Conv -> BatchNorm -> softplus -> linear, with non-trivial running statistics."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Softplus(), nn.Dropout(0.3),
                      nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 1, 6, 6, dtype=torch.float64) * 2 + 1)
    m.train()
    return m


def _data(model, n=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 5) if isinstance(model[0], nn.Linear) else (n, 1, 6, 6)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    y = torch.randint(3, (n,), generator=g)
    return x, y


def _rand_vec(params, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


MODELS = {"mlp_dropout": lambda: _mlp(dropout=True), "cnn_bn": _cnn_bn}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("backend,reuse", [("double_backprop", True), ("double_backprop", False),
                                           ("forward_over_reverse", True)])
def test_hvp_equals_dense_hessian_times_vector(name, backend, reuse, exact_hessian, ce):
    model = MODELS[name]()
    x, y = _data(model)
    H = exact_hessian(model, ce, x, y)
    op = HessianOperator(model, ce, [(x, y)], backend=backend, reuse_graph=reuse)
    for seed in (2, 3):
        v = _rand_vec(op.params, seed)
        hv = flatten(op.matvec(v))
        torch.testing.assert_close(hv, H @ flatten(v), rtol=1e-10, atol=1e-12)
    assert op.n_hvp == 2
    if backend == "double_backprop" and reuse:
        # All columns at once (the slow backends are covered by the two products above).
        torch.testing.assert_close(op.dense(), H, rtol=1e-10, atol=1e-12)


def test_backends_agree_in_float32(ce):
    model = _cnn_bn().float()
    x, y = _data(model)
    x = x.float()
    ops = [HessianOperator(model, ce, [(x, y)], backend=b)
           for b in ("double_backprop", "forward_over_reverse")]
    v = [t.float() for t in _rand_vec(ops[0].params)]
    a, b = (flatten(op.matvec(v)) for op in ops)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["double_backprop", "forward_over_reverse"])
def test_batches_are_weighted_by_their_size(backend, ce):
    """Splitting the Hessian set unevenly changes nothing: H is that of the mean over all."""
    model = _cnn_bn()
    x, y = _data(model, n=20)
    v = _rand_vec([p for p in model.parameters()])
    whole = hessian_vector_product(model, ce, [(x, y)], v, backend=backend)
    parts = [(x[:3], y[:3]), (x[3:13], y[3:13]), (x[13:], y[13:])]
    split = hessian_vector_product(model, ce, parts, v, backend=backend)
    torch.testing.assert_close(flatten(split), flatten(whole), rtol=1e-12, atol=1e-14)
    # ...and an unweighted average of the three batch Hessians would differ.
    naive = sum(flatten(hessian_vector_product(model, ce, [b], v)) for b in parts) / 3
    assert not torch.allclose(naive, flatten(whole), rtol=1e-3)


def test_block_hessian_is_the_diagonal_block(exact_hessian, ce):
    model = _mlp()
    x, y = _data(model)
    block = list(model[2].parameters())            # the last layer: weight and bias
    H = exact_hessian(model, ce, x, y)
    n_first = sum(p.numel() for p in model[0].parameters())
    op = HessianOperator(model, ce, [(x, y)], params=block)
    assert op.dim == sum(p.numel() for p in block)
    torch.testing.assert_close(op.dense(), H[n_first:, n_first:], rtol=1e-10, atol=1e-12)
    op2 = HessianOperator(model, ce, [(x, y)], params=block, backend="forward_over_reverse")
    torch.testing.assert_close(op2.dense(), H[n_first:, n_first:], rtol=1e-10, atol=1e-12)


def test_hvp_is_the_slope_of_the_gradient(ce):
    """H v = (g(theta + h v) - g(theta - h v)) / 2h + O(h^2): a check independent of autograd's
    second derivatives."""
    model = _cnn_bn()
    x, y = _data(model)
    params = list(model.parameters())
    v = _rand_vec(params)
    hv = flatten(HessianOperator(model, ce, [(x, y)]).matvec(v))
    h = 1e-5
    grads = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.add_(sign * h * vi)
        grads.append(flatten(HessianOperator(model, ce, [(x, y)], reuse_graph=False).gradient()))
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.sub_(sign * h * vi)
    fd = (grads[0] - grads[1]) / (2 * h)
    assert (fd - hv).norm() <= 1e-6 * hv.norm()


def test_gradient_graph_is_built_once_and_reused(ce):
    model = _cnn_bn()
    x, y = _data(model)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    op = HessianOperator(model, ce, batches)
    assert len(calls) == 2                          # one forward per batch, at construction
    v = _rand_vec(op.params)
    first = flatten(op.matvec(v))
    for _ in range(4):
        torch.testing.assert_close(flatten(op.matvec(v)), first, rtol=0, atol=0)
    assert len(calls) == 2 and op.n_hvp == 5        # five products, no new forward pass
    op.release()
    torch.testing.assert_close(flatten(op.matvec(v)), first, rtol=1e-12, atol=1e-14)
    assert len(calls) == 4                          # released: rebuilt for the product

    calls.clear()
    lazy = HessianOperator(model, ce, batches, reuse_graph=False)
    assert len(calls) == 0
    lazy.matvec(v)
    lazy.matvec(v)
    assert len(calls) == 4


def _snapshot(model):
    return ({n: m.training for n, m in model.named_modules()},
            {n: b.clone() for n, b in model.named_buffers()})


@pytest.mark.parametrize("backend", ["double_backprop", "forward_over_reverse"])
def test_modes_buffers_and_grads_are_left_alone(backend, ce):
    model = _cnn_bn()
    model[1].eval()          # a frozen BatchNorm inside a model in train mode must stay frozen
    x, y = _data(model)
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)
    modes, buffers = _snapshot(model)
    op = HessianOperator(model, ce, [(x, y)], backend=backend)
    op.matvec(_rand_vec(op.params))
    modes2, buffers2 = _snapshot(model)
    assert modes2 == modes and model.training and not model[1].training
    for k in buffers:
        assert torch.equal(buffers[k], buffers2[k]), k
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 7.0))
    assert all(p.grad is None for p in model.parameters() if p is not model[0].weight)


def test_modes_restored_when_the_loss_raises():
    model = _cnn_bn()
    x, y = _data(model)

    def bad_loss(out, target):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        HessianOperator(model, bad_loss, [(x, y)])
    assert all(m.training for m in model.modules())


def test_loss_linear_in_parameters_has_zero_hessian():
    model = nn.Linear(4, 2).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    op = HessianOperator(model, lambda out, y: out.mean(), [(x, torch.zeros(5))])
    hv = op.matvec(_rand_vec(op.params))
    assert all(torch.count_nonzero(t) == 0 for t in hv)


def test_flatten_unflatten_round_trip():
    like = [torch.zeros(2, 3), torch.zeros(4), torch.zeros(1, 1, 2)]
    flat = torch.arange(12.0)
    parts = unflatten(flat, like)
    assert [p.shape for p in parts] == [t.shape for t in like]
    assert torch.equal(flatten(parts), flat)


# ------------------------------------------------------------------------------------------
# validation

def _ok():
    model = _mlp()
    x, y = _data(model, n=6)
    return model, x, y


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(model="net"), TypeError, "model must be a torch.nn.Module"),
    (dict(loss_fn=3), TypeError, "loss_fn must be callable"),
    (dict(batches="xy"), TypeError, "batches must be a list"),
    (dict(batches=[]), ValueError, "at least one"),
    (dict(batches="pair"), TypeError, "single \\(x, y\\) pair"),
    (dict(batches=[(1, 2)]), TypeError, r"batches\[0\] must be an \(x, y\) pair"),
    (dict(batches="mismatch"), ValueError, r"batches\[0\]: x has 6 samples but y has 5"),
    (dict(batches="empty"), ValueError, r"batches\[0\] is empty"),
    (dict(params="foreign"), ValueError, r"params\[0\].*not a parameter of the model"),
    (dict(params="frozen"), ValueError, r"params\[0\].*does not require grad"),
    (dict(params="twice"), ValueError, r"params\[1\].*listed twice"),
    (dict(params=[]), ValueError, "at least one parameter"),
    (dict(params="tensor"), TypeError, "params must be None or a list"),
    (dict(backend="finite_diff"), ValueError, "backend must be one of"),
    (dict(reuse_graph=1), TypeError, "reuse_graph must be a bool"),
    (dict(batches="nan"), ValueError, r"loss on batches\[0\] is nan"),
    (dict(loss_fn="vector"), ValueError, "must return a scalar tensor"),
])
def test_operator_rejects_bad_input(kwargs, exc, match):
    model, x, y = _ok()
    args = dict(model=model, loss_fn=F.cross_entropy, batches=[(x, y)], params=None,
                backend="double_backprop", reuse_graph=True)
    args.update(kwargs)
    special = {
        "pair": (x, y), "mismatch": [(x, y[:5])], "empty": [(x[:0], y[:0])],
        "nan": [(torch.full_like(x, math.nan), y)],
    }
    if isinstance(args["batches"], str) and args["batches"] in special:
        args["batches"] = special[args["batches"]]
    if args["loss_fn"] == "vector":
        args["loss_fn"] = lambda out, t: F.cross_entropy(out, t, reduction="none")
    if isinstance(args["params"], str):
        w = model[0].weight
        if args["params"] == "foreign":
            args["params"] = [nn.Parameter(torch.zeros(2))]
        elif args["params"] == "frozen":
            w.requires_grad_(False)
            args["params"] = [w]
        elif args["params"] == "twice":
            args["params"] = [w, w]
        else:
            args["params"] = w
    with pytest.raises(exc, match=match):
        HessianOperator(args.pop("model"), args.pop("loss_fn"), args.pop("batches"), **args)


def test_model_without_trainable_parameters_is_rejected():
    model = nn.Linear(2, 2)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="has none"):
        HessianOperator(model, F.cross_entropy, [(torch.zeros(2, 2), torch.zeros(2).long())])


@pytest.mark.parametrize("vector,exc,match", [
    ("short", ValueError, "one tensor per parameter"),
    ("shape", ValueError, r"vector\[0\] has shape \(1, 30\)"),
    ("nan", ValueError, r"vector\[1\] holds non-finite"),
    ("notlist", TypeError, "vector must be a list"),
    ("entry", TypeError, r"vector\[0\] must be a tensor"),
])
def test_matvec_rejects_bad_vectors(vector, exc, match):
    model, x, y = _ok()
    op = HessianOperator(model, F.cross_entropy, [(x, y)])
    v = _rand_vec(op.params)
    bad = {"short": v[:2], "shape": [v[0].reshape(1, -1)] + v[1:],
           "nan": [v[0], torch.full_like(v[1], math.inf)] + v[2:], "notlist": 3.0,
           "entry": [1.0] + v[1:]}[vector]
    with pytest.raises(exc, match=match):
        op.matvec(bad)
    assert op.n_hvp == 0


@pytest.mark.parametrize("bn_kwargs", [dict(), dict(affine=False),
                                       dict(track_running_stats=False)])
def test_batchnorm_variants(bn_kwargs, exact_hessian, ce):
    """BatchNorm in eval mode, with and without gamma/beta, and without running statistics (it
    then normalises with batch statistics even in eval mode): exact Hessians all the same."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, **bn_kwargs), nn.Softplus(),
                          nn.Linear(5, 3)).double()
    with torch.no_grad():
        model(torch.randn(32, 4, dtype=torch.float64) * 3 + 1)
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(3, (12,))
    H = exact_hessian(model, ce, x, y)
    op = HessianOperator(model, ce, [(x, y)])
    torch.testing.assert_close(op.dense(), H, rtol=1e-10, atol=1e-12)
