"""The core's decisions inside a training loop you already have: a batch sampler and an adapter.

:class:`hessbatch.deep.Trainer` owns the loop. Most loops are someone else's, so this module gives
them the two things they need, and nothing else:

* :class:`AdaptiveBatchSampler`, a ``torch.utils.data.Sampler`` of index lists for
  ``DataLoader(dataset, batch_sampler=...)``: the DataLoader keeps its workers, pinning and
  collate. It yields *micro-batches* of ``micro_batch_size`` indices from one shuffled
  permutation per epoch; the logical batch ``B`` is built from ``accumulation_steps`` of them.
* :class:`LoopAdapter`, which ties the sampler, the core and the optimizer together: it tells the
  loop the weight of each micro-batch's loss and when an update is complete, writes the decided
  lr into the optimizer, computes the eigenvalue when the core asks for one (with
  :func:`hessbatch.deep.top_eigenvalue`), makes ABSA's adversarial samples (with
  :func:`hessbatch.deep.fgsm`), and saves and restores all of it with one ``state_dict``.

The loop, with the adapter (docs/integrations.md has it before and after)::

    loader = DataLoader(train, batch_sampler=hb.sampler, num_workers=2)
    while not hb.finished:
        for x, y in loader:
            x, weight = hb.micro_batch(x, y)            # ABSA samples in x; weight = m / n
            (loss_fn(model(x), y) * weight).backward()
            if hb.update_complete:                      # the logical batch is in the gradient
                optimizer.step(); optimizer.zero_grad()
                hb.step()                               # reports it; eigenvalue when due
        hb.end_epoch()

Why the micro-batches do not depend on ``B``: a logical batch starts at a multiple of ``B`` (a
multiple of the micro-batch) or after a short one at the end of an epoch, so the micro-batch
boundaries of an epoch are always the multiples of ``micro_batch_size``: the index stream is
``perm[0:m], perm[m:2m], ...`` whatever ``B`` is. When ``B`` changes mid-epoch only the grouping
changes, which the adapter does as the batches arrive. This is also why the DataLoader's
prefetching (workers fetch a few micro-batches ahead) can never get a batch wrong.

Same trajectory as :class:`~hessbatch.deep.Trainer` (tested in float64, ``num_workers`` 0 and
2), given the Trainer's conventions, which the adapter keeps: one ``torch.Generator`` seeded by
``seed`` draws each epoch's permutation, then each Hessian batch and solver seed, in that order;
micro-batch ``j`` of ``m_j`` samples in a logical batch of ``n`` contributes
``loss_j * m_j / n`` (the gradient of the mean over the ``n`` samples); a short last batch is
stepped; the first ``decision.adversarial_count(n)`` samples of a logical batch are adversarial;
each group's lr is ``decision.lr * group.get("lr_scale", 1.0)``. One convention is the loop's:
give the DataLoader its own generator (``generator=torch.Generator()``), because each
``iter(loader)`` otherwise draws a worker seed from torch's global RNG, which dropout also uses.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler, default_collate

from hessbatch import Decision, Scheduler, SchedulerConfig, SchedulerError
from ._trainer import call_eigenvalue_fn, check_loop_arguments  # shared by every loop

__all__ = ["AdaptiveBatchSampler", "LoopAdapter", "LOOP_STATE_FORMAT", "LOOP_STATE_VERSION"]

LOOP_STATE_FORMAT = "hessbatch.deep.loop"
LOOP_STATE_VERSION = 1
_SAMPLER_FORMAT = "hessbatch.deep.sampler"
_ADVERSARIES = ("fgsm", "random")


def _as_scheduler(scheduler: Any) -> Scheduler:
    if isinstance(scheduler, SchedulerConfig):
        scheduler = Scheduler(scheduler)
    if not isinstance(scheduler, Scheduler):
        raise TypeError(f"scheduler must be a hessbatch.Scheduler or SchedulerConfig, got "
                        f"{type(scheduler).__name__}")
    return scheduler


def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


class AdaptiveBatchSampler(Sampler[list[int]]):
    """Micro-batches of indices for a DataLoader; the logical batch follows the core.

    Each pass over it is one epoch: a fresh permutation ``perm`` of the ``N =
    samples_per_epoch`` indices (drawn from ``generator`` when the pass starts), yielded as
    ``perm[k*m:(k+1)*m]`` with ``m = micro_batch_size`` (the last one may be shorter). The
    logical batch is :attr:`accumulation_steps` micro-batches, read from the scheduler's current
    decision; it may change mid-epoch, which changes the grouping only (see the module doc).

    Position and resume: the loop reports what it consumed (:class:`LoopAdapter` does, through
    :meth:`consume` and :meth:`commit`), and a pass that starts in the middle of an epoch (after
    :meth:`load_state_dict`, or after the loop broke out of an epoch) continues from the
    consumed position in the same permutation; once the whole epoch is consumed, passes yield
    nothing until :meth:`end_epoch`. Used without an adapter (no consumption reported), every
    pass is a new epoch.

    Args:
        scheduler: the core (a :class:`~hessbatch.Scheduler` or a config); read, never driven.
        generator: the ``torch.Generator`` for the permutations (share it with whatever else
            must stay in one random stream); default: a new one seeded by ``seed``.
        seed: seeds the default generator.

    Raises:
        TypeError, ValueError: a bad scheduler, generator or seed.

    Example:
        >>> from hessbatch import SchedulerConfig
        >>> s = AdaptiveBatchSampler(SchedulerConfig(method="bl", lr=0.1, batch_size=4,
        ...     micro_batch_size=2, samples_per_epoch=5, epochs=1))
        >>> [len(b) for b in s], s.accumulation_steps, len(s)
        ([2, 2, 1], 2, 3)
    """

    def __init__(self, scheduler: Scheduler | SchedulerConfig, *,
                 generator: torch.Generator | None = None, seed: int = 0):
        self.scheduler = _as_scheduler(scheduler)
        _check_int("seed", seed, 0)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator (indices are drawn on the "
                             f"CPU), got one on {generator.device}")
        self.generator = generator if generator is not None else \
            torch.Generator().manual_seed(seed)
        self.num_samples = self.scheduler.config.samples_per_epoch
        self.micro_batch_size = self.scheduler.config.micro_batch_size
        self._perm: torch.Tensor | None = None
        self._epoch_state: torch.Tensor | None = None  # generator state before this epoch's perm
        self._consumed = 0   # samples of this epoch the loop has taken
        self._committed = 0  # samples of this epoch in completed updates
        self._exhausted = False  # the last pass yielded the epoch's last micro-batch

    # -- what the loop reads
    @property
    def batch_size(self) -> int:
        """B, the logical batch the core decided for the next update."""
        return self.scheduler.decision.batch_size

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per logical batch now (``B / micro_batch_size``)."""
        return self.scheduler.decision.accumulation_steps

    @property
    def position(self) -> int:
        """Samples of the current epoch the loop has consumed."""
        return self._consumed

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.micro_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        # A generator function on purpose: the body (and the permutation draw) runs at the
        # first next(), so an iterator that is created and dropped unused (a multi-worker
        # DataLoader creates two per epoch) consumes no randomness.
        # New epoch: none open, or the last pass ran to its end with no consumption reported
        # (the sampler used without an adapter). An epoch consumed to its end yields nothing
        # until end_epoch(): the loop's inner loop then ends at once and reports the epoch.
        if self._perm is None or (self._exhausted and self._consumed == 0):
            self._epoch_state = self.generator.get_state()
            self._perm = torch.randperm(self.num_samples, generator=self.generator)
            self._consumed = self._committed = 0
        self._exhausted = False
        perm, m = self._perm, self.micro_batch_size
        for start in range(self._consumed, self.num_samples, m):
            yield perm[start:start + m].tolist()
        self._exhausted = True

    # -- what the loop (the adapter) reports
    def consume(self, samples: int) -> None:
        """The loop took ``samples`` more samples of this epoch."""
        _check_int("samples", samples, 1)
        if self._consumed + samples > self.num_samples:
            raise ValueError(f"consume({samples}) at position {self._consumed} passes the "
                             f"epoch's {self.num_samples} samples")
        self._consumed += samples

    def commit(self) -> None:
        """Everything consumed so far is in completed updates (a resumable position)."""
        self._committed = self._consumed

    def end_epoch(self) -> None:
        """Forget the finished epoch: the next pass draws a new permutation."""
        self._perm, self._epoch_state = None, None
        self._consumed = self._committed = 0
        self._exhausted = False

    # -- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Position in the epoch and generator states (the permutation is re-drawn on load).

        Raises:
            RuntimeError: samples were consumed that are in no completed update yet.
        """
        if self._consumed != self._committed:
            pending = self._consumed - self._committed
            raise RuntimeError(
                f"sampler state taken in the middle of a logical batch ({pending} samples "
                "consumed since the last update); save after the update (LoopAdapter.step())")
        return {"format": _SAMPLER_FORMAT, "version": 1, "num_samples": self.num_samples,
                "micro_batch_size": self.micro_batch_size, "position": self._committed,
                "epoch_generator": self._epoch_state, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next pass continues the saved epoch.

        Raises:
            ValueError: not a sampler state, or one for another data size or micro-batch.
        """
        if not isinstance(state, Mapping) or state.get("format") != _SAMPLER_FORMAT:
            raise ValueError(f"not a hessbatch sampler state: {type(state).__name__}")
        for key, mine in (("num_samples", self.num_samples),
                          ("micro_batch_size", self.micro_batch_size)):
            if state[key] != mine:
                raise ValueError(f"the saved sampler has {key} = {state[key]}, this one "
                                 f"{mine}: build it from the same scheduler config")
        position = _check_int("position", state["position"], 0)
        if position > self.num_samples or (position and state["epoch_generator"] is None):
            raise ValueError(f"sampler state with position {position} is inconsistent")
        if state["epoch_generator"] is not None:
            self.generator.set_state(state["epoch_generator"])
            self._perm = torch.randperm(self.num_samples, generator=self.generator)
            self._epoch_state = state["epoch_generator"].clone()
        else:
            self._perm, self._epoch_state = None, None
        self.generator.set_state(state["generator"])
        self._consumed = self._committed = position
        self._exhausted = False


class LoopAdapter:
    """Run a :class:`hessbatch.Scheduler`'s decisions inside your own training loop.

    Per micro-batch ``j`` (``m_j`` samples) of a logical batch of ``n`` samples (``n = B``, or
    what is left at the end of an epoch), :meth:`micro_batch` returns the inputs (the first
    ``decision.adversarial_count(n)`` samples of the logical batch replaced by FGSM, for ABSA)
    and the weight ``m_j / n``: back-propagating ``loss_j * m_j / n`` accumulates the gradient
    of the mean loss over the ``n`` samples. When :attr:`update_complete` is true the loop steps
    its optimizer and calls :meth:`step`, which reports the update to the core, computes the
    eigenvalue when one is due, and writes the next lr into every param group as
    ``decision.lr * group.get("lr_scale", 1.0)`` (the optimizer's lr is always the one for the
    next update: after construction, every event, and :meth:`load_state_dict`).

    Args:
        model: the ``nn.Module`` being trained (for the eigenvalue and FGSM).
        optimizer: any ``torch.optim.Optimizer``; its lr is written, nothing else is touched.
            Param groups with different lrs need a ``"lr_scale"`` entry each (else an error).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss (for the eigenvalue, FGSM).
        train_data: the map-style training dataset (Hessian batches are drawn from it); its
            length must be the scheduler's ``samples_per_epoch``.
        scheduler: a :class:`~hessbatch.Scheduler` or a config.
        seed: seeds the one generator of permutations, Hessian batches and solver seeds.
        collate_fn: turns a list of samples into a batch whose first two items are ``(x, y)``
            (for Hessian batches; default ``default_collate``).
        hessian_batch_size, eigenvalue_fn, eig_method, max_hvp, eig_tol, adversary,
            input_range: as in :class:`hessbatch.deep.Trainer`.
        compute_eigenvalues: ``True`` (default): :meth:`step` computes a due eigenvalue itself;
            ``False``: the loop reads :attr:`eigenvalue_due` and calls :meth:`report_eigenvalue`
            (or :meth:`compute_eigenvalue`).
        sampler: an :class:`AdaptiveBatchSampler` over the same scheduler, to adopt (its
            generator is then the one used); default: a new one.

    Raises:
        TypeError, ValueError: naming the argument (a dataset whose length is not
            ``samples_per_epoch``, an unknown adversary, param groups with different lrs and no
            ``lr_scale``, ...).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 train_data: Dataset, scheduler: Scheduler | SchedulerConfig, *, seed: int = 0,
                 collate_fn: Callable[[list], Any] = default_collate,
                 hessian_batch_size: int = 128,
                 eigenvalue_fn: Callable[..., Any] | None = None, eig_method: str = "lanczos",
                 max_hvp: int = 10, eig_tol: float = 1e-2, warm_start: bool = False,
                 hvp_check: str = "error",
                 adversary: str | Callable[..., torch.Tensor] = "fgsm",
                 input_range: tuple[float, float] = (0.0, 1.0),
                 compute_eigenvalues: bool = True,
                 sampler: AdaptiveBatchSampler | None = None):
        check_loop_arguments(model, optimizer, loss_fn)
        if not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        self.scheduler = _as_scheduler(scheduler)
        try:
            n_train = len(train_data)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError("train_data must be a map-style dataset with a length, got "
                            f"{type(train_data).__name__}") from None
        if self.scheduler.config.samples_per_epoch != n_train:
            raise ValueError(
                f"scheduler samples_per_epoch must equal len(train_data) = {n_train}, got "
                f"{self.scheduler.config.samples_per_epoch} (the core counts epochs in samples)")
        _check_int("hessian_batch_size", hessian_batch_size, 1)
        _check_int("max_hvp", max_hvp, 1)
        if eig_method not in ("power", "lanczos"):
            raise ValueError(f"eig_method must be 'power' or 'lanczos', got {eig_method!r}")
        if not (isinstance(eig_tol, (int, float)) and math.isfinite(eig_tol) and eig_tol >= 0):
            raise ValueError(f"eig_tol must be a finite number >= 0, got {eig_tol!r}")
        if not callable(adversary) and adversary not in _ADVERSARIES:
            raise ValueError(f"adversary must be one of {', '.join(_ADVERSARIES)} or a "
                             f"callable, got {adversary!r}")
        if eigenvalue_fn is not None and not callable(eigenvalue_fn):
            raise TypeError(f"eigenvalue_fn must be callable, got {type(eigenvalue_fn).__name__}")
        try:
            low, high = (float(v) for v in input_range)
        except (TypeError, ValueError):
            raise TypeError(f"input_range must be a pair of numbers, got {input_range!r}") \
                from None
        if not low < high:
            raise ValueError(f"input_range must have low < high, got {input_range!r}")
        lrs = {g["lr"] for g in optimizer.param_groups}
        if len(lrs) > 1 and not any("lr_scale" in g for g in optimizer.param_groups):
            raise ValueError(
                f"optimizer param groups have different lrs {sorted(lrs)} and no 'lr_scale': "
                "the adapter writes decision.lr * group['lr_scale'] into every group, so give "
                "each group its scale (e.g. {'params': ..., 'lr_scale': 0.1}) instead of an lr")
        if sampler is None:
            sampler = AdaptiveBatchSampler(self.scheduler, seed=seed)
        elif not isinstance(sampler, AdaptiveBatchSampler) or \
                sampler.scheduler is not self.scheduler:
            raise ValueError("sampler must be an AdaptiveBatchSampler over this scheduler")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.train_data, self.collate_fn = train_data, collate_fn
        self.sampler = sampler
        self.generator = sampler.generator
        self.hessian_batch_size, self.eig_method = hessian_batch_size, eig_method
        self.max_hvp, self.eig_tol = max_hvp, float(eig_tol)
        self.adversary, self.input_range = adversary, (low, high)
        if eigenvalue_fn is None:  # as the Trainer's: warm starts, first-check self-tests
            from ._eigen import WarmStartEigenvalue
            eigenvalue_fn = WarmStartEigenvalue(method=eig_method, max_hvp=max_hvp,
                                                tol=float(eig_tol), warm_start=warm_start,
                                                hvp_check=hvp_check)
        self.eigenvalue_fn = eigenvalue_fn
        self.compute_eigenvalues = bool(compute_eigenvalues)
        # Events reported to the core, in order, as Trainer.events: ("step", n),
        # ("eigenvalue", lam), ("skip", None), ("end_epoch", None). Not checkpointed.
        self.events: list[tuple[str, Any]] = []
        # One record per update: (samples n, B decided, lr written, micro-batches, adversarial).
        self.update_log: list[tuple[int, int, float, int, int]] = []
        self._n = 0          # samples in the logical batch being accumulated (0: none open)
        self._done = 0       # of which already handed out
        self._micro = 0      # micro-batches handed out for it
        self._adv = 0        # adversarial samples it has
        self._eps = 0.0
        self._set_lr()

    # ---------------------------------------------------------------------------- reading
    @property
    def decision(self) -> Decision:
        """The core's decision for the next update."""
        return self.scheduler.decision

    @property
    def finished(self) -> bool:
        """All the scheduler's epochs have ended."""
        return self.scheduler.decision.finished

    @property
    def update_complete(self) -> bool:
        """The micro-batches of the logical batch are all in: step the optimizer, then step()."""
        return self._n > 0 and self._done == self._n

    @property
    def eigenvalue_due(self) -> bool:
        """The core waits for an eigenvalue (only with ``compute_eigenvalues=False``)."""
        return self.scheduler.decision.eigenvalue_due

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches in the logical batch being accumulated (or the next one)."""
        n = self._n or min(self.decision.batch_size,
                           self.sampler.num_samples - self.sampler.position)
        return math.ceil(max(n, 1) / self.sampler.micro_batch_size)

    # ---------------------------------------------------------------------------- the loop
    def micro_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Register the next micro-batch; returns ``(x, weight)`` for ``loss * weight``.

        Args:
            x: the micro-batch's inputs, as the DataLoader gave them (moved to the device).
            y: its targets (the sample count is ``len(y)``).

        Returns:
            ``x`` with its adversarial samples (a new tensor; ``x`` itself when there are
            none), and ``weight = m / n``.

        Raises:
            SchedulerError: the schedule is finished, or an eigenvalue is still due.
            RuntimeError: the previous logical batch is complete but :meth:`step` was not
                called, or the epoch is consumed and :meth:`end_epoch` was not called.
            ValueError: the micro-batch is not the size the sampler yields (a DataLoader not
                built with ``batch_sampler=adapter.sampler``).
        """
        if self.finished:
            raise SchedulerError(f"all {self.scheduler.config.epochs} epochs are done")
        if self.update_complete:
            raise RuntimeError("the logical batch is complete: call optimizer.step() and "
                               "adapter.step() before the next micro-batch")
        left = self.sampler.num_samples - self.sampler.position
        if left <= 0:
            raise RuntimeError(f"the epoch's {self.sampler.num_samples} samples are all "
                               "consumed: call adapter.end_epoch() before the next epoch")
        if self._n == 0:
            d = self.decision
            if d.eigenvalue_due:
                raise SchedulerError("an eigenvalue is due: report_eigenvalue() or "
                                     "compute_eigenvalue() before the next update")
            self._n = min(d.batch_size, left)
            self._done = self._micro = 0
            self._adv, self._eps = d.adversarial_count(self._n), d.adv_eps
        m = int(y.shape[0]) if isinstance(y, torch.Tensor) and y.dim() else len(y)
        expected = min(self.sampler.micro_batch_size, self._n - self._done)
        if m != expected:
            raise ValueError(
                f"micro-batch of {m} samples where the schedule expects {expected} (position "
                f"{self.sampler.position} of {self.sampler.num_samples}); build the DataLoader "
                "with batch_sampler=adapter.sampler and no batch_size, drop_last or sampler")
        k = min(max(self._adv - self._done, 0), m)
        if k:
            x = x.clone()
            x[:k] = self._perturb(x[:k], y[:k], self._eps).detach()
        weight = m / self._n
        self._done += m
        self._micro += 1
        self.sampler.consume(m)
        return x, weight

    def step(self) -> Decision:
        """Report the update just made (call after ``optimizer.step()``).

        Computes the eigenvalue when the core asks for one (``compute_eigenvalues=True``) and
        writes the next lr into the optimizer.

        Raises:
            RuntimeError: the logical batch is not complete yet.
        """
        if not self.update_complete:
            raise RuntimeError(
                f"step() before the logical batch is complete ({self._done} of {self._n} "
                "samples): check adapter.update_complete after each micro-batch")
        n = self._n
        self.update_log.append((n, self.decision.batch_size, self.optimizer.param_groups[0]
                                ["lr"] / self.optimizer.param_groups[0].get("lr_scale", 1.0),
                                self._micro, self._adv))
        self._n = self._done = 0
        d = self.scheduler.step(n)
        self.sampler.commit()
        self.events.append(("step", n))
        if d.eigenvalue_due and self.compute_eigenvalues:
            d = self.compute_eigenvalue()
        self._set_lr()
        return d

    def end_epoch(self) -> Decision:
        """Report the end of the epoch (every sample consumed); writes the next lr.

        Raises:
            RuntimeError: the epoch is not fully consumed, or a logical batch is open.
        """
        if self._n:
            raise RuntimeError("end_epoch() with a logical batch open: step() first")
        if self.sampler.position != self.sampler.num_samples:
            raise RuntimeError(
                f"end_epoch() at sample {self.sampler.position} of "
                f"{self.sampler.num_samples}: an epoch is every sample once (iterate the whole "
                "DataLoader; limits that cut the epoch short are not supported)")
        d = self.scheduler.end_epoch()
        self.sampler.end_epoch()
        self.events.append(("end_epoch", None))
        self._set_lr()
        return d

    # ---------------------------------------------------------------------------- curvature
    def compute_eigenvalue(self) -> Decision:
        """Compute the due eigenvalue on a fresh Hessian batch and report it.

        As :class:`~hessbatch.deep.Trainer`: ``hessian_batch_size`` training samples drawn
        from the generator, split in micro-batches, a solver seed from the generator; a value
        the core refuses (NaN, infinite, negative) clears the check with ``skip_eigenvalue()``.
        """
        d = self.decision
        if not d.eigenvalue_due:
            raise SchedulerError("compute_eigenvalue: no eigenvalue is due")
        batches = self.hessian_batches()
        result = call_eigenvalue_fn(self.eigenvalue_fn, self.model, self.loss_fn, batches,
                                    self.generator)
        return self.report_eigenvalue(getattr(result, "value", result))

    def report_eigenvalue(self, value: float) -> Decision:
        """Report an eigenvalue computed by the loop; a refused value skips the check."""
        try:
            value = float(value)
            d = self.scheduler.eigenvalue(value)
            self.events.append(("eigenvalue", value))
        except (TypeError, ValueError):
            d = self.scheduler.skip_eigenvalue()
            self.events.append(("skip", None))
        self._set_lr()
        return d

    def hessian_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fresh Hessian batch from the training set, as ``(x, y)`` micro-batches on the
        model's device (draws from the generator)."""
        n = self.sampler.num_samples
        size = min(self.hessian_batch_size, n)
        idx = torch.randperm(n, generator=self.generator)[:size]
        micro, dev = self.sampler.micro_batch_size, self._device()
        out = []
        for i in range(0, size, micro):
            batch = self.collate_fn([self.train_data[j] for j in idx[i:i + micro].tolist()])
            x, y = batch[0], batch[1]
            out.append((x.to(dev), y.to(dev)))
        return out

    def _device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def _default_eigenvalue(self, model, loss_fn, batches, *, seed):
        from . import top_eigenvalue
        return top_eigenvalue(model, loss_fn, batches, method=self.eig_method,
                              max_hvp=self.max_hvp, tol=self.eig_tol, seed=seed)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        if callable(self.adversary):
            return self.adversary(self.model, self.loss_fn, x, y, eps)
        from . import fgsm, random_sign
        if self.adversary == "fgsm":
            return fgsm(self.model, self.loss_fn, x, y, eps, clip=self.input_range)
        return random_sign(x, eps, clip=self.input_range, generator=self.generator)

    def _set_lr(self) -> None:
        lr = self.decision.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The core, the sampler's position and the generator, in one dict (``torch.save`` it
        beside your model and optimizer; save after :meth:`step` or :meth:`end_epoch`).

        Raises:
            RuntimeError: a logical batch is half accumulated (its gradient is not saved).
        """
        if self._n:
            raise RuntimeError(
                f"state_dict() in the middle of a logical batch ({self._done} of {self._n} "
                "samples accumulated; the gradient is not saved): save after adapter.step()")
        out = {"format": LOOP_STATE_FORMAT, "version": LOOP_STATE_VERSION,
               "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict()}
        if hasattr(self.eigenvalue_fn, "state_dict"):  # e.g. the warm-start vector
            out["eigenvalue_fn"] = self.eigenvalue_fn.state_dict()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next DataLoader pass continues the saved epoch.

        Raises:
            ValueError: not an adapter state, another version, or a config that differs.
        """
        if not isinstance(state, Mapping) or state.get("format") != LOOP_STATE_FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not a hessbatch loop state (format {got!r}, expected "
                             f"{LOOP_STATE_FORMAT!r})")
        if state.get("version") != LOOP_STATE_VERSION:
            raise ValueError(f"loop state version {state.get('version')!r} is not supported "
                             f"(this hessbatch reads {LOOP_STATE_VERSION})")
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if "eigenvalue_fn" in state and hasattr(self.eigenvalue_fn, "load_state_dict"):
            self.eigenvalue_fn.load_state_dict(state["eigenvalue_fn"])
        self._n = self._done = 0
        self._set_lr()
