"""Nothing lost, nothing silently wrong (issue 10) for `hessbatch mushroom` and LIBSVM files."""

from __future__ import annotations

import json

import pytest

from hessbatch.cli import main
from hessbatch.convex import _cli_mushroom, load_svmlight

QUICK = ["--no-progress", "--no-plot", "--methods", "sgd", "--epochs", "1", "--max-batch",
         "400", "--check-every", "2000"]


def _svm(tmp_path, content: bytes):
    p = tmp_path / "d.svm"
    p.write_bytes(content)
    return p


# ------------------------------------------------------------------- outputs


@pytest.mark.parametrize("out, match", [
    ("", "--out is empty"),
    ("FILE", "is a file, not a folder"),
    ("FILE/sub", "is a file, so no folder"),
])
def test_a_bad_out_is_refused_before_the_runs(tmp_path, monkeypatch, capsys, out, match):
    (tmp_path / "FILE").write_text("x")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    monkeypatch.setattr(_cli_mushroom, "_dataset",
                        lambda args: pytest.fail("work started before --out was checked"))
    assert main(["mushroom", *QUICK, "--out", out]) == 2
    assert match in capsys.readouterr().err


def test_a_non_empty_out_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("someone else's")
    assert main(["mushroom", *QUICK, "--out", str(out)]) == 2
    assert "not empty (results.json)" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "someone else's"
    assert main(["mushroom", *QUICK, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "results.json").read_text())["format"] == "hessbatch.mushroom"


def test_a_failed_write_leaves_the_previous_files_all_old(tmp_path, monkeypatch, capsys,
                                                           full_disk_at):
    out = tmp_path / "o"
    assert main(["mushroom", *QUICK, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full_disk_at(monkeypatch, 2)         # the second file (curves.csv) hits a full disk
    capsys.readouterr()
    assert main(["mushroom", *QUICK, "--seed", "1", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write curves.csv" in err[0] and "disk full" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # all old, no .tmp


@pytest.mark.parametrize("extra, match", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--batch-size", "-3"], "--batch-size must be >= 1, got -3"),
    (["--micro-batch", "0"], "--micro-batch must be >= 1"),
    (["--batch-size", "200", "--max-batch", "400", "--n-train", "150"],
     "--batch-size must not exceed the training rows (150), got 200"),
])
def test_batch_sizes_out_of_range_are_errors(extra, match, capsys):
    assert main(["mushroom", *QUICK, *extra]) == 2
    assert match in capsys.readouterr().err


# ------------------------------------------------------------------- LIBSVM files


@pytest.mark.parametrize("content, match", [
    (b"1 1:1\n1 2:1\n", "a single label 1.0 on every sample"),
    (b"-1 1:1\n-1 2:1\n", "a single label -1.0"),
    (b"1 1:1\n\x89PNG\r\n\x1a\n\x00\xff\xfe", r":2: not UTF-8 text \(byte 0x89 at column 1\)"),
    (b"1 1:1\n0 1:1e999\n", ":2: .*feature 1 has value '1e999', which is not finite"),
    (b"1 1:1\n0 1:-1e400 2:1\n", ":2: .*not finite"),
    (b"1 1:1\n0 4000000000:1\n", ":2: feature index 4000000000 makes a dense X of 2 x "),
])
def test_a_bad_libsvm_file_is_one_line_naming_the_file_and_line(tmp_path, content, match):
    path = _svm(tmp_path, content)
    with pytest.raises(ValueError, match=match) as info:
        load_svmlight(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_the_command_reports_a_bad_libsvm_file_in_one_line(tmp_path, capsys):
    path = _svm(tmp_path, b"1 1:1\n0 9999999999:1\n")
    assert main(["mushroom", *QUICK, "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:2: feature index 9999999999" in err[0]


def test_max_dense_bytes_can_be_raised_for_really_wide_data(tmp_path):
    path = _svm(tmp_path, b"1 1:1\n0 300:2\n")
    with pytest.raises(ValueError, match="max_dense_bytes"):
        load_svmlight(str(path), max_dense_bytes=1000)
    X, y = load_svmlight(str(path), max_dense_bytes=2 * 300 * 8)
    assert X.shape == (2, 300) and X[1, 299] == 2.0 and y.tolist() == [1.0, 0.0]


# ------------------------------------------------------------------- issue 24


def _no_dense(monkeypatch):
    from hessbatch.convex import _data
    monkeypatch.setattr(_data._SvmlightRows, "dense",
                        lambda self: pytest.fail("the dense X was allocated before the check"))


@pytest.mark.parametrize("index, size", [("100000000", "71.1 PiB"), ("10000000", "728 TiB")])
def test_a_30_byte_libsvm_file_is_refused_before_any_allocation(tmp_path, monkeypatch, capsys,
                                                                index, size):
    # the file: 2 rows, a feature index of 1e8 (or 1e7): the dense X is below the
    # 2 GiB limit, but the d x d Hessian of Newton's method and of L would be petabytes
    path = _svm(tmp_path, f"1 1:1 {index}:1\n-1 1:-1\n".encode())
    _no_dense(monkeypatch)
    argv = ["mushroom", "--quick", "--methods", "gd,abs", "--batch-size", "1", "--max-batch",
            "1", "--no-progress", "--data", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"--data {path} needs at least {size} of memory" in err[0]
    assert f"the d x d Hessian, d = {index} features" in err[0] and "available" in err[0]


def test_the_memory_bound_is_a_lower_bound_and_refuses_what_cannot_fit(tmp_path, monkeypatch,
                                                                      capsys):
    import tracemalloc

    import numpy as np

    from hessbatch import _cli_common
    from hessbatch.convex import LogisticRegression, split_dataset
    from hessbatch.convex._model import memory_lower_bound
    rng = np.random.default_rng(0)
    n, d = 60, 300
    lines = [f"{1 if i % 2 else -1} " + " ".join(f"{j + 1}:{rng.normal():.3f}"
                                                 for j in sorted(rng.choice(d, 5, replace=False)))
             for i in range(n - 1)] + [f"1 {d}:1"]
    path = _svm(tmp_path, ("\n".join(lines) + "\n").encode())
    need = memory_lower_bound(n, 51, d)
    assert need == {"data": 8 * d * (n + 51), "hessian": 8 * d * d}
    # what the command does, measured: the peak is at least the bound (numpy reports its
    # allocations to tracemalloc)
    tracemalloc.start()
    try:
        X, y = load_svmlight(str(path))
        ds = split_dataset(X, y, n_train=51, seed=0)
        del X, y
        model = LogisticRegression(ds.X_train, ds.y_train, 1e-3, backend="numpy")
        model.constants()
        model.solve()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= sum(need.values()), (peak, need)
    # a machine with less memory than the bound: refused, naming --data and both sizes
    monkeypatch.setattr(_cli_common, "available_memory", lambda: sum(need.values()) - 1)
    _no_dense(monkeypatch)
    assert main(["mushroom", *QUICK, "--data", str(path), "--n-train", "51"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 963 KiB of memory" in err and "703 KiB" in err, err


def test_a_negative_lr_is_reported_as_typed_before_any_work(monkeypatch, capsys):
    monkeypatch.setattr(_cli_mushroom, "_dataset",
                        lambda args: pytest.fail("work started before --lr was checked"))
    for lr in ("-0.1", "nan", "0"):
        assert main(["mushroom", *QUICK, "--lr", lr]) == 2
        err = capsys.readouterr().err
        assert f"--lr must be finite and > 0, got {float(lr):g}" in err and "eta0" not in err


def test_a_bad_scheduler_option_is_named_as_typed_before_newton(monkeypatch, capsys):
    from hessbatch.convex import LogisticRegression
    monkeypatch.setattr(LogisticRegression, "solve",
                        lambda self, **k: pytest.fail("Newton ran before the options were checked"))
    assert main(["mushroom", *QUICK, "--alpha", "0.5", "--methods", "abs"]) == 2
    assert "--alpha must be" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1e300", "1e200", "-1e160"])
def test_absurd_feature_scales_are_refused_by_line(tmp_path, capsys, value):
    path = _svm(tmp_path, f"1 1:1\n-1 1:{value} 2:1\n1 2:3\n".encode())
    with pytest.raises(ValueError, match=rf"{path}:2: feature values too large: .*rescale"):
        load_svmlight(str(path))
    assert main(["mushroom", *QUICK, "--data", str(path), "--max-batch", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:2: feature values too large" in err[0]


def test_large_but_sane_feature_scales_still_run_and_arrays_get_the_same_rule(tmp_path):
    import numpy as np

    from hessbatch.convex import check_arrays
    path = _svm(tmp_path, b"1 1:1e100\n-1 1:-1 2:1\n1 2:3\n")
    X, _ = load_svmlight(str(path))
    assert X[0, 0] == 1e100
    with pytest.raises(ValueError, match=r"X has features too large for float64: row 1"):
        check_arrays(np.array([[1.0, 0.0], [1e200, 1.0]]), [0, 1])


def test_a_locked_out_is_refused_before_the_data_is_loaded(tmp_path, monkeypatch, capsys,
                                                           lock_holder):
    out = tmp_path / "o"
    holder = lock_holder(out)
    with monkeypatch.context() as m:
        m.setattr(_cli_mushroom, "_dataset",
                  lambda args: pytest.fail("work started on a locked --out"))
        assert main(["mushroom", *QUICK, "--out", str(out), "--overwrite"]) == 2
    assert f"another hessbatch run (pid {holder.pid})" in capsys.readouterr().err
    holder.kill()
    holder.wait()
    assert main(["mushroom", *QUICK, "--out", str(out)]) == 0      # the stale lock: taken over
    assert f"took over the lock left by pid {holder.pid}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["curves.csv", "results.json"]  # no lock


def test_overwrite_removes_an_old_gap_png_the_new_run_does_not_write(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    for name in ("results.json", "curves.csv", "gap.png"):
        (out / name).write_text("old run")
    assert main(["mushroom", *QUICK, "--out", str(out), "--overwrite"]) == 0   # --no-plot
    assert sorted(p.name for p in out.iterdir()) == ["curves.csv", "results.json"]
    assert json.loads((out / "results.json").read_text())["format"] == "hessbatch.mushroom"


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_broken_link_out_is_refused_before_the_runs(tmp_path, monkeypatch, capsys, kind):
    import os
    link = tmp_path / "link"
    if kind == "dangling":
        os.symlink(tmp_path / "nowhere", link)
    else:
        os.symlink(tmp_path / "other", link)
        os.symlink(link, tmp_path / "other")
    monkeypatch.setattr(_cli_mushroom, "_dataset",
                        lambda args: pytest.fail("work started before --out was checked"))
    assert main(["mushroom", *QUICK, "--out", str(link)]) == 2
    err = capsys.readouterr().err
    assert ("which does not exist" if kind == "dangling" else "a loop of symbolic links") in err


def _command(argv, tmp_path, **env):
    import os
    import subprocess
    import sys
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-c", "import sys; from hessbatch.cli import main; "
                           "sys.exit(main(sys.argv[1:]))", *argv], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=600)


def test_without_a_numba_cache_folder_commands_run_with_one_warning(tmp_path):
    # NUMBA_CACHE_LOCATOR_CLASSES=ZipCacheLocator leaves numba no usable cache folder for these
    # files: what a read-only installation with an unwritable HOME gives ("no locator
    # available"); as root, permissions cannot make that happen
    for argv in (["mushroom", *QUICK, "--methods", "abs"],
                 ["theory", "--problem", "mushroom", "--runs", "40", "--epochs", "1",
                  "--quiet"]):
        res = _command(argv, tmp_path, NUMBA_CACHE_LOCATOR_CLASSES="ZipCacheLocator")
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stderr.count("numba cannot cache compiled kernels here") == 1, res.stderr
        assert "Traceback" not in res.stderr


def test_backend_numpy_never_imports_numba(tmp_path):
    code = ("import sys; from hessbatch.cli import main; "
            "rc = main(sys.argv[1:]); print('numba imported:', 'numba' in sys.modules); "
            "sys.exit(rc)")
    import os
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", code, "mushroom", *QUICK, "--methods", "sgd,abs",
                          "--backend", "numpy"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "numba imported: False" in res.stdout


def test_an_ascii_terminal_and_a_non_ascii_out_exit_0_after_writing(tmp_path):
    res = _command(["mushroom", *QUICK, "--out", "résultats"], tmp_path,
                   PYTHONIOENCODING="ascii")
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "résultats").iterdir()) == ["curves.csv",
                                                                          "results.json"]
    assert "r\\xe9sultats" in res.stdout          # printed as an escape, not an error
