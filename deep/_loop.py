"""The one executor of a logical batch: a batch sampler and an adapter that every door uses.

Every way to train here runs the core's decisions through this module, so each convention of a
training step lives in one place:

* :class:`AdaptiveBatchSampler`, a ``torch.utils.data.Sampler`` of index lists for
  ``DataLoader(dataset, batch_sampler=...)``: one shuffled permutation per epoch, cut into
  *micro-batches* of ``micro_batch_size`` indices; the logical batch ``B`` is built from
  ``accumulation_steps`` of them. With ``world_size`` ranks, rank ``r`` receives micro-batches
  ``r, r + W, r + 2W, ...`` of the epoch (round robin), padded with one weight-0 micro-batch
  where the last round is short (below).
* :class:`LoopAdapter`, the executor: the weight of each micro-batch's loss, where ABSA's
  adversarial rows go (``Decision.adversarial_ranges``) and FGSM on them, the seed of each
  micro-batch's dropout masks, the lr written into each param group, the Hessian batch and the
  solver seed, the eigenvalue call (collective with several ranks), the report of every event
  to the core, and one ``state_dict``.

The doors: :class:`hessbatch.deep.Trainer` (and ``hessbatch train``, ``--nproc N``) is a plain
loop over this sampler and adapter; your own loop uses them directly; the Lightning callback
(:mod:`hessbatch.deep.lightning`) calls them from Lightning's hooks. Data parallelism is a
property of the executor (``parallel=DataParallel(...)``), not of a door.

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
multiple of the micro-batch, and of ``world_size`` micro-batches with several ranks) or after a
short one at the end of an epoch, so the micro-batch boundaries of an epoch are always the
multiples of ``micro_batch_size``: the index stream is ``perm[0:m], perm[m:2m], ...`` whatever
``B`` is. When ``B`` changes mid-epoch only the grouping changes, which the adapter does as the
batches arrive. This is also why the DataLoader's prefetching (workers fetch a few micro-batches
ahead) can never get a batch wrong, on one rank or many.

The conventions (docs/deep.md, "one executor"):

* one ``torch.Generator`` seeded by ``seed`` draws each epoch's permutation, then, per logical
  batch with random-sign adversaries, the signs of all its adversarial rows (at its first
  micro-batch), and per eigenvalue check the Hessian batch and the solver seed, in that order;
  every rank draws the same numbers;
* micro-batch ``j`` of ``m_j`` samples in a logical batch of ``n`` (global) samples contributes
  ``loss_j * m_j / n``: the gradient of the mean over the ``n`` samples. With several ranks the
  gradient is averaged by DDP, so the weight is ``world_size * m_j / n``;
* the adversarial rows are the positions ``decision.adversarial_ranges(n)`` of the logical batch
  (numbered in the epoch's permutation order), replaced by FGSM computed in eval mode with the
  model as it is at the start of the update (the weights do not move inside an update, and
  BatchNorm's running statistics are put back to their start-of-update values while the
  adversary runs), so no adversarial row depends on which micro-batches ran before it: the
  same rows on one rank or many;
* before handing out micro-batch ``k`` of epoch ``e``, torch's global RNG is seeded with a hash
  of ``(seed, e, k)``, so dropout masks belong to the micro-batch, not to the process or the
  order of work: 1 and N ranks draw the same masks;
* a short last batch is stepped; each group's lr is ``decision.lr * group.get("lr_scale", 1)``.
"""

from __future__ import annotations

import bisect
import hashlib
import inspect
import math
import time
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler, TensorDataset, default_collate

from hessbatch import Decision, Scheduler, SchedulerConfig, SchedulerError

__all__ = ["AdaptiveBatchSampler", "LoopAdapter", "LOOP_STATE_FORMAT", "LOOP_STATE_VERSION",
           "TrainingDiverged", "call_eigenvalue_fn", "check_loop_arguments", "fetch",
           "micro_batch_seed"]

#: products added to a check whose value decides a growth and whose solver has not converged
#: within max_hvp (every door, one process or many; docs/deep_curvature.md)
EXTEND_HVP = 10

LOOP_STATE_FORMAT = "hessbatch.deep.loop"
LOOP_STATE_VERSION = 1
_SAMPLER_FORMAT = "hessbatch.deep.sampler"
_ADVERSARIES = ("fgsm", "random")


# ------------------------------------------------------------------------------------------
# conventions every door shares


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


def check_loop_arguments(model: Any, optimizer: Any, loss_fn: Any) -> None:
    """The type checks every door makes first."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")


def accepts_threshold(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a ``threshold`` keyword (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "threshold" or p.kind is p.VAR_KEYWORD for p in params)


def call_eigenvalue_fn(eigenvalue_fn: Callable[..., Any], model: nn.Module,
                       loss_fn: Callable[..., Any], batches: list[Any],
                       generator: torch.Generator, threshold: float | None = None) -> Any:
    """One eigenvalue check: a solver seed drawn from ``generator``, then
    ``eigenvalue_fn(model, loss_fn, batches, seed=seed)``, with ``threshold=threshold`` (the
    decision threshold ``lam_ref / alpha``) when it is not None and the function takes it.

    A diverged run (non-finite weights or loss) has no eigenvalue: its ``ValueError`` becomes
    NaN, which the core refuses, so the check is skipped like a non-finite value. Any other
    error is a real one and propagates.
    """
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    kw = {"threshold": threshold} if threshold is not None and \
        accepts_threshold(eigenvalue_fn) else {}
    try:
        return eigenvalue_fn(model, loss_fn, batches, seed=seed, **kw)
    except ValueError as exc:
        diverged = any(not bool(torch.isfinite(p).all()) for p in model.parameters())
        if not (diverged or "finite" in str(exc)):
            raise
        return math.nan


def fetch(dataset: Dataset, idx: Any, device: torch.device,
          collate_fn: Callable[[list], Any] = default_collate) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples ``idx`` of ``dataset`` as one ``(x, y)`` batch on ``device``.

    A ``TensorDataset`` is indexed in one go (fast); any other dataset sample by sample through
    ``collate_fn`` (whose result starts with ``x, y``). Both give the same tensors.
    """
    idx = torch.as_tensor(idx, dtype=torch.long)
    if isinstance(dataset, TensorDataset) and collate_fn is default_collate:
        x, y = (t[idx.to(t.device)] for t in dataset.tensors[:2])
    else:
        batch = collate_fn([dataset[i] for i in idx.tolist()])
        x, y = batch[0], batch[1]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def check_one_sample_batchnorm(model: nn.Module, dataset: Dataset, samples_per_epoch: int,
                               micro_batch_size: int, *, option: str = "last_batch") -> None:
    """Refuse, before training, an epoch whose last micro-batch is a single sample that a
    BatchNorm layer in training mode would normalise over one value per channel (PyTorch
    raises "Expected more than 1 value per channel" there, mid-epoch).

    The epoch's last micro-batch has ``samples_per_epoch mod micro_batch_size`` samples; when
    that is 1, the model runs once in eval mode on one sample (no statistics move, no
    randomness is drawn) to see the values per channel each training-mode BatchNorm layer
    would get.

    Raises:
        ValueError: naming the layer and the two fixes.
    """
    if samples_per_epoch % micro_batch_size != 1:
        return
    layers = {m: name for name, m in model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training}
    if not layers:
        return
    seen: list[tuple[str, int]] = []
    hooks = [m.register_forward_pre_hook(
        lambda mod, inp: seen.append((layers[mod], inp[0].numel() // max(inp[0].shape[1], 1))))
        for m in layers]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        x, _ = fetch(dataset, [0], _model_device(model))
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        restore_modes(modes)
    bad = [name for name, values in seen if values <= 1]
    if bad:
        raise ValueError(
            f"each epoch of {samples_per_epoch} samples ends with a micro-batch of 1 sample "
            f"({samples_per_epoch} mod micro-batch {micro_batch_size} = 1), on which BatchNorm "
            f"layer {bad[0]!r} has 1 value per channel and cannot train; choose a micro-batch "
            f"size m with {samples_per_epoch} mod m != 1 (--micro-batch), or drop the short "
            f"last batch (--last-batch drop, {option}=\"drop\")")


def micro_batch_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of torch's global RNG for micro-batch ``index`` (0-based in the epoch's
    permutation order) of epoch ``epoch`` (0-based) of a run seeded ``seed``: 63 bits of
    ``blake2b("seed:epoch:index")``. Dropout masks then depend on the micro-batch only."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


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


def diverged(scheduler: Scheduler, what: str, detail: str) -> TrainingDiverged:
    """The :class:`TrainingDiverged` for the update the core is about to make."""
    d = scheduler.decision
    return TrainingDiverged(
        f"training diverged in epoch {d.epoch + 1}, update {d.updates + 1} (B={d.batch_size}, "
        f"lr={d.lr:.4g}): {detail}; stopped before that update, so the model holds the weights "
        f"of update {d.updates}. Lower the learning rate (or check the data and the loss)",
        epoch=d.epoch + 1, update=d.updates + 1, what=what)


def check_finite_gradients(model: nn.Module, scheduler: Scheduler) -> None:
    """Raise :class:`TrainingDiverged` when a parameter gradient is not finite."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
        bad = sum(1 for g in grads if not bool(torch.isfinite(g).all()))
        raise diverged(scheduler, "gradient", f"the gradient is not finite in {bad} of "
                                              f"{len(grads)} parameter tensors")


def training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Put ``model`` in train mode for an update, keeping each sub-module's own flag.

    A model handed over in train mode keeps its per-module flags (a BatchNorm or Dropout the
    user froze with ``.eval()`` stays frozen); a model whose root is in eval mode is switched
    to train mode as a whole first. Returns the flags, for :func:`restore_modes`.
    """
    if not model.training:
        model.train()
    return [(m, m.training) for m in model.modules()]


def restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for module, flag in modes:
        module.training = flag


# ------------------------------------------------------------------------------------------
# the sampler


class AdaptiveBatchSampler(Sampler[list[int]]):
    """Micro-batches of indices for a DataLoader; the logical batch follows the core.

    Each pass over it is one epoch: a fresh permutation ``perm`` of the ``N =
    samples_per_epoch`` indices (drawn from ``generator`` when the pass starts), cut into
    micro-batches ``perm[k*m:(k+1)*m]`` with ``m = micro_batch_size`` (the last one may be
    shorter). One rank (the default) receives them all. With ``world_size = W`` ranks, rank
    ``r`` receives micro-batches ``k = r, r + W, ...``; where the epoch's last round of ``W``
    is short, the ranks without a micro-batch in it receive one *padding* micro-batch of one
    index, which :class:`LoopAdapter` gives the weight 0 (so every rank runs the same number of
    forward/backward passes per update: the collectives match).

    ``batch_size`` is what each yielded list holds at most, as for torch's ``BatchSampler``
    (the micro-batch); the logical batch the core decided is :attr:`logical_batch_size`.

    Position and resume: the loop reports each completed update (:class:`LoopAdapter` does,
    through :meth:`consume` and :meth:`commit`), and a pass that starts in the middle of an
    epoch (after :meth:`load_state_dict`, or after the loop broke out of an epoch) continues
    from that position in the same permutation; once the whole epoch is consumed, passes yield
    nothing until :meth:`end_epoch`. Used without an adapter (no consumption reported), every
    pass is a new epoch.

    Args:
        scheduler: the core (a :class:`~hessbatch.Scheduler` or a config); read, never driven.
        generator: the ``torch.Generator`` for the permutations (share it with whatever else
            must stay in one random stream); default: a new one seeded by ``seed``.
        seed: seeds the default generator.
        rank, world_size: this process's place among the data-parallel ranks (default: one).

    Raises:
        TypeError, ValueError: a bad scheduler, generator, seed, rank or world size.

    Example:
        >>> from hessbatch import SchedulerConfig
        >>> s = AdaptiveBatchSampler(SchedulerConfig(method="bl", lr=0.1, batch_size=4,
        ...     micro_batch_size=2, samples_per_epoch=5, epochs=1))
        >>> [len(b) for b in s], s.accumulation_steps, len(s), s.batch_size
        ([2, 2, 1], 2, 3, 2)
    """

    def __init__(self, scheduler: Scheduler | SchedulerConfig, *,
                 generator: torch.Generator | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
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
        self.rank, self.world_size = 0, 1
        self.set_rank(rank, world_size)
        self._perm: torch.Tensor | None = None
        self._epoch_state: torch.Tensor | None = None  # generator state before this epoch's perm
        self._consumed = 0   # samples of this epoch (all ranks) the loop has taken
        self._committed = 0  # samples of this epoch in completed updates
        self._exhausted = False  # the last pass yielded the epoch's last micro-batch

    def set_rank(self, rank: int, world_size: int) -> None:
        """Place this sampler among ``world_size`` data-parallel ranks (before iterating)."""
        _check_int("world_size", world_size, 1)
        _check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size = {world_size}, got {rank}")
        self.rank, self.world_size = rank, world_size

    # -- what the loop reads
    @property
    def batch_size(self) -> int:
        """Indices per yielded list at most: the micro-batch (torch's ``BatchSampler``
        meaning; Lightning reads it to count samples)."""
        return self.micro_batch_size

    @property
    def logical_batch_size(self) -> int:
        """B, the logical batch the core decided for the next update."""
        return self.scheduler.decision.batch_size

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per logical batch now (``B / micro_batch_size``, all ranks)."""
        return self.scheduler.decision.accumulation_steps

    @property
    def position(self) -> int:
        """Samples of the current epoch (all ranks) the loop has consumed."""
        return self._consumed

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches in an epoch, over all ranks."""
        return math.ceil(self.num_samples / self.micro_batch_size)

    def __len__(self) -> int:
        # this rank's share, padding included
        return math.ceil(self.micro_batches_per_epoch / self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        # A generator function on purpose: the body (and the permutation draw) runs at the
        # first next(), so an iterator that is created and dropped unused (a multi-worker
        # DataLoader creates two per epoch) consumes no randomness.
        if self._perm is None or (self._exhausted and self._consumed == 0):
            self._epoch_state = self.generator.get_state()
            self._perm = torch.randperm(self.num_samples, generator=self.generator)
            self._consumed = self._committed = 0
        self._exhausted = False
        if self._consumed >= self.num_samples:  # the epoch is done: end_epoch() first
            self._exhausted = True
            return
        perm, m, w = self._perm, self.micro_batch_size, self.world_size
        total = self.micro_batches_per_epoch
        first = self._consumed // m  # a multiple of w: logical batches are whole rounds
        for k in range(first + self.rank, first + w * math.ceil((total - first) / w), w):
            if k < total:
                yield perm[k * m:(k + 1) * m].tolist()
            else:
                yield perm[:1].tolist()  # padding: weight 0 (LoopAdapter)
        self._exhausted = True

    # -- what the loop (the adapter) reports
    def consume(self, samples: int) -> None:
        """The loop took ``samples`` more samples of this epoch (all ranks)."""
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
        if position % (self.micro_batch_size * self.world_size) and \
                position != self.num_samples:
            raise ValueError(
                f"sampler state at position {position}, which is not a whole number of rounds "
                f"of {self.world_size} x {self.micro_batch_size} samples: it cannot be resumed "
                f"on {self.world_size} ranks (resume it at an epoch end)")
        if state["epoch_generator"] is not None:
            self.generator.set_state(state["epoch_generator"])
            self._perm = torch.randperm(self.num_samples, generator=self.generator)
            self._epoch_state = state["epoch_generator"].clone()
        else:
            self._perm, self._epoch_state = None, None
        self.generator.set_state(state["generator"])
        self._consumed = self._committed = position
        self._exhausted = False


# ------------------------------------------------------------------------------------------
# the executor


class _Stats:
    """What the executor did since the last :meth:`LoopAdapter.take_stats` (for metrics)."""

    def __init__(self) -> None:
        self.adversarial = 0
        self.eigenvalues: list[float] = []
        self.skipped = 0
        self.hvps = 0
        self.time_adversarial = 0.0
        self.time_eigenvalue = 0.0
        self.time_eigenvalue_comm = 0.0
        self.checks: list[dict[str, Any]] = []  # per check: hvps, status, threshold, value
        self.not_converged = 0


class LoopAdapter:
    """Run a :class:`hessbatch.Scheduler`'s decisions inside a training loop: the executor.

    Per micro-batch of ``m`` samples of a logical batch of ``n`` samples (``n = B``, or what is
    left at the end of an epoch), :meth:`micro_batch` returns the inputs (the rows at
    ``decision.adversarial_ranges(n)`` of the logical batch replaced by FGSM, for ABSA) and the
    weight ``m / n`` (``world_size * m / n`` with several ranks, whose DDP averages; 0 for a
    padding micro-batch): back-propagating ``loss * weight`` accumulates the gradient of the
    mean loss over the ``n`` samples. When :attr:`update_complete` is true the loop steps its
    optimizer and calls :meth:`step`, which reports the update to the core, computes the
    eigenvalue when one is due, and writes the next lr into every param group as
    ``decision.lr * group.get("lr_scale", 1.0)`` (the optimizer's lr is always the one for the
    next update: after construction, every event, and :meth:`load_state_dict`).

    Args:
        model: the ``nn.Module`` being trained (for the eigenvalue and FGSM; unwrapped, not the
            DDP wrapper).
        optimizer: any ``torch.optim.Optimizer``; its lr is written, nothing else is touched.
            Param groups with different lrs need a ``"lr_scale"`` entry each (else an error).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss (for the eigenvalue, FGSM).
        train_data: the map-style training dataset (Hessian batches are drawn from it); its
            length must be the scheduler's ``samples_per_epoch``.
        scheduler: a :class:`~hessbatch.Scheduler` or a config.
        seed: seeds the one generator of permutations, signs, Hessian batches and solver seeds,
            and the micro-batch seeds of torch's global RNG (dropout).
        collate_fn: turns a list of samples into a batch whose first two items are ``(x, y)``
            (for Hessian batches; default ``default_collate``).
        hessian_batch_size, eigenvalue_fn, eig_method, max_hvp, eig_tol, warm_start,
            hvp_check, adversary, input_range: as in :class:`hessbatch.deep.Trainer`.
        compute_eigenvalues: ``True`` (default): :meth:`step` computes a due eigenvalue itself;
            ``False``: the loop reads :attr:`eigenvalue_due` and calls :meth:`report_eigenvalue`
            (or :meth:`compute_eigenvalue`).
        sampler: an :class:`AdaptiveBatchSampler` over the same scheduler, to adopt (its
            generator is then the one used); default: a new one.
        parallel: a :class:`hessbatch.deep.DataParallel` to train on several ranks (the
            process group must be initialised; wrap the model in DDP for the forward/backward);
            None: one process.
        decision_stop: give the eigenvalue function the check's decision threshold
            (``decision.eigenvalue_threshold``, ``lam_ref / alpha``) so that its solver stops
            as soon as "no drop" is certain, and report such a stop to the core as a lower bound
            (default True; False: every check is solved to its tolerance). Functions without a
            ``threshold`` keyword are called as before.
        config_extra: plain data (datasets are digested) added to the configuration hash that
            the ranks compare with ``parallel`` (the doors pass their own options).
        seed_micro_batches: seed torch's global RNG before each micro-batch (default True; see
            the module doc). False leaves the global RNG alone (dropout masks then follow the
            order of work, and ranks differ).

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
                 sampler: AdaptiveBatchSampler | None = None,
                 parallel: Any = None, seed_micro_batches: bool = True,
                 config_extra: Any = None, decision_stop: bool = True):
        check_loop_arguments(model, optimizer, loss_fn)
        if not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        self.scheduler = _as_scheduler(scheduler)
        try:
            n_train = len(train_data)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError("train_data must be a map-style dataset with a length, got "
                            f"{type(train_data).__name__}") from None
        if n_train < 1:
            raise ValueError("train_data is empty")
        if self.scheduler.config.samples_per_epoch != n_train:
            raise ValueError(
                f"scheduler samples_per_epoch must equal len(train_data) = {n_train}, got "
                f"{self.scheduler.config.samples_per_epoch} (the core counts epochs in samples)")
        _check_int("seed", seed, 0)
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
        self.seed = seed
        self.hessian_batch_size, self.eig_method = hessian_batch_size, eig_method
        self.max_hvp, self.eig_tol = max_hvp, float(eig_tol)
        self.adversary, self.input_range = adversary, (low, high)
        self.seed_micro_batches = bool(seed_micro_batches)
        self.decision_stop = bool(decision_stop)
        self.parallel = parallel
        if parallel is not None:
            parallel.place(self.sampler)  # this rank's micro-batches
        if eigenvalue_fn is None:
            if parallel is not None:  # the collective eigenvalue on the global Hessian
                eigenvalue_fn = parallel.make_eigenvalue_fn(self, warm_start=warm_start)
            else:  # warm starts, first-check self-tests
                from ._eigen import WarmStartEigenvalue
                eigenvalue_fn = WarmStartEigenvalue(method=eig_method, max_hvp=max_hvp,
                                                    tol=float(eig_tol), warm_start=warm_start,
                                                    hvp_check=hvp_check, extend_hvp=EXTEND_HVP)
        self.eigenvalue_fn = eigenvalue_fn
        self.compute_eigenvalues = bool(compute_eigenvalues)
        if parallel is not None:
            # the batch layout, the Hessian batch, and the same options on every rank (a hash
            # of them and of config_extra), before any training collective
            parallel.check(self, config_extra)
        # Events reported to the core, in order: ("step", n), ("eigenvalue", lam),
        # ("skip", None), ("end_epoch", None). Not checkpointed.
        self.events: list[tuple[str, Any]] = []
        # One record per update: (samples n, B decided, lr written, micro-batches of all ranks,
        # adversarial samples). Not checkpointed.
        self.update_log: list[tuple[int, int, float, int, int]] = []
        self.stats = _Stats()
        self._n = 0          # samples in the logical batch being accumulated (0: none open)
        self._start = 0      # its first position in the epoch's permutation
        self._rounds = 0     # micro-batches each rank receives for it
        self._got = 0        # of which this rank has received
        self._next_k = 0     # the global index of this rank's next micro-batch
        self._adv_at: list[int] = []  # its adversarial positions (0-based in the batch)
        self._eps = 0.0
        self._noise: torch.Tensor | None = None
        self._padding_modes: list[tuple[nn.Module, bool]] | None = None
        # BatchNorm layers with running statistics, and their values at the update's start
        self._bn_layers = [m for m in model.modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm)
                           and m.track_running_stats and m.running_mean is not None]
        self._bn_start: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.padding = False  # the last micro-batch handed out is a padding one (weight 0)
        self._state_checked = False  # ranks compare their states at the first update
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
    def world_size(self) -> int:
        return self.sampler.world_size

    @property
    def update_complete(self) -> bool:
        """This rank's micro-batches of the logical batch are all in: step the optimizer, then
        step()."""
        return self._n > 0 and self._got == self._rounds

    @property
    def batch_open(self) -> bool:
        """A logical batch is being accumulated (some micro-batches handed out)."""
        return self._n > 0

    @property
    def eigenvalue_due(self) -> bool:
        """The core waits for an eigenvalue (only with ``compute_eigenvalues=False``)."""
        return self.scheduler.decision.eigenvalue_due

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches this rank receives for the logical batch being accumulated (or the
        next one)."""
        if self._n:
            return self._rounds
        left = self.sampler.num_samples - self.sampler.position
        return self._rounds_for(min(self.decision.batch_size, max(left, 1)))

    def _rounds_for(self, n: int) -> int:
        return math.ceil(math.ceil(n / self.sampler.micro_batch_size) / self.world_size)

    @property
    def device(self) -> torch.device:
        return _model_device(self.model)

    # ---------------------------------------------------------------------------- the loop
    def _open(self) -> None:
        left = self.sampler.num_samples - self.sampler.position
        if left <= 0:
            raise RuntimeError(f"the epoch's {self.sampler.num_samples} samples are all "
                               "consumed: call adapter.end_epoch() before the next epoch")
        d = self.decision
        if d.eigenvalue_due:
            raise SchedulerError("an eigenvalue is due: report_eigenvalue() or "
                                 "compute_eigenvalue() before the next update")
        self._check_state()
        self._start = self.sampler.position
        self._n = min(d.batch_size, left)
        self._rounds = self._rounds_for(self._n)
        self._got = 0
        self._next_k = self._start // self.sampler.micro_batch_size + self.sampler.rank
        # the core's positions in the logical batch, sorted
        self._adv_at = [i for a, b in d.adversarial_ranges(self._n) for i in range(a, b)]
        self._eps, self._noise = d.adv_eps, None
        self._bn_start = [(m.running_mean.clone(), m.running_var.clone())
                          for m in self._bn_layers] if self._adv_at else None
        if self.parallel is not None:
            self.parallel.open_batch(self)

    def _check_state(self) -> None:
        """With data parallelism, the ranks' states compared before the first collective since
        a start or a load (an update or an eigenvalue, whichever comes first); before anything
        of it is set, so a caller who fixes the states and retries gets the check again."""
        if self.parallel is not None and not self._state_checked:
            self.parallel.check_state(self)
            self._state_checked = True

    def state_changed(self) -> None:
        """The model, optimizer or this executor's state was loaded from outside: with data
        parallelism, the ranks compare their states at the next update (:meth:`load_state_dict`
        and the Trainer's call this; call it after loading the model or optimizer yourself)."""
        self._state_checked = False

    def micro_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Register the next micro-batch; returns ``(x, weight)`` for ``loss * weight``.

        Args:
            x: the micro-batch's inputs, as the DataLoader gave them (moved to the device).
            y: its targets (the sample count is ``len(y)``).

        Returns:
            ``x`` with its adversarial samples (a new tensor; ``x`` itself when there are
            none), and the weight (0 for a padding micro-batch, see
            :class:`AdaptiveBatchSampler`; the model is then in eval mode until :meth:`step`).

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
        if self._n == 0:
            self._open()
        micro = self.sampler.micro_batch_size
        k = self._next_k
        lo = k * micro - self._start  # where this micro-batch starts in the logical batch
        padding = lo >= self._n
        m = int(y.shape[0]) if isinstance(y, torch.Tensor) and y.dim() else len(y)
        expected = 1 if padding else min(micro, self._n - lo)
        if m != expected:
            raise ValueError(
                f"micro-batch of {m} samples where the schedule expects {expected} (position "
                f"{self.sampler.position + max(lo, 0)} of {self.sampler.num_samples}); build "
                "the DataLoader with batch_sampler=adapter.sampler and no batch_size, "
                "drop_last or sampler")
        if self.adversary == "random" and self._got == 0 and self._adv_at:
            # signs for every adversarial row of the logical batch, drawn on every rank at its
            # first micro-batch: the generator stays in step whatever a rank holds
            shape = (len(self._adv_at), *tuple(x.shape[1:]))
            self._noise = torch.randint(0, 2, shape, generator=self.generator)
        if not padding:
            a = bisect.bisect_left(self._adv_at, lo)
            b = bisect.bisect_left(self._adv_at, lo + m)
            if b > a:
                rows = [i - lo for i in self._adv_at[a:b]]
                x = x.clone()
                x[rows] = self._perturb(x[rows], y[rows], self._eps, (a, b)).detach()
        self._next_k += self.world_size
        self._got += 1
        self.padding = padding
        if padding:
            # one sample so that this rank joins the update's collectives, counted with weight
            # 0; in eval mode, so that it moves no BatchNorm statistics and draws no dropout
            self._padding_modes = [(mod, mod.training) for mod in self.model.modules()]
            self.model.eval()
            if self.parallel is not None:
                self.parallel.before_forward(k, padding=True)  # SyncBatchNorm joins its round
        else:
            if self.seed_micro_batches:
                torch.manual_seed(micro_batch_seed(self.seed, self.decision.epoch, k))
            if self.parallel is not None:
                self.parallel.before_forward(k)  # BatchNorm statistics of micro-batch k
        if padding:
            return x, 0.0
        scale = self.world_size if self.world_size > 1 else 1
        return x, scale * m / self._n

    def step(self) -> Decision:
        """Report the update just made (call after ``optimizer.step()``).

        Computes the eigenvalue when the core asks for one (``compute_eigenvalues=True``) and
        writes the next lr into the optimizer.

        Raises:
            RuntimeError: the logical batch is not complete yet.
        """
        if not self.update_complete:
            raise RuntimeError(
                f"step() before the logical batch is complete ({self._got} of {self._rounds} "
                "micro-batches of this rank): check adapter.update_complete after each "
                "micro-batch")
        if self._padding_modes is not None:
            restore_modes(self._padding_modes)
            self._padding_modes = None
        self.padding = False
        if self.parallel is not None:
            self.parallel.close_batch(self)
        n = self._n
        group0 = self.optimizer.param_groups[0]
        self.update_log.append((n, self.decision.batch_size,
                                group0["lr"] / group0.get("lr_scale", 1.0),
                                math.ceil(n / self.sampler.micro_batch_size), len(self._adv_at)))
        self.stats.adversarial += len(self._adv_at)
        self._n = self._got = 0
        self._noise = self._bn_start = None
        d = self.scheduler.step(n)
        self.sampler.consume(n)
        self.sampler.commit()
        self.events.append(("step", n))
        if d.eigenvalue_due and self.compute_eigenvalues:
            d = self.compute_eigenvalue()
        self._set_lr()
        return d

    def drop_rest_of_epoch(self) -> None:
        """Skip the samples left in the epoch without an update (``last_batch="drop"``)."""
        if self._n:
            raise RuntimeError("drop_rest_of_epoch() with a logical batch open")
        left = self.sampler.num_samples - self.sampler.position
        if left:
            self.sampler.consume(left)
            self.sampler.commit()

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

    def take_stats(self) -> _Stats:
        """What was done since the last call (adversarial samples, eigenvalues, HVPs, times)."""
        stats, self.stats = self.stats, _Stats()
        return stats

    # ---------------------------------------------------------------------------- curvature
    def compute_eigenvalue(self) -> Decision:
        """Compute the due eigenvalue on a fresh Hessian batch and report it.

        ``hessian_batch_size`` training samples drawn from the generator (each rank takes its
        contiguous share), split in micro-batches, a solver seed from the generator; a value
        the core refuses (NaN, infinite, negative) clears the check with ``skip_eigenvalue()``.
        """
        d = self.decision
        if not d.eigenvalue_due:
            raise SchedulerError("compute_eigenvalue: no eigenvalue is due")
        self._check_state()
        dev = self.device
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        batches = self.hessian_batches()
        threshold = d.eigenvalue_threshold if self.decision_stop else None
        result = call_eigenvalue_fn(self.eigenvalue_fn, self.model, self.loss_fn, batches,
                                    self.generator, threshold)
        hvps = int(getattr(result, "n_hvp", 0) or 0)
        bound = bool(getattr(result, "is_lower_bound", False))
        status = getattr(result, "status", None)
        self.stats.hvps += hvps
        value = getattr(result, "value", result)
        self.stats.checks.append({"hvps": hvps, "status": status, "threshold": threshold,
                                  "value": float(value) if isinstance(value, (int, float))
                                  else None, "lower_bound": bound})
        if status == "not_converged":
            self.stats.not_converged += 1
        out = self.report_eigenvalue(value, lower_bound=bound)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.stats.time_eigenvalue += time.perf_counter() - t0
        return out

    def report_eigenvalue(self, value: float, *, lower_bound: bool = False) -> Decision:
        """Report an eigenvalue computed by the loop (``lower_bound=True``: a lower bound above
        the decision threshold, a certain "no drop"); a refused value skips the check."""
        try:
            value = float(value)
            d = self.scheduler.eigenvalue(value, lower_bound=lower_bound)
            self.events.append(("eigenvalue_bound" if lower_bound else "eigenvalue", value))
            self.stats.eigenvalues.append(value)
        except (TypeError, ValueError):
            d = self.scheduler.skip_eigenvalue()
            self.events.append(("skip", None))
            self.stats.skipped += 1
        self._set_lr()
        return d

    def hessian_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fresh Hessian batch from the training set (this rank's contiguous share of it with
        several ranks), as ``(x, y)`` micro-batches on the model's device (draws from the
        generator)."""
        n = self.sampler.num_samples
        size = min(self.hessian_batch_size, n)
        idx = torch.randperm(n, generator=self.generator)[:size]
        if self.world_size > 1:
            from ._distributed import shard_bounds
            lo, hi = shard_bounds(size, self.world_size, self.sampler.rank)
            idx = idx[lo:hi]
        micro, dev = self.sampler.micro_batch_size, self.device
        return [fetch(self.train_data, idx[i:i + micro], dev, self.collate_fn)
                for i in range(0, int(idx.numel()), micro)]

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float,
                 rows: tuple[int, int]) -> torch.Tensor:
        dev = self.device
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        modes = [(m, m.training) for m in self.model.modules()]
        # the adversary sees BatchNorm's running statistics as they were at the update's start
        now = [(m.running_mean.clone(), m.running_var.clone()) for m in self._bn_layers] \
            if self._bn_start else []
        for m, (mean, var) in zip(self._bn_layers, self._bn_start or []):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        try:
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
            if self.adversary == "fgsm":
                from ._adversarial import fgsm
                return fgsm(self.model, self.loss_fn, x, y, eps, clip=self.input_range)
            assert self._noise is not None
            s = (2 * self._noise[rows[0]:rows[1]] - 1).to(device=x.device, dtype=x.dtype)
            low, high = self.input_range
            return (x.detach() + eps * s).clamp(low, high)
        finally:
            for m, (mean, var) in zip(self._bn_layers, now):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
            restore_modes(modes)  # whatever mode the adversary left, the user's flags
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            self.stats.time_adversarial += time.perf_counter() - t0

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
                f"state_dict() in the middle of a logical batch ({self._got} of "
                f"{self._rounds} micro-batches accumulated; the gradient is not saved): save "
                "after adapter.step()")
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
        self._n = self._got = 0
        self._state_checked = False
        self._set_lr()
