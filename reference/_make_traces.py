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
import os
import sys
from typing import Callable, Iterable, Sequence

from .traces import Trace, TraceRecorder, config_error_trace, trace_to_json

NAN, INF = float("nan"), float("inf")


def _config(method: str, **kw) -> dict:
    # every field spelled out, so a port never depends on Python's defaults
    base = dict(method=method, lr=0.1, batch_size=100, samples_per_epoch=200, epochs=6,
                max_batch_size=800, micro_batch_size=100, lr_decay_epochs=[],
                lr_decay_factor=0.1, alpha=2.0, beta=2.0, check_every=None, patience=10,
                adv_eps=0.005, adv_fraction=0.2, adv_decay=2.0, adv_stop=0.5,
                warmup_epochs=5.0)
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
    rec.step(error=("protocol", "all 6 epochs have ended"))
    rec.end_epoch(error=("protocol", "all 6 epochs have ended"))
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
        "ABSA, B0 = 20, gamma0 = 0.1, omega = 4, tau = 0.5 of 6 epochs: gamma is divided by "
        "omega at each growth; at gamma * B = 1 one sample is adversarial, below 1 none (gamma "
        "still > 0: the adversary vanishes before it stops); it stops at the end of epoch 3.",
        _config("absa", batch_size=20, micro_batch_size=20, max_batch_size=640,
                samples_per_epoch=40, epochs=6, adv_fraction=0.1, adv_decay=4.0, adv_stop=0.5,
                adv_eps=0.03),
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
        "ABSA with beta = 1.5, micro-batch 20 and a check every 150 samples (not a multiple of "
        "B, SVHN-like): growth is rounded up to a multiple of the micro-batch (150 -> 160, 240,"
        " 360), accumulation steps follow; gamma = 0.29 with omega = 1 gives floor(0.29 * 100) "
        "= 29 although 0.29 * 100 is 28.999999999999996 in binary; short last batches; two "
        "checks within one epoch; a skipped check.",
        _config("absa", micro_batch_size=20, max_batch_size=1000, beta=1.5,
                samples_per_epoch=300, check_every=150, epochs=4, adv_fraction=0.29,
                adv_decay=1.0, adv_stop=0.5),
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
        "209 -> min(210, 200) = B_max.",
        _config("abs", micro_batch_size=10, max_batch_size=200, beta=1.1, patience=1,
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
    rec.eigenvalue(1.0, error=("protocol", "none is due"))
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
        "eigenvalues are seen not to count; an eigenvalue of 0 is a drop.",
        _config("abs", patience=1, epochs=3),
        covers=["errors", "events out of order", "bad eigenvalue changes nothing", "skip",
                "zero eigenvalue", "save/load", "finished"])
    rec.eigenvalue(1.0, error=("protocol", "none is due"))
    rec.skip_eigenvalue(error=("protocol", "no eigenvalue is due"))
    rec.end_epoch(error=("protocol", "no step since the last epoch end"))
    rec.step(0, error=("value", "samples must be in [1, batch_size=100]"))
    rec.step(101, error=("value", "samples must be in [1, batch_size=100]"))
    rec.step(1.5, error=("type", "samples must be an int"))
    rec.step()
    rec.step(note="check due")
    rec.step(error=("protocol", "an eigenvalue is due"))
    rec.end_epoch(error=("protocol", "an eigenvalue is due"))
    rec.eigenvalue(NAN, error=("value", "eigenvalue must be finite"))
    rec.eigenvalue(INF, error=("value", "eigenvalue must be finite"))
    rec.eigenvalue(-INF, error=("value", "eigenvalue must be finite"))
    rec.eigenvalue(-0.001, error=("value", "eigenvalue must be >= 0"))
    rec.eigenvalue("3.0", error=("type", "eigenvalue must be a real number"))
    rec.save_load(note="round trip while due, after refused events")
    rec.eigenvalue(8, note="an int is a real number: first, reference 8.0")
    rec.eigenvalue(8.0, error=("protocol", "none is due"))
    rec.end_epoch()
    rec.step()
    rec.step(note="check due")
    rec.skip_eigenvalue(note="skipped: no count, no growth although patience is 1")
    rec.end_epoch()
    rec.step()
    rec.step(note="check due")
    rec.eigenvalue(0.0, note="0 <= 8 / 2: grow, B = 200")
    rec.end_epoch(note="finished")
    rec.step(error=("protocol", "all 3 epochs have ended"))
    rec.eigenvalue(1.0, error=("protocol", "none is due"))
    rec.skip_eigenvalue(error=("protocol", "no eigenvalue is due"))
    rec.end_epoch(error=("protocol", "all 3 epochs have ended"))
    return rec.trace()


def defaults() -> Trace:
    rec = TraceRecorder(
        "defaults",
        "Only the required fields and B_max are given, micro_batch_size and check_every are "
        "null: a port must fill in the defaults (b_micro = B0, n = one epoch, kappa = 10, "
        "gamma0 = 0.2, omega = 2, tau = 0.5, rho = 0.1, no decay epochs) exactly as hessbatch.",
        dict(method="absa", lr=0.05, batch_size=128, samples_per_epoch=256, epochs=4,
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
    bad: list[tuple[dict, tuple[str, ...]]] = [
        ({"method": "sgd"}, ("value", "method", "bl, fb, gg, abs, absa", "'sgd'")),
        ({"lr": 0.0}, ("value", "lr", "> 0", "0.0")),
        ({"lr": -1.0}, ("value", "lr", "> 0", "-1.0")),
        ({"batch_size": 0}, ("value", "batch_size", ">= 1")),
        ({"batch_size": 100.5}, ("type", "batch_size", "int")),
        ({"samples_per_epoch": 0}, ("value", "samples_per_epoch", ">= 1")),
        ({"epochs": 0}, ("value", "epochs", ">= 1")),
        ({"max_batch_size": 50}, ("value", "max_batch_size", ">= batch_size", "50")),
        ({"micro_batch_size": 30}, ("value", "micro_batch_size", "divide", "30")),
        ({"micro_batch_size": 100, "max_batch_size": 850},
         ("value", "micro_batch_size must divide max_batch_size = 850")),
        ({"lr_decay_epochs": [6, 3]}, ("value", "lr_decay_epochs", "strictly increasing")),
        ({"lr_decay_epochs": [3, 3]}, ("value", "lr_decay_epochs", "strictly increasing")),
        ({"lr_decay_epochs": [0]}, ("value", "lr_decay_epochs", "[1, epochs=10]")),
        ({"lr_decay_epochs": [11]}, ("value", "lr_decay_epochs", "[1, epochs=10]")),
        ({"lr_decay_epochs": [1.0]}, ("type", "lr_decay_epochs", "ints")),
        ({"lr_decay_epochs": 3}, ("type", "lr_decay_epochs", "sequence of ints")),
        ({"lr_decay_epochs": "3,6"}, ("type", "lr_decay_epochs", "sequence of ints")),
        ({"lr_decay_factor": 0.0}, ("value", "lr_decay_factor", "(0, 1]")),
        ({"lr_decay_factor": 1.5}, ("value", "lr_decay_factor", "(0, 1]")),
        ({"alpha": 1.0}, ("value", "alpha", "> 1")),
        ({"beta": 1.0}, ("value", "beta", "> 1")),
        ({"check_every": 0}, ("value", "check_every", ">= 1")),
        ({"patience": 0}, ("value", "patience", ">= 1")),
        ({"patience": True}, ("type", "patience", "int")),
        ({"adv_eps": -0.1}, ("value", "adv_eps", ">= 0")),
        ({"adv_fraction": 1.0}, ("value", "adv_fraction", "[0, 1)")),
        ({"adv_fraction": -0.1}, ("value", "adv_fraction", "[0, 1)")),
        ({"adv_decay": 0.5}, ("value", "adv_decay", ">= 1")),
        ({"adv_stop": 1.5}, ("value", "adv_stop", "[0, 1]")),
        ({"warmup_epochs": -1.0}, ("value", "warmup_epochs", ">= 0")),
        ({"lr": 1e308}, ("value", "lr = 1e+308", "overflows")),
        ({"lr": 1e-300, "lr_decay_factor": 1e-5},
         ("value", "lr = 1e-300", "lr_decay_factor = 1e-05", "underflows")),
        ({"alpha": "2"}, ("type", "alpha", "real number")),
        ({"colour": "red"}, ("value", "unknown config field", "colour")),
    ]
    cases = [({**good, **change}, error) for change, error in bad]
    return config_error_trace(
        "config_errors",
        "Configs that must be refused at construction, each differing from a valid ABSA "
        "config in one field (or adding an unknown one); the error names the field and the "
        "allowed range. 'type' cases are values of the wrong JSON type.",
        cases, covers=["bad config", "errors"])


SCRIPTS: tuple[Callable[[], Trace], ...] = (
    abs_growth_by_drop, abs_growth_by_patience, absa_cap_at_max_batch,
    absa_adversary_decay_and_stop, rounding_and_check_period, growth_rounding_tolerance,
    lr_decay_epochs, bl_fixed,
    fb_warmup, gg_schedule, errors_and_skips, defaults, config_errors)


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
