"""`hessbatch study` end to end on a tiny synthetic problem: outputs, skip, resume, errors."""

from __future__ import annotations

import csv
import json

import pytest

from hessbatch.cli import main
from hessbatch.deep import _study

TINY = ["--model", "mlp", "--width", "4", "--data", "synthetic:150:1x4x4", "--epochs", "2",
        "--methods", "bl", "--batch-sizes", "16,64", "--seeds", "0", "--activations",
        "relu,softplus", "--top-k", "3", "--trace-probes", "6", "--eps", "0,0.05,0.2",
        "--pgd-steps", "3", "--landscape-points", "5", "--input-samples", "3",
        "--input-steps", "8", "--lambdas=-0.5,0,0.5,1,1.5", "--hessian-batch", "16",
        "--max-hvp", "4", "--quiet"]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_study_end_to_end(tmp_path, capsys):
    import matplotlib as mpl
    out = tmp_path / "st"
    before = mpl.rcParams["backend"]
    mpl.rcParams["backend"] = "template"        # a notebook's choice: the plots must keep it
    try:
        assert main(["study", *TINY, "--out", str(out)]) == 0
        assert mpl.rcParams["backend"] == "template"
    finally:
        mpl.rcParams["backend"] = before
    for png in ("spectrum.png", "robustness.png", "landscape.png", "interpolation.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    text = capsys.readouterr().out
    assert "lambda_1" in text and "PGD 0.2 %" in text and "inH min b/t clean" in text
    doc = json.loads((out / "results.json").read_text())
    names = sorted(r["name"] for r in doc["runs"])
    assert names == ["relu-bl-b16-s0", "relu-bl-b64-s0", "softplus-bl-b16-s0",
                     "softplus-bl-b64-s0"]
    for r in doc["runs"]:
        assert len(r["spectrum"]["values"]) == 3
        assert r["spectrum"]["values"] == sorted(r["spectrum"]["values"], reverse=True)
        assert r["trace"]["n_probes"] == 6 and r["trace"]["stderr"] >= 0
        rob = r["robustness"]
        assert rob["fgsm"][0] == rob["pgd"][0] == pytest.approx(r["test_accuracy"])
        assert all(p <= f for p, f in zip(rob["pgd"], rob["fgsm"]))
        assert len(r["landscape"]["top_eigenvector"]) == 5
        # t = 0 on both landscapes is the trained point itself
        assert r["landscape"]["top_eigenvector"][2] == pytest.approx(r["landscape"]["random"][2])
        ih = r["input_hessian"]
        if r["activation"] == "relu":   # the theorem: PSD up to rounding
            assert ih["clean"]["negative_fraction"] == ih["fgsm"]["negative_fraction"] == 0
    # two interpolation lines (one per activation), lambda = 0 and 1 are the two solutions
    assert len(doc["interpolation"]) == 2
    for ln in doc["interpolation"]:
        small = next(r for r in doc["runs"] if r["activation"] == ln["activation"]
                     and r["batch_size"] == 16)
        large = next(r for r in doc["runs"] if r["activation"] == ln["activation"]
                     and r["batch_size"] == 64)
        assert ln["lambda"][1] == 0 and ln["lambda"][3] == 1
        # the run measured in float64, the line in float32: agree to float32 rounding
        assert ln["test_acc"][1] == pytest.approx(small["test_accuracy"], abs=0.02)
        assert ln["train_loss"][1] == pytest.approx(small["train_loss"], rel=1e-4)
        assert ln["train_loss"][3] == pytest.approx(large["train_loss"], rel=1e-4)
    # one CSV per measurement, consistent with results.json
    spec = _rows(out / "spectrum.csv")
    assert len(spec) == 4 * 3
    first = next(r for r in doc["runs"] if r["name"] == "relu-bl-b16-s0")
    row = next(s for s in spec if s["activation"] == "relu" and s["batch_size"] == "16"
               and s["rank"] == "1")
    assert float(row["eigenvalue"]) == pytest.approx(first["spectrum"]["values"][0])
    assert len(_rows(out / "robustness.csv")) == 4 * 2 * 3
    assert len(_rows(out / "landscape.csv")) == 4 * 2 * 5
    assert len(_rows(out / "input_hessian.csv")) == 4 * 2 * 3
    assert len(_rows(out / "interpolation.csv")) == 2 * 5
    assert len(_rows(out / "runs.csv")) == 4
    for png in ("spectrum", "robustness", "landscape", "interpolation"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second call skips every finished run and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/measure.json")}
    assert main(["study", *TINY, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/measure.json")} == before
    assert json.loads((out / "results.json").read_text())["runs"] == doc["runs"]

    # other options in the same folder: refused, naming the option
    assert main(["study", *TINY, "--pgd-steps", "4", "--out", str(out)]) == 2
    assert "pgd_steps" in capsys.readouterr().err


def test_an_interrupted_study_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    args = [a for a in TINY] + ["--hessian-samples", "50"]
    args[args.index("relu,softplus")] = "relu"
    ref = tmp_path / "ref"
    assert main(["study", *args, "--out", str(ref)]) == 0

    # interrupt the second run after its first epoch (its checkpoint is on disk)
    real_run = _study.Trainer.run
    calls = {"n": 0}

    def interrupted(self, epochs=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            real_run(self, 1, **kw)
            raise KeyboardInterrupt
        return real_run(self, epochs, **kw)

    monkeypatch.setattr(_study.Trainer, "run", interrupted)
    out = tmp_path / "cut"
    assert main(["study", *args, "--out", str(out)]) == 130
    assert (out / "runs" / "relu-bl-b64-s0" / "checkpoint.pt").exists()
    assert not (out / "runs" / "relu-bl-b64-s0" / "measure.json").exists()
    monkeypatch.setattr(_study.Trainer, "run", real_run)
    assert main(["study", *args, "--out", str(out)]) == 0
    a = json.loads((ref / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert all(r["spectrum"]["hessian_samples"] == 50 for r in a["runs"])
    strip = ("times", "train_time", "measure_time")
    for ra, rb in zip(a["runs"], b["runs"]):
        assert {k: v for k, v in ra.items() if k not in strip} == \
               {k: v for k, v in rb.items() if k not in strip}
    assert a["interpolation"] == b["interpolation"]


def test_per_run_options_of_train_are_refused_with_the_study_spelling(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--method", "abs", "--out", "x"])
    assert "--methods" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", "--methods", "bl,nope", "--out", "x"])
    assert "comma-separated list of" in capsys.readouterr().err


def test_bad_measurement_options_are_named(tmp_path, capsys):
    assert main(["study", *TINY, "--top-k", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--top-k must be >= 1, got 0" in capsys.readouterr().err
    assert main(["study", *TINY, "--eps", "0,-0.1", "--out", str(tmp_path / "b")]) == 2
    assert "--eps" in capsys.readouterr().err


def test_help_explains_the_measurements(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = capsys.readouterr().out
    for word in ("block", "Hutchinson", "PGD", "J^T (diag(p) - p p^T) J", "--batch-sizes",
                 "resumes", "--lr", "--model"):
        assert word in text
    assert "--checkpoint-every" not in text and "--resume" not in text


def test_measure_in_float32_still_takes_the_input_hessian_in_float64():
    import torch

    from hessbatch.deep import MLP
    from hessbatch.deep._study import measure

    torch.manual_seed(0)
    model = MLP((1, 6, 6), 4, hidden=(16,), activation="relu")
    x, y = torch.rand(80, 1, 6, 6), torch.randint(4, (80,))
    opts = {"top_k": 2, "eig_tol_study": 1e-3, "eig_max_hvp": 60, "bottom_max_hvp": 20,
            "trace_probes": 4,
            "hessian_samples": 0, "hessian_micro_batch": 32, "eps": [0.0, 0.1], "pgd_steps": 2,
            "attack_samples": 0, "landscape_radius": 0.5, "landscape_points": 3,
            "input_samples": 8, "input_eps": 0.05, "input_steps": 10, "lambdas": [0.0],
            "measure_dtype": "float32"}
    r32 = measure(model, (x, y), (x, y), opts)
    r64 = measure(model, (x, y), (x, y), dict(opts, measure_dtype="float64"))
    assert r32["input_hessian"]["clean"]["negative_rtol"] == 1e-8
    assert r32["input_hessian"]["clean"]["bottom"] == r64["input_hessian"]["clean"]["bottom"]
    assert r32["input_hessian"]["clean"]["negative_fraction"] == 0     # ReLU: PSD
    assert r64["input_hessian"]["clean"]["negative_fraction"] == 0
    assert r32["spectrum"]["values"][0] == pytest.approx(r64["spectrum"]["values"][0], rel=1e-3)
    assert next(model.parameters()).dtype == torch.float32           # the model is untouched


@pytest.mark.parametrize("flag", ["--nproc 2", "--dtype float64", "--warm-start",
                                  "--hvp-check off", "--max-restarts 1"])
def test_train_options_the_study_does_not_take_are_refused_by_name(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["study", "--out", str(tmp_path / "s"), *flag.split()])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag.split()[0]} is an option of `hessbatch train` that the study does not take" \
        in err
    assert not (tmp_path / "s").exists()


# ---- issue 21: equal-loss comparisons; issue 24: the output rules and damaged files

TARGETS = ["--model", "mlp", "--width", "16", "--data", "synthetic:150:1x4x4", "--lr", "0.2",
           "--epochs", "12", "--methods", "bl", "--batch-sizes", "16,64", "--seeds", "0",
           "--activations", "relu", "--top-k", "3", "--trace-probes", "6", "--eps", "0,0.05",
           "--pgd-steps", "2", "--landscape-points", "3", "--input-samples", "3",
           "--input-steps", "8", "--lambdas=0,1", "--hessian-batch", "16", "--max-hvp", "4",
           "--bottom-budget", "10", "--loss-targets", "2.2,2.05,1e-3", "--quiet"]


def test_loss_targets_measure_each_run_at_matched_training_loss(tmp_path):
    out = tmp_path / "st"
    assert main(["study", *TARGETS, "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    reached = unreached = 0
    for r in doc["runs"]:
        rows = r["at_loss"]
        assert [a["target"] for a in rows] == [2.2, 2.05, 1e-3]
        flags = [a["reached"] for a in rows]
        assert flags == sorted(flags, reverse=True)    # a smaller target is reached later
        epochs = [a["epoch"] for a in rows if a["reached"]]
        assert epochs == sorted(epochs)
        for a in rows:
            if not a["reached"]:
                unreached += 1
                continue
            reached += 1
            # measured where the whole-training-set loss first fell below the target
            assert a["train_loss_at_stop"] <= a["target"]
            assert a["train_loss"] == pytest.approx(a["train_loss_at_stop"], rel=1e-4)
            assert 0 < a["updates"] <= r["updates"]
            assert a["bottom"]["value"] <= a["spectrum"]["values"][0]
            assert a["trace"]["low"] <= a["trace"]["trace"] <= a["trace"]["high"]
        # training stops at the last target, or runs to the --epochs cap
        assert r["epochs"] == (epochs[-1] if all(flags) else 12)
    assert reached >= 2 and unreached >= 1, (reached, unreached)
    rows = _rows(out / "at_loss.csv")
    assert len(rows) == 2 * 3 and sum(r["reached"] == "True" for r in rows) == reached
    assert (out / "vs_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_targets_are_checked(tmp_path, capsys):
    for bad, message in (("0.1,0.3", "distinct and decreasing"), ("0.3,-1", "finite numbers > 0"),
                         ("0.3,0.3", "distinct and decreasing")):
        assert main(["study", *TINY, "--loss-targets", bad, "--out", str(tmp_path / "s")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_train_time_after_a_resume_is_the_training_time(tmp_path, monkeypatch):
    """Before: train_time_s after a resume was the resumed call's wall time (near 0)."""
    args = [a for a in TINY]
    args[args.index("relu,softplus")] = "relu"
    args[args.index("16,64")] = "16"
    real_run = _study.Trainer.run
    clock = {"t": 0.0}

    def fake_clock():
        clock["t"] += 1.0        # every reading one second later: a deterministic clock
        return clock["t"]

    monkeypatch.setattr(_study.time, "perf_counter", fake_clock)
    ref = tmp_path / "ref"
    assert main(["study", *args, "--out", str(ref)]) == 0
    full = json.loads((ref / "results.json").read_text())["runs"][0]["train_time"]

    def interrupted(self, epochs=None, **kw):
        real_run(self, 1, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(_study.Trainer, "run", interrupted)
    out = tmp_path / "cut"
    assert main(["study", *args, "--out", str(out)]) == 130
    monkeypatch.setattr(_study.Trainer, "run", real_run)
    assert main(["study", *args, "--out", str(out)]) == 0
    resumed = json.loads((out / "results.json").read_text())["runs"][0]["train_time"]
    # the first call's epoch is counted: the total is within a few clock readings of the
    # uninterrupted run's (each reading adds 1 s), far from the second call's share alone
    assert resumed >= 0.6 * full, (resumed, full)


def test_study_out_follows_the_output_rules(tmp_path, capsys, monkeypatch):
    """Before: `--out ''` wrote into the current folder and a folder holding another
    command's results.json was overwritten."""
    monkeypatch.chdir(tmp_path)
    assert main(["study", *TINY, "--out", ""]) == 2
    assert "--out is empty ('')" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    other = tmp_path / "train-run"
    other.mkdir()
    (other / "results.json").write_text('{"format": "hessbatch.mushroom"}')
    assert main(["study", *TINY, "--out", str(other)]) == 2
    assert "the folder is not empty (results.json); pass --overwrite" in capsys.readouterr().err
    assert (other / "results.json").read_text() == '{"format": "hessbatch.mushroom"}'
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(_study, "train_run", lambda *a, **k: 1 / 0)   # no work may start
    assert main(["study", *TINY, "--out", "afile"]) == 2
    assert "--out afile: is a file" in capsys.readouterr().err


@pytest.mark.parametrize("name,text,message", [
    ("study.json", "{not json", "study.json: damaged study.json, not valid JSON"),
    ("study.json", '{"x": 1}', "study.json: not a study.json of hessbatch study: no 'options'"),
    ("runs/relu-bl-b16-s0/measure.json", "[1, 2]",
     "measure.json: damaged measure.json: expected a JSON object, got list"),
    ("runs/relu-bl-b16-s0/measure.json", '{"name": "x"}',
     "measure.json: not a measure.json of hessbatch study: no 'activation' field"),
])
def test_a_damaged_file_on_resume_is_named(tmp_path, capsys, name, text, message):
    """Before: a JSONDecodeError naming no file, or KeyError: 'options'."""
    args = [a for a in TINY]
    args[args.index("relu,softplus")] = "relu"
    out = tmp_path / "st"
    assert main(["study", *args, "--out", str(out)]) == 0
    (out / name).write_text(text)
    assert main(["study", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(out) in err, err


def test_an_interrupted_study_with_loss_targets_resumes_to_the_same_numbers(tmp_path,
                                                                          monkeypatch):
    args = [a for a in TARGETS]
    args[args.index("16,64")] = "16"
    ref = tmp_path / "ref"
    assert main(["study", *args, "--out", str(ref)]) == 0
    real_run = _study.Trainer.run
    calls = {"n": 0}

    def interrupted(self, epochs=None, **kw):
        calls["n"] += 1
        if calls["n"] == 4:               # after the 4th epoch's checkpoint
            real_run(self, epochs, **kw)
            raise KeyboardInterrupt
        return real_run(self, epochs, **kw)

    monkeypatch.setattr(_study.Trainer, "run", interrupted)
    out = tmp_path / "cut"
    assert main(["study", *args, "--out", str(out)]) == 130
    assert not (out / "runs" / "relu-bl-b16-s0" / "measure.json").exists()
    monkeypatch.setattr(_study.Trainer, "run", real_run)
    assert main(["study", *args, "--out", str(out)]) == 0
    a = json.loads((ref / "results.json").read_text())["runs"]
    b = json.loads((out / "results.json").read_text())["runs"]
    strip = ("times", "train_time", "measure_time")
    assert a[0]["at_loss"][0]["reached"]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in strip + ("at_loss",)} == \
               {k: v for k, v in rb.items() if k not in strip + ("at_loss",)}
        for xa, xb in zip(ra["at_loss"], rb["at_loss"]):
            assert {k: v for k, v in xa.items() if k != "times"} == \
                   {k: v for k, v in xb.items() if k != "times"}
