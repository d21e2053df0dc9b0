"""Replacing a small file whole: readers see the old content or the new, never half of either.

One way for every state, record, status, marker and key file the tool writes: a temp file
beside the target (os.replace must not cross filesystems), its mode set exactly (not left to
the caller's umask), then renamed over the target. `durable` adds what survives a power loss:
the file's bytes fsync'd before the rename, the directory fsync'd after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """A rename or a new name in path is on disk once this returns."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    durable: bool = True,
    tmp: Path | None = None,
) -> None:
    """path's content becomes data. tmp: the temp file's name where a cleanup knows it (a
    backup's `.partial`); by default hidden and unique to this process and thread, so that
    two writers (the daemon and a command) never share one."""
    if tmp is None:
        _sweep(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # exactly: a file O_TRUNC'd keeps its old mode
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def _sweep(path: Path) -> None:
    """Temp files of path that a writer killed before its rename left (its pid is gone)."""
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
                continue
            pid = entry.name[len(prefix) :].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_json(
    path: Path,
    data: Any,
    *,
    indent: int | None = None,
    mode: int = 0o600,
    durable: bool = True,
    tmp: Path | None = None,
) -> None:
    """replace_file with data as JSON (compact unless indent is given)."""
    separators = (",", ":") if indent is None else None
    text = json.dumps(data, indent=indent, separators=separators)
    replace_file(path, text.encode(), mode=mode, durable=durable, tmp=tmp)
