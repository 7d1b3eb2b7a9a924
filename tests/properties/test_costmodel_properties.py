"""Properties of the Appendix C cost model (hessbatch.predict), over random workloads and
machine profiles: monotone in P (each part the right way), in alpha and in beta; nothing
communicated on one process; the time of a run is the sum of the times of its updates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hessbatch import MachineProfile, Workload, predict
from hessbatch._costmodel import workload_from_batches

times = st.floats(0, 1.0, allow_nan=False)


@st.composite
def workloads(draw):
    updates = draw(st.integers(0, 10 ** 5))
    samples = draw(st.integers(updates, 10 ** 7)) if updates else 0
    adv = draw(st.integers(0, samples))
    checks = draw(st.integers(0, 100))
    hvps = draw(st.integers(0, 1000))
    return Workload(updates, samples, adv, checks, hvps)


@st.composite
def profiles(draw):
    return MachineProfile(
        processes=draw(st.integers(1, 4096)), n_params=draw(st.integers(0, 10 ** 8)),
        alpha=draw(st.floats(0, 1e-2)), beta=draw(st.floats(0, 1e-7)),
        time_per_update=draw(times), time_per_sample=draw(st.floats(0, 1e-2)),
        time_per_adversarial_sample=draw(st.floats(0, 1e-2)),
        time_per_hvp_sample=draw(st.floats(0, 1e-2)), time_per_check=draw(times),
        hessian_batch=draw(st.integers(1, 1024)), hvps_per_check=draw(st.integers(0, 20)))


@given(workloads(), profiles(), st.integers(1, 4096), st.integers(1, 4096))
def test_monotone_in_processes(w, prof, p1, p2):
    lo, hi = sorted((p1, p2))
    a, b = predict(w, prof.replace(processes=lo)), predict(w, prof.replace(processes=hi))
    tol = 1e-12 * (1 + a.total + b.total)
    # more processes: more communication, less computation per process
    assert b.communication >= a.communication - tol
    assert b.eigenvalue_communication >= a.eigenvalue_communication - tol
    assert b.compute <= a.compute + tol
    assert b.adversarial <= a.adversarial + tol


@given(workloads(), profiles(), st.floats(0, 1e-2), st.floats(0, 1e-7))
def test_monotone_in_alpha_and_beta(w, prof, da, db):
    base = predict(w, prof).total
    assert predict(w, prof.replace(alpha=prof.alpha + da)).total >= base
    assert predict(w, prof.replace(beta=prof.beta + db)).total >= base


@given(workloads(), profiles())
def test_no_communication_on_one_process(w, prof):
    c = predict(w, prof.replace(processes=1))
    assert c.communication == 0.0 and c.eigenvalue_communication == 0.0
    assert c.communication_share == 0.0


@given(workloads(), workloads(), profiles())
def test_additive_over_updates(w1, w2, prof):
    both = predict(w1 + w2, prof)
    a, b = predict(w1, prof), predict(w2, prof)
    for part in ("compute", "adversarial", "communication", "eigenvalue"):
        assert getattr(both, part) == pytest.approx(getattr(a, part) + getattr(b, part),
                                                    rel=1e-9, abs=1e-12)


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=60), st.integers(1, 59),
       profiles())
def test_time_of_a_run_is_the_sum_of_its_updates(batches, cut, prof):
    cut = min(cut, len(batches))
    whole = predict(workload_from_batches(batches), prof).total
    parts = sum(predict(workload_from_batches([b]), prof).total for b in batches)
    split = (predict(workload_from_batches(batches[:cut]), prof).total
             + (predict(workload_from_batches(batches[cut:]), prof).total
                if batches[cut:] else 0.0))
    assert whole == pytest.approx(parts, rel=1e-9, abs=1e-12)
    assert whole == pytest.approx(split, rel=1e-9, abs=1e-12)


def test_additivity_would_catch_a_per_run_cost():
    # a fixed per-run cost (not per update) breaks additivity: the property can fail
    prof = MachineProfile(time_per_update=1.0)
    one = predict(Workload(1, 1), prof).total
    assert predict(Workload(2, 2), prof).total == 2 * one
    assert predict(Workload(2, 2), prof).total + 5.0 != 2 * (one + 5.0)
