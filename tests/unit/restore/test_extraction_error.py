"""The line of an extraction that failed on the machine's side: with where, and for a disk that
filled after the space check, how much is free now (before: "[Errno 28] No space left on
device", no path, no sizes)."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from influx_backupd.restore.cold import _extraction_error


def test_a_full_disk_names_where_and_what_is_free(tmp_path: Path) -> None:
    plan: Any = SimpleNamespace(staging={"data": tmp_path / "data.restore-x"})
    line = _extraction_error(OSError(errno.ENOSPC, "No space left on device"), plan)
    assert line.startswith("No space left on device while extracting beside the live dirs; now ")
    assert f"{tmp_path}: " in line and " bytes free" in line, line


def test_another_error_keeps_its_path() -> None:
    plan: Any = SimpleNamespace(staging={})
    exc = OSError(errno.EACCES, "Permission denied", "/srv/influxdb/data.restore-x/db")
    assert _extraction_error(exc, plan) == ("Permission denied (/srv/influxdb/data.restore-x/db)")
