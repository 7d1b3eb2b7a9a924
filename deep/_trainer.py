"""One training loop for BL, FB, GG, ABS and ABSA over any PyTorch model, optimizer and dataset.

The loop *executes* decisions and *reports* events; every schedule decision comes from
:class:`hessbatch.Scheduler` (the core), never from here:

* logical batch ``B`` and its split into ``accumulation_steps`` micro-batches
  (``decision.batch_size``, ``decision.micro_batch_size``);
* the learning rate, written into the user's optimizer ``param_groups`` before each update
  (``group["lr"] = decision.lr * group.get("lr_scale", 1.0)``);
* how many samples of the batch are replaced by adversarial ones
  (``decision.adversarial_count(n)``) and with which step (``decision.adv_eps``);
* when the top Hessian eigenvalue is due (``decision.eigenvalue_due``).

One epoch, as the code runs it::

    perm = randperm(N)                                 # shuffled epoch, trainer's generator
    while samples are left:
        d = scheduler.decision
        n = min(d.batch_size, samples left)            # the last batch may be short (below)
        for each micro-batch j of the n samples (m_j samples, sum m_j = n):
            the first d.adversarial_count(n) samples of the logical batch -> FGSM (eval mode)
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

Data parallelism (torch.distributed, a later issue) fits this design without a rewrite: the
core's decisions are global, so every rank runs the same scheduler and receives the same events
(the eigenvalue is computed on all ranks' Hessian shards with all-reduced HVPs, or on rank 0 and
broadcast). The logical batch of ``n`` global indices (same permutation on all ranks, same seed)
is split into ``world_size`` shards; rank ``r`` takes its shard, runs its micro-batches with the
same ``m_j / n`` scaling (``n`` global), and the gradients are summed by one all-reduce on the
last micro-batch (``no_sync`` before), which gives the global mean. ``B`` must then be a multiple
of ``world_size * micro_batch_size``, a constraint for the config, not for the loop. Nothing
here assumes one process except :meth:`Trainer._shard`, the single place that would take the
rank's part of a logical batch.

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

import dataclasses
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
           "load_checkpoint"]

CHECKPOINT_FORMAT = "hessbatch.deep.trainer"
CHECKPOINT_VERSION = 1
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


def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


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
        hessian_batch_size: training samples per eigenvalue (the paper: a fresh 128 each time).
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
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
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
        if eigenvalue_fn is None:  # warm starts and the first-check self-tests (issue 11)
            from ._eigen import WarmStartEigenvalue
            eigenvalue_fn = WarmStartEigenvalue(method=eig_method, max_hvp=max_hvp,
                                                tol=float(eig_tol), warm_start=warm_start,
                                                hvp_check=hvp_check)
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

    def _shard(self, idx: torch.Tensor) -> torch.Tensor:
        # The single-process case: this rank holds the whole logical batch. A DDP version
        # returns its contiguous part of idx here (see the module doc).
        return idx

    def _sync(self) -> None:
        # CUDA runs asynchronously: wait before reading the clock, or time lands elsewhere.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ----------------------------------------------------------------------------------------
    # the pieces of one update

    def _default_eigenvalue(self, model, loss_fn, batches, *, seed):
        from . import top_eigenvalue  # the curvature module; imported late on purpose
        return top_eigenvalue(model, loss_fn, batches, method=self.eig_method,
                              max_hvp=self.max_hvp, tol=self.eig_tol, seed=seed)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        if callable(self.adversary):
            return self.adversary(self.model, self.loss_fn, x, y, eps)
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
        n_adv = d.adversarial_count(n)
        micro = d.micro_batch_size
        self._sync()
        start_time = time.perf_counter()
        adv_time = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        local = self._shard(idx)
        micro_batches = 0
        for start in range(0, local.numel(), micro):
            part = local[start:start + micro]
            m = int(part.numel())
            x, y = self._fetch(self.train_data, part)
            k = min(max(n_adv - start, 0), m)  # adversarial samples in this micro-batch
            if k:
                self._sync()
                t0 = time.perf_counter()
                x = x.clone()
                x[:k] = self._perturb(x[:k], y[:k], d.adv_eps).detach()
                self.model.train()  # the adversary restores the mode; be explicit anyway
                self._sync()
                adv_time += time.perf_counter() - t0
            loss = self.loss_fn(self.model(x), y)
            # m / n: the accumulated gradient is the gradient of the mean over all n samples
            (loss * (m / n)).backward()
            acc.loss_sum += float(loss.detach()) * m
            micro_batches += 1
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
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=self.generator))
        try:
            result = self.eigenvalue_fn(self.model, self.loss_fn, batches, seed=seed)
        except ValueError as exc:
            # A diverged run (non-finite weights or loss) has no eigenvalue: skip the check
            # like a non-finite value. Any other error is a real one.
            diverged = any(not bool(torch.isfinite(p).all()) for p in self.model.parameters())
            if not (diverged or "finite" in str(exc)):
                raise
            result = math.nan
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
        metrics = EpochMetrics(
            epoch=d.epoch, train_loss=acc.loss_sum / max(acc.samples, 1), test_loss=test_loss,
            test_accuracy=test_acc,
            eigenvalue=acc.eigenvalues[-1] if acc.eigenvalues else None,
            eigenvalues=list(acc.eigenvalues), eigenvalues_skipped=acc.skipped, hvps=acc.hvps,
            batch_size=acc.batch_size, next_batch_size=d.batch_size, lr=acc.lr,
            updates=d.updates, samples=d.samples_seen, adversarial_samples=acc.adversarial,
            time_train=acc.time_train, time_eigenvalue=acc.time_eig,
            time_adversarial=acc.time_adv, time_eval=time_eval)
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

        Returns:
            A dict of tensors and plain data (``torch.save`` it, or use :meth:`save`).
        """
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

        Raises:
            ValueError: not a trainer checkpoint, an unsupported version, or a scheduler state
                whose config differs from this trainer's (the differing fields are named).
        """
        if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not a hessbatch trainer checkpoint (format {got!r}, expected "
                             f"{CHECKPOINT_FORMAT!r})")
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"trainer checkpoint version {state.get('version')!r} is not "
                             f"supported (this hessbatch reads {CHECKPOINT_VERSION})")
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

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write a checkpoint atomically (a temporary file, then a rename).

        Args:
            path: the file to write.
            extra: plain data stored beside the state under ``"extra"`` (the command line keeps
                the model and data spec there, so ``hessbatch eig`` can rebuild the model).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        state["extra"] = dict(extra or {})
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :meth:`Trainer.save` (tensors on the CPU).

    Loads with ``weights_only=True``: a checkpoint holds tensors and plain data only, so a
    tampered file cannot run code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable trainer checkpoint.
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
    return state
