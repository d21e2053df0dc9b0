"""A 1.x portable backup that holds tombstones (deletes influxd had not compacted in when it was
taken) restores without the deleted points (restore/deletes.py), against a real influxd 1.6.

The backup is made as `influxd backup -portable` makes one in the second after a DELETE: the
tool's own backup, then the shard's tar packed again from the server's files once the delete
has written its tombstone (the server stopped before it compacts it in). The test first shows
that `influxd restore` alone brings those points back, then that ours does not: the whole
server, one database, and a --target copy.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, started, stopped_with_deletes_pending, write_config


def _rows(server: Sandbox, db: str) -> list[str]:
    answer = server.query('SELECT * FROM "cpu" GROUP BY *', db=db)["results"][0]
    return sorted(json.dumps(s, sort_keys=True) for s in answer.get("series", []))


def _with_tombstones(server: Sandbox, dest: Path) -> Path:
    """The tool's backup of `metrics`, its shard tars packed again as the tool packs them once
    deletes are pending (TSM files and their tombstones). Leaves the server running, holding
    the deletes."""
    tool = [server.binary, "backup", "-portable", "-host", server.backup_host]
    subprocess.run(
        [*tool, "-db", "metrics", str(dest)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    stopped_with_deletes_pending(server, "metrics")
    manifest_path = next(dest.glob("*.manifest"))
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        shard = server.data / entry["database"] / entry["policy"] / str(entry["shardID"])
        tar_path = dest / entry["fileName"]
        tar_path.unlink()
        with tarfile.open(tar_path, "w:gz") as tar:
            for path in sorted(shard.iterdir()):
                if path.suffix in (".tsm", ".tombstone"):
                    tar.add(
                        path, arcname=f"metrics/{entry['policy']}/{entry['shardID']}/{path.name}"
                    )
        entry["size"] = len(gzip.decompress(tar_path.read_bytes()))  # the unpacked tar
    manifest_path.write_text(json.dumps(manifest))
    server.start()
    return dest


@pytest.fixture
def deleted(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, list[str]]:
    """A backup holding tombstones, and the rows the server holds (with the deletes)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    sandbox.write_points("metrics", 1_500, start=900_000)  # a second shard (a later week)
    backup = _with_tombstones(sandbox, tmp_path / "backup")
    expected = _rows(sandbox, "metrics")
    assert expected, "the deletes left points"
    return backup, expected


def _tars_hold_tombstones(backup: Path) -> bool:
    for tar_path in backup.glob("*.tar.gz"):
        with tarfile.open(tar_path) as tar:
            if any(name.endswith(".tombstone") for name in tar.getnames()):
                return True
    return False


def test_the_tool_alone_brings_deleted_points_back(
    tmp_path: Path, influxd_path: str, deleted: tuple[Path, list[str]]
) -> None:
    """What this module guards against: the backup is what the tool would have made."""
    backup, expected = deleted
    assert _tars_hold_tombstones(backup)
    with started(Sandbox(tmp_path / "bare", binary=influxd_path)) as bare:
        subprocess.run(
            [bare.binary, "restore", "-portable", "-host", bare.backup_host, str(backup)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        back: list[str] = []
        for _ in range(100):  # the restored shards open in the background
            back = _rows(bare, "metrics")
            if back:
                break
            time.sleep(0.1)
    assert back != expected
    assert len(json.dumps(back)) > len(json.dumps(expected)), "deleted points are back"


def _deletes_of(result: dict[str, Any]) -> dict[str, Any]:
    deletes = result["deletes"]
    assert deletes is not None, result
    assert deletes["tombstones"] >= 1
    assert deletes["applied"] == deletes["tombstones"] and deletes["left"] == 0, deletes
    return deletes  # type: ignore[no-any-return]


def test_a_whole_server_restore_applies_the_backup_s_deletes(
    tmp_path: Path, sandbox: Sandbox, deleted: tuple[Path, list[str]]
) -> None:
    backup, expected = deleted
    cli = Cli(write_config(tmp_path, sandbox))
    done = cli("restore", str(backup), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    _deletes_of(json.loads(done.stdout))
    assert _rows(sandbox, "metrics") == expected, "no deleted point is back"
    # the backup itself is left as it was
    assert _tars_hold_tombstones(backup)
    scratch = [p.name for p in (tmp_path / "archives").iterdir() if "restore" in p.name]
    assert not [name for name in scratch if not name.startswith(".")], scratch


def test_one_database_and_a_target_copy_apply_them_too(
    tmp_path: Path, sandbox: Sandbox, deleted: tuple[Path, list[str]]
) -> None:
    backup, expected = deleted
    cli = Cli(write_config(tmp_path, sandbox))
    done = cli("restore", str(backup), "--database", "metrics", "--as", "m2", "--json")
    assert done.returncode == 0, done.stderr
    _deletes_of(json.loads(done.stdout))
    assert _rows(sandbox, "m2") == expected

    target = tmp_path / "copy"
    done = cli("restore", str(backup), "--target", str(target), "--start", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    _deletes_of(result)
    copy = Sandbox(target, binary=sandbox.binary)
    copy.http_port = int(result["url"].rsplit(":", 1)[1])
    try:
        assert _rows(copy, "metrics") == expected
    finally:
        subprocess.run(["kill", str(result["pid"])], check=False)

    done = cli("restore", str(backup), "--database", "metrics", "--as", "m3")
    assert done.returncode == 0, done.stderr
    assert "applied before the restore" in done.stdout, done.stdout
