"""Edge cases of the scheduler core found while writing the property tests, and now fixed:
these tests guard the fixes (tau with a rounding tolerance; configs whose lr would overflow or
underflow refused at construction, naming the field).

The property tests keep their random configs inside realistic ranges; these cover the extremes.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessbatch import Scheduler, SchedulerConfig


def _absa(**kw) -> Scheduler:
    base = dict(method="absa", lr=0.1, batch_size=100, max_batch_size=800,
                samples_per_epoch=100, epochs=100, adv_fraction=0.2, patience=10)
    base.update(kw)
    return Scheduler(SchedulerConfig(**base))


def _epoch(sch: Scheduler) -> None:
    sch.step()
    if sch.decision.eigenvalue_due:
        sch.skip_eigenvalue()
    sch.end_epoch()


@pytest.mark.parametrize("tau, epochs, stop", [(0.07, 100, 7), (0.55, 100, 55),
                                               (0.07, 200, 14)])
def test_adversary_stops_at_tau_times_epochs_despite_binary_rounding(tau, epochs, stop):
    # Algorithm 1 step 5: gamma = 0 once epoch >= tau * epochs. The core applies a 1e-9
    # tolerance to its other float-to-integer rules (batch rounding, adversarial count); here
    # it has none, so the adversary runs one epoch too long whenever tau * epochs lands just
    # above an integer. Fix: compare with cfg.adv_stop * cfg.epochs - _ROUND_TOL in
    # on_epoch_end and _invariant_problems.
    sch = _absa(adv_stop=tau, epochs=epochs)
    for _ in range(stop):
        _epoch(sch)
    assert sch.decision.epoch == stop
    assert sch.decision.adv_fraction == 0.0


def test_adversary_stop_is_right_where_the_product_is_exact():
    # the companion of the test above, which passes today: 0.5 * 100 is exact
    sch = _absa(adv_stop=0.5)
    for _ in range(49):
        _epoch(sch)
    assert sch.decision.adv_fraction == 0.2
    _epoch(sch)
    assert sch.decision.adv_fraction == 0.0


def test_a_valid_config_never_produces_a_checkpoint_that_cannot_be_loaded():
    # lr = 1e-300 and rho = 1e-5 are each accepted; five decays give 1e-325, which is 0.0.
    # Fix: refuse such configs in SchedulerConfig (e.g. require
    # lr * lr_decay_factor ** len(lr_decay_epochs) >= sys.float_info.min, and
    # lr * max_batch_size / batch_size finite), naming lr and lr_decay_factor.
    cfg = dict(method="bl", lr=1e-300, batch_size=10, samples_per_epoch=10, epochs=5,
               lr_decay_epochs=(1, 2, 3, 4, 5), lr_decay_factor=1e-5)
    with pytest.raises(ValueError, match=r"lr = 1e-300 decayed by lr_decay_factor = 1e-05 .* "
                                         r"underflows"):
        SchedulerConfig(**cfg)
    # a larger lr stays a normal double after all five decays: the state stays loadable
    cfg.update(lr=1e-280)
    sch = Scheduler(SchedulerConfig(**cfg))
    for _ in range(5):
        sch.step()
        sch.end_epoch()
    sch.check_invariants()
    assert sch.decision.lr > 0
    Scheduler.from_state_dict(json.loads(json.dumps(sch.state_dict())))


def test_fb_lr_is_finite_for_every_accepted_config():
    cfg = dict(method="fb", lr=1e307, batch_size=10, max_batch_size=1000,
               samples_per_epoch=10, epochs=2)
    with pytest.raises(ValueError, match=r"lr = 1e\+307 is too large") as info:
        SchedulerConfig(**cfg)
    cfg.update(lr=1e300)
    sch = Scheduler(SchedulerConfig(**cfg))
    assert math.isfinite(sch.decision.lr)
    sch.check_invariants()
    assert info.value.field == "lr"


def test_issue_20_abs_at_lr_1e306_no_longer_reaches_inf():
    # before: lr * (B_max / B0) = 2e306 passed the check, the growth computed (lr * 200) / 100
    # with lr * 200 = inf, and the core refused its own saved state
    with pytest.raises(ValueError, match="too large") as info:
        SchedulerConfig(method="abs", lr=1e306, batch_size=100, max_batch_size=200,
                        samples_per_epoch=100, epochs=2)
    assert info.value.field == "lr"


def _largest_lr(**kw) -> float:
    """The largest eta a config accepts (bisection on doubles, then nextafter)."""
    lo, hi = 1e-300, 1.7976931348623157e308
    for _ in range(2200):
        mid = lo + (hi - lo) / 2
        try:
            SchedulerConfig(lr=mid, **kw)
            lo = mid
        except ValueError:
            hi = mid
        if math.nextafter(lo, math.inf) >= hi:
            break
    return lo


@settings(max_examples=60, deadline=None, derandomize=True)
@given(method=st.sampled_from(["abs", "absa", "gg", "fb"]),
       micro=st.sampled_from([1, 3, 10]), b0_mult=st.integers(1, 30),
       growth=st.integers(1, 64), beta=st.sampled_from([1.01, 1.1, 1.5, 2.0, 3.7]),
       rho=st.sampled_from([1.0, 0.5, 0.1, 0.999]))
def test_every_lr_is_finite_at_the_largest_accepted_eta(method, micro, b0_mult, growth, beta,
                                                        rho):
    """'Every lr the run can reach is finite, by construction': at the largest eta the config
    accepts, a run that grows B to B_max as fast as the rules allow (every check a drop; gg:
    every epoch a decay) decides only finite lrs and saves only loadable states."""
    b0 = micro * b0_mult
    kw = dict(method=method, batch_size=b0, micro_batch_size=micro,
              max_batch_size=b0 + micro * growth, samples_per_epoch=b0, epochs=40,
              beta=beta, patience=1, lr_decay_factor=rho,
              lr_decay_epochs=tuple(range(1, 41)) if method == "gg" else (), adv_fraction=0.2)
    cfg = SchedulerConfig(lr=_largest_lr(**kw), **kw)
    sch = Scheduler(cfg)
    lam = 1e300
    while not sch.decision.finished:
        d = sch.step()
        assert math.isfinite(d.lr) and d.lr > 0
        if d.eigenvalue_due:
            lam /= 4
            d = sch.eigenvalue(lam)
            assert math.isfinite(d.lr)
        d = sch.end_epoch()
        assert math.isfinite(d.lr) and math.isfinite(sch.state.lr)
        sch.check_invariants()
    assert sch.decision.batch_size > b0 or (method == "gg" and rho == 1.0)   # it grew
    Scheduler.from_state_dict(json.loads(json.dumps(sch.state_dict())))


def test_gg_with_a_tiny_decay_factor_fails_at_construction_not_mid_run():
    # rho = 5e-324 passes the check 'in (0, 1]' but the lr it decays to underflows.
    with pytest.raises(ValueError, match="lr_decay_factor = 5e-324"):
        SchedulerConfig(method="gg", lr=0.1, batch_size=10, max_batch_size=1000,
                        samples_per_epoch=10, epochs=2, lr_decay_epochs=(1,),
                        lr_decay_factor=5e-324)
    # a tiny but representable rho: 1 / rho * B is huge, the batch goes straight to B_max
    sch = Scheduler(SchedulerConfig(method="gg", lr=0.1, batch_size=10, max_batch_size=1000,
                                    samples_per_epoch=10, epochs=2, lr_decay_epochs=(1,),
                                    lr_decay_factor=1e-300))
    sch.step()
    d = sch.end_epoch()
    assert d.batch_size == 1000 and d.lr == pytest.approx(0.1 * 1e-300 * 100)
