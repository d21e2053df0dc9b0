"""[verify]: the daemon checks every good backup again on a schedule, and says when one went bad
(a real daemon process, a real influxd, a real archive damaged on disk)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from tests.conftest import Cli, write_config
from tests.system.test_daemon import daemon, wait_runs

JOB = {"name": "nightly", "mode": "cold", "copy": "direct"}  # manual only: no backup runs


def _status(config: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(config), "status"],
        capture_output=True,
        text=True,
    )
    return done.stdout


def test_a_backup_gone_bad_on_disk_is_found_by_the_next_scheduled_verify(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    told = tmp_path / "on_failure.env"
    hook = ["sh", "-c", f"env | grep ^INFLUX_BACKUPD_ > {told}"]
    config = write_config(tmp_path, sandbox, jobs=[{**JOB, "on_failure": hook}])
    metrics = tmp_path / "metrics.prom"
    text = config.read_text().replace("[daemon]\n", f'[daemon]\nmetrics_file = "{metrics}"\n', 1)
    config.write_text(text + '\n[verify]\nevery = "2s"\n')
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    record = Cli(config).json("backup")
    assert record["status"] == "ok", record["error"]
    catalog = Catalog(tmp_path / "state")

    with daemon(tmp_path, config) as d:
        first = d.wait_event("verify.scheduled", timeout=30)
        assert first["checked"] == 1 and first["failed"] == []
        checked = catalog.get(record["id"])
        assert checked is not None and checked.verify_status == "ok" and checked.verified_at
        assert not told.exists(), "a good check tells nobody"
        assert "verify --all  every 2s ([verify])" in _status(config)

        # Bit rot: one byte in the middle of the archive flips.
        archive = Path(record["archive"])
        with open(archive, "r+b") as fh:
            fh.seek(archive.stat().st_size // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0xFF]))

        bad = d.wait_event("verify.scheduled", timeout=30, ok=0)
        assert bad["level"] == "error"
        assert len(bad["failed"]) == 1 and bad["failed"][0].startswith(record["id"])
        assert "sha256" in bad["failed"][0]
        failed = catalog.get(record["id"])
        assert failed is not None and failed.verify_status == "failed"
        counted = [
            line.rsplit(" ", 1)[1]
            for line in metrics.read_text().splitlines()
            if line.startswith(
                'influx_backupd_verify_failures_total{backup_instance="metrics",backup_job="nightly"}'
            )
        ]
        assert counted and int(counted[0]) >= 1, counted  # one per failed check, every 2 s
        assert (
            'influx_backupd_backups_failing_verify{backup_instance="metrics",backup_job="nightly"} 1\n'
            in metrics.read_text()
        )
        assert f"FAILING 1 backup(s) failed their last check: {record['id']}" in _status(config)
        # The operator's on_failure hears of it, with the run and what the check found.
        env = dict(line.split("=", 1) for line in told.read_text().splitlines())
        assert env["INFLUX_BACKUPD_RUN_ID"] == record["id"]
        assert env["INFLUX_BACKUPD_VERIFY"] == "failed"
        assert "sha256" in env["INFLUX_BACKUPD_VERIFY_DETAIL"]
        assert d.stop() == 0
    assert sandbox.ping(), "a verify never touches the live server"
    assert "Traceback" not in d.tail()


def test_without_a_verify_schedule_the_daemon_verifies_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox, jobs=[{**JOB, "every": "2s"}])
    with daemon(tmp_path, config) as d:
        # two runs, 2 s apart: time enough for a verify to have appeared
        wait_runs(tmp_path, lambda rs: sum(r.ok for r in rs) >= 2, 30)
        assert d.stop() == 0
    assert not any(e.get("event") == "verify.scheduled" for e in d.events())
    assert "verify --all  manual only ([verify])" in _status(config)


def test_a_verify_schedule_added_by_a_reload_takes_effect(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox, jobs=[JOB])
    record = Cli(config).json("backup")
    assert record["status"] == "ok", record["error"]
    with daemon(tmp_path, config) as d:
        d.wait_event("daemon.ready", timeout=30)
        config.write_text(config.read_text() + '\n[verify]\nevery = "2s"\n')
        d.proc.send_signal(signal.SIGHUP)
        reloaded = d.wait_event("config.reloaded", timeout=10)
        assert "[verify]" in reloaded["rescheduled"]
        checked = d.wait_event("verify.scheduled", timeout=30)
        assert checked["checked"] == 1 and checked["failed"] == []
        assert d.stop() == 0
