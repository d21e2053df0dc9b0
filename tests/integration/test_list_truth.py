"""`list` says what is there: an ok backup whose archive is gone is `missing`, and a `running`
run whose process is gone `died` (before: ok and running, until some later command looked)."""

from __future__ import annotations

import fcntl
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord, new_run_id
from tests.conftest import Cli, write_config


def _row(cli: Cli, run_id: str) -> str:
    [row] = [line for line in cli("list").stdout.splitlines() if line.startswith(run_id + " ")]
    return row


def test_list_says_missing_and_died(tmp_path: Path, sandbox: Sandbox) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    kept, gone = cli.json("backup"), cli.json("backup")
    Path(gone["archive"]).unlink()
    assert _row(cli, kept["id"]).split()[3] == "ok"
    assert _row(cli, gone["id"]).split()[3] == "missing"
    assert "(gone from disk)" in _row(cli, gone["id"])
    listed = {r["id"]: r for r in cli.json("list")}
    assert listed[gone["id"]]["archive_missing"] is True
    assert listed[gone["id"]]["status"] == "ok", "the catalog's word is kept in --json"
    assert listed[kept["id"]]["archive_missing"] is False

    # a run whose process was SIGKILLed: its record still says running
    dead = RunRecord(new_run_id(), "nightly", "cold", status="running", started_at=1.7e9)
    Catalog(tmp_path / "state").save(dead)
    assert _row(cli, dead.id).split()[3] == "died"
    assert f"{dead.id}: its process is gone" in cli("list").stdout
    assert {r["id"]: r for r in cli.json("list")}[dead.id]["process_gone"] is True
    # while a live process holds the lock, a running run is running
    with open(tmp_path / "state" / "backup.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert _row(cli, dead.id).split()[3] == "running"
