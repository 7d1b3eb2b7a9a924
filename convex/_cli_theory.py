"""``hessbatch theory``: Theorem 1's bound checked against SGD and ABS, exactly or by Monte-Carlo.

Two problems (docs/theory.md has the statement, the proof and the constants):

* ``least-squares``: a random ridge regression. ``E[F(theta_t)] - F*`` is computed *exactly*
  (moment recursions, :class:`~hessbatch.convex._leastsq.LeastSquares`) and compared with the
  bound at every update; ``--runs R`` adds a Monte-Carlo estimate that must agree with it.
* ``mushroom``: L2 logistic regression on the UCI mushroom data. ``R`` independent SGD runs
  (Numba, parallel over runs) give the mean gap and a confidence band at checkpoints; a
  checkpoint FAILs when the lower confidence limit exceeds the bound.

Both run two batch schedules with one shared ``eta0`` (step ``b_t * eta0``, the largest the
step-size condition allows unless told otherwise): plain SGD at ``B0``, and ABS as decided by
:class:`hessbatch.Scheduler` (method ``abs``) from ``B0`` up to ``B_max``. ABS needs top Hessian
eigenvalues: on mushroom they come from a separate *pilot* run along the schedule being built
(full training Hessian, Lanczos), so the schedule is fixed before the ``R`` runs start, as
Theorem 1 requires; on least squares the Hessian is constant and ABS grows by patience only.

The functions :func:`least_squares_check` and :func:`mushroom_check` do the work and return a
:class:`TheoryReport`; ``build_parser``/``run`` are the command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hessbatch import SchedulerConfig
from hessbatch import theory as thm
from hessbatch._cli_common import Progress, format_table

from ._leastsq import make_least_squares
from ._montecarlo import confidence_band, sgd_runs

DESCRIPTION = """\
Check Theorem 1's convergence bound for SGD with the linear scaling rule (step b_t * eta0):

    E[F(theta_t)] - F*  <=  prod_{k<t} (1 - b_k eta0 c) (F(theta_0) - F* - G) + G,
    G = eta0 L M / (2c),  valid when eta0 <= 1 / (L (M_G + b_max)),

for two batch schedules sharing one eta0: SGD at --batch-size, and ABS (hessbatch's core,
method abs) growing from --batch-size to --max-batch.

  --problem least-squares  E[F] is computed exactly (no sampling noise) at every update;
                           --runs R also runs R Monte-Carlo copies that must agree with it.
  --problem mushroom       R Monte-Carlo runs of logistic regression on the UCI mushroom
                           data; a checkpoint fails when the lower confidence limit of the
                           mean gap exceeds the bound.

Prints a table of checkpoints with PASS/FAIL, then SGD against ABS at equal updates and at equal
samples. Exit code 0 when every check passes, 1 when one fails, 2 on bad options.

examples:
  hessbatch theory --problem mushroom --runs 1000 --out runs/theory
  hessbatch theory --problem least-squares --eta0-scale 5 --ignore-condition   # must FAIL"""

_DEFAULTS = {
    # problem: (lam, epochs, B0, B_max, runs, checks per epoch for ABS, patience)
    "mushroom": dict(lam=0.1, epochs=5, batch_size=100, max_batch_size=1600, runs=1000,
                     checks_per_epoch=10, patience=10),
    "least-squares": dict(lam=0.1, epochs=10, batch_size=4, max_batch_size=64, runs=4000,
                          checks_per_epoch=4, patience=4),
}


# --------------------------------------------------------------------------------------------
# results


@dataclass
class ScheduleCheck:
    """Theorem 1 against one schedule.

    Fields:
        name: ``"sgd"`` or ``"abs"``.
        schedule: the :class:`hessbatch.theory.Schedule` (batch per update, epoch ends).
        bounds: the bound at every update count ``0..T``.
        checkpoints: update counts of the table rows.
        rows: one dict per checkpoint (see :func:`_rows`).
        exact: exact expected gap at every update ``0..T`` (least squares), else ``None``.
        first_violation: first update where the exact gap exceeds the bound (least squares), or
            ``None``.
    """

    name: str
    schedule: thm.Schedule
    bounds: list[float]
    checkpoints: list[int]
    rows: list[dict[str, Any]]
    exact: list[float] | None = None
    first_violation: int | None = None

    @property
    def passed(self) -> bool:
        return self.first_violation is None and all(r["status"] == "PASS" for r in self.rows)


@dataclass
class TheoryReport:
    """Everything ``hessbatch theory`` prints and saves.

    Fields:
        problem: ``"mushroom"`` or ``"least-squares"``.
        settings: the options used (JSON-able).
        constants: Theorem 1's :class:`hessbatch.theory.Constants`.
        eta0, noise_floor, gap0, f_star: the bound's ingredients.
        condition_holds: ``eta0 <= 1 / (L (M_G + b_max))``.
        schedules: ``{"sgd": ScheduleCheck, "abs": ScheduleCheck}``.
        comparison: SGD against ABS at equal updates and equal samples (one dict per ABS
            epoch end).
    """

    problem: str
    settings: dict[str, Any]
    constants: thm.Constants
    eta0: float
    noise_floor: float
    gap0: float
    f_star: float
    condition_holds: bool
    schedules: dict[str, ScheduleCheck]
    comparison: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.schedules.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem, "passed": self.passed, "settings": self.settings,
            "constants": self.constants.to_dict(), "eta0": self.eta0,
            "eta0_max": thm.max_eta0(self.constants, self.settings["max_batch_size"]),
            "noise_floor_G": self.noise_floor, "gap0": self.gap0, "f_star": self.f_star,
            "condition_holds": self.condition_holds,
            "schedules": {
                name: {"passed": s.passed, "first_violation": s.first_violation,
                       "updates": s.schedule.updates, "samples": s.schedule.samples,
                       "schedule": s.schedule.to_dict(), "rows": s.rows,
                       "bounds_at_checkpoints": [s.bounds[c] for c in s.checkpoints],
                       "exact_gaps": s.exact}
                for name, s in self.schedules.items()},
            "comparison": self.comparison,
        }


# --------------------------------------------------------------------------------------------
# schedules and checkpoints


def _schedules(n: int, eta0: float, s: dict[str, Any],
               eigenvalue: Callable[[Sequence[int]], float]) -> dict[str, thm.Schedule]:
    """SGD (``bl``) at B0 and ABS (``abs``) from B0 to B_max, both decided by the core."""
    common = dict(lr=eta0 * s["batch_size"], batch_size=s["batch_size"], samples_per_epoch=n,
                  epochs=s["epochs"])
    check_every = s["check_every"] or max(1, n // s["checks_per_epoch"])
    sgd = thm.scheduler_batches(SchedulerConfig(method="bl", **common))
    abs_ = thm.scheduler_batches(
        SchedulerConfig(method="abs", max_batch_size=s["max_batch_size"], alpha=s["alpha"],
                        beta=s["beta"], check_every=check_every, patience=s["patience"],
                        **common), eigenvalue)
    for name, sch in (("sgd", sgd), ("abs", abs_)):
        steps = np.asarray(sch.batch_sizes, dtype=np.float64) * eta0
        # Theorem 1's step is b_t * eta0; the core's linear scaling must give exactly that
        if not np.allclose(sch.lrs, steps, rtol=1e-12, atol=0):
            raise RuntimeError(f"{name}: the core's lr is not eta0 * B (lr decay configured?)")
    return {"sgd": sgd, "abs": abs_}


def _checkpoints(sch: thm.Schedule, n: int, per_epoch: int, extra: Sequence[int] = ()) -> list[int]:
    """0, every epoch end, ``per_epoch - 1`` points inside each epoch (by samples), extras."""
    cum = np.concatenate(([0], np.cumsum(sch.batch_sizes)))
    marks = {0, *sch.epoch_ends, *[e for e in extra if 0 <= e <= sch.updates]}
    epochs = len(sch.epoch_ends)
    for j in range(1, epochs * per_epoch):
        marks.add(int(min(np.searchsorted(cum, j * n / per_epoch), sch.updates)))
    return sorted(marks)


def _batch_at(sch: thm.Schedule, t: int) -> int:
    """The batch of the update that led to update count ``t`` (B0 at ``t = 0``)."""
    return sch.batch_sizes[max(t - 1, 0)] if sch.batch_sizes else 0


def _comparison(report_schedules: dict[str, ScheduleCheck],
                gap_at: dict[str, Callable[[int], float]]) -> list[dict[str, Any]]:
    """Per ABS epoch end: ABS against SGD after as many updates, and after as many samples."""
    sgd, abs_ = report_schedules["sgd"], report_schedules["abs"]
    sgd_cum = np.concatenate(([0], np.cumsum(sgd.schedule.batch_sizes)))
    abs_cum = np.concatenate(([0], np.cumsum(abs_.schedule.batch_sizes)))
    out = []
    for e, (ua, us) in enumerate(zip(abs_.schedule.epoch_ends, sgd.schedule.epoch_ends), 1):
        out.append({
            "epoch": e,
            "abs_updates": ua, "abs_samples": int(abs_cum[ua]),
            "abs_gap": gap_at["abs"](ua), "abs_bound": abs_.bounds[ua],
            "sgd_same_updates_gap": gap_at["sgd"](ua), "sgd_same_updates_bound": sgd.bounds[ua],
            "sgd_same_samples_updates": us, "sgd_same_samples_samples": int(sgd_cum[us]),
            "sgd_same_samples_gap": gap_at["sgd"](us), "sgd_same_samples_bound": sgd.bounds[us],
        })
    return out


# --------------------------------------------------------------------------------------------
# Monte-Carlo in chunks (for the progress display)


def _monte_carlo(X, y, kind: str, lam: float, sch: thm.Schedule, eta0: float,
                 checkpoints: list[int], runs: int, seed: int, threads: int | None,
                 progress: Progress | None, label: str) -> np.ndarray:
    """``(runs, len(checkpoints))`` full-loss values; runs are computed in chunks whose
    union is exactly the single call with all runs (same keys)."""
    batches = np.asarray(sch.batch_sizes, dtype=np.int64)
    steps = batches * eta0
    chunk = max(1, min(runs, max(50, runs // 20)))
    parts = []
    for start in range(0, runs, chunk):
        r = sgd_runs(X, y, batch_sizes=batches, step_sizes=steps, lam=lam, kind=kind,
                     runs=min(chunk, runs - start), first_run=start, seed=seed,
                     checkpoints=checkpoints, threads=threads)
        parts.append(r.losses)
        if progress is not None:
            progress.update(min(chunk, runs - start), label)
    return np.concatenate(parts, axis=0)


def _bonferroni(confidence: float, checks: int) -> float:
    """Per-check confidence so that all ``checks`` hold together with ``confidence``."""
    return 1.0 - (1.0 - confidence) / max(checks, 1)


def _validate_common(s: dict[str, Any]) -> None:
    for name in ("epochs", "batch_size", "max_batch_size", "checks_per_epoch", "patience",
                 "checkpoints_per_epoch"):
        v = s[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if s["max_batch_size"] < s["batch_size"]:
        raise ValueError(f"max_batch_size must be >= batch_size = {s['batch_size']}, got "
                         f"{s['max_batch_size']}")
    if not (isinstance(s["confidence"], (int, float)) and 0.5 <= s["confidence"] < 1):
        raise ValueError(f"confidence must be in [0.5, 1), got {s['confidence']!r}")
    if not (isinstance(s["eta0_scale"], (int, float)) and math.isfinite(s["eta0_scale"])
            and s["eta0_scale"] > 0):
        raise ValueError(f"eta0_scale must be finite and > 0, got {s['eta0_scale']!r}")
    if isinstance(s["runs"], bool) or not isinstance(s["runs"], (int, np.integer)) or \
            s["runs"] < 0:
        raise ValueError(f"runs must be an int >= 0, got {s['runs']!r}")


def _eta0(constants: thm.Constants, s: dict[str, Any]) -> tuple[float, bool]:
    """The shared eta0: ``eta0_scale`` times the condition's largest value (or ``eta0``)."""
    b_max = s["max_batch_size"]
    limit = thm.max_eta0(constants, b_max)
    eta0 = s["eta0"] if s.get("eta0") is not None else s["eta0_scale"] * limit
    holds = 0 < eta0 <= limit * (1 + 1e-12)
    if not s["ignore_condition"]:
        thm.check_eta0(constants, eta0, b_max)
    return float(eta0), holds


# --------------------------------------------------------------------------------------------
# the two problems


def least_squares_check(*, n_samples: int = 200, dim: int = 10, cond: float = 10.0,
                        noise: float = 0.5, lam: float = 0.1, seed: int = 0, epochs: int = 10,
                        batch_size: int = 4, max_batch_size: int = 64, alpha: float = 2.0,
                        beta: float = 2.0, check_every: int | None = None,
                        checks_per_epoch: int = 4, patience: int = 4, eta0: float | None = None,
                        eta0_scale: float = 1.0, ignore_condition: bool = False,
                        runs: int = 0, confidence: float = 0.999, checkpoints_per_epoch: int = 2,
                        threads: int | None = None, progress: bool = False) -> TheoryReport:
    """Theorem 1 on a random least-squares problem, with exact expectations.

    The problem is :func:`make_least_squares(n_samples, dim, cond, noise, lam, seed)`; the
    start is ``theta_0 = 0``; constants from :meth:`LeastSquares.constants` (exact). Every
    update of both schedules is checked: ``E[F(theta_t)] - F* <= bound_t (1 + 1e-9)``. With
    ``runs > 0``, that many Monte-Carlo runs estimate the gap at the checkpoints, and a
    checkpoint also FAILs when the exact value leaves the Monte-Carlo confidence interval
    (Bonferroni over all checkpoints, joint level ``confidence``).

    Returns:
        :class:`TheoryReport`.

    Raises:
        ValueError: an option out of range; ``eta0`` past the step-size condition unless
            ``ignore_condition``.
    """
    s = dict(problem="least-squares", n_samples=n_samples, dim=dim, cond=cond, noise=noise,
             lam=lam, seed=seed, epochs=epochs, batch_size=batch_size,
             max_batch_size=max_batch_size, alpha=alpha, beta=beta, check_every=check_every,
             checks_per_epoch=checks_per_epoch, patience=patience, eta0=eta0,
             eta0_scale=eta0_scale, ignore_condition=ignore_condition, runs=runs,
             confidence=confidence, checkpoints_per_epoch=checkpoints_per_epoch)
    _validate_common(s)
    if runs == 1:
        raise ValueError("runs must be 0 (exact values only) or >= 2 (a confidence band), "
                         "got 1")
    prob = make_least_squares(n_samples, dim, cond, noise, lam, seed)
    k = prob.constants()
    eta, holds = _eta0(k, s)
    theta0 = np.zeros(dim)
    gap0 = prob.loss(theta0) - prob.f_star
    top = float(prob.hessian_eigenvalues[-1])
    scheds = _schedules(n_samples, eta, s, lambda _batches: top)
    checks: dict[str, ScheduleCheck] = {}
    abs_ends = list(scheds["abs"].epoch_ends)
    n_checks = 0
    plan = {}
    for name, sch in scheds.items():
        cps = _checkpoints(sch, n_samples, checkpoints_per_epoch,
                           extra=abs_ends if name == "sgd" else ())
        plan[name] = cps
        n_checks += len(cps) - 1
    bar = Progress(2 * runs, "least-squares Monte-Carlo", enabled=progress and runs > 0)
    conf_each = _bonferroni(confidence, n_checks)
    for name, sch in scheds.items():
        batches = np.asarray(sch.batch_sizes, dtype=np.int64)
        exact = prob.expected_gaps(batches, batches * eta, theta0)
        bounds = thm.bound_sequence(k, eta, gap0, sch.batch_sizes, b_max=max_batch_size,
                                    enforce_condition=False)
        viol = thm.first_violation(exact, bounds, rtol=1e-9, atol=1e-15 * max(gap0, 1.0))
        cps = plan[name]
        mc = None
        if runs > 0:
            losses = _monte_carlo(prob.A, prob.y, "least_squares", lam, sch, eta, cps, runs,
                                  seed, threads, bar, name)
            mc = confidence_band(losses - prob.f_star, conf_each)
        rows = []
        cum = np.concatenate(([0], np.cumsum(batches)))
        for j, t in enumerate(cps):
            row = {"update": t, "samples": int(cum[t]), "epoch": float(cum[t] / n_samples),
                   "batch": _batch_at(sch, t), "exact_gap": float(exact[t]),
                   "bound": float(bounds[t]),
                   "tightness": float(bounds[t] / exact[t]) if exact[t] > 0 else math.inf}
            ok = exact[t] <= bounds[t] * (1 + 1e-9) + 1e-15 * max(gap0, 1.0)
            if mc is not None:
                mean, lo, hi, sd = (float(a[j]) for a in mc)
                row.update(mc_mean=mean, mc_lower=lo, mc_upper=hi)
                # t = 0 has no spread: every run starts at theta_0
                agrees = (lo - 1e-12 <= exact[t] <= hi + 1e-12) if t > 0 else True
                row["mc_agrees"] = bool(agrees)
                ok = ok and agrees and lo <= bounds[t] + 1e-12 * max(1.0, gap0)
            row["status"] = "PASS" if ok else "FAIL"
            rows.append(row)
        checks[name] = ScheduleCheck(name, sch, bounds, cps, rows, exact.tolist(), viol)
    bar.close()
    gap_at = {name: (lambda t, e=checks[name].exact: float(e[t])) for name in checks}
    s.update(check_every=s["check_every"] or max(1, n_samples // checks_per_epoch))
    return TheoryReport("least-squares", s, k, eta, thm.noise_floor(k, eta), float(gap0),
                        float(prob.f_star), holds, checks,
                        _comparison(checks, gap_at))


def mushroom_check(*, lam: float = 0.1, seed: int = 0, epochs: int = 5, batch_size: int = 100,
                   max_batch_size: int = 1600, alpha: float = 2.0, beta: float = 2.0,
                   check_every: int | None = None, checks_per_epoch: int = 10,
                   patience: int = 10, eta0: float | None = None, eta0_scale: float = 1.0,
                   ignore_condition: bool = False, runs: int = 1000,
                   confidence: float = 0.999, checkpoints_per_epoch: int = 2,
                   threads: int | None = None, progress: bool = False) -> TheoryReport:
    """Theorem 1 on L2 logistic regression on the UCI mushroom data, by Monte-Carlo.

    Data: :func:`hessbatch.convex.load_mushroom(seed)` (6905 training rows, 117 one-hot
    columns); model and constants: :class:`hessbatch.convex.LogisticRegression` (``c = lam``,
    ``L = lambda_max(X^T X)/(4N) + lam``, ``M = max ||x_i||^2 = 22``, ``M_G = 0``); ``F*`` by
    Newton's method. ``runs`` independent SGD runs from ``theta_0 = 0`` per schedule; at each
    checkpoint the mean gap gets a normal confidence interval (Bonferroni over all checkpoints,
    joint level ``confidence``) and the checkpoint FAILs when its lower limit exceeds the bound.

    The ABS schedule is built first by a pilot run (seed ``seed + 1``, not one of the ``runs``):
    SGD along the schedule being decided, with the top eigenvalue of the full training Hessian
    (Lanczos to 1e-6) reported whenever the core asks.

    Returns:
        :class:`TheoryReport`.

    Raises:
        ValueError: an option out of range (``runs < 2``, ...); ``eta0`` past the condition
            unless ``ignore_condition``.
    """
    from . import LogisticRegression, load_mushroom

    s = dict(problem="mushroom", lam=lam, seed=seed, epochs=epochs, batch_size=batch_size,
             max_batch_size=max_batch_size, alpha=alpha, beta=beta, check_every=check_every,
             checks_per_epoch=checks_per_epoch, patience=patience, eta0=eta0,
             eta0_scale=eta0_scale, ignore_condition=ignore_condition, runs=runs,
             confidence=confidence, checkpoints_per_epoch=checkpoints_per_epoch)
    _validate_common(s)
    if runs < 2:
        raise ValueError(f"runs must be >= 2 for a confidence band, got {runs}")
    ds = load_mushroom(seed=seed)
    X, y = ds.X_train, ds.y_train
    n = X.shape[0]
    model = LogisticRegression(X, y, lam)
    k = thm.Constants(**model.constants().to_dict())
    f_star = float(model.solve().f_star)
    eta, holds = _eta0(k, s)
    theta0 = np.zeros(X.shape[1])
    gap0 = float(model.loss(theta0)) - f_star

    # the pilot run that supplies ABS's eigenvalues
    pilot = {"theta": theta0.copy(), "done": 0, "rng": np.random.default_rng(seed + 1)}

    def eigenvalue(batches: Sequence[int]) -> float:
        for b in batches[pilot["done"]:]:
            idx = pilot["rng"].integers(0, n, size=b)
            pilot["theta"] = pilot["theta"] - b * eta * model.gradient(pilot["theta"], idx)
        pilot["done"] = len(batches)
        return float(model.top_eigenvalue(pilot["theta"], method="lanczos", tol=1e-6).value)

    scheds = _schedules(n, eta, s, eigenvalue)
    abs_ends = list(scheds["abs"].epoch_ends)
    plan = {name: _checkpoints(sch, n, checkpoints_per_epoch,
                               extra=abs_ends if name == "sgd" else ())
            for name, sch in scheds.items()}
    conf_each = _bonferroni(confidence, sum(len(c) - 1 for c in plan.values()))
    bar = Progress(2 * runs, "mushroom Monte-Carlo", enabled=progress)
    checks: dict[str, ScheduleCheck] = {}
    means: dict[str, dict[int, float]] = {}
    for name, sch in scheds.items():
        cps = plan[name]
        losses = _monte_carlo(X, y, "logistic", lam, sch, eta, cps, runs, seed, threads, bar,
                              name)
        mean, lo, hi, sd = confidence_band(losses - f_star, conf_each)
        bounds = thm.bound_sequence(k, eta, gap0, sch.batch_sizes, b_max=max_batch_size,
                                    enforce_condition=False)
        cum = np.concatenate(([0], np.cumsum(sch.batch_sizes)))
        rows = []
        for j, t in enumerate(cps):
            rows.append({
                "update": t, "samples": int(cum[t]), "epoch": float(cum[t] / n),
                "batch": _batch_at(sch, t), "mean_gap": float(mean[j]),
                "lower": float(lo[j]), "upper": float(hi[j]), "sd": float(sd[j]),
                "bound": float(bounds[t]),
                "tightness": float(bounds[t] / mean[j]) if mean[j] > 0 else math.inf,
                # 1e-12: the kernel's F(theta_0) and the model's differ in the last bits
                "status": "PASS" if lo[j] <= bounds[t] + 1e-12 * max(1.0, gap0) else "FAIL"})
        means[name] = {t: float(m) for t, m in zip(cps, mean)}
        checks[name] = ScheduleCheck(name, sch, bounds, cps, rows)
    bar.close()
    gap_at = {name: (lambda t, m=means[name]: m[t]) for name in means}
    s.update(check_every=s["check_every"] or max(1, n // checks_per_epoch),
             n_samples=n, n_features=int(X.shape[1]))
    return TheoryReport("mushroom", s, k, eta, thm.noise_floor(k, eta), gap0, f_star, holds,
                        checks, _comparison(checks, gap_at))


# --------------------------------------------------------------------------------------------
# output


def format_report(rep: TheoryReport) -> str:
    """The tables ``hessbatch theory`` prints."""
    k = rep.constants
    lines = [
        f"Theorem 1 on {rep.problem}: L={k.L:.6g} c={k.c:.6g} M={k.M:.6g} M_G={k.M_G:.6g}",
        f"eta0={rep.eta0:.6g} (condition: eta0 <= {thm.max_eta0(k, rep.settings['max_batch_size']):.6g}, "
        f"{'holds' if rep.condition_holds else 'VIOLATED'})  G={rep.noise_floor:.6g}  "
        f"F*={rep.f_star:.10g}  F(theta_0)-F*={rep.gap0:.6g}",
    ]
    exact = rep.problem == "least-squares"
    for name, sc in rep.schedules.items():
        sch = sc.schedule
        lines.append("")
        lines.append(f"{name.upper()}: {sch.updates} updates, {sch.samples} samples, batches "
                     f"{_batch_summary(sch.batch_sizes)}")
        if exact:
            mc = "mc_mean" in sc.rows[0] if sc.rows else False
            headers = ["update", "samples", "batch", "E[gap] exact", "bound", "bound/gap"]
            if mc:
                headers += ["MC mean", "MC low", "MC high", "MC agrees"]
            headers.append("check")
            body = []
            for r in sc.rows:
                row = [r["update"], r["samples"], r["batch"], _g(r["exact_gap"]),
                       _g(r["bound"]), _g(r["tightness"], 3)]
                if mc:
                    row += [_g(r["mc_mean"]), _g(r["mc_lower"]), _g(r["mc_upper"]),
                            "yes" if r["mc_agrees"] else "NO"]
                body.append(row + [r["status"]])
            lines.append(format_table(headers, body))
            every = ("every update within the bound" if sc.first_violation is None else
                     f"FIRST VIOLATION at update {sc.first_violation}: exact "
                     f"{sc.exact[sc.first_violation]:.6g} > bound "
                     f"{sc.bounds[sc.first_violation]:.6g}")
            lines.append(f"all {sch.updates + 1} updates checked exactly: {every}")
        else:
            headers = ["update", "samples", "batch", "mean gap", "CI low", "CI high", "bound",
                       "bound/mean", "check"]
            body = [[r["update"], r["samples"], r["batch"], _g(r["mean_gap"]), _g(r["lower"]),
                     _g(r["upper"]), _g(r["bound"]), _g(r["tightness"], 3), r["status"]]
                    for r in sc.rows]
            lines.append(format_table(headers, body))
    lines.append("")
    lines.append("SGD against ABS (gap = " + ("exact E[gap]" if exact else "Monte-Carlo mean")
                 + "): equal updates, then equal samples")
    headers = ["epoch", "ABS upd", "ABS gap", "ABS bound", "SGD gap same upd",
               "SGD bound same upd", "SGD upd same smp", "SGD gap same smp",
               "SGD bound same smp"]
    body = [[c["epoch"], c["abs_updates"], _g(c["abs_gap"]), _g(c["abs_bound"]),
             _g(c["sgd_same_updates_gap"]), _g(c["sgd_same_updates_bound"]),
             c["sgd_same_samples_updates"], _g(c["sgd_same_samples_gap"]),
             _g(c["sgd_same_samples_bound"])] for c in rep.comparison]
    lines.append(format_table(headers, body))
    lines.append("")
    lines.append("RESULT: " + ("PASS (every checkpoint within the bound)" if rep.passed
                               else "FAIL (see the rows marked FAIL)"))
    return "\n".join(lines)


def _g(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return "inf"
    return f"{v:.{digits}g}"


def _batch_summary(batches: Sequence[int]) -> str:
    """``100x69, 200x35, ...``: each batch size with the number of updates at it, in order."""
    out: list[list[int]] = []
    for b in batches:
        if out and out[-1][0] == b:
            out[-1][1] += 1
        else:
            out.append([b, 1])
    return ", ".join(f"{b}x{c}" for b, c in out)


def save_report(rep: TheoryReport, out: str | Path) -> list[Path]:
    """Write ``theory.json`` and, with matplotlib, ``theory.png`` into ``out``.

    Returns:
        The paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "theory.json"
    path.write_text(json.dumps(_jsonable(rep.to_dict()), indent=1) + "\n", encoding="utf-8")
    written = [path]
    try:
        import matplotlib
    except ImportError:
        print("theory: matplotlib is not installed, so no plot was made; "
              "pip install 'hessbatch[plot]' to get the plot", file=sys.stderr)
        return written
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"sgd": "tab:blue", "abs": "tab:red"}
    for name, sc in rep.schedules.items():
        cps = np.array(sc.checkpoints)
        cum = np.concatenate(([0], np.cumsum(sc.schedule.batch_sizes)))
        bounds = np.array(sc.bounds)
        for ax, x_all, x_cp in ((axes[0], np.arange(len(bounds)), cps),
                                (axes[1], cum, cum[cps])):
            ax.plot(x_all, bounds, "--", color=colors[name], label=f"{name.upper()} bound")
            if rep.problem == "least-squares":
                ax.plot(x_all, sc.exact, "-", color=colors[name],
                        label=f"{name.upper()} exact E[gap]")
            else:
                lo = np.array([r["lower"] for r in sc.rows])
                hi = np.array([r["upper"] for r in sc.rows])
                mean = np.array([r["mean_gap"] for r in sc.rows])
                ax.fill_between(x_cp, np.maximum(lo, 1e-300), hi, color=colors[name], alpha=0.3)
                ax.plot(x_cp, mean, "o-", ms=3, color=colors[name],
                        label=f"{name.upper()} mean gap ({rep.settings['runs']} runs)")
    for ax, xl in zip(axes, ("parameter updates", "samples drawn")):
        ax.axhline(rep.noise_floor, color="gray", ls=":", lw=1, label="noise floor G")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("E[F(theta)] - F*")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("per parameter update")
    axes[1].set_title("per sample drawn")
    fig.suptitle(f"Theorem 1 on {rep.problem}: eta0={rep.eta0:.3g}, G={rep.noise_floor:.3g}")
    fig.tight_layout()
    png = out / "theory.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    written.append(png)
    return written


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------------------------
# the command


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Add every option of ``hessbatch theory``."""
    parser.add_argument("--problem", choices=("mushroom", "least-squares"), default="mushroom",
                        help="mushroom: Monte-Carlo on L2 logistic regression; least-squares: "
                             "exact expectations on a random ridge regression "
                             "(default %(default)s)")
    parser.add_argument("--runs", type=int, default=None,
                        help="Monte-Carlo runs per schedule (default: 1000 for mushroom, 4000 "
                             "for least-squares, where 0 means exact values only)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of N samples each (default: 5 mushroom, 10 least-squares)")
    parser.add_argument("--lam", type=float, default=0.1,
                        help="L2 strength = c, the strong convexity; the bound needs it large "
                             "enough to contract within the run (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data split or problem, the runs and the pilot "
                             "(default %(default)s)")
    g = parser.add_argument_group("schedules (SGD at B0; ABS from B0 to B_max, by the core)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="B0: SGD's batch and ABS's first (default: 100 mushroom, 4 least-squares)")
    g.add_argument("--max-batch", "--max-batch-size", dest="max_batch_size", type=int,
                   default=None,
                   help="B_max: ABS's largest batch, also the b_max of the step-size condition "
                        "(default: 1600 mushroom, 64 least-squares)")
    g.add_argument("--alpha", type=float, default=2.0,
                   help="ABS grows when the eigenvalue dropped by this ratio (default %(default)s)")
    g.add_argument("--beta", type=float, default=2.0,
                   help="ABS batch growth factor (default %(default)s)")
    g.add_argument("--check-every", type=int, default=None,
                   help="samples between ABS's eigenvalue checks (default: N / --checks-per-epoch)")
    g.add_argument("--checks-per-epoch", type=int, default=None,
                   help="eigenvalue checks per epoch when --check-every is not given "
                        "(default: 10 mushroom, 4 least-squares)")
    g.add_argument("--patience", type=int, default=None,
                   help="kappa: ABS grows after this many checks without a drop "
                        "(default: 10 mushroom, 4 least-squares)")
    g = parser.add_argument_group("the bound")
    g.add_argument("--eta0", type=float, default=None,
                   help="step per sample (update t steps b_t * eta0); default: the largest the "
                        "condition eta0 <= 1/(L (M_G + B_max)) allows, times --eta0-scale")
    g.add_argument("--eta0-scale", type=float, default=1.0,
                   help="multiply the condition's largest eta0 by this (default %(default)s)")
    g.add_argument("--ignore-condition", action="store_true",
                   help="run even when eta0 violates the condition (to see the bound fail); "
                        "without it such an eta0 is an error")
    g.add_argument("--confidence", type=float, default=0.999,
                   help="joint confidence of all the Monte-Carlo intervals (Bonferroni) "
                        "(default %(default)s)")
    g.add_argument("--checkpoints-per-epoch", type=int, default=2,
                   help="table rows per epoch (epoch ends always) (default %(default)s)")
    g = parser.add_argument_group("least-squares problem")
    g.add_argument("--n-samples", type=int, default=200, help="N (default %(default)s)")
    g.add_argument("--dim", type=int, default=10, help="d (default %(default)s)")
    g.add_argument("--cond", type=float, default=10.0,
                   help="condition number of A^T A / N (default %(default)s)")
    g.add_argument("--noise", type=float, default=0.5,
                   help="standard deviation of the target noise (default %(default)s)")
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=None,
                   help="directory for theory.json and theory.png (the empirical band "
                        "against the bound)")
    g.add_argument("--threads", type=int, default=None,
                   help="Numba threads for the Monte-Carlo (default: all cores)")
    g.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    """Run the checks, print the tables, write ``--out``; 0 when all pass, 1 otherwise."""
    d = _DEFAULTS[args.problem]
    kw = dict(
        lam=args.lam, seed=args.seed,
        epochs=args.epochs if args.epochs is not None else d["epochs"],
        batch_size=args.batch_size if args.batch_size is not None else d["batch_size"],
        max_batch_size=(args.max_batch_size if args.max_batch_size is not None
                        else d["max_batch_size"]),
        alpha=args.alpha, beta=args.beta, check_every=args.check_every,
        checks_per_epoch=(args.checks_per_epoch if args.checks_per_epoch is not None
                          else d["checks_per_epoch"]),
        patience=args.patience if args.patience is not None else d["patience"],
        eta0=args.eta0, eta0_scale=args.eta0_scale, ignore_condition=args.ignore_condition,
        runs=args.runs if args.runs is not None else d["runs"], confidence=args.confidence,
        checkpoints_per_epoch=args.checkpoints_per_epoch, threads=args.threads,
        progress=not args.quiet)
    if args.problem == "mushroom":
        rep = mushroom_check(**kw)
    else:
        rep = least_squares_check(n_samples=args.n_samples, dim=args.dim, cond=args.cond,
                                  noise=args.noise, **kw)
    print(format_report(rep))
    if args.out:
        for p in save_report(rep, args.out):
            print(f"wrote {p}")
    return 0 if rep.passed else 1
