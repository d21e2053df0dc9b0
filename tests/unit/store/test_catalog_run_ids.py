"""A new run's id is one no run has, in the catalog or in the storage dir's names.

Two runs in one second drew the same id once in 65,536 (a fast failure, then its fallback;
seconds repeated after the clock stepped back): the second run's record replaced the first's
(INSERT OR REPLACE) and its archive was renamed over the first's."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from influx_backupd.core import log
from influx_backupd.store import layout
from influx_backupd.store.catalog import Catalog, CatalogDamaged, ReadAgainOnChange
from influx_backupd.store.record import RunRecord
from tests.conftest import catalog_reads, raised_promptly

AT = datetime(2026, 12, 4, 3, 0, tzinfo=UTC).timestamp()
SAME_SECOND = "20261204T030000Z-3f9a"


def _ok(run_id: str, job: str) -> RunRecord:
    record = RunRecord(id=run_id, job=job, mode="cold", status="ok", started_at=AT)
    record.archive = f"/backups/{job}-{run_id}.tar"
    return record


def test_a_run_drawn_with_the_id_of_one_in_the_catalog_gets_another(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    catalog.save(_ok(SAME_SECOND, "nightly"))
    new = RunRecord(id=SAME_SECOND, job="fallback", mode="cold", started_at=AT)

    catalog.start_run(new, lambda run_id: False)

    assert new.id != SAME_SECOND and new.id.startswith("20261204T030000Z-")
    first = catalog.get(SAME_SECOND)
    assert first is not None and first.job == "nightly" and first.status == "ok"
    saved = catalog.get(new.id)
    assert saved is not None and saved.job == "fallback" and saved.status == "running"


def test_a_run_drawn_with_the_id_of_files_in_the_storage_dir_gets_another(tmp_path: Path) -> None:
    """A catalog lost or set aside knows nothing of the archives there: their names count too."""
    storage = tmp_path / "archives"
    storage.mkdir()
    for name in (f"nightly-{SAME_SECOND}.tar", f"nightly-{SAME_SECOND}.tar.json"):
        (storage / name).write_bytes(b"a backup of before")
    catalog = Catalog(tmp_path / "state")
    new = RunRecord(id=SAME_SECOND, job="nightly", mode="cold", started_at=AT)

    catalog.start_run(new, lambda run_id: layout.id_in_use(storage, "nightly", run_id))

    assert new.id != SAME_SECOND
    assert not layout.id_in_use(storage, "nightly", new.id)
    assert layout.id_in_use(storage, "nightly", SAME_SECOND)
    assert not layout.id_in_use(storage, "other", SAME_SECOND), "another job's names are apart"
    assert not layout.id_in_use(tmp_path / "none", "nightly", SAME_SECOND), "no storage dir yet"


def test_a_run_finished_after_the_clock_stepped_back_never_ends_before_it_began(
    tmp_path: Path,
) -> None:
    """A step of an hour back during a cold run stored finished_at an hour before started_at:
    `backup -v` said `took -3598s` and hooks were given both."""
    catalog = Catalog(tmp_path)
    record = RunRecord(id=SAME_SECOND, job="nightly", mode="cold", started_at=time.time() + 3600)
    catalog.start_run(record, lambda run_id: False)
    record.status = "ok"

    catalog.finish(record, log.get())

    saved = catalog.get(record.id)
    assert saved is not None and saved.finished_at is not None
    assert saved.finished_at >= saved.started_at


def test_the_daemons_metrics_read_the_catalog_again_only_once_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every 30 s the daemon parsed every record for its metrics (0.37 s at 5,000, idle)."""
    catalog = Catalog(tmp_path)
    catalog.save(_ok(SAME_SECOND, "nightly"))
    reads = catalog_reads(monkeypatch)
    cache = ReadAgainOnChange(max_age_s=3600)
    assert [r.id for r in cache.read(catalog)[0]] == [SAME_SECOND]
    assert [r.id for r in cache.read(catalog)[0]] == [SAME_SECOND]
    assert len(reads) == 1, "unchanged: not read again"

    changed = _ok(SAME_SECOND, "nightly")
    changed.verify_status = "failed"
    catalog.save(changed)
    assert cache.read(catalog)[0][0].verify_status == "failed"
    assert len(reads) == 2

    cache.max_age_s = 0  # however long a coarse mtime could hide a change: read again
    cache.read(catalog)
    assert len(reads) == 3


@pytest.mark.parametrize("planted", ["a dangling link", "a dir", "a FIFO"])
def test_the_metrics_cache_says_a_catalog_that_is_no_file_damaged_and_never_blocks(
    tmp_path: Path, planted: str
) -> None:
    """It opened the path itself: a FIFO there blocked the daemon's loop, and a link or a dir
    gave empty metrics (no last success, every count 0) with nothing said (the review)."""
    catalog = Catalog(tmp_path)
    catalog.save(_ok(SAME_SECOND, "nightly"))
    cache = ReadAgainOnChange()
    assert len(cache.read(catalog)[0]) == 1
    catalog.path.unlink()
    if planted == "a dangling link":
        catalog.path.symlink_to(tmp_path / "gone")
    elif planted == "a dir":
        catalog.path.mkdir()
    else:
        os.mkfifo(catalog.path)

    raised = raised_promptly(lambda: cache.read(catalog))
    assert isinstance(raised, CatalogDamaged), raised
