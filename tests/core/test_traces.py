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
from hessbatch import (
    Scheduler,
    SchedulerConfig,
    decide,
    init,
    on_eigenvalue,
    on_epoch_end,
    on_skip_eigenvalue,
    on_step,
)
from hessbatch import _make_traces, _scheduler
from hessbatch.traces import (
    Mismatch,
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
    "errors_and_skips.json", "defaults.json", "config_errors.json"}
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


class _PureScheduler:
    """A second implementation of the protocol on the pure functions: a stand-in 'port'."""

    def __init__(self, cfg):
        self.cfg, self.st = cfg, init(cfg)

    decision = property(lambda self: decide(self.cfg, self.st))

    def step(self, n):
        self.st = on_step(self.cfg, self.st, n)

    def eigenvalue(self, lam):
        self.st = on_eigenvalue(self.cfg, self.st, lam)

    def skip_eigenvalue(self):
        self.st = on_skip_eigenvalue(self.cfg, self.st)

    def end_epoch(self):
        self.st = on_epoch_end(self.cfg, self.st)

    def state_dict(self):
        return {"format": hessbatch.STATE_FORMAT, "version": hessbatch.STATE_VERSION,
                "config": self.cfg.to_dict(), "state": self.st.to_dict()}

    def load_state_dict(self, data):
        sch = Scheduler(self.cfg)
        sch.load_state_dict(data)
        self.st = sch.state


@pytest.mark.parametrize("trace", EVENT_TRACES, ids=lambda t: t.name)
def test_pure_functions_replay_every_trace(trace):
    assert replay(trace, factory=_PureScheduler) == []


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
    _scheduler.SchedulerConfig.__post_init__]


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
                   "epoch end: gg: lr decays", "epoch end: adversary stops"]:
        assert wanted in reasons, wanted
    methods = {t.config["method"] for t in EVENT_TRACES}
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
            assert ev["decision"]["samples_seen"] == prev["decision"]["samples_seen"] + \
                ev["samples"]
            assert ev["decision"]["updates"] == prev["decision"]["updates"] + 1
        prev = ev
    # the state and the decision tell the same story
    for ev in trace.events:
        d, s = ev["decision"], ev["state"]
        for key in ("batch_size", "epoch", "samples_seen", "updates", "eigenvalue_due",
                    "reason"):
            assert d[key] == s[key]
        assert d["accumulation_steps"] * d["micro_batch_size"] == d["batch_size"]


def test_config_error_cases_name_the_field():
    trace = TRACES["config_errors"]
    # the valid base config: for each field, the value most cases share
    fields = {k for case in trace.cases for k in case["config"]}
    base = {k: Counter(json.dumps(c["config"].get(k)) for c in trace.cases).most_common(1)[0][0]
            for k in fields}
    SchedulerConfig.from_dict({k: json.loads(v) for k, v in base.items() if k != "colour"})
    for case in trace.cases:
        changed = [k for k in fields if json.dumps(case["config"].get(k)) != base[k]]
        named = " ".join(case["error"]["mentions"])
        assert len(changed) <= 2 and changed, changed
        assert all(k in named for k in changed), (changed, named)
        assert case["error"]["kind"] in ("value", "type")


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
    assert d["lr"] == pytest.approx(0.2, **approx) and d["finished"]


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
    assert len(errors) == 18
    ev = after(t, "an int is a real number")
    assert (ev["state"]["lam_ref"], ev["state"]["patience_count"]) == (8.0, 1)
    assert isinstance(ev["state"]["lam_ref"], float)
    ev = after(t, "skipped: no count")
    assert (ev["decision"]["batch_size"], ev["state"]["patience_count"]) == (100, 1)
    d = after(t, "0 <= 8 / 2")["decision"]
    assert (d["batch_size"], d["lr"]) == (200, pytest.approx(0.2, **approx))
    assert [e["value"] for e in errors if e["event"] == "eigenvalue" and
            e["error"]["kind"] == "value"] == ["NaN", "Infinity", "-Infinity", -0.001]


def test_hand_defaults():
    t = TRACES["defaults"]
    assert t.config["micro_batch_size"] is None and "patience" not in t.config
    d = t.initial["decision"]
    assert (d["micro_batch_size"], d["adv_fraction"], d["adv_count"]) == (128, 0.2, 25)
    assert (d["adv_eps"], d["lr"]) == (0.005, 0.05)
    assert after(t, "first: reference")["decision"]["samples_seen"] == 256   # n = one epoch
    d = after(t, "drop: B = 256")["decision"]
    assert (d["batch_size"], d["accumulation_steps"], d["adv_fraction"], d["adv_count"]) == \
        (256, 2, 0.1, 25)
    assert d["lr"] == pytest.approx(0.1, **approx)
    assert after(t, "adversary stops")["decision"]["adv_fraction"] == 0.0
    assert t.events[-1]["decision"]["batch_size"] == 512


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
    data["events"][6]["error"] = {"kind": "value", "mentions": []}   # a good step
    found = replay(data)
    assert [(m.index, m.field) for m in found] == [(0, "error"), (6, "error")]
    assert found[0].got.startswith("SchedulerError: eigenvalue: none is due")
    assert found[1].got is None
    data = TRACES["errors_and_skips"].to_dict()
    data["events"][10]["error"]["mentions"] = ["a message the core never writes"]
    assert [(m.index, m.field) for m in replay(data)] == [(10, "error")]
    data["events"][10]["error"] = {"kind": "type", "mentions": []}   # ValueError != type
    assert [(m.index, m.field) for m in replay(data)] == [(10, "error")]
    data = TRACES["config_errors"].to_dict()
    data["cases"][0]["config"]["method"] = "abs"          # a valid config where one must fail
    assert [(m.index, m.event, m.got) for m in replay(data)] == [(0, "config", None)]


# ----------------------------------------------------------------------------- bad trace files


GOOD = json.dumps(TRACES["bl_fixed"].to_dict())


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(format="something"), "format: must be 'hessbatch.trace'"),
    (lambda d: d.update(version=1), "version: 1 is not supported"),
    (lambda d: d.update(version=3), "version: 3 is not supported"),
    (lambda d: d.update(kind="film"), "kind: must be 'events' or 'config_errors'"),
    (lambda d: d.pop("config"), r"missing keys \['config'\]"),
    (lambda d: d.update(colour=1), r"unknown keys \['colour'\]"),
    (lambda d: d.update(name=""), "name: must be a non-empty string"),
    (lambda d: d.update(events=[]), "events: must be a non-empty list"),
    (lambda d: d["events"][2].update(event="jump"), r"events\[2\]: 'event' must be one of"),
    (lambda d: d["events"][0].pop("samples"), r"events\[0\]: a step event needs \['samples'\]"),
    (lambda d: d["events"][0].update(value=1.0), r"events\[0\]: a step event needs"),
    (lambda d: d["events"][1].pop("decision"), r"events\[1\]: needs a non-empty 'decision'"),
    (lambda d: d["events"][1].update(error={"kind": "oops"}), r"events\[1\].error: must be"),
    (lambda d: d["events"][1].update(error={"kind": "value", "mentions": "x"}),
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
    rec.eigenvalue(float("-inf"), error=("value", "finite"))
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


# ------------------------------------------------------ truncated files, bad files in a batch


@pytest.mark.parametrize("name", ["bl_fixed", "config_errors"])
def test_a_truncated_list_is_refused_not_replayed_as_ok(tmp_path, name):
    data = TRACES[name].to_dict()
    key = "cases" if data["kind"] == "config_errors" else "events"
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
