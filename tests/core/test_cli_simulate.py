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


# every cost a demo or a metrics.json incurs (ABSA: adversarial samples and checks), P > 1
COSTS = ["--n-params", "1000", "--latency", "1e-5", "--inverse-bandwidth", "1e-9",
         "--time-per-sample", "1e-3", "--time-per-adv-sample", "2e-3", "--time-per-check", "0.1"]


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
    rc = main(["simulate", str(path), "--processes", "8", "--inverse-bandwidth", "1e-6",
               "--latency", "0", "--time-per-sample", "0", "--time-per-update", "1e-3",
               "--time-per-check", "0.1"])
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
               "--time-per-sample", "1e-3", "--inverse-bandwidth", "1e-5", "--latency", "1e-5",
               "--time-per-check", "0.1", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "simulate.json").read_text())
    bl, abs_ = doc["runs"]
    assert bl["workload"]["updates"] == 4 * 20 and bl["workload"]["checks"] == 0
    assert abs_["workload"]["checks"] >= 1
    assert abs_["workload"]["updates"] < bl["workload"]["updates"]
    assert (out / "scaling.png").stat().st_size > 1000  # matplotlib is in the test extras
    assert "strong scaling" in capsys.readouterr().out


def test_profile_file_and_option_override(tmp_path, capsys):
    prof = MachineProfile(processes=16, n_params=10, time_per_sample=1.0, alpha=1e-6,
                          beta=1e-9, time_per_adversarial_sample=1e-3, time_per_check=0.1)
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
    assert main(["simulate", "--paper-table3"]) == 0   # the table says which rows are fitted
    assert "Only the bl and gg rows are predictions" in capsys.readouterr().out


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
                                 '--samples-per-epoch', '500', *sys.argv[2:],
                                 '--out', sys.argv[1]])
        assert rc == 0, rc
        assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules
        raise SystemExit(hessbatch.cli.main(['simulate', '--calibrate']))
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), *COSTS],
                          capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "scaling.png not written: matplotlib is missing" in proc.stderr
    assert (tmp_path / "simulate.json").is_file() and not (tmp_path / "scaling.png").exists()
    assert "--calibrate needs '" in proc.stderr
    assert "pip install 'hessbatch[deep]'" in proc.stderr


def test_an_all_zero_profile_is_refused_naming_each_missing_cost(capsys):
    argv = ["simulate", "--demo", "--method", "bl", "--epochs", "2", "--samples-per-epoch",
            "100", "--decay-epochs", ""]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--n-params, --latency, --inverse-bandwidth not given" in err
    assert "no compute time: give --time-per-sample" in err
    assert main(argv + ["--time-per-sample", "1e-3", "--processes", "1", "--scaling", "1"]) == 0
    out = capsys.readouterr().out
    assert "defaults used (not given, not measured): --time-per-update 0.0 (not modelled)" \
        in out


def test_labels_name_the_file_only_when_files_are_mixed(tmp_path, capsys):
    for name, doc in (("a", _metrics_doc()), ("b", _results_doc())):
        (tmp_path / name).mkdir()
        (tmp_path / name / ("metrics.json" if name == "a" else "results.json")).write_text(
            json.dumps(doc))
    main(["simulate", str(tmp_path / "a"), "--format", "json", *COSTS])
    assert [r["label"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["absa"]
    main(["simulate", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "json", *COSTS])
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
        assert main(["simulate", "--demo", *COSTS, "--out", str(tmp_path / "s")]) == 0
        assert mpl.rcParams["backend"] == "template"
    finally:
        mpl.rcParams["backend"] = before
    assert (tmp_path / "s" / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- issue 21: every cost given, measured or a printed default; issue 24: outputs, inputs

def _metrics_file(tmp_path, doc=None):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(_metrics_doc() if doc is None else doc))
    return path


@pytest.mark.parametrize("drop,message", [
    ("--n-params", "--n-params not given, and P up to 1024 is predicted"),
    ("--time-per-adv-sample", "--time-per-adv-sample is not given, but the runs make 40 "
                              "adversarial samples"),
    ("--time-per-check", "neither --time-per-hvp-sample nor --time-per-check is > 0"),
])
def test_a_missing_cost_that_matters_is_refused(tmp_path, capsys, drop, message):
    """Before: 64 processes without a parameter count predicted 0 s of communication, and
    ABSA's adversarial samples and checks cost nothing."""
    argv = ["simulate", str(_metrics_file(tmp_path)), "--processes", "64"]
    i = COSTS.index(drop)
    assert main(argv + COSTS[:i] + COSTS[i + 2:]) == 2
    assert message in capsys.readouterr().err
    assert main(argv + COSTS) == 0


def test_zero_costs_without_physical_sense_are_refused(tmp_path, capsys):
    m = str(_metrics_file(tmp_path))
    for opt, message in (("--n-params", "--n-params is 0: a model has at least one"),
                         ("--inverse-bandwidth", "--inverse-bandwidth is 0 (an infinitely"),
                         ("--time-per-adv-sample", "--time-per-adv-sample is 0, but")):
        argv = list(COSTS)
        argv[argv.index(opt) + 1] = "0"
        assert main(["simulate", m, *argv]) == 2
        assert message in capsys.readouterr().err
    # a profile file that leaves fields out does not make them 0
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"processes": 64, "time_per_sample": 1e-3}))
    assert main(["simulate", m, "--profile", str(prof)]) == 2
    assert "--n-params, --latency, --inverse-bandwidth not given" in capsys.readouterr().err
    prof.write_text(json.dumps({"processes": 64, "n_params": 0}))
    assert main(["simulate", m, "--profile", str(prof), *COSTS[2:]]) == 2
    assert "--n-params ('n_params' of the --profile file) is 0" in capsys.readouterr().err


def test_a_negative_exponent_value_reaches_the_range_check(capsys):
    """Before: argparse took -1e-9 for an option and said 'expected one argument'."""
    assert main(["simulate", "--demo", *COSTS, "--inverse-bandwidth", "-1e-9"]) == 2
    err = capsys.readouterr().err
    assert "beta must be finite and >= 0, got -1e-09" in err, err
    assert "expected one argument" not in err


def test_every_default_used_is_printed_and_in_the_json(tmp_path, capsys):
    argv = ["simulate", str(_metrics_file(tmp_path)), *COSTS]
    assert main(argv + ["--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # given: the COSTS; defaulted and used: P (1), t_update, t_hvp (checks), hvps recorded
    assert doc["defaults_used"] == {"time_per_update": 0.0, "time_per_hvp_sample": 0.0,
                                    "processes": 1}
    assert doc["profile_sources"]["n_params"] == "option"
    assert doc["profile_sources"]["time_per_update"] == "default"
    assert main(argv) == 0
    assert ("defaults used (not given, not measured): --time-per-update 0.0 (not modelled), "
            "--time-per-hvp-sample 0.0 (not modelled), --processes 1") in capsys.readouterr().out


def test_out_is_checked_first_refused_when_used_and_never_the_current_folder(
        tmp_path, capsys, monkeypatch):
    """Before: `--out ''` wrote into the current folder, an earlier simulate.json was
    overwritten silently, and a bad --out was reported only after the work."""
    import hessbatch._cli_simulate as sim
    monkeypatch.chdir(tmp_path)
    argv = ["simulate", "--demo", *COSTS, "--no-plot"]
    assert main(argv + ["--out", ""]) == 2
    assert "--out is empty ('')" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert main(argv + ["--out", "sim"]) == 0
    first = (tmp_path / "sim" / "simulate.json").read_text()
    assert main(argv + ["--latency", "1e-3", "--out", "sim"]) == 2
    assert "the folder is not empty (simulate.json); pass --overwrite" in \
        capsys.readouterr().err
    assert (tmp_path / "sim" / "simulate.json").read_text() == first
    assert main(argv + ["--latency", "1e-3", "--out", "sim", "--overwrite"]) == 0
    assert (tmp_path / "sim" / "simulate.json").read_text() != first
    (tmp_path / "afile").write_text("x")

    def no_work(*a, **k):
        raise AssertionError("the work started before --out was checked")
    monkeypatch.setattr(sim, "load_runs", no_work)
    monkeypatch.setattr(sim, "runs_from_trace", no_work)
    assert main(argv + ["--out", "afile"]) == 2
    assert "--out afile: is a file" in capsys.readouterr().err


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(scheduler=None), "'scheduler' is null; expected an object"),
    (lambda d: d["history"][1].update(samples="640"),
     "history[1].samples is '640'; expected a whole number >= 0"),
    (lambda d: d["history"][0].update(time_train=float("nan")),
     "history[0].time_train is nan; expected a finite number of seconds >= 0"),
    (lambda d: d["history"][1].update(updates=3),
     "history[1]: updates must be >= 0, got -7 (updates and samples are running totals"),
    (lambda d: d.update(history="x"), "'history' is str; expected a list"),
])
def test_a_bad_metrics_json_gets_one_line_naming_file_and_field(tmp_path, capsys, edit,
                                                                 message):
    """Before: AttributeError for a null scheduler, messages without the file name for strings,
    and a NaN time accepted and written back as bare NaN (not JSON)."""
    doc = _metrics_doc()
    edit(doc)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(doc))    # json.dumps writes nan as NaN, as Python's reader reads
    assert main(["simulate", str(path), *COSTS, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and message in err, err
    assert not (tmp_path / "o").exists()
