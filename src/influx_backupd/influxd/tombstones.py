"""Deletes influxd has not compacted in yet: `.tombstone` files beside a shard's TSM files.

`influxd restore` takes only the .tsm files of a shard's tar, so a tombstone that goes into a
backup is lost on restore, and the points it deletes come back (seen with 1.6: a DELETE, then
at once `influxd backup -portable`, whose tar holds the tombstone; restored, the deleted points
answer again). influxd's tsm1 engine rewrites a file with a tombstone into one without it about
a second after the delete, or after it opens such a file: waiting for that keeps tombstones out
of a snapshot (jobs/hot.py, before the tool) and out of a throwaway's export (restore/database.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

# A compaction rewrites a shard's files at the disk's speed: a few GB a minute.
WAIT = 300.0


def count(data_dir: Path, database: str | None = None) -> int:
    """The .tombstone files under a data dir's DB/RP/ID dirs (one database, or all; a name is
    a path element here, never a pattern: it may hold `*` or `[`)."""
    if database is not None:
        return sum(1 for _ in (data_dir / database).glob("*/*/*.tombstone"))
    return sum(1 for _ in data_dir.glob("*/*/*/*.tombstone"))


def wait_gone(
    data_dir: Path,
    timeout: float = WAIT,
    *,
    database: str | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Wait, up to timeout or until stop() says so, until count() is 0; returns what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = count(data_dir, database)
        if not left or time.monotonic() >= deadline or stop():
            return left
        time.sleep(0.2)
