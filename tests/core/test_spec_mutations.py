"""Every rule of docs/porting.md fails some shipped trace when it is broken.

Each case below breaks one stated rule of the core the way a port could (a different operation
order, a missing 1e-9, another reading of a type rule), by monkeypatching one private function
of ``hessbatch._scheduler`` (the public methods look them up at call time) or the replay's view
of it, then replays every built-in trace. The rule is *pinned* only if at least one trace then
reports a mismatch; the test also names the trace that must catch it, so that a trace edited
later cannot silently stop pinning its rule. docs/porting.md lists the same rules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from hessbatch import _scheduler
from hessbatch._scheduler import Decision, Scheduler, SchedulerConfig
from hessbatch.traces import builtin_traces, load_trace, replay

TRACES = {p.name[:-5]: load_trace(p) for p in builtin_traces()}
ORIG = {name: getattr(_scheduler, name) for name in (
    "_grow", "_adv_count", "_block_count", "_adv_ranges", "_adversary_over", "init", "decide",
    "on_step", "on_eigenvalue", "on_skip_eigenvalue", "on_epoch_end", "_check_eigenvalue",
    "_checks_active", "_round_up", "_is_int", "_invariant_problems", "_reachable_lr",
    "_refuse_if_done_or_due", "_err", "_finished", "_config_of_state_dict")}
ORIG_FROM_DICT = SchedulerConfig.from_dict.__func__
ORIG_RANGES = Decision.adversarial_ranges
ORIG_STATE_DICT = Scheduler.state_dict


def patch(name, func):
    return lambda mp: mp.setattr(_scheduler, name, func)


def after_decide(change):
    """A wrong decide: the right one, then ``change(cfg, st, decision)``."""
    def wrong(cfg, st):
        return change(cfg, st, ORIG["decide"](cfg, st))
    return patch("decide", wrong)


def after_event(name, change):
    """A wrong transition: the right one, then ``change(cfg, before, after, *args)``."""
    def wrong(cfg, st, *args):
        return change(cfg, st, ORIG[name](cfg, st, *args), *args)
    return patch(name, wrong)


rep = dataclasses.replace


# ------------------------------------------------------------------------ the broken rules

def _grow_lr_grouped(cfg, st, factor):
    b, _, gamma = ORIG["_grow"](cfg, st, factor)
    return b, st.lr * (b / st.batch_size), gamma


def _gg_lr_grouped(cfg, st, out):
    if cfg.method == "gg" and out.epoch in cfg.lr_decay_epochs:
        out = rep(out, lr=st.lr * (cfg.lr_decay_factor * out.batch_size / st.batch_size))
    return out


def _warmup(grouping):
    def change(cfg, st, d):
        if cfg.method != "fb" or cfg.warmup_epochs == 0:
            return d
        if grouping == "progress":
            p = min(1.0, st.samples_seen / cfg.warmup_epochs / cfg.samples_per_epoch)
            return rep(d, lr=cfg.lr + (st.lr - cfg.lr) * p)
        p = min(1.0, st.samples_seen / (cfg.warmup_epochs * cfg.samples_per_epoch))
        return rep(d, lr=cfg.lr * (1 - p) + st.lr * p)
    return change


def _warmup_without_guard(cfg, st, d):
    # IEEE, as a port without the guard computes it: s / 0 is NaN at s = 0, then inf
    if cfg.method == "fb" and cfg.warmup_epochs == 0:
        p = math.nan if st.samples_seen == 0 else 1.0
        return rep(d, lr=cfg.lr + (st.lr - cfg.lr) * p)
    return d


def _fb_peak_grouped(cfg):
    st = ORIG["init"](cfg)
    if cfg.method == "fb":
        st = rep(st, lr=cfg.lr * (cfg.max_batch_size / cfg.batch_size))
    return st


def _init_keeps_gamma_at_max(cfg):
    st = ORIG["init"](cfg)
    if cfg.method == "absa" and not ORIG["_adversary_over"](cfg, 0):
        st = rep(st, adv_fraction=cfg.adv_fraction)
    return st


def _init_ignores_tau(cfg):
    st = ORIG["init"](cfg)
    if cfg.method == "absa" and st.batch_size < cfg.max_batch_size:
        st = rep(st, adv_fraction=cfg.adv_fraction)
    return st


def _ranges_at_the_head(cfg, gamma, batch):
    total = sum(b - a for a, b in ORIG["_adv_ranges"](cfg, gamma, batch))
    return ((0, total),) if total else ()


def _ranges_of_the_micro_batch(cfg, gamma, batch):
    return ORIG["_adv_ranges"](rep(cfg, batch_size=cfg.micro_batch_size), gamma, batch)


def _short_batch_proportional(self, n):
    if self.adv_rule == "blocks" and n < self.batch_size:
        c = self.adv_fraction * n
        k = max(1, math.floor(c + 1e-9)) if c >= 1 - 1e-9 else 0
        return ((0, k),) if k else ()
    return ORIG_RANGES(self, n)


def _stop_like_floor(cfg, epoch):
    # the authors' epochs // 2, generalised: floor(tau * epochs)
    return epoch >= math.floor(cfg.adv_stop * cfg.epochs + 1e-9)


def _refuse_negative_zero(lam):
    lam = ORIG["_check_eigenvalue"](lam)
    if math.copysign(1.0, lam) < 0:
        raise ValueError("eigenvalue must be >= 0")
    return lam


def _state_dict_drops_the_sign(self):
    # a JSON writer that prints -0 as 0 (JavaScript's JSON.stringify)
    data = ORIG_STATE_DICT(self)
    for k in ("lam_ref", "last_eigenvalue"):
        if data["state"][k] == 0:
            data["state"][k] = 0.0
    return data


def _types_first(cls, data):
    # validates every int field's type before any range: another order of checks
    for f in ("batch_size", "samples_per_epoch", "epochs"):
        v = data.get(f) if hasattr(data, "get") else None
        if v is not None and not ORIG["_is_int"](v):
            raise TypeError(f"{f} must be an int")
    return ORIG_FROM_DICT(cls, data)


def _missing_lr_defaults(cls, data):
    if hasattr(data, "get") and "lr" not in data:
        data = {**data, "lr": 0.1}
    return ORIG_FROM_DICT(cls, data)


def _case_sensitive(cls, data):
    if hasattr(data, "get") and isinstance(data.get("method"), str) \
            and data["method"] != data["method"].lower():
        raise ValueError("method must be one of bl, fb, gg, abs, absa")
    return ORIG_FROM_DICT(cls, data)


def _drops_unknown(cls, data):
    if hasattr(data, "get"):
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
    return ORIG_FROM_DICT(cls, data)


def _whole_floats_are_ints(value):
    return ORIG["_is_int"](value) or (type(value) is float and value.is_integer())


def _boundary_is_not_a_drop(cfg, st, lam):
    if st.lam_ref is not None and _scheduler._is_real(lam) and lam == st.lam_ref / cfg.alpha:
        out = ORIG["on_eigenvalue"](cfg, st, math.nextafter(float(lam), math.inf))
        return rep(out, last_eigenvalue=float(lam),
                   lam_ref=float(lam) if out.lam_ref != st.lam_ref else out.lam_ref)
    return ORIG["on_eigenvalue"](cfg, st, lam)


def _patience_moves_reference(cfg, st, out, lam):
    return rep(out, lam_ref=float(lam)) if out.reason == "eigenvalue: patience, grow" else out


def _grow_keeps_gamma(cfg, st, factor):
    b, lr, gamma = ORIG["_grow"](cfg, st, factor)
    return b, lr, st.adv_fraction if b < cfg.max_batch_size else gamma


def _grow_gamma_at_max(cfg, st, factor):
    b, lr, gamma = ORIG["_grow"](cfg, st, factor)
    return b, lr, st.adv_fraction / cfg.adv_decay


def _due_on_multiples_only(cfg, st, out, samples=None):
    return rep(out, eigenvalue_due=out.eigenvalue_due and out.samples_seen % cfg.check_every == 0)


def _no_lr_decay(cfg, st, out):
    return rep(out, lr=st.lr) if cfg.method != "gg" else out


def _end_keeps_epoch_start(cfg, st, out):
    return rep(out, epoch_start_samples=st.epoch_start_samples) if out.epoch > 1 else out


def _skip_clears_last(cfg, st, out):
    return rep(out, last_eigenvalue=None)


def _first_sets_d0(cfg, st, out, lam):
    return rep(out, patience_count=0) if st.lam_ref is None else out


def _state_versions_without_v1(mp):
    versions = dict(_scheduler._STATE_VERSIONS)
    versions[1] = ({}, versions[1][1])
    mp.setattr(_scheduler, "_STATE_VERSIONS", versions)


# ---- the rules of issue 20 (each passed every shipped trace before the traces that pin it)

def _reachable_lr_grouped(cfg):
    # the check before issue 20: lr * (B_max / B0), which a growth's lr * B' overflows first
    _, _, lowest = ORIG["_reachable_lr"](cfg)
    return cfg.lr * (cfg.max_batch_size / cfg.batch_size), sys.float_info.max, lowest


def _reachable_lr_everywhere(cfg):
    # the growth bound applied to every method, bl and fb too (too strict: refuses bl at 1e305)
    _, _, lowest = ORIG["_reachable_lr"](cfg)
    highest = ((cfg.lr * cfg.max_batch_size) / cfg.batch_size) * cfg.max_batch_size
    return highest, _scheduler.LR_CEILING, lowest


def _reachable_lr_pow(cfg):
    highest, limit, _ = ORIG["_reachable_lr"](cfg)
    return highest, limit, cfg.lr * cfg.lr_decay_factor ** len(cfg.lr_decay_epochs)


def _config_filter(change):
    """A wrong config reader: ``change(data)`` returns the dict it really builds."""
    def from_dict(cls, data):
        return ORIG_FROM_DICT(cls, change(dict(data)) if isinstance(data, dict) else data)
    return lambda mp: mp.setattr(SchedulerConfig, "from_dict", classmethod(from_dict))


def _micro_zero_is_default(data):
    return {**data, "micro_batch_size": None} if data.get("micro_batch_size") == 0 else data


def _micro_divides_max_only(data):
    m, b0 = data.get("micro_batch_size"), data.get("batch_size")
    if isinstance(m, int) and isinstance(b0, int) and m > 0 and b0 % m:
        return {**data, "micro_batch_size": None}
    return data


def _refuse(field, value):
    def change(data):
        if data.get(field) == value and type(data.get(field)) is float:
            raise ValueError(f"{field} out of range")
        return data
    return change


def _infinite_accepted(data):
    return {k: (1e300 if k in ("adv_eps", "adv_decay", "warmup_epochs") and
                isinstance(v, float) and math.isinf(v) else v) for k, v in data.items()}


def _null_samples_refused(cfg, st, samples=None):
    if samples is None:
        raise TypeError("samples must be an int")
    return ORIG["on_step"](cfg, st, samples)


def _value_before_type(cfg, st, samples=None):
    if isinstance(samples, float) and not 1 <= samples <= st.batch_size:
        raise ValueError("samples out of range")
    return ORIG["on_step"](cfg, st, samples)


def _stop_without_gamma_test(cfg, st, out):
    if ORIG["_adversary_over"](cfg, out.epoch) and out.adv_fraction == 0 \
            and "adversary stops" not in out.reason and cfg.method == "absa":
        reason = out.reason + (", " if ": " in out.reason else ": ") + "adversary stops"
        return rep(out, adv_fraction=0.0, reason=reason)
    return out


def _blocks_uncapped_at_b(cfg, gamma, batch):
    ranges = ORIG["_adv_ranges"](cfg, gamma, batch)
    c = _scheduler._block_count(gamma, cfg.batch_size) if cfg.adv_rule == "blocks" else 0
    return tuple((a, a + c) for a, _ in ranges) if c else ranges


def _short_step_uncapped(self, n):
    if self.adv_rule == "blocks" and n < self.batch_size:
        return tuple((a, b) for a, b in self.adv_ranges if a < n)
    return ORIG_RANGES(self, n)


def _non_absa_passes_gamma(cfg, st, d):
    return rep(d, adv_fraction=st.adv_fraction)


def _finished_flag_not_saved(mp):
    # a port that keeps "finished" in a flag set by end_epoch and not saved in the state dict
    loaded: set[int] = set()
    orig_load = Scheduler.load_state_dict

    def load(self, data):
        orig_load(self, data)
        loaded.add(id(self._state))

    def refuse(cfg, st, event):
        if id(st) in loaded:
            return ORIG["_refuse_if_done_or_due"](cfg, rep(st, epoch=0), event)
        return ORIG["_refuse_if_done_or_due"](cfg, st, event)
    mp.setattr(Scheduler, "load_state_dict", load)
    mp.setattr(_scheduler, "_refuse_if_done_or_due", refuse)


def _without_invariant(test):
    """The core's invariants less those ``test(field, text)`` picks."""
    def problems(cfg, st):
        return [(f, t) for f, t in ORIG["_invariant_problems"](cfg, st) if not test(f, t, cfg)]
    return patch("_invariant_problems", problems)


def _fma(a, b, c):
    """a * b + c rounded once, as a fused multiply-add computes it."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


def _warmup_fused(cfg, st, d):
    if cfg.method != "fb" or cfg.warmup_epochs == 0:
        return d
    p = min(1.0, st.samples_seen / (cfg.warmup_epochs * cfg.samples_per_epoch))
    return rep(d, lr=_fma(st.lr - cfg.lr, p, cfg.lr))


def _kappa_one_without_exception(cfg, st):
    out = ORIG["_invariant_problems"](cfg, st)
    if st.patience_count >= cfg.patience:
        out.append(("patience_count", "patience_count not below patience"))
    return out


def _null_takes_the_version_default(mp):
    orig = ORIG["_config_of_state_dict"]

    def config_of(data):
        if isinstance(data, dict) and data.get("version") == 1 \
                and isinstance(data.get("config"), dict) \
                and data["config"].get("adv_rule", "") is None:
            data = {**data, "config": {k: v for k, v in data["config"].items()
                                       if k != "adv_rule"}}
        return orig(data)
    mp.setattr(_scheduler, "_config_of_state_dict", config_of)


def _version_compared_loosely(mp):
    # JavaScript's "3" == 3: a string version accepted
    class Loose(dict):
        def __contains__(self, key):
            return super().__contains__(int(key) if isinstance(key, str) else key)

        def __getitem__(self, key):
            return super().__getitem__(int(key) if isinstance(key, str) else key)
    mp.setattr(_scheduler, "_STATE_VERSIONS", Loose(_scheduler._STATE_VERSIONS))
    mp.setattr(_scheduler, "_is_int", lambda v: ORIG["_is_int"](v) or isinstance(v, str))


def _neighbour_field(cls, field, message):
    # a check that names a neighbouring field (a substring match would still pass it)
    return ORIG["_err"](cls, {"max_batch_size": "batch_size", "lr_decay_factor": "lr",
                              "lr_decay_epochs": "epochs"}.get(field, field), message)


def _reals_as_given(mp):
    mp.setattr(_scheduler, "_REAL_FIELDS", ())


MUTATIONS = [
    # (rule as docs/porting.md states it, the trace that must catch it, the mutation)
    ("grow: lr' = (lr * B') / B", "growth_rounding_tolerance",
     patch("_grow", _grow_lr_grouped)),
    ("gg: lr' = ((lr * rho) * B') / B", "gg_schedule",
     after_event("on_epoch_end", lambda c, s, o: _gg_lr_grouped(c, s, o))),
    ("round_up with - 1e-9", "growth_rounding_tolerance",
     patch("_round_up", lambda x, m: m * math.ceil(x / m))),
    ("fb peak (eta * B_max) / B0", "fb_order_of_operations", patch("init", _fb_peak_grouped)),
    ("warm-up eta + (lr - eta) * p", "fb_order_of_operations", after_decide(_warmup("lerp"))),
    ("warm-up p = s / (warmup_epochs * N)", "fb_order_of_operations",
     after_decide(_warmup("progress"))),
    ("warm-up only when warmup_epochs > 0", "fb_without_warmup",
     after_decide(_warmup_without_guard)),
    ("batch rule: floor(gamma * B + 1e-9)", "rounding_and_check_period",
     patch("_adv_count", lambda g, b: max(1, math.floor(g * b)) if g * b >= 1 - 1e-9 else 0)),
    ("batch rule: gamma * B >= 1 - 1e-9", "adv_batch_threshold",
     patch("_adv_count", lambda g, b: max(1, math.floor(g * b + 1e-9)) if g * b >= 1 else 0)),
    ("blocks: floor(gamma * B0 + 1e-9)", "adv_blocks_rule",
     patch("_block_count", lambda g, b: math.floor(g * b) if g * b > 1 + 1e-9 else 0)),
    ("blocks: gamma * B0 > 1 + 1e-9", "adv_rule_thresholds",
     patch("_block_count", lambda g, b: max(1, math.floor(g * b + 1e-9)) if g * b > 1 else 0)),
    ("blocks keyed to B0, not the micro-batch", "adv_blocks_rule",
     patch("_adv_ranges", _ranges_of_the_micro_batch)),
    ("blocks: one run per block, not at the head", "adv_blocks_rule",
     patch("_adv_ranges", _ranges_at_the_head)),
    ("short batch: blocks clipped to n", "adv_blocks_rule",
     lambda mp: mp.setattr(Decision, "adversarial_ranges", _short_batch_proportional)),
    ("default adv_rule is blocks", "defaults",
     lambda mp: mp.setattr(SchedulerConfig, "__init__", _with_default_rule("batch"))),
    ("tau: epoch >= tau * epochs - 1e-9", "adv_stop_tolerance",
     patch("_adversary_over", lambda cfg, e: e >= cfg.adv_stop * cfg.epochs)),
    ("tau: a real threshold, not epochs // 2", "adv_stop_odd_epochs",
     patch("_adversary_over", _stop_like_floor)),
    ("gamma = 0 at start when B0 = B_max", "absa_at_max_from_start",
     patch("init", _init_keeps_gamma_at_max)),
    ("gamma = 0 at start when tau * epochs <= 1e-9", "absa_tau_zero",
     patch("init", _init_ignores_tau)),
    ("gamma /= omega at a growth", "absa_cap_at_max_batch", patch("_grow", _grow_keeps_gamma)),
    ("gamma = 0 at B_max", "absa_cap_at_max_batch", patch("_grow", _grow_gamma_at_max)),
    ("-0.0 is an eigenvalue >= 0", "negative_zero",
     patch("_check_eigenvalue", _refuse_negative_zero)),
    ("-0.0 kept through a state dict", "negative_zero",
     lambda mp: mp.setattr(Scheduler, "state_dict", _state_dict_drops_the_sign)),
    ("-0.0 adv_eps decided as -0.0", "negative_zero",
     after_decide(lambda c, s, d: rep(d, adv_eps=abs(d.adv_eps)))),
    ("config: fields checked in table order", "config_errors",
     lambda mp: mp.setattr(SchedulerConfig, "from_dict", classmethod(_types_first))),
    ("config: a missing required field is an error", "config_errors",
     lambda mp: mp.setattr(SchedulerConfig, "from_dict", classmethod(_missing_lr_defaults))),
    ("config: unknown fields are an error", "config_errors",
     lambda mp: mp.setattr(SchedulerConfig, "from_dict", classmethod(_drops_unknown))),
    ("config: method names in any case", "defaults",
     lambda mp: mp.setattr(SchedulerConfig, "from_dict", classmethod(_case_sensitive))),
    ("types: a whole float is not an int", "errors_and_skips",
     patch("_is_int", _whole_floats_are_ints)),
    ("types: a bool is not an int", "errors_and_skips",
     patch("_is_int", lambda v: isinstance(v, int))),
    ("first eigenvalue: d = 1", "abs_growth_by_patience",
     after_event("on_eigenvalue", _first_sets_d0)),
    ("drop: lam <= lam_ref / alpha", "abs_growth_by_drop",
     patch("on_eigenvalue", _boundary_is_not_a_drop)),
    ("patience growth keeps lam_ref", "abs_growth_by_patience",
     after_event("on_eigenvalue", _patience_moves_reference)),
    ("no check at B_max", "abs_growth_by_drop", patch("_checks_active",
                                                      lambda cfg, st: cfg.uses_eigenvalues)),
    ("due when s crosses a multiple of n", "rounding_and_check_period",
     after_event("on_step", _due_on_multiples_only)),
    ("lr *= rho at the epochs in A", "lr_decay_epochs",
     after_event("on_epoch_end", _no_lr_decay)),
    ("end_epoch sets epoch_start_samples", "errors_and_skips",
     after_event("on_epoch_end", _end_keeps_epoch_start)),
    ("a skip leaves last_eigenvalue", "errors_and_skips",
     after_event("on_skip_eigenvalue", _skip_clears_last)),
    ("state dict: invariants refused", "state_dicts",
     patch("_invariant_problems", lambda cfg, st: [])),
    ("state dict: version 1 loads as adv_rule batch", "state_dicts", _state_versions_without_v1),
    ("state dict: reals written as floats", "state_dicts", _reals_as_given),
    # issue 20
    ("reachable lr: ((eta * B_max) / B0) * B_max <= DBL_MAX / 8", "config_errors",
     patch("_reachable_lr", _reachable_lr_grouped)),
    ("reachable lr: no bound for a method that never grows", "lr_without_growth",
     patch("_reachable_lr", _reachable_lr_everywhere)),
    ("reachable lr: fb needs eta * B_max finite", "config_errors",
     patch("_reachable_lr", lambda cfg: (0.0,) + ORIG["_reachable_lr"](cfg)[1:])),
    ("reachable lr: eta * rho * rho ..., in order, no pow", "lr_floor_sequential",
     patch("_reachable_lr", _reachable_lr_pow)),
    ("integers <= 2**53", "integer_range",
     lambda mp: mp.setattr(_scheduler, "MAX_INT", 2 ** 64)),
    ("config: micro_batch_size >= 1", "config_errors", _config_filter(_micro_zero_is_default)),
    ("config: micro_batch_size divides batch_size", "config_errors",
     _config_filter(_micro_divides_max_only)),
    ("config: rho = 1 allowed", "spec_corners", _config_filter(_refuse("lr_decay_factor", 1.0))),
    ("config: tau = 0 allowed", "spec_corners", _config_filter(_refuse("adv_stop", 0.0))),
    ("config: adv_eps, adv_decay, warmup_epochs finite", "config_errors",
     _config_filter(_infinite_accepted)),
    ("step(null) is a full batch", "spec_corners", patch("on_step", _null_samples_refused)),
    ("step: type checked before value", "spec_corners", patch("on_step", _value_before_type)),
    ("end_epoch refused on a loaded finished state", "negative_zero_gamma",
     _finished_flag_not_saved),
    ("the adversary stops only if gamma > 0", "negative_zero_gamma",
     after_event("on_epoch_end", _stop_without_gamma_test)),
    ("blocks: the last block capped at B", "adv_blocks_capped",
     patch("_adv_ranges", _blocks_uncapped_at_b)),
    ("blocks: a short step capped at k", "adv_blocks_capped",
     lambda mp: mp.setattr(Decision, "adversarial_ranges", _short_step_uncapped)),
    ("decision: adv_fraction 0.0 unless absa", "state_dicts",
     after_decide(_non_absa_passes_gamma)),
    ("invariant: fb has B = B_max", "state_dicts",
     _without_invariant(lambda f, t, cfg: f == "batch_size" and cfg.method == "fb")),
    ("invariant: gamma = 0 at B_max", "state_dicts",
     _without_invariant(lambda f, t, cfg: "should be 0" in t and cfg.method == "absa")),
    ("invariant: gamma = 0 unless absa", "state_dicts",
     _without_invariant(lambda f, t, cfg: "should be 0" in t and cfg.method != "absa")),
    ("invariant: d <= max(kappa - 1, 1)", "state_dicts",
     _without_invariant(lambda f, t, cfg: "not below patience" in t)),
    ("invariant: kappa = 1 allows d = 1", "state_dicts",
     patch("_invariant_problems", _kappa_one_without_exception)),
    ("invariant: last_eigenvalue finite and >= 0", "state_dicts",
     _without_invariant(lambda f, t, cfg: t.startswith("last_eigenvalue -"))),
    ("invariant: d = 0 while lam_ref is null", "state_dicts",
     _without_invariant(lambda f, t, cfg: t.startswith("patience_count must be 0"))),
    ("invariant: last_eigenvalue null while lam_ref is null", "state_dicts",
     _without_invariant(lambda f, t, cfg: t.startswith("last_eigenvalue must be null"))),
    ("invariant: no check due after the last epoch", "state_dicts",
     _without_invariant(lambda f, t, cfg: "after the last epoch" in t)),
    ("invariant: a lower bound only above the threshold", "state_dicts",
     _without_invariant(lambda f, t, cfg: f == "last_eigenvalue_bound")),
    ("state dict: a version's defaults fill absent fields, not null ones", "state_dicts",
     _null_takes_the_version_default),
    ("no contraction: the warm-up in two roundings", "fb_order_of_operations",
     after_decide(_warmup_fused)),
    ("state dict: unknown top-level keys refused", "state_dicts",
     lambda mp: mp.setattr(_scheduler, "_STATE_DICT_KEYS",
                           _scheduler._STATE_DICT_KEYS + ("saved_at",))),
    ("state dict: version an int in 1..3", "state_dicts",
     _version_compared_loosely),
    ("errors: the exact field, not a neighbour", "config_errors", patch("_err", _neighbour_field)),
    # issue 22
    ("lower bound: counted like the value above the threshold", "lower_bound_checks",
     after_event("on_eigenvalue", lambda c, s, o, lam, lower_bound=False:
                 rep(o, last_eigenvalue_bound=False) if lower_bound else o)),
    ("lower bound: refused at or below the threshold", "lower_bound_checks",
     patch("on_eigenvalue", lambda c, s, lam, lower_bound=False:
           ORIG["on_eigenvalue"](c, s, lam)
           if lower_bound and s.lam_ref is not None else
           ORIG["on_eigenvalue"](c, s, lam, lower_bound=lower_bound))),
    ("decision: eigenvalue_threshold = lam_ref / alpha", "lower_bound_checks",
     after_decide(lambda c, s, d: rep(d, eigenvalue_threshold=s.lam_ref))),
]


def _with_default_rule(rule):
    original = SchedulerConfig.__init__

    def init(self, *args, **kw):
        kw.setdefault("adv_rule", rule)
        original(self, *args, **kw)
    return init


def _failing(name):
    try:
        return replay(TRACES[name])
    except Exception as exc:          # a crash in the replay is a failure too
        return [exc]


def test_the_traces_pass_unbroken():
    assert all(_failing(name) == [] for name in TRACES)


@pytest.mark.parametrize("rule, catcher, mutate", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_breaking_a_rule_fails_a_trace(monkeypatch, rule, catcher, mutate):
    mutate(monkeypatch)
    found = _failing(catcher)
    assert found, f"breaking '{rule}' passes {catcher}"


def test_every_mutation_is_a_different_rule():
    assert len({m[0] for m in MUTATIONS}) == len(MUTATIONS) >= 40
    assert {m[1] for m in MUTATIONS} <= set(TRACES)
    json.dumps([m[0] for m in MUTATIONS])


def test_the_rule_list_is_the_checklist_of_porting_md():
    """docs/porting.md section 9 lists the same (rule, trace) rows as MUTATIONS, in order: a
    rule documented there without a mutation here (or the other way round) fails."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "porting.md").read_text("utf-8")
    section = text[text.index("## 9. The rules and the traces that pin them"):]
    rows = re.findall(r"^\| (.+) \| `(\w+)` \|$", section, flags=re.M)
    assert rows == [(rule, trace) for rule, trace, _ in MUTATIONS]
    assert all(trace in TRACES for _, trace in rows)
