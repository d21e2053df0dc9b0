"""A live dir that did not exist before a whole-server restore (influxd stopped, its wal/
removed): a restore whose start fails moves the restored one aside too, and says so. Real
influxd 1.6, real CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_failed_start_moves_the_restored_wal_aside_when_there_was_none(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: meta and data were put back, the restored wal/ stayed live (influxd replayed
    the backup's WAL over the old data at its next start) and the error named only data's and
    meta's failed-restore dirs."""
    sandbox.create_db("db1")
    sandbox.write_points("db1", 500)
    cli = Cli(write_config(tmp_path, sandbox))
    rec = cli.json("backup")
    assert rec["status"] == "ok", rec["error"]
    sandbox.stop()
    shutil.rmtree(sandbox.wal)
    before = {top: _listing(sandbox.root / top) for top in ("meta", "data")}

    # the restored influxd cannot start: the command that starts it fails (a sound archive;
    # before, a garbled meta.db did it, which the format checks now refuse before anything)
    failing = tmp_path / "influxd-that-fails"
    failing.write_text("#!/bin/sh\necho 'run: create server: failing on purpose' >&2\nexit 1\n")
    failing.chmod(0o755)
    command = [str(failing), "run", "-config", str(sandbox.conf)]
    cli = Cli(write_config(tmp_path, sandbox, influxd={"command": command}))
    done = cli("restore", rec["id"], "--yes")

    assert done.returncode == 1, (done.stdout, done.stderr[-3000:])
    last = done.stderr.splitlines()[-1]
    assert "the previous data was put back" in last, last
    assert not sandbox.wal.exists(), "the restored wal/ must not stay live"
    [aside] = sandbox.root.glob("wal.failed-restore-*")
    assert str(aside) in last, last
    assert f"{sandbox.wal} did not exist before the restore: left absent" in last, last
    assert not list(sandbox.root.glob("wal.rollback-*")), "its note is gone"
    assert {top: _listing(sandbox.root / top) for top in ("meta", "data")} == before
    assert sorted(p.name.partition(".")[0] for p in sandbox.root.glob("*.failed-restore-*")) == [
        "data",
        "meta",
        "wal",
    ]
    sandbox.start()  # the fixture stops it
