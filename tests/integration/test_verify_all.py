"""verify_all: the least recently checked backup first, and a check cut short goes on where it
stopped (the daemon's [verify] yields to a backup that falls due). Real influxd, real archives."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from influx_backupd.verify.check import verify_all
from tests.conftest import Cli, write_config


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
