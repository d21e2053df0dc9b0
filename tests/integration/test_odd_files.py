"""A FIFO, or a link to /dev/zero, where the tool keeps one of its own files (found by an audit:
an unbounded read of a state file, a record or a manifest blocked the command for ever on a
FIFO, or filled its memory from /dev/zero). Every command ends and says what it found in a
line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config

HOT = [{"name": "hotjob", "mode": "hot"}]
# the commands an operator runs first, each bounded: a hang fails as TimeoutExpired
EVERYDAY = [("status",), ("list",), ("prune", "--dry-run"), ("recover",)]


def _odd(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "dir":
        path.mkdir()
        (path / "x.manifest").write_text("{}")
    else:
        path.symlink_to("/dev/zero")


def _ended(cli: Cli, *args: str) -> str:
    done = cli(*args, timeout=60)
    assert "Traceback" not in done.stderr, (args, done.stderr[-2000:])
    return done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize(
    "name",
    [
        "daemon.json",
        "restore-progress.json",
        "prune-pending.json",
        "restore-database.json",
        "backup.lock",
    ],
)
def test_a_state_file_replaced_ends_every_command(
    tmp_path: Path, sandbox: Sandbox, name: str, kind: str
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    assert cli.json("backup")["status"] == "ok"
    path = tmp_path / "state" / name
    _odd(path, kind)
    for command in EVERYDAY:
        _ended(cli, *command)
    assert sandbox.ping()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dir"])
def test_an_archive_record_or_manifest_replaced_fails_its_check_and_restore_in_a_line(
    tmp_path: Path, sandbox: Sandbox, kind: str
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    cold = Cli(write_config(tmp_path, sandbox))
    record = cold.json("backup")
    archive = Path(record["archive"])
    _odd(archive, kind)
    said = _ended(cold, "verify", record["id"])
    assert "not an archive" in said, said
    done = cold("restore", record["id"], "--target", str(tmp_path / "restored"), timeout=60)
    assert done.returncode == 1 and "not a backup" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "restored").exists()
    by_path = cold("restore", str(archive), "--target", str(tmp_path / "restored"), timeout=60)
    assert by_path.returncode == 1 and "not a backup" in by_path.stderr, by_path.stderr[-2000:]

    if kind == "dir":  # a cold archive replaced by a dir: not looked into as a hot one
        return
    hot_root = tmp_path / "hot"
    hot_root.mkdir()
    hot = Cli(write_config(hot_root, sandbox, jobs=HOT))
    backup = hot.json("backup")
    assert backup["status"] == "ok", backup["error"]
    backup_dir = Path(backup["archive"])
    [manifest] = backup_dir.glob("*.manifest")
    _odd(manifest, kind)
    done = hot("verify", backup["id"], "--json", timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "not a regular file" in json.dumps(json.loads(done.stdout)), done.stdout
    _odd(backup_dir.with_name(backup_dir.name + ".json"), kind)  # the record beside it
    _ended(hot, "verify", backup["id"])
    assert sandbox.ping()
