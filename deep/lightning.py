"""ABS/ABSA in a PyTorch Lightning fit: one callback (extra ``hessbatch[lightning]``).

Neither ``hessbatch`` nor ``hessbatch.deep`` imports this module; importing it imports
``lightning``. The callback runs a :class:`hessbatch.deep.LoopAdapter` inside Lightning's loop:

* batch size: the train DataLoader takes ``batch_sampler=callback.sampler`` (or is made by
  :meth:`HessbatchCallback.dataloader`), an :class:`~hessbatch.deep.AdaptiveBatchSampler` of
  micro-batches; Lightning sees one micro-batch per ``training_step``.
* gradient accumulation: the callback drives Lightning's own. Before every micro-batch it sets
  ``trainer.accumulate_grad_batches`` (the attribute Lightning's GradientAccumulationScheduler
  sets once per epoch) to a value ``K`` for which Lightning steps the optimizer exactly after the
  last micro-batch of the logical batch and never zeroes the gradient inside it (Lightning steps
  when the epoch's micro-batch count is a multiple of ``K`` and zeroes when the batch index is),
  and it zeroes the gradient itself before the first micro-batch. It also turns Lightning's
  ``loss / K`` into the core's ``loss * m / n`` (the gradient of the mean over the ``n`` samples
  of the logical batch) by scaling, in ``on_before_backward``, the tensor Lightning is about to
  back-propagate (a copy: what ``training_step`` returned and what is logged are unchanged).
  So ``B`` can change in the middle of an epoch, which a fixed ``accumulate_grad_batches`` cannot
  do. Lightning's own ``accumulate_grad_batches`` must therefore stay 1 (an error otherwise).
* lr: written into the optimizer's param groups after every event (``decision.lr *
  group.get("lr_scale", 1.0)``); an lr scheduler from ``configure_optimizers`` is refused.
* eigenvalue: when the core asks, after the optimizer step, on a fresh Hessian batch drawn from
  the train DataLoader's dataset (collated by its ``collate_fn``), for ``loss_fn(module(x), y)``
  with the module in eval mode (:func:`hessbatch.deep.top_eigenvalue`).
* ABSA: the leading adversarial samples of each logical batch are replaced by FGSM in the batch
  (in place, before ``training_step``); the batch must start with ``(x, y)``.
* checkpoints: the core's state, the sampler's position and its generator are the callback's
  ``state_dict``, inside Lightning's checkpoint, so ``trainer.fit(ckpt_path=...)`` resumes the
  same schedule.

* several processes: under ``strategy="ddp"`` (or ``"ddp_spawn"``) with
  ``use_distributed_sampler=False`` the sampler gives each rank its micro-batches and the adapter
  runs with :class:`hessbatch.deep.DataParallel` (docs/distributed.md): one global schedule.
* logging: after each update, ``hessbatch/B``, ``hessbatch/lr``, ``hessbatch/eigenvalue``,
  ``hessbatch/hvps`` and ``hessbatch/adversarial`` through the module's ``self.log``.

The module's ``training_step`` must return the *mean* loss of its batch (as ``loss_fn`` does),
automatic optimization, one optimizer. Example::

    cb = HessbatchCallback(SchedulerConfig(method="abs", ...), F.cross_entropy, seed=0)
    class Net(L.LightningModule):
        ...
        def train_dataloader(self):
            return cb.dataloader(train_set, num_workers=2)
    L.Trainer(max_epochs=cfg.epochs, callbacks=[cb]).fit(Net())
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler
    from lightning.pytorch.strategies import DDPStrategy
except ImportError as exc:  # the optional extra is missing: say how to get it
    raise ImportError(
        "hessbatch.deep.lightning needs PyTorch Lightning: pip install 'hessbatch[lightning]' "
        f"(lightning==2.6.6) [{exc}]") from exc

from hessbatch import Decision, Scheduler, SchedulerConfig

from ._loop import (EXTEND_HVP, LOOP_STATE_FORMAT, LOOP_STATE_VERSION, AdaptiveBatchSampler,
                    LoopAdapter, _as_scheduler)

__all__ = ["HessbatchCallback"]


class _SamplerLoader(DataLoader):
    """A DataLoader over the callback's sampler. Lightning asks a loader for ``state_dict`` /
    ``load_state_dict`` before it trusts a mid-epoch resume; this one's position in the epoch
    is the sampler's, saved in the callback's state, so its own state is empty."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def _check_registered(self) -> None:
        cb = getattr(self, "_hessbatch_callback", None)
        if cb is not None and not cb._registered:
            raise RuntimeError(
                "this DataLoader was made by HessbatchCallback.dataloader(), but the callback "
                "is not in Trainer(callbacks=[...]): without it training would run at a fixed "
                "batch and lr; pass the callback to the Trainer")

    def __len__(self) -> int:
        # Lightning sizes the epoch before it iterates: refuse here, before its fit loop
        # starts (an error raised inside the loop is masked by its teardown)
        self._check_registered()
        return super().__len__()

    def __iter__(self):  # type: ignore[override]
        self._check_registered()
        return super().__iter__()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        pass


class HessbatchCallback(Callback):
    """Lightning callback that trains with the decisions of a :class:`hessbatch.Scheduler`.

    Args:
        scheduler: the core (a :class:`~hessbatch.Scheduler` or a config). Its
            ``samples_per_epoch`` must be the train dataset's length, and Lightning's
            ``max_epochs`` at most its ``epochs``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss, the loss ``training_step``
            computes; used for the Hessian and FGSM.
        seed: seeds the generator of epoch permutations, Hessian batches and solver seeds.
        **adapter_options: ``hessian_batch_size``, ``eigenvalue_fn``, ``eig_method``,
            ``max_hvp``, ``eig_tol``, ``adversary``, ``input_range``, as in
            :class:`hessbatch.deep.LoopAdapter`.

    Attributes:
        sampler: the :class:`~hessbatch.deep.AdaptiveBatchSampler` for the train DataLoader.
        events: the events reported to the core, as ``Trainer.events``.
        update_log: per update ``(n, B, lr, micro-batches, adversarial samples)``.

    Raises:
        ValueError: at fit start, a setup the callback cannot drive, naming the setting:
            ``accumulate_grad_batches != 1`` or a GradientAccumulationScheduler, manual
            optimization, several optimizers, an lr scheduler, several processes without a DDP
            strategy or with ``use_distributed_sampler=True``, a train DataLoader without
            ``batch_sampler=callback.sampler``, an epoch cut short (``limit_train_batches``,
            ``max_steps`` below the schedule's most updates, ``fast_dev_run``,
            ``overfit_batches``), validation inside an epoch with checkpointing, a checkpoint
            without the callback's state, ``max_epochs`` beyond the schedule.
    """

    def __init__(self, scheduler: Scheduler | SchedulerConfig,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 seed: int = 0, log_metrics: bool = True, **adapter_options: Any):
        allowed = {"hessian_batch_size", "eigenvalue_fn", "eig_method", "max_hvp", "eig_tol",
                   "adversary", "input_range", "decision_stop", "seed_micro_batches"}
        unknown = sorted(set(adapter_options) - allowed)
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; allowed: {sorted(allowed)}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.scheduler = _as_scheduler(scheduler)
        self.sampler = AdaptiveBatchSampler(self.scheduler, seed=seed)
        self.seed = seed  # also the adapter's: the micro-batch seeds of dropout
        self.loss_fn = loss_fn
        if adapter_options.get("eigenvalue_fn") is None:
            # Kept here, not in the adapter (made at fit start), so that its warm-start vector
            # is in the callback's checkpoint state and survives a resume.
            from ._eigen import WarmStartEigenvalue
            adapter_options["eigenvalue_fn"] = WarmStartEigenvalue(
                method=adapter_options.get("eig_method", "lanczos"),
                max_hvp=adapter_options.get("max_hvp", 10),
                tol=float(adapter_options.get("eig_tol", 1e-2)), warm_start=False,
                extend_hvp=EXTEND_HVP)
        self.adapter_options = adapter_options
        self.adapter: LoopAdapter | None = None
        self.events: list[tuple[str, Any]] = []
        self.update_log: list[tuple[int, int, float, int, int]] = []
        self._scale = 1.0
        self.log_metrics = bool(log_metrics)
        self._registered = False

    @property
    def decision(self) -> Decision:
        """The core's decision for the next update."""
        return self.scheduler.decision

    def dataloader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        """``DataLoader(dataset, batch_sampler=self.sampler, **kwargs)`` (workers, pinning,
        collate are yours; ``batch_size``, ``shuffle``, ``sampler``, ``drop_last`` are the
        sampler's and refused). It tells Lightning it is resumable (the position in the epoch
        is in the callback's state), so a mid-epoch ``ckpt_path`` gives no warning."""
        clash = sorted({"batch_size", "shuffle", "sampler", "drop_last",
                        "batch_sampler"} & set(kwargs))
        if clash:
            raise ValueError(f"{clash} are decided by the callback's sampler; leave them out")
        loader = _SamplerLoader(dataset, batch_sampler=self.sampler, **kwargs)
        loader._hessbatch_callback = self
        return loader

    # ------------------------------------------------------------------------ set-up checks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._registered = True
        if trainer.world_size > 1:
            # this rank's micro-batches (round robin), before Lightning sizes the epoch
            self.sampler.set_rank(trainer.global_rank, trainer.world_size)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._registered = True
        if trainer.fast_dev_run:
            raise ValueError(
                f"Trainer(fast_dev_run={trainer.fast_dev_run}) runs a few batches, not the "
                "schedule's epochs, so the core's epochs and sample counts would be wrong: "
                "leave fast_dev_run out with HessbatchCallback (for a quick check use a "
                "SchedulerConfig with epochs=1 on a small dataset)")
        if trainer.overfit_batches:
            raise ValueError(
                f"Trainer(overfit_batches={trainer.overfit_batches}) trains on a fixed subset "
                "of batches, which is not the schedule's epoch: leave overfit_batches out with "
                "HessbatchCallback (or train on a Subset of the data with samples_per_epoch "
                "set to its length)")
        if trainer.accumulate_grad_batches != 1 or any(
                isinstance(c, GradientAccumulationScheduler) for c in trainer.callbacks):
            raise ValueError(
                f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) (or a "
                "GradientAccumulationScheduler) with HessbatchCallback: the callback decides "
                "the accumulation from the scheduler's batch size B and micro_batch_size; "
                "remove Lightning's setting and set micro_batch_size in the SchedulerConfig")
        if not pl_module.automatic_optimization:
            raise ValueError("HessbatchCallback needs automatic optimization "
                             "(automatic_optimization = True): it steps the optimizer")
        if len(trainer.optimizers) != 1:
            raise ValueError(f"HessbatchCallback drives one optimizer, configure_optimizers "
                             f"returned {len(trainer.optimizers)}")
        if trainer.lr_scheduler_configs:
            raise ValueError("configure_optimizers returned an lr scheduler: the lr is the "
                             "core's decision (lr decay: lr_decay_epochs/lr_decay_factor in "
                             "the SchedulerConfig); return the optimizer alone")
        if trainer.world_size > 1:
            strategy = type(trainer.strategy).__name__
            if not isinstance(trainer.strategy, DDPStrategy):
                raise ValueError(f"HessbatchCallback on {trainer.world_size} processes runs "
                                 f"under strategy='ddp' or 'ddp_spawn', got {strategy}")
            if trainer._accelerator_connector.use_distributed_sampler:
                raise ValueError(
                    "Trainer(use_distributed_sampler=True) with HessbatchCallback on "
                    f"{trainer.world_size} processes: Lightning would replace the callback's "
                    "sampler, which already gives each rank its micro-batches; pass "
                    "use_distributed_sampler=False")
        elif trainer.strategy.handles_gradient_accumulation:
            raise ValueError(f"HessbatchCallback cannot drive {type(trainer.strategy).__name__}, "
                             "which accumulates gradients itself")
        cfg = self.scheduler.config
        if trainer.max_steps != -1:
            # the most updates the schedule can make: every epoch at B0
            most = cfg.epochs * -(-cfg.samples_per_epoch // cfg.batch_size)
            if trainer.max_steps < most:
                raise ValueError(
                    f"Trainer(max_steps={trainer.max_steps}) could cut an epoch short (the "
                    f"schedule can make up to {most} updates): the schedule's length is its "
                    f"epochs; set max_epochs, or max_steps >= {most}")
        if trainer.max_epochs is None or trainer.max_epochs < 0 or \
                trainer.max_epochs > cfg.epochs:
            raise ValueError(f"Trainer(max_epochs={trainer.max_epochs}) must be set and at "
                             f"most the schedule's epochs = {cfg.epochs}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if getattr(loader, "batch_sampler", None) is not self.sampler:
            raise ValueError("the train DataLoader must be built with batch_sampler="
                             "callback.sampler (or by callback.dataloader(dataset)), got "
                             f"{type(getattr(loader, 'batch_sampler', loader)).__name__}")
        if trainer.num_training_batches != len(self.sampler):
            raise ValueError(
                f"Lightning runs {trainer.num_training_batches} batches per epoch, the "
                f"schedule's epoch is {len(self.sampler)} micro-batches: remove "
                "limit_train_batches (an epoch is every sample once)")
        if trainer.checkpoint_callbacks and trainer.val_check_batch < \
                trainer.num_training_batches and trainer.num_val_batches and \
                any(trainer.num_val_batches):
            raise ValueError(
                f"validation every {trainer.val_check_batch} micro-batches "
                "(val_check_interval) with checkpointing: Lightning saves a checkpoint after "
                "each validation, which can fall inside a logical batch, whose gradient cannot "
                "be saved. Validate at epoch ends (val_check_interval=1.0, "
                "check_val_every_n_epoch) or pass enable_checkpointing=False")
        if trainer.current_epoch != self.scheduler.state.epoch:
            raise ValueError(
                f"Lightning is at epoch {trainer.current_epoch} and the schedule at epoch "
                f"{self.scheduler.state.epoch}: the checkpoint given to fit(ckpt_path=...) has "
                "no HessbatchCallback state (it was made without the callback), so the "
                "schedule cannot resume; start a new fit, or resume from a checkpoint written "
                "with the callback")
        parallel = None
        if trainer.world_size > 1:
            from ._distributed import DataParallel
            parallel = DataParallel()
        self.adapter = LoopAdapter(pl_module, trainer.optimizers[0], self.loss_fn,
                                   loader.dataset, self.scheduler, sampler=self.sampler,
                                   collate_fn=loader.collate_fn, parallel=parallel,
                                   seed=self.seed,
                                   **self.adapter_options)
        self.adapter.events, self.adapter.update_log = self.events, self.update_log

    # ------------------------------------------------------------------------ each micro-batch
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        hb = self.adapter
        assert hb is not None
        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2
                and isinstance(batch[0], torch.Tensor)):
            raise TypeError(f"the train batch must be an (x, y, ...) sequence with a tensor x, "
                            f"got {type(batch).__name__}")
        first = not hb.batch_open
        if first:
            pl_module.optimizer_zero_grad(trainer.current_epoch, batch_idx,
                                          trainer.optimizers[0])
        x, weight = hb.micro_batch(batch[0], batch[1])
        if x is not batch[0]:
            batch[0].copy_(x)  # the adversarial samples, into the batch training_step gets
        k = hb.accumulation_steps
        # Lightning steps after micro-batch i (0-based in the epoch) when (i + 1) % K == 0 and
        # zeroes the gradient before its backward when i % K == 0 (see the module doc).
        if k == 1:
            acc = 1
        elif hb.update_complete:
            acc = batch_idx + 1
        else:
            acc = batch_idx + 2
        trainer.accumulate_grad_batches = acc
        self._scale = acc * weight

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: torch.Tensor) -> None:
        # Lightning back-propagates loss / K, a tensor of its own: make it loss * m / n.
        loss.mul_(self._scale)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        hb = self.adapter
        assert hb is not None
        if hb.update_complete:
            checks = len(hb.stats.eigenvalues) + hb.stats.skipped
            hb.step()  # the optimizer has stepped: report, eigenvalue when due, next lr
            if self.log_metrics:
                n, b, lr, _, adv = hb.update_log[-1]
                self._log(pl_module, n, b, lr, adv, checks)

    def _log(self, pl_module: pl.LightningModule, n: int, b: int, lr: float, adv: int,
             checks: int) -> None:
        """What the update did, through Lightning's logger (``self.log`` conventions: one
        value per optimizer step, the same on every rank, so no ``sync_dist``)."""
        hb = self.adapter
        assert hb is not None
        log = dict(on_step=True, on_epoch=False, batch_size=n, sync_dist=False)
        pl_module.log("hessbatch/B", float(b), prog_bar=True, **log)
        pl_module.log("hessbatch/lr", float(lr), prog_bar=True, **log)
        pl_module.log("hessbatch/adversarial", float(adv), **log)
        pl_module.log("hessbatch/hvps", float(hb.stats.hvps), **log)
        if len(hb.stats.eigenvalues) + hb.stats.skipped > checks and hb.stats.eigenvalues:
            pl_module.log("hessbatch/eigenvalue", float(hb.stats.eigenvalues[-1]),
                          prog_bar=True, **log)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.adapter is not None
        self.adapter.end_epoch()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                 stage: str) -> None:
        trainer.accumulate_grad_batches = 1

    # ------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The core's state, the sampler's position and generator (a plain, versioned dict)."""
        if self.adapter is not None and self.adapter._n:
            raise RuntimeError(
                "a checkpoint was asked for in the middle of a logical batch (micro-batch "
                f"{self.adapter._micro} of {self.adapter.accumulation_steps}; its gradient "
                "cannot be saved), e.g. by val_check_interval or ModelCheckpoint("
                "train_time_interval=...): checkpoint at epoch ends or with "
                "ModelCheckpoint(every_n_train_steps=...), which saves after an update")
        out = {"format": LOOP_STATE_FORMAT, "version": LOOP_STATE_VERSION,
               "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict()}
        eig = self.adapter_options.get("eigenvalue_fn")
        if hasattr(eig, "state_dict"):  # the warm-start vector
            out["eigenvalue_fn"] = eig.state_dict()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (Lightning calls it when ``fit(ckpt_path=...)``)."""
        if state_dict.get("format") != LOOP_STATE_FORMAT or \
                state_dict.get("version") != LOOP_STATE_VERSION:
            raise ValueError(f"not a hessbatch callback state (format "
                             f"{state_dict.get('format')!r}, version "
                             f"{state_dict.get('version')!r})")
        self.scheduler.load_state_dict(state_dict["scheduler"])
        self.sampler.load_state_dict(state_dict["sampler"])
        eig = self.adapter_options.get("eigenvalue_fn")
        if "eigenvalue_fn" in state_dict and hasattr(eig, "load_state_dict"):
            eig.load_state_dict(state_dict["eigenvalue_fn"])
        if self.adapter is not None:
            self.adapter.load_state_dict(state_dict)

