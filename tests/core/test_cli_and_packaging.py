"""The core needs only the standard library; the console script and `hessbatch schedule`."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hessbatch import SchedulerConfig
from hessbatch._cli_common import Progress
from hessbatch._cli_schedule import demo_trace, load_eigenvalues, replay_schedule
from hessbatch.cli import main

REFERENCE = Path(__file__).resolve().parents[2] / "reference"

# A meta-path finder that makes the heavy libraries unimportable, as in a bare environment.
_BLOCK = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {'numpy', 'torch', 'numba', 'matplotlib', 'scipy'}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
""")


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_every_core_module_imports_only_the_standard_library():
    modules = sorted(REFERENCE.glob("*.py"))
    assert len(modules) >= 4
    for path in modules:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "hessbatch", \
                    f"{path.name} imports {name}, which is not in the standard library"


def test_import_and_schedule_work_without_numpy_or_torch():
    proc = _run_blocked("""
        import hessbatch, hessbatch.cli, hessbatch._cli_schedule
        try:
            import numpy
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit('the blocker failed: numpy imported')
        sch = hessbatch.Scheduler(hessbatch.SchedulerConfig(
            method='abs', lr=0.1, batch_size=8, max_batch_size=64, samples_per_epoch=16,
            epochs=2))
        sch.step(); sch.step(); sch.eigenvalue(1.0); sch.end_epoch()
        raise SystemExit(hessbatch.cli.main(['schedule', '--epochs', '3',
                                             '--decay-epochs', '', '--max-batch', '512']))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "largest batch" in proc.stdout


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("mushroom", "theory", "train", "eig", "schedule"):
        assert name in out
    assert main([]) == 2


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_schedule_demo_table_shows_both_growth_rules(capsys):
    rc = main(["schedule", "--method", "abs", "--max-batch", "2048", "--patience", "3",
               "--epochs", "20", "--samples-per-epoch", "5000", "--decay-epochs", "15"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dropped -> B=256" in out and "patience -> B=2048" in out
    assert "largest batch 2048" in out


def test_schedule_json_output_matches_direct_replay(tmp_path, capsys):
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"eigenvalues": [10, 4, 4, 1.5, 1, 0.5]}))
    rc = main(["schedule", str(trace), "--format", "json", "--epochs", "6",
               "--samples-per-epoch", "1000", "--decay-epochs", "", "--max-batch", "1024"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    cfg = SchedulerConfig(method="abs", lr=0.1, batch_size=128, max_batch_size=1024,
                          samples_per_epoch=1000, epochs=6, lr_decay_factor=0.2)
    rows, note = replay_schedule(cfg, [10, 4, 4, 1.5, 1, 0.5])
    assert out["epochs"] == json.loads(json.dumps(rows)) and note is None
    # 10 -> 4 is a drop by 2.5 >= alpha, 4 -> 1.5 another: B 128 -> 256 -> 512
    assert [r["batch_end"] for r in rows][:4] == [128, 256, 256, 512]


@pytest.mark.parametrize("rule", ["blocks", "batch"])
def test_schedule_adv_rule_option_reaches_the_config(tmp_path, capsys, rule):
    trace = tmp_path / "t.json"
    lams = [10, 4, 1.5, 0.5, 0.2, 0.05, 0.01, 0.001]
    trace.write_text(json.dumps({"eigenvalues": lams}))
    rc = main(["schedule", str(trace), "--format", "json", "--epochs", "8", "--method", "absa",
               "--samples-per-epoch", "1000", "--decay-epochs", "", "--max-batch", "32768",
               "--adv-stop", "1.0", "--adv-rule", rule])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    cfg = SchedulerConfig(method="absa", lr=0.1, batch_size=128, max_batch_size=32768,
                          samples_per_epoch=1000, epochs=8, lr_decay_factor=0.2,
                          adv_stop=1.0, adv_rule=rule)
    rows, _ = replay_schedule(cfg, lams)
    assert out["epochs"] == json.loads(json.dumps(rows))
    # blocks: 25, 12 x 2, 6 x 4, 3 x 8, 1 x 16 per batch, then none (0.2 / 64 * 128 < 1);
    # batch: floor(gamma * B) = 25 per batch for ever
    want = [25, 25, 24, 24, 24, 16, 0, 0] if rule == "blocks" else [25] * 8
    assert [r["adv_start"] for r in out["epochs"]] == want


def test_schedule_reads_csv_and_reports_a_short_trace(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("step,eigenvalue\n1,8.0\n2,3.0\n")
    rc = main(["schedule", str(trace), "--epochs", "5", "--samples-per-epoch", "256",
               "--decay-epochs", ""])
    captured = capsys.readouterr()
    assert rc == 0
    assert "the trace ran out after 2 eigenvalues, during epoch 3" in captured.err
    assert load_eigenvalues(trace) == [8.0, 3.0]


@pytest.mark.parametrize("content, match", [
    ("[1.0, -2.0]", "item 1: eigenvalue must be a finite number >= 0"),
    ('{"values": [1]}', "needs an 'eigenvalues' list"),
    ("eigenvalue\n1.0\nabc\n", "line 3: 'abc' is not a number"),
    ("a,b\n1,2\n", "none named 'eigenvalue'"),
    ("[1.0, NaN]", "item 1: eigenvalue must be a finite number"),
    ("", "empty file"),
])
def test_schedule_bad_trace_files_name_the_problem(tmp_path, capsys, content, match):
    trace = tmp_path / ("t.json" if content.startswith(("[", "{")) else "t.csv")
    trace.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_eigenvalues(trace)
    assert main(["schedule", str(trace)]) == 2
    assert "hessbatch schedule: error:" in capsys.readouterr().err


def test_schedule_rejects_out_of_range_options(capsys):
    assert main(["schedule", "--alpha", "0.5"]) == 2
    assert "alpha must be > 1" in capsys.readouterr().err


def test_demo_trace_is_valid_and_deterministic():
    a, b = demo_trace(), demo_trace()
    assert a == b and all(v >= 0 for v in a) and len(a) == 60


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_redraws_on_a_terminal_and_writes_tenths_to_a_log():
    term, log = _Stream(True), _Stream(False)
    for stream in (term, log):
        bar = Progress(200, "run", stream=stream)
        for _ in range(200):
            bar.update(1, "x")
        bar.close()
    assert term.getvalue().count("\r") == 200 and term.getvalue().endswith("\n")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 11
    assert lines[0].startswith("run   0.5%") and lines[-1].startswith("run 100.0%")
    quiet = _Stream(True)
    Progress(5, "q", enabled=False, stream=quiet).update(5)
    assert quiet.getvalue() == ""
