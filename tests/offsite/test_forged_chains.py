"""Chains that never reach their full: a manifest in the bucket that is its own parent, two that
name each other, catalog records whose parents loop. Each is one line naming the backup, never a
hang (with the backup lock held and memory growing), and nothing is fetched."""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord
from tests.cli_process import run_cli_process
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import offsite_section

HOT = [{"name": "hotjob", "mode": "hot"}]
Change = Callable[[dict[str, Any]], None]


def plant(ep: Endpoint, src: str, job: str, new_id: str, change: Change) -> None:
    """A copy of backup src's manifest as new_id, changed, as whoever holds the bucket could."""
    c = ep.client()
    key = f"host-a/manifests/{job}/{src}.json.gz"
    raw = json.loads(gzip.decompress(c.get_object(Bucket=ep.bucket, Key=key)["Body"].read()))
    raw["name"] = raw["name"].replace(raw["id"], new_id)  # as the tool names new_id's
    raw["id"] = raw["record"]["id"] = new_id
    change(raw)
    c.put_object(
        Bucket=ep.bucket,
        Key=f"host-a/manifests/{job}/{new_id}.json.gz",
        Body=gzip.compress(json.dumps(raw).encode()),
    )


def increment_of(parent: str) -> Change:
    def change(raw: dict[str, Any]) -> None:
        raw["kind"] = raw["record"]["kind"] = "incremental"
        raw["parent"] = raw["record"]["parent_id"] = parent

    return change


def run(cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    """The command, bounded: a hang fails the test instead of holding the run for ever."""
    return run_cli_process(["--config", str(cli.config), *args], timeout=60)


@pytest.fixture
def hot(tmp_path: Path, sandbox: Sandbox, moto: Endpoint) -> tuple[Cli, str]:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT, extra=offsite_section(moto)))
    return cli, cli.json("backup")["id"]


def test_a_manifest_that_is_its_own_parent_is_refused(
    tmp_path: Path, hot: tuple[Cli, str], moto: Endpoint
) -> None:
    cli, full = hot
    forged = "20200101T000003Z-0003"
    plant(moto, full, "hotjob", forged, increment_of(forged))
    done = run(cli, "restore", forged, "--from", "offsite", "--yes")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"{forged}.json.gz: not a manifest of ours" in done.stderr
    assert "its own parent" in done.stderr
    assert not any(forged in p.name for p in (tmp_path / "archives").iterdir())
    listed = run(cli, "list", "--offsite", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [full]


def test_a_loop_of_two_manifests_is_refused_naming_the_backup(
    tmp_path: Path, hot: tuple[Cli, str], moto: Endpoint
) -> None:
    cli, full = hot
    one, two = "20200101T000001Z-0001", "20200101T000002Z-0002"
    plant(moto, full, "hotjob", one, increment_of(two))
    plant(moto, full, "hotjob", two, increment_of(one))
    done = run(cli, "restore", one, "--from", "offsite", "--yes")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"chain of {one} loops back to {one}" in done.stderr
    assert not any(one in p.name or two in p.name for p in (tmp_path / "archives").iterdir())


def test_a_catalog_whose_parents_loop_hangs_nothing(tmp_path: Path, hot: tuple[Cli, str]) -> None:
    cli, full = hot
    catalog = Catalog(tmp_path / "state")
    base = catalog.get(full)
    assert base is not None and base.chain_id == full
    one, two = "20200101T000001Z-0001", "20200101T000002Z-0002"
    for this, parent in ((one, two), (two, one)):
        record = RunRecord.from_dict(base.to_dict())
        record.id, record.kind, record.parent_id = this, "incremental", parent
        catalog.save(record)
    for args in (("list",), ("status",), ("prune", "--dry-run"), ("verify", "--all")):
        assert run(cli, *args).returncode in (0, 1), args
    verified = run(cli, "verify", one)
    assert verified.returncode == 1
    assert f"chain of {one} loops back to {one}" in verified.stdout
    restored = run(cli, "restore", one, "--yes")
    assert restored.returncode == 1 and restored.stderr.count("\n") == 1, restored.stderr
    assert f"chain of {one} loops back to {one}" in restored.stderr
