"""Prune against records that do not tell the truth: a path leaving the storage dir by '..', a
backup dated after now, a chain whose full is gone from the disk (real influxd, real CLI)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord
from tests.conftest import Cli, write_config

HOT = {"name": "hotjob", "mode": "hot"}


def _links(cli: Cli, sandbox: Sandbox, n: int, first: int = 0) -> list[dict[str, Any]]:
    sandbox.create_db("metrics")
    links = []
    for i in range(first, first + n):
        sandbox.write_points("metrics", 300, start=i * 100_000)
        record = cli.json("backup")
        assert record["status"] == "ok", record["error"]
        links.append(record)
    return links


def test_a_record_naming_dir_dotdot_never_gets_the_storage_dir_removed(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: prune said "cleaned …/hotjob-ID/..", exit 0, and the storage dir was empty."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=[HOT]))
    links = _links(cli, sandbox, 2)
    bad = RunRecord("20200101T000000Z-dead", "hotjob", "hot", status="failed")
    bad.started_at, bad.finished_at = 1577836800.0, 1577836801.0
    bad.archive = links[1]["archive"] + "/.."
    Catalog(tmp_path / "state").save(bad)
    done = cli("prune")
    assert all(Path(r["archive"]).exists() for r in links), done.stdout
    assert "not inside storage.dir" in done.stdout + done.stderr


def test_a_backup_dated_after_now_never_has_the_newest_one_pruned(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A full taken while the clock was a year ahead. Before: with keep_last 1 it ranked
    newest, and the follow-up prune deleted each new backup right after it was taken."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{**HOT, "keep_last": 1}]))
    first, _increment = _links(cli, sandbox, 2)
    catalog = Catalog(tmp_path / "state")
    ahead = catalog.get(first["id"])
    assert ahead is not None
    ahead.started_at += 365 * 86400
    assert ahead.finished_at is not None
    ahead.finished_at += 365 * 86400
    catalog.save(ahead)
    sandbox.write_points("metrics", 300, start=500_000)
    new = cli.json("backup")
    assert new["status"] == "ok" and Path(new["archive"]).exists(), "pruned once taken"
    done = cli("prune", "--json")
    assert Path(new["archive"]).exists(), done.stdout
    assert new["id"] in {r.id for r in catalog.list()}


def test_a_chain_whose_full_is_gone_never_costs_a_restorable_backup_its_place(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Full A; then a chain B1 (full), B2, B3 whose B1 is lost from the disk. Before: keep_last 1
    kept B3, B2 and the missing B1 ("chain kept with") and deleted A, the one that restores."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{**HOT, "full_every": "1s"}]))
    (a,) = _links(cli, sandbox, 1)
    time.sleep(1.2)
    chain = _links(cli, sandbox, 1, first=1)
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{**HOT, "full_every": "7d"}]))
    chain += _links(cli, sandbox, 2, first=2)
    assert [r["kind"] for r in chain] == ["full", "incremental", "incremental"]
    shutil.rmtree(chain[0]["archive"])
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{**HOT, "full_every": "7d", "keep_last": 1}]))
    done = cli("prune")
    assert done.returncode in (0, 1), done.stderr
    assert Path(a["archive"]).exists(), done.stdout
