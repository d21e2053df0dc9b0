"""A finished run's follow-up is owed until it completes (a real SQLite catalog in tmp_path)."""

from __future__ import annotations

import time
from pathlib import Path

from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord, new_run_id


def _run(catalog: Catalog, status: str) -> RunRecord:
    record = RunRecord(id=new_run_id(), job="nightly", mode="cold", started_at=time.time())
    catalog.save(record)
    if status != "running":
        record.status = status
        record.finished_at = time.time()
        catalog.save_finished(record)
    return record


def test_a_finished_run_is_owed_its_follow_up_until_it_is_done(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    ok, failed = _run(catalog, "ok"), _run(catalog, "failed")
    running = _run(catalog, "running")
    assert [r.id for r in catalog.owed()] == [ok.id, failed.id], "oldest first; never a running one"
    catalog.followed_up(ok.id)
    assert [r.id for r in catalog.owed()] == [failed.id]
    catalog.delete(failed.id)  # pruned before anyone followed it up
    assert catalog.owed() == []
    running.status, running.finished_at = "interrupted", time.time()
    catalog.save_finished(running)  # recovery saves a dead run: owed like any other
    assert [r.id for r in catalog.owed()] == [running.id]


def test_a_record_saved_again_after_its_follow_up_is_not_owed_again(tmp_path: Path) -> None:
    """verify saves the record (its verify_status) with save(), not save_finished()."""
    catalog = Catalog(tmp_path)
    record = _run(catalog, "ok")
    catalog.followed_up(record.id)
    record.verify_status = "ok"
    catalog.save(record)
    assert catalog.owed() == []


def test_a_check_that_could_not_be_made_leaves_the_last_verdict(tmp_path: Path) -> None:
    """Before: an "error" (influxd would not start even on an empty dir) overwrote "failed",
    and a backup known bad counted as good again for retention."""
    from influx_backupd.verify.check import save_result
    from influx_backupd.verify.result import VerifyResult

    catalog = Catalog(tmp_path)
    record = _run(catalog, "ok")
    failed = VerifyResult(archive="a", run_id=record.id)
    failed.fail("restore_test", "restore test: 10 points restored, 20 counted")
    save_result(catalog, record, failed)
    stored = catalog.get(record.id)
    assert stored is not None and stored.failed_check
    not_made = VerifyResult(archive="a", run_id=record.id)
    not_made.cannot("restore_test", "restore test not run: influxd does not start")
    save_result(catalog, stored, not_made)
    again = catalog.get(record.id)
    assert again is not None and again.failed_check and again.verify_detail == stored.verify_detail
