"""Atomic file writes: nothing a user already has is lost to a crash.

Every file tsuika writes goes to a temporary name in the destination folder
first and is renamed into place with ``os.replace`` (atomic on POSIX and
Windows within one file system), so a reader sees the old file or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tsuika.errors import TsuikaError


class WriteError(TsuikaError, OSError):
    """A file or folder could not be written (full disk, no permission, not a
    folder, ...); the message names it and the reason. Nothing already there
    was changed."""


def write_failure(path: str | os.PathLike[str], exc: BaseException) -> WriteError | None:
    """``exc`` as a :class:`WriteError` about ``path`` when it is an I/O failure
    (an ``OSError``, or safetensors' error around one); None otherwise."""
    text = str(exc)
    if isinstance(exc, OSError):
        reason = exc.strerror or text
    elif type(exc).__name__ == "SafetensorError" and ("os error" in text or "IoError" in text):
        reason = text
    else:
        return None
    error = WriteError(f"{path}: cannot write: {reason}")
    error.errno = getattr(exc, "errno", None)
    return error


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(temporary path)``, then move the result onto ``path``.

    The temporary file sits beside ``path`` (same file system); it is removed
    when ``write`` fails, and the old ``path``, if any, is left untouched.
    I/O failures become :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_failure(path, exc) from exc  # type: ignore[misc]
    os.close(fd)
    try:
        write(tmp)
        fsync_path(tmp)  # the data reaches the disk before the name does
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        failure = write_failure(path, exc)
        if failure is not None:
            raise failure from exc
        raise
    return path


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it, before
    a long job starts; :class:`WriteError` naming it otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tsuika-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise WriteError(
            f"{folder}: output folder cannot be written: {exc.strerror or exc}"
        ) from exc
    return folder


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file (or a folder's entries) to disk, so a rename never outruns the data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ``.{name}.{8 random characters}.tmp``: the temporary names :func:`atomic_write` uses.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that a killed :func:`atomic_write` left under ``folder``.

    Only call this when no other process writes there (e.g. when resuming a
    run in its own output folder).
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    stale = [p for p in root.rglob(".*.tmp") if p.is_file() and _TEMPORARY.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
