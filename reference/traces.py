"""Conformance traces: event sequences with the exact decisions the scheduler must produce.

A port of the scheduler core (to C++, Rust, JAX, ...) proves it implements Algorithm 1 the same
way as ``hessbatch`` by replaying the traces shipped in ``hessbatch/traces/*.json``: it builds
the scheduler from the trace's config, checks the initial decision, then feeds the events one by
one and compares, after each, its decision (and its state) with the one recorded. This module
is the Python side: the file format, :func:`load_trace`, :func:`replay` (which replays a trace
through :class:`hessbatch.Scheduler`, or through any object with the same protocol),
:func:`builtin_traces`, and :class:`TraceRecorder`, which writes new traces. docs/porting.md
describes the protocol for a port; ``python -m hessbatch._make_traces`` regenerates the shipped
files from their hand-written event scripts.

File format (JSON, UTF-8; ``version`` 3)::

    {"format": "hessbatch.trace", "version": 3, "kind": "events",
     "name": "...", "description": "...", "covers": ["growth by drop", ...], "count": 42,
     "config": {SchedulerConfig fields, as given},
     "initial": {"decision": {...}, "state": {...}},
     "events": [
       {"event": "step", "samples": 100, "adv_ranges": [[0, 20]], "decision": {...},
        "state": {...}},
       {"event": "eigenvalue", "value": 3.0, "note": "8 -> 3 drops by > alpha: grow", ...},
       {"event": "eigenvalue", "value": "NaN", "error": {"kind": "value",
        "field": "eigenvalue"}, "decision": {...}, "state": {...}},
       {"event": "eigenvalue", "value": 4.5, "lower_bound": true, ...},
       {"event": "step", "samples": {"float": 100.0}, "error": {"kind": "type",
        "field": "samples"}, ...},
       {"event": "skip_eigenvalue", ...}, {"event": "epoch_end", ...},
       {"event": "save_load", ...}]}

``count`` is the number of events (of cases for ``config_errors``): a file whose list was
truncated, or lost an event in an edit, is refused instead of replaying as a shorter success.
``decision`` holds every field of :class:`hessbatch.Decision` and ``state`` every field of the
state dict's ``state`` (:class:`hessbatch.SchedulerState`), both as they are *after* the event;
an accepted step also records ``adv_ranges``, where its ``samples`` put their adversarial
samples (``decision.adversarial_ranges(k)`` before the step). An event with ``error`` must
fail with that kind of error (``"protocol"``: events out of order,
:class:`hessbatch.SchedulerError`; ``"value"``: :class:`ValueError`; ``"type"``:
:class:`TypeError`) whose ``field`` attribute is exactly the recorded ``field`` (``null``
for protocol errors; docs/porting.md section 4 lists the vocabulary); the decision and state
recorded with it are those before the event: a refused event changes nothing. ``save_load`` serialises the state dict to JSON text, parses it into a fresh
scheduler built from the same config, and carries on with that one. Non-finite eigenvalues,
which JSON cannot spell as numbers, are the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"``; any other string is passed through unchanged (to test a wrong type). A float
where an int is expected (an input that tests a type error) is written ``{"float": x}``, so
that a parser without separate ints (JavaScript's) still sees a float; the JSON type of every
recorded field is fixed by ``DECISION_TYPES``, ``STATE_TYPES`` and ``CONFIG_TYPES``, and
:func:`check_language_neutral` checks a trace against both rules. A file of ``"kind":
"config_errors"`` holds ``"cases"``: ``{"config": {...}, "error": {...}}``; one of ``"kind":
"state_dicts"`` holds ``"cases"``: ``{"load_into": config, "state_dict": {...}}`` with either
``"error"`` or the ``"decision"`` and the state dict written back (``"saved"``) after loading.

Comparison rule (decided here, stated in docs/porting.md): decisions must agree *bit for bit*.
Ints, bools, strings and nulls compare with ``==`` and must have the same JSON type; floats
compare by their shortest round-trip text (Python ``repr``), which is equivalent to equality of
the IEEE-754 doubles because the files are written with that text and every JSON parser that
rounds correctly reads back the same double (``-0.0`` and ``0.0`` differ). No tolerance: the
core fixes the order of every floating-point operation (docs/porting.md lists them), so an exact
port reproduces the same doubles, and a tolerance would hide a wrong rounding rule.

Example:
    >>> from hessbatch.traces import builtin_traces, load_trace, replay
    >>> paths = builtin_traces()
    >>> trace = load_trace(next(p for p in paths if p.name == "abs_growth_by_drop.json"))
    >>> replay(trace)
    []
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.resources
import json
import math
import os
import random
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from ._scheduler import Scheduler, SchedulerConfig, SchedulerError

__all__ = [
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "KINDS",
    "DECISION_TYPES",
    "STATE_TYPES",
    "CONFIG_TYPES",
    "check_language_neutral",
    "ERROR_KINDS",
    "EVENTS",
    "Mismatch",
    "Trace",
    "TraceRecorder",
    "builtin_traces",
    "load_trace",
    "replay",
    "dump_trace",
    "trace_to_json",
    "config_error_trace",
    "state_dict_trace",
    "decode_tags",
    "encode_tags",
    "error_field",
    "random_trace",
    "main",
]

TRACE_FORMAT = "hessbatch.trace"
# 2: language-neutral numbers, and "count" states the number of events (or cases); 3: errors
# name one exact "field" (not "mentions"), eigenvalue events may be lower bounds, and the
# decision and state have eigenvalue_threshold and last_eigenvalue_bound
TRACE_VERSION = 3
KINDS = ("events", "config_errors", "state_dicts")
EVENTS = ("step", "eigenvalue", "skip_eigenvalue", "epoch_end", "save_load")
FLOAT_TAG = "float"  # {"float": 100.0}: a float where an int is expected (see TYPES)

# The JSON type of every field a trace records or feeds in, the table of docs/porting.md:
# "int", "float", "bool", "str", "float|null", "ranges" (a list of [int, int]), "int list".
# A port whose JSON parser does not keep ints and floats apart (JavaScript's) takes the types
# from here; check_language_neutral() proves that every trace obeys the table.
DECISION_TYPES: dict[str, str] = {
    "method": "str", "batch_size": "int", "micro_batch_size": "int",
    "accumulation_steps": "int", "lr": "float", "adv_fraction": "float", "adv_count": "int",
    "adv_eps": "float", "adv_rule": "str", "adv_ranges": "ranges", "eigenvalue_due": "bool",
    "eigenvalue_threshold": "float|null", "epoch": "int", "samples_seen": "int",
    "updates": "int", "finished": "bool",
    "reason": "str"}
STATE_TYPES: dict[str, str] = {
    "batch_size": "int", "lr": "float", "lam_ref": "float|null", "patience_count": "int",
    "samples_seen": "int", "adv_fraction": "float", "epoch": "int", "updates": "int",
    "eigenvalue_due": "bool", "epoch_start_samples": "int", "last_eigenvalue": "float|null",
    "last_eigenvalue_bound": "bool", "reason": "str"}
# config fields as a saved state dict writes them (every field, defaults filled in)
CONFIG_TYPES: dict[str, str] = {
    "method": "str", "lr": "float", "batch_size": "int", "samples_per_epoch": "int",
    "epochs": "int", "max_batch_size": "int", "micro_batch_size": "int",
    "lr_decay_epochs": "int list", "lr_decay_factor": "float", "alpha": "float",
    "beta": "float", "check_every": "int", "patience": "int", "adv_eps": "float",
    "adv_fraction": "float", "adv_decay": "float", "adv_stop": "float",
    "warmup_epochs": "float", "adv_rule": "str"}
# where an int is expected on input: a bare JSON float never stands there, a float is tagged
INT_INPUTS = frozenset(k for k, v in CONFIG_TYPES.items() if v in ("int", "int list")) | \
    {"samples"} | frozenset(k for k, v in STATE_TYPES.items() if v == "int")
# kind of error in a trace -> the Python exception class that carries it
ERROR_KINDS: dict[str, type[Exception]] = {
    "protocol": SchedulerError, "value": ValueError, "type": TypeError}
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TOP_KEYS_EVENTS = {"format", "version", "kind", "name", "description", "covers", "count",
                    "config", "initial", "events"}
_TOP_KEYS_CONFIGS = {"format", "version", "kind", "name", "description", "covers", "count",
                     "cases"}
_STATE_CASE_KEYS = {"note", "load_into", "state_dict", "error", "decision", "saved"}


# --------------------------------------------------------------------------------------------
# the trace record


@dataclass(frozen=True)
class Mismatch:
    """One difference between a trace and a replay.

    Fields:
        index: position of the event in ``trace.events`` (or of the case in ``trace.cases``);
            -1 for the initial decision.
        event: the event's name (``"initial"`` for the initial decision, ``"config"`` for a
            config-error case).
        field: ``"decision.<name>"``, ``"state.<name>"`` or ``"error"``.
        expected: the value recorded in the trace.
        got: the value the replay produced (for ``error``: the exception, or ``None``).
    """

    index: int
    event: str
    field: str
    expected: Any
    got: Any

    def __str__(self) -> str:
        return (f"event {self.index} ({self.event}): {self.field} expected {self.expected!r}, "
                f"got {self.got!r}")


@dataclass(frozen=True)
class Trace:
    """A validated conformance trace (see the module docstring for the file format).

    Build one with :func:`load_trace`, :meth:`from_dict` or :class:`TraceRecorder`.
    ``config``, ``initial`` and ``events`` are empty for a ``config_errors`` trace, whose
    ``cases`` are empty otherwise.
    """

    name: str
    description: str
    covers: tuple[str, ...]
    kind: str = "events"
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    initial: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    events: tuple[Mapping[str, Any], ...] = ()
    cases: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, data: Any, source: str = "trace") -> "Trace":
        """Check the structure of a parsed trace file and wrap it.

        Args:
            data: the parsed JSON.
            source: where it came from, for error messages.

        Raises:
            ValueError: naming the source, the place in the file and what is wrong (a trace
                that cannot be read must never replay as an empty success).
        """
        def fail(where: str, problem: str) -> None:
            raise ValueError(f"{source}: {where}: {problem}")

        if not isinstance(data, Mapping):
            fail("top level", f"must be a JSON object, got {type(data).__name__}")
        data = copy.deepcopy(data)  # the trace must not change when the caller's dict does
        if data.get("format") != TRACE_FORMAT:
            fail("format", f"must be {TRACE_FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != TRACE_VERSION:
            fail("version", f"{data.get('version')!r} is not supported (this hessbatch reads "
                 f"version {TRACE_VERSION}, whose 'count' guards against a truncated event "
                 "list; copy the traces again with python -m hessbatch.traces --copy-to DIR)")
        kind = data.get("kind", "events")
        if kind not in KINDS:
            fail("kind", f"must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        allowed = _TOP_KEYS_EVENTS if kind == "events" else _TOP_KEYS_CONFIGS
        unknown = sorted(set(data) - allowed)
        missing = sorted(allowed - {"kind", "covers"} - set(data))
        if unknown or missing:
            fail("top level", f"missing keys {missing}, unknown keys {unknown}")
        for key in ("name", "description"):
            if not isinstance(data[key], str) or not data[key]:
                fail(key, f"must be a non-empty string, got {data[key]!r}")
        covers = data.get("covers", [])
        if not isinstance(covers, list) or not all(isinstance(c, str) for c in covers):
            fail("covers", f"must be a list of strings, got {covers!r}")
        seq_key = "events" if kind == "events" else "cases"
        count = data["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            fail("count", f"must be the number of {seq_key} (an int >= 1), got {count!r}")
        if isinstance(data[seq_key], list) and data[seq_key] and len(data[seq_key]) != count:
            fail(seq_key, f"the file holds {len(data[seq_key])} {seq_key} but its count says "
                 f"{count}: the list is truncated or was edited; restore the file")
        if kind in ("config_errors", "state_dicts"):
            cases = data["cases"]
            if not isinstance(cases, list) or not cases:
                fail("cases", "must be a non-empty list")
        if kind == "state_dicts":
            for i, case in enumerate(cases):
                where = f"cases[{i}]"
                if not isinstance(case, Mapping) or set(case) - _STATE_CASE_KEYS \
                        or not isinstance(case.get("load_into"), Mapping) \
                        or "state_dict" not in case:
                    fail(where, "must be an object with 'load_into' (a config object), "
                         "'state_dict', an optional 'note', and 'error' or 'decision' and "
                         "'saved'")
                if "error" in case:
                    if {"decision", "saved"} & set(case):
                        fail(where, "a refused state dict has no 'decision' or 'saved'")
                    _check_error_spec(case["error"], where + ".error", fail)
                elif not isinstance(case.get("decision"), Mapping) \
                        or not isinstance(case.get("saved"), Mapping):
                    fail(where, "an accepted state dict needs 'decision' and 'saved' objects")
            return cls(name=data["name"], description=data["description"],
                       covers=tuple(covers), kind=kind, cases=tuple(cases))
        if kind == "config_errors":
            for i, case in enumerate(cases):
                if not isinstance(case, Mapping) or set(case) - {"config", "error", "note"} \
                        or not isinstance(case.get("config"), Mapping):
                    fail(f"cases[{i}]", "must be an object with 'config' (an object), "
                         "'error' and an optional 'note'")
                _check_error_spec(case.get("error"), f"cases[{i}].error", fail)
            return cls(name=data["name"], description=data["description"],
                       covers=tuple(covers), kind=kind, cases=tuple(cases))
        if not isinstance(data["config"], Mapping):
            fail("config", "must be an object with the SchedulerConfig fields")
        try:   # a trace's config must build: its refusal is the file's fault, not a mismatch
            SchedulerConfig.from_dict(decode_tags(data["config"]))
        except (ValueError, TypeError) as exc:
            field = error_field(exc)
            fail("config" + (f".{field}" if field and field != "config" else ""),
                 f"not a valid config: {exc}")
        _check_snapshot(data["initial"], "initial", fail)
        events = data["events"]
        if not isinstance(events, list) or not events:
            fail("events", "must be a non-empty list")
        for i, ev in enumerate(events):
            where = f"events[{i}]"
            if not isinstance(ev, Mapping):
                fail(where, f"must be an object, got {type(ev).__name__}")
            name = ev.get("event")
            if name not in EVENTS:
                fail(where, f"'event' must be one of {', '.join(EVENTS)}, got {name!r}")
            need = {"step": {"samples"}, "eigenvalue": {"value"}}.get(name, set())
            optional = {"step": {"adv_ranges"}, "eigenvalue": {"lower_bound"}}.get(name, set())
            if "lower_bound" in ev and not isinstance(ev["lower_bound"], bool):
                fail(where + ".lower_bound", f"must be true or false, got {ev['lower_bound']!r}")
            extra = set(ev) - {"event", "note", "error", "decision", "state"} - need - optional
            if need - set(ev) or extra:
                fail(where, f"a {name} event needs {sorted(need) or 'no argument'}, got keys "
                     f"{sorted(ev)}")
            if "error" in ev:
                _check_error_spec(ev["error"], where + ".error", fail)
                if "adv_ranges" in ev:
                    fail(where, "a refused step has no 'adv_ranges' (it places nothing)")
            elif "adv_ranges" in ev:
                k = decode_tags(ev["samples"])
                if k is not None and (not isinstance(k, int) or isinstance(k, bool)):
                    fail(where + ".samples", f"an accepted step (with 'adv_ranges') needs an "
                         f"int sample count or null, got {json.dumps(ev['samples'])}")
            _check_snapshot(ev, where, fail)
        return cls(name=data["name"], description=data["description"], covers=tuple(covers),
                   kind=kind, config=data["config"], initial=data["initial"],
                   events=tuple(events))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict that :func:`trace_to_json` writes (a deep copy: edit freely)."""
        head = {"format": TRACE_FORMAT, "version": TRACE_VERSION, "kind": self.kind,
                "name": self.name, "description": self.description, "covers": list(self.covers),
                "count": len(self.events) if self.kind == "events" else len(self.cases)}
        if self.kind != "events":
            return copy.deepcopy({**head, "cases": list(self.cases)})
        return copy.deepcopy({**head, "config": self.config, "initial": self.initial,
                              "events": list(self.events)})


def _check_error_spec(spec: Any, where: str, fail: Callable[[str, str], None]) -> None:
    ok = isinstance(spec, Mapping) and set(spec) == {"kind", "field"} \
        and spec["kind"] in ERROR_KINDS
    if ok:
        # protocol errors name no field; value and type errors exactly one (porting.md, 4)
        ok = spec["field"] is None if spec["kind"] == "protocol" \
            else isinstance(spec["field"], str) and bool(spec["field"])
    if not ok:
        fail(where, f"must be {{'kind': one of {sorted(ERROR_KINDS)}, 'field': the field the "
             f"error names (null for protocol errors)}}, got {spec!r}")


def _check_snapshot(obj: Any, where: str, fail: Callable[[str, str], None]) -> None:
    if not isinstance(obj, Mapping):
        fail(where, "must be an object")
    for key in ("decision", "state"):
        if not isinstance(obj.get(key), Mapping) or not obj[key]:
            fail(where, f"needs a non-empty '{key}' object")


# --------------------------------------------------------------------------------------------
# reading and writing


def load_trace(path: str | os.PathLike | Any) -> Trace:
    """Read and validate a trace file.

    Args:
        path: a file path, or an ``importlib.resources`` traversable (as returned by
            :func:`builtin_traces`).

    Returns:
        The :class:`Trace`.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not JSON, or not a trace (the message names the file and the place).

    Example:
        >>> trace = load_trace(builtin_traces()[0])
        >>> trace.kind in ("events", "config_errors")
        True
    """
    if hasattr(path, "read_text") and not isinstance(path, (str, bytes)):
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        with open(path, encoding="utf-8") as fh:
            text, source = fh.read(), os.fspath(path)
    try:
        # parse_constant refuses the NaN/Infinity tokens Python's json would otherwise accept:
        # the files must stay standard JSON that any port can parse.
        data = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from None
    return Trace.from_dict(data, source)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name} (write it as the string \"{name}\")")


def trace_to_json(trace: Trace) -> str:
    """Standard JSON text of a trace: the header keys first, then one event per line.

    One event per line keeps the files readable and their diffs small when the core changes.
    Floats are written with Python's shortest round-trip ``repr``.
    """
    data = trace.to_dict()
    items = [k for k in data if k not in ("events", "cases")]
    lines = [f"  {json.dumps(k)}: {json.dumps(data[k], allow_nan=False)}" for k in items]
    seq_key = "events" if trace.kind == "events" else "cases"
    body = ",\n".join("    " + json.dumps(e, allow_nan=False) for e in data[seq_key])
    lines.append(f"  {json.dumps(seq_key)}: [\n{body}\n  ]")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def dump_trace(trace: Trace, path: str | os.PathLike) -> None:
    """Write :func:`trace_to_json` of ``trace`` to ``path`` (UTF-8, ``\\n`` line ends)."""
    from ._outputs import write_file
    write_file(path, trace_to_json(trace))  # atomic: an old file is never left truncated


def builtin_traces() -> list[Any]:
    """The trace files shipped with hessbatch (``hessbatch/traces/*.json``), sorted by name.

    Returns:
        Traversables (plain :class:`pathlib.Path` objects for an ordinary install), each
        readable with :func:`load_trace`.
    """
    folder = importlib.resources.files("hessbatch").joinpath("traces")
    return sorted((p for p in folder.iterdir() if p.name.endswith(".json")),
                  key=lambda p: p.name)


# --------------------------------------------------------------------------------------------
# replay


def _decode_value(value: Any) -> Any:
    if isinstance(value, str) and value in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[value]
    return value


def _encode_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _is_tag(value: Any) -> bool:
    if not (isinstance(value, Mapping) and set(value) == {FLOAT_TAG}):
        return False
    inner = value[FLOAT_TAG]
    return inner in _SPECIAL_FLOATS if isinstance(inner, str) else \
        isinstance(inner, (int, float)) and not isinstance(inner, bool)


def decode_tags(value: Any) -> Any:
    """``value`` with every ``{"float": x}`` replaced by the float ``x`` (recursively).

    The tag marks a float in a place where an int is expected (a wrong-type input a trace
    tests, such as ``step(100.0)``): a JSON parser that reads ``100.0`` as the integer 100
    (JavaScript's) still sees that it is a float. ``x`` may also be ``"NaN"``, ``"Infinity"``
    or ``"-Infinity"``: a non-finite double in an input (``{"adv_decay": {"float":
    "Infinity"}}``), which JSON cannot write as a number.
    """
    if _is_tag(value):
        inner = value[FLOAT_TAG]
        return _SPECIAL_FLOATS[inner] if isinstance(inner, str) else float(inner)
    if isinstance(value, Mapping):
        return {k: decode_tags(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_tags(v) for v in value]
    return value


def encode_tags(value: Any, key: str | None = None) -> Any:
    """Inverse of :func:`decode_tags` for inputs: a float at an int position (a key in
    ``INT_INPUTS``, or inside ``lr_decay_epochs``) becomes ``{"float": x}``."""
    if isinstance(value, Mapping):
        return {k: encode_tags(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_tags(v, key) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {FLOAT_TAG: _encode_value(value)}      # JSON has no number for it
    if key in INT_INPUTS and isinstance(value, float):
        return {FLOAT_TAG: value}
    return value


_JSON_TYPES = {"int": lambda v: type(v) is int, "float": lambda v: type(v) is float,
               "bool": lambda v: type(v) is bool, "str": lambda v: type(v) is str,
               "float|null": lambda v: v is None or type(v) is float,
               "int list": lambda v: type(v) is list and all(type(e) is int for e in v),
               "ranges": lambda v: type(v) is list and all(
                   type(r) is list and len(r) == 2 and all(type(e) is int for e in r)
                   for r in v)}


def _typed(where: str, obj: Any, table: Mapping[str, str]) -> list[str]:
    if not isinstance(obj, Mapping):
        return [f"{where}: not an object"]
    out = [f"{where}.{k}: not a field of the type table" for k in obj if k not in table]
    for k, want in table.items():
        if k not in obj:
            out.append(f"{where}.{k}: missing")
        elif not _JSON_TYPES[want](obj[k]):
            out.append(f"{where}.{k}: must be JSON {want}, got {json.dumps(obj[k])}")
    return out


def _bare_floats(where: str, value: Any, key: str | None = None) -> list[str]:
    """Bare JSON floats at int positions of an input (they must be tagged)."""
    if _is_tag(value):
        return []
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _bare_floats(f"{where}.{k}", v, k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _bare_floats(f"{where}[{i}]", v, key)]
    if key in INT_INPUTS and isinstance(value, float):
        return [f"{where}: the float {value!r} stands where an int is expected; write it "
                f'{{"{FLOAT_TAG}": {value!r}}} so that a parser without ints still sees a float']
    return []


def check_language_neutral(data: Mapping[str, Any]) -> list[str]:
    """Problems that would make a trace read differently by a JSON parser without ints.

    The rule (docs/porting.md, "Language-neutral numbers"): every decision, state and saved
    state dict in a trace has exactly the JSON types of ``DECISION_TYPES``, ``STATE_TYPES``
    and ``CONFIG_TYPES`` (floats are always written with a fraction or an exponent, ints
    never), so a port may take the types from the table instead of the text; and no input
    (config, ``samples``, a state dict to load) holds a bare float where an int is expected:
    such a float is written ``{"float": x}``.

    Args:
        data: a parsed trace (Python's ``json`` keeps ints and floats apart, as the text does).

    Returns:
        One line per problem, empty when the trace obeys the rule.
    """
    out: list[str] = []
    kind = data.get("kind", "events")
    if kind == "events":
        out += _bare_floats("config", data.get("config", {}))
        snaps = [("initial", data.get("initial", {}))] + \
            [(f"events[{i}]", e) for i, e in enumerate(data.get("events", []))]
        for where, snap in snaps:
            out += _typed(where + ".decision", snap.get("decision"), DECISION_TYPES)
            out += _typed(where + ".state", snap.get("state"), STATE_TYPES)
            if "samples" in snap:
                out += _bare_floats(where, {"samples": snap["samples"]})
            if "adv_ranges" in snap and not _JSON_TYPES["ranges"](snap["adv_ranges"]):
                out.append(f"{where}.adv_ranges: must be JSON ranges, got "
                           f"{json.dumps(snap['adv_ranges'])}")
    elif kind == "config_errors":
        for i, case in enumerate(data.get("cases", [])):
            out += _bare_floats(f"cases[{i}].config", case.get("config", {}))
    else:
        for i, case in enumerate(data.get("cases", [])):
            where = f"cases[{i}]"
            out += _bare_floats(where + ".load_into", case.get("load_into", {}))
            out += _bare_floats(where + ".state_dict", case.get("state_dict"))
            if "saved" in case:
                saved = case["saved"]
                out += _typed(where + ".saved.config", saved.get("config"), CONFIG_TYPES)
                out += _typed(where + ".saved.state", saved.get("state"), STATE_TYPES)
                out += _typed(where + ".decision", case.get("decision"), DECISION_TYPES)
    return out


def _same(expected: Any, got: Any) -> bool:
    """Exact agreement under the module's comparison rule (floats by their repr)."""
    if isinstance(expected, float):
        return isinstance(got, float) and repr(got) == repr(expected)
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, int):
        return type(got) is int and got == expected
    if isinstance(expected, list):
        return type(got) is list and len(got) == len(expected) and \
            all(_same(e, g) for e, g in zip(expected, got))
    return type(expected) is type(got) and expected == got


def _compare(index: int, event: str, prefix: str, expected: Mapping[str, Any],
             got: Mapping[str, Any], skip: set[str]) -> list[Mismatch]:
    out = []
    for key in sorted((set(expected) | set(got)) - skip):
        exp = expected.get(key, "<absent>")
        val = got.get(key, "<absent>")
        if key not in expected or key not in got or not _same(exp, val):
            out.append(Mismatch(index, event, f"{prefix}.{key}", exp, val))
    return out


def error_field(exc: BaseException) -> str | None:
    """The field an error of the core names: its ``field`` attribute (None for protocol
    errors and for an error that carries none)."""
    return getattr(exc, "field", None)


def _error_mismatch(index: int, event: str, spec: Mapping[str, Any] | None,
                    exc: BaseException | None) -> list[Mismatch]:
    def describe(e: BaseException | None) -> str | None:
        if e is None:
            return None
        field = error_field(e)
        return f"{type(e).__name__}: {e}" + (f" [field {field!r}]" if field else "")

    if spec is None:
        return [] if exc is None else [Mismatch(index, event, "error", None, describe(exc))]
    wanted = f"{spec['kind']} error ({ERROR_KINDS[spec['kind']].__name__}) with field " \
             f"{spec['field']!r}"
    # exact: substring matching would let a check that names a neighbouring field pass
    # (lr in lr_decay_factor, batch_size in max_batch_size, epochs in lr_decay_epochs)
    if exc is None or not isinstance(exc, ERROR_KINDS[spec["kind"]]) \
            or error_field(exc) != spec["field"]:
        return [Mismatch(index, event, "error", wanted, describe(exc))]
    return []


def _spec(error: Sequence[str | None]) -> dict[str, Any]:
    """``(kind, field)`` (or ``(kind,)`` for a protocol error) as a trace's error object."""
    if not error or error[0] not in ERROR_KINDS or len(error) > 2:
        raise ValueError(f"error must be (kind, field) with kind in {sorted(ERROR_KINDS)}, "
                         f"got {error!r}")
    return {"kind": error[0], "field": error[1] if len(error) == 2 else None}


def _step_size(decision: Any, samples: Any) -> Any:
    # step() without a sample count (null) is a full batch of the decided B
    return decision.batch_size if samples is None else samples


def _snapshot(sch: Any) -> dict[str, Any]:
    return {"decision": sch.decision.to_dict(), "state": sch.state_dict()["state"]}


def _apply(sch: Any, ev: Mapping[str, Any], config: SchedulerConfig,
           factory: Callable[[SchedulerConfig], Any]) -> Any:
    """Feed one event; return the scheduler to carry on with (new after save_load)."""
    name = ev["event"]
    if name == "step":
        sch.step(decode_tags(ev["samples"]))
    elif name == "eigenvalue":
        if ev.get("lower_bound", False):
            sch.eigenvalue(_decode_value(ev["value"]), lower_bound=True)
        else:
            sch.eigenvalue(_decode_value(ev["value"]))
    elif name == "skip_eigenvalue":
        sch.skip_eigenvalue()
    elif name == "epoch_end":
        sch.end_epoch()
    else:  # save_load: through JSON text, as a checkpoint file would go
        text = json.dumps(sch.state_dict(), allow_nan=False)
        fresh = factory(config)
        fresh.load_state_dict(json.loads(text))
        return fresh
    return sch


def replay(trace: Trace | Mapping[str, Any] | str | os.PathLike, *,
           factory: Callable[[SchedulerConfig], Any] | None = None,
           check_state: bool = True, check_reason: bool = True) -> list[Mismatch]:
    """Replay a trace and list every difference from what it recorded.

    Each event is applied to the scheduler; then its decision (and state dict's ``state``) is
    compared field by field with the recorded one, exactly (see the module docstring), and an
    event recorded with an error must raise that kind of error mentioning the recorded strings.
    Replay goes on after a mismatch, so one run shows every difference.

    Args:
        trace: a :class:`Trace`, a parsed trace dict, or a path to a trace file.
        factory: builds the scheduler under test from a :class:`hessbatch.SchedulerConfig`
            (default :class:`hessbatch.Scheduler`). It must offer ``decision`` (with
            ``to_dict()``), ``step(n)``, ``eigenvalue(lam)``, ``skip_eigenvalue()``,
            ``end_epoch()``, ``state_dict()`` and ``load_state_dict(dct)``.
        check_state: compare the state too (a port that reads and writes hessbatch's state
            dicts must); with False only decisions are compared.
        check_reason: compare the ``reason`` log strings (a port may word them differently).

    Returns:
        The list of :class:`Mismatch`, empty when the replay agrees with the trace.

    Raises:
        ValueError: the trace itself is malformed.

    Example:
        >>> trace = load_trace(builtin_traces()[0])
        >>> replay(trace, check_reason=False)
        []
    """
    if not isinstance(trace, Trace):
        trace = load_trace(trace) if isinstance(trace, (str, os.PathLike)) \
            else Trace.from_dict(trace)
    factory = Scheduler if factory is None else factory
    skip = set() if check_reason else {"reason"}
    if trace.kind == "state_dicts":
        return _replay_state_dicts(trace, factory, skip)
    if trace.kind == "config_errors":
        out = []
        for i, case in enumerate(trace.cases):
            try:
                SchedulerConfig.from_dict(decode_tags(case["config"]))
            except (SchedulerError, ValueError, TypeError) as exc:
                out += _error_mismatch(i, "config", case["error"], exc)
            else:
                out += _error_mismatch(i, "config", case["error"], None)
        return out

    config = SchedulerConfig.from_dict(decode_tags(trace.config))
    sch = factory(config)

    def check(index: int, event: str, expected: Mapping[str, Any]) -> list[Mismatch]:
        got = _snapshot(sch)
        found = _compare(index, event, "decision", expected["decision"], got["decision"], skip)
        if check_state:
            found += _compare(index, event, "state", expected["state"], got["state"], skip)
        return found

    mismatches = check(-1, "initial", trace.initial)
    for i, ev in enumerate(trace.events):
        exc = None
        if "adv_ranges" in ev:   # where this step's adversarial samples go, before it runs
            try:
                got = [list(r) for r in sch.decision.adversarial_ranges(
                    _step_size(sch.decision, decode_tags(ev["samples"])))]
            except (ValueError, TypeError) as error:   # a step the core refuses places nothing
                got = f"{type(error).__name__}: {error}"
            if not _same(ev["adv_ranges"], got):
                mismatches.append(Mismatch(i, "step", "adv_ranges", ev["adv_ranges"], got))
        try:
            sch = _apply(sch, ev, config, factory)
        except (SchedulerError, ValueError, TypeError) as error:
            exc = error
        mismatches += _error_mismatch(i, ev["event"], ev.get("error"), exc)
        mismatches += check(i, ev["event"], ev)
    return mismatches


def _replay_state_dicts(trace: Trace, factory: Callable[[SchedulerConfig], Any],
                        skip: set[str]) -> list[Mismatch]:
    """Each case: build from ``load_into``, load ``state_dict`` (tags decoded); a refusal
    must raise the recorded error; an accepted one must give ``decision`` and write back
    ``saved`` (format, version, every config and state field, exactly)."""
    out: list[Mismatch] = []
    for i, case in enumerate(trace.cases):
        exc, sch = None, None
        try:
            sch = factory(SchedulerConfig.from_dict(decode_tags(case["load_into"])))
            sch.load_state_dict(decode_tags(case["state_dict"]))
        except (SchedulerError, ValueError, TypeError) as error:
            exc = error
        out += _error_mismatch(i, "load", case.get("error"), exc)
        if exc is not None or "error" in case:
            continue
        out += _compare(i, "load", "decision", case["decision"], sch.decision.to_dict(), skip)
        saved, got = case["saved"], sch.state_dict()
        out += _compare(i, "load", "saved", {k: v for k, v in saved.items()
                                             if k not in ("config", "state")},
                        {k: v for k, v in got.items() if k not in ("config", "state")}, set())
        for part in ("config", "state"):
            out += _compare(i, "load", f"saved.{part}", saved.get(part, {}),
                            got.get(part, {}), skip if part == "state" else set())
    return out


# --------------------------------------------------------------------------------------------
# recording new traces


def _copy(sch: Scheduler, config: SchedulerConfig) -> Scheduler:
    twin = Scheduler(config)
    twin.load_state_dict(sch.state_dict())
    return twin


class TraceRecorder:
    """Write a trace by driving the reference scheduler with an event script.

    Every call applies one event to a :class:`hessbatch.Scheduler` and records the event with
    the decision and state that followed. An event meant to fail must say so with
    ``error=(kind, field)`` (``(kind,)`` for a protocol error); an error the script did not
    declare, or a declared one that
    does not happen, raises :class:`AssertionError`, so a slip in a script cannot turn into
    a recorded expectation.

    Args:
        name: the trace's name (also its file name without ``.json``).
        description: what the trace exercises, in a sentence or two.
        config: a :class:`hessbatch.SchedulerConfig` (written with every field) or a dict of
            its fields (written as given: fields left out or null take their defaults).
        covers: the branches of Algorithm 1 the trace is written to reach.

    Example:
        >>> rec = TraceRecorder("tiny", "two steps and a first eigenvalue",
        ...                     dict(method="abs", lr=0.1, batch_size=100,
        ...                          samples_per_epoch=200, epochs=1, max_batch_size=200))
        >>> _ = rec.step(); d = rec.step(); d.eigenvalue_due
        True
        >>> rec.eigenvalue(float("nan"), error=("value", "finite")).eigenvalue_due
        True
        >>> replay(rec.trace())
        []
    """

    def __init__(self, name: str, description: str,
                 config: SchedulerConfig | Mapping[str, Any], covers: Iterable[str] = ()):
        # a dict is written as given (a trace may leave fields to their defaults on purpose)
        self.config_dict = encode_tags(config.to_dict() if isinstance(config, SchedulerConfig)
                                       else dict(config))
        self.config = SchedulerConfig.from_dict(decode_tags(self.config_dict))
        self.name, self.description, self.covers = name, description, tuple(covers)
        self.scheduler = Scheduler(self.config)
        self.initial = _snapshot(self.scheduler)
        self.events: list[dict[str, Any]] = []

    @property
    def decision(self):
        """The scheduler's current decision."""
        return self.scheduler.decision

    def _record(self, event: dict[str, Any], note: str | None,
                error: Sequence[str] | None):
        exc, before = None, self.scheduler
        try:
            # on a copy: a refused script line must leave the recorder as it was
            self.scheduler = _apply(_copy(before, self.config), event, self.config, Scheduler)
        except (SchedulerError, ValueError, TypeError) as caught:
            exc, self.scheduler = caught, before
        if exc is None and error is not None:
            self.scheduler = before
        if error is None and exc is not None:
            raise AssertionError(f"{self.name}: event {len(self.events)} {event} raised an "
                                 f"undeclared {type(exc).__name__}: {exc}")
        if error is not None:
            spec = _spec(error)
            if _error_mismatch(len(self.events), event["event"], spec, exc):
                raise AssertionError(f"{self.name}: event {len(self.events)} {event} should "
                                     f"fail with {spec}, got {exc!r}")
        if note:
            event["note"] = note
        if event["event"] == "step" and error is None:
            event["adv_ranges"] = [list(r) for r in before.decision.adversarial_ranges(
                _step_size(before.decision, decode_tags(event["samples"])))]
        if error is not None:
            event["error"] = spec
        event.update(_snapshot(self.scheduler))
        self.events.append(event)
        return self.scheduler.decision

    def step(self, samples: Any = None, *, note: str | None = None,
             error: Sequence[str] | None = None, null: bool = False):
        """Record a step of ``samples`` samples (default: the decided batch size, written as
        a number; with ``null=True`` written as ``null``, which a port must read as B)."""
        n = self.scheduler.decision.batch_size if samples is None and not null else samples
        return self._record({"event": "step", "samples": encode_tags(n, "samples")}, note,
                            error)

    def eigenvalue(self, value: Any, *, lower_bound: bool = False, note: str | None = None,
                   error: Sequence[str] | None = None):
        """Record an eigenvalue report (non-finite floats are written as strings); with
        ``lower_bound=True`` a lower bound on it (``"lower_bound": true`` in the file)."""
        event = {"event": "eigenvalue", "value": _encode_value(value)}
        if lower_bound:
            event["lower_bound"] = True
        return self._record(event, note, error)

    def skip_eigenvalue(self, *, note: str | None = None, error: Sequence[str] | None = None):
        """Record a skipped check."""
        return self._record({"event": "skip_eigenvalue"}, note, error)

    def end_epoch(self, *, note: str | None = None, error: Sequence[str] | None = None):
        """Record an epoch end."""
        return self._record({"event": "epoch_end"}, note, error)

    def save_load(self, *, note: str | None = None):
        """Record a state dict round trip through JSON into a fresh scheduler."""
        return self._record({"event": "save_load"}, note, None)

    def trace(self) -> Trace:
        """The recorded :class:`Trace` (validated)."""
        return Trace.from_dict({
            "format": TRACE_FORMAT, "version": TRACE_VERSION, "kind": "events",
            "name": self.name, "description": self.description, "covers": list(self.covers),
            "count": len(self.events), "config": self.config_dict, "initial": self.initial,
            "events": self.events}, self.name)


def config_error_trace(name: str, description: str,
                       cases: Iterable[tuple[Mapping[str, Any], Sequence[str]]],
                       covers: Iterable[str] = ()) -> Trace:
    """A ``config_errors`` trace: configs that must be refused, each with its error.

    Args:
        cases: pairs ``(config_dict, (kind, field))``; each is checked against the
            reference core before it is recorded (an accepted config raises AssertionError).
    """
    out = []
    for i, (config, error) in enumerate(cases):
        spec = _spec(error)
        try:
            SchedulerConfig.from_dict(config)
        except (SchedulerError, ValueError, TypeError) as exc:
            caught: BaseException | None = exc
        else:
            caught = None
        if _error_mismatch(i, "config", spec, caught):
            raise AssertionError(f"{name}: case {i} {config} should fail with {spec}, "
                                 f"got {caught!r}")
        out.append({"config": encode_tags(dict(config)), "error": spec})
    return Trace.from_dict({"format": TRACE_FORMAT, "version": TRACE_VERSION,
                            "kind": "config_errors", "name": name, "description": description,
                            "covers": list(covers), "count": len(out), "cases": out}, name)


def state_dict_trace(name: str, description: str, cases: Iterable[Mapping[str, Any]],
                     covers: Iterable[str] = ()) -> Trace:
    """A ``state_dicts`` trace: state dicts a port must load (and write back) or refuse.

    Args:
        cases: dicts with ``load_into`` (the config of the scheduler that loads), ``state_dict``
            (the JSON-able dict to load, floats at int positions as Python floats: they are
            tagged here), an optional ``note`` and, for one that must be refused,
            ``error = (kind, field)``. The decision and the state dict written back after
            an accepted load are recorded from the reference core; a case that does not
            behave as declared raises AssertionError.
    """
    out = []
    for i, case in enumerate(cases):
        load_into, data = dict(case["load_into"]), copy.deepcopy(case["state_dict"])
        error = case.get("error")
        exc, sch = None, None
        try:
            sch = Scheduler(SchedulerConfig.from_dict(load_into))
            sch.load_state_dict(copy.deepcopy(data))
        except (SchedulerError, ValueError, TypeError) as caught:
            exc = caught
        spec = None if error is None else _spec(error)
        if _error_mismatch(i, "load", spec, exc):
            raise AssertionError(f"{name}: case {i} should give {spec}, got {exc!r}")
        row: dict[str, Any] = {}
        if case.get("note"):
            row["note"] = case["note"]
        row.update(load_into=encode_tags(load_into), state_dict=encode_tags(data))
        if spec is not None:
            row["error"] = spec
        else:
            row.update(decision=sch.decision.to_dict(),
                       saved=json.loads(json.dumps(sch.state_dict(), allow_nan=False)))
        out.append(row)
    return Trace.from_dict({"format": TRACE_FORMAT, "version": TRACE_VERSION,
                            "kind": "state_dicts", "name": name, "description": description,
                            "covers": list(covers), "count": len(out), "cases": out}, name)


# --------------------------------------------------------------------------------------------
# random scenarios: a port can be tested far beyond the shipped files


def _random_config(rng: random.Random) -> dict[str, Any]:
    method = rng.choice(("bl", "fb", "gg", "abs", "absa", "abs", "absa"))
    micro = rng.choice((1, 2, 5, 10, 16))
    b0 = micro * rng.randint(1, 12)
    b_max = b0 * rng.choice((1, 2, 3, 4, 8)) + micro * rng.choice((0, 0, 1, 3))
    n = rng.randint(b0, 6 * b0)
    epochs = rng.randint(1, 8)
    decay = sorted(rng.sample(range(1, epochs + 1), rng.randint(0, min(3, epochs))))
    pick = rng.choice
    return dict(
        method=pick((method, method.upper())), lr=pick((0.1, 0.05, 1.0, rng.uniform(1e-4, 2))),
        batch_size=b0, samples_per_epoch=n, epochs=epochs, max_batch_size=b_max,
        micro_batch_size=micro, lr_decay_epochs=decay,
        lr_decay_factor=pick((0.1, 0.5, 1.0, rng.uniform(0.01, 1.0))),
        alpha=pick((2.0, 1.5, rng.uniform(1.01, 4.0))), beta=pick((2.0, 1.5, 1.1, 3.0)),
        check_every=pick((None, n, max(1, n // 2), rng.randint(1, 3 * n))),
        patience=rng.randint(1, 4), adv_eps=pick((0.005, 0.0, -0.0)),
        adv_fraction=pick((0.2, 0.29, 0.0, -0.0, rng.uniform(0.0, 0.99))),
        adv_decay=pick((2.0, 1.0, 1.4, rng.uniform(1.0, 4.0))),
        adv_stop=pick((0.5, 0.0, 1.0, 0.28, rng.uniform(0.0, 1.0))),
        warmup_epochs=pick((0.0, 1.0, 5.0, rng.uniform(0.0, 3.0))),
        adv_rule=pick(("blocks", "batch")))


def _core_error(rec: "TraceRecorder", event: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The error the reference core raises for ``event`` now, as ``(kind, field)``."""
    try:
        _apply(_copy(rec.scheduler, rec.config), event, rec.config, Scheduler)
    except (SchedulerError, ValueError, TypeError) as exc:
        kind = next(k for k, cls in ERROR_KINDS.items() if isinstance(exc, cls))
        return (kind,) if kind == "protocol" else (kind, error_field(exc))
    return None


def random_trace(seed: int, name: str | None = None, max_events: int = 120) -> Trace:
    """A random scenario and the reference core's decisions for it, as an events trace.

    The config and every event are drawn from ``random.Random(seed)`` (same seed, same
    file): steps of B, of fewer samples or of ``null``; eigenvalues around the threshold, lower
    bounds, skips and bad values; epoch ends, state dict round trips, and events out of order.
    Every event the core refuses is recorded with the core's error (kind and field).

    Args:
        seed: the scenario's seed (an int).
        name: the trace name (default ``random_<seed>``).
        max_events: stop after this many events if the run has not finished.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    rng = random.Random(seed)
    for _ in range(100):    # a drawn config can be invalid (lr range): draw again
        config = _random_config(rng)
        try:
            SchedulerConfig.from_dict(config)
            break
        except (ValueError, TypeError):
            continue
    rec = TraceRecorder(name or f"random_{seed}",
                        f"A random scenario drawn with seed {seed} by "
                        "hessbatch.traces.random_trace; the decisions are the reference core's.",
                        config, covers=["random scenario"])
    while len(rec.events) < max_events and not rec.decision.finished:
        d = rec.decision
        roll = rng.random()
        if d.eigenvalue_due:
            lam_ref = rec.scheduler.state.lam_ref
            base = d.eigenvalue_threshold if d.eigenvalue_threshold is not None else 10.0
            value: Any = base * rng.choice((0.5, 1.0, 1.0000001, 2.0, rng.uniform(0.0, 3.0)))
            if roll < 0.05:
                event: dict[str, Any] = {"event": "skip_eigenvalue"}
            elif roll < 0.1:
                event = {"event": "eigenvalue", "value": _encode_value(
                    rng.choice((math.nan, math.inf, -1.0, "8", True, None)))}
            elif roll < 0.15:
                event = {"event": "save_load"}
            else:
                event = {"event": "eigenvalue", "value": value}
                if lam_ref is not None and rng.random() < 0.4:
                    event["lower_bound"] = True
        elif roll < 0.03:
            event = {"event": rng.choice(("eigenvalue", "skip_eigenvalue")), "value": 1.0}
            if event["event"] == "skip_eigenvalue":
                del event["value"]
        elif roll < 0.06:
            event = {"event": "step", "samples": encode_tags(rng.choice(
                (0, d.batch_size + 1, float(d.batch_size), "1")), "samples")}
        elif roll < 0.1:
            event = {"event": "save_load"}
        elif roll < 0.1 + 0.9 / 4 and d.samples_seen > 0:
            event = {"event": "epoch_end"}
        else:
            k = rng.choice((None, d.batch_size, d.batch_size, rng.randint(1, d.batch_size)))
            event = {"event": "step", "samples": k}
        error = None if event["event"] == "save_load" else _core_error(rec, event)
        rec._record(event, None, error)
    return rec.trace()


# --------------------------------------------------------------------------------------------
# command line: python -m hessbatch.traces


def main(argv: Sequence[str] | None = None) -> int:
    """Replay trace files (default: the built-in ones) and print a line per trace.

    ``--copy-to DIR`` writes the built-in traces into DIR, for a port to vendor them.
    Returns 0 when every trace replays without a mismatch, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="python -m hessbatch.traces",
        description="Replay conformance traces through the hessbatch scheduler core and report "
                    "every mismatch (docs/porting.md explains the format).")
    parser.add_argument("files", nargs="*", help="trace files (default: the built-in traces)")
    parser.add_argument("--copy-to", metavar="DIR",
                        help="copy the built-in traces into DIR and exit")
    parser.add_argument("--no-state", action="store_true",
                        help="compare decisions only, not the state dicts")
    parser.add_argument("--random", metavar="N", type=int,
                        help="write N random scenarios (events traces with the core's "
                             "decisions) into --out DIR and exit")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the first random scenario (scenario i uses seed + i; "
                             "default 0)")
    parser.add_argument("--out", metavar="DIR", help="folder for --random")
    args = parser.parse_args(argv)
    if args.random is not None:
        if args.random < 1 or args.out is None:
            parser.error("--random N needs N >= 1 and --out DIR (the folder to write the "
                         "scenarios to)")
        from ._outputs import check_out_dir, release_locks, write_files
        try:
            out = check_out_dir(args.out, option="--out", overwrite=True)
            write_files(out, {f"random_{args.seed + i}.json":
                              trace_to_json(random_trace(args.seed + i))
                              for i in range(args.random)})
        except (OSError, ValueError) as exc:
            print(f"python -m hessbatch.traces: error: {exc}", file=sys.stderr)
            return 2
        finally:
            release_locks()  # the folder's lock (hessbatch._outputs), taken by the check
        print(f"wrote {args.random} random scenarios (seeds {args.seed} to "
              f"{args.seed + args.random - 1}) to {args.out}")
        return 0
    if args.copy_to is not None:
        from ._outputs import check_out_dir, release_locks, write_files
        try:
            # updating a port's vendored copies is the normal use: replacing files is allowed
            out = check_out_dir(args.copy_to, option="--copy-to", overwrite=True)
            write_files(out, {p.name: p.read_text(encoding="utf-8") for p in builtin_traces()})
        except (OSError, ValueError) as exc:
            print(f"python -m hessbatch.traces: error: {exc}", file=sys.stderr)
            return 2
        finally:
            release_locks()  # the folder's lock (hessbatch._outputs), taken by the check
        print(f"copied {len(builtin_traces())} traces to {args.copy_to}")
        return 0
    paths = args.files or builtin_traces()
    bad = 0
    width = max(len(getattr(p, "name", str(p))) for p in paths)
    for path in paths:
        label = getattr(path, "name", str(path)).ljust(width)
        try:
            trace = load_trace(path)
        except (OSError, ValueError) as exc:
            # a malformed file is a failure, reported with its name; the others still replay
            print(f"{label}  error: {exc}")
            bad += 1
            continue
        try:
            found = replay(trace, check_state=not args.no_state)
        except (SchedulerError, ValueError, TypeError) as exc:
            # one line per bad file, naming it, the field and the problem; the others replay
            field = error_field(exc)
            print(f"{label}  error: {field + ': ' if field else ''}{exc}")
            bad += 1
            continue
        untyped = check_language_neutral(trace.to_dict())
        size = len(trace.events) or len(trace.cases)
        verdict = [f"{len(found)} mismatches"] * bool(found) + \
            [f"{len(untyped)} numbers not language-neutral"] * bool(untyped)
        print(f"{label}  {size:4d} {'events' if trace.kind == 'events' else 'cases '}  "
              f"{'; '.join(verdict) or 'ok'}")
        for m in found[:20]:
            print(f"    {m}")
        for problem in untyped[:20]:
            print(f"    {problem}")
        bad += bool(found or untyped)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
