"""A 1.x hot chain restored at file speed (restore/merge.py), exact or not at all, against a
real influxd 1.6: deletes between links do not come back, newer points are all there once, and
a chain that cannot be merged exactly takes the SQL merge and says why."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd import counts, influxql
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.sidecar import sidecar_of
from tests.conftest import Cli, log_events, write_config
from tests.integration.test_restore_target import serving

HOT = [{"name": "hotjob", "mode": "hot"}]


def _count(url: str, db: str, where: str = "") -> int:
    q = f'SELECT count("value") FROM "cpu"{" WHERE " + where if where else ""}'
    rows = influxql.values(influxql.query(url, q, db, timeout=120))
    return int(rows[0][1]) if rows else 0


def _by_measurement(url: str) -> dict[str, int]:
    found = {}
    for m in ("cpu", "mem"):
        q = f'SELECT count("value") FROM "{m}"'
        rows = influxql.values(influxql.query(url, q, "metrics", timeout=120))
        found[m] = int(rows[0][1]) if rows else 0
    return found


def _figures(url: str) -> dict[str, int]:
    """Points per database and, in metrics, per host h0..h6: what a merge must get exactly."""
    found = {db: _count(url, db) for db in counts.databases(url) if db != "_internal"}
    if "metrics" in found:
        for host in range(7):
            found[f"metrics/h{host}"] = _count(url, "metrics", f"host = 'h{host}'")
    return found


def _settled(sandbox: Sandbox, timeout: float = 60.0) -> None:
    """Wait until no tombstone is left in the live shards: influxd applies a delete by
    rewriting the files it touched, a second or so later (then a backup holds no tombstone)."""
    deadline = time.monotonic() + timeout
    while any(sandbox.data.rglob("*.tombstone")):
        assert time.monotonic() < deadline, "tombstones never applied"
        time.sleep(0.2)


def _live(tmp_path: Path, influxd_path: str, **data: str) -> Iterator[Sandbox]:
    """A live server with these [data] settings."""
    server = Sandbox(tmp_path / "server", binary=influxd_path, extra_data=data)
    server.write_config()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def compacting(tmp_path: Path, influxd_path: str) -> Iterator[Sandbox]:
    """A live server that flushes its cache after a second and compacts a cold shard fully two
    seconds later: a compaction between two links, for sure."""
    settings = {
        "cache-snapshot-write-cold-duration": '"1s"',
        "compact-full-write-cold-duration": '"2s"',
    }
    yield from _live(tmp_path, influxd_path, **settings)


@pytest.fixture
def flushing(tmp_path: Path, influxd_path: str) -> Iterator[Sandbox]:
    """A live server that flushes its cache into a new TSM file a second after a write."""
    yield from _live(tmp_path, influxd_path, **{"cache-snapshot-write-cold-duration": '"1s"'})


def test_deletes_and_a_dropped_database_between_links_do_not_come_back(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    sandbox.create_db("metrics")
    sandbox.create_db("other")
    sandbox.write_points("metrics", 7_000)
    sandbox.write_points("other", 1_000)
    assert cli.json("backup")["kind"] == "full"
    sandbox.query("DELETE FROM cpu WHERE host = 'h1'", db="metrics", method="POST")
    sandbox.query("DROP SERIES FROM cpu WHERE host = 'h2'", db="metrics", method="POST")
    sandbox.query('DROP DATABASE "other"', method="POST")
    sandbox.write_points("metrics", 700, start=200_000)  # every host again, h1 and h2 too
    _settled(sandbox)
    expected = _figures(sandbox.url)
    assert expected["metrics/h1"] == 100 and expected["metrics/h2"] == 100, expected
    increment = cli.json("backup")
    assert increment["kind"] == "incremental" and increment["status"] == "ok"
    assert "shard_listing" in increment["extra"], "the hot job lists the live shards"
    assert sidecar_of(Path(increment["archive"])).exists()
    assert (
        "shard_listing" in json.loads(sidecar_of(Path(increment["archive"])).read_text())["extra"]
    ), "the listing travels with the backup"
    sandbox.write_points("metrics", 300, start=400_000)  # newer than the backup

    done = cli("restore", increment["id"], "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["merge"] == "files", result.get("merge_reason")
    assert [e["path"] for e in log_events(done.stderr, "restore.chain_merge")] == ["files"]
    assert log_events(done.stderr, "restore.copied") == [], "no SELECT INTO"
    assert _figures(sandbox.url) == expected, "deleted points and the dropped db stay gone"
    # a whole-server restore of a hot backup ends the chains too: the next run is a full
    after = cli("backup", "--json")
    assert after.returncode == 0, after.stderr[-3000:]
    assert json.loads(after.stdout)["kind"] == "full"
    [plan] = log_events(after.stderr, "hot.plan")
    assert plan["why"].startswith(f"the server was restored from {increment['id']} at "), plan

    # the database dropped between the links is not in the backup
    done = cli("restore", increment["id"], "--database", "other", "--as", "x")
    assert done.returncode == 2, done.stderr  # a database it does not hold: a usage mistake
    assert "--database other: not in" in done.stderr and "holds: metrics" in done.stderr

    # the same chain, one database of it, into the live server under another name
    done = cli("restore", increment["id"], "--database", "metrics", "--as", "copy", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads(done.stdout)
    assert one["merge"] == "files", one.get("merge_reason")
    assert _count(sandbox.url, "copy") == expected["metrics"]
    assert _count(sandbox.url, "copy", "host = 'h1'") == 100

    # Without the listing (as from a remote backup_host) the chain goes by SELECT INTO, which
    # only adds: it brings back deleted points (said in the README), but the database dropped
    # between the links is dropped again, by the newest link's meta.
    _without_listing(tmp_path, increment)
    target = tmp_path / "by-sql"
    done = cli("restore", increment["id"], "--target", str(target), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["merge"] == "sql"
    assert [e["databases"] for e in log_events(done.stderr, "restore.dropped_since_full")] == [
        ["other"]
    ]
    with serving(target / "influxdb.conf") as url:
        assert sorted(db for db in counts.databases(url) if db != "_internal") == ["metrics"]
        assert _count(url, "metrics") >= expected["metrics"]


def _without_listing(tmp_path: Path, record: dict[str, Any]) -> None:
    """The increment as a remote backup_host's would be: no listing in its records."""
    catalog = Catalog(tmp_path / "state")
    stored = catalog.get(record["id"])
    assert stored is not None
    stored.extra.pop("shard_listing")
    catalog.save(stored)
    beside = sidecar_of(Path(record["archive"]))
    data = json.loads(beside.read_text())
    data["extra"].pop("shard_listing")
    beside.write_text(json.dumps(data))


def test_a_compaction_between_links_merges_with_a_listing_and_falls_back_without(
    tmp_path: Path, compacting: Sandbox
) -> None:
    sandbox = compacting
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    full = cli.json("backup")
    assert full["kind"] == "full"
    sandbox.write_points("metrics", 2_000, start=100_000)
    # the new points flushed, then the shard compacted fully: a file of a later generation and
    # a sequence above 1 replaces the full's file
    deadline = time.monotonic() + 120
    shard_files: list[str] = []
    while True:
        shard_files = sorted(p.name for p in sandbox.data.glob("metrics/*/*/*.tsm"))
        if len(shard_files) == 1 and not shard_files[0].startswith("000000001-"):
            break
        assert time.monotonic() < deadline, f"never compacted: {shard_files}"
        time.sleep(0.2)
    assert not shard_files[0].endswith("-000000001.tsm"), shard_files
    increment = cli.json("backup")
    assert increment["kind"] == "incremental"
    expected = {"metrics": 7_000}

    target = tmp_path / "merged"
    done = cli("restore", increment["id"], "--target", str(target), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["merge"] == "files"
    with serving(target / "influxdb.conf") as url:
        assert {"metrics": _count(url, "metrics")} == expected

    _without_listing(tmp_path, increment)
    target = tmp_path / "fallback"
    done = cli("restore", increment["id"], "--target", str(target), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["merge"] == "sql"
    link = Path(increment["archive"]).name
    assert result["merge_reason"].startswith(f"{link}: shard "), result["merge_reason"]
    assert "no listing of the live shard files" in result["merge_reason"]
    [event] = log_events(done.stderr, "restore.chain_merge")
    assert event["path"] == "sql" and event["reason"] == result["merge_reason"]
    assert log_events(done.stderr, "restore.copied"), "the SQL merge ran"
    with serving(target / "influxdb.conf") as url:
        assert {"metrics": _count(url, "metrics")} == expected


def _tsm_files(sandbox: Sandbox, count: int) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        found = sorted(p.name for p in sandbox.data.glob("metrics/*/*/*.tsm"))
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"never {count} TSM files: {found}"
        time.sleep(0.2)


def test_a_delete_in_one_of_a_shards_files_stays_deleted(tmp_path: Path, flushing: Sandbox) -> None:
    """Full: one shard of two files (cpu, then mem). A delete in mem rewrites the shard; the
    merge takes the increment's files for it, and the restored shard the points as they were."""
    sandbox = flushing
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    _tsm_files(sandbox, 1)
    sandbox.write_points("metrics", 1_000, measurement="mem")
    first, second = _tsm_files(sandbox, 2)
    full = cli.json("backup")
    [shard] = full["extra"]["shard_listing"]["shards"].values()
    assert sorted(shard) == [first, second], "the full holds both files"
    sandbox.query("DELETE FROM mem WHERE host = 'h1'", db="metrics", method="POST")
    _settled(sandbox)
    deadline = time.monotonic() + 60
    while second in _tsm_files(sandbox, 1):
        assert time.monotonic() < deadline, "the delete never rewrote the file"
        time.sleep(0.2)
    expected = _by_measurement(sandbox.url)
    assert expected["mem"] < 1_000 and expected["cpu"] == 1_000, expected
    increment = cli.json("backup")
    assert increment["kind"] == "incremental"

    target = tmp_path / "merged"
    done = cli("restore", increment["id"], "--target", str(target), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["merge"] == "files"
    [event] = log_events(done.stderr, "restore.chain_merge")
    assert event["shards"] == 1 and event["shards_reused"] + event["shards_packed"] >= 1, event
    with serving(target / "influxdb.conf") as url:
        assert _by_measurement(url) == expected


COLD_AND_HOT = [{"name": "cold", "mode": "cold", "copy": "direct"}, {"name": "hot3", "mode": "hot"}]


def _backup(cli: Cli, job: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A backup's record and its hot.plan event (the kind and why)."""
    done = cli("backup", "--job", job, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    plans = log_events(done.stderr, "hot.plan")
    return json.loads(done.stdout), plans[0] if plans else {}


def _in_tsm(sandbox: Sandbox, db: str) -> None:
    """Until the database's points are in a TSM file (the cache snapshot after a second),
    then dated an hour back, as a server's settled files are: well before any later -since,
    which reaches back plan.SINCE_MARGIN_S before its link's anchor (TSM files are immutable:
    influxd never reads their times)."""
    deadline = time.monotonic() + 60
    while not any(sandbox.data.glob(f"{db}/*/*/*.tsm")):
        assert time.monotonic() < deadline, "never snapshotted to TSM"
        time.sleep(0.2)
    time.sleep(0.5)
    settled = time.time() - 3600
    for tsm in sandbox.data.glob(f"{db}/*/*/*.tsm"):
        os.utime(tsm, (settled, settled))


def _restore_served(cli: Cli, tmp_path: Path, backup: str, name: str) -> int:
    target = tmp_path / name
    done = cli("restore", backup, "--target", str(target), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    with serving(target / "influxdb.conf") as url:
        return _count(url, "db9")


def test_a_whole_server_restore_ends_the_hot_chains_and_loses_no_point(
    tmp_path: Path, flushing: Sandbox
) -> None:
    """The audit's repro: a cold backup C, the database dropped and made again, a hot full;
    `restore C --yes` brings C's TSM files back with their old times, which the next
    increment's -since would leave out (its shard new to the chain, or its id reused). The
    restore ends every hot chain (a), and without its mark in the catalog the live files dated
    before -since that the chain never saw make the run a full (c): either way a restore of
    the newest backup serves every point the live server had."""
    sandbox = flushing
    cli = Cli(write_config(tmp_path, sandbox, jobs=COLD_AND_HOT))
    sandbox.create_db("db9")
    sandbox.write_points("db9", 5_000)
    _in_tsm(sandbox, "db9")
    cold = cli.json("backup", "--job", "cold")
    assert cold["status"] == "ok", cold

    def diverge_and_restore_cold() -> dict[str, Any]:
        sandbox.query('DROP DATABASE "db9"', method="POST")
        sandbox.create_db("db9")
        sandbox.write_points("db9", 200)
        hot, _ = _backup(cli, "hot3")  # the first a full, the second an increment on a chain
        assert hot["status"] == "ok", hot
        done = cli("restore", cold["id"], "--yes")
        assert done.returncode == 0, done.stderr[-3000:]
        assert _count(sandbox.url, "db9") == 5_000
        return hot

    # (a) the restore's mark: the next hot run is a full, and says why
    assert diverge_and_restore_cold()["kind"] == "full"
    sandbox.write_points("db9", 1_000, start=10_000)
    live = _count(sandbox.url, "db9")
    assert live == 6_000
    after, plan = _backup(cli, "hot3")
    assert after["kind"] == "full", plan
    assert plan["why"].startswith(f"the server was restored from {cold['id']} at "), plan
    assert plan["why"].endswith(": a new chain"), plan
    sandbox.write_points("db9", 500, start=20_000)
    increment, plan = _backup(cli, "hot3")
    assert increment["kind"] == "incremental" and increment["parent_id"] == after["id"], plan
    assert _restore_served(cli, tmp_path, increment["id"], "by-mark") == 6_500

    # (c) without the mark (a restore the catalog never heard of): the listing tells
    diverge_and_restore_cold()
    with closing(sqlite3.connect(tmp_path / "state" / "catalog.db")) as conn, conn:
        conn.execute("DELETE FROM chain_ends")
    sandbox.write_points("db9", 1_000, start=10_000)
    after, plan = _backup(cli, "hot3")
    assert after["kind"] == "full", plan
    assert "before -since" in plan["why"] and "an increment would leave it out" in plan["why"]
    assert _restore_served(cli, tmp_path, after["id"], "by-listing") == 6_000

    # (b) neither (the last link without a listing, as a remote backup_host's): the increment
    # leaves the restored file out, and what restores or verifies it says so
    last = diverge_and_restore_cold()
    with closing(sqlite3.connect(tmp_path / "state" / "catalog.db")) as conn, conn:
        conn.execute("DELETE FROM chain_ends")
    stored = Catalog(tmp_path / "state").get(last["id"])
    assert stored is not None
    stored.extra.pop("shard_listing")
    Catalog(tmp_path / "state").save(stored)
    sandbox.write_points("db9", 1_000, start=10_000)
    blind, plan = _backup(cli, "hot3")
    assert blind["kind"] == "incremental", plan
    checked = cli("verify", blind["id"], "--deep", "--restore-test", "--json")
    assert checked.returncode == 1, checked.stdout + checked.stderr[-2000:]
    [result] = json.loads(checked.stdout)
    assert any(
        "the chain does not hold every point" in e and "is live but in no link" in e
        for e in result["errors"]
    ), result["errors"]
    done = cli("restore", blind["id"], "--target", str(tmp_path / "blind"), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    merged = json.loads(done.stdout)
    assert merged["merge"] == "sql" and "is live but in no link" in merged["merge_reason"]
