"""Exact Hessian-vector products over any PyTorch model and loss.

The Hessian is that of the training loss on a *Hessian set* made of one or several batches,
each batch entering with the weight of its size::

    L(theta) = sum_b (n_b / N) * loss_fn(model(x_b; theta), y_b),     N = sum_b n_b,

so that, when ``loss_fn`` is a mean over samples, ``L`` is the mean loss over all N samples and
``H = d^2 L / d theta^2`` is the Hessian the algorithm needs (ALGORITHM.md, step 3), whatever the
way the samples are split into batches. ``theta`` is either every parameter that requires
gradients or a chosen *block* of them (e.g. the last k layers): the block Hessian is the
corresponding diagonal block of the full Hessian, the other parameters held fixed.

Two ways to compute ``H v`` exactly (no finite differences):

* double backprop (reverse-over-reverse, the default): ``g = dL/dtheta`` is computed once with
  ``create_graph=True``; ``H v = d(g . v)/dtheta`` is one more backward pass through that graph.
  :class:`HessianOperator` keeps the graph, so the k products of one eigenvalue computation cost
  one forward/backward pass plus k backward passes over the gradient graph, not k full
  forward/double-backward passes (``reuse_graph=False`` trades that speed for memory).
* forward-over-reverse (``backend="forward_over_reverse"``): ``H v = jvp(grad L, theta, v)``
  with :mod:`torch.func`; each product re-runs the forward pass, nothing is kept between
  products. It is here to cross-check the first (the tests assert they agree).

The model is put in eval mode while its forward passes run (BatchNorm uses its running
statistics and does not update them, dropout is off) and every module's own mode is restored
afterwards, also on error. No ``.grad`` attribute of any parameter is touched.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

__all__ = ["HessianOperator", "hessian_vector_product", "ReducedPrecisionWarning"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple  # (x, y)

_BACKENDS = ("double_backprop", "forward_over_reverse", "finite_difference")


# ------------------------------------------------------------------------------------------
# validation helpers (shared with _eigen.py and _adversarial.py)


class ReducedPrecisionWarning(UserWarning):
    """Hessian-vector products are being computed in reduced precision (an active autocast)."""


def active_autocast() -> list[str]:
    """``["cpu:bfloat16", ...]``: the device types whose autocast is on here."""
    out = []
    for dev in ("cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(dev):
                out.append(f"{dev}:{str(torch.get_autocast_dtype(dev)).replace('torch.', '')}")
        except (RuntimeError, TypeError):  # a device type this build does not know
            continue
    return out


def warn_if_autocast(what: str) -> None:
    """Warn when called under an active autocast: the products would run in reduced precision
    (the top eigenvalue of a bfloat16 Hessian-vector product can be 10% or more off)."""
    on = active_autocast()
    if on:
        import warnings
        warnings.warn(
            f"{what} was called under an active autocast ({', '.join(on)}): its forward passes "
            "and Hessian-vector products run in reduced precision, so the eigenvalue can be "
            "far off. Compute it outside the autocast block (with torch.autocast(..., "
            "enabled=False): ...)", ReducedPrecisionWarning, stacklevel=3)


def _first_float(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_float(o)
            if t is not None:
                return t
    return None


def forward_dtypes(model: nn.Module, loss_fn: LossFn, batch: Batch) -> tuple[torch.dtype,
                                                                             list[str]]:
    """What precision the forward pass and the loss really run in, seen by forward hooks.

    One forward pass on ``batch`` (eval mode, no grad). Returns the lowest-precision floating
    dtype among every module's output and the loss (by machine epsilon), and the names of the
    modules whose output has a larger epsilon than the parameters (e.g. ``"head:float32"``
    for a ``.float()`` cast in a float64 model). A cast in the top module's ``forward`` shows
    as the name ``"(model)"``; a cast in ``loss_fn`` as ``"(loss)"``. A TorchScript model
    takes no hooks: only its output and the loss are seen.
    """
    params = [p for p in model.parameters() if p.is_floating_point()]
    ref = params[0].dtype if params else torch.float32
    seen: dict[str, torch.dtype] = {}
    names = {m: (n or "(model)") for n, m in model.named_modules()}

    def hook(module, _inp, out):
        t = _first_float(out)
        if t is not None:
            seen.setdefault(names.get(module, type(module).__name__), t.dtype)

    handles = []
    for m in model.modules():
        try:
            handles.append(m.register_forward_hook(hook))
        except RuntimeError:  # TorchScript modules take no hooks: their output is seen below
            continue
    try:
        x, y = batch
        with torch.no_grad(), eval_mode(model):
            out = model(x)
            loss = loss_fn(out, y)
    finally:
        for h in handles:
            h.remove()
    t = _first_float(out)
    if t is not None:
        seen.setdefault("(model)", t.dtype)
    if isinstance(loss, torch.Tensor) and loss.is_floating_point():
        seen["(loss)"] = loss.dtype
    eps = torch.finfo(ref).eps
    low = [f"{n}:{str(d).replace('torch.', '')}" for n, d in seen.items()
           if torch.finfo(d).eps > eps]
    worst = max([ref] + list(seen.values()), key=lambda d: torch.finfo(d).eps)
    return worst, low

@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module of ``model`` in eval mode; restore each module's own flag on exit.

    ``model.train(was_training)`` would not do: a user may keep, say, a frozen BatchNorm in eval
    mode inside a model in train mode, and that must survive.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in modes:
            m.training = flag


def check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_loss_fn(loss_fn: object) -> LossFn:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(outputs, targets), got "
                        f"{type(loss_fn).__name__}")
    return loss_fn


def resolve_params(model: nn.Module, params: Sequence[torch.Tensor] | None) -> list[nn.Parameter]:
    """The parameters to differentiate: all that require grad, or a validated block of them."""
    if params is None:
        out = [p for p in model.parameters() if p.requires_grad]
        if not out:
            raise ValueError("params=None selects the model's parameters that require grad, "
                             "and this model has none")
        return out
    if isinstance(params, torch.Tensor) or not isinstance(params, (list, tuple)):
        raise TypeError(f"params must be None or a list of the model's parameters, got "
                        f"{type(params).__name__}")
    if not params:
        raise ValueError("params must name at least one parameter, got an empty list")
    owned = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a parameter tensor, got {type(p).__name__}")
        if id(p) not in owned:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) is not a parameter of the "
                             "model")
        if not p.requires_grad:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) does not require grad; "
                             "only parameters that require grad can be differentiated")
        if id(p) in seen:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) is listed twice")
        seen.add(id(p))
    if len({p.device for p in params}) > 1:
        raise ValueError(f"params must all be on one device, got "
                         f"{sorted({str(p.device) for p in params})}")
    return list(params)


def check_differentiable(model: nn.Module, params: Sequence[torch.Tensor]) -> None:
    """Refuse, with the fix, what torch would fail on obscurely: inference tensors, sparse
    embedding gradients, parameters of mixed dtypes."""
    for i, p in enumerate(params):
        if p.is_inference():
            raise RuntimeError(
                f"params[{i}] (shape {tuple(p.shape)}) is an inference tensor (created under "
                "torch.inference_mode()), which autograd cannot differentiate; build or load "
                "the model outside inference_mode, or clone its parameters")
    ids = {id(p) for p in params}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and id(m.weight) in ids:
            raise ValueError(
                f"module {name or type(m).__name__!r} is an {type(m).__name__} with "
                "sparse=True: its gradient is a sparse tensor, which has no double backward. "
                f"Use sparse=False for the eigenvalue (or leave its weight out of params)")
    dtypes = sorted({str(p.dtype) for p in params})
    if len(dtypes) > 1:
        raise TypeError(
            f"params have mixed dtypes {dtypes}: a Hessian-vector product needs one dtype for "
            "all parameters (the direction v is one flat vector). Convert the model "
            "(model.to(torch.float32) or .double()), or pass params= with one dtype only")


def check_batches(batches: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A non-empty list of (x, y) tensor pairs with matching, non-zero sample counts."""
    if isinstance(batches, tuple) and len(batches) == 2 and all(
            isinstance(t, torch.Tensor) for t in batches):
        raise TypeError("batches must be a list of (x, y) pairs; got a single (x, y) pair "
                        "(wrap it: [(x, y)])")
    if not isinstance(batches, (list, tuple)):
        raise TypeError(f"batches must be a list of (x, y) tensor pairs, got "
                        f"{type(batches).__name__}")
    if not batches:
        raise ValueError("batches must hold at least one (x, y) pair, got an empty list")
    out = []
    for i, b in enumerate(batches):
        if not (isinstance(b, (list, tuple)) and len(b) == 2
                and all(isinstance(t, torch.Tensor) for t in b)):
            raise TypeError(f"batches[{i}] must be an (x, y) pair of tensors, got "
                            f"{type(b).__name__}")
        x, y = b
        if x.dim() == 0 or y.dim() == 0:
            raise ValueError(f"batches[{i}]: x and y need a leading sample dimension, got "
                             f"shapes {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"batches[{i}]: x has {x.shape[0]} samples but y has "
                             f"{y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError(f"batches[{i}] is empty (0 samples)")
        out.append((x, y))
    return out


def batch_loss(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
               index: int) -> torch.Tensor:
    """``loss_fn(model(x), y)``, checked to be a finite scalar."""
    loss = loss_fn(model(x), y)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor (the mean loss of the batch), got "
                         f"{shape} on batches[{index}]")
    if not torch.isfinite(loss.detach()):
        raise ValueError(f"the loss on batches[{index}] is {loss.item()}: the Hessian of a "
                         "non-finite loss is undefined (diverged model or NaN inputs?)")
    return loss


def check_vector(vector: object, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``vector`` as a list of tensors shaped like ``params`` (on their device and dtype)."""
    if isinstance(vector, torch.Tensor):
        vector = [vector]
    if not isinstance(vector, (list, tuple)):
        raise TypeError(f"vector must be a list of tensors shaped like the parameters, got "
                        f"{type(vector).__name__}")
    if len(vector) != len(params):
        raise ValueError(f"vector must hold one tensor per parameter ({len(params)}), got "
                         f"{len(vector)}")
    out = []
    for i, (v, p) in enumerate(zip(vector, params)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"vector[{i}] must be a tensor, got {type(v).__name__}")
        if v.shape != p.shape:
            raise ValueError(f"vector[{i}] has shape {tuple(v.shape)}, the parameter has "
                             f"{tuple(p.shape)}")
        if not torch.isfinite(v).all():
            raise ValueError(f"vector[{i}] holds non-finite values")
        out.append(v.detach().to(device=p.device, dtype=p.dtype))
    return out


# ------------------------------------------------------------------------------------------
# the operator

class HessianOperator:
    """The Hessian of the mean loss over a set of batches, as a matrix-free linear operator.

    ``H = d^2/dtheta^2 sum_b (n_b/N) loss_fn(model(x_b), y_b)`` with ``theta`` the chosen
    parameters (all that require grad by default, or a block). With the default backend and
    ``reuse_graph=True`` the gradient graph of every batch is built once, here, and each
    :meth:`matvec` is one backward pass through those graphs: that is what makes the k products
    of one eigenvalue computation cheap. The graphs hold activation memory until the operator is
    dropped or :meth:`release` is called; ``reuse_graph=False`` rebuilds them at each product.

    Args:
        model: any ``nn.Module``; eval mode while its forward passes run, each module's mode
            restored after.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss of a batch.
        batches: list of ``(x, y)`` tensor pairs, already on the model's device.
        params: ``None`` (every parameter that requires grad) or a list of the model's
            parameters (block Hessian).
        backend: ``"double_backprop"``, ``"forward_over_reverse"`` (torch.func; no graph kept)
            or ``"finite_difference"`` (also spelt ``"finite-difference"``): ``(g(theta+hv) -
            g(theta-hv)) / 2h``, two gradients per product, for models without double
            backward; computed on a float64 copy of the model, the step ``h = c / |v|`` chosen
            once, on the first product, from a ladder of steps around ``eps^(1/3) max(|theta|,
            1)`` (:func:`adaptive_fd`; ``eps`` that of the precision the copy's forward really
            runs in, seen by forward hooks): within 1e-6 relative of the exact product on the
            tests' float64-clean models, 1e-4 on a model that casts its logits to float32.
        reuse_graph: keep the gradient graph between products (double backprop only).

    Raises:
        TypeError, ValueError: bad model, loss, batches, params or backend; a non-finite loss;
            parameters of mixed dtypes; a sparse embedding among the parameters.
        RuntimeError: called under ``torch.inference_mode()`` or on inference tensors.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(8, 3), torch.randint(2, (8,))
        >>> H = HessianOperator(model, torch.nn.functional.cross_entropy, [(x, y)])
        >>> hv = H.matvec([torch.ones_like(p) for p in H.params])
        >>> [t.shape for t in hv] == [p.shape for p in H.params], H.n_hvp
        (True, 1)
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *,
                 params: Sequence[torch.Tensor] | None = None, backend: str = "double_backprop",
                 reuse_graph: bool = True) -> None:
        warn_if_autocast("HessianOperator (top_eigenvalue, check_hvp)")
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "HessianOperator (and top_eigenvalue) was called under torch.inference_mode(): "
                "no gradient, let alone a Hessian, can be computed there. Call it outside the "
                "inference_mode block (torch.no_grad() around it is fine: gradients are "
                "re-enabled inside)")
        self.model = check_model(model)
        self.loss_fn = check_loss_fn(loss_fn)
        self.batches = check_batches(batches)
        self.params = resolve_params(self.model, params)
        check_differentiable(self.model, self.params)
        if isinstance(backend, str):
            backend = backend.replace("-", "_")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if not isinstance(reuse_graph, bool):
            raise TypeError(f"reuse_graph must be a bool, got {type(reuse_graph).__name__}")
        self.backend = backend
        self.reuse_graph = reuse_graph and backend == "double_backprop"
        sizes = [int(x.shape[0]) for x, _ in self.batches]
        self.n_samples = sum(sizes)
        self.weights = [n / self.n_samples for n in sizes]
        #: number of Hessian-vector products computed so far
        self.n_hvp = 0
        #: number of scalar coordinates of theta (the operator is dim x dim)
        self.dim = sum(p.numel() for p in self.params)
        self.device = self.params[0].device
        self._grad: list[torch.Tensor] | None = None
        self._fd_twin: HessianOperator | None = None
        #: finite_difference backend: ``h |v|`` chosen on the first product (None before)
        self.fd_step_scale: float | None = None
        #: finite_difference backend: the step ladder's spread at the chosen step
        self.fd_spread: float = math.nan
        #: finite_difference backend: modules of the float64 copy that compute in lower
        #: precision (see :func:`forward_dtypes`)
        self.fd_low_precision: list[str] = []
        self.loss: float = math.nan
        if self.reuse_graph:
            self._grad = self._gradient(create_graph=True)

    # -- gradients ------------------------------------------------------------------------

    def _gradient(self, create_graph: bool) -> list[torch.Tensor]:
        """``dL/dtheta`` summed over the batches, with its graph when ``create_graph``."""
        total: list[torch.Tensor] | None = None
        loss_sum = 0.0
        with eval_mode(self.model), torch.enable_grad():
            for i, ((x, y), w) in enumerate(zip(self.batches, self.weights)):
                loss = batch_loss(self.model, self.loss_fn, x, y, i)
                loss_sum += w * float(loss.detach())
                g = torch.autograd.grad(loss * w, self.params, create_graph=create_graph,
                                        allow_unused=True)
                g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, self.params)]
                # Summing the per-batch gradients ties all graphs into one, so a product is a
                # single backward call however many batches there are.
                total = g if total is None else [a + b for a, b in zip(total, g)]
        self.loss = loss_sum
        assert total is not None
        return total

    def gradient(self) -> list[torch.Tensor]:
        """The gradient ``dL/dtheta`` (detached), one tensor per parameter."""
        if self._grad is not None:
            return [g.detach() for g in self._grad]
        return [g.detach() for g in self._gradient(create_graph=False)]

    # -- products ---------------------------------------------------------------------------

    def matvec(self, vector: Sequence[torch.Tensor], *, check: bool = True) -> list[torch.Tensor]:
        """``H v`` for ``v`` given as one tensor per parameter; returns the same layout.

        Args:
            vector: one tensor per parameter.
            check: validate ``vector`` (shapes, finiteness; one test per tensor). The solvers
                pass False for their own vectors and test the scalars of each product instead.

        Raises:
            ValueError: ``vector`` does not match the parameters or holds NaN/inf.
        """
        v = check_vector(vector, self.params) if check else list(vector)
        self.n_hvp += 1
        if self.backend == "forward_over_reverse":
            return self._hvp_forward_over_reverse(v)
        if self.backend == "finite_difference":
            return self._hvp_finite_difference(v)
        try:
            return self._hvp_double_backprop(v)
        except RuntimeError as exc:
            text = str(exc).lower()
            if "derivative for" in text and "not implemented" in text or \
                    "once_differentiable" in text or "does not require grad" in text:
                raise RuntimeError(
                    f"{exc}\n\nhessbatch: this model has no double backward here, so the exact "
                    "Hessian-vector product cannot be computed. Use "
                    "backend='finite_difference' (hvp='finite-difference': central "
                    "differences of two gradients per product on a float64 copy of the "
                    "model)") from exc
            raise

    def _hvp_finite_difference(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        # In float64, on a copy of the model: in float32 a finite difference of a network with
        # ReLU or max-pooling is 1e-1 to 1 off whatever the step (kinks crossed by a large
        # step, rounding for a small one). The copy is private, so moving its parameters in
        # place (finite_difference_hvp) cannot invalidate anyone's graph. The step is chosen
        # once, on the first product, by adaptive_fd (a ladder of steps around
        # eps^(1/3), eps that of the precision the copy's forward really runs in: a .float()
        # cast in the forward makes it float32 whatever the copy's dtype), then reused as
        # h = step_scale / |v|.
        if self._fd_twin is None:
            model, batches, params = float64_copy(self.model, self.batches, self.params)
            self._fd_twin = HessianOperator(model, self.loss_fn, batches, params=params,
                                            backend="forward_over_reverse")
        twin = self._fd_twin
        v64 = [t.detach().double() for t in v]
        norm = math.sqrt(sum(float(t.pow(2).sum()) for t in v64))
        if norm == 0.0:
            return [torch.zeros_like(p) for p in self.params]
        if self.fd_step_scale is None:
            dtype, self.fd_low_precision = forward_dtypes(twin.model, twin.loss_fn,
                                                          twin.batches[0])
            hv, h, self.fd_spread = adaptive_fd(twin, v64, torch.finfo(dtype).eps)
            self.fd_step_scale = h * norm
        else:
            hv = finite_difference_hvp(twin, v64, self.fd_step_scale / norm)
        if not all(bool(torch.isfinite(t).all()) for t in hv):
            raise ValueError("the finite-difference Hessian-vector product is not finite "
                             "(non-finite loss?)")
        return [t.to(dtype=p.dtype) for t, p in zip(hv, self.params)]

    def _hvp_double_backprop(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        grad = self._grad if self._grad is not None else self._gradient(create_graph=True)
        if not any(g.requires_grad for g in grad):
            # The gradient does not depend on theta at all (e.g. a loss linear in theta).
            return [torch.zeros_like(p) for p in self.params]
        # grad_outputs=v computes sum_i v_i * d g_i / d theta = H v in one backward pass.
        outs = [g for g in grad if g.requires_grad]
        vs = [vi for g, vi in zip(grad, v) if g.requires_grad]
        hv = torch.autograd.grad(outs, self.params, grad_outputs=vs,
                                 retain_graph=self._grad is not None, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, self.params)]

    __call__ = matvec

    def _hvp_forward_over_reverse(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        from torch.func import functional_call, grad, jvp

        names = {id(p): n for n, p in self.model.named_parameters()}
        keys = [names[id(p)] for p in self.params]
        primals = tuple(p.detach() for p in self.params)
        total = [torch.zeros_like(p) for p in self.params]
        with eval_mode(self.model):
            for i, ((x, y), w) in enumerate(zip(self.batches, self.weights)):
                def loss_of(*theta, x=x, y=y, i=i):
                    out = functional_call(self.model, dict(zip(keys, theta)), (x,),
                                          strict=False, tie_weights=True)
                    loss = self.loss_fn(out, y)
                    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                        raise ValueError("loss_fn must return a scalar tensor (the mean loss "
                                         f"of the batch), on batches[{i}]")
                    return loss

                argnums = tuple(range(len(primals)))
                _, hv = jvp(grad(loss_of, argnums=argnums), primals, tuple(v))
                total = [t + w * h for t, h in zip(total, hv)]
        if not all(torch.isfinite(t).all() for t in total):
            raise ValueError("the Hessian-vector product is not finite (non-finite loss?)")
        return [t.detach() for t in total]

    def release(self) -> None:
        """Free the kept gradient graph; later products rebuild it each time."""
        self._grad = None
        self.reuse_graph = False

    def dense(self) -> torch.Tensor:
        """The explicit ``dim x dim`` Hessian, one product per column: for tests, tiny models."""
        if self.dim > 20000:
            raise ValueError(f"dense() builds a {self.dim} x {self.dim} matrix; refusing above "
                             "20000 parameters")
        cols = []
        offsets = [0]
        for p in self.params:
            offsets.append(offsets[-1] + p.numel())
        for j in range(self.dim):
            e = torch.zeros(self.dim, dtype=self.params[0].dtype, device=self.device)
            e[j] = 1
            hv = self.matvec(unflatten(e, self.params))
            cols.append(flatten(hv))
        return torch.stack(cols, dim=1)


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def float64_copy(model: nn.Module, batches: Sequence[Batch],
                 params: Sequence[torch.Tensor] | None):
    """A float64 deep copy of the model, its floating batches and its block of parameters."""
    import copy

    names = {id(p): n for n, p in model.named_parameters()}
    twin = copy.deepcopy(model).double()
    own = dict(twin.named_parameters())
    block = None if params is None else [own[names[id(p)]] for p in params]
    batches = [(x.double() if x.is_floating_point() else x,
                y.double() if y.is_floating_point() else y) for x, y in batches]
    return twin, batches, block


def fd_step(params: Sequence[torch.Tensor], v_norm: float) -> float:
    """``h = eps^(1/3) max(|theta|, 1) / |v|`` for the parameters' dtype."""
    eps = torch.finfo(params[0].dtype).eps
    theta = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))
    return eps ** (1 / 3) * max(theta, 1.0) / max(v_norm, 1e-300)


def adaptive_fd(op: HessianOperator, vector: Sequence[torch.Tensor], eps: float,
                rungs: int = 4) -> tuple[list[torch.Tensor], float, float]:
    """A central finite difference whose step is chosen from a ladder, not assumed.

    Steps ``h_j = eps^(1/3) max(|theta|, 1) / |v| * 4^(1-j)``, ``j = 0..rungs-1`` (``eps`` the
    machine epsilon of the precision the forward pass *really* runs in). The truncation error
    falls as ``h^2`` and the rounding error grows as ``eps / h``; where two neighbouring
    estimates agree best, both are near the balance. Returns the smaller step's estimate of the
    best pair, that step, and the pair's relative disagreement (the *spread*, an estimate of
    the estimate's own error). Costs ``2 rungs`` gradients.
    """
    v = [t.detach() for t in vector]
    vn = math.sqrt(sum(float(t.double().pow(2).sum()) for t in v))
    base = eps ** (1 / 3) * max(_norm(op.params), 1.0) / max(vn, 1e-300)
    steps = [base * 4.0 ** (1 - j) for j in range(rungs)]
    fds = [flatten(finite_difference_hvp(op, v, h)) for h in steps]
    best, spread = 1, math.inf
    for j in range(rungs - 1):
        a, b = fds[j], fds[j + 1]
        scale = max(float(a.norm()), float(b.norm()), 1e-300)
        d = float((a - b).norm()) / scale
        if d < spread:
            best, spread = j + 1, d
    return unflatten(fds[best], op.params), steps[best], spread


def finite_difference_hvp(op: HessianOperator, vector: Sequence[torch.Tensor],
                          h: float | None = None) -> list[torch.Tensor]:
    """``(g(theta + h v) - g(theta - h v)) / 2h``, the gradients of ``op``'s mean loss.

    The parameters of ``op`` are moved in place (no graph) and restored bit for bit, also on
    error: callers pass a private float64 copy of the model (the ``finite_difference`` backend
    and :func:`~hessbatch.deep.check_hvp` do). In place, not through
    ``torch.func.functional_call``, because activation checkpointing recomputes its blocks
    during the backward pass, after a functional call has put the original parameters back
    (that gave a 7% error on a correctly checkpointed model). ``h`` defaults to
    :func:`fd_step`. The error is ``O(h^2)`` (third derivatives) plus ``O(eps |g| / h)``.
    """
    v = [t.detach() for t in vector]
    if h is None:
        h = fd_step(op.params, math.sqrt(sum(float(t.double().pow(2).sum()) for t in v)))
    saved = [p.detach().clone() for p in op.params]
    try:
        with torch.no_grad():
            for p, s0, t in zip(op.params, saved, v):
                p.copy_(s0 + h * t)
        g_plus = [g.detach() for g in op._gradient(create_graph=False)]
        with torch.no_grad():
            for p, s0, t in zip(op.params, saved, v):
                p.copy_(s0 - h * t)
        g_minus = [g.detach() for g in op._gradient(create_graph=False)]
    finally:
        with torch.no_grad():
            for p, s0 in zip(op.params, saved):
                p.copy_(s0)
    return [(a - b) / (2 * h) for a, b in zip(g_plus, g_minus)]


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped (and typed) like ``like``."""
    out, i = [], 0
    for p in like:
        n = p.numel()
        out.append(flat[i:i + n].view(p.shape).to(p.dtype))
        i += n
    return out


def hessian_vector_product(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch],
                           vector: Sequence[torch.Tensor], *,
                           params: Sequence[torch.Tensor] | None = None,
                           backend: str = "double_backprop") -> list[torch.Tensor]:
    """One exact Hessian-vector product ``H v`` of the mean loss over ``batches``.

    ``H = d^2/dtheta^2 sum_b (n_b/N) loss_fn(model(x_b), y_b)``; for several products of the
    same Hessian build a :class:`HessianOperator` once instead (it keeps the gradient graph).

    Args:
        model, loss_fn, batches, params, backend: as for :class:`HessianOperator`.
        vector: one tensor per parameter in ``params`` (or per parameter requiring grad).

    Returns:
        ``H v`` as a list of detached tensors shaped like the parameters.

    Raises:
        TypeError, ValueError: as :class:`HessianOperator`, or a mismatched/non-finite vector.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x = torch.eye(2); y = torch.zeros(2, 1)
        >>> mse = torch.nn.functional.mse_loss        # L = |x w|^2 / 2, H = x^T x = I
        >>> hessian_vector_product(model, mse, [(x, y)], [torch.tensor([[1.0, 2.0]])])
        [tensor([[1., 2.]])]
    """
    op = HessianOperator(model, loss_fn, batches, params=params, backend=backend,
                         reuse_graph=False)
    return op.matvec(vector)
