"""The backup lock across real processes, and the crash marker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from influx_backupd.store.state import BackupLock, Busy, CrashMarker

HOLD = """
import sys, time
from pathlib import Path
from influx_backupd.store.state import BackupLock
lock = BackupLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_the_lock_is_exclusive_across_processes_and_freed_when_its_holder_dies(
    tmp_path: Path,
) -> None:
    path = tmp_path / "backup.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"held by pid {holder.pid}"):
            BackupLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    lock = BackupLock(path)
    while True:
        try:
            lock.acquire()
            break
        except Busy:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    lock.release()


def test_crash_marker_round_trip_and_a_torn_marker_still_counts(tmp_path: Path) -> None:
    marker = CrashMarker(tmp_path)
    assert marker.read() is None
    marker.write("run-1", job="nightly")
    body = marker.read()
    assert body is not None and body["run_id"] == "run-1" and body["job"] == "nightly"
    marker.path.write_text('{"run_id": "ru')  # torn by a power loss
    assert marker.read() == {"run_id": None}
    marker.clear()
    assert marker.read() is None
    marker.clear()  # idempotent
