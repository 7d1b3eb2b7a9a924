"""The convex driver: decisions come from the core, events go back to it, runs are reproducible,
sampling is what the docs say, and bad pairings of model and config are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessbatch import Scheduler, SchedulerConfig
from hessbatch.theory import max_eta0
from hessbatch.convex import (EigenResult, LogisticRegression, RunResult, full_batch_config,
                              load_mushroom, make_eigenvalue_fn, train)


@pytest.fixture(scope="module")
def small():
    ds = load_mushroom(seed=2, n_train=1000)
    return LogisticRegression(ds.X_train, ds.y_train, lam=1e-3)


def _cfg(method, n, **kw):
    base = dict(method=method, lr=0.05, batch_size=40, max_batch_size=640,
                samples_per_epoch=n, epochs=6, check_every=300, patience=2,
                adv_fraction=0.2, adv_eps=0.05, adv_stop=0.5)
    base.update(kw)
    return SchedulerConfig(**base)


class Script:
    """A scripted eigenvalue sequence that remembers where it was asked."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0
        self.thetas = []

    def __call__(self, theta):
        self.thetas.append(theta.copy())
        v = self.values[self.calls % len(self.values)]
        self.calls += 1
        return v


SCRIPT = [8.0, 7.5, 3.0, 2.9, 2.8, 1.0, 1.2, 0.3, 0.31, 0.2]


def _replay(run: RunResult, cfg: SchedulerConfig, script_values) -> None:
    """Replay the run's events on a fresh core and compare every decision with what ran."""
    sch = Scheduler(cfg)
    used = 0
    for k in range(1, len(run.update)):
        d = sch.decision
        n = int(run.batch_size[k])
        assert 1 <= n <= d.batch_size
        assert run.lr[k] == d.lr                  # a short last batch too: the core's rule
        if n == d.batch_size:
            assert run.adv_count[k] == d.adv_count
        else:                                     # a short last batch of a shuffled epoch
            assert run.adv_count[k] == d.adversarial_count(n)
        d = sch.step(n)
        if math.isnan(run.eigenvalue[k]):
            assert not d.eigenvalue_due
        else:
            assert d.eigenvalue_due
            assert run.eigenvalue[k] == script_values[used % len(script_values)]
            used += 1
            d = sch.eigenvalue(float(run.eigenvalue[k]))
        if run.epoch_end[k]:
            d = sch.end_epoch()
        assert run.samples[k] == d.samples_seen
    assert sch.decision.finished
    assert sch.state_dict() == run.scheduler


def _moved_by_the_logged_lr(model, rec: "Recorder", run: RunResult) -> None:
    """theta_k = theta_{k-1} - lr_k * grad F_S(theta_{k-1}), with lr_k the logged lr, S the
    batch and the adversarial rows of update k; the gradient from the model's public API."""
    calls = list(rec.calls)        # a copy: the checks below may go through the same kernels
    assert len(calls) == run.updates
    thetas = [c[0] for c in calls] + [run.theta]
    for k, (theta, idx, adv, eps) in enumerate(calls, start=1):
        assert len(idx) == run.batch_size[k] and adv == run.adv_count[k]
        _, g = model.loss_and_gradient(theta, idx, adv_count=adv, adv_eps=eps)
        assert np.array_equal(thetas[k], theta - run.lr[k] * g), k
        if k > 1:
            assert run.loss[k - 1] == model.loss(theta)          # the logged loss is F there


@pytest.mark.parametrize("method", ["abs", "absa", "bl", "gg", "fb"])
@pytest.mark.parametrize("sampling", ["iid", "shuffle"])
def test_decisions_equal_the_core_replaying_the_same_events(small, method, sampling):
    kw = {"lr_decay_epochs": (2, 4), "lr_decay_factor": 0.5} if method == "gg" else {}
    cfg = _cfg(method, small.n_samples, **kw)
    script = Script(SCRIPT)
    m, rec = _recorded(small)
    run = train(m, cfg, seed=5, sampling=sampling, eigenvalue_fn=script)
    # the logged lr is the core's (replay below) and theta moved by exactly that lr
    _moved_by_the_logged_lr(small, rec, run)
    assert script.calls == run.eigenvalue_checks
    if method in ("abs", "absa"):
        assert script.calls > 3 and run.max_batch > cfg.batch_size   # the script made it grow
    if method == "absa":
        assert run.adv_count[1] == 8                                 # floor(0.2 * 40)
        ends = np.flatnonzero(run.epoch_end)
        assert np.all(run.adv_count[ends[2] + 1:] == 0)              # tau = 0.5 of 6 epochs
    _replay(run, cfg, SCRIPT)


def test_same_seed_same_bits_and_other_seed_other_numbers(small):
    cfg = _cfg("absa", small.n_samples)
    a = train(small, cfg, seed=11)
    b = train(small, cfg, seed=11)
    for name, col in a.curves().items():
        assert np.array_equal(col, b.curves()[name], equal_nan=True), name
    assert np.array_equal(a.theta, b.theta)
    c = train(small, cfg, seed=12)
    assert not np.array_equal(a.loss, c.loss)
    assert a.total_hvps > 0 and a.eigenvalue_checks > 0


def test_gd_is_exact_gradient_descent(small):
    step = 0.7
    run = train(small, full_batch_config(small.n_samples, step, 25), sampling="shuffle")
    th = np.zeros(117)
    for k in range(1, 26):
        th = th - step * small.gradient(th)
        assert run.loss[k] == small.loss(th)
    assert np.array_equal(run.theta, th)
    assert run.updates == 25 and np.all(run.batch_size[1:] == small.n_samples)
    assert run.samples_seen == 25 * small.n_samples and np.all(run.epoch_end[1:])


class Recorder:
    """Wraps the model's kernels to see which rows, parameters and adversarial count each
    update's gradient used (theta is copied: the driver updates it in place)."""

    def __init__(self, model):
        self.inner = model._k
        self.batches = []
        self.calls = []            # (theta before the update, idx, adv_count, adv_eps)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss_grad(self, X, y, idx, theta, lam, adv, eps, *rest):
        self.batches.append(np.array(idx))
        self.calls.append((np.array(theta), np.array(idx), int(adv), float(eps)))
        return self.inner.loss_grad(X, y, idx, theta, lam, adv, eps, *rest)


def _recorded(model):
    m = LogisticRegression(model.X, model.y, model.lam)
    rec = Recorder(m)
    m._k = rec
    return m, rec


def test_shuffle_visits_every_row_once_per_epoch(small):
    m, rec = _recorded(small)
    cfg = _cfg("bl", m.n_samples, batch_size=64, max_batch_size=64, epochs=3)
    run = train(m, cfg, seed=1, sampling="shuffle")
    n = m.n_samples
    per_epoch = math.ceil(n / 64)
    assert run.updates == 3 * per_epoch
    for e in range(3):
        rows = np.concatenate(rec.batches[e * per_epoch:(e + 1) * per_epoch])
        assert np.array_equal(np.sort(rows), np.arange(n))
    assert run.batch_size[per_epoch] == n % 64          # the short last batch
    assert run.lr[per_epoch] == 0.05                     # the decided lr, as for full batches
    _moved_by_the_logged_lr(small, rec, run)             # and theta moved by it, short or not
    assert np.array_equal(run.samples[run.epoch_end], [n, 2 * n, 3 * n])
    assert not np.array_equal(rec.batches[0], rec.batches[per_epoch])   # fresh permutation


def _chi2_sf_upper(x: float, dof: int) -> float:
    # Wilson-Hilferty: (X/k)^(1/3) is close to normal with mean 1 - 2/(9k), var 2/(9k)
    z = ((x / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_iid_batches_are_uniform_with_replacement():
    ds = load_mushroom(seed=0, n_train=50)
    m, rec = _recorded(LogisticRegression(ds.X_train, ds.y_train, lam=1e-3))
    cfg = SchedulerConfig(method="bl", lr=0.01, batch_size=40, samples_per_epoch=50,
                          epochs=400)
    run = train(m, cfg, seed=3, sampling="iid")
    draws = np.concatenate(rec.batches)
    assert all(len(b) == 40 for b in rec.batches)       # never cut short
    counts = np.bincount(draws, minlength=50)
    expected = len(draws) / 50
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    # uniform draws: a chi-square with 49 dof; reject only below p = 1e-4 (seeded run)
    assert _chi2_sf_upper(chi2, 49) > 1e-4
    # with replacement: 40 of 50 rows without a repeat has probability < 1e-6 per batch
    assert sum(len(np.unique(b)) < 40 for b in rec.batches) > 0.99 * len(rec.batches)
    # epochs end at the first update reaching each multiple of n
    ends = run.samples[run.epoch_end]
    assert len(ends) == 400
    assert np.all(ends >= 50 * np.arange(1, 401)) and np.all(ends < 50 * np.arange(1, 401) + 40)


def test_default_eigenvalue_check_is_the_top_hessian_eigenvalue(small):
    seen = []
    inner = make_eigenvalue_fn(small, tol=1e-10, max_iter=500, seed=0)

    def spy(theta):
        r = inner(theta)
        seen.append((theta.copy(), r))
        return r

    run = train(small, _cfg("abs", small.n_samples), seed=0, eigenvalue_fn=spy)
    assert len(seen) == run.eigenvalue_checks > 0
    for theta, r in seen:
        assert isinstance(r, EigenResult)
        want = np.linalg.eigvalsh(small.hessian(theta))[-1]
        assert r.value == pytest.approx(want, rel=1e-8)
    assert run.total_hvps == sum(r.n_matvec for _, r in seen)
    # each full-data HVP reads all n rows: the checks' sample cost, logged beside the HVPs
    assert run.total_hvp_rows == small.n_samples * run.total_hvps
    assert np.array_equal(run.hvp_rows, small.n_samples * run.hvps)
    f_star = small.solve().f_star
    target = float(run.loss[len(run.loss) // 2] - f_star)
    k = run.first_reaching(f_star, target)
    assert run.hvp_rows_to_gap(f_star, target) == small.n_samples * int(run.hvps[:k + 1].sum())
    # a random Hessian batch gives other (noisier) values, still the top of that batch
    fn = make_eigenvalue_fn(small, hessian_batch=64, seed=1)
    th = seen[-1][0]
    res = [fn(th) for _ in range(5)]
    vals = [r.value for r in res]
    assert len(set(vals)) > 1
    assert all(v <= small.constants().L for v in vals)
    assert all(r.rows_per_matvec == 64 and r.rows_read == 64 * r.n_matvec for r in res)
    run = train(small, _cfg("abs", small.n_samples), seed=0, hessian_batch=64)
    assert run.total_hvps > 0 and run.total_hvp_rows == 64 * run.total_hvps
    # a scripted eigenvalue (a float) reads no data rows
    scripted = train(small, _cfg("abs", small.n_samples), eigenvalue_fn=Script(SCRIPT))
    assert scripted.total_hvp_rows == 0 == scripted.total_hvps


def test_divergence_stops_the_run(small):
    run = train(small, full_batch_config(small.n_samples, 1e305, 50), sampling="shuffle")
    assert run.diverged and run.updates < 50
    assert not math.isfinite(run.loss[-1]) and np.all(np.isfinite(run.loss[:-1]))
    # (1e305 is refused since issue 20: growing 320 -> 640 would compute lr * 640 = inf)
    cfg = _cfg("abs", small.n_samples, lr=1e300, check_every=40)
    run = train(small, cfg, eigenvalue_fn=Script([1.0]))
    assert run.diverged


def test_result_helpers(small):
    cfg = _cfg("bl", small.n_samples, max_batch_size=40, epochs=2)
    run = train(small, cfg)
    f0 = run.loss[0]
    assert run.updates_to_gap(0.0, f0) == 0
    target = run.loss[7]
    k = run.updates_to_gap(0.0, target)
    assert k is not None and k <= 7 and np.all(run.loss[:k] > target)
    assert run.samples_to_gap(0.0, target) == run.samples[k]
    assert run.updates_to_gap(0.0, -1.0) is None and run.samples_to_gap(0.0, -1.0) is None
    assert run.loss[-1] == small.loss(run.theta)
    assert run.max_batch == 40


def test_driver_errors(small):
    n = small.n_samples
    with pytest.raises(ValueError, match="samples_per_epoch"):
        train(small, _cfg("bl", n + 1))
    with pytest.raises(ValueError, match="larger than the data"):
        train(small, _cfg("abs", n, max_batch_size=1280))
    with pytest.raises(ValueError, match="sampling"):
        train(small, _cfg("bl", n), sampling="random")
    with pytest.raises(ValueError, match="seed"):
        train(small, _cfg("bl", n), seed=-1)
    with pytest.raises(TypeError, match="seed"):
        train(small, _cfg("bl", n), seed=1.5)
    with pytest.raises(ValueError, match="theta0"):
        train(small, _cfg("bl", n), theta0=np.zeros(3))
    with pytest.raises(TypeError, match="eigenvalue_fn"):
        train(small, _cfg("abs", n), eigenvalue_fn=3.0)
    with pytest.raises(TypeError, match="config"):
        train(small, {"method": "bl"})
    with pytest.raises(TypeError, match="model"):
        train(None, _cfg("bl", n))
    with pytest.raises(ValueError, match="hessian_batch"):
        make_eigenvalue_fn(small, hessian_batch=n + 1)
    # a negative eigenvalue is refused by the core, not swallowed
    with pytest.raises(ValueError, match="eigenvalue must be >= 0"):
        train(small, _cfg("abs", n), eigenvalue_fn=Script([-1.0]))


def test_abs_needs_fewer_updates_than_sgd_for_the_same_gap_and_samples():
    # The paper's convex claim, in small (Theorem 1's shared eta0, B0 = 50, B_max = 400):
    # ABS reaches the gap with a fraction of SGD's updates and the same samples.
    ds = load_mushroom(seed=0, n_train=2000)
    model = LogisticRegression(ds.X_train, ds.y_train, lam=1e-3)
    f_star = model.solve().f_star
    eta0 = max_eta0(model.constants(), 400)
    runs = {}
    for method, b_max in (("bl", 50), ("abs", 400)):
        cfg = SchedulerConfig(method=method, lr=50 * eta0, batch_size=50, max_batch_size=b_max,
                              samples_per_epoch=model.n_samples, epochs=80, patience=2)
        runs[method] = train(model, cfg, seed=0)
    sgd, abs_ = runs["bl"], runs["abs"]
    assert abs_.max_batch == 400
    k_sgd, k_abs = sgd.updates_to_gap(f_star, 0.02), abs_.updates_to_gap(f_star, 0.02)
    assert k_sgd is not None and k_abs is not None
    assert k_abs < k_sgd / 3
    s_sgd, s_abs = sgd.samples_to_gap(f_star, 0.02), abs_.samples_to_gap(f_star, 0.02)
    assert abs(s_abs - s_sgd) <= 0.02 * s_sgd
    # and after the same samples the two gaps agree (the noise floor does not depend on B)
    assert abs_.samples_seen == sgd.samples_seen
    assert abs(abs_.loss[-1] - sgd.loss[-1]) <= 0.05 * (sgd.loss[-1] - f_star)


@pytest.mark.parametrize("rule", ["blocks", "batch"])
def test_fgsm_rows_are_the_ones_at_the_cores_adversarial_ranges(small, monkeypatch, rule):
    """The kernels perturb the first adv rows they are given; the driver must hand them the
    rows at the core's positions (blocks of B0 spread over the logical batch), and the rest."""
    seen = []
    original = small._k.loss_grad

    def recording(X, y, idx, theta, lam, adv, *rest):
        seen.append((np.array(idx), adv))
        return original(X, y, idx, theta, lam, adv, *rest)

    monkeypatch.setattr(small._k, "loss_grad", recording)
    cfg = _cfg("absa", small.n_samples, patience=1, adv_rule=rule, adv_stop=1.0)
    run = train(small, cfg, seed=3, sampling="iid", eigenvalue_fn=Script([1.0]))
    rng = np.random.default_rng(np.random.SeedSequence(3).spawn(2)[0])   # the batch stream
    sch, spread = Scheduler(cfg), 0
    for k, (idx, adv) in enumerate(seen):
        d = sch.decision
        batch = rng.integers(0, small.n_samples, size=d.batch_size)       # what was drawn
        mask = np.zeros(d.batch_size, dtype=bool)
        for a, b in d.adv_ranges:
            mask[a:b] = True
        assert adv == d.adv_count == mask.sum() == run.adv_count[k + 1]
        assert np.array_equal(idx[:adv], batch[mask]) and np.array_equal(idx[adv:], batch[~mask])
        spread += len(d.adv_ranges) > 1
        d = sch.step(d.batch_size)
        if d.eigenvalue_due:
            sch.eigenvalue(1.0)
        if run.epoch_end[k + 1]:
            sch.end_epoch()
    if rule == "blocks":   # B = 80 with gamma = 0.1: 4 rows at [0, 4) and [40, 44)
        assert spread > 0
    else:
        assert spread == 0
