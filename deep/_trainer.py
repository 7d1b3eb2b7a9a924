"""One training loop for BL, FB, GG, ABS and ABSA over any PyTorch model, optimizer and dataset.

The loop *executes* decisions and *reports* events; every schedule decision comes from
:class:`hessbatch.Scheduler` (the core), never from here:

* logical batch ``B`` and its split into ``accumulation_steps`` micro-batches
  (``decision.batch_size``, ``decision.micro_batch_size``);
* the learning rate, written into the user's optimizer ``param_groups`` before each update
  (``group["lr"] = decision.lr * group.get("lr_scale", 1.0)``);
* how many samples of the batch are replaced by adversarial ones
  and where (``decision.adversarial_ranges(n)``) and with which step (``decision.adv_eps``);
* when the top Hessian eigenvalue is due (``decision.eigenvalue_due``).

One epoch, as the code runs it::

    perm = randperm(N)                                 # shuffled epoch, trainer's generator
    while samples are left:
        d = scheduler.decision
        n = min(d.batch_size, samples left)            # the last batch may be short (below)
        for each micro-batch j of the n samples (m_j samples, sum m_j = n):
            the samples at d.adversarial_ranges(n) of the logical batch -> FGSM (eval mode)
            (loss_fn(model(x_j), y_j) * m_j / n).backward()      # accumulates grad of mean loss
        lr from d; optimizer.step(); d = scheduler.step(n)
        if d.eigenvalue_due: lam = eigenvalue_fn(model, loss_fn, hessian batch); report it
    scheduler.end_epoch(); evaluate on the test set

Gradient: ``loss_fn`` must return the *mean* loss of its batch (``reduction="mean"``, the
PyTorch default). Scaling micro-batch ``j`` by ``m_j / n`` makes the accumulated gradient equal
to the gradient of the mean loss over all ``n`` samples, the same as one forward/backward on the
whole logical batch (tested). BatchNorm statistics are per micro-batch (as in data parallelism,
where they are per rank).

Last batch of an epoch (``last_batch``): ``"step"`` (default) makes one update on the ``n < B``
samples left, reported as ``scheduler.step(n)``, so every sample is seen once per epoch and the
core's sample count (which places the eigenvalue checks) advances by exactly ``N`` per epoch;
its lr is the decided one (the paper's loaders did the same). ``"drop"`` skips them, unless they
are the epoch's only batch (``B > N``), because an epoch without an update is not an epoch.

Eigenvalues: when one is due the trainer draws a fresh Hessian batch of ``hessian_batch_size``
training samples (clean, no adversary), splits it into micro-batches and calls
``eigenvalue_fn(model, loss_fn, batches, seed=s)`` with a seed from its generator. The default is
:func:`hessbatch.deep.top_eigenvalue` (eval mode inside, the model's mode restored). Any callable
with that signature returning a float or an object with ``.value`` may be injected, e.g.
``functools.partial(top_eigenvalue, method="power", params=last_layers)`` for a block Hessian,
or a scripted sequence in tests. A value the core refuses (NaN, infinite, negative) is not
reported: the check is cleared with ``skip_eigenvalue()``, which never grows the batch, and
counted in the epoch's ``eigenvalues_skipped``.

Reproducibility: shuffling, Hessian batches, solver seeds and random-sign noise all come from
one ``torch.Generator`` seeded by ``seed``; :meth:`Trainer.state_dict` holds it, the global torch
RNG (dropout), the model, the optimizer, the core's state and the history, so a run resumed
from an epoch-end checkpoint is identical to the uninterrupted one on CPU (tested).
Checkpoints are taken at epoch ends only (no mid-epoch position is stored).

Data parallelism: :class:`hessbatch.deep.DistributedTrainer` (deep/_distributed.py,
docs/distributed.md) is this loop on ``world_size`` processes. The core's decisions are global,
so every rank runs the same scheduler and receives the same events; the logical batch of ``n``
global indices (same permutation on all ranks, same seed) is split into ``world_size``
contiguous shards, rank ``r`` runs its micro-batches with the same ``m_j / n`` scaling (``n``
global), and DDP sums the gradients on the last micro-batch (``no_sync`` before), which gives
the global mean; eigenvalues come from all-reduced HVPs on all ranks' Hessian shards. It plugs
in through five small hooks here, each the identity in one process: :meth:`Trainer._shard`
(the rank's part of a logical batch and where it starts), ``_forward``, ``_accumulate``,
``_reduce_gradients`` and ``_finish_epoch``.

Example:
    >>> import torch
    >>> from hessbatch import Scheduler, SchedulerConfig
    >>> from hessbatch.deep import MLP, Trainer, synthetic_classification
    >>> data = synthetic_classification(256, (1, 8, 8), 10, seed=0)
    >>> model = MLP((1, 8, 8), 10, hidden=(16,))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> sch = Scheduler(SchedulerConfig(method="bl", lr=0.1, batch_size=64,
    ...                                 samples_per_epoch=256, epochs=2))
    >>> history = Trainer(model, opt, torch.nn.functional.cross_entropy, data, sch).run()
    >>> [m.updates for m in history]
    [4, 8]
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import hashlib
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from hessbatch import Decision, Scheduler, SchedulerConfig

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "EpochMetrics", "Trainer",
           "TrainingDiverged", "checkpoint_digest", "load_checkpoint"]

CHECKPOINT_FORMAT = "hessbatch.deep.trainer"
CHECKPOINT_VERSION = 2  # 2: a sha256 of the payload ("checksum")
_ADVERSARIES = ("fgsm", "random")
_LAST_BATCH = ("step", "drop")


@dataclass
class EpochMetrics:
    """What one epoch did; times are wall-clock seconds.

    Fields:
        epoch: 1-based epoch number.
        train_loss: mean loss over the samples trained on in the epoch (adversarial ones
            included), from the training forward passes (train mode, before each update).
        test_loss, test_accuracy: on the test set after the epoch (eval mode); None without one.
        eigenvalue: the last top eigenvalue reported in the epoch (None if none).
        eigenvalues: every eigenvalue reported in the epoch, in order.
        eigenvalues_skipped: checks cleared because the value was not finite or was negative.
        hvps: Hessian-vector products spent on eigenvalues (when the function reports them).
        batch_size: the largest logical batch used in the epoch.
        next_batch_size: B decided for the next update, after the epoch end.
        lr: the core's lr at the last update of the epoch (before the epoch-end decay).
        updates: parameter updates made so far (all epochs).
        samples: training samples consumed so far (all epochs).
        adversarial_samples: samples replaced by adversarial ones in the epoch.
        time_train: forward/backward/update time, adversarial generation excluded.
        time_eigenvalue: eigenvalue computations, Hessian batch included.
        time_adversarial: generating adversarial samples.
        time_eval: test-set evaluation.
        time_grad_comm: gradient all-reduce (data parallel; 0 in one process), not included
            in time_train.
        time_eigenvalue_comm: the part of time_eigenvalue spent in all-reduces of
            Hessian-vector products (data parallel; 0 in one process).
    """

    epoch: int
    train_loss: float
    test_loss: float | None
    test_accuracy: float | None
    eigenvalue: float | None
    eigenvalues: list[float]
    eigenvalues_skipped: int
    hvps: int
    batch_size: int
    next_batch_size: int
    lr: float
    updates: int
    samples: int
    adversarial_samples: int
    time_train: float
    time_eigenvalue: float
    time_adversarial: float
    time_eval: float
    time_grad_comm: float = 0.0
    time_eigenvalue_comm: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @property
    def hvps_per_check(self) -> float | None:
        """Mean Hessian-vector products per eigenvalue check of the epoch (None: no check)."""
        checks = len(self.eigenvalues) + self.eigenvalues_skipped
        return self.hvps / checks if checks else None


@dataclass
class _EpochAccumulator:
    loss_sum: float = 0.0
    samples: int = 0
    eigenvalues: list[float] = field(default_factory=list)
    skipped: int = 0
    hvps: int = 0
    batch_size: int = 0
    lr: float = 0.0
    adversarial: int = 0
    time_train: float = 0.0
    time_eig: float = 0.0
    time_adv: float = 0.0
    time_comm: float = 0.0
    time_eig_comm: float = 0.0


def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


class TrainingDiverged(ValueError):
    """A training loss or gradient was NaN or infinite: training stopped before that update.

    The optimizer step that would have used it was not taken, so the model and the optimizer
    hold the state of the previous update. Attributes: ``epoch`` (1-based, the epoch being
    trained), ``update`` (1-based number of the update that was refused, over the whole run),
    ``what`` (``"loss"`` or ``"gradient"``).
    """

    def __init__(self, message: str, *, epoch: int, update: int, what: str):
        super().__init__(message)
        self.epoch, self.update, self.what = epoch, update, what


def _training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Put ``model`` in train mode for an update, keeping each sub-module's own flag.

    A model handed over in train mode keeps its per-module flags (a BatchNorm or Dropout the
    user froze with ``.eval()`` stays frozen); a model whose root is in eval mode is switched
    to train mode as a whole first. Returns the flags, for :func:`_restore_modes`.
    """
    if not model.training:
        model.train()
    return [(m, m.training) for m in model.modules()]


def _restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for module, flag in modes:
        module.training = flag


def _diverged(trainer: "Trainer", what: str, detail: str) -> TrainingDiverged:
    d = trainer.scheduler.decision
    lr = d.lr
    return TrainingDiverged(
        f"training diverged in epoch {d.epoch + 1}, update {d.updates + 1} (B={d.batch_size}, "
        f"lr={lr:.4g}): {detail}; stopped before that update, so the model holds the weights "
        f"of update {d.updates}. Lower the learning rate (or check the data and the loss)",
        epoch=d.epoch + 1, update=d.updates + 1, what=what)


def _check_finite_loss(value: float, trainer: "Trainer", micro_batch: int) -> None:
    if not math.isfinite(value):
        raise _diverged(trainer, "loss", f"the training loss is {value} (micro-batch "
                                         f"{micro_batch})")


def _check_finite_gradients(trainer: "Trainer") -> None:
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
        bad = sum(1 for g in grads if not bool(torch.isfinite(g).all()))
        raise _diverged(trainer, "gradient", f"the gradient is not finite in {bad} of "
                                             f"{len(grads)} parameter tensors")




def check_loop_arguments(model: Any, optimizer: Any, loss_fn: Any) -> None:
    """The type checks every training loop here makes first (Trainer, LoopAdapter)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")

def call_eigenvalue_fn(eigenvalue_fn: Callable[..., Any], model: nn.Module,
                       loss_fn: Callable[..., Any], batches: list[Any],
                       generator: torch.Generator) -> Any:
    """One eigenvalue check as every training loop here makes it: a solver seed drawn from
    ``generator``, then ``eigenvalue_fn(model, loss_fn, batches, seed=seed)``.

    A diverged run (non-finite weights or loss) has no eigenvalue: its ``ValueError`` becomes
    NaN, which the core refuses, so the check is skipped like a non-finite value. Any other
    error is a real one and propagates.
    """
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    try:
        return eigenvalue_fn(model, loss_fn, batches, seed=seed)
    except ValueError as exc:
        diverged = any(not bool(torch.isfinite(p).all()) for p in model.parameters())
        if not (diverged or "finite" in str(exc)):
            raise
        return math.nan


class Trainer:
    """Train ``model`` with the decisions of a :class:`hessbatch.Scheduler`.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to outputs for ``loss_fn``; it stays
            on its device, batches are moved there.
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters; the trainer sets
            ``lr`` on each param group before every update (times ``group["lr_scale"]`` when a
            group has one) and calls ``zero_grad``/``step``. Momentum and weight decay are the
            optimizer's.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``, the *mean* over the batch.
        train_data: a map-style dataset of ``(x, y)`` pairs; a ``TensorDataset`` is indexed in
            whole batches (fast), any other dataset sample by sample with ``default_collate``.
        scheduler: the core (a :class:`~hessbatch.Scheduler`, or a
            :class:`~hessbatch.SchedulerConfig` to build one). Its ``samples_per_epoch`` must
            equal ``len(train_data)``.
        test_data: evaluated (loss, accuracy) after every epoch; optional.
        eigenvalue_fn: ``f(model, loss_fn, batches, *, seed) -> float | result with .value``
            (default :func:`hessbatch.deep.top_eigenvalue` with ``eig_method``, ``max_hvp``,
            ``eig_tol``).
        hessian_batch_size: training samples per eigenvalue (the paper: a fresh 128 each time);
            above ``len(train_data)`` the whole training set is used (``hessbatch train``
            refuses such a value, or lowers its default with a recorded note).
        eig_method, max_hvp, eig_tol: options of the default eigenvalue function.
        warm_start, hvp_check: options of the default eigenvalue function,
            :class:`hessbatch.deep.WarmStartEigenvalue` (``warm_start=True``: each check starts
            from the previous eigenvector; off by default until the MNIST-5k benchmark shows
            it keeps the accuracy contract, see docs/deep_curvature.md; the first check
            self-tests the loss and the HVP). Its state (the kept
            vector) is saved in checkpoints, like that of any ``eigenvalue_fn`` with
            ``state_dict``/``load_state_dict``.
        adversary: ``"fgsm"`` (ABSA), ``"random"`` (random signs of the same size: the
            reviewers' ablation) or a callable ``f(model, loss_fn, x, y, eps) -> x_adv``.
        input_range: ``(low, high)`` that adversarial inputs are clipped to.
        last_batch: ``"step"`` (update on a short last batch) or ``"drop"``; see the module doc.
        eval_batch_size: samples per forward pass during evaluation.
        seed: seeds the trainer's generator (shuffling, Hessian batches, solver seeds, noise).

    Raises:
        TypeError, ValueError: naming the argument, e.g. a scheduler whose samples_per_epoch is
            not the dataset's length, an unknown adversary, a non-positive batch size.

    Example:
        See the module docstring; ``trainer.run()`` trains until the scheduler's last epoch and
        returns the list of :class:`EpochMetrics`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 train_data: Dataset, scheduler: Scheduler | SchedulerConfig, *,
                 test_data: Dataset | None = None,
                 eigenvalue_fn: Callable[..., Any] | None = None,
                 hessian_batch_size: int = 128, eig_method: str = "lanczos", max_hvp: int = 10,
                 eig_tol: float = 1e-2, warm_start: bool = False, hvp_check: str = "error",
                 adversary: str | Callable[..., torch.Tensor] = "fgsm",
                 input_range: tuple[float, float] = (0.0, 1.0), last_batch: str = "step",
                 eval_batch_size: int = 1024, seed: int = 0):
        check_loop_arguments(model, optimizer, loss_fn)
        if isinstance(scheduler, SchedulerConfig):
            scheduler = Scheduler(scheduler)
        if not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a hessbatch.Scheduler or SchedulerConfig, got "
                            f"{type(scheduler).__name__}")
        try:
            n_train = len(train_data)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError("train_data must be a map-style dataset with a length, got "
                            f"{type(train_data).__name__}") from None
        if n_train < 1:
            raise ValueError("train_data is empty")
        if scheduler.config.samples_per_epoch != n_train:
            raise ValueError(
                f"scheduler samples_per_epoch must equal len(train_data) = {n_train}, got "
                f"{scheduler.config.samples_per_epoch} (the core counts epochs in samples)")
        if test_data is not None and len(test_data) < 1:  # type: ignore[arg-type]
            raise ValueError("test_data is empty (pass None for no evaluation)")
        _check_int("hessian_batch_size", hessian_batch_size, 1)
        _check_int("max_hvp", max_hvp, 1)
        _check_int("eval_batch_size", eval_batch_size, 1)
        _check_int("seed", seed, 0)
        if not (isinstance(eig_tol, (int, float)) and math.isfinite(eig_tol) and eig_tol >= 0):
            raise ValueError(f"eig_tol must be a finite number >= 0, got {eig_tol!r}")
        if eig_method not in ("power", "lanczos"):
            raise ValueError(f"eig_method must be 'power' or 'lanczos', got {eig_method!r}")
        if not callable(adversary) and adversary not in _ADVERSARIES:
            raise ValueError(f"adversary must be one of {', '.join(_ADVERSARIES)} or a "
                             f"callable, got {adversary!r}")
        if last_batch not in _LAST_BATCH:
            raise ValueError(f"last_batch must be one of {', '.join(_LAST_BATCH)}, got "
                             f"{last_batch!r}")
        try:
            low, high = (float(v) for v in input_range)
        except (TypeError, ValueError):
            raise TypeError(f"input_range must be a pair of numbers, got {input_range!r}") \
                from None
        if not low < high:
            raise ValueError(f"input_range must have low < high, got {input_range!r}")
        if eigenvalue_fn is not None and not callable(eigenvalue_fn):
            raise TypeError(f"eigenvalue_fn must be callable, got {type(eigenvalue_fn).__name__}")

        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.train_data, self.test_data, self.scheduler = train_data, test_data, scheduler
        self.hessian_batch_size, self.eval_batch_size = hessian_batch_size, eval_batch_size
        self.eig_method, self.max_hvp, self.eig_tol = eig_method, max_hvp, float(eig_tol)
        self.adversary, self.input_range, self.last_batch = adversary, (low, high), last_batch
        self.seed = seed
        if eigenvalue_fn is None:
            eigenvalue_fn = self._make_default_eigenvalue(warm_start, hvp_check)
        self.eigenvalue_fn = eigenvalue_fn
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[EpochMetrics] = []
        # One record per update: (samples n, B decided, lr applied, micro-batches run,
        # adversarial samples). Lets a test replay the core and compare; not checkpointed.
        self.update_log: list[tuple[int, int, float, int, int]] = []
        # The events reported to the core, in order: ("step", n), ("eigenvalue", lam),
        # ("skip", None), ("end_epoch", None). Not checkpointed.
        self.events: list[tuple[str, Any]] = []
        self._n_train = n_train

    # ----------------------------------------------------------------------------------------
    # data access

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (CPU for a parameter-free model)."""
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def _fetch(self, dataset: Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``idx`` of ``dataset`` as one batch on the model's device."""
        if isinstance(dataset, TensorDataset):
            x, y = (t[idx.to(t.device)] for t in dataset.tensors[:2])
        else:
            x, y = default_collate([dataset[i] for i in idx.tolist()])[:2]
        dev = self.device
        return x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    def _shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        # The single-process case: this rank holds the whole logical batch, from position 0.
        # The data-parallel trainer (_distributed.py) returns its contiguous part of idx and
        # where that part starts in the logical batch.
        return idx, 0

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # The training forward pass (the data-parallel trainer runs it through DDP).
        return self.model(x)

    def _accumulate(self, last: bool) -> Any:
        # Context of one micro-batch's forward/backward; the data-parallel trainer skips the
        # gradient all-reduce (DDP no_sync) unless ``last``.
        return contextlib.nullcontext()

    def _reduce_gradients(self, idx: torch.Tensor, acc: _EpochAccumulator) -> None:
        # After the micro-batches of an update, before the step: nothing in one process.
        pass

    # A non-finite micro-batch loss stops the update at once in one process. With several
    # ranks a rank that stopped alone would leave the others waiting in the all-reduce, so the
    # data-parallel trainer sets this False and relies on the check after the reduction.
    _local_finiteness_checks = True

    def _finish_epoch(self, acc: _EpochAccumulator) -> None:
        # Before an epoch's metrics are built: the data-parallel trainer sums over ranks here.
        pass

    def _sync(self) -> None:
        # CUDA runs asynchronously: wait before reading the clock, or time lands elsewhere.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ----------------------------------------------------------------------------------------
    # the pieces of one update

    def _make_default_eigenvalue(self, warm_start: bool, hvp_check: str) -> Callable[..., Any]:
        # Warm starts and the first-check self-tests (issue 11). The data-parallel trainer
        # returns its own collective eigenvalue instead (every rank on the global Hessian).
        from ._eigen import WarmStartEigenvalue
        return WarmStartEigenvalue(method=self.eig_method, max_hvp=self.max_hvp,
                                   tol=self.eig_tol, warm_start=warm_start,
                                   hvp_check=hvp_check)

    def _default_eigenvalue(self, model, loss_fn, batches, *, seed):
        from . import top_eigenvalue  # the curvature module; imported late on purpose
        return top_eigenvalue(model, loss_fn, batches, method=self.eig_method,
                              max_hvp=self.max_hvp, tol=self.eig_tol, seed=seed)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        if callable(self.adversary):
            # A custom adversary may call loss.backward(): its parameter gradients must not
            # reach the update, so the accumulated .grad are set aside and put back after.
            saved = [(p, p.grad) for p in self.model.parameters()]
            for p, _ in saved:
                p.grad = None
            try:
                return self.adversary(self.model, self.loss_fn, x, y, eps)
            finally:
                for p, g in saved:
                    p.grad = g
        from . import fgsm, random_sign
        if self.adversary == "fgsm":
            return fgsm(self.model, self.loss_fn, x, y, eps, clip=self.input_range)
        # The signs come from the trainer's CPU generator, so they are reproducible and saved
        # in checkpoints whatever the device.
        return random_sign(x, eps, clip=self.input_range, generator=self.generator)

    def _set_lr(self, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def _update(self, idx: torch.Tensor, d: Decision, acc: _EpochAccumulator) -> None:
        """One parameter update on the samples ``idx`` (n <= B), as decided by ``d``."""
        n = int(idx.numel())
        # the core's positions in the logical batch, sorted
        adv_at = [i for a, b in d.adversarial_ranges(n) for i in range(a, b)]
        n_adv = len(adv_at)
        micro = d.micro_batch_size
        self._sync()
        start_time = time.perf_counter()
        adv_time = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        modes = _training_modes(self.model)
        local, offset = self._shard(idx)
        micro_batches = 0
        for start in range(0, local.numel(), micro):
            part = local[start:start + micro]
            m = int(part.numel())
            x, y = self._fetch(self.train_data, part)
            # the adversarial positions of this micro-batch, in the logical batch's numbering:
            # the micro-batch covers [offset + start, offset + start + m) of it
            lo = offset + start
            k = [i - lo for i in adv_at[bisect.bisect_left(adv_at, lo):
                                        bisect.bisect_left(adv_at, lo + m)]]
            if k:
                self._sync()
                t0 = time.perf_counter()
                x = x.clone()
                x[k] = self._perturb(x[k], y[k], d.adv_eps).detach()
                _restore_modes(modes)  # whatever mode the adversary left, the user's flags
                self._sync()
                adv_time += time.perf_counter() - t0
            with self._accumulate(last=start + micro >= local.numel()):
                loss = self.loss_fn(self._forward(x), y)
                # m / n: the accumulated gradient is the gradient of the mean over all n
                # samples (n global: over all ranks in data parallelism)
                (loss * (m / n)).backward()
            loss_value = float(loss.detach())
            if self._local_finiteness_checks:
                _check_finite_loss(loss_value, self, start // micro + 1)
            acc.loss_sum += loss_value * m
            micro_batches += 1
        self._reduce_gradients(idx, acc)
        # after the reduction: with several ranks a NaN anywhere is a NaN on every rank, so
        # every rank stops at the same update instead of one rank waiting for the others
        _check_finite_gradients(self)
        lr = self._set_lr(d.lr)
        self.optimizer.step()
        self._sync()
        total = time.perf_counter() - start_time
        acc.time_adv += adv_time
        acc.time_train += total - adv_time
        acc.samples += n
        acc.adversarial += n_adv
        acc.batch_size = max(acc.batch_size, d.batch_size)
        acc.lr = lr
        self.update_log.append((n, d.batch_size, lr, micro_batches, n_adv))

    def _hessian_batches(self, micro: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        size = min(self.hessian_batch_size, self._n_train)
        idx = torch.randperm(self._n_train, generator=self.generator)[:size]
        return [self._fetch(self.train_data, idx[i:i + micro]) for i in range(0, size, micro)]

    def _eigenvalue(self, d: Decision, acc: _EpochAccumulator) -> Decision:
        """Compute the due eigenvalue and report it (or skip a value the core refuses)."""
        self._sync()
        t0 = time.perf_counter()
        batches = self._hessian_batches(d.micro_batch_size)
        result = call_eigenvalue_fn(self.eigenvalue_fn, self.model, self.loss_fn, batches,
                                    self.generator)
        value = getattr(result, "value", result)
        acc.hvps += int(getattr(result, "n_hvp", 0) or 0)
        try:
            value = float(value)
            d = self.scheduler.eigenvalue(value)
            acc.eigenvalues.append(value)
            self.events.append(("eigenvalue", value))
        except (TypeError, ValueError):
            # NaN, inf or negative: the core refuses it and the check stays due; clear it
            # without a decision (a skipped check never grows the batch).
            d = self.scheduler.skip_eigenvalue()
            acc.skipped += 1
            self.events.append(("skip", None))
        self._sync()
        acc.time_eig += time.perf_counter() - t0
        return d

    # ----------------------------------------------------------------------------------------
    # public loop

    def evaluate(self, dataset: Dataset | None = None) -> tuple[float, float]:
        """Mean loss and accuracy of the model on ``dataset`` (default: the test set).

        Runs in eval mode under ``torch.no_grad`` and restores the model's mode. Accuracy is
        the share of samples whose arg-max output equals the label.

        Raises:
            ValueError: no dataset given and no test set.
        """
        dataset = self.test_data if dataset is None else dataset
        if dataset is None:
            raise ValueError("evaluate needs a dataset: none given and the trainer has no "
                             "test_data")
        # each module's own flag is restored (a user may keep a frozen BatchNorm in eval mode)
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        loss_sum, correct, n = 0.0, 0, len(dataset)  # type: ignore[arg-type]
        try:
            with torch.no_grad():
                for start in range(0, n, self.eval_batch_size):
                    idx = torch.arange(start, min(start + self.eval_batch_size, n))
                    x, y = self._fetch(dataset, idx)
                    out = self.model(x)
                    loss_sum += float(self.loss_fn(out, y)) * len(idx)
                    correct += int((out.argmax(dim=1) == y).sum())
        finally:
            for module, flag in modes:
                module.training = flag
        return loss_sum / n, correct / n

    def train_epoch(self, on_update: Callable[["Trainer", Decision], None] | None = None
                    ) -> EpochMetrics:
        """Train one epoch (shuffled), then evaluate; returns and records its metrics.

        Args:
            on_update: called after each update with the trainer and the new decision
                (progress display); it must not change the model.

        Raises:
            SchedulerError: the scheduler has finished all its epochs.
            TrainingDiverged: a training loss or gradient was NaN or infinite; raised before
                the optimizer step that would have used it.
        """
        sch = self.scheduler
        if sch.decision.finished:
            from hessbatch import SchedulerError
            raise SchedulerError(f"all {sch.config.epochs} epochs are done; nothing to train")
        acc = _EpochAccumulator()
        perm = torch.randperm(self._n_train, generator=self.generator)
        pos, steps = 0, 0
        while pos < self._n_train:
            d = sch.decision
            n = min(d.batch_size, self._n_train - pos)
            if n < d.batch_size and self.last_batch == "drop" and steps:
                break
            self._update(perm[pos:pos + n], d, acc)
            pos, steps = pos + n, steps + 1
            d = sch.step(n)
            self.events.append(("step", n))
            if d.eigenvalue_due:
                d = self._eigenvalue(d, acc)
            if on_update is not None:
                on_update(self, d)
        d = sch.end_epoch()
        self.events.append(("end_epoch", None))
        self._sync()
        t0 = time.perf_counter()
        test_loss, test_acc = self.evaluate() if self.test_data is not None else (None, None)
        time_eval = time.perf_counter() - t0
        self._finish_epoch(acc)
        metrics = EpochMetrics(
            epoch=d.epoch, train_loss=acc.loss_sum / max(acc.samples, 1), test_loss=test_loss,
            test_accuracy=test_acc,
            eigenvalue=acc.eigenvalues[-1] if acc.eigenvalues else None,
            eigenvalues=list(acc.eigenvalues), eigenvalues_skipped=acc.skipped, hvps=acc.hvps,
            batch_size=acc.batch_size, next_batch_size=d.batch_size, lr=acc.lr,
            updates=d.updates, samples=d.samples_seen, adversarial_samples=acc.adversarial,
            time_train=acc.time_train, time_eigenvalue=acc.time_eig,
            time_adversarial=acc.time_adv, time_eval=time_eval, time_grad_comm=acc.time_comm,
            time_eigenvalue_comm=acc.time_eig_comm)
        self.history.append(metrics)
        return metrics

    def run(self, epochs: int | None = None, *,
            on_update: Callable[["Trainer", Decision], None] | None = None,
            on_epoch: Callable[["Trainer", EpochMetrics], None] | None = None
            ) -> list[EpochMetrics]:
        """Train until the scheduler's last epoch (or for ``epochs`` more epochs).

        Args:
            epochs: at most this many epochs now (e.g. to checkpoint and stop); None: all that
                are left.
            on_update: see :meth:`train_epoch`.
            on_epoch: called after each epoch with the trainer and its metrics (logging,
                checkpoints).

        Returns:
            The whole history (all epochs so far, resumed ones included).
        """
        if epochs is not None:
            _check_int("epochs", epochs, 0)
        done = 0
        while not self.scheduler.decision.finished and (epochs is None or done < epochs):
            metrics = self.train_epoch(on_update)
            done += 1
            if on_epoch is not None:
                on_epoch(self, metrics)
        return self.history

    # ----------------------------------------------------------------------------------------
    # checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: model, optimizer, core, RNG states, history.

        Only at an epoch end (or before the first update): a checkpoint stores no position
        inside an epoch, so a snapshot taken mid-epoch could not resume exactly.

        Returns:
            A dict of tensors and plain data (``torch.save`` it, or use :meth:`save`).

        Raises:
            RuntimeError: called in the middle of an epoch (e.g. from ``on_update``).
        """
        st = self.scheduler.state
        if st.samples_seen != st.epoch_start_samples:
            raise RuntimeError(
                f"cannot checkpoint in the middle of epoch {st.epoch + 1} "
                f"({st.samples_seen - st.epoch_start_samples} of its samples done): a "
                "checkpoint stores no position inside an epoch; save at an epoch end "
                "(e.g. from run's on_epoch)")
        return self._state_dict()

    def _state_dict(self) -> dict[str, Any]:
        out = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "history": [m.to_dict() for m in self.history], "seed": self.seed,
        }
        if hasattr(self.eigenvalue_fn, "state_dict"):  # e.g. the warm-start vector
            out["eigenvalue_fn"] = self.eigenvalue_fn.state_dict()
        if torch.cuda.is_available() and self.device.type == "cuda":
            out["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from a trainer built the same way.

        All or nothing: if any part fails to load (a model of another shape, an optimizer of
        another kind, a scheduler config that differs), the trainer is put back as it was
        before the call and the error is raised.

        Raises:
            ValueError: not a trainer checkpoint, an unsupported version, a checksum that does
                not match the payload, or a scheduler state whose config differs from this
                trainer's (the differing fields are named).
            RuntimeError: the model or optimizer state does not fit (torch's message).
        """
        if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not a hessbatch trainer checkpoint (format {got!r}, expected "
                             f"{CHECKPOINT_FORMAT!r})")
        _check_version(state.get("version"), "trainer checkpoint")
        if "checksum" in state:
            _verify_checksum(state, "trainer state")
        backup = copy.deepcopy(self._state_dict())
        try:
            self._apply_state(state)
        except Exception:
            self._apply_state(backup)
            raise

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = [EpochMetrics(**m) for m in state["history"]]
        if "eigenvalue_fn" in state and hasattr(self.eigenvalue_fn, "load_state_dict"):
            self.eigenvalue_fn.load_state_dict(state["eigenvalue_fn"])

    def checkpoint_bytes(self, extra: Mapping[str, Any] | None = None) -> bytes:
        """The checkpoint file's content: :meth:`state_dict`, ``extra`` and their checksum.

        For writing a checkpoint together with other files (see
        :func:`hessbatch._outputs.write_files`); :meth:`save` writes it alone.
        """
        state = self.state_dict()
        state["extra"] = dict(extra or {})
        state["checksum"] = checkpoint_digest(state)
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write a checkpoint atomically (a temporary file, then a rename).

        The file carries a sha256 of its payload (:func:`checkpoint_digest`), verified by
        :func:`load_checkpoint`. A failed write (disk full) leaves the previous file intact
        and no ``.tmp`` behind.

        Args:
            path: the file to write.
            extra: plain data stored beside the state under ``"extra"`` (the command line keeps
                the model and data spec there, so ``hessbatch eig`` can rebuild the model).

        Raises:
            RuntimeError: called in the middle of an epoch (see :meth:`state_dict`).
            OSError: the file cannot be written (one line naming it and the cause).
        """
        from hessbatch._outputs import write_file
        return write_file(Path(path), self.checkpoint_bytes(extra))


def _check_version(version: Any, what: str) -> None:
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{what} version {version!r} is not supported (this hessbatch reads "
                         f"version {CHECKPOINT_VERSION}; checkpoints without a checksum are "
                         "version 1: train again, or resume with the hessbatch that wrote it)")


def checkpoint_digest(state: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint's payload: every key except ``"checksum"``, tensors by content.

    The walk is canonical: mapping keys in sorted order of their ``repr``, sequences in order,
    each tensor as its dtype, shape and raw bytes (on the CPU), every other value as its
    ``repr`` (floats round-trip exactly), each item tagged with its type. So a flipped byte
    anywhere in a weight, an optimizer buffer, the RNG states or the history changes it.

    Args:
        state: a dict as written by :meth:`Trainer.save`.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, Mapping):
            h.update(f"D{len(obj)}:".encode())
            for key in sorted(obj, key=repr):
                h.update(f"K{key!r}=".encode())
                walk(obj[key])
        elif isinstance(obj, (list, tuple)):
            h.update(f"{type(obj).__name__[0]}{len(obj)}:".encode())
            for item in obj:
                walk(item)
        else:
            h.update(f"V{type(obj).__name__}:{obj!r};".encode())

    walk({k: v for k, v in state.items() if k != "checksum"})
    return h.hexdigest()


def _verify_checksum(state: Mapping[str, Any], where: Any) -> None:
    saved = state.get("checksum")
    if not isinstance(saved, str):
        raise ValueError(f"{where}: the checkpoint has no checksum (version "
                         f"{CHECKPOINT_VERSION} checkpoints carry one); it was not written by "
                         "Trainer.save")
    got = checkpoint_digest(state)
    if got != saved:
        raise ValueError(f"{where}: checksum mismatch (stored {saved[:12]}..., payload "
                         f"{got[:12]}...): the file is corrupt or was altered; use an earlier "
                         "checkpoint or train again")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint written by :meth:`Trainer.save` (tensors on the CPU).

    Loads with ``weights_only=True``: a checkpoint holds tensors and plain data only, so a
    tampered file cannot run code. Then checks the format, the version and the checksum of the
    payload (:func:`checkpoint_digest`), so a file with flipped bytes is refused, not used.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable trainer checkpoint, has another version, or its
            checksum does not match (corrupt or altered).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") \
            from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a hessbatch trainer checkpoint")
    _check_version(state.get("version"), f"{path}: checkpoint")
    _verify_checksum(state, path)
    return state
