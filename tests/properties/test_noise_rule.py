"""The optional noise-aware screen (hessbatch._noise_rule): off by default it changes nothing;
on, a drop grows the batch only when its upper confidence limit is below lam_ref / alpha, and
the progress guard holds growth back until the loss has fallen. Driven through the real
Scheduler with random event streams."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hessbatch import Scheduler, SchedulerConfig
from hessbatch._noise_rule import NoiseRuleConfig, NoiseRuleState, mean_and_stderr, screen

checks = st.lists(st.tuples(st.floats(0.05, 20.0), st.floats(0.0, 5.0)), min_size=1,
                  max_size=25)


def _config(patience=3):
    return SchedulerConfig(method="abs", lr=0.1, batch_size=32, max_batch_size=32 * 2 ** 12,
                           samples_per_epoch=10 ** 6, epochs=1, check_every=32,
                           patience=patience)


def _drive(rule, stream, losses=None, patience=3):
    """Feed (mean, stderr) checks through the screen into a Scheduler; return its reasons and
    the (mean, stderr, lam_ref) seen at each growth by drop."""
    sch = Scheduler(_config(patience))
    state = NoiseRuleState()
    reasons, drops = [], []
    for i, (mean, se) in enumerate(stream):
        d = sch.step(32)
        assert d.eigenvalue_due
        ref = sch.state.lam_ref
        loss = None if losses is None else losses[i]
        state, action, value = screen(rule, state, mean=mean, stderr=se, lam_ref=ref,
                                      alpha=sch.config.alpha, loss=loss)
        d = sch.eigenvalue(value) if action == "report" else sch.skip_eigenvalue()
        reasons.append(sch.state.reason)
        if sch.state.reason == "eigenvalue: dropped, grow":
            drops.append((mean, se, ref))
    return reasons, sch


@given(checks)
def test_off_by_default_the_paper_rule_is_unchanged(stream):
    a, sa = _drive(NoiseRuleConfig(), stream)
    sch = Scheduler(_config())
    for mean, _ in stream:
        sch.step(32)
        sch.eigenvalue(mean)
    assert sa.state == sch.state and not NoiseRuleConfig().active


@given(checks, st.floats(0.5, 3.0))
def test_growth_by_drop_only_when_the_upper_limit_is_below_the_threshold(stream, z):
    rule = NoiseRuleConfig(z=z)
    sch = Scheduler(_config())
    state = NoiseRuleState()
    for mean, se in stream:
        sch.step(32)
        ref = sch.state.lam_ref
        patience_before = sch.state.patience_count
        state, action, value = screen(rule, state, mean=mean, stderr=se, lam_ref=ref,
                                      alpha=sch.config.alpha)
        assert action == "report"
        sch.eigenvalue(value)
        if sch.state.reason == "eigenvalue: dropped, grow":
            assert mean + z * se <= ref / sch.config.alpha
            assert sch.state.lam_ref == mean          # the reference is the mean, as in the paper
        elif ref is not None and mean <= ref / sch.config.alpha:
            # an unconfirmed drop: patience counted exactly as for "no drop"
            assert sch.state.patience_count in (patience_before + 1, 0)
            assert sch.state.lam_ref == ref


@given(checks)
def test_zero_stderr_is_the_paper_rule(stream):
    a, sa = _drive(NoiseRuleConfig(z=1.645), [(m, 0.0) for m, _ in stream])
    b, sb = _drive(NoiseRuleConfig(), [(m, 0.0) for m, _ in stream])
    assert a == b and sa.state.batch_size == sb.state.batch_size


@given(checks, st.floats(0.0, 3.0))
def test_more_noise_never_means_more_growth_by_drop_at_one_check(stream, extra):
    """At the same reference, a larger standard error can only turn a drop into no drop."""
    rule = NoiseRuleConfig(z=1.0)
    for mean, se in stream:
        for ref in (0.5, 3.0, 10.0):
            _, _, v1 = screen(rule, NoiseRuleState(), mean=mean, stderr=se, lam_ref=ref, alpha=2)
            _, _, v2 = screen(rule, NoiseRuleState(), mean=mean, stderr=se + extra, lam_ref=ref,
                              alpha=2)
            assert not (v2 <= ref / 2 < v1)


@given(st.lists(st.floats(0.05, 5.0), min_size=2, max_size=30), st.floats(0.1, 0.9))
def test_progress_guard_skips_until_the_loss_has_fallen_then_stays_open(losses, frac):
    rule = NoiseRuleConfig(min_loss_fraction=frac)
    state = NoiseRuleState()
    opened = False
    for loss in losses:
        state, action, _ = screen(rule, state, mean=1.0, lam_ref=None, alpha=2, loss=loss)
        should_open = opened or loss <= frac * losses[0]
        assert (action == "report") == should_open
        opened = should_open
        assert state.first_loss == losses[0]


def test_progress_guard_by_epochs_and_skip_never_grows():
    rule = NoiseRuleConfig(min_epochs=2)
    sch = Scheduler(_config(patience=1))
    state = NoiseRuleState()
    for epoch in (0, 0, 1, 1):
        sch.step(32)
        state, action, _ = screen(rule, state, mean=0.01, lam_ref=sch.state.lam_ref, alpha=2,
                                  epoch=epoch)
        assert action == "skip"
        sch.skip_eigenvalue()
    assert sch.state.batch_size == 32 and sch.state.lam_ref is None
    sch.step(32)
    state, action, value = screen(rule, state, mean=0.01, lam_ref=None, alpha=2, epoch=2)
    assert action == "report" and value == 0.01 and state.progressed


def test_mean_and_stderr_and_bad_options():
    m, se = mean_and_stderr([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert mean_and_stderr([7.0]) == (7.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_and_stderr([])
    with pytest.raises(ValueError, match="z must be None or a finite number >= 0, got -1"):
        NoiseRuleConfig(z=-1)
    with pytest.raises(ValueError, match="min_loss_fraction"):
        NoiseRuleConfig(min_loss_fraction=1.5)
    with pytest.raises(ValueError, match="min_epochs"):
        NoiseRuleConfig(min_epochs=-1)
    with pytest.raises(ValueError, match="stderr must be"):
        screen(NoiseRuleConfig(z=1), NoiseRuleState(), mean=1, stderr=-1, lam_ref=1, alpha=2)
    with pytest.raises(ValueError, match="needs the training loss"):
        screen(NoiseRuleConfig(min_loss_fraction=0.5), NoiseRuleState(), mean=1, lam_ref=None,
               alpha=2)


def test_a_wrong_screen_would_be_caught():
    """The drop test is not vacuous: a noisy drop the paper's rule grows on is held back."""
    sch_paper, sch_noise = Scheduler(_config()), Scheduler(_config())
    st_ = NoiseRuleState()
    for sch, rule in ((sch_paper, NoiseRuleConfig()), (sch_noise, NoiseRuleConfig(z=1.645))):
        state = st_
        for mean, se in [(4.0, 0.0), (1.9, 0.5)]:     # 1.9 <= 4/2 but 1.9 + 0.82 > 2
            sch.step(32)
            state, _, v = screen(rule, state, mean=mean, stderr=se, lam_ref=sch.state.lam_ref,
                                 alpha=sch.config.alpha)
            sch.eigenvalue(v)
    assert sch_paper.state.batch_size == 64 and sch_noise.state.batch_size == 32
