"""`hessbatch simulate`: inputs (metrics.json, results.json, traces), profiles, outputs, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from hessbatch import MachineProfile, Workload
from hessbatch._cli_simulate import load_runs
from hessbatch.cli import main


def _metrics_doc() -> dict:
    """A metrics.json as `hessbatch train` writes it (the fields simulate reads), two epochs."""
    def epoch(e, updates, samples, adv, eigs, skipped, hvps, tt, ta, te):
        return {"epoch": e, "train_loss": 1.0, "test_loss": None, "test_accuracy": None,
                "eigenvalue": eigs[-1] if eigs else None, "eigenvalues": eigs,
                "eigenvalues_skipped": skipped, "hvps": hvps, "batch_size": 64,
                "next_batch_size": 64, "lr": 0.1, "updates": updates, "samples": samples,
                "adversarial_samples": adv, "time_train": tt, "time_eigenvalue": te,
                "time_adversarial": ta, "time_eval": 9.0}
    return {"spec": {"method": "absa", "model": "mlp"},
            "scheduler": {"method": "absa", "batch_size": 32, "micro_batch_size": 32},
            "history": [epoch(1, 10, 320, 40, [3.0], 1, 12, 1.0, 0.25, 0.5),
                        epoch(2, 15, 640, 0, [1.0, 0.5], 0, 20, 2.0, 0.0, 0.75)],
            "summary": None, "finished": True}


def _results_doc() -> dict:
    return {"format": "hessbatch.mushroom", "version": 1, "data": {"n_features": 117},
            "runs": [{"method": "sgd B=100", "updates": 700, "samples_seen": 69050,
                      "eigenvalue_checks": 0, "hvps": 0, "config": {"method": "bl",
                                                                    "batch_size": 100}},
                     {"method": "absa", "updates": 90, "samples_seen": 69050,
                      "eigenvalue_checks": 10, "hvps": 55, "config": {"method": "absa",
                                                                      "batch_size": 100}}]}


def test_metrics_json_becomes_per_epoch_workloads(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(_metrics_doc()))
    (run,) = load_runs(tmp_path)  # a folder finds its metrics.json
    # epoch counts are differences of the running totals; checks include skipped ones
    assert run["epochs"] == [Workload(10, 320, 40, 2, 12), Workload(5, 320, 0, 2, 20)]
    assert run["workload"] == Workload(15, 640, 40, 4, 32)
    # measured: train + adversarial + eigenvalue, evaluation excluded
    assert run["measured_epochs"] == [1.75, 2.75]


def test_simulate_metrics_json_prediction_in_json(tmp_path, capsys):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(_metrics_doc()))
    rc = main(["simulate", str(path), "--format", "json", "--processes", "4", "--n-params",
               "1000", "--latency", "1e-3", "--inverse-bandwidth", "1e-6",
               "--time-per-update", "0.01", "--time-per-sample", "0.002",
               "--time-per-adv-sample", "0.004", "--hessian-batch", "64",
               "--time-per-hvp-sample", "0.001", "--time-per-check", "0.5",
               "--scaling", "1,2,4,8"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    (res,) = doc["runs"]
    ar = 2 * 3 * 1e-3 + 2 * 3 / 4 * 1000 * 1e-6
    expected = (15 * 0.01 + 640 * 0.002 / 4 + 40 * 0.004 / 4 + 15 * ar
                + 4 * 0.5 + 32 * (64 * 0.001 / 4 + ar))
    assert res["prediction"]["total"] == pytest.approx(expected)
    assert [r["processes"] for r in res["scaling"]["rows"]] == [1, 2, 4, 8]
    assert res["scaling"]["rows"][0]["communication"] == 0.0
    assert res["measured"] == pytest.approx(4.5)


def test_simulate_results_json_takes_n_params_from_the_data(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results_doc()))
    rc = main(["simulate", str(path), "--processes", "8", "--inverse-bandwidth", "1e-6"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "|theta| = 117" in out and "sgd B=100" in out
    assert "adversarial samples are not in results.json" in out
    comm = 700 * 2 * 7 / 8 * 117 * 1e-6
    assert f"{comm:.4g}" in out


def test_trace_replay_and_outputs(tmp_path, capsys):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([4.0, 4.0, 1.0, 0.9, 0.2, 0.1]))
    out = tmp_path / "out"
    rc = main(["simulate", "--trace", str(trace), "--methods", "bl,abs", "--samples-per-epoch",
               "1000", "--epochs", "4", "--decay-epochs", "", "--batch-size", "50",
               "--max-batch", "400", "--processes", "2", "--n-params", "100",
               "--time-per-sample", "1e-3", "--inverse-bandwidth", "1e-5", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "simulate.json").read_text())
    bl, abs_ = doc["runs"]
    assert bl["workload"]["updates"] == 4 * 20 and bl["workload"]["checks"] == 0
    assert abs_["workload"]["checks"] >= 1
    assert abs_["workload"]["updates"] < bl["workload"]["updates"]
    assert (out / "scaling.png").stat().st_size > 1000  # matplotlib is in the test extras
    assert "strong scaling" in capsys.readouterr().out


def test_profile_file_and_option_override(tmp_path, capsys):
    prof = MachineProfile(processes=16, n_params=10, time_per_sample=1.0)
    pfile = tmp_path / "profile.json"
    pfile.write_text(json.dumps(prof.to_dict()))
    m = tmp_path / "metrics.json"
    m.write_text(json.dumps(_metrics_doc()))
    main(["simulate", str(m), "--profile", str(pfile), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["profile"]["processes"] == 16
    assert doc["runs"][0]["prediction"]["compute"] == pytest.approx(640 / 16)
    main(["simulate", str(m), "--profile", str(pfile), "--processes", "4", "--format",
          "json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"][0]["prediction"]["compute"] == pytest.approx(640 / 4)


def test_paper_table3_command(capsys):
    assert main(["simulate", "--paper-table3", "--format", "json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)["table3"]}
    assert set(rows) == {"bl", "gg", "abs", "absa"}
    assert all(abs(r["relative_error"]) < 1e-3 for r in rows.values())


@pytest.mark.parametrize("argv,message", [
    (["simulate"], "nothing to simulate"),
    (["simulate", "nope.json"], "no such file"),
    (["simulate", "--demo", "--processes", "0"], "processes must be >= 1, got 0"),
    (["simulate", "--demo", "--scaling", "1,0"], "--scaling must list processes >= 1"),
])
def test_errors_name_the_problem(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_files_are_named(tmp_path, capsys):
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"history": []}))
    assert main(["simulate", str(bad)]) == 2
    assert "no 'scheduler'" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main(["simulate", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"procesess": 4}))
    assert main(["simulate", "--demo", "--profile", str(prof)]) == 2
    assert "unknown profile keys ['procesess']" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["simulate", str(empty)]) == 2
    assert "without metrics.json" in capsys.readouterr().err


def test_help_explains_the_model(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = capsys.readouterr().out
    for text in ("2 (P-1) alpha", "--calibrate", "--paper-table3", "metrics.json",
                 "results.json", "--latency", "--inverse-bandwidth"):
        assert text in out


def test_core_only_installation(tmp_path):
    """Without numpy, torch or matplotlib: simulate works, skips the plot and says so, and
    --calibrate says what to install."""
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'numpy', 'torch', 'numba', 'matplotlib'}:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        import hessbatch.cli
        rc = hessbatch.cli.main(['simulate', '--demo', '--epochs', '3', '--decay-epochs', '',
                                 '--samples-per-epoch', '500', '--time-per-sample', '1e-3',
                                 '--out', sys.argv[1]])
        assert rc == 0, rc
        assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules
        raise SystemExit(hessbatch.cli.main(['simulate', '--calibrate']))
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "scaling.png not written: matplotlib is missing" in proc.stderr
    assert (tmp_path / "simulate.json").is_file() and not (tmp_path / "scaling.png").exists()
    assert "--calibrate needs '" in proc.stderr
    assert "pip install 'hessbatch[deep]'" in proc.stderr


def test_an_all_zero_profile_is_warned_about(capsys):
    argv = ["simulate", "--demo", "--method", "bl", "--epochs", "2", "--samples-per-epoch",
            "100", "--decay-epochs", ""]
    assert main(argv) == 0
    assert "every time constant of the profile is 0" in capsys.readouterr().err
    assert main(argv + ["--time-per-sample", "1e-3"]) == 0
    assert "every time constant" not in capsys.readouterr().err


def test_labels_name_the_file_only_when_files_are_mixed(tmp_path, capsys):
    for name, doc in (("a", _metrics_doc()), ("b", _results_doc())):
        (tmp_path / name).mkdir()
        (tmp_path / name / ("metrics.json" if name == "a" else "results.json")).write_text(
            json.dumps(doc))
    main(["simulate", str(tmp_path / "a"), "--format", "json", "--time-per-sample", "1"])
    assert [r["label"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["absa"]
    main(["simulate", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "json",
          "--time-per-sample", "1"])
    labels = [r["label"] for r in json.loads(capsys.readouterr().out)["runs"]]
    assert labels == ["absa (a)", "sgd B=100 (b)", "absa (b)"]


def test_where_communication_starts_to_dominate():
    from hessbatch._cli_simulate import _scaling
    # compute 64/P s, all-reduce 2 (P-1)/P * 1 s (beta = 1 s per value, 1 value): share
    # (2(P-1)/P) / (64/P + 2(P-1)/P) = 2(P-1) / (62 + 2P) >= 1/2 from P = 33 on
    run = {"workload": Workload(1, 64), "smallest_batch": 64}
    prof = MachineProfile(n_params=1, beta=1.0, time_per_sample=1.0)
    s = _scaling(run, prof, [1, 2, 16, 32, 33, 64])
    assert s["communication_dominates_from"] == 33
    assert s["best_processes"] == 64  # 64/64 + 2*63/64 = 2.97 s, the least of the list
    s = _scaling(run, prof.replace(beta=0.0), [1, 2, 64])
    assert s["communication_dominates_from"] is None and s["best_processes"] == 64


def test_the_scaling_plot_keeps_the_process_matplotlib_backend(tmp_path):
    import matplotlib as mpl                  # the test extras install it
    before = mpl.rcParams["backend"]
    mpl.rcParams["backend"] = "template"
    try:
        assert main(["simulate", "--demo", "--out", str(tmp_path / "s")]) == 0
        assert mpl.rcParams["backend"] == "template"
    finally:
        mpl.rcParams["backend"] = before
    assert (tmp_path / "s" / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
