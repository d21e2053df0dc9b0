"""A `verify` by hand (or from cron) that finds a kept backup bad tells whom the daemon's
[verify] would: the job's on_failure hook and [notify] verify_failed. Before, only the daemon's
scheduled check did, and a cron'd `verify --all` failed to no one but its exit status."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config


def test_a_manual_verify_that_finds_a_backup_bad_runs_on_failure(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    told = tmp_path / "on_failure.env"
    hook = ["sh", "-c", f"env | grep ^INFLUX_BACKUPD_ > {told}"]
    job = {"name": "nightly", "mode": "cold", "copy": "direct", "on_failure": hook}
    cli = Cli(write_config(tmp_path, sandbox, jobs=[job]))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    assert cli("verify", "--all").returncode == 0
    assert not told.exists(), "a good check tells nobody"

    archive = Path(record["archive"])
    with open(archive, "r+b") as fh:  # bit rot in the middle of the archive
        fh.seek(archive.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    for argv in (["verify", "--all"], ["verify", record["id"]]):
        told.unlink(missing_ok=True)
        done = cli(*argv)
        assert done.returncode == 1, done.stdout
        env = dict(line.split("=", 1) for line in told.read_text().splitlines())
        assert env["INFLUX_BACKUPD_RUN_ID"] == record["id"]
        assert env["INFLUX_BACKUPD_VERIFY"] == "failed"
        assert "sha256" in env["INFLUX_BACKUPD_VERIFY_DETAIL"]
