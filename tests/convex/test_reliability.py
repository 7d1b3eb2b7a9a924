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
