"""Replacing a small file whole: readers see the old content or the new, never half of either.

One way for every state, record, status, marker and key file the tool writes: a temp file
beside the target (os.replace must not cross filesystems), its mode set exactly (not left to
the caller's umask), then renamed over the target. `durable` adds what survives a power loss:
the file's bytes fsync'd before the rename, the directory fsync'd after it.

Only over a regular file (or none): a setting that names a device, a FIFO or a socket
(/dev/null) is left as it is, never replaced by a file. read_small reads such a file back,
bounded, and never blocks on a FIFO nor reads a device.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a stat's st_mode says a file is, as a line says it ("a FIFO")."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


class NotRegularFile(OSError):
    """A file we write or read back exists and is not a regular file (symlink followed)."""

    def __init__(self, path: Path, mode: int) -> None:
        super().__init__(errno.EINVAL, f"it is {kind_of(mode)}, not a regular file", str(path))


def _mode_if_any(path: Path) -> int | None:
    """path's st_mode, symlink followed; None when nothing is there (or a dangling symlink)."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _require_regular(path: Path, mode: int | None) -> None:
    """NotRegularFile unless mode is a regular file's (or None: nothing there)."""
    if mode is not None and not stat.S_ISREG(mode):
        raise NotRegularFile(path, mode)


def not_regular_fd(fd: int) -> str | None:
    """What an open file is when it is not a regular file ("a FIFO"), else None."""
    mode = os.fstat(fd).st_mode
    return None if stat.S_ISREG(mode) else kind_of(mode)


def not_regular(path: Path) -> str | None:
    """What path is when it exists and is not a regular file ("a character device"), symlink
    followed; None for a regular file, or nothing there (a file we may create)."""
    mode = _mode_if_any(path)
    return None if mode is None or stat.S_ISREG(mode) else kind_of(mode)


# What a file the tool writes and reads back (a state file, a record, a manifest, a portable
# backup's meta) may hold; far past any real one.
OURS_LIMIT = 256 << 20


def read_small(path: Path, limit: int = OURS_LIMIT) -> bytes:
    """The content of a regular file we wrote (a state file, a record, a manifest, a metrics
    file, a pidfile). Raises OSError: NotRegularFile for anything else, without blocking
    (O_NONBLOCK: a FIFO) nor reading a device; EFBIG past limit bytes (/dev/zero would never
    end)."""
    _require_regular(path, os.stat(path).st_mode)  # a device is not even opened
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # what was opened: the name may have changed since
        _require_regular(path, os.fstat(fd).st_mode)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def read_ours_text(path: Path, limit: int = OURS_LIMIT) -> str:
    """read_small, as UTF-8 text (ValueError if it is not)."""
    return read_small(path, limit).decode()


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
    two writers (the daemon and a command) never share one. Raises NotRegularFile, and
    writes nothing, when path exists and is not a regular file."""
    # nothing there (or a dangling symlink, which the rename replaces) is fine
    _require_regular(path, _mode_if_any(path))
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
