"""restore --database from a cold archive takes the shards' TSM files from the archive as they
are and lets a throwaway influxd replay only the WAL (restore/cold_files.py), against a real
influxd 1.6: the restored database answers every query as the backed-up one did, points the WAL
overwrote included, and a shard with a delete in its WAL goes through the throwaway whole."""

from __future__ import annotations

import json
import subprocess
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, stopped_with_deletes_pending, write_config


def _snapshot(sandbox: Sandbox, db: str, dest: Path) -> None:
    """The cache into a TSM file: influxd backup snapshots the shard first."""
    subprocess.run(
        [
            sandbox.binary,
            "backup",
            "-portable",
            "-host",
            sandbox.backup_host,
            "-database",
            db,
            str(dest),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _write(sandbox: Sandbox, db: str, lines: str) -> None:
    req = urllib.request.Request(
        f"{sandbox.url}/write?db={db}&precision=s", data=lines.encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


def _rows(sandbox: Sandbox, db: str) -> list[Any]:
    answer = sandbox.query('SELECT * FROM "cpu" GROUP BY *', db=db)["results"][0]
    return sorted(json.dumps(s, sort_keys=True) for s in answer.get("series", []))


def _archived(archive: Path, db: str) -> tuple[list[str], list[str]]:
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    tsm = [n for n in names if n.startswith(f"data/{db}/") and n.endswith(".tsm")]
    wal = [n for n in names if n.startswith(f"wal/{db}/") and n.endswith(".wal")]
    return tsm, wal


def test_tsm_files_come_from_the_archive_and_the_wal_s_points_win(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 4_000)
    _snapshot(sandbox, "metrics", tmp_path / "snap1")
    sandbox.write_points("metrics", 2_000, start=50_000)
    sandbox.write_points("metrics", 900, start=3_000_000)  # a later week: a shard of its own
    _snapshot(sandbox, "metrics", tmp_path / "snap2")  # a second generation
    # left in the WAL: new points, and points of the TSM files written again with new values
    lines = "\n".join(
        f"cpu,host=h{i % 7} value={10_000_000 + i}i {1_577_836_800 + i}" for i in range(0, 4_000, 3)
    )
    _write(sandbox, "metrics", lines)
    sandbox.write_points("metrics", 700, start=90_000)
    sandbox.create_db("deleted")
    sandbox.write_points("deleted", 1_000)
    _snapshot(sandbox, "deleted", tmp_path / "snap3")
    sandbox.write_points("deleted", 300, start=20_000)
    sandbox.query(
        "DELETE FROM \"cpu\" WHERE time < '2020-01-01T00:05:00Z'", db="deleted", method="POST"
    )
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    archive = Path(record["archive"])
    tsm, wal = _archived(archive, "metrics")
    assert len(tsm) >= 2 and wal, "the archive holds TSM files and a WAL for the shard"
    expected = {db: _rows(sandbox, db) for db in ("metrics", "deleted")}

    done = cli("restore", record["id"], "--database", "metrics", "--as", "m2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # the later shard's WAL holds nothing: all of it comes from the archive
    assert result["cold_shards"] == {
        "by_files": 2,
        "whole": {},
        "from_wal": 0,
        "tombstones_not_restored": 0,
    }
    assert _rows(sandbox, "m2") == expected["metrics"]
    assert sandbox.count("m2") == 4_000 + 2_000 + 900 + 700

    done = cli("restore", record["id"], "--database", "deleted", "--as", "d2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cold_shards"]["by_files"] == 0
    [why] = result["cold_shards"]["whole"].values()
    assert "holds a delete" in why or "tombstone" in why
    print(
        "deleted:",
        sandbox.count("deleted"),
        "restored:",
        sandbox.count("d2"),
        result["cold_shards"],
    )


def _archive_of(sandbox: Sandbox, dest: Path) -> Path:
    """A cold archive of a stopped sandbox, made by hand (no record: restore takes a path)."""
    with tarfile.open(dest, "w") as tar:
        for top, path in (("meta", sandbox.meta), ("data", sandbox.data), ("wal", sandbox.wal)):
            tar.add(path, arcname=top)
        tar.add(sandbox.conf, arcname="influxdb.conf")
    return dest


def test_deletes_a_tombstone_holds_stay_deleted(tmp_path: Path, sandbox: Sandbox) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    _snapshot(sandbox, "metrics", tmp_path / "snap1")
    sandbox.write_points("metrics", 3_000, start=10_000)
    _snapshot(sandbox, "metrics", tmp_path / "snap2")
    stopped_with_deletes_pending(sandbox, "metrics")
    archive = _archive_of(sandbox, tmp_path / "by-hand.tar")
    sandbox.start()
    expected = _rows(sandbox, "metrics")  # the live server holds the deletes

    done = cli("restore", str(archive), "--database", "metrics", "--as", "m2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    [why] = result["cold_shards"]["whole"].values()
    assert "tombstone" in why or "holds a delete" in why
    assert result["cold_shards"]["tombstones_not_restored"] == 0
    assert _rows(sandbox, "m2") == expected, "no deleted point is back"


def test_a_database_whose_points_are_all_in_the_wal_says_where_they_came_from(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """README walkthrough: `shards 0 taken from the archive's TSM files, 0 replayed whole`
    beside 5000 points checked: the WAL-only shard was counted nowhere."""
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("fresh")
    sandbox.write_points("fresh", 2_000)  # never snapshotted: in the WAL alone
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    tsm, wal = _archived(Path(record["archive"]), "fresh")
    assert not tsm and wal
    done = cli("restore", record["id"], "--database", "fresh", "--as", "f2")
    assert done.returncode == 0, done.stderr
    assert (
        "  shards   0 taken from the archive's TSM files, 0 replayed whole by a throwaway "
        "influxd, 1 from its WAL alone (no TSM file yet)"
    ) in done.stdout, done.stdout
    assert sandbox.count("f2") == 2_000
