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

from ._loop import (LoopAdapter, TrainingDiverged, _check_int, call_eigenvalue_fn,
                    check_one_sample_batchnorm,
                    check_finite_gradients, check_loop_arguments, diverged, fetch,
                    restore_modes, training_modes)

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
        checks: one record per eigenvalue check: ``hvps``, ``status`` (``lower_bound``: the
            solver stopped once "no drop" was certain, ``value`` is a lower bound;
            ``converged``; ``not_converged``: the value was used unconverged), ``threshold``
            (``lam_ref / alpha``, None at the first check), ``value``, ``lower_bound``.
        eigenvalues_not_converged: checks of the epoch whose value was used unconverged.
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
    checks: list = field(default_factory=list)
    eigenvalues_not_converged: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @property
    def hvps_per_check(self) -> float | None:
        """Mean Hessian-vector products per eigenvalue check of the epoch (None: no check)."""
        checks = len(self.eigenvalues) + self.eigenvalues_skipped
        return self.hvps / checks if checks else None


class Trainer:
    """Train ``model`` with the decisions of a :class:`hessbatch.Scheduler`: a plain loop over
    the executor (:class:`hessbatch.deep.LoopAdapter` and its
    :class:`~hessbatch.deep.AdaptiveBatchSampler`).

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
            (default :class:`hessbatch.deep.WarmStartEigenvalue` with ``eig_method``,
            ``max_hvp``, ``eig_tol``, ``warm_start``, ``hvp_check``; with ``parallel``, the
            collective :func:`hessbatch.deep.distributed_top_eigenvalue`).
        hessian_batch_size: training samples per eigenvalue (the paper: a fresh 128 each time);
            above ``len(train_data)`` the whole training set is used.
        eig_method, max_hvp, eig_tol: options of the default eigenvalue function.
        warm_start, hvp_check: options of the default eigenvalue function (each check starts
            from the previous eigenvector; the first check self-tests the loss and the HVP).
            Its state is saved in checkpoints, like that of any ``eigenvalue_fn`` with
            ``state_dict``/``load_state_dict``.
        adversary: ``"fgsm"`` (ABSA), ``"random"`` (random signs of the same size: the
            reviewers' ablation) or a callable ``f(model, loss_fn, x, y, eps) -> x_adv``.
        input_range: ``(low, high)`` that adversarial inputs are clipped to.
        last_batch: ``"step"`` (update on a short last batch) or ``"drop"``; see the module doc.
        eval_batch_size: samples per forward pass during evaluation.
        seed: seeds the executor's generator (shuffling, signs, Hessian batches, solver seeds)
            and the micro-batch seeds of dropout.
        parallel: a :class:`hessbatch.deep.DataParallel` to train on all ranks of a process
            group (the model is then run through DDP); None: one process.
        decision_stop: stop each check's solver as soon as its decision ("no drop") is certain
            (default True; see :class:`hessbatch.deep.LoopAdapter`).

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
                 eval_batch_size: int = 1024, seed: int = 0, parallel: Any = None,
                 decision_stop: bool = True):
        check_loop_arguments(model, optimizer, loss_fn)
        if test_data is not None and len(test_data) < 1:  # type: ignore[arg-type]
            raise ValueError("test_data is empty (pass None for no evaluation)")
        _check_int("eval_batch_size", eval_batch_size, 1)
        _check_int("seed", seed, 0)
        if last_batch not in _LAST_BATCH:
            raise ValueError(f"last_batch must be one of {', '.join(_LAST_BATCH)}, got "
                             f"{last_batch!r}")
        if parallel is not None:
            model = parallel.prepare_model(model)  # SyncBatchNorm when asked (same parameters)
        self.adapter = LoopAdapter(
            model, optimizer, loss_fn, train_data, scheduler, seed=seed,
            hessian_batch_size=hessian_batch_size, eigenvalue_fn=eigenvalue_fn,
            eig_method=eig_method, max_hvp=max_hvp, eig_tol=eig_tol, warm_start=warm_start,
            hvp_check=hvp_check, adversary=adversary, input_range=input_range,
            parallel=parallel, decision_stop=decision_stop,
            config_extra={"test": test_data, "last_batch": last_batch,
                          "eval_batch_size": eval_batch_size})
        hb = self.adapter
        if last_batch == "step":  # a 1-sample last micro-batch that BatchNorm cannot train on
            check_one_sample_batchnorm(model, train_data, hb.scheduler.config.samples_per_epoch,
                                       hb.scheduler.config.micro_batch_size)
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.train_data, self.test_data, self.scheduler = train_data, test_data, hb.scheduler
        self.sampler = hb.sampler
        self.hessian_batch_size, self.eval_batch_size = hessian_batch_size, eval_batch_size
        self.eig_method, self.max_hvp, self.eig_tol = eig_method, max_hvp, hb.eig_tol
        self.adversary, self.input_range, self.last_batch = adversary, hb.input_range, last_batch
        self.seed = seed
        self.parallel = parallel
        self.eigenvalue_fn = hb.eigenvalue_fn
        self.generator = hb.generator
        # the training forward: through DDP with several ranks
        self.forward_model = parallel.wrap(model) if parallel is not None else model
        self.history: list[EpochMetrics] = []
        self._n_train = len(train_data)  # type: ignore[arg-type]

    # the executor's records (see LoopAdapter): per update (n, B, lr, micro-batches,
    # adversarial samples) and the events reported to the core; not checkpointed
    @property
    def update_log(self) -> list[tuple[int, int, float, int, int]]:
        return self.adapter.update_log

    @property
    def events(self) -> list[tuple[str, Any]]:
        return self.adapter.events

    @property
    def world_size(self) -> int:
        return self.adapter.world_size

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (CPU for a parameter-free model)."""
        return self.adapter.device

    def _sync(self) -> None:
        # CUDA runs asynchronously: wait before reading the clock, or time lands elsewhere.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ----------------------------------------------------------------------------------------
    # public loop

    def evaluate(self, dataset: Dataset | None = None) -> tuple[float, float]:
        """Mean loss and accuracy of the model on ``dataset`` (default: the test set).

        Runs in eval mode under ``torch.no_grad`` and restores the model's mode. Accuracy is
        the share of samples whose arg-max output equals the label. With ``parallel``, each
        rank evaluates its contiguous part and the sums are all-reduced (collective).

        Raises:
            ValueError: no dataset given and no test set.
        """
        dataset = self.test_data if dataset is None else dataset
        if dataset is None:
            raise ValueError("evaluate needs a dataset: none given and the trainer has no "
                             "test_data")
        n = len(dataset)  # type: ignore[arg-type]
        lo, hi = 0, n
        if self.parallel is not None:
            lo, hi = self.parallel.shard(n)
        # each module's own flag is restored (a user may keep a frozen BatchNorm in eval mode)
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        loss_sum, correct = 0.0, 0
        try:
            with torch.no_grad():
                for start in range(lo, hi, self.eval_batch_size):
                    idx = torch.arange(start, min(start + self.eval_batch_size, hi))
                    x, y = fetch(dataset, idx, self.device)
                    out = self.model(x)
                    loss_sum += float(self.loss_fn(out, y)) * len(idx)
                    correct += int((out.argmax(dim=1) == y).sum())
        finally:
            restore_modes(modes)
        if self.parallel is not None:
            loss_sum, correct = self.parallel.sum_floats([loss_sum, float(correct)])
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
        sch, hb = self.scheduler, self.adapter
        if sch.decision.finished:
            from hessbatch import SchedulerError
            raise SchedulerError(f"all {sch.config.epochs} epochs are done; nothing to train")
        hb.take_stats()
        loss_sum, samples, steps, biggest, lr = 0.0, 0, 0, 0, 0.0
        time_train = 0.0
        one_process = self.parallel is None
        modes = training_modes(self.model)
        self._sync()
        t_start = time.perf_counter()
        for idx in self.sampler:
            if not hb.batch_open:
                d = sch.decision
                left = self._n_train - self.sampler.position
                if left < d.batch_size and self.last_batch == "drop" and steps:
                    hb.drop_rest_of_epoch()
                    break
                self.optimizer.zero_grad(set_to_none=True)
            x, y = fetch(self.train_data, idx, self.device)
            x, weight = hb.micro_batch(x, y)
            last = hb.update_complete
            with self.parallel.accumulate(self.forward_model, last) if not one_process \
                    else contextlib.nullcontext():
                out = self.forward_model(x)
                if hb.padding:
                    loss = out.sum() * 0.0  # joins the collectives; contributes nothing
                else:
                    loss = self.loss_fn(out, y)
                (loss * weight).backward()
            if not hb.padding:
                value = float(loss.detach())
                if one_process and not math.isfinite(value):
                    raise diverged(sch, "loss", f"the training loss is {value} (micro-batch "
                                                f"{hb._got} of the update)")
                loss_sum += value * int(idx.numel() if hasattr(idx, "numel") else len(idx))
            if last:
                # after the reduction: with several ranks a NaN anywhere is a NaN on every
                # rank, so every rank stops at the same update
                check_finite_gradients(self.model, sch)
                d = sch.decision
                biggest, lr = max(biggest, d.batch_size), d.lr
                samples += hb._n
                self.optimizer.step()
                steps += 1
                self._sync()
                t_eig = hb.stats.time_eigenvalue
                d = hb.step()
                restore_modes(modes)  # an eigenvalue or adversary leaves the user's flags
                if on_update is not None:
                    on_update(self, d)
        d = hb.end_epoch()
        self._sync()
        stats = hb.take_stats()
        time_train = time.perf_counter() - t_start - stats.time_eigenvalue \
            - stats.time_adversarial
        t0 = time.perf_counter()
        test_loss, test_acc = self.evaluate() if self.test_data is not None else (None, None)
        time_eval = time.perf_counter() - t0
        times = [time_train, stats.time_eigenvalue, stats.time_adversarial, 0.0, 0.0]
        if self.parallel is not None:
            loss_sum = self.parallel.sum_floats([loss_sum])[0]
            times[3:] = [self.parallel.take_grad_comm(), self.parallel.take_eigenvalue_comm()]
            times = self.parallel.max_floats(times)
        metrics = EpochMetrics(
            epoch=d.epoch, train_loss=loss_sum / max(samples, 1), test_loss=test_loss,
            test_accuracy=test_acc,
            eigenvalue=stats.eigenvalues[-1] if stats.eigenvalues else None,
            eigenvalues=list(stats.eigenvalues), eigenvalues_skipped=stats.skipped,
            hvps=stats.hvps, batch_size=biggest, next_batch_size=d.batch_size, lr=lr,
            updates=d.updates, samples=d.samples_seen, adversarial_samples=stats.adversarial,
            time_train=times[0], time_eigenvalue=times[1], time_adversarial=times[2],
            time_eval=time_eval, time_grad_comm=times[3], time_eigenvalue_comm=times[4],
            checks=list(stats.checks), eigenvalues_not_converged=stats.not_converged)
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
        self.sampler.end_epoch()  # checkpoints are taken at epoch ends
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = [EpochMetrics(**m) for m in state["history"]]
        if "eigenvalue_fn" in state and hasattr(self.eigenvalue_fn, "load_state_dict"):
            self.eigenvalue_fn.load_state_dict(state["eigenvalue_fn"])
        self.adapter._set_lr()
        self.adapter.state_changed()

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
        and no ``.tmp`` behind. With ``parallel``, rank 0 writes and every rank waits for it.

        Args:
            path: the file to write.
            extra: plain data stored beside the state under ``"extra"`` (the command line keeps
                the model and data spec there, so ``hessbatch eig`` can rebuild the model).

        Raises:
            RuntimeError: called in the middle of an epoch (see :meth:`state_dict`).
            OSError: the file cannot be written (one line naming it and the cause).
        """
        from hessbatch._outputs import write_file
        path = Path(path)
        extra = dict(extra or {})
        if self.parallel is not None:
            extra.setdefault("world_size", self.world_size)
        if self.parallel is None or self.parallel.rank == 0:
            write_file(path, self.checkpoint_bytes(extra))
        if self.parallel is not None:
            self.parallel.barrier()
        return path



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
