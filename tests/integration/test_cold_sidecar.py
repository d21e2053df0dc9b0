"""A cold archive checked and restored from the storage dir alone (the catalog lost with the
host), by the record the cold job writes beside it. Real influxd 1.6."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config

COLD = [{"name": "nightly", "mode": "cold", "copy": "direct"}]


def _new_host(tmp_path: Path, server: Sandbox) -> Cli:
    """A config with an empty state_dir (no catalog) and the old storage dir."""
    home = tmp_path / "newhost"
    home.mkdir()
    config = write_config(home, server, jobs=COLD)
    config.write_text(
        config.read_text().replace(str(home / "archives"), str(tmp_path / "archives"))
    )
    return Cli(config)


def _flip_byte(path: Path, at: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_a_cold_archive_is_checked_and_restored_by_its_record_without_the_catalog(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    cli = Cli(write_config(tmp_path, sandbox, jobs=COLD))
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    archive = Path(record["archive"])
    beside: dict[str, Any] = json.loads(Path(record["archive"] + ".json").read_text())
    assert beside["format"] == 1 and beside["status"] == "ok"
    for key in ("id", "job", "mode", "sha256", "bytes", "files", "db_counts"):
        assert beside[key] == record[key], key
    assert record["db_counts"] == {"metrics": 3_000}

    sandbox.write_points("metrics", 500, start=100_000)  # newer than the backup
    host = _new_host(tmp_path, sandbox)
    # verify by path: the sha256 is compared with the record beside it, and the restore test
    # compares point counts with the ones taken at backup time
    done = host("verify", str(archive), "--restore-test", "--json")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    [result] = json.loads(done.stdout)
    assert result["checks"]["sha256"] == "ok"
    assert "1 point counts" in result["checks"]["restore_test"], result["checks"]

    # One flipped byte inside a file's data: refused against the record, nothing touched.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    copy = damaged / archive.name
    copy.write_bytes(archive.read_bytes())
    Path(str(copy) + ".json").write_text(Path(str(archive) + ".json").read_text())
    _flip_byte(copy, copy.stat().st_size // 2)
    refused = host("restore", str(copy), "--yes")
    assert refused.returncode == 1
    assert "does not match the recorded" in refused.stderr, refused.stderr[-2000:]
    assert sandbox.count("metrics") == 3_500, "the live data is untouched"

    restored = host("restore", str(archive), "--yes", "--json")
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert json.loads(restored.stdout)["run_id"] == record["id"]
    assert sandbox.count("metrics") == 3_000


def test_prune_removes_a_cold_archives_record_with_it(tmp_path: Path, sandbox: Sandbox) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 200)
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{**COLD[0], "keep_last": 1}]))
    first = cli.json("backup")
    second = cli.json("backup")  # its prune removes the first
    assert (first["status"], second["status"]) == ("ok", "ok")
    assert not Path(first["archive"]).exists()
    assert not Path(first["archive"] + ".json").exists()
    assert Path(second["archive"] + ".json").exists()
