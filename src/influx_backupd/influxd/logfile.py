"""The log of an influxd we start ourselves (`[influxd] command`): state_dir/influxd.log.

influxd writes every HTTP request to it (Debian's `[http] log-enabled = true`): about 150 bytes
a write, 660 MB a day at 50 writes/s, in the state dir beside the catalog. Nothing else rotates
it, so it is trimmed the way logrotate's copytruncate does: copied to influxd.log.1 (replacing
the one before), then truncated in place. influxd keeps its descriptor, opened O_APPEND (by us,
or by systemd's `append:`), so its next line lands at the new end; a line written between the
copy and the truncation is lost, as with copytruncate.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from influx_backupd.core.log import Logger

NAME = "influxd.log"  # in the state dir
LIMIT = 16 << 20  # trimmed beyond this; with the copy, at most about twice it on disk


def trim(path: Path, logger: Logger, limit: int = LIMIT) -> bool:
    """Trim path if it holds more than limit bytes; True if it did. Never raises: a log that
    cannot be trimmed is logged, and nothing else depends on it."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            # a symlink (to a file of someone's: truncating through it empties theirs), a FIFO
            # (the copy would block), a device: not the log we keep
            if st.st_size > limit or not stat.S_ISLNK(st.st_mode):
                logger.warning(
                    "influxd.log_not_trimmed", path=str(path), error="not a regular file"
                )
            return False
        if st.st_size <= limit:
            return False
        old = path.with_name(path.name + ".1")
        part = old.with_name(f".{old.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with open(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(part, old)
        finally:
            with contextlib.suppress(OSError):
                part.unlink()
        # only once the copy is safe; O_NOFOLLOW: not through a symlink put there meanwhile
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning("influxd.log_not_trimmed", path=str(path), error=str(exc))
        return False
    logger.info("influxd.log_trimmed", path=str(path), kept=str(old), limit_bytes=limit)
    return True
