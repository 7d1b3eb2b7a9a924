"""Output folders that never lose a result: checked before any work, written all at once.

Every command that writes files (``train``, ``mushroom``, ``theory``) goes through the two
functions here, so the rules are the same everywhere (docs/reliability.md):

* :func:`check_out_dir` runs *before* any work and refuses, with a one-line error naming the
  folder and the fix: an empty name (``--out ''``), a path that is a file (or lies under one),
  a folder that cannot be written, and a non-empty folder unless ``overwrite`` is set or the
  folder is the one a run resumes from.
* :func:`write_files` writes a *set* of files so that they are all old or all new: every file
  is first written completely to ``NAME.tmp`` beside its target, flushed and fsync'ed; only
  when all of them are on disk are they renamed over the targets (``os.replace``, atomic on
  POSIX and Windows). A failure while writing (disk full, quota, permissions) removes every
  ``.tmp`` it made, replaces nothing, and raises one :class:`OSError` whose message names the
  file, the folder and the cause. A kill during the writing leaves at most a ``.tmp`` file,
  which the next write of the same name replaces; the targets are never truncated. The
  renames come one after another (microseconds), so only a kill in that window could leave a
  mix of old and new complete files.

Standard library only: the core imports nothing else.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> out = check_out_dir(out)                       # fine: it does not exist yet
    >>> [p.name for p in write_files(out, {"a.json": "{}", "b.csv": b"x\\n"})]
    ['a.json', 'b.csv']
    >>> check_out_dir(out)                             # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: --out ...: the folder is not empty (a.json, b.csv); pass --overwrite ...
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Mapping, Union

__all__ = ["check_out_dir", "write_files", "write_file"]

Data = Union[bytes, str]


def check_out_dir(path: str | os.PathLike | None, *, option: str = "--out",
                  overwrite: bool = False, resume_from: str | os.PathLike | None = None
                  ) -> Path | None:
    """Check an output folder before any work starts; return it as a :class:`Path`.

    Args:
        path: the folder (need not exist yet); ``None`` means "write nothing" and is returned.
        option: how the folder is called in messages (the command-line option).
        overwrite: allow a non-empty folder (its files are replaced as they are written).
        resume_from: a file (a checkpoint) a run resumes from; its folder may be non-empty.

    Returns:
        ``Path(path)``, or ``None`` for ``None``.

    Raises:
        ValueError: ``path`` is empty, is a file or lies under a file, cannot be written, or
            is a non-empty folder without ``overwrite`` (the message lists a few of its files
            and names the fix).
    """
    if path is None:
        return None
    text = os.fspath(path)
    if not str(text).strip():
        raise ValueError(f"{option} is empty ({text!r}): give a folder name, e.g. "
                         f"{option} runs/first")
    out = Path(text)
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
    if out.is_dir() and not overwrite:
        if resume_from is not None and \
                Path(resume_from).resolve().parent == out.resolve():
            return out
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ValueError(f"{option} {out}: the folder is not empty ({shown}); pass "
                             f"--overwrite to replace its files, or choose another folder")
    return out


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
    _fsync_dir(folder)
    return [target for _, target in temps]


def write_file(path: str | os.PathLike, data: Data) -> Path:
    """Write one file atomically (see :func:`write_files`); returns its path."""
    path = Path(path)
    return write_files(path.parent, {path.name: data})[0]


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
