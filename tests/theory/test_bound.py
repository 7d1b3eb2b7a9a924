"""hessbatch.theory: the step-size condition, the noise floor, the bound, schedules from the core.

Pure Python: these tests need neither NumPy nor Numba.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessbatch import SchedulerConfig
from hessbatch import theory as thm


def consts(L=2.0, c=0.5, M=1.0, M_V=3.0):
    return thm.Constants(L=L, c=c, M=M, M_V=M_V)


# ---- constants and their errors -------------------------------------------------------------


@pytest.mark.parametrize("field,value,match", [
    ("L", 0.0, "L must be > 0"),
    ("L", -1.0, "L must be > 0"),
    ("c", 0.0, "c must be > 0"),
    ("c", 3.0, "c must be <= L"),
    ("M", -0.1, "M must be >= 0"),
    ("M_V", -2.0, "M_V must be >= 0"),
    ("M", math.nan, "M must be finite"),
    ("L", math.inf, "L must be finite"),
])
def test_constants_out_of_range_are_named(field, value, match):
    kw = dict(L=2.0, c=0.5, M=1.0, M_V=0.0)
    kw[field] = value
    with pytest.raises(ValueError, match=match):
        thm.Constants(**kw)


@pytest.mark.parametrize("value", ["1.0", None, [1.0], True])
def test_constants_of_the_wrong_type(value):
    with pytest.raises(TypeError, match="L must be a real number"):
        thm.Constants(L=value, c=0.5, M=1.0, M_V=0.0)


def test_any_record_with_the_four_constants_is_accepted_and_validated():
    class Record:
        L, c, M, M_V = 2.0, 0.5, 1.0, 3.0

    assert thm.max_eta0(Record(), 5) == thm.max_eta0(consts(), 5)

    class Bad(Record):
        c = 5.0

    with pytest.raises(ValueError, match="c must be <= L"):
        thm.noise_floor(Bad(), 0.1)
    with pytest.raises(TypeError, match="constants must be"):
        thm.max_eta0(object(), 5)


# ---- the step-size condition and the noise floor --------------------------------------------


def test_max_eta0_and_noise_floor_by_hand():
    k = consts(L=2.0, c=0.5, M=1.0, M_V=3.0)
    # the paper's reading: M_G = M_V + 1 = 4; the variance variant: M_V = 3
    assert k.M_G == 4.0
    assert thm.max_eta0(k, 5) == pytest.approx(1 / (2.0 * 9))
    assert thm.max_eta0(k, 5, condition="variance") == pytest.approx(1 / (2.0 * 8))
    with pytest.raises(ValueError, match="condition must be one of"):
        thm.max_eta0(k, 5, condition="papers")
    assert thm.noise_floor(k, 0.1) == pytest.approx(0.1 * 2.0 * 1.0 / (2 * 0.5))


def test_check_eta0_accepts_the_limit_and_refuses_past_it():
    k = consts()
    limit = thm.max_eta0(k, 7)
    assert thm.check_eta0(k, limit, 7) == limit
    with pytest.raises(ValueError, match=r"eta0 must be <= 1/\(L\*\(M_G\+b_max\)\), paper "
                       r"condition, M_G = M_V \+ 1 = 4 .*1\.01 times"):
        thm.check_eta0(k, 1.01 * limit, 7)
    # the variance convention allows a little more, and the message names it
    v_limit = thm.max_eta0(k, 7, condition="variance")
    assert v_limit > limit and thm.check_eta0(k, v_limit, 7, condition="variance") == v_limit
    with pytest.raises(ValueError, match=r"1/\(L\*\(M_V\+b_max\)\), variance condition"):
        thm.check_eta0(k, 1.01 * v_limit, 7, condition="variance")
    with pytest.raises(ValueError, match="eta0 must be > 0"):
        thm.check_eta0(k, 0.0, 7)
    with pytest.raises(ValueError, match="b_max must be >= 1"):
        thm.check_eta0(k, limit, 0)
    with pytest.raises(TypeError, match="b_max must be an int"):
        thm.check_eta0(k, limit, 2.5)


@given(L=st.floats(0.01, 100), ratio=st.floats(1e-4, 1.0), M_V=st.floats(0, 1e3),
       b=st.integers(1, 10_000), condition=st.sampled_from(thm.CONDITIONS))
def test_every_contraction_factor_is_in_0_1_under_the_condition(L, ratio, M_V, b, condition):
    # b eta0 c <= b c / (L (M_V + b)) <= 1: the recursion multiplies by a number in [0, 1)
    k = thm.Constants(L=L, c=ratio * L, M=1.0, M_V=M_V)
    eta0 = thm.max_eta0(k, b, condition)
    for f in thm.contraction_factors(k, eta0, [1, b]):
        assert -1e-12 <= f < 1


# ---- the bound -----------------------------------------------------------------------------


@given(batches=st.lists(st.integers(1, 64), max_size=60), scale=st.floats(0.01, 1.0),
       gap0=st.floats(0, 10), c_ratio=st.floats(1e-3, 1.0), M=st.floats(0, 10),
       M_V=st.floats(0, 50))
def test_bound_is_the_closed_form(batches, scale, gap0, c_ratio, M, M_V):
    k = thm.Constants(L=3.0, c=3.0 * c_ratio, M=M, M_V=M_V)
    eta0 = scale * thm.max_eta0(k, 64)
    out = thm.bound_sequence(k, eta0, gap0, batches, b_max=64)
    g = thm.noise_floor(k, eta0)
    assert len(out) == len(batches) + 1 and out[0] == gap0
    prod = 1.0
    for t, b in enumerate(batches, 1):
        prod *= 1 - b * eta0 * k.c
        assert out[t] == pytest.approx(prod * (gap0 - g) + g, rel=1e-12, abs=1e-15)
        # between the start and the floor, never past it (factors in [0, 1))
        assert min(gap0, g) - 1e-12 <= out[t] <= max(gap0, g) + 1e-12


def test_noise_floor_does_not_depend_on_the_schedule_and_is_the_limit():
    k = consts(M=4.0)
    eta0 = thm.max_eta0(k, 64)
    g = thm.noise_floor(k, eta0)
    for batches in ([1] * 20000, [64] * 2000, list(range(1, 65)) * 50):
        assert thm.bound_sequence(k, eta0, 5.0, batches, b_max=64)[-1] == pytest.approx(g, rel=1e-6)


@given(b0=st.integers(1, 8), growth=st.integers(2, 4), steps=st.integers(1, 40),
       gap_ratio=st.floats(1.5, 100))
def test_growing_batches_lower_the_bound_per_update_not_per_sample(b0, growth, steps, gap_ratio):
    # The paper's argument: with gap0 > G, a schedule that grows b contracts the bound faster per
    # update; per sample the two contractions agree to first order (exp(-eta0 c samples)).
    k = consts(L=1.0, c=0.05, M=0.01, M_V=0.0)
    b_max = b0 * growth
    eta0 = thm.max_eta0(k, b_max)
    gap0 = gap_ratio * thm.noise_floor(k, eta0)
    small = [b0] * (growth * steps)
    grown = [b0] * steps + [b_max] * steps
    b_small = thm.bound_sequence(k, eta0, gap0, small, b_max=b_max)
    b_grown = thm.bound_sequence(k, eta0, gap0, grown, b_max=b_max)
    # equal updates: 2 * steps updates of each
    assert b_grown[2 * steps] < b_small[2 * steps]
    # equal samples: as many small updates as it takes to draw the same number of samples
    samples_grown = steps * b0 + steps * b_max
    small_long = [b0] * (samples_grown // b0)
    b_small_long = thm.bound_sequence(k, eta0, gap0, small_long, b_max=b_max)
    g = thm.noise_floor(k, eta0)
    excess_grown, excess_small = b_grown[-1] - g, b_small_long[-1] - g
    # log(1 - u) is concave with log 1 = 0, so one big step contracts at least as much as small
    # ones of the same total; and u <= -log(1 - u) <= u + u^2 / (1 - u) bounds the difference
    x = eta0 * k.c
    slack = math.exp(sum((b * x) ** 2 / (1 - b * x) for b in grown))
    assert excess_grown <= excess_small * (1 + 1e-12)
    assert excess_small <= excess_grown * slack * (1 + 1e-12)
    # "about the same": here b x <= c / L = 0.05 and at most 40 big steps, so within 10 %
    assert excess_small <= 1.1 * excess_grown


def test_bound_errors_name_the_problem():
    k = consts()
    eta0 = thm.max_eta0(k, 8)
    with pytest.raises(ValueError, match=r"batch_sizes\[1\] must be >= 1"):
        thm.bound_sequence(k, eta0, 1.0, [2, 0])
    with pytest.raises(TypeError, match=r"batch_sizes\[0\] must be an int"):
        thm.bound_sequence(k, eta0, 1.0, [2.5])
    with pytest.raises(ValueError, match="gap0 must be >= 0"):
        thm.bound_sequence(k, eta0, -1.0, [2])
    with pytest.raises(ValueError, match="gap0 must be finite"):
        thm.bound_sequence(k, eta0, math.nan, [2])
    with pytest.raises(ValueError, match=r"b_max must be >= every batch size.*batch_sizes\[1\]=9"):
        thm.bound_sequence(k, eta0, 1.0, [2, 9], b_max=8)
    with pytest.raises(ValueError, match="eta0 must be <="):
        thm.bound_sequence(k, 2 * eta0, 1.0, [8])
    # the formula itself is still available past the condition, for the failure tests
    assert len(thm.bound_sequence(k, 2 * eta0, 1.0, [8], enforce_condition=False)) == 2


def test_first_violation():
    assert thm.first_violation([1.0, 0.5, 0.2], [1.0, 0.6, 0.3]) is None
    assert thm.first_violation([1.0, 0.7, 0.4], [1.0, 0.6, 0.3]) == 1
    assert thm.first_violation([1.0, 0.6 * (1 + 1e-12)], [1.0, 0.6], rtol=1e-9) is None
    with pytest.raises(ValueError, match="same length"):
        thm.first_violation([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        thm.first_violation([math.nan], [1.0])


# ---- schedules decided by the core -----------------------------------------------------------


def test_sgd_schedule_is_constant_with_epochs_as_sample_budgets():
    cfg = SchedulerConfig(method="bl", lr=0.5, batch_size=30, samples_per_epoch=100, epochs=3)
    s = thm.scheduler_batches(cfg)
    # ceil(100 / 30) = 4 updates reach 120 >= 100; then 240 >= 200 after 8, 300 after 10
    assert s.batch_sizes == (30,) * 10
    assert s.epoch_ends == (4, 7, 10)
    assert s.samples == 300 and s.eigenvalues == ()
    assert all(lr == 0.5 for lr in s.lrs)


@settings(max_examples=60)
@given(eigs=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=40),
       patience=st.integers(1, 5), epochs=st.integers(1, 8), beta=st.sampled_from([2.0, 3.0]))
def test_abs_schedules_from_eigenvalue_streams(eigs, patience, epochs, beta):
    eta0 = 0.001
    # B_max = 128 > N = 64: late epochs are a single update each
    cfg = SchedulerConfig(method="abs", lr=eta0 * 8, batch_size=8, max_batch_size=128,
                          samples_per_epoch=64, epochs=epochs, check_every=32,
                          patience=patience, beta=beta)
    s = thm.scheduler_batches(cfg, eigs)
    b = s.batch_sizes
    assert all(x <= y for x, y in zip(b, b[1:])), "ABS never shrinks the batch"
    assert all(8 <= x <= 128 for x in b)
    # Theorem 1's step is b_t eta0: the core's linear scaling gives exactly that
    assert all(math.isclose(lr, eta0 * x, rel_tol=1e-12) for lr, x in zip(s.lrs, b))
    # each epoch ends at the first update reaching its sample budget
    cum = [sum(b[:t]) for t in range(len(b) + 1)]
    previous = 0
    for e, end in enumerate(s.epoch_ends, 1):
        assert end > previous, "every epoch has at least one update"
        assert cum[end] >= e * 64
        assert end - 1 == previous or cum[end - 1] < e * 64
        previous = end
    assert [v for _, v in s.eigenvalues] == [eigs[min(i, len(eigs) - 1)]
                                             for i in range(len(s.eigenvalues))]


def test_eigenvalue_callable_sees_the_batches_made_so_far():
    seen = []

    def eig(batches):
        seen.append(tuple(batches))
        return 1.0

    cfg = SchedulerConfig(method="abs", lr=0.01, batch_size=10, max_batch_size=40,
                          samples_per_epoch=30, epochs=4, check_every=30, patience=1)
    s = thm.scheduler_batches(cfg, eig)
    assert seen and all(s.batch_sizes[:len(p)] == p for p in seen)
    assert [u for u, _ in s.eigenvalues] == [len(p) for p in seen]


def test_schedule_errors():
    cfg = SchedulerConfig(method="abs", lr=0.01, batch_size=10, max_batch_size=40,
                          samples_per_epoch=30, epochs=2)
    with pytest.raises(ValueError, match="asked for an eigenvalue and none was given"):
        thm.scheduler_batches(cfg)
    with pytest.raises(ValueError, match="iterable of eigenvalues is empty"):
        thm.scheduler_batches(cfg, [])
    with pytest.raises(ValueError, match="eigenvalue must be >= 0"):
        thm.scheduler_batches(cfg, [-1.0])
    with pytest.raises(TypeError, match="config must be a SchedulerConfig"):
        thm.scheduler_batches({"method": "abs"})
