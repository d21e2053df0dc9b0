"""verify_all: the least recently checked backup first, and a check cut short goes on where it
stopped (the daemon's [verify] yields to a backup that falls due). Real influxd, real archives."""

from __future__ import annotations

from pathlib import Path

import pytest

from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord, new_run_id
from influx_backupd.verify.check import verify_all
from tests.conftest import Cli, catalog_reads, write_config


def test_the_least_recently_checked_goes_first_and_a_cut_short_check_resumes_there(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    path = write_config(tmp_path, sandbox)
    cli = Cli(path)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    ids = [cli.json("backup")["id"] for _ in range(3)]
    catalog = Catalog(tmp_path / "state")
    checked_at = {ids[0]: 300.0, ids[1]: 100.0}  # ids[2] never checked since it was taken
    for run_id, at in checked_at.items():
        record = catalog.get(run_id)
        assert record is not None
        record.verified_at, record.verify_status = at, "ok"
        catalog.save(record)
    config = load(path)

    asked: list[int] = []

    def stop_after_one() -> bool:
        asked.append(1)
        return len(asked) > 1  # asked before each backup

    first = verify_all(config, catalog, stop=stop_after_one)
    assert [r.run_id for r in first] == [ids[1]], "the least recently checked, alone"
    rest = verify_all(config, catalog)
    assert [r.run_id for r in rest] == [ids[0], ids[2], ids[1]]
    assert all(r.ok for r in first + rest)


def test_verify_all_reads_the_catalog_once_however_long_a_hot_chain_is(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each increment's chain was looked up by reading (and parsing) the whole catalog again:
    verify --all of a 270-link chain took 65 s where 70 links took 5 s (the scale audit).
    Counted here as catalog reads, which must not grow with the chain."""
    config = load(write_config(tmp_path, sandbox, jobs=[{"name": "hotjob", "mode": "hot"}]))
    catalog = Catalog(config.state_dir)
    reads = catalog_reads(monkeypatch)
    per_length = {}
    for links in (3, 12):
        parent: RunRecord | None = None
        for n in range(links):
            run_id = new_run_id()
            archive = tmp_path / "archives" / f"hotjob-{run_id}"
            archive.mkdir(parents=True)
            record = RunRecord(id=run_id, job="hotjob", mode="hot", status="ok")
            record.kind = "full" if parent is None else "incremental"
            record.chain_id = run_id if parent is None else parent.chain_id
            record.parent_id = parent.id if parent else None
            record.archive, record.started_at = str(archive), 1_700_000_000.0 + n
            catalog.save(record)
            parent = record
        reads.clear()
        results = verify_all(config, catalog, job="hotjob")
        assert len(results) >= links
        assert not any(
            "chain" in r.checks and "not in the catalog" in r.checks["chain"] for r in results
        )
        per_length[links] = len(reads)
    assert per_length[12] == per_length[3], per_length
