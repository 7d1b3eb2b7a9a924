"""hessbatch._outputs: the --out check every command runs first, and all-or-nothing file sets.

Standard library only (the core's tests never import torch or numpy).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from hessbatch import _outputs
from hessbatch._outputs import (LOCK_NAME, check_out_dir, release_locks, write_file,
                                write_files)


@pytest.fixture(autouse=True)
def _give_back_locks():
    yield
    release_locks()


def test_a_new_or_empty_folder_is_accepted_and_none_means_no_output(tmp_path):
    assert check_out_dir(None) is None
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    # the check creates the folder for its lock; giving the lock back with nothing written
    # leaves nothing behind
    assert [p.name for p in (tmp_path / "new" / "deeper").iterdir()] == [LOCK_NAME]
    release_locks()
    assert not (tmp_path / "new").exists()
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


# ------------------------------------------------------------------- issue 24


SET = ("results.json", "curves.csv", "gap.png")


def test_overwrite_removes_the_old_sets_files_that_the_new_run_does_not_write(tmp_path):
    out = tmp_path / "o"
    write_files(out, {"results.json": "old", "curves.csv": "old", "gap.png": b"old",
                      "gap.png.tmp": b"x", "notes.txt": "the user's"})
    (out / "keep").mkdir()
    check_out_dir(out, overwrite=True, outputs=SET)
    # until the first write every old file is intact (a run that fails keeps them)
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) == \
        ["curves.csv", "gap.png", "gap.png.tmp", "keep", "notes.txt", "results.json"]
    write_files(out, {"results.json": "new", "curves.csv": "new"})
    # the old gap.png (and its .tmp) go; files outside the command's set stay
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) == \
        ["curves.csv", "keep", "notes.txt", "results.json"]
    write_files(out, {"gap.png": b"new"})         # a later write removes nothing more
    assert (out / "results.json").read_text() == "new"
    release_locks()
    assert sorted(p.name for p in out.iterdir()) == ["curves.csv", "gap.png", "keep",
                                                     "notes.txt", "results.json"]


def test_without_a_set_overwrite_removes_nothing(tmp_path):
    out = tmp_path / "o"
    write_files(out, {"a.json": "old", "b.png": b"old"})
    check_out_dir(out, overwrite=True)
    write_files(out, {"a.json": "new"})
    assert (out / "b.png").read_bytes() == b"old"


def test_a_second_check_without_a_set_keeps_the_commands_set(tmp_path):
    """A command checks its folder with its file set; a library function it calls checks the
    same folder again without one (``save_report`` does): the set is kept, so the old files
    the run does not write still go (before, theory.png survived a run that wrote no plot)."""
    out = tmp_path / "o"
    write_files(out, {"theory.json": "old", "theory.png": b"old"})
    check_out_dir(out, overwrite=True, outputs=("theory.json", "theory.png"))
    check_out_dir(out, overwrite=True)
    write_files(out, {"theory.json": "new"})
    assert not (out / "theory.png").exists() and (out / "theory.json").read_text() == "new"


def test_a_failed_first_write_under_overwrite_removes_nothing(tmp_path, monkeypatch,
                                                             full_disk_at):
    out = tmp_path / "o"
    write_files(out, {"results.json": "old", "gap.png": b"old"})
    check_out_dir(out, overwrite=True, outputs=SET)
    full_disk_at(monkeypatch, 1)
    with pytest.raises(OSError, match="disk full"):
        write_files(out, {"results.json": "new"})
    assert (out / "gap.png").read_bytes() == b"old"
    assert (out / "results.json").read_text() == "old"


_HOLDER = """
import sys, time
from hessbatch._outputs import check_out_dir
check_out_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def _holder(out):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_pid(tmp_path):
    out = tmp_path / "dual"
    proc = _holder(out)
    try:
        with pytest.raises(ValueError, match=rf"another hessbatch run \(pid {proc.pid}\) is "
                                             r"writing into this folder"):
            check_out_dir(out)
        with pytest.raises(ValueError, match=f"pid {proc.pid}"):
            check_out_dir(out, overwrite=True)      # --overwrite does not break a live lock
    finally:
        proc.kill()
        proc.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys):
    out = tmp_path / "dual"
    proc = _holder(out)
    proc.kill()                                   # SIGKILL: no clean-up, the file stays
    proc.wait()
    assert (out / LOCK_NAME).read_text().split() == [str(proc.pid)]
    assert check_out_dir(out) == out              # only the lock file: "empty"
    err = capsys.readouterr().err
    assert f"took over the lock left by pid {proc.pid}, which is no longer running" in err
    assert (out / LOCK_NAME).read_text().split() == [str(os.getpid())]


def test_a_lock_is_inherited_by_the_owners_children_only(tmp_path):
    out = tmp_path / "run"
    check_out_dir(out)
    child = "from hessbatch._outputs import check_out_dir; import sys; check_out_dir(sys.argv[1])"
    # a worker started by the owner (the environment names the lock) may write there
    subprocess.run([sys.executable, "-c", child, str(out)], check=True)
    # an unrelated process may not
    env = {k: v for k, v in os.environ.items() if k != "HESSBATCH_OUT_LOCKS"}
    res = subprocess.run([sys.executable, "-c", child, str(out)], env=env,
                         capture_output=True, text=True)
    assert res.returncode != 0 and f"pid {os.getpid()}" in res.stderr


@pytest.mark.parametrize("make, match", [
    (lambda p: os.symlink(p / "nowhere", p / "link") or p / "link",
     r"link is a symbolic link to .*nowhere, which does not exist"),
    (lambda p: os.symlink(p / "nowhere", p / "link") or p / "link" / "sub",
     r"link is a symbolic link to .*nowhere, which does not exist \(its parent"),
    (lambda p: (os.symlink(p / "b", p / "a"), os.symlink(p / "a", p / "b")) and p / "a",
     "a is a loop of symbolic links"),
])
def test_a_dangling_link_or_a_loop_is_refused_up_front(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        check_out_dir(make(tmp_path))
