"""Write the conformance traces in ``hessbatch/traces/`` from hand-written event scripts.

Run ``python -m hessbatch._make_traces`` after a deliberate change to the scheduler core, then
review the diff of the JSON files (one event per line) and the hand-computed assertions in
tests/core/test_traces.py, which pin the key decisions of each trace independently of the core.
``python -m hessbatch._make_traces --check`` only compares (exit code 1 if a file is stale).

Each script below drives :class:`hessbatch.traces.TraceRecorder`; the expectations written to
the files are the reference core's output, which is why the tests check the important ones by
hand as well. Numbers are small on purpose (B0 = 100, a few steps per epoch), so every decision
can be recomputed on paper.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Iterable, Sequence

from .traces import Trace, TraceRecorder, config_error_trace, state_dict_trace, trace_to_json

NAN, INF = float("nan"), float("inf")


def _config(method: str, **kw) -> dict:
    # every field spelled out, so a port never depends on Python's defaults
    base = dict(method=method, lr=0.1, batch_size=100, samples_per_epoch=200, epochs=6,
                max_batch_size=800, micro_batch_size=100, lr_decay_epochs=[],
                lr_decay_factor=0.1, alpha=2.0, beta=2.0, check_every=None, patience=10,
                adv_eps=0.005, adv_fraction=0.2, adv_decay=2.0, adv_stop=0.5,
                warmup_epochs=5.0, adv_rule="blocks")
    base.update(kw)
    if base["check_every"] is None:
        base["check_every"] = base["samples_per_epoch"]
    return base


def _epoch(rec: TraceRecorder, eigenvalues: Sequence[float] = (), *,
           notes: Sequence[str] = (), end_note: str | None = None) -> None:
    """Steps until an epoch's samples are used (a short last batch if needed), then the end.

    Each due check takes the next value of ``eigenvalues`` (with the matching note).
    """
    values, notes = list(eigenvalues), list(notes)
    seen = 0
    n_per_epoch = rec.config.samples_per_epoch
    while seen < n_per_epoch:
        n = min(rec.decision.batch_size, n_per_epoch - seen)
        d = rec.step(n)
        seen += n
        if d.eigenvalue_due:
            if not values:
                raise AssertionError(f"{rec.name}: a check is due and the script has no value")
            rec.eigenvalue(values.pop(0), note=notes.pop(0) if notes else None)
    if values:
        raise AssertionError(f"{rec.name}: unused eigenvalues {values}")
    rec.end_epoch(note=end_note)


# --------------------------------------------------------------------------------------------
# the scripts: one function per trace file


def abs_growth_by_drop() -> Trace:
    rec = TraceRecorder(
        "abs_growth_by_drop",
        "ABS, B0 = 100 up to B_max = 800, 4 steps per epoch at B0: the first eigenvalue only "
        "sets the reference; a drop by just less than alpha counts towards the patience; a drop "
        "by exactly alpha (lam = lam_ref / alpha) grows B and lr by beta; growth by drop until "
        "B_max, where checks stop; a short last batch at B_max; events after the last epoch.",
        _config("abs", samples_per_epoch=400, epochs=6),
        covers=["first eigenvalue", "growth by drop", "drop boundary lam == lam_ref / alpha",
                "B_max cap", "no eigenvalue at B_max", "short last batch", "finished"])
    _epoch(rec, [8.0], notes=["first eigenvalue: lam_ref = 8, d = 1, no growth"])
    _epoch(rec, [4.000001], notes=["4.000001 > 8 / 2: no drop, d = 2"])
    _epoch(rec, [4.0], notes=["4.0 <= 8 / 2: grow, B = 200, lr = 0.2, lam_ref = 4, d = 0"])
    _epoch(rec, [1.0], notes=["1.0 <= 4 / 2: grow, B = 400, lr = 0.4"])
    _epoch(rec, [0.5], notes=["0.5 <= 1 / 2: grow to B_max = 800, lr = 0.8; no more checks"])
    rec.step(400, note="B = 800 > 400 samples per epoch: one short batch, no check due")
    rec.end_epoch(note="sixth and last epoch: finished")
    rec.step(error=("protocol",))
    rec.end_epoch(error=("protocol",))
    return rec.trace()


def abs_growth_by_patience() -> Trace:
    rec = TraceRecorder(
        "abs_growth_by_patience",
        "ABS with patience kappa = 3: after the first eigenvalue (d = 1) two checks without a "
        "drop reach d = 3 and grow B while keeping lam_ref; the next drop is measured against "
        "the old reference. A save/load round trip while a check is due.",
        _config("abs", max_batch_size=400, patience=3, epochs=6),
        covers=["first eigenvalue", "growth by patience", "patience keeps lam_ref",
                "growth by drop", "B_max cap", "save/load"])
    _epoch(rec, [8.0], notes=["first: lam_ref = 8, d = 1"])
    _epoch(rec, [7.0], notes=["no drop: d = 2"])
    _epoch(rec, [7.5], notes=["no drop: d = 3 >= kappa: grow to 200, lr = 0.2, lam_ref stays 8"])
    d = rec.step(note="one step of B = 200 is a whole epoch: check due")
    assert d.eigenvalue_due
    rec.save_load(note="state saved and loaded while the check is due")
    rec.eigenvalue(4.5, note="4.5 > 8 / 2: no drop (against the kept reference), d = 1")
    rec.end_epoch()
    _epoch(rec, [4.0], notes=["4.0 <= 8 / 2: grow to B_max = 400, lr = 0.4"])
    _epoch(rec, [], end_note="at B_max: no check, finished")
    return rec.trace()


def absa_cap_at_max_batch() -> Trace:
    rec = TraceRecorder(
        "absa_cap_at_max_batch",
        "ABSA, B0 = 100, B_max = 300 (not a power-of-two multiple): the second growth is "
        "capped, min(400, 300) = 300, lr scaled by 300 / 200; at B_max the adversary is off "
        "and no eigenvalue is asked for again.",
        _config("absa", max_batch_size=300, epochs=5, adv_stop=1.0, adv_eps=0.01),
        covers=["B_max cap (min)", "adversary off at B_max", "no eigenvalue at B_max",
                "adversarial decay"])
    _epoch(rec, [8.0], notes=["first: reference; gamma = 0.2, 20 adversarial samples"])
    _epoch(rec, [1.0], notes=["drop: B = 200, lr = 0.2, gamma = 0.1, still 20 samples"])
    _epoch(rec, [0.4], notes=["drop: B = min(400, 300) = 300, lr = 0.2 * 300 / 200, gamma = 0"])
    _epoch(rec, [], end_note="at B_max: no check")
    _epoch(rec, [], end_note="finished")
    return rec.trace()


def absa_adversary_decay_and_stop() -> Trace:
    rec = TraceRecorder(
        "absa_adversary_decay_and_stop",
        "ABSA with adv_rule 'batch', B0 = 20, gamma0 = 0.1, omega = 4, tau = 0.5 of 6 epochs: "
        "gamma is divided by "
        "omega at each growth; at gamma * B = 1 one sample is adversarial, below 1 none (gamma "
        "still > 0: the adversary vanishes before it stops); it stops at the end of epoch 3.",
        _config("absa", batch_size=20, micro_batch_size=20, max_batch_size=640,
                samples_per_epoch=40, epochs=6, adv_fraction=0.1, adv_decay=4.0, adv_stop=0.5,
                adv_eps=0.03, adv_rule="batch"),
        covers=["adversarial count floor", "adversarial decay", "adversarial vanishing",
                "adversary stop at tau", "growth by drop", "save/load"])
    _epoch(rec, [8.0], notes=["first: reference; 0.1 * 20 = 2 adversarial samples"])
    _epoch(rec, [2.0], notes=["drop: B = 40, gamma = 0.025, 0.025 * 40 = 1: one sample"])
    _epoch(rec, [0.5], notes=["drop: B = 80, gamma = 0.00625, 0.00625 * 80 = 0.5 < 1: none"],
           end_note="epoch 3 >= 0.5 * 6: the adversary stops (gamma = 0)")
    rec.save_load(note="state saved and loaded between epochs")
    _epoch(rec, [0.2], notes=["drop: B = 160, gamma stays 0"])
    _epoch(rec, [0.15], notes=["no drop: d = 1"])
    _epoch(rec, [0.1], notes=["drop: B = 320"], end_note="finished")
    return rec.trace()


def rounding_and_check_period() -> Trace:
    rec = TraceRecorder(
        "rounding_and_check_period",
        "ABSA (adv_rule 'batch') with beta = 1.5, micro-batch 20 and a check every 150 samples "
        "(not a multiple of "
        "B, SVHN-like): growth is rounded up to a multiple of the micro-batch (150 -> 160, 240,"
        " 360), accumulation steps follow; gamma = 0.29 with omega = 1 gives floor(0.29 * 100) "
        "= 29 although 0.29 * 100 is 28.999999999999996 in binary; short last batches; two "
        "checks within one epoch; a skipped check.",
        _config("absa", micro_batch_size=20, max_batch_size=1000, beta=1.5,
                samples_per_epoch=300, check_every=150, epochs=4, adv_fraction=0.29,
                adv_decay=1.0, adv_stop=0.5, adv_rule="batch"),
        covers=["micro-batch rounding", "accumulation steps", "adversarial count floor",
                "check period in samples", "short last batch", "skip", "drop boundary"])
    rec.step(note="s = 100 < 150: no check")
    rec.step(note="s = 200 crosses 150: check due")
    rec.eigenvalue(8.0, note="first: reference")
    rec.step(note="s = 300 crosses 300: check due")
    rec.eigenvalue(2.0, note="drop: B = round_up(1.5 * 100, 20) = 160, lr = 0.16, 46 adversarial")
    rec.end_epoch()
    rec.step(note="s = 460 crosses 450")
    rec.eigenvalue(1.0, note="drop: B = 240 (12 micro-batches), floor(0.29 * 240) = 69")
    rec.step(140, note="short last batch: s = 600 crosses 600")
    rec.eigenvalue(0.9, note="no drop: d = 1")
    rec.end_epoch(note="epoch 2 >= 0.5 * 4: adversary stops")
    rec.step(note="s = 840 crosses 750")
    rec.skip_eigenvalue(note="skipped: d stays 1, nothing changes")
    rec.step(60, note="short last batch: s = 900 crosses 900")
    rec.eigenvalue(0.5, note="0.5 <= 1.0 / 2: grow, B = 360")
    rec.end_epoch()
    _epoch(rec, [0.4], notes=["no drop: d = 1"], end_note="finished")
    return rec.trace()


def growth_rounding_tolerance() -> Trace:
    rec = TraceRecorder(
        "growth_rounding_tolerance",
        "ABS with beta = 1.1 and micro-batch 10, patience 1 (every check after the first "
        "grows): 1.1 * 100 / 10 is 11.000000000000002 in binary, and the 1e-9 tolerance of "
        "round_up makes it 110, not 120; then 121 -> 130, 143 -> 150, 165 -> 170, 187 -> 190, "
        "209 -> min(210, 200) = B_max. eta = 0.3 pins the order of lr' = (lr * B') / B: "
        "(0.39 * 150) / 130 = 0.45, where 0.39 * (150 / 130) would be 0.44999999999999996.",
        _config("abs", lr=0.3, micro_batch_size=10, max_batch_size=200, beta=1.1, patience=1,
                samples_per_epoch=200, epochs=8),
        covers=["growth rounding tolerance", "growth by patience", "B_max cap (min)"])
    _epoch(rec, [8.0], notes=["first: reference"])
    for b in (110, 130, 150, 170, 190):
        _epoch(rec, [8.0], notes=[f"patience 1: grow to B = {b}"])
    _epoch(rec, [8.0], notes=["patience 1: grow to B = min(210, 200) = 200"])
    _epoch(rec, [], end_note="at B_max: finished")
    return rec.trace()


def lr_decay_epochs() -> Trace:
    rec = TraceRecorder(
        "lr_decay_epochs",
        "ABS with lr decay rho = 0.2 at the ends of epochs 1 and 3: decay multiplies lr, a "
        "growth in between scales the decayed lr with B (lr / B unchanged by the growth).",
        _config("abs", max_batch_size=400, epochs=4, lr_decay_epochs=[1, 3],
                lr_decay_factor=0.2),
        covers=["lr decay epochs", "growth by drop after a decay"])
    _epoch(rec, [8.0], notes=["first: reference"], end_note="epoch 1 in A: lr = 0.1 * 0.2")
    _epoch(rec, [2.0], notes=["drop: B = 200, lr = 0.02 * 2"])
    _epoch(rec, [1.0], notes=["drop: B = 400 = B_max, lr = 0.04 * 2"],
           end_note="epoch 3 in A: lr = 0.08 * 0.2")
    _epoch(rec, [], end_note="finished")
    return rec.trace()


def bl_fixed() -> Trace:
    rec = TraceRecorder(
        "bl_fixed",
        "BL: fixed B0 = 100 and lr decayed by rho = 0.1 at epochs 2 and 3; no eigenvalue is "
        "ever asked for and one reported anyway is refused. max_batch_size is null: it "
        "defaults to B0.",
        _config("bl", max_batch_size=None, epochs=3, lr_decay_epochs=[2, 3]),
        covers=["bl", "lr decay epochs", "no eigenvalue for baselines"])
    _epoch(rec)
    rec.eigenvalue(1.0, error=("protocol",))
    _epoch(rec, end_note="epoch 2 in A: lr = 0.01")
    _epoch(rec, end_note="epoch 3 in A: lr = 0.001; finished")
    return rec.trace()


def fb_warmup() -> Trace:
    rec = TraceRecorder(
        "fb_warmup",
        "FB: B = B_max = 400 from the start (4 micro-batches of 100), lr = eta * 400 / 100 "
        "= 0.4 reached by a linear warm-up from eta = 0.1 over 2 epochs of 1000 samples, "
        "measured in samples seen (short last batches count their samples); decay at epoch 3.",
        _config("fb", max_batch_size=400, samples_per_epoch=1000, epochs=4,
                lr_decay_epochs=[3], lr_decay_factor=0.1, warmup_epochs=2.0),
        covers=["fb warm-up", "fb lr scaling", "accumulation steps", "short last batch",
                "lr decay epochs"])
    _epoch(rec, end_note="1000 of 2000 warm-up samples: lr = 0.1 + 0.3 * 0.5")
    _epoch(rec, end_note="warm-up done: lr = 0.4")
    _epoch(rec, end_note="epoch 3 in A: lr = 0.04")
    _epoch(rec, end_note="finished")
    return rec.trace()


def gg_schedule() -> Trace:
    rec = TraceRecorder(
        "gg_schedule",
        "GG: at each decay epoch (1, 2, 3; rho = 0.2) the batch grows by 1 / rho instead of "
        "the lr decaying: 100 -> 500, then capped at B_max = 1000 (the lr takes the rest of "
        "the decay: lr *= 0.2 * 1000 / 500), then the lr decays by rho.",
        _config("gg", max_batch_size=1000, samples_per_epoch=1000, epochs=4,
                lr_decay_epochs=[1, 2, 3], lr_decay_factor=0.2),
        covers=["gg schedule", "gg capped at B_max", "gg lr decay past B_max"])
    _epoch(rec, end_note="B = 100 / 0.2 = 500, lr unchanged (up to rounding)")
    _epoch(rec, end_note="B = min(2500, 1000), lr = 0.1 * 0.2 * 1000 / 500 = 0.04")
    _epoch(rec, end_note="at B_max: lr = 0.04 * 0.2")
    _epoch(rec, end_note="finished")
    return rec.trace()


def errors_and_skips() -> Trace:
    rec = TraceRecorder(
        "errors_and_skips",
        "Events out of order and bad values, each refused without changing anything; with "
        "patience 1 any counted check would grow B, so the skipped check and the refused "
        "eigenvalues are seen not to count; an eigenvalue of 0 is a drop. Argument types are "
        "Python's: a bool is not an int, a whole float is not an int (step(100.0) is written "
        "{\"float\": 100.0}), a string is not a number; an int eigenvalue is a real number.",
        _config("abs", patience=1, epochs=3),
        covers=["errors", "events out of order", "bad eigenvalue changes nothing", "skip",
                "zero eigenvalue", "save/load", "finished", "argument types",
                "last_eigenvalue kept by a refusal or a skip"])
    rec.eigenvalue(1.0, error=("protocol",), note="none is due")
    rec.skip_eigenvalue(error=("protocol",), note="none is due")
    rec.end_epoch(error=("protocol",), note="no step since the last epoch end")
    rec.step(0, error=("value", "samples"), note="k < 1")
    rec.step(101, error=("value", "samples"), note="k > B")
    rec.step(1.5, error=("type", "samples"), note="a float")
    rec.step(100.0, error=("type", "samples"), note="a whole float is not an int")
    rec.step(True, error=("type", "samples"), note="a bool is not an int")
    rec.step("100", error=("type", "samples"), note="a string is not an int")
    rec.step()
    rec.step(note="check due")
    rec.step(error=("protocol",), note="an eigenvalue is due")
    rec.end_epoch(error=("protocol",), note="an eigenvalue is due")
    rec.eigenvalue(NAN, error=("value", "eigenvalue"))
    rec.eigenvalue(INF, error=("value", "eigenvalue"))
    rec.eigenvalue(-INF, error=("value", "eigenvalue"))
    rec.eigenvalue(-0.001, error=("value", "eigenvalue"))
    rec.eigenvalue("3.0", error=("type", "eigenvalue"), note="a string is not a number")
    rec.eigenvalue(True, error=("type", "eigenvalue"), note="a bool is not a number")
    rec.eigenvalue(None, error=("type", "eigenvalue"), note="null is not a number")
    rec.save_load(note="round trip while due, after refused events")
    rec.eigenvalue(8, note="an int is a real number: first, reference 8.0")
    rec.eigenvalue(8.0, error=("protocol",), note="answered already")
    rec.end_epoch()
    rec.step()
    rec.step(note="check due")
    rec.eigenvalue(NAN, error=("value", "eigenvalue"), note="last_eigenvalue stays 8.0")
    rec.skip_eigenvalue(note="skipped: no count, no growth although patience is 1")
    rec.end_epoch()
    rec.step()
    rec.step(note="check due")
    rec.eigenvalue(0.0, note="0 <= 8 / 2: grow, B = 200")
    rec.end_epoch(note="finished")
    rec.step(error=("protocol",), note="all epochs have ended")
    rec.eigenvalue(1.0, error=("protocol",), note="none is due after the end")
    rec.skip_eigenvalue(error=("protocol",), note="none is due after the end")
    rec.end_epoch(error=("protocol",), note="all epochs have ended, again")
    return rec.trace()


def defaults() -> Trace:
    rec = TraceRecorder(
        "defaults",
        "Only the required fields and B_max are given, micro_batch_size and check_every are "
        "null, the method is written 'ABSA' (names are case-insensitive, decided lower-case): "
        "a port must fill in the defaults (b_micro = B0, n = one epoch, kappa = 10, "
        "gamma0 = 0.2, omega = 2, tau = 0.5, rho = 0.1, no decay epochs) exactly as hessbatch.",
        dict(method="ABSA", lr=0.05, batch_size=128, samples_per_epoch=256, epochs=4,
             max_batch_size=1024, micro_batch_size=None, check_every=None),
        covers=["default config values", "null fields"])
    _epoch(rec, [8.0], notes=["first: reference; 25 adversarial samples (floor(0.2 * 128))"])
    _epoch(rec, [3.0], notes=["drop: B = 256, lr = 0.1, gamma = 0.1"],
           end_note="epoch 2 >= 0.5 * 4: adversary stops")
    _epoch(rec, [2.0], notes=["no drop: d = 1"])
    _epoch(rec, [1.0], notes=["drop: B = 512"], end_note="finished")
    return rec.trace()


def config_errors() -> Trace:
    good = _config("absa", max_batch_size=800, epochs=10, lr_decay_epochs=[3, 6])
    # the field the error must name, exactly (docs/porting.md section 4)
    bad: list[tuple[dict, tuple[str, ...]]] = [
        ({"method": "sgd"}, ("value", "method")),
        ({"method": "ab"}, ("value", "method")),
        ({"method": 1}, ("type", "method")),
        ({"lr": 0.0}, ("value", "lr")),
        ({"lr": -1.0}, ("value", "lr")),
        ({"batch_size": 0}, ("value", "batch_size")),
        ({"batch_size": 100.5}, ("type", "batch_size")),
        ({"batch_size": 100.0}, ("type", "batch_size")),
        ({"samples_per_epoch": 0}, ("value", "samples_per_epoch")),
        ({"epochs": 0}, ("value", "epochs")),
        ({"epochs": True}, ("type", "epochs")),
        ({"max_batch_size": 50}, ("value", "max_batch_size")),
        ({"max_batch_size": 800.0}, ("type", "max_batch_size")),
        ({"micro_batch_size": 30}, ("value", "micro_batch_size")),
        ({"micro_batch_size": 100, "max_batch_size": 850}, ("value", "micro_batch_size")),
        ({"lr_decay_epochs": [6, 3]}, ("value", "lr_decay_epochs")),
        ({"lr_decay_epochs": [3, 3]}, ("value", "lr_decay_epochs")),
        ({"lr_decay_epochs": [0]}, ("value", "lr_decay_epochs")),
        ({"lr_decay_epochs": [11]}, ("value", "lr_decay_epochs")),
        ({"lr_decay_epochs": [1.0]}, ("type", "lr_decay_epochs")),
        ({"lr_decay_epochs": 3}, ("type", "lr_decay_epochs")),
        ({"lr_decay_epochs": "3,6"}, ("type", "lr_decay_epochs")),
        ({"lr_decay_epochs": None}, ("type", "lr_decay_epochs")),
        ({"lr_decay_factor": 0.0}, ("value", "lr_decay_factor")),
        ({"lr_decay_factor": 1.5}, ("value", "lr_decay_factor")),
        ({"alpha": 1.0}, ("value", "alpha")),
        ({"beta": 1.0}, ("value", "beta")),
        ({"check_every": 0}, ("value", "check_every")),
        ({"patience": 0}, ("value", "patience")),
        ({"patience": True}, ("type", "patience")),
        ({"patience": 3.0}, ("type", "patience")),
        ({"adv_eps": -0.1}, ("value", "adv_eps")),
        ({"adv_fraction": 1.0}, ("value", "adv_fraction")),
        ({"adv_fraction": -0.1}, ("value", "adv_fraction")),
        ({"adv_decay": 0.5}, ("value", "adv_decay")),
        ({"adv_stop": 1.5}, ("value", "adv_stop")),
        ({"warmup_epochs": -1.0}, ("value", "warmup_epochs")),
        ({"adv_rule": "head"}, ("value", "adv_rule")),
        ({"adv_rule": None}, ("type", "adv_rule")),
        ({"lr": 1e308}, ("value", "lr")),
        ({"lr": 5.617791046444737e+304, "max_batch_size": 200}, ("value", "lr")),
        ({"lr": 1e306, "max_batch_size": 200}, ("value", "lr")),
        ({"method": "fb", "lr": 1e306, "max_batch_size": 200}, ("value", "lr")),
        ({"lr": 2.7470047635891377e-306, "lr_decay_factor": 0.3,
          "lr_decay_epochs": [1, 2, 3, 4]}, ("value", "lr")),
        ({"micro_batch_size": 0}, ("value", "micro_batch_size")),
        ({"micro_batch_size": 80}, ("value", "micro_batch_size")),
        ({"adv_eps": INF}, ("value", "adv_eps")),
        ({"adv_decay": INF}, ("value", "adv_decay")),
        ({"warmup_epochs": INF}, ("value", "warmup_epochs")),
        ({"alpha": NAN}, ("value", "alpha")),
        ({"batch_size": 2 ** 70}, ("value", "batch_size")),
        ({"max_batch_size": 2 ** 54}, ("value", "max_batch_size")),
        ({"lr": 1e-300, "lr_decay_factor": 1e-5}, ("value", "lr")),
        ({"alpha": "2"}, ("type", "alpha")),
        ({"lr": True}, ("type", "lr")),
        ({"colour": "red"}, ("value", "config")),
        ({"lr": None}, ("type", "lr")),
        # several bad fields: the first in the check order decides (docs/porting.md)
        ({"lr": -1.0, "batch_size": 100.5}, ("value", "lr")),
        ({"batch_size": 0, "lr": "0.1"}, ("type", "lr")),
        ({"epochs": 0, "samples_per_epoch": 0}, ("value", "samples_per_epoch")),
        ({"adv_rule": "head", "alpha": 0.5}, ("value", "alpha")),
        ({"warmup_epochs": -1.0, "lr": 1e308}, ("value", "warmup_epochs")),
        ({"micro_batch_size": 30, "max_batch_size": 50}, ("value", "max_batch_size")),
        ({"colour": "red", "lr": -1.0}, ("value", "config")),
    ]
    cases = [({**good, **change}, error) for change, error in bad]
    # missing required fields (all named), before any other check
    # the error names the first missing one in table order
    for missing, field in ((("lr",), "lr"), (("method",), "method"),
                           (("epochs", "samples_per_epoch"), "samples_per_epoch")):
        cases.append(({k: v for k, v in good.items() if k not in missing},
                      ("value", field)))
    cases.append(({**{k: v for k, v in good.items() if k != "lr"}, "batch_size": 0},
                  ("value", "lr")))
    return config_error_trace(
        "config_errors",
        "Configs that must be refused at construction, each differing from a valid ABSA "
        "config in one field (or adding an unknown one, or leaving a required one out); "
        "error.field is the field the error must name, exactly (config for unknown fields, "
        "the first missing one in table order for missing ones). With several bad fields the "
        "first in the "
        "check order decides: unknown fields, missing required fields, then the fields in "
        "the order of the config table (type before range), then the reachable-lr checks. "
        "'type' cases are values of the wrong JSON type; a whole float at an int field is "
        "written {\"float\": x}.",
        cases, covers=["bad config", "errors", "check order", "missing required field",
                       "argument types"])


def adv_blocks_rule() -> Trace:
    rec = TraceRecorder(
        "adv_blocks_rule",
        "ABSA with the default adv_rule 'blocks' (the authors' code): B0 = 100, micro-batch 20, "
        "beta = 1.5, gamma0 = 0.29, omega = 2, patience 1. The batch is cut into blocks of B0 "
        "(not of the micro-batch) from its start; the first max(1, floor(gamma * B0 + 1e-9)) "
        "samples of each block are adversarial, all of a last block shorter than that: 29 of "
        "100 (0.29 * 100 is 28.999999999999996 in binary); 14 + 14 of 160; 7 per block of "
        "240 (a short step of 60 takes [0, 7)); 3 per block of 360 (the last block holds 60), "
        "and a step of 300 (B > N) takes the ranges clipped to 300 samples; 1 per block of "
        "540; at 820 gamma * B0 = 0.90625 <= 1: none, while gamma > 0.",
        _config("absa", micro_batch_size=20, max_batch_size=1000, beta=1.5,
                samples_per_epoch=300, check_every=300, epochs=7, adv_fraction=0.29,
                adv_decay=2.0, adv_stop=1.0, patience=1, adv_eps=0.01),
        covers=["adversarial blocks of B0", "adversarial ranges", "short last batch ranges",
                "adversarial count floor", "adversary vanishes (gamma * B0 <= 1)",
                "adversarial decay", "save/load"])
    _epoch(rec, [8.0], notes=["first: reference; [0, 29)"])
    _epoch(rec, [8.0], notes=["patience 1: B = 160, gamma = 0.145: [0, 14) and [100, 114)"])
    _epoch(rec, [8.0], notes=["B = 240, gamma = 0.0725: 7 per block"])
    rec.save_load(note="saved and loaded between epochs")
    _epoch(rec, [8.0], notes=["B = 360, gamma = 0.03625: 3 per block, 4 blocks"])
    _epoch(rec, [8.0], notes=["B = 540, gamma = 0.018125: 1 per block, 6 blocks"])
    _epoch(rec, [8.0], notes=["B = 820, gamma = 0.0090625: gamma * B0 <= 1, none"])
    _epoch(rec, [8.0], notes=["B = min(1230, 1000) = B_max"], end_note="finished")
    return rec.trace()


def adv_rule_thresholds() -> Trace:
    rec = TraceRecorder(
        "adv_rule_thresholds",
        "The 1e-9 of the blocks rule's threshold gamma * B0 > 1 + 1e-9: B0 = 40, gamma0 = "
        "0.035, omega = 1.4: 0.035 * 40 = 1.4 gives 1 per block; after a growth gamma = "
        "0.025 and 0.025 * 40 is 1.0000000000000002 in binary, which is 1: no adversarial "
        "sample (without the tolerance there would be one per block).",
        _config("absa", batch_size=40, micro_batch_size=40, max_batch_size=320,
                samples_per_epoch=80, epochs=4, adv_fraction=0.035, adv_decay=1.4,
                adv_stop=1.0),
        covers=["blocks threshold tolerance"])
    _epoch(rec, [8.0], notes=["first: reference; 1 per block"])
    _epoch(rec, [2.0], notes=["drop: B = 80, gamma * B0 = 1.0000000000000002: none"])
    return rec.trace()


def adv_batch_threshold() -> Trace:
    rec = TraceRecorder(
        "adv_batch_threshold",
        "The 1e-9 of the batch rule's threshold gamma * B >= 1 - 1e-9: B0 = 5, gamma0 = 0.3, "
        "omega = 3: 0.3 * 5 = 1.5 gives 1; after a growth to B = 10, gamma = 0.3 / 3 is "
        "0.09999999999999999 and gamma * B = 0.9999999999999999, which is 1: one sample "
        "(without the tolerance none).",
        _config("absa", batch_size=5, micro_batch_size=5, max_batch_size=40,
                samples_per_epoch=10, epochs=4, adv_fraction=0.3, adv_decay=3.0,
                adv_stop=1.0, adv_rule="batch"),
        covers=["batch threshold tolerance"])
    _epoch(rec, [8.0], notes=["first: reference; 1 sample"])
    _epoch(rec, [2.0], notes=["drop: B = 10, gamma * B = 0.9999999999999999: 1 sample"])
    return rec.trace()


def adv_stop_tolerance() -> Trace:
    rec = TraceRecorder(
        "adv_stop_tolerance",
        "tau = 0.28 of 25 epochs: 0.28 * 25 is 7.000000000000001 in binary; with the 1e-9 of "
        "epoch >= tau * epochs - 1e-9 the adversary stops at the end of epoch 7 (without it, "
        "epoch 8). One step per epoch, no eigenvalue check in reach.",
        _config("absa", samples_per_epoch=100, epochs=25, check_every=1000000, adv_stop=0.28),
        covers=["adversary stop tolerance"])
    for epoch in range(1, 9):
        _epoch(rec, [], end_note="epoch 7 >= 0.28 * 25 - 1e-9: the adversary stops"
               if epoch == 7 else None)
    return rec.trace()


def adv_stop_odd_epochs() -> Trace:
    rec = TraceRecorder(
        "adv_stop_odd_epochs",
        "tau = 0.5 of 5 epochs: the adversary stops at the end of epoch 3 (3 >= 2.5). The "
        "authors' code stops at epoch >= epochs // 2, after epoch 2: for odd epoch counts "
        "hessbatch trains one epoch longer with the adversary (docs/algorithm.md); for even "
        "counts, every experiment of the paper, the two agree.",
        _config("absa", samples_per_epoch=100, epochs=5, check_every=1000000, adv_stop=0.5),
        covers=["adversary stop, odd epochs"])
    for epoch in range(1, 5):
        _epoch(rec, [], end_note="epoch 3 >= 0.5 * 5: the adversary stops"
               if epoch == 3 else None)
    return rec.trace()


def absa_at_max_from_start() -> Trace:
    rec = TraceRecorder(
        "absa_at_max_from_start",
        "ABSA with B0 = B_max = 100: gamma = 0 from the start (step 4's rule applied at "
        "init), no adversarial sample and no eigenvalue check ever.",
        _config("absa", max_batch_size=100, epochs=2),
        covers=["no adversary at start: B0 = B_max"])
    _epoch(rec)
    _epoch(rec, end_note="finished")
    return rec.trace()


def absa_tau_zero() -> Trace:
    rec = TraceRecorder(
        "absa_tau_zero",
        "ABSA with tau = 1e-10 of 2 epochs: tau * epochs = 2e-10 <= 1e-9, so 0 >= tau * "
        "epochs - 1e-9 and gamma = 0 from the start; the eigenvalue checks go on as for ABS.",
        _config("absa", max_batch_size=400, epochs=2, adv_stop=1e-10),
        covers=["no adversary at start: tau * epochs <= 1e-9"])
    _epoch(rec, [8.0], notes=["first: reference"])
    _epoch(rec, [2.0], notes=["drop: B = 200, gamma stays 0"], end_note="finished")
    return rec.trace()


def fb_order_of_operations() -> Trace:
    rec = TraceRecorder(
        "fb_order_of_operations",
        "FB with eta = 0.1, B0 = 10, B_max = 70, a warm-up of 0.7 epochs of 350 samples: the "
        "peak lr is (eta * B_max) / B0 = 0.7 (eta * (B_max / B0) would be "
        "0.7000000000000001), and each warm-up lr is eta + (peak - eta) * min(1.0, s / "
        "(warmup_epochs * N)), evaluated in that order.",
        _config("fb", lr=0.1, batch_size=10, micro_batch_size=10, max_batch_size=70,
                samples_per_epoch=350, epochs=2, warmup_epochs=0.7),
        covers=["fb initial lr order", "fb warm-up order"])
    _epoch(rec)
    _epoch(rec, end_note="finished")
    return rec.trace()


def fb_without_warmup() -> Trace:
    rec = TraceRecorder(
        "fb_without_warmup",
        "FB with warmup_epochs = 0: the decided lr is the peak (eta * B_max) / B0 from the "
        "first step; the warm-up formula is not evaluated (it would divide by 0).",
        _config("fb", max_batch_size=400, samples_per_epoch=800, epochs=2, warmup_epochs=0.0),
        covers=["fb warmup_epochs = 0 guard"])
    _epoch(rec)
    _epoch(rec, end_note="finished")
    return rec.trace()


def negative_zero() -> Trace:
    rec = TraceRecorder(
        "negative_zero",
        "-0.0 is a double of its own: adv_eps = -0.0 is >= 0 and is decided as -0.0 while "
        "there are adversarial samples (0.0 when none); an eigenvalue of -0.0 is >= 0, is "
        "accepted and kept as -0.0 (lam_ref, last_eigenvalue), also through a state dict "
        "saved as JSON text; 0.0 <= -0.0 / 2 is a drop.",
        _config("absa", max_batch_size=400, epochs=3, adv_eps=-0.0, adv_stop=0.5),
        covers=["negative zero"])
    _epoch(rec, [-0.0], notes=["first: reference -0.0"])
    d = rec.step()
    assert d.eigenvalue_due is False
    rec.save_load(note="-0.0 survives the JSON text")
    rec.step(note="check due")
    rec.eigenvalue(0.0, note="0.0 <= -0.0 / 2: grow, B = 200")
    rec.end_epoch(note="epoch 2 >= 0.5 * 3: the adversary stops, adv_eps 0.0")
    return rec.trace()


def lr_range_boundaries() -> Trace:
    rec = TraceRecorder(
        "lr_range_boundaries",
        "The largest eta that ABS with B0 = 100, B_max = 200 accepts: ((eta * B_max) / B0) * "
        "B_max = ((5.617791046444736e+304 * 200) / 100) * 200 is <= the largest double / 8; "
        "the growth to B_max then computes (lr * 200) / 100, finite. The next double above "
        "this eta is refused (config_errors); eta = 1e306 would reach lr = inf (lr * 200 "
        "overflows) and is refused too.",
        _config("abs", lr=5.617791046444736e+304, max_batch_size=200, epochs=2),
        covers=["reachable lr: the ceiling", "growth at the largest lr"])
    _epoch(rec, [8.0], notes=["first: reference"])
    _epoch(rec, [2.0], notes=["drop: B = B_max = 200, lr = 1.1235582092889473e+305"],
           end_note="finished")
    return rec.trace()


def lr_without_growth() -> Trace:
    rec = TraceRecorder(
        "lr_without_growth",
        "ABS with B0 = B_max = 100 never grows (no check at B_max), so it computes no product "
        "lr * B' and the reachable-lr rule sets no upper bound: eta = 1.7976931348623157e+308, "
        "the largest double, is accepted (as for bl; fb needs eta * B_max finite, and abs, "
        "absa and gg with a decay epoch ((eta * B_max) / B0) * B_max <= DBL_MAX / 8).",
        _config("abs", lr=1.7976931348623157e+308, max_batch_size=100, epochs=1),
        covers=["reachable lr: no bound without growth"])
    _epoch(rec, end_note="finished")
    return rec.trace()


def lr_floor_sequential() -> Trace:
    rec = TraceRecorder(
        "lr_floor_sequential",
        "BL with eta = 5.609908878679024e-307, rho = 0.19915642058736663 at epochs 1 and 2: "
        "(eta * rho) * rho is 2.2250738585072014e-308 or more (the smallest normal double), "
        "so the config is accepted, and the run reaches exactly that lr; eta * rho ** 2 "
        "(with CPython's pow) would be below it. The rule multiplies in order, never pow "
        "(docs/porting.md, Numerics); config_errors pins the other direction.",
        _config("bl", lr=5.609908878679024e-307, lr_decay_factor=0.19915642058736663,
                lr_decay_epochs=[1, 2], epochs=2),
        covers=["reachable lr: the floor, multiplied in order"])
    _epoch(rec)
    _epoch(rec, end_note="finished: lr = (eta * rho) * rho, a normal double")
    return rec.trace()


def spec_corners() -> Trace:
    rec = TraceRecorder(
        "spec_corners",
        "Corners of the rules: rho = 1.0 and tau = 0.0 are allowed (ABSA with gamma0 = 0.29 "
        "starts without an adversary since 0 >= 0 * epochs - 1e-9; the decay at epoch 1 "
        "multiplies the lr by 1.0); a step with samples null is a full batch; a float "
        "sample count above B is a type error, not a value error (type before value).",
        _config("absa", lr_decay_factor=1.0, lr_decay_epochs=[1], adv_stop=0.0,
                adv_fraction=0.29, epochs=3),
        covers=["rho = 1", "tau = 0", "step with samples null", "type before value"])
    rec.step(null=True, note="samples null: a full batch of B = 100")
    rec.step(100.5, error=("type", "samples"), note="a float above B: type, not value")
    rec.step(0.5, error=("type", "samples"), note="a float below 1: type, not value")
    rec.step(note="check due")
    rec.eigenvalue(8.0, note="first: reference")
    rec.end_epoch(note="epoch 1 in A: lr * 1.0")
    rec.step(null=True)
    rec.step(null=True, note="check due")
    rec.eigenvalue(2.0, note="drop: B = 200, gamma stays 0")
    rec.end_epoch()
    return rec.trace()


def adv_blocks_capped() -> Trace:
    rec = TraceRecorder(
        "adv_blocks_capped",
        "The blocks rule's caps: B0 = 100, m = 10, beta = 1.2, gamma0 = 0.29, omega = 1 (gamma "
        "kept), patience 1: 29 per block. At B = 120 the last block holds 20 samples, fewer "
        "than 29: its range is capped at B, [100, 120). A short step of k = 110 caps it at "
        "k, [100, 110); a short step of k = 20 caps the first block, [0, 20).",
        _config("absa", micro_batch_size=10, max_batch_size=1000, beta=1.2,
                samples_per_epoch=240, check_every=240, epochs=3, adv_fraction=0.29,
                adv_decay=1.0, adv_stop=1.0, patience=1),
        covers=["blocks: last block capped at B", "blocks: short step capped at k"])
    rec.step()
    rec.step()
    rec.step(40, note="check due")
    rec.eigenvalue(8.0, note="first: reference")
    rec.end_epoch()
    rec.step()
    rec.step()
    rec.step(40, note="check due again")
    rec.eigenvalue(8.0, note="patience 1: B = 120, ranges [0, 29) and [100, 120)")
    rec.end_epoch()
    rec.step(110, note="k = 110: [0, 29) and [100, 110)")
    rec.step(20, note="k = 20: [0, 20)")
    rec.step(note="B = 120: [0, 29) and [100, 120); check due")
    rec.eigenvalue(8.0, note="patience 1: B = 150")
    rec.end_epoch(note="finished")
    return rec.trace()


def negative_zero_gamma() -> Trace:
    rec = TraceRecorder(
        "negative_zero_gamma",
        "ABSA with gamma0 = -0.0 (>= 0, allowed): gamma is -0.0 from the start and decided "
        "as -0.0; at tau the test gamma > 0 is false, so gamma stays -0.0 and the reason "
        "has no 'adversary stops'. After the last epoch the state is saved and loaded: the "
        "loaded scheduler still refuses events (epoch = epochs).",
        _config("absa", adv_fraction=-0.0, adv_stop=0.5, epochs=2, max_batch_size=400),
        covers=["negative zero gamma", "gamma > 0 test before the stop",
                "finished state loaded"])
    _epoch(rec, [8.0], notes=["first: reference"],
           end_note="epoch 1 >= 0.5 * 2 but gamma = -0.0 is not > 0: no stop")
    _epoch(rec, [2.0], notes=["drop: B = 200, gamma = -0.0 / 2"], end_note="finished")
    rec.save_load(note="a finished state through a state dict")
    rec.end_epoch(error=("protocol",), note="the loaded state is finished: refused")
    rec.step(error=("protocol",), note="refused too")
    return rec.trace()


def integer_range() -> Trace:
    rec = TraceRecorder(
        "integer_range",
        "Integers stay in [0, 2**53] (docs/porting.md, Numerics): BL with B0 = 2**52 and "
        "N = 2**53; two steps reach samples_seen = 2**53 exactly, a third is refused as a "
        "value error naming samples (it would leave the range every double holds exactly).",
        _config("bl", batch_size=2 ** 52, micro_batch_size=2 ** 52, max_batch_size=2 ** 52,
                samples_per_epoch=2 ** 53, epochs=1),
        covers=["integer range", "samples_seen bound"])
    rec.step()
    rec.step(note="samples_seen = 2**53: still in range")
    rec.step(1, error=("value", "samples"), note="2**53 + 1 is out of range: refused")
    rec.end_epoch(note="finished")
    return rec.trace()


def lower_bound_checks() -> Trace:
    rec = TraceRecorder(
        "lower_bound_checks",
        "ABS, B0 = 100, B_max = 800, kappa = 3, alpha = 2: a check may be answered by a lower "
        "bound on the top eigenvalue (\"lower_bound\": true, 'at least x'). The decision's "
        "eigenvalue_threshold is lam_ref / alpha while a check is due (null at the first "
        "check and when none is due). A bound strictly above the threshold is a no-drop "
        "check, counted towards the patience exactly as the value would be (and a patience "
        "growth keeps lam_ref), recorded as last_eigenvalue = x with last_eigenvalue_bound = "
        "true, also through a state dict; a bound at or below the threshold, or at the first "
        "check, is refused as undecided (a value error naming eigenvalue): nothing changes and "
        "the check stays due.",
        _config("abs", samples_per_epoch=200, epochs=6, patience=3),
        covers=["eigenvalue threshold", "lower bound", "lower bound refused",
                "lower bound patience growth"])
    rec.step()
    rec.step(note="check due, first: threshold null")
    rec.eigenvalue(9.0, lower_bound=True, error=("value", "eigenvalue"),
                   note="a bound cannot set the reference: refused")
    rec.eigenvalue(8.0, note="first: lam_ref = 8, d = 1")
    rec.end_epoch()
    rec.step()
    rec.step(note="check due: threshold 8 / 2 = 4.0")
    rec.eigenvalue(4.0, lower_bound=True, error=("value", "eigenvalue"),
                   note="a bound at the threshold is undecided: refused")
    rec.eigenvalue(1.0, lower_bound=True, error=("value", "eigenvalue"),
                   note="a bound below the threshold is undecided: refused")
    rec.eigenvalue(NAN, lower_bound=True, error=("value", "eigenvalue"),
                   note="a NaN bound: refused as a value would be")
    rec.eigenvalue(4.000000000000001, lower_bound=True,
                   note="just above 4.0: no drop, d = 2, last_eigenvalue_bound true")
    rec.save_load(note="the bound flag survives a state dict")
    rec.end_epoch()
    rec.step()
    rec.step(note="check due: threshold 4.0")
    rec.eigenvalue(50.0, lower_bound=True, note="no drop, d = 3 = kappa: grow, B = 200, lr = "
                   "0.2, lam_ref stays 8")
    rec.end_epoch()
    rec.step(note="check due: threshold 4.0")
    rec.eigenvalue(3.0, note="a value: 3.0 <= 4.0, drop: B = 400, lam_ref = 3, flag false")
    rec.end_epoch()
    rec.step(note="check due: threshold 1.5")
    rec.skip_eigenvalue(note="skipped: last_eigenvalue and its flag unchanged")
    rec.end_epoch()
    rec.step(note="check due: threshold 1.5")
    rec.eigenvalue(1.5000000000000002, lower_bound=True, note="no drop, d = 1")
    rec.end_epoch(note="finished")
    return rec.trace()


def _state_of(config: dict, events) -> dict:
    from ._scheduler import Scheduler, SchedulerConfig
    sch = Scheduler(SchedulerConfig.from_dict(config))
    for name, *args in events:
        getattr(sch, name)(*args)
    return json.loads(json.dumps(sch.state_dict()))


def state_dicts() -> Trace:
    full = _config("absa", max_batch_size=800, epochs=6, lr_decay_epochs=[4], patience=3)
    # a state mid-run: B = 200 after a drop, a check due, lam_ref 3.0
    events = [("step",), ("step",), ("eigenvalue", 8.0), ("end_epoch",), ("step",),
              ("step",), ("eigenvalue", 3.0), ("end_epoch",), ("step",)]
    mid = _state_of(full, events)
    abs_cfg, fb_cfg = {**full, "method": "abs"}, {**full, "method": "fb"}
    abs_mid = _state_of(abs_cfg, events)
    k1_cfg = {**full, "patience": 1}
    k1_first = _state_of(k1_cfg, events[:3])
    assert k1_first["state"]["patience_count"] == 1
    assert mid["state"]["eigenvalue_due"] and mid["state"]["batch_size"] == 200
    sparse_cfg = {k: full[k] for k in ("method", "lr", "batch_size", "samples_per_epoch",
                                       "epochs", "max_batch_size", "lr_decay_epochs",
                                       "patience")}
    nulls_cfg = {**sparse_cfg, "micro_batch_size": None, "check_every": None}
    ints_cfg = {**full, "alpha": 2, "beta": 2, "adv_decay": 2, "warmup_epochs": 5}
    v1 = json.loads(json.dumps(mid))
    v1["version"] = 1
    del v1["config"]["adv_rule"]
    del v1["state"]["last_eigenvalue_bound"]
    v2 = json.loads(json.dumps(mid))
    v2["version"] = 2
    del v2["state"]["last_eigenvalue_bound"]
    cases: list[dict] = [
        dict(note="written by Python mid-run: every field", load_into=full, state_dict=mid),
        dict(note="config with the defaults left out: they are filled in, and written back",
             load_into=sparse_cfg, state_dict={**mid, "config": sparse_cfg}),
        dict(note="optional config fields null", load_into=nulls_cfg,
             state_dict={**mid, "config": nulls_cfg}),
        dict(note="real fields written as ints (2, not 2.0): the same config, floats back",
             load_into=ints_cfg, state_dict={**mid, "config": ints_cfg}),
        dict(note="real state fields written as ints: lr 1, lam_ref 3, adv_fraction 0",
             load_into={**full, "lr": 0.5},
             state_dict=_patch(_state_of({**full, "lr": 0.5}, events), lr=1, lam_ref=3,
                               last_eigenvalue=3, adv_fraction=0)),
        dict(note="version 1 (before adv_rule): loads as adv_rule 'batch'",
             load_into={**full, "adv_rule": "batch"}, state_dict=v1),
        dict(note="version 2 (before lower bounds): last_eigenvalue_bound loads as false",
             load_into=full, state_dict=v2),
        dict(note="abs (not absa) with adv_fraction -0.0 in its state: loads, decides 0.0 "
             "(gamma only for absa), writes -0.0 back",
             load_into=abs_cfg, state_dict=_patch(abs_mid, adv_fraction=-0.0)),
        dict(note="kappa = 1: d = 1 right after the first eigenvalue is allowed",
             load_into=k1_cfg, state_dict=k1_first),
        dict(note="a lower bound above the threshold (3.0 / 2) recorded as the last eigenvalue",
             load_into=full, state_dict=_patch(mid, last_eigenvalue=1.6,
                                               last_eigenvalue_bound=True)),
    ]
    v1_null_rule = json.loads(json.dumps(v1))
    v1_null_rule["config"]["adv_rule"] = None
    bad = [
        ("version 1 with adv_rule null: null is a type error, not the version's default",
         v1_null_rule, ("type", "adv_rule")),
        ("a version that is not an int", {**mid, "version": "3"}, ("value", "version")),
        ("an unknown top-level key", {**mid, "saved_at": "today"}, ("value", "state_dict")),
        ("gamma > 0 at B_max", _patch(mid, batch_size=800, eigenvalue_due=False,
                                      adv_fraction=0.1), ("value", "adv_fraction")),
        ("a negative last eigenvalue", _patch(mid, last_eigenvalue=-1.0),
         ("value", "last_eigenvalue")),
        ("a count without a reference", _patch(mid, lam_ref=None, last_eigenvalue=None,
                                               patience_count=1), ("value", "patience_count")),
        ("a check due after the last epoch", _patch(mid, epoch=6, adv_fraction=0.0),
         ("value", "eigenvalue_due")),
        ("samples_seen past 2**53", _patch(mid, samples_seen=2 ** 54),
         ("value", "samples_seen")),
        ("another format", {**mid, "format": "torch"}, ("value", "format")),
        ("an unknown version", {**mid, "version": 4}, ("value", "version")),
        ("version 2 with last_eigenvalue_bound", _patch(v2, last_eigenvalue_bound=False),
         ("value", "state")),
        ("a lower bound at the threshold", _patch(mid, last_eigenvalue=1.5,
                                                  last_eigenvalue_bound=True),
         ("value", "last_eigenvalue_bound")),
        ("version 1 into a blocks scheduler", v1, ("value", "adv_rule")),
        ("another config", {**mid, "config": {**full, "patience": 4}}, ("value", "patience")),
        ("a bad config", {**mid, "config": {**full, "alpha": 0.5}}, ("value", "alpha")),
        ("a missing state field", _patch(mid, drop="updates"), ("value", "updates")),
        ("an unknown state field", _patch(mid, colour=1), ("value", "state")),
        ("a whole float for an int", _patch(mid, batch_size=200.0), ("type", "batch_size")),
        ("a bool for an int", _patch(mid, updates=True), ("type", "updates")),
        ("an int for a bool", _patch(mid, eigenvalue_due=1), ("type", "eigenvalue_due")),
        ("a string for a float", _patch(mid, lam_ref="NaN"), ("type", "lam_ref")),
        ("B above B_max", _patch(mid, batch_size=1600), ("value", "batch_size")),
        ("B below B0", _patch(mid, batch_size=0), ("value", "batch_size")),
        ("B not a multiple of m", _patch(mid, batch_size=150), ("value", "batch_size")),
        ("lr 0", _patch(mid, lr=0.0), ("value", "lr")),
        ("gamma above gamma0", _patch(mid, adv_fraction=0.5), ("value", "adv_fraction")),
        ("gamma after tau", _patch(mid, epoch=3, adv_fraction=0.1), ("value", "adv_fraction")),
        ("a check due at B_max", _patch(mid, batch_size=800, adv_fraction=0.0),
         ("value", "eigenvalue_due")),
        ("epoch past the last", _patch(mid, epoch=7), ("value", "epoch")),
        ("a negative counter", _patch(mid, updates=-1), ("value", "updates")),
        ("epoch start after samples seen", _patch(mid, epoch_start_samples=10000),
         ("value", "epoch_start_samples")),
        ("patience count at kappa", _patch(mid, patience_count=3), ("value", "patience_count")),
        ("a negative lam_ref", _patch(mid, lam_ref=-1.0), ("value", "lam_ref")),
        ("a last eigenvalue without a reference", _patch(mid, lam_ref=None),
         ("value", "last_eigenvalue")),
        ("fewer samples than updates", _patch(mid, samples_seen=4, epoch_start_samples=0),
         ("value", "samples_seen")),
        ("a check due before check_every samples",
         _patch(_state_of(full, [("step",)]), eigenvalue_due=True), ("value", "eigenvalue_due")),
        ("state not an object", {**mid, "state": []}, ("type", "state")),
        ("config not an object", {**mid, "config": [1]}, ("type", "config")),
        ("no state", {k: v for k, v in mid.items() if k != "state"}, ("type", "state")),
        ("not an object at all", [mid], ("type", "state_dict")),
    ]
    for note, data, error in bad:
        cases.append(dict(note=note, load_into=full, state_dict=data, error=error))
    cases.append(dict(note="fb below B_max", load_into=fb_cfg,
                      state_dict=_patch(_state_of(fb_cfg, [("step",)]), batch_size=100),
                      error=("value", "batch_size")))
    cases.append(dict(note="gamma > 0 for abs", load_into=abs_cfg,
                      state_dict=_patch(abs_mid, adv_fraction=0.1), error=("value",
                                                                           "adv_fraction")))
    cases.append(dict(note="kappa = 1: d = 2 is refused", load_into=k1_cfg,
                      state_dict=_patch(k1_first, patience_count=2),
                      error=("value", "patience_count")))
    cases.append(dict(note="a reference for a method without eigenvalues",
                      load_into={**full, "method": "bl", "max_batch_size": 100},
                      state_dict=_patch(_state_of({**full, "method": "bl",
                                                   "max_batch_size": 100}, [("step",)]),
                                        lam_ref=1.0),
                      error=("value", "lam_ref")))
    return state_dict_trace(
        "state_dicts",
        "State dicts a port must load (then decide and write back exactly 'decision' and "
        "'saved': every config field filled in, reals as floats) and ones it must refuse, "
        "each with the field the error names. The scheduler that loads is built from "
        "'load_into'.",
        cases, covers=["state dict loading", "state dict refusals", "invariants"])


def _patch(data: dict, drop: str | None = None, **state) -> dict:
    out = json.loads(json.dumps(data))
    out["state"].update(state)
    if drop:
        del out["state"][drop]
    return out


SCRIPTS: tuple[Callable[[], Trace], ...] = (
    abs_growth_by_drop, abs_growth_by_patience, absa_cap_at_max_batch,
    absa_adversary_decay_and_stop, rounding_and_check_period, growth_rounding_tolerance,
    lr_decay_epochs, bl_fixed,
    fb_warmup, gg_schedule, errors_and_skips, defaults, config_errors,
    adv_blocks_rule, adv_rule_thresholds, adv_batch_threshold, adv_stop_tolerance,
    adv_stop_odd_epochs, absa_at_max_from_start, absa_tau_zero, fb_order_of_operations,
    fb_without_warmup, negative_zero, state_dicts, lower_bound_checks, integer_range,
    lr_range_boundaries, lr_without_growth, lr_floor_sequential, spec_corners, adv_blocks_capped,
    negative_zero_gamma)


def build_all() -> dict[str, str]:
    """File name -> JSON text of every trace, generated now from the scripts."""
    out = {}
    for script in SCRIPTS:
        trace = script()
        out[trace.name + ".json"] = trace_to_json(trace)
    return out


def default_folder() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "traces")


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hessbatch._make_traces",
        description="Regenerate the conformance traces from their event scripts.")
    parser.add_argument("--out", default=default_folder(),
                        help="folder to write to (default: the package's traces/ folder)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file differs from its script's output")
    args = parser.parse_args(None if argv is None else list(argv))
    files = build_all()
    stale = []
    for name, text in files.items():
        path = os.path.join(args.out, name)
        try:
            with open(path, encoding="utf-8") as fh:
                same = fh.read() == text
        except FileNotFoundError:
            same = False
        if not same:
            stale.append(name)
            if not args.check:
                os.makedirs(args.out, exist_ok=True)
                with open(path, "w", encoding="utf-8", newline="\n") as fh:
                    fh.write(text)
    extra = sorted(set(n for n in os.listdir(args.out) if n.endswith(".json")) - set(files)) \
        if os.path.isdir(args.out) else []
    verb = "stale" if args.check else "written"
    print(f"{len(files)} traces, {len(stale)} {verb}: {', '.join(stale) or '-'}"
          + (f"; files without a script: {', '.join(extra)}" if extra else ""))
    return 1 if args.check and (stale or extra) else 0


if __name__ == "__main__":
    sys.exit(main())
