"""``hessbatch theory``: Theorem 1's bound checked against SGD and ABS, with negative controls.

The checks themselves live in :mod:`hessbatch.convex._theory_check` (:func:`least_squares_check`,
:func:`mushroom_check`, returning a :class:`TheoryReport`); this module parses the options,
prints the tables and writes ``theory.json`` / ``theory.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hessbatch import theory as thm
from hessbatch._cli_common import format_table
from hessbatch._outputs import check_out_dir, write_files

from ._theory_check import (LEAST_SQUARES_RUNS, REGIME_TEXT, SHARP_DEFAULTS,
                            ConstantsContradiction, TheoryReport, least_squares_check,
                            mushroom_check)

__all__ = ["TheoryReport", "least_squares_check", "mushroom_check", "format_report",
           "save_report", "build_parser", "run"]

DESCRIPTION = """\
Check Theorem 1's convergence bound for SGD with the linear scaling rule (step b_t * eta0):

    E[F(theta_t)] - F*  <=  prod_{k<t} (1 - b_k eta0 c) (F(theta_0) - F* - G) + G,
    G = eta0 L M / (2c),  valid when eta0 <= 1 / (L (M_G + b_max)),  M_G = M_V + 1

(--condition variance puts M_V in place of M_G), for two batch schedules sharing one eta0: SGD
at --batch-size, and ABS (hessbatch's core, method abs) growing to --max-batch, in several
regimes: from theta = 0, from theta* (gap 0: the noise term binds from the first update), from
theta* + s v_min (the flattest direction: the rate term is tight) and, on least squares, run to
stationarity.

  --problem least-squares  E[F] is computed exactly at every update (no sampling noise);
                           R Monte-Carlo copies (--runs, default 10000) must agree with it:
                           their mean gaps with the exact gaps, and their mean iterate
                           (averaged along each run) with the exact mean iterate, which
                           sees a residual bias of 0.01 that the gap cannot.
  --problem mushroom       R Monte-Carlo runs of logistic regression on the UCI mushroom
                           data per regime and schedule; an update fails when the one-sided
                           lower confidence limit of the mean gap exceeds the bound.

Every run also checks itself with wrong constants (M=0, M/2, c*2; on least squares L/2 through
the condition, eta0 from the wrong L and the run repeated exactly, and M_V/2, M_V=0): a control
must FAIL, and the report says, per constant, the smallest error the check detects. A control
that passes is printed as "not sensitive", never hidden.

--problem mushroom also runs, by default: the sharp logistic regime (200 copies of one mushroom
row with balanced labels: theta* = 0 and every constant exact, the bound tight at update 1, the
gaps exact; its true bound must hold, every wrong constant must FAIL and the Monte-Carlo kernel
must agree with the exact gaps), and a second-order model check of the runs from theta* (a
check of the implementation, not of the theorem). Both enter the verdict. --problem
least-squares runs the sharp regime too, exactly (--sharp-runs 0): a self-test of the bound's
arithmetic and of the step-size condition.

Exit code: 0 when every true-constant check (and self-check) passes, 1 when one fails (or
when the constants the check computed contradict each other, c > L: its own code is wrong), 2
on bad options, 3 with --require-sharp when the true checks pass but a control passes too.

examples:
  hessbatch theory --problem least-squares --out runs/theory-lsq
  hessbatch theory --problem mushroom --runs 1000 --out runs/theory
  hessbatch theory --problem least-squares --eta0-scale 6 --ignore-condition   # must FAIL"""

_DEFAULTS = {
    "mushroom": dict(lam=0.1, epochs=5, batch_size=100, max_batch_size=1600, runs=1000,
                     checks_per_epoch=10, patience=10, regimes="zero,optimum,flattest"),
    "least-squares": dict(lam=0.0, epochs=10, batch_size=4, max_batch_size=64,
                          runs=LEAST_SQUARES_RUNS,
                          checks_per_epoch=4, patience=4, regimes="zero,optimum,flattest,stationary"),
}


# --------------------------------------------------------------------------------------------
# output


def _condition_line(rep: TheoryReport) -> str:
    k = rep.constants
    coef = (f"M_G = M_V + 1 = {k.M_G:.6g}" if rep.condition == "paper" else
            f"M_V = {k.M_V:.6g}")
    form = "1/(L (M_G + B_max))" if rep.condition == "paper" else "1/(L (M_V + B_max))"
    return (f"eta0={rep.eta0:.6g} ({rep.condition} condition eta0 <= {form}, {coef}: "
            f"{rep.eta0_max:.6g}, {'met' if rep.condition_holds else 'VIOLATED'})  "
            f"G={rep.noise_floor:.6g}  F*={rep.f_star:.10g}")


def format_report(rep: TheoryReport) -> str:
    """The tables ``hessbatch theory`` prints."""
    k = rep.constants
    lines = [
        f"Theorem 1 on {rep.problem}: L={k.L:.6g} c={k.c:.6g} M={k.M:.6g} M_V={k.M_V:.6g}",
        _condition_line(rep),
    ]
    exact = rep.problem == "least-squares"
    for name, sc in rep.schedules.items():
        sch = sc.schedule
        lines.append("")
        lines.append(f"{name.upper()}, {REGIME_TEXT['zero']}: {sch.updates} updates, "
                     f"{sch.samples} samples, batches {_batch_summary(sch.batch_sizes)}")
        if exact:
            mc = "mc_mean" in sc.rows[0] if sc.rows else False
            headers = ["update", "samples", "batch", "E[gap] exact", "bound", "bound/gap"]
            if mc:
                headers += ["MC mean", "MC low", "MC high", "MC agrees"]
            headers.append("check")
            body = []
            for r in sc.rows:
                row = [r["update"], r["samples"], r["batch"], _g(r["exact_gap"]),
                       _g(r["bound"]), _g(r["tightness"], 3)]
                if mc:
                    row += [_g(r["mc_mean"]), _g(r["mc_lower"]), _g(r["mc_upper"]),
                            "yes" if r["mc_agrees"] else "NO"]
                body.append(row + [r["status"]])
            lines.append(format_table(headers, body))
        else:
            headers = ["update", "samples", "batch", "mean gap", "lower", "upper", "bound",
                       "bound/mean", "check"]
            body = [[r["update"], r["samples"], r["batch"], _g(r["mean_gap"]), _g(r["lower"]),
                     _g(r["upper"]), _g(r["bound"]), _g(r["tightness"], 3), r["status"]]
                    for r in sc.rows]
            lines.append(format_table(headers, body))
    lines.append("")
    what = ("every update, exactly" if exact else
            "one-sided limits at the checkpoints: lower against the bound, slack = bound/upper")
    lines.append(f"Every regime and schedule ({what}):")
    headers = ["regime", "schedule", "updates", "compared", "min slack", "at update",
               "slack at end", "first violation", "check"]
    body = []
    for regime, reg in rep.regimes.items():
        for name, sc in reg.items():
            ms = sc.min_slack
            extra = ""
            if sc.limit is not None and sc.exact:
                extra = (f" (end/limit {sc.exact[-1] / sc.limit:.4f})" if sc.limit > 0 else
                         f" (limit 0, end {sc.exact[-1]:.3g})")
            body.append([REGIME_TEXT[regime] + extra, name, sc.schedule.updates,
                         len(sc.updates), _g(ms.get("value"), 4), ms.get("update"),
                         _g(ms.get("at_end"), 4), "-" if sc.first_violation is None else sc.first_violation,
                         "PASS" if sc.passed else "FAIL"])
    lines.append(format_table(headers, body))
    lines.extend(_mean_lines(rep))
    if rep.confidence:
        c = rep.confidence
        lines.append(f"confidence: {c['method']}; {c['compared']} updates compared, each at "
                     f"{c['per_update']:.6g} (t = {c['t']:.4g}, {c['runs']} runs), jointly "
                     f">= {c['joint']}")
    lines.append("")
    lines.append("SGD against ABS (" + REGIME_TEXT["zero"] + "; gap = "
                 + ("exact E[gap]" if exact else "Monte-Carlo mean")
                 + "): equal updates, then equal samples")
    headers = ["epoch", "ABS upd", "ABS gap", "ABS bound", "SGD gap same upd",
               "SGD bound same upd", "SGD upd same smp", "SGD gap same smp",
               "SGD bound same smp"]
    body = [[c["epoch"], c["abs_updates"], _g(c["abs_gap"]), _g(c["abs_bound"]),
             _g(c["sgd_same_updates_gap"]), _g(c["sgd_same_updates_bound"]),
             c["sgd_same_samples_updates"], _g(c["sgd_same_samples_gap"]),
             _g(c["sgd_same_samples_bound"])] for c in rep.comparison]
    lines.append(format_table(headers, body))
    if rep.controls:
        lines.append("")
        lines.append("Negative controls: the same checks with a wrong constant (bound controls "
                     "must FAIL; condition controls change only the step the condition allows)")
        headers = ["control", "kind", "L", "c", "M", "M_V", "verdict", "first violation",
                   "gap", "bound", "excess"]
        body = []
        for c in rep.controls:
            kk, fv = c["constants"], c["first_violation"]
            where = "-" if fv is None else f"{fv['regime']}/{fv['schedule']} update {fv['update']}"
            body.append([c["name"], c["kind"], _g(kk["L"]), _g(kk["c"]), _g(kk["M"]), _g(kk["M_V"]),
                         c["verdict"], where, "-" if fv is None else _g(fv["gap"]),
                         "-" if fv is None else _g(fv["bound"]),
                         "-" if fv is None else _g(fv["excess"])])
        lines.append(format_table(headers, body))
        lines.append("Sensitivity (smallest error factor the checks detect, by bisection):")
        for const, v in rep.sensitivity.items():
            lines.append(f"  {const}: {v['text']}")
    if rep.second_order is not None:
        lines.extend(_second_order_lines(rep.second_order))
    if rep.sharp_check is not None:
        lines.extend(_sharp_lines(rep.sharp_check))
    lines.append("")
    extra = [name for name, part in (("the sharp regime", rep.sharp_check),
                                     ("the model check", rep.second_order)) if part is not None]
    lines.append("RESULT: " + ("PASS (every compared update within the bound"
                               + (f"; {' and '.join(extra)} pass" + ("es" if len(extra) == 1 else "")
                                  if extra else "") + ")"
                               if rep.passed else "FAIL (see the rows and lines marked FAIL)"))
    if rep.controls:
        bound = [c for c in rep.controls if c["kind"] == "bound"]
        passing = [c["name"] for c in bound if c["verdict"] == "PASS"]
        lines.append("CONTROLS: " + (f"all {len(bound)} bound controls FAIL: the checks tell "
                                     "these wrong constants from the true ones"
                                     if not passing else
                                     f"{len(passing)} of {len(bound)} bound controls pass "
                                     f"({', '.join(passing)}): not sensitive to them on this "
                                     "problem"))
        cond = [c for c in rep.controls if c["kind"] == "condition"]
        if cond:
            cp = [c["name"] for c in cond if c["verdict"] == "PASS"]
            lines.append("CONDITION CONTROLS: " + (
                "all FAIL" if not cp else
                f"{', '.join(cp)} pass: the step-size condition is sufficient, not necessary, "
                "so the checks are not sensitive to that error in M_V on this problem"))
    return "\n".join(lines)


def _mean_lines(rep: TheoryReport) -> list[str]:
    """Least squares with runs: the kernel's averaged iterate against the exact mean."""
    checks = {n: sc.mean_check for n, sc in rep.schedules.items() if sc.mean_check}
    if not checks:
        return []
    first = next(iter(checks.values()))
    lines = ["", f"The kernel's mean iterate ({REGIME_TEXT['zero']}): each run's theta averaged "
             f"over its updates, the mean of {first['runs']} runs against the exact "
             f"mean_t E[theta_t]; Student t per eigen-direction of H, PASS when every "
             f"|t| <= {first['limit']:.4g} (Bonferroni share of the joint level)"]
    cname = first["control"]["name"]
    headers = ["schedule", "max |t|", "check", f"control: {cname}, max |t|", "control"]
    body = [[n, _g(m["max_abs_t"], 3), m["verdict"], _g(m["control"]["max_abs_t"], 3),
             m["control"]["verdict"]] for n, m in checks.items()]
    lines.append(format_table(headers, body))
    ok = all(m["verdict"] == "PASS" for m in checks.values())
    ctrl_fails = any(m["control"]["verdict"] == "FAIL" for m in checks.values())
    if ctrl_fails:
        why = "FAILs"
    elif ok:
        why = "passes: too few runs to see that bias (--runs; the default sees it)"
    else:
        why = "passes: the runs look like a kernel with that very bias"
    lines.append("KERNEL MEAN: " + ("PASS" if ok else "FAIL") + f"; its control ({cname}, the "
                 "exact mean of a kernel whose residuals are off by that much) " + why)
    return lines


def _second_order_lines(so: dict[str, Any]) -> list[str]:
    """The model check: a check of the runs, not of the theorem."""
    lines = ["", "Second-order model of the runs from theta* (a model check of the Monte-Carlo, "
             "not the theorem): mean over runs of gap / predicted gap, averaged over the "
             f"checkpoints; PASS within {so['tolerance']:g} (model error) + t * se "
             f"(t = {_g(so['t'])})"]
    headers = ["schedule", "MC / predicted", "se", "allowed |ratio - 1|", "check"]
    body = [[name, _g(r["ratio"], 5), _g(r["se"], 3), _g(r["allowed"], 3), r["verdict"]]
            for name, r in so["schedules"].items()]
    lines.append(format_table(headers, body))
    for c in so["controls"]:
        ratios = ", ".join(f"{n} {_g(v['ratio'], 4)}" for n, v in c["schedules"].items())
        lines.append(f"  control {c['name']} (must FAIL): {c['verdict']} ({ratios})")
    failing = sum(c["verdict"] == "FAIL" for c in so["controls"])
    if so["controls_fail"]:
        why = "all FAIL"
    elif so["passed"]:
        why = (f"{failing} of {len(so['controls'])} FAIL (with too few runs a 10 % step error "
               "is within the margin; see se)")
    else:
        why = (f"{failing} of {len(so['controls'])} FAIL (a control that passes while the "
               "check fails: the runs look like a kernel with that error)")
    lines.append("MODEL CHECK: " + ("PASS" if so["passed"] else "FAIL") + "; its controls "
                 + why)
    return lines


def _sharp_lines(sh: dict[str, Any]) -> list[str]:
    """The sharp logistic regime: exact gaps, controls that must fail, the kernel."""
    st = sh["settings"]
    lines = ["", f"Sharp logistic regime: {st['copies']} copies of mushroom row {st['row']}, "
             f"balanced labels, lam={st['lam']:g}, SGD at {st['batch_size']} rows for "
             f"{st['updates']} updates; exact E[gap] (theta* = 0, F* = log 2)"]
    k = sh.get("constants")
    if k is None:
        lines.append("SHARP REGIME: FAIL: " + "; ".join(sh["failures"]))
        return lines
    lines.append(f"  L={k['L']:.6g} c={k['c']:.6g} M={k['M']:.6g} (= ||x||^2/4, exact) "
                 f"eta0={sh['eta0']:.6g} G={sh['noise_floor']:.6g}")
    headers = ["regime", "update", "exact gap", "bound", "bound/gap", "MC mean", "MC low",
               "MC high", "MC agrees"]
    body = []
    for r, v in sh["regimes"].items():
        for t in range(1, len(v["exact"])):
            row = [r, t, _g(v["exact"][t]), _g(v["bounds"][t]), _g(v["bound_over_gap"][t - 1])]
            if "mc_mean" in v:
                row += [_g(v["mc_mean"][t - 1]), _g(v["mc_lower"][t - 1]),
                        _g(v["mc_upper"][t - 1]), "yes" if v["mc_agrees"][t - 1] else "NO"]
            else:
                row += ["-"] * 4
            body.append(row)
    lines.append(format_table(headers, body))
    headers = ["control", "eta0", "verdict", "first violation", "exact gap", "bound"]
    body = []
    for c in sh["controls"]:
        fv = c["first_violation"]
        body.append([c["name"] + (" (through the condition)" if c["rerun"] else ""),
                     _g(c["eta0"]), c["verdict"],
                     "-" if fv is None else f"{fv['regime']} update {fv['update']}",
                     "-" if fv is None else _g(fv["gap"]), "-" if fv is None else _g(fv["bound"])])
    lines.append(format_table(headers, body))
    lines.append("  Sensitivity: " + "; ".join(f"{c}: {v['text']}"
                                               for c, v in sh["sensitivity"].items()))
    kernel = ("the kernel agrees with the exact gaps" if st["runs"] else
              "the kernel not compared: --sharp-runs 0")
    lines.append("SHARP REGIME: " + (f"PASS (bound holds exactly, every control FAILs, {kernel})"
                                     if sh["passed"] else "FAIL: " + "; ".join(sh["failures"])))
    return lines


def _g(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return "inf"
    return f"{v:.{digits}g}"


def _batch_summary(batches: Sequence[int]) -> str:
    """``100x69, 200x35, ...``: each batch size with the number of updates at it, in order."""
    out: list[list[int]] = []
    for b in batches:
        if out and out[-1][0] == b:
            out[-1][1] += 1
        else:
            out.append([b, 1])
    return ", ".join(f"{b}x{c}" for b, c in out)


def save_report(rep: TheoryReport, out: str | Path, *, overwrite: bool = True) -> list[Path]:
    """Write ``theory.json`` and, with matplotlib, ``theory.png`` into ``out``, as one set.

    Both files are written to ``NAME.tmp`` and renamed only when both are on disk
    (:func:`hessbatch._outputs.write_files`): a kill or a full disk leaves the previous pair
    whole. ``overwrite=False`` refuses a non-empty folder (the command checks before the run).

    Returns:
        The paths written.
    """
    out = check_out_dir(out, overwrite=overwrite)
    files: dict[str, str | bytes] = {
        "theory.json": json.dumps(_jsonable(rep.to_dict()), indent=1) + "\n"}
    png = _plot(rep)
    if png is not None:
        files["theory.png"] = png
    write_files(out, files)
    return [out / name for name in files]


def _plot(rep: TheoryReport) -> bytes | None:
    """theory.png's bytes (None without matplotlib); an Agg canvas, the backend is kept."""
    try:
        import matplotlib  # noqa: F401  (first: a missing matplotlib fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("theory: matplotlib is not installed, so no plot was made; "
              "pip install 'hessbatch[plot]' to get the plot", file=sys.stderr)
        return None
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = {"sgd": "tab:blue", "abs": "tab:red"}
    for name, sc in rep.schedules.items():
        cps = np.array(sc.checkpoints)
        cum = np.concatenate(([0], np.cumsum(sc.schedule.batch_sizes)))
        bounds = np.array(sc.bounds)
        for ax, x_all, x_cp in ((axes[0], np.arange(len(bounds)), cps),
                                (axes[1], cum, cum[cps])):
            ax.plot(x_all, bounds, "--", color=colors[name], label=f"{name.upper()} bound")
            if rep.problem == "least-squares":
                ax.plot(x_all, sc.exact, "-", color=colors[name],
                        label=f"{name.upper()} exact E[gap]")
            else:
                lo = np.array([r["lower"] for r in sc.rows])
                hi = np.array([r["upper"] for r in sc.rows])
                mean = np.array([r["mean_gap"] for r in sc.rows])
                ax.fill_between(x_cp, np.maximum(lo, 1e-300), hi, color=colors[name], alpha=0.3)
                ax.plot(x_cp, mean, "o-", ms=3, color=colors[name],
                        label=f"{name.upper()} mean gap ({rep.settings['runs']} runs)")
    for ax, xl in zip(axes, ("parameter updates", "samples drawn")):
        ax.axhline(rep.noise_floor, color="gray", ls=":", lw=1, label="noise floor G")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("E[F(theta)] - F*")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("per parameter update")
    axes[1].set_title("per sample drawn")
    fig.suptitle(f"Theorem 1 on {rep.problem}: eta0={rep.eta0:.3g}, G={rep.noise_floor:.3g}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------------------------
# the command


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Add every option of ``hessbatch theory``."""
    parser.add_argument("--problem", choices=("mushroom", "least-squares"), default="mushroom",
                        help="mushroom: Monte-Carlo on L2 logistic regression; least-squares: "
                             "exact expectations on a random ridge regression "
                             "(default %(default)s)")
    parser.add_argument("--runs", type=int, default=None,
                        help="Monte-Carlo runs per schedule and regime (default: 1000 for "
                             f"mushroom; {LEAST_SQUARES_RUNS} for least-squares, where their "
                             "mean gaps and mean iterate must agree with the exact values; 0 "
                             "there: exact values only)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of N samples each (default: 5 mushroom, 10 least-squares; "
                             "the stationary regime doubles them until it settles)")
    parser.add_argument("--lam", type=float, default=None,
                        help="L2 strength (= c on mushroom; added to the Hessian on least "
                             "squares) (default: 0.1 mushroom, 0 least-squares)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data split or problem, the runs and the pilot "
                             "(default %(default)s)")
    parser.add_argument("--regimes", default=None,
                        help="comma-separated starts to check: zero (theta = 0), optimum "
                             "(theta*: gap 0), flattest (theta* + s v_min, the flattest "
                             "direction), stationary (least squares: run to stationarity) "
                             "(default: all that the problem has)")
    g = parser.add_argument_group("schedules (SGD at B0; ABS from B0 to B_max, by the core)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="B0: SGD's batch and ABS's first (default: 100 mushroom, 4 least-squares)")
    g.add_argument("--max-batch", "--max-batch-size", dest="max_batch_size", type=int,
                   default=None,
                   help="B_max: ABS's largest batch, also the b_max of the step-size condition "
                        "(default: 1600 mushroom, 64 least-squares)")
    g.add_argument("--alpha", type=float, default=2.0,
                   help="ABS grows when the eigenvalue dropped by this ratio (default %(default)s)")
    g.add_argument("--beta", type=float, default=2.0,
                   help="ABS batch growth factor (default %(default)s)")
    g.add_argument("--check-every", type=int, default=None,
                   help="samples between ABS's eigenvalue checks, >= 1 (default: N / "
                        "--checks-per-epoch)")
    g.add_argument("--checks-per-epoch", type=int, default=None,
                   help="eigenvalue checks per epoch when --check-every is not given "
                        "(default: 10 mushroom, 4 least-squares)")
    g.add_argument("--patience", type=int, default=None,
                   help="kappa: ABS grows after this many checks without a drop "
                        "(default: 10 mushroom, 4 least-squares)")
    g = parser.add_argument_group("the bound")
    g.add_argument("--condition", choices=thm.CONDITIONS, default="paper",
                   help="step-size condition: paper = eta0 <= 1/(L (M_G + B_max)) with the "
                        "second-moment constant M_G = M_V + 1 (the paper's reading, rebuilt); "
                        "variance = M_V in its place (slightly larger eta0; also proved) "
                        "(default %(default)s)")
    g.add_argument("--eta0", type=float, default=None,
                   help="step per sample (update t steps b_t * eta0); default: the largest the "
                        "condition allows, times --eta0-scale")
    g.add_argument("--eta0-scale", type=float, default=1.0,
                   help="multiply the condition's largest eta0 by this (default %(default)s)")
    g.add_argument("--ignore-condition", action="store_true",
                   help="run even when eta0 violates the condition (to see the bound fail); "
                        "without it such an eta0 is an error")
    g.add_argument("--confidence", type=float, default=0.999,
                   help="joint confidence of all the Monte-Carlo limits (one-sided Student t, "
                        "Bonferroni over every compared update) (default %(default)s)")
    g.add_argument("--checkpoints-per-epoch", type=int, default=2,
                   help="table rows per epoch (epoch ends and the first updates at powers of "
                        "two always) (default %(default)s)")
    g.add_argument("--no-controls", dest="controls", action="store_false",
                   help="skip the negative controls and the sensitivity search")
    g.add_argument("--no-sharp", dest="sharp", action="store_false",
                   help="skip the sharp logistic regime (a balanced one-row instance where the "
                        "theorem is tight and the gaps are exact; on least squares a self-test "
                        "of the bound's arithmetic and the condition)")
    g.add_argument("--sharp-runs", type=int, default=None,
                   help="Monte-Carlo runs that check the kernel against the exact gaps of the "
                        "sharp regime, 0 or >= 2 (default: 10000 mushroom, 0 least-squares)")
    g.add_argument("--no-second-order", dest="second_order", action="store_false",
                   help="mushroom: skip the second-order model check of the runs from theta*")
    g.add_argument("--require-sharp", action="store_true",
                   help="exit 3 when the true checks pass but a negative control passes too "
                        "(the check could not tell that wrong constant from the true one)")
    g = parser.add_argument_group("least-squares problem")
    g.add_argument("--n-samples", type=int, default=200, help="N (default %(default)s)")
    g.add_argument("--dim", type=int, default=2, help="d (default %(default)s)")
    g.add_argument("--cond", type=float, default=2.0,
                   help="condition number of A^T A / N; the bound's slack grows with it "
                        "(default %(default)s)")
    g.add_argument("--noise", type=float, default=0.5,
                   help="standard deviation of the target noise (default %(default)s)")
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=None,
                   help="directory for theory.json and theory.png (the empirical band "
                        "against the bound); checked before any work, and it must be empty or "
                        "new unless --overwrite")
    g.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --out (its theory.json and theory.png are replaced, "
                        "both or neither)")
    g.add_argument("--threads", type=int, default=None,
                   help="Numba threads for the Monte-Carlo (default: all cores)")
    g.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    """Run the checks, print the tables, write ``--out``; the exit code of DESCRIPTION."""
    d = _DEFAULTS[args.problem]
    out = check_out_dir(args.out, overwrite=args.overwrite,    # before minutes of work
                        outputs=("theory.json", "theory.png"))
    regimes = [r.strip() for r in (args.regimes or d["regimes"]).split(",") if r.strip()]
    kw = dict(
        lam=args.lam if args.lam is not None else d["lam"], seed=args.seed,
        epochs=args.epochs if args.epochs is not None else d["epochs"],
        batch_size=args.batch_size if args.batch_size is not None else d["batch_size"],
        max_batch_size=(args.max_batch_size if args.max_batch_size is not None
                        else d["max_batch_size"]),
        alpha=args.alpha, beta=args.beta, check_every=args.check_every,
        checks_per_epoch=(args.checks_per_epoch if args.checks_per_epoch is not None
                          else d["checks_per_epoch"]),
        patience=args.patience if args.patience is not None else d["patience"],
        eta0=args.eta0, eta0_scale=args.eta0_scale, ignore_condition=args.ignore_condition,
        condition=args.condition, regimes=regimes,
        runs=args.runs if args.runs is not None else d["runs"], confidence=args.confidence,
        checkpoints_per_epoch=args.checkpoints_per_epoch, controls=args.controls,
        threads=args.threads, progress=not args.quiet)
    try:
        if args.problem == "mushroom":
            sharp_runs = (args.sharp_runs if args.sharp_runs is not None
                          else SHARP_DEFAULTS["runs"])
            rep = mushroom_check(sharp=args.sharp, sharp_runs=sharp_runs,
                                 second_order=args.second_order, **kw)
        else:
            rep = least_squares_check(n_samples=args.n_samples, dim=args.dim, cond=args.cond,
                                      noise=args.noise, sharp=args.sharp,
                                      sharp_runs=args.sharp_runs or 0, **kw)
    except ConstantsContradiction as exc:
        # the check's own code computed impossible constants: a FAIL, not a bad option
        print("RESULT: FAIL (" + "; ".join(exc.failures) + ")")
        if out is not None:
            doc = {"problem": exc.problem, "passed": False, "failures": exc.failures}
            write_files(out, {"theory.json": json.dumps(doc, indent=1) + "\n"})
            print(f"wrote {Path(out) / 'theory.json'}")
        return 1
    print(format_report(rep))
    if out is not None:
        for p in save_report(rep, out, overwrite=True):
            print(f"wrote {p}")
    if not rep.passed:
        return 1
    if args.require_sharp and not rep.sharp:
        return 3
    return 0
