"""`hessbatch train` and `hessbatch eig`: outputs, resume, errors, help. Tiny synthetic runs."""

from __future__ import annotations

import argparse
import json
import re
import sys

import pytest
import torch

from hessbatch.cli import main
from hessbatch.deep import _cli_eig, _cli_train

TINY = ["--model", "mlp", "--width", "4", "--data", "synthetic:120:1x6x6", "--batch-size", "8",
        "--max-batch", "32", "--hessian-batch", "16", "--max-hvp", "4", "--quiet"]


def _train(tmp_path, *extra):
    return main(["train", *TINY, *extra])


def test_train_writes_metrics_curves_checkpoint_and_prints_the_tables(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, "--method", "absa", "--epochs", "2", "--out", str(out),
                  "--seed", "3") == 0
    text = capsys.readouterr().out
    assert "test acc %" in text and "largest B" in text and "t eig" in text
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["finished"] and len(doc["history"]) == 2
    assert doc["spec"]["method"] == "absa" and doc["scheduler"]["method"] == "absa"
    n_train = doc["scheduler"]["samples_per_epoch"]
    assert 90 <= n_train <= 100 and doc["history"][0]["samples"] == n_train  # 20% held out
    s = doc["summary"]
    assert s["updates"] == doc["history"][-1]["updates"] == 2 * -(-n_train // 8)
    assert s["largest_batch"] == max(m["batch_size"] for m in doc["history"])
    assert s["eigenvalues"] == 2 and doc["history"][0]["adversarial_samples"] > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint.pt").is_file()
    # the final table's accuracy is the last epoch's
    row = text.strip().splitlines()[-3]
    assert float(row.split()[0]) == round(100 * s["test_accuracy"], 2)


def test_resume_through_the_cli_continues_the_same_trajectory(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(tmp_path, "--method", "abs", "--epochs", "2", "--out", str(a)) == 0
    assert _train(tmp_path, "--method", "abs", "--epochs", "1", "--out", str(b)) == 0
    assert main(["train", "--resume", str(b / "checkpoint.pt"), "--epochs", "2", "--out",
                 str(b), "--quiet"]) == 0
    ha = json.loads((a / "metrics.json").read_text())["history"]
    hb = json.loads((b / "metrics.json").read_text())["history"]
    keys = ("train_loss", "test_accuracy", "eigenvalues", "batch_size", "lr", "updates")
    assert [[m[k] for k in keys] for m in ha] == [[m[k] for k in keys] for m in hb]
    ca = torch.load(a / "checkpoint.pt", weights_only=True)["model"]
    cb = torch.load(b / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_eig_prints_the_top_eigenvalue_of_a_saved_model(tmp_path, capsys):
    from hessbatch.deep import top_eigenvalue

    out = tmp_path / "run"
    assert _train(tmp_path, "--method", "bl", "--epochs", "1", "--out", str(out)) == 0
    capsys.readouterr()
    ck = str(out / "checkpoint.pt")
    assert main(["eig", ck, "--hessian-batch", "50", "--max-hvp", "30", "--tol", "1e-8",
                 "--seed", "2"]) == 0
    text = capsys.readouterr().out
    value = float(text.strip().splitlines()[-1].split()[-1])
    # the same computation by hand: rebuild, load, same Hessian batch
    state = torch.load(ck, weights_only=True)
    bundle, model = _cli_train.build_from_spec(state["extra"]["spec"], torch.device("cpu"))
    model.load_state_dict(state["model"])
    idx = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(2))[:50]
    x, y = bundle.train.tensors
    ref = top_eigenvalue(model, torch.nn.functional.cross_entropy, [(x[idx], y[idx])],
                         method="lanczos", max_hvp=30, tol=1e-8, seed=2)
    assert value > 0 and abs(value - ref.value) <= 1e-5 * ref.value
    # the block Hessian of the last layer: a diagonal block, so at most the full top eigenvalue
    assert main(["eig", ck, "--hessian-batch", "50", "--max-hvp", "30", "--tol", "1e-8",
                 "--seed", "2", "--block", "1"]) == 0
    block = float(capsys.readouterr().out.strip().splitlines()[-1].split()[-1])
    assert 0 < block <= value * (1 + 1e-6)


@pytest.mark.parametrize("argv, message", [
    (["train", "--device", "cuda:0"] if not torch.cuda.is_available()
     else ["train", "--device", "tpu"], "device"),
    (["train", "--data", "nothing"], "data must be"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--model", "mlp", "--data", "synthetic:40:1x4x4", "--batch-size", "8",
      "--block", "9"], "--block"),
    (["train", "--data", "synthetic:40:1x4x4", "--lr", "-1"], "lr"),
    (["train", "--resume", "/nonexistent/ck.pt"], "not found"),
    (["eig", "/nonexistent/ck.pt"], "not found"),
])
def test_bad_options_exit_2_with_a_message_naming_them(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_every_option_has_help_text():
    for module in (_cli_train, _cli_eig):
        parser = argparse.ArgumentParser()
        module.build_parser(parser)
        for action in parser._actions:
            assert action.help, f"{module.__name__}: {action.dest} has no help"


def test_missing_matplotlib_prints_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    out = tmp_path / "run"
    assert _train(tmp_path, "--method", "bl", "--epochs", "1", "--out", str(out)) == 0
    assert "pip install 'hessbatch[plot]'" in capsys.readouterr().err
    assert not (out / "curves.png").exists() and (out / "metrics.json").exists()


def test_progress_line_goes_to_stderr(tmp_path, capsys):
    argv = [a for a in TINY if a != "--quiet"]
    assert main(["train", *argv, "--method", "bl", "--epochs", "1"]) == 0
    captured = capsys.readouterr()
    # not a terminal: plain lines at every tenth, ending at 100%, and nothing on stdout
    lines = [ln for ln in captured.err.splitlines() if re.search(r"\d+\.\d%", ln)]
    assert 2 <= len(lines) <= 11 and re.search(r"100\.0%", lines[-1])
    assert "\r" not in captured.err and "% [" not in captured.out and "100.0%" not in captured.out


def test_eig_self_test_and_finite_difference_option(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, "--method", "bl", "--epochs", "1", "--out", str(out)) == 0
    capsys.readouterr()
    ck = str(out / "checkpoint.pt")
    common = ["eig", ck, "--hessian-batch", "50", "--max-hvp", "30", "--tol", "1e-8"]
    assert main(common) == 0
    cap = capsys.readouterr()
    assert "HVP self-test" in cap.err and "FAILED" not in cap.err
    exact = float(cap.out.strip().splitlines()[-1].split()[-1])
    assert main(common + ["--hvp", "finite-difference"]) == 0
    cap = capsys.readouterr()
    fd = float(cap.out.strip().splitlines()[-1].split()[-1])
    assert "HVP self-test" not in cap.err           # nothing to compare against
    assert abs(fd - exact) <= 1e-4 * exact          # float64 finite differences
    assert main(common + ["--hvp-check", "off"]) == 0
    assert "HVP self-test" not in capsys.readouterr().err
