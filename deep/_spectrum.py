"""Curvature measurements for the precursor study: top-k spectrum, trace, input-space Hessian.

Three quantities, all exact up to the stated tolerance or a stated standard error:

* :func:`top_k_eigenvalues`: the k largest eigenvalues of the Hessian of the *mean loss over a
  whole data set*, ``H = d^2/dtheta^2 (1/N) sum_i loss_i``, by block Lanczos with full
  re-orthogonalisation. Products ``H V`` with a block ``V`` of vectors are accumulated over
  micro-batches (:class:`DatasetHessian`): one micro-batch's gradient graph at a time is built,
  used for the ``p`` columns of ``V`` and freed, so memory is bounded by one micro-batch,
  whatever the data set size, and each micro-batch's forward pass serves ``p`` products.
* :func:`hutchinson_trace`: ``tr H = E[z^T H z]`` for Rademacher ``z`` (independent +-1
  entries), the mean of ``m`` probes with its standard error ``s / sqrt(m)``.
* :func:`input_hessian_extremes`: for each input ``x_i`` separately, the largest and smallest
  eigenvalues of ``d^2 loss(f(x_i), y_i) / d x_i^2`` by Lanczos run on all samples at once.
  For a network that is piecewise linear in its input (ReLU, max-pooling, linear layers) with
  softmax cross-entropy, that Hessian is ``J^T (diag(p) - p p^T) J`` (``J = df/dx``, ``p`` the
  softmax) almost everywhere: positive semi-definite, so the inner maximisation of robust
  training has no saddle points. With softplus the term ``sum_c (p_c - y_c) d^2 f_c/dx^2`` is
  added and the Hessian need not be PSD.

Block Lanczos (Golub and Underwood's block form of Lanczos' method): with ``Q_1`` an orthonormal
random ``dim x p`` block, ``H Q_j = Q_{j-1} B_{j-1}^T + Q_j A_j + Q_{j+1} B_j``; the projection
``T = Q^T H Q`` is block tridiagonal with blocks ``A_j`` and ``B_j``; its eigenpairs
``(theta_i, s_i)`` are the Ritz pairs. Every new block is orthogonalised twice against all the
previous ones, so no spurious copies appear. The residual of a Ritz pair is exactly
``|| H y_i - theta_i y_i || = || W s_i^{last} ||`` (``W`` the last orthogonalised block), and a
symmetric matrix has an eigenvalue within that residual of ``theta_i``; Ritz values also lie
below the eigenvalues they approximate (Cauchy interlacing), ``theta_i <= lambda_i``. The
iteration stops when every one of the top k residuals is at most
``tol * max(|theta_i|, 1e-2 |theta_1|)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from hessbatch.theory import t_quantile  # the project's one Student-t quantile (stdlib, exact)

import torch
import torch.nn.functional as F
from torch import nn

from ._hvp import HessianOperator, flatten, unflatten

__all__ = ["DatasetHessian", "SpectrumResult", "TraceResult", "top_k_eigenvalues",
           "hutchinson_trace", "bottom_eigenvalue", "t_quantile", "input_hessian_extremes",
           "input_hessian_dense"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _check_tol(tol: object) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"tol must be a float, got {type(tol).__name__}")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol}")
    return float(tol)


class DatasetHessian:
    """The Hessian of the mean loss over a data set, applied to blocks of vectors.

    ``H = sum_b (n_b / N) d^2 loss_fn(model(x_b), y_b) / d theta^2`` over micro-batches ``b``
    of at most ``micro_batch`` samples (``loss_fn`` is the mean over its batch). One
    :meth:`matmat` runs every micro-batch once: its gradient graph is built, serves each column
    of the block, and is freed before the next micro-batch.

    Args:
        model: an ``nn.Module`` (eval mode during products, each module's mode restored).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        x, y: the whole data set as tensors (inputs, targets), on the model's device.
        micro_batch: samples per forward pass (memory bound), >= 1.
        params: ``None`` (all parameters that require grad) or a block of them.

    Raises:
        TypeError, ValueError: bad tensors or sizes (and whatever :class:`HessianOperator`
            raises, e.g. a non-finite loss).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                 micro_batch: int = 1024, params: Sequence[torch.Tensor] | None = None):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"x and y must be tensors, got {type(x).__name__} and "
                            f"{type(y).__name__}")
        if x.dim() == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"x and y must hold the same non-zero number of samples, got "
                             f"shapes {tuple(x.shape)} and {tuple(y.shape)}")
        _check_int("micro_batch", micro_batch, 1)
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.micro_batch = micro_batch
        # Validates model, loss and params once, on the first micro-batch.
        probe = HessianOperator(model, loss_fn, [(x[:micro_batch], y[:micro_batch])],
                                params=params, reuse_graph=False)
        self.params = probe.params
        self.dim = probe.dim
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.n_samples = int(x.shape[0])
        #: Hessian-vector products so far (a block of p columns counts p)
        self.n_hvp = 0
        #: passes over the data set so far (one per matmat)
        self.n_passes = 0
        #: called as ``on_pass(self)`` after every pass (progress display); None: nothing
        self.on_pass: Callable[["DatasetHessian"], None] | None = None

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        """``H V`` for ``V`` a ``dim x p`` matrix (flat parameter vectors as columns).

        Raises:
            ValueError: a block of the wrong shape.
        """
        if block.dim() != 2 or block.shape[0] != self.dim:
            raise ValueError(f"block must be a ({self.dim}, p) matrix, got {tuple(block.shape)}")
        out = torch.zeros_like(block)
        cols = [unflatten(block[:, j].contiguous(), self.params) for j in range(block.shape[1])]
        for start in range(0, self.n_samples, self.micro_batch):
            xb = self.x[start:start + self.micro_batch]
            yb = self.y[start:start + self.micro_batch]
            w = xb.shape[0] / self.n_samples
            op = HessianOperator(self.model, self.loss_fn, [(xb, yb)], params=self.params,
                                 reuse_graph=True)
            try:
                for j, v in enumerate(cols):
                    out[:, j] += w * flatten(op.matvec(v))
            finally:
                op.release()
        self.n_hvp += block.shape[1]
        self.n_passes += 1
        if self.on_pass is not None:
            self.on_pass(self)
        return out

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v``."""
        return self.matmat(vector.reshape(-1, 1))[:, 0]


@dataclass
class SpectrumResult:
    """Top-k Ritz values of a symmetric operator.

    Fields:
        values: the k largest Ritz values, descending.
        residuals: ``||H y_i - theta_i y_i||`` for each (exact for the computed basis).
        vectors: the Ritz vectors (flat, ``dim x k``), unit norm.
        n_hvp: Hessian-vector products spent.
        blocks: Lanczos blocks run.
        converged: every residual met the tolerance (or the Krylov space became invariant).
    """

    values: list[float]
    residuals: list[float]
    vectors: torch.Tensor
    n_hvp: int
    blocks: int
    converged: bool

    def to_dict(self) -> dict:
        """JSON-able summary (no vectors)."""
        return {"values": self.values, "residuals": self.residuals, "n_hvp": self.n_hvp,
                "blocks": self.blocks, "converged": self.converged}


def _orth_block(w: torch.Tensor, basis: list[torch.Tensor], gen: torch.Generator,
                scale: float) -> torch.Tensor:
    """An orthonormal block spanning ``w``'s part outside ``basis``, topped up at random."""
    for _ in range(2):
        for qb in basis:
            w = w - qb @ (qb.T @ w)
    q, r = torch.linalg.qr(w)
    bad = r.diagonal().abs() <= 1e-10 * max(scale, 1e-300)
    if bool(bad.any()):
        # w is (numerically) rank deficient: its columns found an invariant subspace. Replace the
        # missing directions by random ones, orthogonal to everything so far; the recurrence
        # stays exact because w has no component along them.
        extra = torch.randn(q.shape[0], int(bad.sum()), generator=gen, dtype=torch.float64)
        extra = extra.to(device=q.device, dtype=q.dtype)
        good = q[:, ~bad]
        for _ in range(2):
            for qb in basis + [good]:
                extra = extra - qb @ (qb.T @ extra)
        extra, _ = torch.linalg.qr(extra)
        q = torch.cat([good, extra], dim=1)
    return q


def top_k_eigenvalues(op: DatasetHessian | Callable[[torch.Tensor], torch.Tensor], k: int = 5,
                      *, dim: int | None = None, block_size: int | None = None,
                      max_hvp: int = 400, tol: float = 1e-4, seed: int = 0,
                      dtype: torch.dtype | None = None,
                      device: torch.device | None = None) -> SpectrumResult:
    """The k largest eigenvalues of a symmetric operator by block Lanczos (module docstring).

    Args:
        op: a :class:`DatasetHessian` or any ``V -> H V`` callable on ``dim x p`` matrices
            (then pass ``dim``, and ``dtype``/``device`` unless float64 on the CPU).
        k: eigenvalues wanted, >= 1.
        block_size: vectors per block (default ``k``).
        max_hvp: products at most (the budget, in columns); at least one block is run.
        tol: residual tolerance, ``||H y_i - theta_i y_i|| <= tol max(|theta_i|, 1e-2|theta_1|)``
            for the top k; there is then an eigenvalue within that distance of each theta_i.
        seed: seeds the random start block.

    Returns:
        :class:`SpectrumResult`. ``converged`` False means the budget ran out first.

    Raises:
        TypeError, ValueError: bad k, block size, budget, tolerance, or k > dim.

    Example:
        >>> import torch
        >>> a = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
        >>> r = top_k_eigenvalues(lambda v: a @ v, 3, dim=20, max_hvp=60)
        >>> [round(v, 8) for v in r.values], r.converged
        ([20.0, 19.0, 18.0], True)
    """
    _check_int("k", k, 1)
    _check_int("max_hvp", max_hvp, 1)
    _check_int("seed", seed, 0)
    tol = _check_tol(tol)
    if isinstance(op, DatasetHessian):
        matmat, dim = op.matmat, op.dim
        dtype, device = op.dtype, op.device
    elif callable(op):
        if dim is None:
            raise ValueError("dim is required when op is a plain callable")
        _check_int("dim", dim, 1)
        matmat = op
        dtype = dtype or torch.float64
        device = device or torch.device("cpu")
    else:
        raise TypeError(f"op must be a DatasetHessian or a callable, got {type(op).__name__}")
    if k > dim:
        raise ValueError(f"k = {k} eigenvalues asked of a {dim} x {dim} operator")
    p = k if block_size is None else _check_int("block_size", block_size, 1)
    p = min(p, dim)
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(dim, p, generator=gen, dtype=torch.float64).to(device=device,
                                                                        dtype=dtype)
    q, _ = torch.linalg.qr(start)
    basis = [q]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    n_hvp, converged = 0, False
    values: list[float] = []
    residuals: list[float] = []
    s_top = None
    while True:
        w = matmat(basis[-1])
        n_hvp += basis[-1].shape[1]
        a = basis[-1].T @ w
        a = (a + a.T) / 2
        alphas.append(a)
        w = w - basis[-1] @ a
        if betas:
            w = w - basis[-2] @ betas[-1].T
        for _ in range(2):  # full re-orthogonalisation, twice ("twice is enough")
            for qb in basis:
                w = w - qb @ (qb.T @ w)
        # the block tridiagonal projection T = Q^T H Q
        sizes = [b.shape[1] for b in basis]
        offs = [0]
        for s in sizes:
            offs.append(offs[-1] + s)
        t = torch.zeros(offs[-1], offs[-1], dtype=torch.float64)
        for j, aj in enumerate(alphas):
            t[offs[j]:offs[j + 1], offs[j]:offs[j + 1]] = aj.to(torch.float64).cpu()
        for j, bj in enumerate(betas):
            bj64 = bj.to(torch.float64).cpu()
            t[offs[j + 1]:offs[j + 2], offs[j]:offs[j + 1]] = bj64
            t[offs[j]:offs[j + 1], offs[j + 1]:offs[j + 2]] = bj64.T
        evals, evecs = torch.linalg.eigh(t)
        kk = min(k, offs[-1])
        order = torch.arange(offs[-1] - 1, offs[-1] - 1 - kk, -1)
        values = [float(evals[i]) for i in order]
        s_top = evecs[:, order]
        last = s_top[offs[-2]:offs[-1], :].to(device=device, dtype=dtype)
        res = (w @ last).norm(dim=0)
        residuals = [float(r) for r in res]
        top = max(abs(values[0]), 1e-300)
        wnorm = float(w.norm())
        invariant = wnorm <= 1e-12 * top or offs[-1] >= dim
        if kk == k and all(r <= tol * max(abs(v), 1e-2 * top)
                           for r, v in zip(residuals, values)):
            converged = True
            break
        if invariant:
            converged = kk == k
            break
        if n_hvp + p > max_hvp:
            break
        qn = _orth_block(w, basis, gen, top)
        qn = qn[:, :min(p, dim - offs[-1])]
        betas.append(qn.T @ w)
        basis.append(qn)
    assert s_top is not None
    vecs = torch.zeros(dim, s_top.shape[1], dtype=dtype, device=device)
    for j, qb in enumerate(basis[:len(alphas)]):
        lo = sum(b.shape[1] for b in basis[:j])
        vecs += qb @ s_top[lo:lo + qb.shape[1], :].to(device=device, dtype=dtype)
    vecs = vecs / vecs.norm(dim=0, keepdim=True).clamp_min(1e-300)
    return SpectrumResult(values=values, residuals=residuals, vectors=vecs, n_hvp=n_hvp,
                          blocks=len(alphas), converged=converged)


def bottom_eigenvalue(op: DatasetHessian | Callable[[torch.Tensor], torch.Tensor], *,
                      dim: int | None = None, max_hvp: int = 100, tol: float = 1e-2,
                      seed: int = 0, dtype: torch.dtype | None = None,
                      device: torch.device | None = None) -> dict:
    """The most negative (smallest) eigenvalue of a symmetric operator: Lanczos on ``-H``.

    The top Ritz value ``theta`` of ``-H`` is a Rayleigh quotient, so ``lambda_min(H) <= -theta``
    whether or not the iteration converged: a negative ``value`` *proves* negative curvature
    (a saddle, not a minimum) of at least that size. With the residual ``r``, ``H`` also has an
    eigenvalue in ``[value - r, value + r]``.

    Args:
        op, dim, dtype, device: as for :func:`top_k_eigenvalues`.
        max_hvp: products at most (single-vector Lanczos).
        tol: relative residual tolerance, ``r <= tol |value|``.
        seed: seeds the start vector.

    Returns:
        ``{"value", "residual", "converged", "n_hvp"}``; ``value`` is the smallest Ritz value.

    Example:
        >>> import torch
        >>> a = torch.diag(torch.tensor([3.0, 1.0, -0.5, 2.0], dtype=torch.float64))
        >>> round(bottom_eigenvalue(lambda v: a @ v, dim=4, max_hvp=8)["value"], 12)
        -0.5
    """
    if isinstance(op, DatasetHessian):
        matmat, dim, dtype, device = op.matmat, op.dim, op.dtype, op.device
    elif callable(op):
        matmat = op
    else:
        raise TypeError(f"op must be a DatasetHessian or a callable, got {type(op).__name__}")
    r = top_k_eigenvalues(lambda v: -matmat(v), 1, dim=dim, max_hvp=max_hvp, tol=tol,
                          seed=seed, dtype=dtype, device=device)
    return {"value": -r.values[0], "residual": r.residuals[0], "converged": r.converged,
            "n_hvp": r.n_hvp}


@dataclass
class TraceResult:
    """A Hutchinson trace estimate, optionally deflated (Hutch++-style), with an interval.

    Fields:
        trace: ``exact_part`` plus the mean of the probes ``z_j^T P H P z_j``.
        stderr: the probes' sample standard deviation over ``sqrt(m)`` (nan for one probe).
        n_probes: ``m``.
        probes: every ``z_j^T P H P z_j`` (``P = I`` without deflation).
        deflated: ``k``, the columns of the deflation block ``Q`` (0: plain Hutchinson).
        exact_part: ``tr(Q^T H Q)``, computed with ``k`` products (0.0 without deflation).
        low, high: the two-sided ``confidence`` interval ``trace -+ t_{m-1} stderr``.
        confidence: its nominal level.
    """

    trace: float
    stderr: float
    n_probes: int
    probes: list[float]
    deflated: int = 0
    exact_part: float = 0.0
    low: float = math.nan
    high: float = math.nan
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return {"trace": self.trace, "stderr": self.stderr, "n_probes": self.n_probes,
                "deflated": self.deflated, "exact_part": self.exact_part, "low": self.low,
                "high": self.high, "confidence": self.confidence}


def hutchinson_trace(op: DatasetHessian | Callable[[torch.Tensor], torch.Tensor],
                     n_probes: int = 64, *, dim: int | None = None, block_size: int = 8,
                     seed: int = 0, dtype: torch.dtype | None = None,
                     device: torch.device | None = None, deflate: torch.Tensor | None = None,
                     confidence: float = 0.95) -> TraceResult:
    """Hutchinson's estimate of ``tr H`` with Rademacher probes, its standard error and interval.

    ``E[z^T H z] = sum_ij H_ij E[z_i z_j] = tr H`` since ``E[z_i z_j] = delta_ij``: unbiased.
    Its variance per probe is ``2 (||H||_F^2 - sum_i H_ii^2)``; the returned standard error is
    the sample estimate ``s / sqrt(m)``.

    **Deflation.** On a network's Hessian a few eigenvalues hold most of the trace; then the
    probes ``z^T H z`` are dominated by ``lambda_1 (v_1^T z)^2``, a skewed, chi-square-like
    variable, and ``mean -+ 2 se`` misses too often, almost always below the truth. With
    ``deflate = Q`` (``dim x k``, e.g. the top-k Ritz vectors, orthonormalised here),
    ``tr H = tr(Q^T H Q) + tr(P H P)``, ``P = I - Q Q^T``, exactly: the first term is computed
    (``k`` products) and only the second, with the dominant directions removed, is estimated from
    the projected probes ``P z`` (unbiased: ``E[(Pz)^T H (Pz)] = tr(P H P)``). This is the
    split of Hutch++ (Meyer, Musco, Musco, Woodruff 2021) with the Lanczos vectors as its sketch.

    Args:
        op: as for :func:`top_k_eigenvalues`.
        n_probes: ``m`` >= 1 (>= 2 for a standard error and an interval).
        block_size: probes per pass over the data (one forward pass serves them all).
        seed: seeds the probes.
        deflate: ``None`` or a ``dim x k`` block whose span is removed from the probes.
        confidence: level of the interval ``[low, high]`` (Student t with ``m - 1`` degrees).

    Raises:
        TypeError, ValueError: bad arguments.

    Example:
        >>> import torch
        >>> a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> hutchinson_trace(lambda v: a @ v, 4, dim=3).trace   # diagonal: every probe exact
        6.0
    """
    _check_int("n_probes", n_probes, 1)
    _check_int("block_size", block_size, 1)
    _check_int("seed", seed, 0)
    if not (isinstance(confidence, float) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    if isinstance(op, DatasetHessian):
        matmat, dim, dtype, device = op.matmat, op.dim, op.dtype, op.device
    elif callable(op):
        if dim is None:
            raise ValueError("dim is required when op is a plain callable")
        matmat = op
        dtype = dtype or torch.float64
        device = device or torch.device("cpu")
    else:
        raise TypeError(f"op must be a DatasetHessian or a callable, got {type(op).__name__}")
    q, exact = None, 0.0
    if deflate is not None:
        if not isinstance(deflate, torch.Tensor) or deflate.dim() != 2 \
                or deflate.shape[0] != dim or not 1 <= deflate.shape[1] < dim:
            raise ValueError(f"deflate must be a ({dim}, k) tensor with 1 <= k < {dim}, got "
                             f"{getattr(deflate, 'shape', type(deflate).__name__)}")
        q, _ = torch.linalg.qr(deflate.to(device=device, dtype=dtype))
        exact = float((q * matmat(q)).sum())
    gen = torch.Generator().manual_seed(seed)
    probes: list[float] = []
    while len(probes) < n_probes:
        p = min(block_size, n_probes - len(probes))
        z = (2 * torch.randint(0, 2, (dim, p), generator=gen) - 1).to(device=device, dtype=dtype)
        if q is not None:
            z = z - q @ (q.T @ z)
        hz = matmat(z)
        probes += [float(v) for v in (z * hz).sum(dim=0)]
    t = torch.tensor(probes, dtype=torch.float64)
    m = len(probes)
    se = float(t.std(unbiased=True) / math.sqrt(m)) if m > 1 else math.nan
    est = exact + float(t.mean())
    half = t_quantile(0.5 + confidence / 2, m - 1) * se if m > 1 else math.nan
    return TraceResult(trace=est, stderr=se, n_probes=m, probes=probes,
                       deflated=0 if q is None else int(q.shape[1]), exact_part=exact,
                       low=est - half, high=est + half, confidence=confidence)


# ------------------------------------------------------------------------------------------
# the Hessian with respect to the input


def _input_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """A closure ``V -> (H_i v_i)_i``: per-sample input Hessians of the cross-entropy."""
    xr = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(xr), y, reduction="sum")  # sample i's loss depends on x_i only
    (g,) = torch.autograd.grad(loss, xr, create_graph=True)

    def apply(v: torch.Tensor) -> torch.Tensor:
        if not g.requires_grad:  # the loss is linear in x: zero Hessian
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(g, xr, grad_outputs=v.view_as(g), retain_graph=True,
                                    allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv.reshape(v.shape).detach()

    return apply


def input_hessian_extremes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           steps: int = 30, seed: int = 0
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and smallest eigenvalue of each sample's input Hessian, by Lanczos.

    ``H_i = d^2 CE(model(x_i), y_i) / d x_i^2`` (``d = x_i.numel()`` square). Lanczos with full
    re-orthogonalisation runs on every sample at once (one backward pass per step serves them
    all: the samples do not interact in eval mode); a sample whose Krylov space became invariant
    stops there (its Ritz values are then exact eigenvalues of ``H_i`` restricted to it). Ritz
    values are Rayleigh quotients, so a negative smallest Ritz value *proves* ``H_i`` is not PSD;
    for a PSD ``H_i`` it is ``>= 0`` up to rounding.

    Args:
        model: a classifier returning logits; eval mode during the computation.
        x: inputs ``(n, ...)``; y: int64 labels ``(n,)``.
        steps: Lanczos steps at most (<= d).
        seed: seeds the start vectors.

    Returns:
        ``(top, bottom)``: float64 tensors of shape ``(n,)``.

    Raises:
        TypeError, ValueError: bad tensors or steps.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    if x.dim() == 0 or x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same non-zero number of samples, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    _check_int("steps", steps, 1)
    _check_int("seed", seed, 0)
    n, d = x.shape[0], x[0].numel()
    steps = min(steps, d)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            apply = _input_hvp(model, x, y)
            gen = torch.Generator().manual_seed(seed)
            q = torch.randn(n, d, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
            q = q / q.norm(dim=1, keepdim=True)
            basis = [q]
            alphas, betas = [], []
            active = torch.ones(n, dtype=torch.bool, device=x.device)
            length = torch.zeros(n, dtype=torch.long)
            for j in range(steps):
                w = apply(basis[j]) * active[:, None]
                a = (basis[j] * w).sum(dim=1)
                alphas.append(a)
                length += active.cpu().long()
                for _ in range(2):
                    for b in basis:
                        w = w - (b * w).sum(dim=1, keepdim=True) * b
                beta = w.norm(dim=1)
                scale = torch.stack([al.abs() for al in alphas]).amax(dim=0).clamp_min(1e-300)
                active = active & (beta > 1e-10 * scale)
                if j + 1 == steps or not bool(active.any()):
                    break
                betas.append(torch.where(active, beta, torch.zeros_like(beta)))
                basis.append(torch.where(active[:, None], w / beta.clamp_min(1e-300)[:, None],
                                         torch.zeros_like(w)))
    finally:
        for m, flag in modes:
            m.training = flag
    al = torch.stack(alphas, dim=1).detach().to(torch.float64).cpu()
    be = (torch.stack(betas, dim=1).detach().to(torch.float64).cpu() if betas
          else torch.zeros(n, 0, dtype=torch.float64))
    top = torch.empty(n, dtype=torch.float64)
    bottom = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        m = int(length[i])
        t = torch.diag(al[i, :m])
        if m > 1:
            off = be[i, :m - 1]
            t += torch.diag(off, 1) + torch.diag(off, -1)
        ev = torch.linalg.eigvalsh(t)
        top[i], bottom[i] = ev[-1], ev[0]
    return top, bottom


def input_hessian_dense(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample's dense input Hessian ``(n, d, d)`` (``d`` HVPs per sample): tests, tiny d.

    Raises:
        ValueError: ``d`` above 4096.
    """
    n, d = x.shape[0], x[0].numel()
    if d > 4096:
        raise ValueError(f"input_hessian_dense builds {n} matrices of {d} x {d}; refusing "
                         "above d = 4096")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            apply = _input_hvp(model, x, y)
            cols = []
            for j in range(d):
                e = torch.zeros(n, d, dtype=x.dtype, device=x.device)
                e[:, j] = 1
                cols.append(apply(e))
    finally:
        for m, flag in modes:
            m.training = flag
    return torch.stack(cols, dim=2)


def logit_jacobian_sq_norm(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``||d f(x_i) / d x_i||_F^2`` for each sample (one backward pass per class).

    The scale of the terms of ``J^T (diag(p) - p p^T) J`` before they cancel: an input Hessian
    eigenvalue is only known to about ``machine eps * ||J||_F^2`` in absolute terms, which can
    exceed the top eigenvalue itself at a confident prediction (``diag(p) - p p^T`` near 0).
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            xr = x.detach().clone().requires_grad_(True)
            out = model(xr)
            total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            for c in range(out.shape[1]):
                (g,) = torch.autograd.grad(out[:, c].sum(), xr, retain_graph=True)
                total += g.reshape(x.shape[0], -1).double().pow(2).sum(dim=1)
    finally:
        for m, flag in modes:
            m.training = flag
    return total.cpu()
