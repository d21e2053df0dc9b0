"""Prune against records that do not tell the truth: a path leaving the storage dir by '..', a
backup dated after now, a chain whose full is gone from the disk (real influxd, real CLI)."""

from __future__ import annotations

import json
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
    assert "outside storage.dir" in done.stdout + done.stderr


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


def test_backups_outside_storage_dir_take_no_rules_place_from_this_configs_own(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Two backups in another storage dir share this catalog (storage.dir changed since, or
    another config naming this state_dir: `-c` through a link found the plain unit's). Before:
    keep_last = 2 kept those two, deleted all three of this config's own, exit 0 (and dropped
    the entries of any whose files it refused). Now they are kept, counted by no rule."""
    cold = {"name": "nightly", "mode": "cold", "copy": "direct"}
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    here = Cli(write_config(tmp_path, sandbox, jobs=[cold]))
    own = [here.json("backup") for _ in range(3)]
    config = write_config(tmp_path, sandbox, jobs=[cold])
    config.write_text(
        config.read_text().replace(str(tmp_path / "archives"), str(tmp_path / "other"))
    )
    other = [Cli(config).json("backup") for _ in range(2)]
    assert [r["status"] for r in own + other] == ["ok"] * 5
    pruning = Cli(write_config(tmp_path, sandbox, jobs=[{**cold, "keep_last": 2}]))
    done = pruning("prune", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [d["run_id"] for d in report["deleted"]] == [own[0]["id"]]
    kept = {k["id"]: k["reasons"] for k in report["kept"]}
    assert set(kept) == {own[1]["id"], own[2]["id"], other[0]["id"], other[1]["id"]}
    assert all("outside storage.dir" in " ".join(kept[r["id"]]) for r in other)
    assert all(Path(r["archive"]).exists() for r in own[1:] + other)
    assert {r.id for r in Catalog(tmp_path / "state").list()} == set(kept)
