"""Output folders that never lose a result: checked and locked before any work, written all at once.

Every command that writes files (``train``, ``mushroom``, ``theory``, ...) goes through the
functions here, so the rules are the same everywhere (docs/reliability.md):

* :func:`check_out_dir` runs *before* any work and refuses, with a one-line error naming the
  folder and the fix: an empty name (``--out ''``), a path that is a file (or lies under one),
  a symbolic link that points nowhere or into a loop (the folder or one of its parents), a
  folder that cannot be written, a non-empty folder unless ``overwrite`` is set or the folder
  is the one a run resumes from, and a folder another live process is writing into.
* The check takes a **lock** on the folder: an advisory lock file ``.hessbatch-lock`` inside it
  (the folder is created for it) holding the owner's pid, locked with ``flock`` where the
  system has it. A second run on the same folder is refused, naming the pid; a lock file left
  by a process that died (kill -9, power loss) is taken over with a note on stderr. Processes
  the owner starts (data-parallel workers) inherit the lock through the environment variable
  ``HESSBATCH_OUT_LOCKS``; torchrun's workers of rank > 0 do not lock (rank 0 does).
  :func:`release_locks` (called by the ``hessbatch`` command when a command ends, and at exit)
  removes the lock file, and the folder too if the check created it and nothing was written.
* :func:`write_files` writes a *set* of files so that they are all old or all new: every file
  is first written completely to ``NAME.tmp`` beside its target, flushed and fsync'ed; only
  when all of them are on disk are they renamed over the targets (``os.replace``, atomic on
  POSIX and Windows). A failure while writing (disk full, quota, permissions) removes every
  ``.tmp`` it made, replaces nothing, and raises one :class:`OSError` whose message names the
  file, the folder and the cause. A kill during the writing leaves at most a ``.tmp`` file,
  which the next write of the same name replaces; the targets are never truncated. The
  renames come one after another (microseconds), so only a kill in that window could leave a
  mix of old and new complete files.
* With ``overwrite``, the first successful :func:`write_files` into the folder also removes the
  files of the command's set (``outputs``, and their ``.tmp``) that the folder held at the
  check and this run did not write: an old ``gap.png`` does not stay beside a new run's
  results. Other files (the user's own) are never removed, and before that first write the
  old files are all intact.

Standard library only: the core imports nothing else.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> out = check_out_dir(out)                       # fine: it does not exist yet
    >>> [p.name for p in write_files(out, {"a.json": "{}", "b.csv": b"x\\n"})]
    ['a.json', 'b.csv']
    >>> release_locks()
    >>> check_out_dir(out)                             # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: --out ...: the folder is not empty (a.json, b.csv); pass --overwrite ...
"""

from __future__ import annotations

import atexit
import errno
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Union

try:  # POSIX: the kernel releases an flock when its owner dies, so a dead run never blocks
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid in the lock file decides
    fcntl = None

__all__ = ["LOCK_NAME", "check_out_dir", "release_locks", "write_files", "write_file"]

Data = Union[bytes, str]

LOCK_NAME = ".hessbatch-lock"          # the advisory lock file inside a locked output folder
_ENV = "HESSBATCH_OUT_LOCKS"           # locks a process's children inherit: "path=pid" entries


@dataclass
class _Held:
    """A lock this process holds (or inherited) on one output folder."""

    folder: Path
    fd: int | None                      # None: inherited from the parent process
    created: Path | None                # the outermost folder the check created
    stale: list[str] = field(default_factory=list)  # old files to remove at the first write


_HELD: dict[str, _Held] = {}


def check_out_dir(path: str | os.PathLike | None, *, option: str = "--out",
                  overwrite: bool = False, resume_from: str | os.PathLike | None = None,
                  outputs: Iterable[str] = (), lock: bool = True) -> Path | None:
    """Check an output folder before any work starts, lock it; return it as a :class:`Path`.

    Args:
        path: the folder (need not exist yet); ``None`` means "write nothing" and is returned.
        option: how the folder is called in messages (the command-line option).
        overwrite: allow a non-empty folder; the first :func:`write_files` into it removes the
            files of ``outputs`` found now that the run does not write.
        outputs: every file name the command may write (its set), e.g. ``("results.json",
            "curves.csv", "gap.png")``; only these (and their ``.tmp``) are ever removed.
        resume_from: a file (a checkpoint) a run resumes from; its folder may be non-empty.
        lock: take the folder's lock (creates the folder and ``.hessbatch-lock`` in it);
            :func:`release_locks` gives it back.

    Returns:
        ``Path(path)``, or ``None`` for ``None``.

    Raises:
        ValueError: ``path`` is empty, is a file or lies under a file, is (or lies under) a
            symbolic link that points nowhere or into a loop, cannot be written, is a
            non-empty folder without ``overwrite`` (the message lists a few of its files and
            names the fix), or is locked by another live process (named by its pid).
    """
    if path is None:
        return None
    text = os.fspath(path)
    if not str(text).strip():
        raise ValueError(f"{option} is empty ({text!r}): give a folder name, e.g. "
                         f"{option} runs/first")
    out = Path(text)
    _refuse_broken_links(out, option)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: is a file, not a folder; choose a folder name "
                         "(it is created if needed)")
    # the nearest existing ancestor must be a folder we can create files in
    probe_dir = out
    while not probe_dir.exists():
        parent = probe_dir.parent
        if parent == probe_dir:
            break
        probe_dir = parent
    if not probe_dir.is_dir():
        raise ValueError(f"{option} {out}: {probe_dir} is a file, so no folder can be made "
                         "under it; choose another folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hessbatch-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{option} {out}: cannot write in {probe_dir} ({exc.strerror or exc});"
                         " choose a folder you can write to") from None
    entries: list[str] = []
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        resuming = resume_from is not None and \
            Path(resume_from).resolve().parent == out.resolve()
        if entries and not overwrite and not resuming:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ValueError(f"{option} {out}: the folder is not empty ({shown}); pass "
                             f"--overwrite to replace its files, or choose another folder")
        if not overwrite:
            entries = []
    if lock:
        held = _lock(out, option)
        # a second check of the same folder without a file set (a library call inside the
        # command) keeps the set the command named
        if held is not None and overwrite and outputs:
            ours = {name for o in outputs for name in (o, o + ".tmp")}
            held.stale = [name for name in entries if name in ours and
                          ((out / name).is_file() or (out / name).is_symlink())]
    return out


def _refuse_broken_links(out: Path, option: str) -> None:
    """A dangling symbolic link or a loop, the folder itself or a parent: refused now, not at
    the first write (``mkdir`` would fail on it after the work)."""
    for part in [out, *out.parents]:
        if not os.path.islink(part):
            continue
        try:
            os.stat(part)
        except OSError as exc:
            target = os.readlink(part)
            what = ("a loop of symbolic links" if exc.errno == errno.ELOOP else
                    f"a symbolic link to {target}, which does not exist")
            where = "" if part == out else f" (its parent {part})"
            raise ValueError(f"{option} {out}: {part} is {what}{where}; point it at an "
                             "existing folder, remove it, or choose another folder") from None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - no signal 0 there: treat the lock as held
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _inherited(lock_path: Path) -> bool:
    """The lock is held by a process that started this one (the variable names it)."""
    owner = _read_pid(lock_path)
    for entry in os.environ.get(_ENV, "").split(os.pathsep):
        where, _, pid = entry.rpartition("=")
        if where == str(lock_path) and pid.isdigit() and int(pid) == owner \
                and _pid_alive(owner):
            return True
    return False


def _lock(out: Path, option: str) -> _Held | None:
    key = str(out.resolve())
    if key in _HELD:                                   # this process holds it already
        return _HELD[key]
    rank = os.environ.get("RANK")
    if rank not in (None, "", "0") and "WORLD_SIZE" in os.environ:
        return None                # a torchrun worker of rank > 0: rank 0 holds the lock
    created = None
    for part in [out, *out.parents]:
        if part.exists():
            break
        created = part
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option} {out}: cannot create the folder ({exc.strerror or exc}); "
                         "choose a folder you can write to") from None
    lock_path = Path(key) / LOCK_NAME
    if lock_path.exists() and _inherited(lock_path):
        held = _HELD[key] = _Held(Path(key), None, created)
        return held
    for _ in range(20):            # retried only if the lock file was replaced meanwhile
        fd = _try_lock(lock_path, out, option)
        if fd is not None:
            break
    else:  # pragma: no cover - 20 owners came and went during this call
        raise ValueError(f"{option} {out}: its lock file {lock_path} keeps changing: another "
                         "run is starting there; choose another folder")
    previous = os.read(fd, 64).decode("ascii", "replace").split()
    if previous and previous[0] != str(os.getpid()):
        print(f"note: {option} {out}: took over the lock left by pid {previous[0]}, which is "
              "no longer running (its run did not finish)", file=sys.stderr)
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    held = _HELD[key] = _Held(Path(key), fd, created)
    entries = [e for e in os.environ.get(_ENV, "").split(os.pathsep) if e]
    os.environ[_ENV] = os.pathsep.join(entries + [f"{lock_path}={os.getpid()}"])
    return held


def _try_lock(lock_path: Path, out: Path, option: str) -> int | None:
    """An open, locked descriptor of ``lock_path``; None if the file was replaced meanwhile.

    Raises:
        ValueError: another live process holds the lock.
    """
    def refuse(pid):
        who = f"pid {pid}" if pid is not None else "another process"
        raise ValueError(f"{option} {out}: another hessbatch run ({who}) is writing into this "
                         f"folder (lock file {lock_path}); wait for it to finish, or choose "
                         "another folder")

    if fcntl is None:  # pragma: no cover - Windows: exclusive creation, then the pid decides
        try:
            return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = _read_pid(lock_path)
            if pid is not None and _pid_alive(pid):
                refuse(pid)
            os.unlink(lock_path)
            return None
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        refuse(_read_pid(lock_path))
    try:
        same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
    except FileNotFoundError:
        same = False
    if not same:   # the owner removed the file between our open and our lock: try again
        os.close(fd)
        return None
    return fd


def release_locks() -> None:
    """Give back every output-folder lock this process holds (the command is over).

    Removes each lock file; a folder the check created and nothing was written into is
    removed too. Inherited locks are left to their owner.
    """
    for key in list(_HELD):
        held = _HELD.pop(key)
        if held.fd is None:
            continue
        lock_path = held.folder / LOCK_NAME
        try:
            os.unlink(lock_path)
        except OSError:
            pass
        os.close(held.fd)   # closing releases the flock
        if held.created is not None:        # only folders left empty: nothing was written
            top = held.created.resolve()
            for part in [held.folder, *held.folder.parents]:
                try:
                    part.rmdir()
                except OSError:
                    break
                if part == top:
                    break
        entries = [e for e in os.environ.get(_ENV, "").split(os.pathsep)
                   if e and e.rpartition("=")[0] != str(lock_path)]
        if entries:
            os.environ[_ENV] = os.pathsep.join(entries)
        else:
            os.environ.pop(_ENV, None)


atexit.register(release_locks)


def write_files(folder: str | os.PathLike, files: Mapping[str, Data]) -> list[Path]:
    """Write several files into ``folder`` so that they are all replaced or none is.

    Each ``name -> data`` (``bytes``, or ``str`` written as UTF-8) goes to ``name.tmp`` first;
    after all are flushed and fsync'ed they are renamed over their targets in the given order.
    The folder is created if needed.

    Args:
        folder: the output folder.
        files: file names (no path separators) and their contents.

    Returns:
        The paths written, in order.

    Raises:
        ValueError: a name with a path separator, or an empty ``files``.
        OSError: writing failed (e.g. the disk is full); every ``.tmp`` made is removed and no
            target is touched; the one-line message names the file and the cause.
    """
    if not files:
        raise ValueError("write_files needs at least one file")
    folder = Path(folder)
    for name in files:
        if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
            raise ValueError(f"file name must be a plain name, got {name!r}")
    temps: list[tuple[Path, Path]] = []
    current = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            current = folder / name
            tmp = folder / (name + ".tmp")
            temps.append((tmp, current))
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        for tmp, _ in temps:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        cause = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            cause += " (disk full)"
        where = current.name if current is not None else str(folder)
        error = OSError(f"cannot write {where} in {folder}: {cause}; nothing was replaced, "
                        "the previous files are intact")
        error.errno = exc.errno  # kept for callers; the message stays one plain line
        raise error from None
    for tmp, target in temps:
        os.replace(tmp, target)
    _remove_stale(folder, set(files))
    _fsync_dir(folder)
    return [target for _, target in temps]


def write_file(path: str | os.PathLike, data: Data) -> Path:
    """Write one file atomically (see :func:`write_files`); returns its path."""
    path = Path(path)
    return write_files(path.parent, {path.name: data})[0]


def _remove_stale(folder: Path, written: set[str]) -> None:
    """After the first complete write into a folder checked with ``overwrite``: the files it
    held then that this run did not write belong to the old set, and go."""
    try:
        held = _HELD.get(str(folder.resolve()))
    except OSError:  # pragma: no cover
        return
    if held is None or not held.stale:
        return
    stale, held.stale = held.stale, []
    for name in stale:
        if name in written:
            continue
        try:
            os.unlink(folder / name)
        except FileNotFoundError:
            pass


def _fsync_dir(folder: Path) -> None:
    # Makes the renames durable on POSIX; not possible (nor needed) on Windows.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
