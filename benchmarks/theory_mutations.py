"""``hessbatch theory`` under every implementation bug of issue 23: does the command say FAIL?

Each mutation is applied with pytest's ``MonkeyPatch`` (the same helpers as
tests/theory/test_mutations.py, imported from there: one definition), then the command runs
with the given options (default: its defaults) and the script records its exit code and which
checks said FAIL. Exit code 1 is FAIL; 0 PASS; 2 an error (named in the output).

    python benchmarks/theory_mutations.py                                  # defaults, slow
    python benchmarks/theory_mutations.py --mushroom-args "--runs 400 --epochs 2"

Prints one line per problem and mutation and, with ``--out``, writes them as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "theory"))
import test_mutations as tm  # noqa: E402

from hessbatch.cli import main as cli  # noqa: E402

MUTATIONS = {
    "none": lambda mp: None,
    "step x1.1": lambda mp: tm._kernel(mp, step=1.1),
    "step x2": lambda mp: tm._kernel(mp, step=2.0),
    "batch B-1": lambda mp: tm._kernel(mp, batch=1),
    "bias +0.01": lambda mp: tm._kernel(mp, bias=0.01),
    "exponent 2": lambda mp: tm._exponent(mp, 2.0),
    "exponent 1/2": lambda mp: tm._exponent(mp, 0.5),
    "condition x2": lambda mp: tm._condition(mp, 2.0),
    "M/4.7": lambda mp: tm._constant(mp, "M", 4.7),
    "L/10": lambda mp: tm._constant(mp, "L", 10.0),
}


def _verdicts(out: str) -> list[str]:
    keys = ("RESULT:", "SHARP REGIME:", "MODEL CHECK:", "KERNEL MEAN:", "CONTROLS:")
    return [line.strip()[:160] for line in out.splitlines() if line.startswith(keys)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", default="mushroom,least-squares")
    ap.add_argument("--mutations", default=",".join(MUTATIONS))
    ap.add_argument("--mushroom-args", default="", help="extra options for --problem mushroom")
    ap.add_argument("--lsq-args", default="", help="extra options for --problem least-squares")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    for problem in a.problems.split(","):
        extra = shlex.split(a.mushroom_args if problem == "mushroom" else a.lsq_args)
        for name in a.mutations.split(","):
            buf, err = io.StringIO(), io.StringIO()
            t0 = time.perf_counter()
            with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf), \
                    contextlib.redirect_stderr(err):
                MUTATIONS[name](mp)
                code = cli(["theory", "--problem", problem, "--quiet", *extra])
            row = {"problem": problem, "mutation": name, "exit": code,
                   "verdicts": _verdicts(buf.getvalue()) or err.getvalue().strip()[-300:],
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
