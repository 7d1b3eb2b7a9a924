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
    for col in ("upd to 0.001", "upd to 0.0001", "samples to 0.0001", "HVP rows to 0.0001",
                "samples seen", "HVP rows", "final gap", "val acc", "max B", "HVPs"):
        assert col in lines[head]
    labels = [line.split("  ")[0].strip() for line in lines[head + 2:head + 11]]
    assert labels == ["gd 1/L", "gd 40/L", "sgd-limit B=100", "sgd B=100", "abs", "abs H=128",
                      "absa", "absa H=128", "('-': target not reached within the run's budget;"
                      " samples: rows read by gradients, HVP rows: rows read by the eigenvalue"
                      " checks' Hessian-vector products)"]
    assert "paper condition eta0 <= 1/(L (M_G + B_max))" in out and "is met" in out
    # lam = 1e-3: G = eta0 L M / (2c) = 22 / (2 * 401 * 1e-3) = 27.43 > F(0) - F* = 0.647
    # (the paper's condition: eta0 = 1/(L (M_G + B_max)), M_G = 1)
    assert "G = 27.43 for sgd, abs, absa (vacuous" in out and "G = 108.9 for sgd-limit" in out

    res = json.loads((outdir / "results.json").read_text())
    ds = load_mushroom(seed=0)
    model = LogisticRegression(ds.X_train, ds.y_train, 1e-3)
    f_star = model.solve().f_star
    assert res["seed"] == 0 and res["lam"] == 1e-3
    assert res["f_star"] == pytest.approx(f_star, rel=1e-12)
    C = model.constants()
    assert res["constants"] == pytest.approx(C.to_dict())
    # the paper's condition: M_G = M_V + 1 = 1
    assert res["eta0"] == pytest.approx(1 / (C.L * 401), rel=1e-12)
    assert res["theorem1_condition_met"] is True
    runs = {r["method"]: r for r in res["runs"]}
    assert set(runs) == {"gd 1/L", "gd 40/L", "sgd-limit B=100", "sgd B=100", "abs",
                         "abs H=128", "absa", "absa H=128"}
    for r in runs.values():
        for key in ("updates_to_0.001", "updates_to_0.0001", "samples_seen", "final_gap",
                    "hvp_rows_to_0.001", "hvp_rows", "val_accuracy", "largest_batch", "hvps",
                    "config", "theorem1"):
            assert key in r
    assert runs["sgd B=100"]["largest_batch"] == 100
    assert runs["abs"]["largest_batch"] > 100 and runs["abs"]["hvps"] > 0
    assert runs["abs"]["config"]["lr"] == pytest.approx(100 / (C.L * 401))
    # SGD at Theorem 1's limit for its own batch: eta0 = 1/(L (1 + 100)), lr = 100/(101 L)
    assert runs["sgd-limit B=100"]["config"]["lr"] == pytest.approx(100 / (101 * C.L))
    assert runs["sgd-limit B=100"]["theorem1"]["condition_met"] is True
    assert runs["sgd-limit B=100"]["theorem1"]["noise_floor"] == pytest.approx(22 / (2 * 101e-3))
    assert runs["gd 1/L"]["theorem1"] is None             # full batches: not Theorem 1's setting
    # every HVP reads the whole Hessian batch: 6905 rows (full) or 128; gradient rows apart
    for name, rows_per_hvp in (("abs", 6905), ("abs H=128", 128), ("absa", 6905),
                               ("absa H=128", 128), ("sgd B=100", 0)):
        r = runs[name]
        assert r["hvp_rows"] == rows_per_hvp * r["hvps"], name
        assert r.get("hessian_batch") == {6905: "full", 128: 128, 0: None}[rows_per_hvp]
    assert runs["abs H=128"]["hvps"] > 0 and runs["abs H=128"]["hvp_rows"] < runs["abs"][
        "hvp_rows"] / 40
    assert runs["gd 40/L"]["diverged"] is True or runs["gd 40/L"]["final_gap"] > 0
    assert runs["gd 1/L"]["updates"] == 15 and runs["gd 1/L"]["final_gap"] > 0

    with open(outdir / "curves.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"method", "update", "samples", "batch_size", "lr", "adv_count",
                            "loss", "eigenvalue", "hvps", "hvp_rows", "epoch_end", "gap"}
    for label, r in runs.items():
        mine = [row for row in rows if row["method"] == label]
        assert len(mine) == r["updates"] + 1
        if not r["diverged"]:
            last = mine[-1]
            assert float(last["gap"]) == pytest.approx(float(last["loss"]) - f_star, abs=1e-15)
            assert float(last["gap"]) == pytest.approx(r["final_gap"], rel=1e-12)
    checks = [row for row in rows if row["method"] == "abs" and row["eigenvalue"]]
    assert len(checks) == runs["abs"]["eigenvalue_checks"] > 0
    for label in ("abs", "abs H=128"):
        mine = [row for row in rows if row["method"] == label]
        assert sum(int(row["hvp_rows"]) for row in mine) == runs[label]["hvp_rows"]
        per = {int(row["hvp_rows"]) // int(row["hvps"]) for row in mine if int(row["hvps"])}
        assert per == {6905 if label == "abs" else 128}
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
    (["--hessian-batch", "full,7000"], "got 7000"),
    (["--lr", "0.1", "--methods", "sgd-limit,abs"], "--lr sets one lr"),
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


@pytest.mark.parametrize("value", ["full,full", "128,x", ""])
def test_hessian_batch_list_is_validated(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["mushroom", "--hessian-batch", value])
    assert exc.value.code == 2
    assert "--hessian-batch" in capsys.readouterr().err


def test_lr_drops_sgd_limit_from_the_default_runs(capsys):
    code = main(["mushroom", *SMALL, "--lr", "0.05", "--methods", "sgd,abs", "--epochs", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "sgd-limit" not in out
    code = main(["mushroom", *SMALL, "--lr", "0.05", "--gd-steps", "1", "--epochs", "1",
                 "--hessian-batch", "64"])
    out = capsys.readouterr().out
    assert code == 0 and "sgd-limit" not in out and "abs H=64" in out
    labels = [line.split("  ")[0] for line in out.splitlines()]
    assert "abs" not in labels and "absa" not in labels  # no full-Hessian run was asked for


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


def test_the_condition_verdict_says_not_met_past_the_limit(tmp_path, capsys):
    outdir = tmp_path / "hot"
    code = main(["mushroom", "--no-progress", "--no-plot", "--methods", "sgd", "--epochs", "1",
                 "--max-batch", "400", "--check-every", "2000", "--eta0-scale", "2",
                 "--out", str(outdir)])
    out = capsys.readouterr().out
    assert code == 0
    assert "paper condition eta0 <= 1/(L (M_G + B_max))" in out and "is NOT met" in out
    assert json.loads((outdir / "results.json").read_text())["theorem1_condition_met"] is False
