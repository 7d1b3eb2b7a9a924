"""One training run of logistic regression with every schedule decision taken from the core.

The driver executes :class:`hessbatch.Scheduler` decisions and reports events back; it holds no
schedule logic of its own (batch size, learning rate, adversarial count and eigenvalue checks
all come from ``scheduler.decision``)::

    d = sch.decision
    draw a batch of d.batch_size rows            (i.i.d. with replacement, or a shuffled epoch)
    FGSM on the rows at d.adversarial_ranges(n)  (absa; the core's positions)
    theta <- theta - d.lr * grad F_S(theta)       (plain SGD: Theorem 1's setting, no momentum)
    sch.step(n)
    if due: sch.eigenvalue(top eigenvalue of H(theta) on the Hessian batch)
    at the end of an epoch: sch.end_epoch()

Sampling (docs/convex.md, "Drivers"):

* ``"iid"``: every batch is ``B`` rows drawn uniformly with replacement, what Theorem 1 assumes.
  Batches are never cut short; an epoch ends at the first update that brings the samples seen
  to a multiple of n or past it.
* ``"shuffle"``: each epoch is a fresh permutation cut into batches of ``B``; the last batch of
  an epoch holds the remaining ``r < B`` rows and steps with the decided ``d.lr`` on their mean
  gradient (the core's rule for a short batch, as PyTorch loaders do). A batch that covers
  the whole epoch is the full data in row order, so ``B = n`` is gradient descent.

Randomness: ``numpy.random.SeedSequence(seed)`` is split into independent streams for the
batches, the Hessian batches and the eigen-solver's start vectors, so an eigenvalue check never
shifts the batches that follow; the same seed gives the same numbers, bit for bit, on one
machine (another CPU may round the fastmath kernels or BLAS differently).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from hessbatch import Scheduler, SchedulerConfig

from ._eigen import EigenResult
from ._model import LogisticRegression

__all__ = ["RunResult", "SAMPLINGS", "full_batch_config", "make_eigenvalue_fn", "train"]

SAMPLINGS = ("iid", "shuffle")
EigenvalueFn = Callable[[np.ndarray], "float | EigenResult"]


@dataclass
class RunResult:
    """Per-update curves of one run. Row 0 is the start (update 0); row k is after update k.

    Fields (arrays of length updates + 1):
        update: k.
        samples: training samples consumed by the first k updates.
        batch_size: rows in update k (0 in row 0).
        lr: step taken at update k (0 in row 0).
        adv_count: FGSM rows in update k.
        loss: full training loss F(theta_k) (the regulariser included).
        eigenvalue: the top Hessian eigenvalue computed after update k, NaN where none was.
        hvps: Hessian-vector products spent after update k.
        hvp_rows: data rows those products read (hvps times the Hessian batch: 6905 per HVP on
            the full mushroom data, 128 with ``hessian_batch=128``); 0 where the eigenvalue
            function does not say (a plain float, or an EigenResult without rows_per_matvec).
        epoch_end: True where an epoch ended after update k.
    Other fields:
        label, method, sampling, seed, config (the SchedulerConfig), theta (final parameters),
        diverged (the loss became non-finite and the run stopped), scheduler (final
        state_dict of the core).
    """

    label: str
    method: str
    sampling: str
    seed: int
    config: SchedulerConfig
    update: np.ndarray
    samples: np.ndarray
    batch_size: np.ndarray
    lr: np.ndarray
    adv_count: np.ndarray
    loss: np.ndarray
    eigenvalue: np.ndarray
    hvps: np.ndarray
    hvp_rows: np.ndarray
    epoch_end: np.ndarray
    theta: np.ndarray
    diverged: bool
    scheduler: dict[str, Any] = field(default_factory=dict)

    @property
    def updates(self) -> int:
        """Parameter updates made."""
        return int(self.update[-1])

    @property
    def samples_seen(self) -> int:
        return int(self.samples[-1])

    @property
    def max_batch(self) -> int:
        """The largest batch used (the paper's "B" column)."""
        return int(self.batch_size.max()) if len(self.batch_size) > 1 else 0

    @property
    def total_hvps(self) -> int:
        return int(self.hvps.sum())

    @property
    def total_hvp_rows(self) -> int:
        """Data rows read by all the Hessian-vector products of the run."""
        return int(self.hvp_rows.sum())

    @property
    def eigenvalue_checks(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.eigenvalue)))

    def gap(self, f_star: float) -> np.ndarray:
        """F(theta_k) - F*: the absolute optimality gap at every row."""
        return self.loss - f_star

    def first_reaching(self, f_star: float, target: float) -> int | None:
        """Row (= update count) where the gap first is <= target, or None if never."""
        hit = np.flatnonzero(self.loss - f_star <= target)
        return int(hit[0]) if hit.size else None

    def updates_to_gap(self, f_star: float, target: float) -> int | None:
        """Updates needed to reach F - F* <= target (None: not reached in this run)."""
        return self.first_reaching(f_star, target)

    def samples_to_gap(self, f_star: float, target: float) -> int | None:
        """Samples consumed when F - F* <= target is first reached (None: never)."""
        k = self.first_reaching(f_star, target)
        return None if k is None else int(self.samples[k])

    def hvp_rows_to_gap(self, f_star: float, target: float) -> int | None:
        """Rows read by HVPs up to and including update k, the first where F - F* <= target
        (None: never). The sample cost of the eigenvalue checks, beside
        :meth:`samples_to_gap` (the gradients')."""
        k = self.first_reaching(f_star, target)
        return None if k is None else int(self.hvp_rows[:k + 1].sum())

    def curves(self) -> dict[str, np.ndarray]:
        """The per-update arrays by name, in the CSV's column order."""
        return {"update": self.update, "samples": self.samples, "batch_size": self.batch_size,
                "lr": self.lr, "adv_count": self.adv_count, "loss": self.loss,
                "eigenvalue": self.eigenvalue, "hvps": self.hvps, "hvp_rows": self.hvp_rows,
                "epoch_end": self.epoch_end.astype(np.int64)}


def full_batch_config(n_samples: int, lr: float, updates: int) -> SchedulerConfig:
    """The core's config for gradient descent: method ``bl`` with B = n, one update per epoch.

    Run it with ``sampling="shuffle"`` so that each update is the exact full gradient.

    Example:
        >>> full_batch_config(6905, 0.37, 1000).batch_size
        6905
    """
    return SchedulerConfig(method="bl", lr=lr, batch_size=n_samples, max_batch_size=n_samples,
                           samples_per_epoch=n_samples, epochs=updates)


def _takes_threshold(fn: Callable[..., Any]) -> bool:
    """Whether an eigenvalue function takes the decision threshold (a second argument)."""
    import inspect
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def make_eigenvalue_fn(model: LogisticRegression, *, hessian_batch: int | None = None,
                       method: str = "power", tol: float = 1e-3, max_iter: int = 100,
                       seed: int | np.random.SeedSequence = 0,
                       warm_start: bool = False, confirm_warm: bool = True) -> EigenvalueFn:
    """The default eigenvalue check: top eigenvalue of H(theta) on a Hessian batch, from HVPs.

    Args:
        model: the problem.
        hessian_batch: None for the full training set (deterministic: the default, since a
            d = 117 Hessian is cheap), or the size of a fresh random batch drawn without
            replacement at each check (what the paper's reference code does, with 128).
        method, tol, max_iter: passed to :func:`hessbatch.convex.top_eigenvalue`.
        seed: seeds the Hessian batches and the solver's start vectors.
        warm_start: start each check from the previous check's eigenvector mixed with the
            random start (the core's warm start, :func:`hessbatch._solver.start_vector`);
            off by default, as in the deep backend (docs/deep_curvature.md).
        confirm_warm: the core's warm-start guard (a warm value that decides a growth is
            confirmed by a cold solve; :func:`hessbatch._solver.solve`), default True.

    Returns:
        A callable ``(theta, threshold=None) -> EigenResult`` (``threshold``: the check's
        decision threshold ``lam_ref / alpha``; the solver stops once "no drop" is certain and
        the result is then a lower bound, ``is_lower_bound``).

    Raises:
        ValueError: hessian_batch outside [1, n].
    """
    n = model.n_samples
    if hessian_batch is not None:
        if not isinstance(hessian_batch, (int, np.integer)) or not 1 <= hessian_batch <= n:
            raise ValueError(f"hessian_batch must be None (full data) or an int in [1, {n}], "
                             f"got {hessian_batch!r}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    batch_rng, start_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    if not isinstance(warm_start, bool):
        raise TypeError(f"warm_start must be a bool, got {type(warm_start).__name__}")
    kept: list[np.ndarray] = []

    def eigenvalue(theta: np.ndarray, threshold: float | None = None) -> EigenResult:
        idx = None
        if hessian_batch is not None:
            idx = np.sort(batch_rng.choice(n, size=int(hessian_batch), replace=False))
        start = kept[-1] if (warm_start and kept) else None
        r = model.top_eigenvalue(theta, idx, method=method, tol=tol, max_iter=max_iter,
                                 seed=start_rng, start=start, confirm_warm=confirm_warm,
                                 threshold=threshold)
        if np.all(np.isfinite(r.vector)):
            kept[:] = [r.vector]
        return r

    return eigenvalue


def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def train(model: LogisticRegression, config: SchedulerConfig, *, seed: int = 0,
          sampling: str = "iid", theta0: Any = None,
          eigenvalue_fn: EigenvalueFn | None = None, hessian_batch: int | None = None,
          eig_method: str = "power", eig_tol: float = 1e-3, eig_max_iter: int = 100,
          label: str | None = None, progress: Any = None,
          decision_stop: bool = True) -> RunResult:
    """Run one method end to end; every decision comes from ``hessbatch.Scheduler(config)``.

    Args:
        model: the logistic-regression problem (its training rows are the epoch).
        config: the core's config; ``samples_per_epoch`` must equal ``model.n_samples`` and
            ``max_batch_size`` may not exceed it.
        seed: seed of every random choice of the run (batches, Hessian batches, start vectors).
        sampling: ``"iid"`` (with replacement, Theorem 1) or ``"shuffle"`` (epochs); see the
            module docstring.
        theta0: start point (default zeros).
        eigenvalue_fn: ``theta -> float or EigenResult``, called when the core asks for an
            eigenvalue; default :func:`make_eigenvalue_fn` with the ``hessian_batch``/``eig_*``
            arguments. A test can pass a scripted sequence here.
        label: a name for tables (default the method).
        decision_stop: give the eigenvalue function the check's decision threshold
            ``lam_ref / alpha`` (when it takes a second argument): its solver stops as soon as
            "no drop" is certain and the core gets a lower bound (default True).
        progress: an object with ``update(n, info)`` (e.g. ``hessbatch._cli_common.Progress``),
            advanced by one at every epoch end.

    Returns:
        A :class:`RunResult`. If the loss becomes NaN or inf the run stops there with
        ``diverged=True`` (the rest of the schedule is not executed).

    Raises:
        TypeError, ValueError: bad config/model pairing, sampling, seed or theta0.

    Example:
        >>> from hessbatch import SchedulerConfig
        >>> from hessbatch.convex import load_mushroom, LogisticRegression
        >>> ds = load_mushroom()
        >>> model = LogisticRegression(ds.X_train, ds.y_train, lam=1e-3)
        >>> cfg = SchedulerConfig(method="abs", lr=0.05, batch_size=100, max_batch_size=800,
        ...                       samples_per_epoch=model.n_samples, epochs=3)
        >>> run = train(model, cfg, seed=0)
        >>> bool(run.loss[-1] < run.loss[0]), run.updates == len(run.loss) - 1
        (True, True)
    """
    if not isinstance(model, LogisticRegression):
        raise TypeError(f"model must be a LogisticRegression, got {type(model).__name__}")
    if not isinstance(config, SchedulerConfig):
        raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
    n = model.n_samples
    if config.samples_per_epoch != n:
        raise ValueError(f"config.samples_per_epoch must equal the number of training rows "
                         f"({n}), got {config.samples_per_epoch}")
    if config.max_batch_size > n:
        raise ValueError(f"config.max_batch_size must not exceed the number of training rows "
                         f"({n}): a batch larger than the data, got {config.max_batch_size}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    seed = _check_int("seed", seed, 0)
    theta = np.zeros(model.n_features) if theta0 is None else model._theta(theta0, "theta0")
    theta = np.array(theta, dtype=np.float64)
    batch_ss, eig_ss = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(batch_ss)
    if eigenvalue_fn is None:
        eigenvalue_fn = make_eigenvalue_fn(model, hessian_batch=hessian_batch, method=eig_method,
                                           tol=eig_tol, max_iter=eig_max_iter, seed=eig_ss)
    elif not callable(eigenvalue_fn):
        raise TypeError(f"eigenvalue_fn must be callable, got {type(eigenvalue_fn).__name__}")

    sch = Scheduler(config)
    rows = {k: [] for k in ("batch_size", "lr", "adv_count", "loss", "eigenvalue", "hvps",
                            "hvp_rows", "epoch_end", "samples")}
    loss0 = model.loss(theta)
    for k, v in (("batch_size", 0), ("lr", 0.0), ("adv_count", 0), ("loss", loss0),
                 ("eigenvalue", math.nan), ("hvps", 0), ("hvp_rows", 0), ("epoch_end", False),
                 ("samples", 0)):
        rows[k].append(v)
    diverged = not math.isfinite(loss0)
    perm, pos = None, 0            # shuffle: the epoch's permutation and the next row in it
    epoch_mark = n                 # iid: the epoch ends once samples_seen reaches this
    pending, shown = 0, 0.0        # epochs not yet shown on the progress line, last redraw
    d = sch.decision
    while not d.finished and not diverged:
        big = d.batch_size
        if sampling == "iid":
            count = big
            idx = rng.integers(0, n, size=count)
        else:
            if pos == 0 and big >= n:
                idx = model._all  # the batch is the whole epoch: the full data (GD)
            else:
                if pos == 0:
                    perm = rng.permutation(n)
                idx = perm[pos:pos + big]
            count = len(idx)
            pos += count
        ranges = d.adversarial_ranges(count)  # where the core puts the adversarial rows
        adv = sum(b - a for a, b in ranges)
        if adv and ranges != ((0, adv),):
            # the kernels perturb the first adv rows: move the core's rows there (the mean
            # gradient does not depend on the row order)
            mask = np.zeros(count, dtype=bool)
            for a, b in ranges:
                mask[a:b] = True
            idx = np.concatenate([idx[mask], idx[~mask]])
        lr = d.lr  # the decided lr, for a short last batch too (the core's rule)
        _, grad = model._k.loss_grad(model.X, model.y, idx, theta, model.lam, adv,
                                     d.adv_eps, model.lo, model.hi)
        theta -= lr * grad
        d = sch.step(count)
        loss = model.loss(theta)
        lam_k, hv, hv_rows = math.nan, 0, 0
        if d.eigenvalue_due:
            if not math.isfinite(loss):
                d = sch.skip_eigenvalue()
            else:
                threshold = d.eigenvalue_threshold if decision_stop else None
                res = eigenvalue_fn(theta, threshold) if threshold is not None and \
                    _takes_threshold(eigenvalue_fn) else eigenvalue_fn(theta)
                bound = False
                if isinstance(res, EigenResult):
                    lam_k, hv = float(res.value), int(res.n_matvec)
                    hv_rows = int(res.rows_read or 0)
                    bound = bool(res.is_lower_bound)
                else:
                    lam_k = float(res)
                d = sch.eigenvalue(lam_k, lower_bound=bound)
        if sampling == "iid":
            ended = d.samples_seen >= epoch_mark
        else:
            ended = pos >= n
        if ended:
            d = sch.end_epoch()
            epoch_mark += n
            pos = 0
            pending += 1
            if progress is not None and (time.perf_counter() - shown > 0.2 or d.finished):
                # redraw at most five times a second: GD has one epoch per update
                progress.update(pending, f"F={loss:.6g} B={d.batch_size}")
                pending, shown = 0, time.perf_counter()
        for k, v in (("batch_size", count), ("lr", lr), ("adv_count", adv), ("loss", loss),
                     ("eigenvalue", lam_k), ("hvps", hv), ("hvp_rows", hv_rows),
                     ("epoch_end", ended),
                     ("samples", d.samples_seen)):
            rows[k].append(v)
        diverged = not math.isfinite(loss)

    t = len(rows["loss"])
    return RunResult(
        label=label or config.method, method=config.method, sampling=sampling, seed=seed,
        config=config, update=np.arange(t, dtype=np.int64),
        samples=np.asarray(rows["samples"], dtype=np.int64),
        batch_size=np.asarray(rows["batch_size"], dtype=np.int64),
        lr=np.asarray(rows["lr"], dtype=np.float64),
        adv_count=np.asarray(rows["adv_count"], dtype=np.int64),
        loss=np.asarray(rows["loss"], dtype=np.float64),
        eigenvalue=np.asarray(rows["eigenvalue"], dtype=np.float64),
        hvps=np.asarray(rows["hvps"], dtype=np.int64),
        hvp_rows=np.asarray(rows["hvp_rows"], dtype=np.int64),
        epoch_end=np.asarray(rows["epoch_end"], dtype=bool),
        theta=theta, diverged=diverged, scheduler=sch.state_dict())
