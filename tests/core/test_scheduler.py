"""Unit tests of the scheduler core: every rule of Algorithm 1 with hand-computed values."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from hessbatch import (
    Scheduler,
    SchedulerConfig,
    SchedulerError,
    decide,
    init,
    on_eigenvalue,
    on_epoch_end,
    on_step,
)


def make(method="abs", **kw):
    base = dict(method=method, lr=0.1, batch_size=100, max_batch_size=800,
                samples_per_epoch=200, epochs=10, patience=3)
    base.update(kw)
    return Scheduler(SchedulerConfig(**base))


def run_epoch(sch, eigen=None):
    """Two steps of B=100 (one epoch of 200 at B0); report ``eigen`` when asked."""
    seen = 0
    while seen < sch.config.samples_per_epoch:
        n = min(sch.decision.batch_size, sch.config.samples_per_epoch - seen)
        d = sch.step(n)
        seen += n
        if d.eigenvalue_due:
            sch.eigenvalue(eigen)
    return sch.end_epoch()


# ------------------------------------------------------------------------------- the rules


def test_first_eigenvalue_sets_reference_and_counts_one():
    sch = make()
    sch.step()
    d = sch.step()
    assert d.eigenvalue_due and d.samples_seen == 200
    d = sch.eigenvalue(8.0)
    assert (d.batch_size, d.lr, d.eigenvalue_due) == (100, 0.1, False)
    assert sch.state.lam_ref == 8.0 and sch.state.patience_count == 1


def test_growth_by_drop_doubles_batch_and_lr_and_resets():
    sch = make()
    run_epoch(sch, 8.0)
    d = run_epoch(sch, 4.0)  # 4.0 <= 8.0 / alpha: grow
    assert (d.batch_size, d.lr) == (200, 0.2)
    assert sch.state.lam_ref == 4.0 and sch.state.patience_count == 0


def test_no_growth_just_above_the_drop_ratio():
    sch = make()
    run_epoch(sch, 8.0)
    d = run_epoch(sch, 4.000001)
    assert d.batch_size == 100 and sch.state.patience_count == 2


def test_growth_by_patience_keeps_reference():
    sch = make(patience=3)
    run_epoch(sch, 8.0)          # d = 1
    run_epoch(sch, 7.0)          # d = 2
    d = run_epoch(sch, 7.5)      # d = 3 >= kappa: grow, lam_ref unchanged
    assert (d.batch_size, d.lr) == (200, 0.2)
    assert sch.state.lam_ref == 8.0 and sch.state.patience_count == 0
    # the next drop is measured against 8.0, not against 7.5
    d = run_epoch(sch, 4.0)
    assert d.batch_size == 400


def test_cap_at_max_batch_stops_checks_and_adversary():
    sch = make("absa", max_batch_size=300, adv_fraction=0.2, patience=10)
    run_epoch(sch, 8.0)
    assert sch.decision.adv_count == 20
    d = run_epoch(sch, 1.0)      # grow 100 -> 200
    assert (d.batch_size, d.adv_fraction, d.adv_count) == (200, 0.1, 20)
    d = run_epoch(sch, 0.1)      # grow 200 -> min(400, 300) = 300 = B_max
    assert (d.batch_size, d.lr, d.adv_count, d.adv_fraction) == (300, pytest.approx(0.3), 0, 0.0)
    for _ in range(3):           # never asked again
        d = sch.step()
        assert not d.eigenvalue_due


def test_micro_batch_rounding_on_growth():
    # beta = 1.5 from 100 gives 150, rounded up to a multiple of the micro-batch 20: 160
    sch = make(beta=1.5, micro_batch_size=20, max_batch_size=1000)
    run_epoch(sch, 8.0)
    d = run_epoch(sch, 2.0)
    assert (d.batch_size, d.accumulation_steps) == (160, 8)
    assert d.lr == pytest.approx(0.16)
    assert d.accumulation_for(40) == 4
    with pytest.raises(ValueError, match="micro_batch_size must divide the logical batch 160"):
        d.accumulation_for(60)


def test_lr_decay_and_adversary_stop_at_epoch_ends():
    sch = make("absa", epochs=4, lr_decay_epochs=(1, 3), lr_decay_factor=0.2, adv_stop=0.5,
               adv_fraction=0.25, patience=10)
    d = run_epoch(sch, 8.0)
    assert d.lr == pytest.approx(0.02) and d.adv_count == 25  # epoch 1 in A
    d = run_epoch(sch, 7.0)
    assert d.epoch == 2 and d.adv_count == 0 and "adversary stops" in d.reason  # 2 >= 0.5 * 4
    d = run_epoch(sch, 7.0)
    assert d.lr == pytest.approx(0.004)
    d = run_epoch(sch, 7.0)
    assert d.finished
    with pytest.raises(SchedulerError, match="all 4 epochs have ended"):
        sch.step()


def test_adversarial_count_rounding_and_minimum_batch_rule():
    sch = make("absa", batch_size=100, adv_fraction=0.29, adv_rule="batch")
    assert sch.decision.adv_count == 29          # 0.29 * 100 = 28.999999999999996 in binary
    assert sch.decision.adv_ranges == ((0, 29),)
    sch = make("absa", batch_size=40, max_batch_size=80, adv_fraction=0.05, adv_rule="batch")
    assert sch.decision.adv_count == 2
    assert sch.decision.adversarial_count(30) == 1      # a short last batch: floor(1.5)
    assert sch.decision.adversarial_count(10) == 0      # gamma * n = 0.5 < 1: no adversary
    sch = make("absa", batch_size=10, max_batch_size=80, adv_fraction=0.05, adv_rule="batch")
    assert sch.decision.adv_count == 0 and sch.decision.adv_fraction == 0.05
    sch = make("abs", adv_fraction=0.2)
    assert sch.decision.adv_count == 0 and sch.decision.adv_ranges == ()   # abs: no adversary


def test_adversarial_blocks_rule_is_keyed_to_b0_and_spread_one_block_per_b0():
    # the default rule: blocks of B0 = 100 from the start of the batch, c = floor(0.2 * 100)
    sch = make("absa", beta=1.5, micro_batch_size=20, max_batch_size=1000, adv_fraction=0.2,
               adv_decay=1.0)
    assert sch.config.adv_rule == "blocks"
    d = sch.decision
    assert (d.adv_rule, d.adv_ranges, d.adv_count) == ("blocks", ((0, 20),), 20)
    run_epoch(sch, 8.0)
    d = run_epoch(sch, 2.0)                       # B = 160: blocks [0, 100) and [100, 160)
    assert d.batch_size == 160 and d.micro_batch_size == 20
    assert d.adv_ranges == ((0, 20), (100, 120)) and d.adv_count == 40
    assert d.adversarial_ranges(110) == ((0, 20), (100, 110))   # a short batch is clipped
    assert d.adversarial_count(110) == 30 and d.adversarial_ranges(90) == ((0, 20),)
    assert d.to_dict()["adv_ranges"] == [[0, 20], [100, 120]]
    with pytest.raises(ValueError, match=r"n_samples must be <= batch_size = 160 \(the scheduler decides B\), got 161"):
        d.adversarial_ranges(161)
    with pytest.raises(TypeError, match="n_samples must be an int"):
        d.adversarial_count(10.0)
    # a last block shorter than c: all of it (data[:c] of a short block)
    sch = make("absa", batch_size=10, micro_batch_size=2, max_batch_size=80, beta=1.2,
               adv_fraction=0.5, adv_decay=1.0)
    run_epoch(sch, 8.0)
    d = run_epoch(sch, 2.0)                       # B = 12: blocks [0, 10) and [10, 12), c = 5
    assert (d.batch_size, d.adv_ranges) == (12, ((0, 5), (10, 12)))
    # none once gamma * B0 <= 1 (the authors' gamma > 1 / B0), where "batch" still has one
    blocks = make("absa", adv_fraction=0.01)      # 0.01 * 100 = 1.0
    batch = make("absa", adv_fraction=0.01, adv_rule="batch")
    assert (blocks.decision.adv_count, blocks.decision.adv_eps) == (0, 0.0)
    assert batch.decision.adv_ranges == ((0, 1),)
    assert make("absa", adv_fraction=0.0101).decision.adv_ranges == ((0, 1),)  # max(1, ...)
    with pytest.raises(ValueError, match="adv_rule must be one of blocks, batch, got 'head'"):
        make("absa", adv_rule="head")
    with pytest.raises(TypeError, match="adv_rule must be a string"):
        make("absa", adv_rule=None)


def test_blocks_rule_makes_the_adversary_vanish_after_five_growths():
    # the paper's defaults, B0 = 128, gamma0 = 0.2, omega = beta = 2: 25.6, 12.8, 6.4, 3.2,
    # 1.6 per block, then 0.8 <= 1: none from the fifth growth on
    sch = make("absa", batch_size=128, max_batch_size=128 * 2 ** 8, samples_per_epoch=128,
               epochs=20, adv_stop=1.0, patience=1)
    per_block = []
    for _ in range(8):
        d = sch.decision
        per_block.append(d.adv_ranges[0][1] if d.adv_ranges else 0)
        assert d.adv_count == per_block[-1] * (d.batch_size // 128)
        run_epoch(sch, 1.0)
    assert per_block == [25, 25, 12, 6, 3, 1, 0, 0]   # the first check only sets lam_ref
    batch = make("absa", batch_size=128, max_batch_size=128 * 2 ** 8, adv_rule="batch")
    assert batch.decision.adv_count == 25         # and floor(0.2 * 128) forever after


def test_fb_warmup_is_linear_from_eta_to_scaled_lr():
    sch = make("fb", max_batch_size=400, warmup_epochs=2, samples_per_epoch=800)
    d = sch.decision
    assert (d.batch_size, d.lr) == (400, pytest.approx(0.1))
    d = sch.step()                               # 400 of 1600 warm-up samples
    assert d.lr == pytest.approx(0.1 + (0.4 - 0.1) * 0.25)
    for _ in range(3):
        d = sch.step()
    assert d.lr == pytest.approx(0.4) and not d.eigenvalue_due


def test_gg_grows_batch_then_decays_lr_past_cap():
    sch = make("gg", max_batch_size=1000, micro_batch_size=100, lr_decay_epochs=(1, 2, 3),
               lr_decay_factor=0.2, samples_per_epoch=1000)
    d = run_epoch(sch)
    assert (d.batch_size, d.lr) == (500, pytest.approx(0.1))
    d = run_epoch(sch)            # 500 * 5 = 2500 capped at 1000: lr takes 0.2 * 1000 / 500
    assert (d.batch_size, d.lr) == (1000, pytest.approx(0.04))
    d = run_epoch(sch)
    assert (d.batch_size, d.lr) == (1000, pytest.approx(0.008))
    # noise scale lr / B fell by exactly rho at every decay epoch
    assert d.lr / d.batch_size == pytest.approx(0.1 / 100 * 0.2 ** 3)


def test_bl_is_fixed():
    sch = make("bl", max_batch_size=100)
    for _ in range(5):
        d = run_epoch(sch)
        assert (d.batch_size, d.lr, d.eigenvalue_due) == (100, 0.1, False)


def test_check_period_in_samples_and_short_last_batch():
    sch = make(check_every=150)
    assert not sch.step(100).eigenvalue_due
    assert sch.step(60).eigenvalue_due            # 160 crosses 150
    with pytest.raises(ValueError, match=r"samples must be in \[1, batch_size=100\]"):
        on_step(sch.config, init(sch.config), 101)


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("field, value, match", [
    ("alpha", 1.0, "alpha must be > 1"),
    ("beta", 0.5, "beta must be > 1"),
    ("max_batch_size", 50, r"max_batch_size \(B_max\) must be >= batch_size \(B0\) = 100"),
    ("micro_batch_size", 30, "micro_batch_size must divide batch_size = 100"),
    ("adv_fraction", 1.0, r"adv_fraction must be in \[0, 1\)"),
    ("adv_fraction", -0.1, r"adv_fraction must be in \[0, 1\)"),
    ("lr", float("nan"), "lr must be finite and > 0"),
    ("lr", 0.0, "lr must be finite and > 0"),
    ("patience", 0, "patience must be >= 1"),
    ("method", "sgd", "method must be one of bl, fb, gg, abs, absa"),
    ("lr_decay_epochs", (5, 3), "lr_decay_epochs must be strictly increasing"),
    ("lr_decay_epochs", (11,), r"epochs in \[1, epochs=10\]"),
    ("adv_stop", 1.5, r"adv_stop must be in \[0, 1\]"),
    ("lr_decay_factor", 2.0, r"lr_decay_factor must be in \(0, 1\]"),
])
def test_bad_config_names_field_and_range(field, value, match):
    with pytest.raises(ValueError, match=match):
        make(**{field: value})


@pytest.mark.parametrize("field, value", [("batch_size", 100.0), ("patience", True),
                                          ("alpha", "2"), ("lr_decay_epochs", (1.0,))])
def test_wrong_types_are_type_errors(field, value):
    with pytest.raises(TypeError, match=field):
        make(**{field: value})


def test_unasked_eigenvalue_and_out_of_order_events():
    sch = make()
    with pytest.raises(SchedulerError, match="none is due"):
        sch.eigenvalue(1.0)
    with pytest.raises(SchedulerError, match="no step since the last epoch end"):
        sch.end_epoch()
    with pytest.raises(SchedulerError, match="no eigenvalue is due"):
        sch.skip_eigenvalue()
    sch.step()
    sch.step()
    with pytest.raises(SchedulerError, match="an eigenvalue is due"):
        sch.step()
    with pytest.raises(SchedulerError, match="an eigenvalue is due"):
        sch.end_epoch()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-3])
def test_bad_eigenvalue_changes_nothing_and_never_grows(bad):
    sch = make(patience=1)
    run_epoch(sch, 8.0)
    sch.step()
    sch.step()
    before = sch.state
    with pytest.raises(ValueError, match="eigenvalue must be"):
        sch.eigenvalue(bad)
    assert sch.state == before and sch.decision.eigenvalue_due
    d = sch.skip_eigenvalue()       # with patience 1, any counted check would have grown B
    assert d.batch_size == 100 and sch.state.patience_count == before.patience_count
    sch.end_epoch()
    sch.step()
    assert sch.step().eigenvalue_due
    with pytest.raises(TypeError, match="eigenvalue must be a real number"):
        sch.eigenvalue("3.0")


# ------------------------------------------------------------------------------- state


def test_state_dict_json_round_trip_mid_stream_gives_same_future():
    sch = make("absa", patience=2, lr_decay_epochs=(6,))
    for lam in (8.0, 3.0, 2.9):
        run_epoch(sch, lam)
    assert sch.step().eigenvalue_due                 # save while a check is due
    saved = json.loads(json.dumps(sch.state_dict()))
    twin = Scheduler.from_state_dict(saved)
    assert twin.state == sch.state
    assert twin.eigenvalue(1.4) == sch.eigenvalue(1.4)
    assert twin.end_epoch() == sch.end_epoch()
    for lam in (1.0, 0.9, 0.8, 0.7, 0.6):
        assert run_epoch(twin, lam) == run_epoch(sch, lam)


def test_load_state_dict_rejects_other_config_version_and_broken_state():
    sch = make()
    data = sch.state_dict()
    with pytest.raises(ValueError, match=r"differs from this scheduler's in \['patience'\]"):
        make(patience=4).load_state_dict(data)
    with pytest.raises(ValueError, match="version 99 is not supported"):
        sch.load_state_dict({**data, "version": 99})
    with pytest.raises(ValueError, match="not a scheduler state"):
        sch.load_state_dict({**data, "format": "torch"})
    broken = json.loads(json.dumps(data))
    broken["state"]["batch_size"] = 150
    with pytest.raises(ValueError, match="batch_size 150 not a multiple of 100"):
        sch.load_state_dict(broken)
    broken["state"]["batch_size"] = 100
    broken["state"]["eigenvalue_due"] = "yes"
    with pytest.raises(TypeError, match="eigenvalue_due"):
        sch.load_state_dict(broken)


def test_pure_functions_by_hand_and_a_state_can_be_branched():
    # The functional API on its own (Scheduler's methods call these same functions, so
    # comparing the two proves nothing): hand-computed decisions along a stream, and what only
    # a pure API gives, branching: an old state stays valid and gives the same future.
    cfg = make().config                          # B0 = 100, B_max = 800, n = 200, kappa = 3
    st0 = init(cfg)
    assert (decide(cfg, st0).batch_size, decide(cfg, st0).lr) == (100, 0.1)
    st = on_step(cfg, on_step(cfg, st0))
    assert decide(cfg, st).eigenvalue_due and decide(cfg, st).samples_seen == 200
    st = on_epoch_end(cfg, on_eigenvalue(cfg, st, 8.0))      # the reference, d = 1
    assert (st.lam_ref, st.patience_count, st.epoch) == (8.0, 1, 1)
    due = on_step(cfg, on_step(cfg, st))
    frozen = due.to_dict()
    grown = on_eigenvalue(cfg, due, 4.0)         # exactly lam_ref / alpha: a growth
    kept = on_eigenvalue(cfg, due, 4.5)          # above it: d = 2, no growth
    d = decide(cfg, grown)
    assert (d.batch_size, d.lr, grown.lam_ref, grown.patience_count) == (200, 0.2, 4.0, 0)
    d = decide(cfg, kept)
    assert (d.batch_size, d.lr, kept.lam_ref, kept.patience_count) == (100, 0.1, 8.0, 2)
    assert due.to_dict() == frozen and decide(cfg, due).eigenvalue_due   # the old state intact
    assert on_eigenvalue(cfg, due, 4.0) == grown                         # same input, same state
    # one step of the grown branch takes 200 samples: the next check is due at 600
    st = on_step(cfg, on_epoch_end(cfg, grown))
    assert st.samples_seen == 600 and st.eigenvalue_due and st.epoch == 2


def test_lr_over_batch_is_constant_across_growths():
    sch = make(max_batch_size=6400, patience=1)
    ratio = sch.decision.lr / sch.decision.batch_size
    lam = 100.0
    for _ in range(8):
        lam /= 3
        d = run_epoch(sch, lam)
        assert math.isclose(d.lr / d.batch_size, ratio, rel_tol=1e-12)
    assert d.batch_size == 6400


# ----------------------------------------------------------------------------- lower bounds


def _due_with_reference(patience=3):
    sch = Scheduler(SchedulerConfig(method="abs", lr=0.1, batch_size=100, max_batch_size=400,
                                    samples_per_epoch=200, epochs=5, patience=patience))
    sch.step()
    assert sch.step().eigenvalue_threshold is None          # first check: no reference yet
    with pytest.raises(ValueError, match="first check") as info:
        sch.eigenvalue(9.0, lower_bound=True)
    assert info.value.field == "eigenvalue" and sch.decision.eigenvalue_due
    sch.eigenvalue(8.0)
    sch.end_epoch()
    sch.step()
    assert sch.step().eigenvalue_threshold == 4.0
    return sch


def test_a_lower_bound_above_the_threshold_counts_like_the_value():
    by_bound, by_value = _due_with_reference(), _due_with_reference()
    by_bound.eigenvalue(4.5, lower_bound=True)
    by_value.eigenvalue(4.5)
    a, b = by_bound.state, by_value.state
    assert dataclasses.replace(a, last_eigenvalue_bound=False, reason="") == \
        dataclasses.replace(b, reason="")
    assert a.last_eigenvalue_bound and not b.last_eigenvalue_bound
    assert a.reason == "eigenvalue: lower bound, no drop"


@pytest.mark.parametrize("bound", [4.0, 3.9, 0.0])
def test_a_lower_bound_at_or_below_the_threshold_is_undecided(bound):
    sch = _due_with_reference()
    before = sch.state
    with pytest.raises(ValueError, match="undecided") as info:
        sch.eigenvalue(bound, lower_bound=True)
    assert info.value.field == "eigenvalue" and sch.state == before


def test_lower_bound_must_be_a_bool():
    sch = _due_with_reference()
    with pytest.raises(TypeError, match="lower_bound") as info:
        sch.eigenvalue(5.0, lower_bound=1)
    assert info.value.field == "lower_bound"
