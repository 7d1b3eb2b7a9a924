"""The Appendix C cost model: exact values, the paper's Table 3, errors and files.

Its properties (monotone in P, alpha, beta; no communication at P = 1; additive over updates)
are in tests/properties/test_costmodel_properties.py.
"""

from __future__ import annotations

import json
import math

import pytest
from hessbatch import (MachineProfile, SchedulerConfig, Workload, allreduce_time, predict,
                       scaling_curve, workload_from_schedule)
from hessbatch._cli_simulate import (IMAGENET_TRAIN, TABLE3, TABLE3_GROWTH, growth_trace,
                                     implied_updates, paper_table3, table3_config,
                                     table3_profile, table3_workload)


# ---------------------------------------------------------------------------------------------
# exact values


def test_allreduce_is_the_ring_formula():
    # 2 (P-1) alpha + 2 (P-1)/P n beta, by hand
    assert allreduce_time(4, 1000, 1e-3, 1e-6) == pytest.approx(6e-3 + 1.5e-3, rel=1e-15)
    assert allreduce_time(2, 10, 0.5, 0.25) == pytest.approx(1.0 + 2.5, rel=1e-15)
    assert allreduce_time(1, 10 ** 9, 1.0, 1.0) == 0.0


def test_predict_by_hand():
    prof = MachineProfile(processes=4, n_params=1000, alpha=1e-3, beta=1e-6,
                          time_per_update=0.01, time_per_sample=0.002,
                          time_per_adversarial_sample=0.004, time_per_hvp_sample=0.001,
                          time_per_check=0.5, hessian_batch=64, hvps_per_check=10)
    w = Workload(updates=10, samples=1280, adversarial_samples=100, checks=3, hvps=25)
    ar = 7.5e-3
    c = predict(w, prof)
    assert c.compute == pytest.approx(10 * 0.01 + 1280 * 0.002 / 4)
    assert c.adversarial == pytest.approx(100 * 0.004 / 4)
    assert c.communication == pytest.approx(10 * ar)
    assert c.eigenvalue == pytest.approx(3 * 0.5 + 25 * (64 * 0.001 / 4 + ar))
    assert c.eigenvalue_communication == pytest.approx(25 * ar)
    assert c.total == pytest.approx(c.compute + c.adversarial + c.communication + c.eigenvalue)
    # hvps not recorded: the profile's hvps_per_check per check
    c2 = predict(Workload(10, 1280, 100, 3, None), prof)
    assert c2.eigenvalue == pytest.approx(3 * 0.5 + 30 * (64 * 0.001 / 4 + ar))


def test_scaling_curve_flags_idle_processes_and_speedup():
    prof = MachineProfile(n_params=10, beta=1e-3, time_per_sample=1.0)
    rows = scaling_curve(Workload(1, 8), prof, [1, 8, 16], smallest_batch=8)
    assert [r["idle_processes"] for r in rows] == [False, False, True]
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(8.0 / (1.0 + 2 * 7 / 8 * 10 * 1e-3))


# ---------------------------------------------------------------------------------------------
# the paper's Table 3 from its own inputs


def _within(x: float, target: float, rel: float = 1e-3) -> bool:
    return abs(x / target - 1) <= rel


@pytest.fixture(scope="module")
def table3_rows():
    return {r["method"]: r for r in paper_table3("step")}


def test_table3_bl_and_gg_within_a_tenth_of_a_percent(table3_rows):
    rows = table3_rows
    # BL: 256 throughout, ceil(N/256) = 5005 updates per epoch (short last batch = 1 update)
    assert rows["bl"]["updates"] == 90 * 5005
    assert rows["bl"]["predicted"] == pytest.approx(450450 * 0.037)
    # GG: 256, 2560, 25600, 256000 for 30, 30, 20, 10 epochs: 5005, 501, 51, 6 per epoch
    assert rows["gg"]["updates"] == 30 * 5005 + 30 * 501 + 20 * 51 + 10 * 6
    for m in ("bl", "gg"):
        assert _within(rows[m]["predicted"], TABLE3[m]), rows[m]
    # dropping the short last batch gets there too: 5004, 500, 50, 5 updates per epoch
    drop_bl = table3_workload("bl", "drop")
    assert drop_bl.updates == 90 * 5004
    assert _within(predict(drop_bl, table3_profile("bl")).total, TABLE3["bl"])
    drop_gg = Workload(30 * 5004 + 30 * 500 + 20 * 50 + 10 * 5, 1)
    assert _within(predict(drop_gg, table3_profile("gg")).total, TABLE3["gg"])


def test_table3_verdict_fails_on_wrong_inputs():
    # the same check rejects a 1 ms error in the compute per update, or BL at batch 128
    w = table3_workload("bl")
    wrong = predict(w, table3_profile("bl").replace(time_per_update=0.023)).total
    assert not _within(wrong, TABLE3["bl"])
    bl128 = Workload(90 * math.ceil(IMAGENET_TRAIN / 128), 90 * IMAGENET_TRAIN)
    assert not _within(predict(bl128, table3_profile("bl")).total, TABLE3["bl"])


def test_table3_abs_absa_schedules_and_implied_counts(table3_rows):
    rows = table3_rows
    for m in ("abs", "absa"):
        r = rows[m]
        assert _within(r["predicted"], TABLE3[m]), r
        # the counts lie on the line the total implies: U = (T - 1.15 C) / (compute + 0.015)
        assert r["updates"] == pytest.approx(implied_updates(m, r["checks"]), rel=1e-3)
        # one check per epoch until B_max: the last growth epoch
        assert r["checks"] == TABLE3_GROWTH[m][-1]
    assert (rows["abs"]["updates"], rows["abs"]["checks"]) == (70898, 37)
    assert (rows["absa"]["updates"], rows["absa"]["checks"]) == (66918, 49)
    # speed-up of ABS over BL as the paper's 6.25x
    assert rows["bl"]["predicted"] / rows["abs"]["predicted"] == pytest.approx(6.25, abs=0.01)


def test_growth_trace_grows_exactly_at_the_chosen_epochs():
    from hessbatch import Scheduler
    cfg = SchedulerConfig(**{**table3_config("abs").to_dict(), "samples_per_epoch": 1000,
                             "check_every": None})
    sch = Scheduler(cfg)
    trace = iter(growth_trace(TABLE3_GROWTH["abs"]))
    grown = []
    for epoch in range(1, 91):
        seen = 0
        before = sch.decision.batch_size
        while seen < 1000:
            n = min(sch.decision.batch_size, 1000 - seen)
            d = sch.step(n)
            seen += n
            if d.eigenvalue_due:
                sch.eigenvalue(next(trace))
        sch.end_epoch()
        if sch.decision.batch_size > before:
            grown.append(epoch)
    assert grown == list(TABLE3_GROWTH["abs"])


@pytest.mark.parametrize("last_batch,rounding", [("step", math.ceil), ("drop", math.floor)])
def test_replay_matches_closed_form_at_a_fixed_batch(last_batch, rounding):
    cfg = SchedulerConfig(method="bl", lr=0.1, batch_size=32, samples_per_epoch=1000, epochs=7)
    w = workload_from_schedule(cfg, [], last_batch=last_batch)
    assert w.updates == 7 * rounding(1000 / 32)
    assert w.samples == (7 * 1000 if last_batch == "step" else 7 * 31 * 32)
    assert w.checks == 0


def test_replay_counts_adversarial_samples_and_checks():
    cfg = SchedulerConfig(method="absa", lr=0.1, batch_size=10, max_batch_size=40,
                          samples_per_epoch=100, epochs=4, adv_fraction=0.2)
    per = workload_from_schedule(cfg, [1.0, 0.4, 0.1, 0.01], by_epoch=True)
    # epoch 1 at B = 10, 2 adversarial per batch; growth at the drop after epoch 2
    assert per[0] == Workload(10, 100, 20, 1, None)
    assert [w.checks for w in per] == [1, 1, 1, 0]
    assert sum(w.updates for w in per) == 10 + 10 + 5 + 3


# ---------------------------------------------------------------------------------------------
# errors and files


@pytest.mark.parametrize("kw,word", [({"processes": 0}, "processes"),
                                     ({"alpha": -1.0}, "alpha"),
                                     ({"beta": math.nan}, "beta"),
                                     ({"hessian_batch": 0}, "hessian_batch"),
                                     ({"n_params": 1.5}, "n_params")])
def test_bad_profile_names_the_field(kw, word):
    with pytest.raises((TypeError, ValueError), match=word):
        MachineProfile(**kw)


def test_bad_workload_and_additions():
    with pytest.raises(ValueError, match="adversarial_samples"):
        Workload(1, 5, 6)
    with pytest.raises(ValueError, match="updates = 0"):
        Workload(0, 5)
    with pytest.raises(ValueError, match="recorded"):
        Workload(1, 1, 0, 2, None) + Workload(1, 1, 0, 2, 5)
    with pytest.raises(TypeError, match="Workload"):
        predict((1, 2), MachineProfile())


def test_profile_file_round_trip_and_unknown_key(tmp_path):
    prof = MachineProfile(processes=8, n_params=123, alpha=1e-5, beta=2e-9,
                          time_per_sample=3e-4)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof.to_dict()))
    assert MachineProfile.load(path) == prof
    path.write_text(json.dumps({"processes": 8, "latency": 1e-5}))
    with pytest.raises(ValueError, match="unknown profile keys.*latency"):
        MachineProfile.load(path)
    path.write_text(json.dumps({"processes": 8.5}))
    with pytest.raises(ValueError, match="processes"):
        MachineProfile.load(path)
