"""benchmarks/gpu_check.sh on the CPU: the one step that runs without a device, and the budget
that keeps the whole script within its minutes. (The CUDA steps run only on a GPU machine.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _script(out: Path, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, GPU_CHECK_DEVICE="cpu", GPU_CHECK_BACKEND="gloo",
                GPU_CHECK_ONLY="cli", GPU_CHECK_INSTALL="0", PYTHON=sys.executable,
                OMP_NUM_THREADS="1", **env)
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        full.pop(key, None)
    return subprocess.run(["bash", str(SCRIPT), str(out)], env=full, capture_output=True,
                          text=True, timeout=300)


def test_the_cli_step_runs_on_the_cpu_and_compares(tmp_path):
    res = _script(tmp_path / "o")
    summary = (tmp_path / "o" / "summary.txt").read_text()
    assert res.returncode == 0, res.stdout + res.stderr
    assert summary.startswith("PASS hessbatch train under torch.distributed.run, gloo")
    assert (tmp_path / "o" / "nccl_cli_compare.txt").read_text().strip().endswith("agree")


def test_a_spent_budget_stops_the_steps_and_counts_as_a_failure(tmp_path):
    res = _script(tmp_path / "o", GPU_CHECK_BUDGET="5")
    summary = (tmp_path / "o" / "summary.txt").read_text()
    assert res.returncode == 1
    assert "(not run: " in summary and "of the 5 s budget)" in summary
    assert not (tmp_path / "o" / "plain").exists()          # the step did not start


def test_the_comparison_says_differ_for_runs_that_differ(tmp_path):
    """The step's verdict can fail: two runs at lr 0.05 and 0.051 DIFFER (exit 1), a run
    against an identical rerun agrees (exit 0)."""
    from hessbatch.cli import main
    tiny = ["train", "--model", "mlp", "--width", "8", "--data", "synthetic:600:1x8x8",
            "--batch-size", "32", "--micro-batch", "16", "--max-batch", "128",
            "--hessian-batch", "64", "--method", "absa", "--patience", "1", "--epochs", "2",
            "--dtype", "float64", "--device", "cpu", "--quiet", "--seed", "1", "--threads", "1"]
    for name, lr in (("a", "0.05"), ("b", "0.05"), ("c", "0.051")):
        assert main([*tiny, "--lr", lr, "--out", str(tmp_path / name)]) == 0

    def compare(x, y):
        return subprocess.run(["bash", str(SCRIPT), "--compare", str(tmp_path), x, y],
                              env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                              text=True, timeout=120)
    same, other = compare("a", "b"), compare("a", "c")
    assert same.returncode == 0 and same.stdout.strip().endswith("agree"), same.stdout
    assert other.returncode == 1 and other.stdout.strip().endswith("DIFFER"), other.stdout
