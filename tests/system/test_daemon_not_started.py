"""A scheduled run the daemon cannot begin (here a full state dir; a read-only one, a catalog held
by another process and the lock held past catch_up take the same way) leaves no
run record, so nothing that reads records told of it: the metrics said the last run was ok and
the heartbeat fresh, `status` said idle, no failure notification went out. It is now counted
(influx_backupd_runs_not_started_total, InfluxBackupNotStarted), shown by `status`, and told
to the failure notifications and the job's heartbeat /fail."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from structlog.testing import capture_logs

from influx_backupd.core.config import load
from influx_backupd.daemon.loop import Daemon, Due
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.report.metrics import previous_daemon_facts
from influx_backupd.store.catalog import Catalog
from tests.conftest import Cli, wait_until, write_config
from tests.integration.test_notify import Receiver
from tests.system.test_daemon_clock import server

__all__ = ["server"]  # the fixture, shared


def test_a_run_that_cannot_begin_is_counted_shown_and_told(tmp_path: Path, server: Sandbox) -> None:
    receiver = Receiver()
    metrics = tmp_path / "m.prom"
    mounts: list[Path] = []
    told_hook = tmp_path / "hook.env"
    try:
        config = write_config(
            tmp_path,
            server,
            jobs=[
                {
                    "name": "fast",
                    "every": "1h",
                    "heartbeat_url": f"http://{receiver.url}/hb",
                    "on_failure": ["sh", "-c", f"env | grep ^INFLUX_BACKUPD_ > {told_hook}"],
                },
                {"name": "other", "every": "1h"},
            ],
            daemon={"metrics_file": str(metrics)},
            extra=f'\n[notify]\ntimeout = "10s"\nfailure = ["json://{receiver.url}/failure"]\n',
        )
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
        mounts.append(state)
        Catalog(state).list()  # the catalog an earlier run left
        fill = os.statvfs(state)
        (state / "filler").write_bytes(b"x" * (fill.f_bavail * fill.f_frsize))
        d = Daemon(load(config))
        with capture_logs() as events:
            d._run(Due("fast", time.time(), "schedule"))
        [event] = [e for e in events if e["event"] == "run.catalog_unusable"]
        assert "is full" in event["error"]
        # its on_failure hook, as after a failed run, waited for
        hook_env = dict(line.split("=", 1) for line in told_hook.read_text().splitlines())
        assert hook_env["INFLUX_BACKUPD_STATUS"] == "not_started"
        assert hook_env["INFLUX_BACKUPD_JOB"] == "fast" and hook_env["INFLUX_BACKUPD_RUN_ID"] == ""
        assert "is full" in hook_env["INFLUX_BACKUPD_ERROR"]

        d._write_metrics()
        facts = previous_daemon_facts(metrics.read_text())
        assert facts is not None
        assert facts.not_started["fast"][0] == 1 and "other" not in facts.not_started
        text = metrics.read_text()
        assert (
            'influx_backupd_runs_not_started_total{backup_instance="m",backup_job="fast"} 1' in text
        )
        assert (
            'influx_backupd_runs_not_started_total{backup_instance="m",backup_job="other"} 0'
            in text
        )

        wait_until(
            lambda: (
                receiver.posts("/failure") and any(p == "/hb/fail" for _, p, _ in receiver.requests)
            ),
            30,
            "the failure notification and the heartbeat's /fail",
        )
        [told] = receiver.posts("/failure")
        assert "backup fast not started" in told["title"] and "is full" in told["message"]

        # once space is freed, `status` says it too (daemon.json lives in the state dir)
        (state / "filler").unlink()
        d._publish()  # daemon.json, as the main loop's tick writes it
        shown = Cli(config)("status")
        assert "NOT STARTED 1 scheduled run(s) since the daemon started" in shown.stdout, (
            shown.stdout
        )
        assert "is full" in shown.stdout
    finally:
        receiver.close()
        for mount in mounts:
            subprocess.run(["umount", str(mount)], check=True)


def test_the_heartbeat_is_not_held_up_by_a_catalog_another_process_holds(
    tmp_path: Path, server: Sandbox
) -> None:
    """The main loop wrote the metrics file waiting SQLite's 30 s for a catalog another process
    held (a `sqlite3` session, a long write): no signal handled, nothing published, and the
    watchdog's limit is 30 s too. It waits half a second, says so once, and tries again."""
    metrics = tmp_path / "m.prom"
    config = write_config(
        tmp_path,
        server,
        jobs=[{"name": "fast", "every": "1h"}],
        daemon={"metrics_file": str(metrics)},
    )
    d = Daemon(load(config))
    Catalog(d.config.state_dir).list()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(120)",
            str(d.config.state_dir / "catalog.db"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with capture_logs() as events:
            started = time.monotonic()
            d._write_metrics()
            took = time.monotonic() - started
        assert took < 10, f"the main loop waited {took:.1f}s"
        [failed] = [e for e in events if e["event"] == "metrics.write_failed"]
        assert "locked by another process" in failed["error"]
    finally:
        holder.kill()
        holder.wait()
    d._metrics_written = 0.0
    d._write_metrics()  # free again: written
    assert previous_daemon_facts(metrics.read_text()) is not None
