"""Waiting for influxd to compact its deletes in (influxd/tombstones.py), and the hot job's wait
before its snapshot: on real files, influxd's part (removing the tombstone) played by a thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from influx_backupd.core import log
from influx_backupd.core.cancel import CancelToken
from influx_backupd.influxd import tombstones
from influx_backupd.jobs.hot import _await_deletes
from influx_backupd.store.record import RunRecord


def _shard(data: Path, db: str, sid: int, *names: str) -> Path:
    shard = data / db / "autogen" / str(sid)
    shard.mkdir(parents=True)
    for name in names:
        (shard / name).write_bytes(b"x")
    return shard


def _remove_later(path: Path, after: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(after), path.unlink()))
    thread.start()
    return thread


def test_count_takes_a_database_name_as_a_name_never_as_a_pattern(tmp_path: Path) -> None:
    _shard(tmp_path, "a*", 1, "000000001-000000001.tsm", "000000001-000000001.tombstone")
    _shard(tmp_path, "ab", 2, "000000001-000000001.tombstone", "000000002-000000001.tombstone")
    (tmp_path / "ab" / "_series" / "00").mkdir(parents=True)
    assert tombstones.count(tmp_path) == 3
    assert tombstones.count(tmp_path, "a*") == 1
    assert tombstones.count(tmp_path, "ab") == 2
    assert tombstones.count(tmp_path, "none") == 0


def test_wait_gone_returns_once_they_are_gone_or_with_what_is_left(tmp_path: Path) -> None:
    shard = _shard(tmp_path, "db", 1, "000000001-000000001.tombstone")
    remover = _remove_later(shard / "000000001-000000001.tombstone", 0.5)
    started = time.monotonic()
    assert tombstones.wait_gone(tmp_path, 10.0) == 0
    assert 0.4 < time.monotonic() - started < 5.0
    remover.join()
    (shard / "000000002-000000001.tombstone").write_bytes(b"x")
    started = time.monotonic()
    assert tombstones.wait_gone(tmp_path, 0.5) == 1
    assert time.monotonic() - started < 3.0
    stopped = time.monotonic()
    assert tombstones.wait_gone(tmp_path, 60.0, stop=lambda: True) == 1
    assert time.monotonic() - stopped < 3.0


def _record() -> RunRecord:
    return RunRecord(id="r", job="j", mode="hot", status="running", started_at=0.0)  # type: ignore[arg-type]


def test_the_hot_job_lets_the_server_compact_its_deletes_before_the_snapshot(
    tmp_path: Path,
) -> None:
    shard = _shard(tmp_path, "db", 1, "000000001-000000001.tsm", "000000001-000000001.tombstone")
    remover = _remove_later(shard / "000000001-000000001.tombstone", 0.4)
    record, started = _record(), time.monotonic()
    _await_deletes(tmp_path, 30.0, record, log.get(), CancelToken())
    assert time.monotonic() - started >= 0.3, "it waited for the compaction"
    assert "tombstones_at_snapshot" not in record.extra
    remover.join()
    # a tombstone the server does not compact in: the backup goes ahead, the record says so
    (shard / "000000003-000000001.tombstone").write_bytes(b"x")
    _await_deletes(tmp_path, 0.5, record, log.get(), CancelToken())
    assert record.extra["tombstones_at_snapshot"] == 1
    # a run being cancelled does not wait
    cancel, record = CancelToken(), _record()
    cancel.cancel()
    started = time.monotonic()
    _await_deletes(tmp_path, 60.0, record, log.get(), cancel)
    assert time.monotonic() - started < 3.0
