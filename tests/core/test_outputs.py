"""hessbatch._outputs: the --out check every command runs first, and all-or-nothing file sets.

Standard library only (the core's tests never import torch or numpy).
"""

from __future__ import annotations

import errno

import pytest

from hessbatch import _outputs
from hessbatch._outputs import check_out_dir, write_file, write_files


def test_a_new_or_empty_folder_is_accepted_and_none_means_no_output(tmp_path):
    assert check_out_dir(None) is None
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()            # checking creates nothing
    (tmp_path / "empty").mkdir()
    assert check_out_dir(str(tmp_path / "empty")) == tmp_path / "empty"


@pytest.mark.parametrize("make, match", [
    (lambda p: "", r"--out is empty \(''\)"),
    (lambda p: "   ", "--out is empty"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file, not a folder"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt" / "sub", "is a file, so no folder"),
])
def test_bad_out_names_the_problem(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        check_out_dir(make(tmp_path))


def test_a_non_empty_folder_needs_overwrite_or_a_resume_from_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"old")
    with pytest.raises(ValueError, match=r"not empty \(checkpoint.pt\).*--overwrite"):
        check_out_dir(out)
    assert check_out_dir(out, overwrite=True) == out
    assert check_out_dir(out, resume_from=out / "checkpoint.pt") == out
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="not empty"):
        check_out_dir(out, resume_from=other / "checkpoint.pt")
    assert (out / "checkpoint.pt").read_bytes() == b"old"


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    # root ignores permission bits, so the refusal of the probe file is simulated
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(_outputs.tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match="cannot write in .*Permission denied"):
        check_out_dir(tmp_path / "run")


def test_write_files_replaces_the_whole_set(tmp_path):
    paths = write_files(tmp_path / "o", {"a.json": "new a", "b.csv": b"new b"})
    assert [p.name for p in paths] == ["a.json", "b.csv"]
    assert (tmp_path / "o" / "a.json").read_text() == "new a"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.json", "b.csv"]
    write_file(tmp_path / "o" / "a.json", "newer")
    assert (tmp_path / "o" / "a.json").read_text() == "newer"
    with pytest.raises(ValueError, match="plain name"):
        write_files(tmp_path, {"../x": "y"})


@pytest.mark.parametrize("fail_on", [1, 2])
def test_disk_full_replaces_nothing_and_leaves_no_tmp(tmp_path, monkeypatch, fail_on,
                                                      full_disk_at):
    out = tmp_path / "o"
    write_files(out, {"results.json": "old results", "curves.csv": "old curves"})
    full_disk_at(monkeypatch, fail_on)
    with pytest.raises(OSError) as info:
        write_files(out, {"results.json": "new results", "curves.csv": "new curves"})
    msg = str(info.value)
    name = ["results.json", "curves.csv"][fail_on - 1]
    assert f"cannot write {name}" in msg and "disk full" in msg and "intact" in msg
    assert "\n" not in msg
    assert (out / "results.json").read_text() == "old results"     # all old ...
    assert (out / "curves.csv").read_text() == "old curves"
    assert sorted(p.name for p in out.iterdir()) == ["curves.csv", "results.json"]  # no .tmp
