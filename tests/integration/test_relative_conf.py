"""influxd started by hand on a relative config path (`cd /srv/influx && influxd run -config
influxdb.conf`), real influxd, real CLI. Before: a cold backup said "influxd is not running (no
process for …)" and stopped nothing (exit 1), while restore named the pid; the argv's relative
value was never read against the process's working dir."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config


def test_a_cold_backup_stops_and_restarts_an_influxd_started_on_a_relative_conf_path(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    sandbox.stop()
    by_hand = subprocess.Popen(
        [sandbox.binary, "run", "-config", sandbox.conf.name],
        cwd=sandbox.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        sandbox.wait_ready()
        done = Cli(write_config(tmp_path, sandbox))("backup", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        assert by_hand.wait(5) == 0, "the hand-started server was the one stopped"
        assert sandbox.ping(), "influxd runs again after the backup"
        assert sandbox.count("metrics") == 500
        started = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(sandbox.conf) in (p.info["cmdline"] or [])
        ]
        assert started, "started again by the config's command"
    finally:
        if by_hand.poll() is None:
            by_hand.kill()
            by_hand.wait()
