"""`hessbatch mushroom`: the table, results.json, curves.csv, the plot (or the hint), --help
and clear errors."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from hessbatch.cli import main
from hessbatch.convex import LogisticRegression, load_mushroom

SMALL = ["--no-progress", "--epochs", "3", "--gd-steps", "1,40", "--gd-updates", "15",
         "--max-batch", "400", "--patience", "1", "--check-every", "2000"]


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mushroom")
    return out


def test_mushroom_run_writes_table_json_csv(outdir, capsys):
    code = main(["mushroom", *SMALL, "--out", str(outdir)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("method"))
    for col in ("upd to 0.001", "upd to 0.0001", "samples seen", "final gap", "val acc",
                "max B", "HVPs"):
        assert col in lines[head]
    labels = [line.split("  ")[0].strip() for line in lines[head + 2:head + 7]]
    assert labels == ["gd 1/L", "gd 40/L", "sgd B=100", "abs", "absa"]
    assert "condition eta0 <= 1/(L (M_G + B_max))" in out and "is met" in out

    res = json.loads((outdir / "results.json").read_text())
    ds = load_mushroom(seed=0)
    model = LogisticRegression(ds.X_train, ds.y_train, 1e-3)
    f_star = model.solve().f_star
    assert res["seed"] == 0 and res["lam"] == 1e-3
    assert res["f_star"] == pytest.approx(f_star, rel=1e-12)
    C = model.constants()
    assert res["constants"] == pytest.approx(C.to_dict())
    assert res["eta0"] == pytest.approx(1 / (C.L * 400))
    assert res["theorem1_condition_met"] is True
    runs = {r["method"]: r for r in res["runs"]}
    assert set(runs) == {"gd 1/L", "gd 40/L", "sgd B=100", "abs", "absa"}
    for r in runs.values():
        for key in ("updates_to_0.001", "updates_to_0.0001", "samples_seen", "final_gap",
                    "val_accuracy", "largest_batch", "hvps", "config"):
            assert key in r
    assert runs["sgd B=100"]["largest_batch"] == 100
    assert runs["abs"]["largest_batch"] > 100 and runs["abs"]["hvps"] > 0
    assert runs["abs"]["config"]["lr"] == pytest.approx(100 / (C.L * 400))
    assert runs["gd 40/L"]["diverged"] is True or runs["gd 40/L"]["final_gap"] > 0
    assert runs["gd 1/L"]["updates"] == 15 and runs["gd 1/L"]["final_gap"] > 0

    with open(outdir / "curves.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"method", "update", "samples", "batch_size", "lr", "adv_count",
                            "loss", "eigenvalue", "hvps", "epoch_end", "gap"}
    for label, r in runs.items():
        mine = [row for row in rows if row["method"] == label]
        assert len(mine) == r["updates"] + 1
        if not r["diverged"]:
            last = mine[-1]
            assert float(last["gap"]) == pytest.approx(float(last["loss"]) - f_star, abs=1e-15)
            assert float(last["gap"]) == pytest.approx(r["final_gap"], rel=1e-12)
    checks = [row for row in rows if row["method"] == "abs" and row["eigenvalue"]]
    assert len(checks) == runs["abs"]["eigenvalue_checks"] > 0
    png = outdir / "gap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_one_line_says_how_to_get_the_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # makes `import matplotlib` fail
    code = main(["mushroom", *SMALL, "--methods", "sgd", "--epochs", "1", "--out",
                 str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    hint = [line for line in out.splitlines() if "pip install 'hessbatch[plot]'" in line]
    assert len(hint) == 1
    assert not (tmp_path / "gap.png").exists() and (tmp_path / "results.json").exists()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["mushroom", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--seed", "--lam", "--n-train", "--data", "--methods", "--epochs",
                "--sampling", "--eta0-scale", "--gd-steps", "--gd-updates", "--targets",
                "--quick", "--hessian-batch", "--eig-method", "--eig-tol", "--eig-max-iter",
                "--batch-size", "--max-batch", "--alpha", "--beta", "--patience",
                "--check-every", "--adv-eps", "--adv-fraction", "--adv-decay", "--adv-stop",
                "--adv-rule", "--out", "--no-plot", "--backend", "--no-progress"):
        assert opt in text, opt


@pytest.mark.parametrize("argv,match", [
    (["--lam", "0"], "lam must be finite and > 0"),
    (["--max-batch", "8000"], "larger than the data"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--eta0-scale", "-1"], "--eta0-scale"),
    (["--gd-steps", "0"], "--gd-steps"),
    (["--hessian-batch", "0"], "hessian_batch"),
    (["--n-train", "9000"], "n_train"),
    (["--eig-tol", "0"], "--eig-tol"),
    (["--eig-max-iter", "0"], "--eig-max-iter"),
    (["--targets", "1e-3,-1"], "--targets"),
    (["--batch-size", "7", "--max-batch", "800"], "micro_batch_size must divide"),
])
def test_bad_options_give_clear_errors(argv, match, capsys):
    code = main(["mushroom", "--no-progress", "--epochs", "1", "--gd-updates", "2", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert "hessbatch mushroom: error:" in err and match in err


def test_methods_option_is_validated(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["mushroom", "--methods", "sgd,adam"])
    assert exc.value.code == 2
    assert "subset of" in capsys.readouterr().err


def test_svmlight_data_option(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.random((120, 4))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0]) > -0.3).astype(int) * 2 - 1
    path = tmp_path / "d.svm"
    path.write_text("".join(f"{yi:+d} " + " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(x))
                            + "\n" for x, yi in zip(X, y)))
    code = main(["mushroom", "--data", str(path), "--no-progress", "--methods", "sgd,abs",
                 "--batch-size", "10", "--max-batch", "80", "--epochs", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "n_train=102" in out and "n_features=4" in out       # 85% of 120


def test_same_seed_same_files(tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["mushroom", *SMALL, "--methods", "sgd,absa", "--epochs", "2",
                     "--no-plot", "--out", str(out)]) == 0
        assert not (out / "gap.png").exists()
        outs.append(out)
    capsys.readouterr()
    assert (outs[0] / "curves.csv").read_bytes() == (outs[1] / "curves.csv").read_bytes()
    a, b = (json.loads((o / "results.json").read_text()) for o in outs)
    for res in (a, b):
        res["options"].pop("out")
        for r in res["runs"]:
            r.pop("seconds")                      # wall time: the only field allowed to differ
    assert a == b
