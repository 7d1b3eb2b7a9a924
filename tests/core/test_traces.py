"""Conformance traces: they replay exactly, they are what their scripts generate, they reach
every branch of the core, their key decisions agree with hand computation, and replay catches
a wrong implementation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections import Counter

import pytest

import hessbatch
from hessbatch import Scheduler, SchedulerConfig
from hessbatch import _make_traces, _scheduler
from hessbatch.traces import (
    Mismatch,
    decode_tags,
    Trace,
    TraceRecorder,
    builtin_traces,
    load_trace,
    main,
    replay,
    trace_to_json,
)

EXPECTED_FILES = {
    "abs_growth_by_drop.json", "abs_growth_by_patience.json", "absa_cap_at_max_batch.json",
    "absa_adversary_decay_and_stop.json", "rounding_and_check_period.json",
    "growth_rounding_tolerance.json",
    "lr_decay_epochs.json", "bl_fixed.json", "fb_warmup.json", "gg_schedule.json",
    "errors_and_skips.json", "defaults.json", "config_errors.json",
    "adv_blocks_rule.json", "adv_rule_thresholds.json", "adv_batch_threshold.json",
    "adv_stop_tolerance.json", "adv_stop_odd_epochs.json", "absa_at_max_from_start.json",
    "absa_tau_zero.json", "fb_order_of_operations.json", "fb_without_warmup.json",
    "negative_zero.json", "state_dicts.json", "lower_bound_checks.json",
    "integer_range.json", "lr_range_boundaries.json", "lr_without_growth.json", "lr_floor_sequential.json",
    "spec_corners.json", "adv_blocks_capped.json", "negative_zero_gamma.json"}
TRACES = {p.name[:-5]: load_trace(p) for p in builtin_traces()}
EVENT_TRACES = [t for t in TRACES.values() if t.kind == "events"]
approx = dict(rel=1e-12, abs=0.0)


def after(trace: Trace, note: str) -> dict:
    """The unique event of ``trace`` whose note contains ``note``."""
    hits = [e for e in trace.events if note in e.get("note", "")]
    assert len(hits) == 1, f"{len(hits)} events of {trace.name} have a note with {note!r}"
    return hits[0]


def decisions(trace: Trace) -> list[dict]:
    return [trace.initial["decision"]] + [e["decision"] for e in trace.events]


# ----------------------------------------------------------------------------- replay


def test_builtin_traces_are_the_shipped_files():
    assert {p.name for p in builtin_traces()} == EXPECTED_FILES
    assert len(TRACES) == len(EXPECTED_FILES)


@pytest.mark.parametrize("name", sorted(TRACES))
def test_every_builtin_trace_replays_exactly(name):
    assert replay(TRACES[name]) == []


def test_files_are_what_the_scripts_generate():
    # A stale file would pass replay only if the core changed back; this pins both ways.
    generated = _make_traces.build_all()
    assert set(generated) == EXPECTED_FILES
    for path in builtin_traces():
        assert path.read_text(encoding="utf-8") == generated[path.name], path.name
    assert _make_traces.main(["--check"]) == 0


def test_files_are_standard_json_with_floats_that_round_trip():
    for path in builtin_traces():
        text = path.read_text(encoding="utf-8")
        data = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {path.name}"))
        assert trace_to_json(Trace.from_dict(data)) == text   # re-serialising is the identity
        for ev in data.get("events", []):
            for value in ev["decision"].values():
                if isinstance(value, float):
                    assert float(repr(value)) == value and math.isfinite(value)


# A replay with a second scheduler built on the pure functions (init/on_step/...) would add
# nothing: Scheduler's methods are those functions. The traces are checked against an
# independent statement of Algorithm 1 instead, the model of tests/properties
# (test_machine_along_the_conformance_traces), and replay's power to catch a wrong
# implementation is tested below.


# ----------------------------------------------------------------------------- coverage


def _executable_lines(func) -> set[int]:
    code = func.__code__
    return {line for _, _, line in code.co_lines()
            if line is not None and line != code.co_firstlineno}


TRANSITIONS = [
    _scheduler.init, _scheduler.on_step, _scheduler.on_eigenvalue,
    _scheduler.on_skip_eigenvalue, _scheduler.on_epoch_end, _scheduler.decide,
    _scheduler._grow, _scheduler._adv_count, _scheduler._check_eigenvalue,
    _scheduler._refuse_if_done_or_due, _scheduler._checks_active, _scheduler._finished,
    _scheduler.SchedulerConfig.__post_init__, _scheduler.SchedulerConfig.from_dict,
    _scheduler._block_count, _scheduler._adv_ranges,
    _scheduler._config_of_state_dict, _scheduler._state_from_dict,
    _scheduler._invariant_problems, _scheduler.Scheduler.load_state_dict]


def test_traces_reach_every_line_and_every_reason_of_the_core():
    """'Covering every branch', measured: every line of the transition functions (and of the
    config validation, through config_errors) runs while the traces replay."""
    target = os.path.abspath(_scheduler.__file__)
    hit: set[int] = set()

    def local(frame, event, arg):
        if event == "line":
            hit.add(frame.f_lineno)
        return local

    def tracer(frame, event, arg):
        return local if os.path.abspath(frame.f_code.co_filename) == target else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        for trace in TRACES.values():
            replay(trace)
    finally:
        sys.settrace(previous)
    for func in TRANSITIONS:
        missed = sorted(_executable_lines(func) - hit)
        assert not missed, f"{func.__qualname__}: lines {missed} of {target} never run"

    reasons = {d["reason"] for t in EVENT_TRACES for d in decisions(t)}
    for wanted in ["start", "step", "step: eigenvalue due", "eigenvalue: first, reference set",
                   "eigenvalue: dropped, grow", "eigenvalue: patience, grow",
                   "eigenvalue: no drop", "eigenvalue: skipped", "epoch end",
                   "epoch end: lr decays", "epoch end: gg: batch grows",
                   "epoch end: gg: lr decays", "epoch end: adversary stops",
                   "eigenvalue: lower bound, no drop", "eigenvalue: lower bound, patience, grow"]:
        assert wanted in reasons, wanted
    methods = {t.config["method"].lower() for t in EVENT_TRACES}
    assert methods == set(hessbatch.METHODS)
    kinds = {e["error"]["kind"] for t in EVENT_TRACES for e in t.events if "error" in e}
    assert kinds == {"protocol", "value", "type"}


# ----------------------------------------------------------------------------- generic facts


@pytest.mark.parametrize("trace", EVENT_TRACES, ids=lambda t: t.name)
def test_refused_events_change_nothing_and_counters_add_up(trace):
    prev = trace.initial
    for ev in trace.events:
        if "error" in ev or ev["event"] == "save_load":
            assert (ev["decision"], ev["state"]) == (prev["decision"], prev["state"])
        elif ev["event"] == "step":
            k = prev["decision"]["batch_size"] if ev["samples"] is None else ev["samples"]
            assert ev["decision"]["samples_seen"] == prev["decision"]["samples_seen"] + k
            assert ev["decision"]["updates"] == prev["decision"]["updates"] + 1
        prev = ev
    # the state and the decision tell the same story
    for ev in trace.events:
        d, s = ev["decision"], ev["state"]
        for key in ("batch_size", "epoch", "samples_seen", "updates", "eigenvalue_due",
                    "reason"):
            assert d[key] == s[key]
        assert d["accumulation_steps"] * d["micro_batch_size"] == d["batch_size"]


def test_config_error_cases_name_the_first_bad_field_in_the_check_order():
    """Each case differs from one valid config; the field named is the first changed one in
    the order docs/porting.md gives: unknown fields, missing required ones, then the config
    fields in table order (a check on a field's relation to an earlier one belongs to the
    later field)."""
    trace = TRACES["config_errors"]
    fields = {k for case in trace.cases for k in case["config"]}
    base = {k: Counter(json.dumps(c["config"].get(k, "<absent>")) for c in trace.cases)
            .most_common(1)[0][0] for k in fields}
    base = {k: json.loads(v) for k, v in base.items() if k != "colour"}
    SchedulerConfig.from_dict(base)                         # the base config is valid
    order = [f.name for f in dataclasses.fields(SchedulerConfig)]
    multi = 0
    for case in trace.cases:
        cfg = case["config"]
        unknown = [k for k in cfg if k not in order]
        missing = [k for k in ("method", "lr", "batch_size", "samples_per_epoch", "epochs")
                   if k not in cfg]
        changed = [k for k in order if k in cfg and json.dumps(cfg[k]) != json.dumps(base[k])]
        assert unknown or missing or changed, case
        # the field named is one that changed, or the owner of a cross-field check (the
        # divisibility by micro_batch_size, the reachable lr); which one when several are
        # bad is declared by hand in _make_traces.config_errors from the documented order
        field = case["error"]["field"]
        if unknown:
            assert field == "config", case           # unknown fields: the config is at fault
        elif missing:
            assert field == min(missing, key=order.index), case   # the first in table order
        else:
            assert field in changed + ["lr", "micro_batch_size"], case
        assert case["error"]["kind"] in ("value", "type")
        multi += len(unknown) + len(missing) + len(changed) > 1
    assert multi >= 8            # the check order itself is pinned by several cases


# ----------------------------------------------------------------------------- by hand


def test_hand_abs_growth_by_drop():
    t = TRACES["abs_growth_by_drop"]
    ev = after(t, "first eigenvalue")
    assert (ev["decision"]["batch_size"], ev["decision"]["lr"]) == (100, 0.1)
    assert (ev["state"]["lam_ref"], ev["state"]["patience_count"]) == (8.0, 1)
    ev = after(t, "4.000001 > 8 / 2")
    assert ev["decision"]["batch_size"] == 100 and ev["state"]["patience_count"] == 2
    ev = after(t, "4.0 <= 8 / 2")                 # exactly lam_ref / alpha: a drop
    assert ev["decision"]["batch_size"] == 200
    assert ev["decision"]["lr"] == pytest.approx(0.2, **approx)
    assert (ev["state"]["lam_ref"], ev["state"]["patience_count"]) == (4.0, 0)
    ev = after(t, "1.0 <= 4 / 2")
    assert (ev["decision"]["batch_size"], ev["decision"]["lr"]) == (400, pytest.approx(0.4))
    ev = after(t, "grow to B_max = 800")
    assert (ev["decision"]["batch_size"], ev["decision"]["lr"]) == (800, pytest.approx(0.8))
    later = t.events[t.events.index(ev):]
    assert not any(e["decision"]["eigenvalue_due"] for e in later)
    assert t.events[-1]["decision"]["finished"]
    assert t.events[-1]["decision"]["updates"] == 4 + 4 + 4 + 2 + 1 + 1
    for d in decisions(t):                       # lr / B = 0.1 / 100 throughout
        assert d["lr"] / d["batch_size"] == pytest.approx(0.001, **approx)


def test_hand_abs_growth_by_patience():
    t = TRACES["abs_growth_by_patience"]
    ev = after(t, "d = 3 >= kappa")
    assert (ev["decision"]["batch_size"], ev["decision"]["lr"]) == (200, pytest.approx(0.2))
    assert (ev["state"]["lam_ref"], ev["state"]["patience_count"]) == (8.0, 0)
    ev = after(t, "4.5 > 8 / 2")
    assert (ev["decision"]["batch_size"], ev["state"]["patience_count"]) == (200, 1)
    ev = after(t, "4.0 <= 8 / 2")
    assert (ev["decision"]["batch_size"], ev["decision"]["lr"]) == (400, pytest.approx(0.4))
    assert ev["state"]["lam_ref"] == 4.0
    assert after(t, "saved and loaded")["decision"]["eigenvalue_due"]


def test_hand_absa_cap_at_max_batch():
    t = TRACES["absa_cap_at_max_batch"]
    d = t.initial["decision"]
    assert (d["adv_fraction"], d["adv_count"], d["adv_eps"]) == (0.2, 20, 0.01)
    d = after(t, "drop: B = 200")["decision"]
    assert (d["batch_size"], d["adv_fraction"], d["adv_count"]) == (200, 0.1, 20)
    d = after(t, "min(400, 300)")["decision"]
    assert (d["batch_size"], d["adv_fraction"], d["adv_count"], d["adv_eps"]) == \
        (300, 0.0, 0, 0.0)
    assert d["lr"] == pytest.approx(0.3, **approx)
    i = [e["decision"] for e in t.events].index(d)
    assert not any(e["decision"]["eigenvalue_due"] for e in t.events[i:])
    assert not any(e["event"] == "eigenvalue" for e in t.events[i + 1:])


def test_hand_absa_adversary_decay_and_stop():
    t = TRACES["absa_adversary_decay_and_stop"]
    assert t.initial["decision"]["adv_count"] == 2           # floor(0.1 * 20)
    d = after(t, "one sample")["decision"]
    assert (d["batch_size"], d["adv_fraction"], d["adv_count"]) == (40, 0.025, 1)
    d = after(t, "< 1: none")["decision"]
    assert (d["batch_size"], d["adv_fraction"], d["adv_count"]) == (80, 0.00625, 0)
    assert d["adv_eps"] == 0.0
    d = after(t, "adversary stops")["decision"]
    assert (d["epoch"], d["adv_fraction"], d["adv_count"]) == (3, 0.0, 0)
    assert "adversary stops" in d["reason"]
    assert after(t, "B = 160")["decision"]["adv_fraction"] == 0.0
    assert t.events[-1]["decision"]["batch_size"] == 320


def test_hand_rounding_and_check_period():
    t = TRACES["rounding_and_check_period"]
    d = t.initial["decision"]
    assert (d["adv_count"], d["accumulation_steps"]) == (29, 5)    # 0.29 * 100 in binary < 29
    assert not after(t, "s = 100 < 150")["decision"]["eigenvalue_due"]
    assert after(t, "s = 200 crosses 150")["decision"]["eigenvalue_due"]
    assert after(t, "s = 300 crosses 300")["decision"]["eigenvalue_due"]
    d = after(t, "round_up(1.5 * 100, 20)")["decision"]
    assert (d["batch_size"], d["accumulation_steps"], d["adv_count"]) == (160, 8, 46)
    assert d["lr"] == pytest.approx(0.16, **approx)
    d = after(t, "B = 240")["decision"]
    assert (d["batch_size"], d["accumulation_steps"], d["adv_count"]) == (240, 12, 69)
    ev = after(t, "skipped: d stays 1")
    assert (ev["decision"]["batch_size"], ev["state"]["patience_count"]) == (240, 1)
    d = after(t, "0.5 <= 1.0 / 2")["decision"]
    assert (d["batch_size"], d["accumulation_steps"], d["adv_count"]) == (360, 18, 0)


def test_hand_growth_rounding_tolerance():
    t = TRACES["growth_rounding_tolerance"]
    grown = [e["decision"]["batch_size"] for e in t.events
             if e["event"] == "eigenvalue" and "grow" in e["decision"]["reason"]]
    # smallest multiple of 10 >= 1.1 * B, computed exactly: 110, 121 -> 130, 143 -> 150, ...
    want, b = [], 100
    for _ in range(6):
        b = min(-(-(11 * b) // 100) * 10, 200)
        want.append(b)
    assert grown == want == [110, 130, 150, 170, 190, 200]
    d = t.events[-1]["decision"]
    assert d["lr"] == pytest.approx(0.6, **approx) and d["finished"]
    lrs = [e["decision"]["lr"] for e in t.events if e["event"] == "eigenvalue"
           and "grow" in e["decision"]["reason"]]
    assert lrs[2] == (0.39 * 150) / 130 == 0.45 != 0.39 * (150 / 130)   # the order pinned


def test_hand_lr_decay_epochs():
    t = TRACES["lr_decay_epochs"]
    assert after(t, "epoch 1 in A")["decision"]["lr"] == pytest.approx(0.02, **approx)
    d = after(t, "lr = 0.02 * 2")["decision"]
    assert (d["batch_size"], d["lr"]) == (200, pytest.approx(0.04, **approx))
    d = after(t, "lr = 0.04 * 2")["decision"]
    assert (d["batch_size"], d["lr"]) == (400, pytest.approx(0.08, **approx))
    assert after(t, "epoch 3 in A")["decision"]["lr"] == pytest.approx(0.016, **approx)


def test_hand_bl_fixed():
    t = TRACES["bl_fixed"]
    assert all(d["batch_size"] == 100 and not d["eigenvalue_due"] for d in decisions(t))
    assert after(t, "epoch 2 in A")["decision"]["lr"] == pytest.approx(0.01, **approx)
    assert after(t, "epoch 3 in A")["decision"]["lr"] == pytest.approx(0.001, **approx)


def test_hand_fb_warmup():
    t = TRACES["fb_warmup"]
    d = t.initial["decision"]
    assert (d["batch_size"], d["accumulation_steps"], d["lr"]) == (400, 4, 0.1)
    for ev in t.events:
        d = ev["decision"]
        assert d["batch_size"] == 400 and not d["eigenvalue_due"]
        if d["epoch"] < 3:                       # before the decay at the end of epoch 3
            progress = min(1.0, d["samples_seen"] / 2000)
            assert d["lr"] == pytest.approx(0.1 + 0.3 * progress, **approx)
    assert [e["samples"] for e in t.events[:3]] == [400, 400, 200]   # a short last batch
    assert after(t, "lr = 0.1 + 0.3 * 0.5")["decision"]["lr"] == pytest.approx(0.25, **approx)
    assert after(t, "epoch 3 in A")["decision"]["lr"] == pytest.approx(0.04, **approx)


def test_hand_gg_schedule():
    t = TRACES["gg_schedule"]
    d = after(t, "B = 100 / 0.2 = 500")["decision"]
    assert (d["batch_size"], d["accumulation_steps"]) == (500, 5)
    assert d["lr"] == pytest.approx(0.1, **approx)
    d = after(t, "B = min(2500, 1000)")["decision"]
    assert (d["batch_size"], d["lr"]) == (1000, pytest.approx(0.04, **approx))
    d = after(t, "at B_max: lr = 0.04 * 0.2")["decision"]
    assert (d["batch_size"], d["lr"]) == (1000, pytest.approx(0.008, **approx))
    # the noise scale lr / B drops by exactly rho at each decay epoch
    assert d["lr"] / d["batch_size"] == pytest.approx(0.1 / 100 * 0.2 ** 3, **approx)


def test_hand_errors_and_skips():
    t = TRACES["errors_and_skips"]
    errors = [e for e in t.events if "error" in e]
    assert len(errors) == 24
    ev = after(t, "an int is a real number")
    assert (ev["state"]["lam_ref"], ev["state"]["patience_count"]) == (8.0, 1)
    assert isinstance(ev["state"]["lam_ref"], float)
    ev = after(t, "skipped: no count")
    assert (ev["decision"]["batch_size"], ev["state"]["patience_count"]) == (100, 1)
    d = after(t, "0 <= 8 / 2")["decision"]
    assert (d["batch_size"], d["lr"]) == (200, pytest.approx(0.2, **approx))
    assert [e["value"] for e in errors if e["event"] == "eigenvalue" and
            e["error"]["kind"] == "value"] == ["NaN", "Infinity", "-Infinity", -0.001, "NaN"]
    # a whole float and a bool are not ints; the float is tagged, so any JSON parser sees it
    assert [e["samples"] for e in errors if e["event"] == "step" and
            e["error"]["kind"] == "type"] == [{"float": 1.5}, {"float": 100.0}, True, "100"]
    ev = after(t, "last_eigenvalue stays 8.0")          # a refusal leaves it
    assert ev["state"]["last_eigenvalue"] == 8.0
    assert after(t, "skipped: no count")["state"]["last_eigenvalue"] == 8.0   # a skip too


def test_hand_defaults():
    t = TRACES["defaults"]
    assert t.config["micro_batch_size"] is None and "patience" not in t.config
    d = t.initial["decision"]
    assert (d["micro_batch_size"], d["adv_fraction"], d["adv_count"]) == (128, 0.2, 25)
    assert (d["adv_eps"], d["lr"]) == (0.005, 0.05)
    assert after(t, "first: reference")["decision"]["samples_seen"] == 256   # n = one epoch
    assert d["method"] == "absa" and t.config["method"] == "ABSA"   # names in any case
    d = after(t, "drop: B = 256")["decision"]
    # the default rule, blocks of B0 = 128: floor(0.1 * 128) = 12 in each of the two
    assert (d["batch_size"], d["accumulation_steps"], d["adv_fraction"], d["adv_count"]) == \
        (256, 2, 0.1, 24)
    assert (d["adv_rule"], d["adv_ranges"]) == ("blocks", [[0, 12], [128, 140]])
    assert d["lr"] == pytest.approx(0.1, **approx)
    assert after(t, "adversary stops")["decision"]["adv_fraction"] == 0.0
    assert t.events[-1]["decision"]["batch_size"] == 512


def _blocks(b, b0, c):
    """Hand rule: the first c of every block of b0 in a batch of b (all of a shorter block)."""
    return [[s, min(s + c, b)] for s in range(0, b, b0)] if c else []


def test_hand_adv_blocks_rule():
    t = TRACES["adv_blocks_rule"]
    assert t.initial["decision"]["adv_ranges"] == [[0, 29]]        # 0.29 * 100 < 29 in binary
    per_block = {160: 14, 240: 7, 360: 3, 540: 1, 820: 0}        # floor(0.29 / 2^k * 100)
    for b, c in per_block.items():
        d = after(t, f"B = {b}")["decision"]
        assert d["batch_size"] == b and d["adv_ranges"] == _blocks(b, 100, c)
        assert d["adv_count"] == sum(z - a for a, z in d["adv_ranges"])
    assert after(t, "B = 820")["decision"]["adv_fraction"] > 0   # vanished, not stopped
    steps = [e for e in t.events if e["event"] == "step"]
    short = [e for e in steps if e["samples"] < e["decision"]["batch_size"] or
             e["samples"] == 60]
    assert [60, 300] == sorted({e["samples"] for e in short} & {60, 300})
    for e in steps:       # each step's ranges: the hand rule on its k samples, B0 = 100
        prev = t.events[t.events.index(e) - 1] if t.events.index(e) else None
        d = (prev or t.initial)["decision"]
        c = d["adv_ranges"][0][1] if d["adv_ranges"] else 0
        assert e["adv_ranges"] == _blocks(e["samples"], 100, c), e


def test_hand_thresholds_and_stops():
    t = TRACES["adv_rule_thresholds"]
    assert t.initial["decision"]["adv_ranges"] == [[0, 1]]        # 0.035 * 40 = 1.4
    d = after(t, "1.0000000000000002")["decision"]
    assert (d["batch_size"], d["adv_count"], d["adv_eps"]) == (80, 0, 0.0)
    assert 0.035 / 1.4 * 40 > 1 and d["adv_fraction"] == 0.035 / 1.4
    t = TRACES["adv_batch_threshold"]
    d = after(t, "0.9999999999999999")["decision"]
    assert (d["batch_size"], d["adv_ranges"]) == (10, [[0, 1]]) and 0.3 / 3 * 10 < 1
    t = TRACES["adv_stop_tolerance"]
    assert 0.28 * 25 > 7
    on = [e["decision"]["epoch"] for e in t.events if e["event"] == "epoch_end"
          and e["decision"]["adv_fraction"] > 0]
    assert on == [1, 2, 3, 4, 5, 6]                              # off from the end of epoch 7
    t = TRACES["adv_stop_odd_epochs"]
    on = [e["decision"]["epoch"] for e in t.events if e["event"] == "epoch_end"
          and e["decision"]["adv_fraction"] > 0]
    assert on == [1, 2]                       # 3 >= 2.5; the authors' 5 // 2 = 2 stops at 2
    for name in ("absa_at_max_from_start", "absa_tau_zero"):
        assert all(d["adv_fraction"] == 0.0 and d["adv_count"] == 0
                   for d in decisions(TRACES[name]))
    assert any(d["eigenvalue_due"] for d in decisions(TRACES["absa_tau_zero"]))


def test_hand_fb_order_and_negative_zero():
    t = TRACES["fb_order_of_operations"]
    peak = (0.1 * 70) / 10
    assert peak == 0.7 != 0.1 * (70 / 10)
    for d, s in [(e["decision"], e["state"]) for e in t.events]:
        assert s["lr"] == peak
        if d["epoch"] < 2:
            assert d["lr"] == 0.1 + (peak - 0.1) * min(1.0, d["samples_seen"] / (0.7 * 350))
    t = TRACES["fb_without_warmup"]
    assert all(d["lr"] == 0.4 for d in decisions(t))
    t = TRACES["negative_zero"]
    assert math.copysign(1, t.initial["decision"]["adv_eps"]) == -1
    ev = after(t, "first: reference -0.0")
    assert math.copysign(1, ev["state"]["lam_ref"]) == -1
    assert math.copysign(1, after(t, "survives the JSON")["state"]["lam_ref"]) == -1
    d = after(t, "0.0 <= -0.0 / 2")["decision"]
    assert d["batch_size"] == 200 and math.copysign(1, d["adv_eps"]) == -1
    d = after(t, "the adversary stops")["decision"]
    assert (d["adv_count"], math.copysign(1, d["adv_eps"])) == (0, 1)


def test_lower_bound_trace_by_hand():
    t = TRACES["lower_bound_checks"]
    assert after(t, "threshold null")["decision"]["eigenvalue_threshold"] is None
    assert after(t, "check due: threshold 8 / 2 = 4.0")["decision"]["eigenvalue_threshold"] == 4.0
    refused = [e for e in t.events if "error" in e]
    assert len(refused) == 4 and all(e.get("lower_bound") for e in refused)
    assert all(e["error"]["kind"] == "value" and e["state"]["eigenvalue_due"] for e in refused)
    d = after(t, "just above 4.0")
    assert d["state"]["patience_count"] == 2 and d["state"]["last_eigenvalue_bound"] is True
    assert d["state"]["last_eigenvalue"] == 4.000000000000001 and d["state"]["lam_ref"] == 8.0
    assert d["decision"]["eigenvalue_threshold"] is None        # no check due any more
    g = after(t, "d = 3 = kappa")
    assert (g["decision"]["batch_size"], g["decision"]["lr"], g["state"]["lam_ref"]) == \
        (200, 0.2, 8.0)
    v = after(t, "a value: 3.0")
    assert (v["decision"]["batch_size"], v["state"]["lam_ref"],
            v["state"]["last_eigenvalue_bound"]) == (400, 3.0, False)
    sk = after(t, "skipped")
    assert sk["state"]["last_eigenvalue"] == 3.0 and sk["state"]["last_eigenvalue_bound"] is False


def test_state_dict_fixtures_by_hand():
    t = TRACES["state_dicts"]
    good = [c for c in t.cases if "error" not in c]
    assert len(good) == 10 and len(t.cases) - len(good) >= 35
    first = good[0]["saved"]
    for case in good:                                  # every accepted one writes back ...
        saved = case["saved"]
        assert saved["version"] == 3 and set(saved["config"]) == set(first["config"])
        assert all(type(saved["config"][k]) is float for k in
                   ("lr", "alpha", "beta", "adv_decay", "warmup_epochs"))
    sparse = good[1]["state_dict"]["config"]
    assert "alpha" not in sparse and good[1]["saved"] == first   # defaults filled in
    assert good[3]["state_dict"]["config"]["alpha"] == 2 and good[3]["saved"] == first
    ints = good[4]
    assert ints["state_dict"]["state"]["lr"] == 1 and ints["saved"]["state"]["lr"] == 1.0
    assert type(ints["saved"]["state"]["lam_ref"]) is float
    assert good[5]["state_dict"]["version"] == 1 and good[5]["saved"]["config"]["adv_rule"] == \
        "batch"
    bad = {c["note"]: c for c in t.cases if "error" in c}
    assert bad["a whole float for an int"]["state_dict"]["state"]["batch_size"] == \
        {"float": 200.0}
    assert bad["version 1 into a blocks scheduler"]["error"]["field"] == "adv_rule"


# ----------------------------------------------------------------------------- replay finds bugs


class _NoLrScaling(Scheduler):
    """A wrong port: grows the batch but forgets to scale the lr."""

    def eigenvalue(self, value):
        before = self.state
        d = super().eigenvalue(value)
        if self.state.batch_size != before.batch_size:
            self._state = dataclasses.replace(self.state, lr=before.lr)
        return self.decision


class _FloorWithoutTolerance(Scheduler):
    """A wrong port: floor(gamma * B) without the 1e-9 tolerance."""

    @property
    def decision(self):
        d = super().decision
        if d.adv_count:
            d = dataclasses.replace(d, adv_count=max(1, math.floor(d.adv_fraction *
                                                                    d.batch_size)))
        return d


class _SkipCounts(Scheduler):
    """A wrong port: a skipped check counts towards the patience."""

    def skip_eigenvalue(self):
        st = self.state
        super().skip_eigenvalue()
        self._state = dataclasses.replace(self.state, patience_count=st.patience_count + 1)
        return self.decision


class _LosesDueOnLoad(Scheduler):
    """A wrong port: its checkpoints drop the pending check."""

    def load_state_dict(self, data):
        super().load_state_dict(data)
        self._state = dataclasses.replace(self.state, eigenvalue_due=False)


def _round_up_without_tolerance(x, multiple):
    return multiple * math.ceil(x / multiple)


class _AcceptsNaN(Scheduler):
    """A wrong port: a NaN eigenvalue is taken as 'no drop'."""

    def eigenvalue(self, value):
        if isinstance(value, float) and math.isnan(value):
            value = 1e300
        return super().eigenvalue(value)


@pytest.mark.parametrize("wrong, trace, first_field", [
    (_NoLrScaling, "abs_growth_by_drop", "decision.lr"),
    (_FloorWithoutTolerance, "rounding_and_check_period", "decision.adv_count"),
    (_SkipCounts, "errors_and_skips", "state.patience_count"),
    (_LosesDueOnLoad, "abs_growth_by_patience", "decision.eigenvalue_due"),
    (_AcceptsNaN, "errors_and_skips", "error"),
])
def test_replay_catches_wrong_implementations(wrong, trace, first_field):
    found = replay(TRACES[trace], factory=wrong)
    assert found, f"{wrong.__name__} passed {trace}"
    assert found[0].field == first_field
    assert isinstance(found[0], Mismatch) and str(found[0]).startswith(f"event {found[0].index}")


def test_replay_catches_rounding_without_the_tolerance(monkeypatch):
    monkeypatch.setattr(_scheduler, "_round_up", _round_up_without_tolerance)
    found = replay(TRACES["growth_rounding_tolerance"])
    assert found and found[0].field == "decision.accumulation_steps"
    assert (found[1].field, found[1].expected, found[1].got) == ("decision.batch_size", 110, 120)


def test_float_comparison_is_exact_by_repr():
    data = TRACES["abs_growth_by_drop"].to_dict()
    index = next(i for i, e in enumerate(data["events"])   # the growth to 200
                 if e["decision"]["batch_size"] == 200)
    ev = data["events"][index]
    assert ev["decision"]["lr"] == 0.2
    for wrong in (math.nextafter(0.2, 1.0), math.nextafter(0.2, 0.0), 0.20000000000000004):
        ev["decision"]["lr"] = wrong
        found = replay(data)
        assert [(m.index, m.field, m.expected, m.got) for m in found] == \
            [(index, "decision.lr", wrong, 0.2)]
    ev["decision"]["lr"] = 0.2
    ev["decision"]["batch_size"] = 200.0                 # an int field written as a float
    assert [m.field for m in replay(data)] == ["decision.batch_size"]
    ev["decision"]["batch_size"] = 200
    ev["decision"]["adv_eps"] = -0.0                     # -0.0 and 0.0 are different doubles
    assert [m.field for m in replay(data)] == ["decision.adv_eps"]


def test_check_reason_and_check_state_switches():
    data = TRACES["abs_growth_by_drop"].to_dict()
    data["events"][3]["decision"]["reason"] = "worded differently"
    data["events"][3]["state"]["reason"] = "worded differently"
    data["events"][3]["state"]["epoch_start_samples"] = 7
    assert {m.field for m in replay(data)} == {"decision.reason", "state.reason",
                                               "state.epoch_start_samples"}
    assert [m.field for m in replay(data, check_reason=False)] == ["state.epoch_start_samples"]
    assert replay(data, check_reason=False, check_state=False) == []
    data["events"][3]["decision"]["extra_field"] = 1       # a stale trace is reported
    assert [m.field for m in replay(data, check_reason=False, check_state=False)] == \
        ["decision.extra_field"]


def test_unexpected_and_missing_errors_are_mismatches():
    data = TRACES["errors_and_skips"].to_dict()
    del data["events"][0]["error"]                        # the core refuses it anyway
    good = next(i for i, e in enumerate(data["events"]) if e.get("note") == "check due")
    del data["events"][good]["adv_ranges"]
    data["events"][good]["error"] = {"kind": "value", "field": "samples"}   # a good step
    found = replay(data)
    assert [(m.index, m.field) for m in found] == [(0, "error"), (good, "error")]
    assert found[0].got.startswith("SchedulerError: eigenvalue: none is due")
    assert found[1].got is None
    data = TRACES["errors_and_skips"].to_dict()
    nan = next(i for i, e in enumerate(data["events"]) if e.get("value") == "NaN")
    data["events"][nan]["error"]["field"] = "eigenvalue_due"     # a neighbouring field
    assert [(m.index, m.field) for m in replay(data)] == [(nan, "error")]
    data["events"][nan]["error"] = {"kind": "type", "field": "eigenvalue"}   # ValueError
    assert [(m.index, m.field) for m in replay(data)] == [(nan, "error")]
    data = TRACES["config_errors"].to_dict()
    data["cases"][0]["config"]["method"] = "abs"          # a valid config where one must fail
    assert [(m.index, m.event, m.got) for m in replay(data)] == [(0, "config", None)]


# ----------------------------------------------------------------------------- bad trace files


GOOD = json.dumps(TRACES["bl_fixed"].to_dict())


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(format="something"), "format: must be 'hessbatch.trace'"),
    (lambda d: d.update(version=1), "version: 1 is not supported"),
    (lambda d: d.update(version=2), "version: 2 is not supported"),
    (lambda d: d.update(kind="film"), "kind: must be one of 'events', 'config_errors'"),
    (lambda d: d.pop("config"), r"missing keys \['config'\]"),
    (lambda d: d.update(colour=1), r"unknown keys \['colour'\]"),
    (lambda d: d.update(name=""), "name: must be a non-empty string"),
    (lambda d: d.update(events=[]), "events: must be a non-empty list"),
    (lambda d: d["events"][2].update(event="jump"), r"events\[2\]: 'event' must be one of"),
    (lambda d: d["events"][0].pop("samples"), r"events\[0\]: a step event needs \['samples'\]"),
    (lambda d: d["events"][0].update(value=1.0), r"events\[0\]: a step event needs"),
    (lambda d: d["events"][1].pop("decision"), r"events\[1\]: needs a non-empty 'decision'"),
    (lambda d: d["events"][1].update(error={"kind": "oops"}), r"events\[1\].error: must be"),
    (lambda d: d["events"][1].update(error={"kind": "value", "mentions": ["x"]}),
     r"events\[1\].error: must be"),
    (lambda d: d["events"][1].update(error={"kind": "value", "field": None}),
     r"events\[1\].error: must be"),
    (lambda d: d["events"][1].update(error={"kind": "protocol", "field": "samples"}),
     r"events\[1\].error: must be"),
    (lambda d: d.update(covers="all"), "covers: must be a list of strings"),
])
def test_malformed_trace_is_refused_with_the_place(tmp_path, mutate, match):
    data = json.loads(GOOD)
    mutate(data)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as info:
        load_trace(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=match):
        replay(data)


@pytest.mark.parametrize("text, match", [
    ("{", "not valid JSON"),
    ('{"format": NaN}', "non-standard JSON constant NaN"),
    ("[1, 2]", "top level: must be a JSON object, got list"),
])
def test_unreadable_trace_files(tmp_path, text, match):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_trace(path)
    with pytest.raises(OSError):
        load_trace(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- recorder, CLI


def test_recorder_refuses_undeclared_and_missing_errors():
    cfg = dict(method="abs", lr=0.1, batch_size=10, samples_per_epoch=20, epochs=2,
               max_batch_size=40)
    rec = TraceRecorder("t", "d", cfg)
    with pytest.raises(AssertionError, match="undeclared SchedulerError"):
        rec.eigenvalue(1.0)
    with pytest.raises(AssertionError, match="should fail"):
        rec.step(error=("value", "samples"))
    with pytest.raises(AssertionError, match="should fail"):
        rec.step(11, error=("type",))            # it fails, but with a ValueError
    assert len(rec.events) == 0 and rec.decision.samples_seen == 0   # nothing recorded or run
    rec.step()
    rec.step(note="due")
    with pytest.raises(AssertionError, match="should fail"):
        rec.eigenvalue(float("-inf"), error=("value", "eigenvalue_due"))   # not its field
    rec.eigenvalue(float("-inf"), error=("value", "eigenvalue"))
    trace = rec.trace()
    assert [e["event"] for e in trace.events] == ["step", "step", "eigenvalue"]
    assert trace.events[2]["value"] == "-Infinity" and replay(trace) == []


def test_cli_replays_copies_and_reports(tmp_path, capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == len(EXPECTED_FILES)
    assert main(["--copy-to", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == EXPECTED_FILES
    path = tmp_path / "gg_schedule.json"
    data = json.loads(path.read_text())
    data["events"][-2]["decision"]["batch_size"] = 999
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 mismatches" in out and "decision.batch_size expected 999, got 1000" in out


def test_make_traces_check_reports_stale_files(tmp_path):
    assert _make_traces.main(["--out", str(tmp_path), "--check"]) == 1   # nothing written yet
    assert _make_traces.main(["--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == EXPECTED_FILES
    assert _make_traces.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "bl_fixed.json").write_text("{}")
    assert _make_traces.main(["--out", str(tmp_path), "--check"]) == 1


def test_traces_module_runs_as_a_script():
    proc = subprocess.run([sys.executable, "-m", "hessbatch.traces", "--no-state"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" ok") == len(EXPECTED_FILES)


# ----------------------------------------------------------------------------- language-neutral


from hessbatch.traces import (  # noqa: E402
    CONFIG_TYPES,
    DECISION_TYPES,
    STATE_TYPES,
    check_language_neutral,
)

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "porting.md")


def test_type_tables_are_the_fields_and_the_docs_name_them():
    assert list(DECISION_TYPES) == [f.name for f in dataclasses.fields(hessbatch.Decision)]
    assert list(STATE_TYPES) == [f.name for f in dataclasses.fields(hessbatch.SchedulerState)]
    assert list(CONFIG_TYPES) == [f.name for f in dataclasses.fields(SchedulerConfig)]
    text = open(DOCS, encoding="utf-8").read()
    for name in list(DECISION_TYPES) + list(STATE_TYPES) + list(CONFIG_TYPES):
        assert f"`{name}`" in text, name
    for name in TRACES:                                    # every trace in the table
        assert f"`{name}`" in text, name


def test_every_builtin_trace_is_language_neutral():
    for name, trace in TRACES.items():
        assert check_language_neutral(trace.to_dict()) == [], name


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d["events"][0]["decision"].update(batch_size=100.0),
     "events[0].decision.batch_size: must be JSON int"),
    (lambda d: d["events"][0]["decision"].update(lr=1),            # a float field as an int
     "events[0].decision.lr: must be JSON float"),
    (lambda d: d["events"][0]["state"].update(lam_ref=8),
     "events[0].state.lam_ref: must be JSON float|null"),
    (lambda d: d["events"][0]["decision"].update(adv_ranges=[[0, 1.0]]),
     "events[0].decision.adv_ranges: must be JSON ranges"),
    (lambda d: d["events"][0].update(samples=100.0), "events[0].samples: the float 100.0"),
    (lambda d: d["config"].update(batch_size=100.0), "config.batch_size: the float 100.0"),
    (lambda d: d["config"].update(lr_decay_epochs=[2.0]), "config.lr_decay_epochs[0]"),
    (lambda d: d["initial"]["decision"].pop("adv_rule"), "initial.decision.adv_rule: missing"),
    (lambda d: d["initial"]["state"].update(colour=1), "initial.state.colour: not a field"),
])
def test_language_neutral_check_fails_on_a_number_a_javascript_parser_would_misread(
        mutate, where):
    data = TRACES["bl_fixed"].to_dict()
    mutate(data)
    problems = check_language_neutral(data)
    assert len(problems) == 1 and problems[0].startswith(where), problems


def test_language_neutral_check_of_cases_and_the_cli(tmp_path, capsys):
    data = TRACES["config_errors"].to_dict()
    assert check_language_neutral(data) == []
    data["cases"][6]["config"]["batch_size"] = 100.5        # the tag removed
    assert check_language_neutral(data)[0].startswith("cases[6].config.batch_size")
    data = TRACES["state_dicts"].to_dict()
    data["cases"][0]["saved"]["config"]["alpha"] = 2         # an int where a float is written
    data["cases"][1]["state_dict"]["state"]["updates"] = 6.0
    assert [p.split(":")[0] for p in check_language_neutral(data)] == \
        ["cases[0].saved.config.alpha", "cases[1].state_dict.state.updates"]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "numbers not language-neutral" in out and "cases[0].saved.config.alpha" in out


# A port whose JSON parser keeps no ints (JavaScript's JSON.parse: every number a double) and
# rebuilds the types from the tables of docs/porting.md and the {"float": x} tag alone.

PATHS = {p.name[:-5]: p for p in builtin_traces()}


def _js_parse(text: str):
    return json.loads(text, parse_int=float)


def _as(kind: str, v):
    if isinstance(v, dict) and set(v) == {"float"}:
        return float(v["float"])                     # the tag: a float at an int position
    if kind == "int" and type(v) is float:
        return int(v)
    if kind == "int list" and isinstance(v, list):
        return [_as("int", e) for e in v]
    if kind == "ranges" and isinstance(v, list):
        return [[_as("int", e) for e in r] for r in v]
    return v


def _typed_config(cfg):
    if not isinstance(cfg, dict):
        return cfg
    return {k: _as(CONFIG_TYPES.get(k, ""), v) for k, v in cfg.items()}


def _typed_snapshot(snap):
    return {"decision": {k: _as(DECISION_TYPES[k], v) for k, v in snap["decision"].items()},
            "state": {k: _as(STATE_TYPES[k], v) for k, v in snap["state"].items()}}


def _typed_state_dict(sd):
    if not isinstance(sd, dict):
        return sd
    out = dict(sd)
    if "version" in out:
        out["version"] = _as("int", out["version"])
    if "config" in out:
        out["config"] = _typed_config(out["config"])
    if isinstance(out.get("state"), dict):
        out["state"] = {k: _as(STATE_TYPES.get(k, ""), v) for k, v in out["state"].items()}
    return out


def _rebuild(data):
    out = dict(data, version=int(data["version"]), count=int(data["count"]))
    if data["kind"] == "events":
        out["config"] = _typed_config(data["config"])
        out["initial"] = _typed_snapshot(data["initial"])
        events = []
        for ev in data["events"]:
            ev = {**ev, **_typed_snapshot(ev)}
            if ev.get("samples") is not None:
                ev["samples"] = _as("int", ev["samples"])
            if "adv_ranges" in ev:
                ev["adv_ranges"] = _as("ranges", ev["adv_ranges"])
            events.append(ev)
        out["events"] = events
    elif data["kind"] == "config_errors":
        out["cases"] = [{**c, "config": _typed_config(c["config"])} for c in data["cases"]]
    else:
        cases = []
        for c in data["cases"]:
            c = {**c, "load_into": _typed_config(c["load_into"]),
                 "state_dict": _typed_state_dict(c["state_dict"])}
            if "saved" in c:
                c["saved"] = _typed_state_dict(c["saved"])
                c["decision"] = {k: _as(DECISION_TYPES[k], v) for k, v in c["decision"].items()}
            cases.append(c)
        out["cases"] = cases
    return out


@pytest.mark.parametrize("name", sorted(TRACES))
def test_a_parser_without_ints_plus_the_tables_replays_every_trace(name):
    text = PATHS[name].read_text(encoding="utf-8")
    js = _js_parse(text)
    assert all(type(v) is not int for v in js["initial"]["decision"].values()) \
        if "initial" in js else True                # the parser really lost the ints
    assert replay(_rebuild(js)) == [], name


def test_without_the_tag_a_parser_without_ints_would_accept_step_100():
    text = PATHS["errors_and_skips"].read_text(encoding="utf-8")
    assert '"samples": {"float": 100.0}' in text
    untagged = text.replace('"samples": {"float": 100.0}', '"samples": 100.0')
    found = replay(_rebuild(_js_parse(untagged)))
    assert found and found[0].field == "error"       # step(100) is accepted: not the trace


# ------------------------------------------------------ truncated files, bad files in a batch


@pytest.mark.parametrize("name", ["bl_fixed", "config_errors", "state_dicts"])
def test_a_truncated_list_is_refused_not_replayed_as_ok(tmp_path, name):
    data = TRACES[name].to_dict()
    key = "events" if data["kind"] == "events" else "cases"
    assert data["count"] == len(data[key])
    data[key] = data[key][:-2]          # still valid JSON, every kept event still agrees
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{key}: the file holds .* count says"):
        load_trace(path)
    from hessbatch.traces import main as traces_main
    assert traces_main([str(path)]) == 1


def test_the_command_reports_a_malformed_file_by_name_and_replays_the_others(tmp_path, capsys):
    from hessbatch.traces import main as traces_main

    good = tmp_path / "good.json"
    good.write_text(json.dumps(TRACES["bl_fixed"].to_dict()))
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "hessbatch.trace", "version": 2, ')
    missing = tmp_path / "missing.json"
    assert traces_main([str(broken), str(missing), str(good)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(str(broken) in ln and "error:" in ln and "not valid JSON" in ln for ln in out)
    assert any(str(missing) in ln and "error:" in ln for ln in out)
    assert any(str(good) in ln and ln.rstrip().endswith("ok") for ln in out)
    assert traces_main([str(good)]) == 0


def test_copy_to_checks_the_folder_and_replaces_old_copies_whole(tmp_path, capsys):
    from hessbatch.traces import main as traces_main

    (tmp_path / "FILE").write_text("x")
    assert traces_main(["--copy-to", ""]) == 2
    assert traces_main(["--copy-to", str(tmp_path / "FILE")]) == 2
    err = capsys.readouterr().err
    assert "--copy-to is empty" in err and "is a file, not a folder" in err
    out = tmp_path / "vendored"
    out.mkdir()
    (out / "bl_fixed.json").write_text("an old, truncated cop")
    assert traces_main(["--copy-to", str(out)]) == 0
    assert load_trace(out / "bl_fixed.json").to_dict() == TRACES["bl_fixed"].to_dict()
    assert not list(out.glob("*.tmp"))


# ------------------------------------------------- bad files on the command line, random scenarios


def test_the_command_reports_a_bad_config_or_a_string_samples_in_one_line(tmp_path, capsys):
    """issue 24 item 6: alpha = 1 or a string ``samples`` with adv_ranges printed a traceback
    and stopped; now one line names the file, the field and the problem, the others replay."""
    from hessbatch.traces import main as traces_main

    data = TRACES["abs_growth_by_drop"].to_dict()
    data["config"]["alpha"] = 1.0
    alpha = tmp_path / "a_alpha.json"
    alpha.write_text(json.dumps(data))
    data = TRACES["abs_growth_by_drop"].to_dict()
    data["events"][0]["samples"] = "100"
    samples = tmp_path / "b_samples.json"
    samples.write_text(json.dumps(data))
    data = TRACES["spec_corners"].to_dict()
    assert data["events"][0]["samples"] is None and "adv_ranges" in data["events"][0]
    null = tmp_path / "c_null.json"             # samples null with adv_ranges: replays
    null.write_text(json.dumps(data))
    good = tmp_path / "d_good.json"
    good.write_text(json.dumps(TRACES["bl_fixed"].to_dict()))
    assert traces_main([str(alpha), str(samples), str(null), str(good)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4, lines
    assert "a_alpha.json" in lines[0] and "config.alpha:" in lines[0] and "> 1" in lines[0]
    assert "b_samples.json" in lines[1] and "events[0].samples:" in lines[1]
    assert lines[2].startswith(str(null)) and lines[2].endswith(" ok")
    assert lines[3].startswith(str(good)) and lines[3].endswith(" ok")


def test_a_replay_error_is_one_line_too(tmp_path, capsys, monkeypatch):
    from hessbatch import traces as traces_mod

    def broken(*args, **kw):
        raise TypeError("boom")
    monkeypatch.setattr(traces_mod, "replay", broken)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(TRACES["bl_fixed"].to_dict()))
    assert traces_mod.main([str(good), str(good)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.endswith("error: boom") for line in lines)


def test_random_scenarios_are_seeded_replay_and_reach_every_kind_of_event(tmp_path, capsys):
    from hessbatch.traces import main as traces_main, random_trace

    assert trace_to_json(random_trace(7)) == trace_to_json(random_trace(7))   # same seed
    assert trace_to_json(random_trace(7)) != trace_to_json(random_trace(8))
    seen = set()
    for seed in range(40):
        trace = random_trace(seed)
        assert replay(trace) == [] and check_language_neutral(trace.to_dict()) == []
        seen |= {(e["event"], e.get("error", {}).get("kind"), e.get("lower_bound", False))
                 for e in trace.events}
    for wanted in [("step", None, False), ("eigenvalue", None, True),
                   ("eigenvalue", "value", True), ("skip_eigenvalue", None, False),
                   ("save_load", None, False), ("step", "type", False),
                   ("epoch_end", "protocol", False)]:
        assert wanted in seen, wanted
    assert traces_main(["--random", "3", "--seed", "5", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["random_5.json", "random_6.json", "random_7.json"]
    assert (tmp_path / "random_7.json").read_text() == trace_to_json(random_trace(7))
    capsys.readouterr()
    assert traces_main([str(p) for p in sorted(tmp_path.iterdir())]) == 0
    with pytest.raises(SystemExit):
        traces_main(["--random", "3"])               # no --out: an error naming it
    assert "--out" in capsys.readouterr().err


def test_issue_20_traces_by_hand():
    """The key decisions of the traces added for issue 20, recomputed here by hand."""
    t = TRACES["lr_range_boundaries"]
    eta = t.config["lr"]
    assert ((eta * 200) / 100) * 200 <= sys.float_info.max / 8
    nxt = math.nextafter(eta, math.inf)
    assert not ((nxt * 200) / 100) * 200 <= sys.float_info.max / 8
    refused = [c for c in TRACES["config_errors"].cases if c["config"].get("lr") == nxt]
    assert len(refused) == 1 and refused[0]["config"]["max_batch_size"] == 200
    assert refused[0]["error"] == {"kind": "value", "field": "lr"}
    grown = after(t, "drop: B = B_max")["decision"]
    assert grown["batch_size"] == 200 and grown["lr"] == (eta * 200) / 100
    assert math.isfinite(grown["lr"])

    t = TRACES["lr_floor_sequential"]
    eta, rho = t.config["lr"], t.config["lr_decay_factor"]
    assert (eta * rho) * rho >= sys.float_info.min > eta * rho ** 2   # pow would refuse it
    assert t.events[-1]["decision"]["lr"] == (eta * rho) * rho
    assert TRACES["lr_without_growth"].events[-1]["decision"]["lr"] == sys.float_info.max

    t = TRACES["adv_blocks_capped"]
    assert after(t, "k = 110")["adv_ranges"] == [[0, 29], [100, 110]]
    assert after(t, "k = 20")["adv_ranges"] == [[0, 20]]
    assert after(t, "B = 120: [0, 29)")["adv_ranges"] == [[0, 29], [100, 120]]

    t = TRACES["spec_corners"]
    first = after(t, "samples null")
    assert first["samples"] is None and first["decision"]["samples_seen"] == 100
    assert [after(t, n)["error"] for n in ("float above B", "float below 1")] == \
        [{"kind": "type", "field": "samples"}] * 2
    assert t.initial["decision"]["adv_fraction"] == 0.0          # tau = 0: no adversary
    assert after(t, "lr * 1.0")["decision"]["lr"] == 0.1          # rho = 1

    t = TRACES["negative_zero_gamma"]
    stop = after(t, "no stop")
    assert math.copysign(1, stop["state"]["adv_fraction"]) == -1
    assert "adversary" not in stop["state"]["reason"]
    assert after(t, "the loaded state is finished")["error"] == {"kind": "protocol",
                                                                 "field": None}

    t = TRACES["integer_range"]
    assert after(t, "still in range")["decision"]["samples_seen"] == 2 ** 53
    assert after(t, "out of range")["error"] == {"kind": "value", "field": "samples"}
