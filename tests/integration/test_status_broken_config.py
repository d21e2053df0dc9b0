"""`status` while the daemon runs on a config it loaded before and the file has broken since (a
mistyped key): before, status said only the config's error, exit 78, and showed nothing of the
daemon that runs. Now it shows what that daemon publishes in its state_dir, then the error
line, exit 78 still (the config must be fixed). A real daemon process and influxd."""

from __future__ import annotations

import json
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, wait_until, write_config
from tests.system.test_daemon import daemon


def test_status_shows_the_running_daemon_and_names_the_broken_config(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    cli = Cli(config)
    with daemon(tmp_path, config) as running:
        running.wait_event("daemon.ready", 120)
        good = cli("status")
        assert good.returncode == 0, good.stderr[-2000:]

        config.write_text(config.read_text().replace("[storage]", "[storage]\nbogus_key = 1"))
        done = cli("status")
        assert done.returncode == 78, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert f"daemon    running, pid {running.proc.pid}" in done.stdout, done.stdout
        assert "job nightly  next " in done.stdout, done.stdout
        assert "config    NOT LOADED" in done.stdout, done.stdout
        [line] = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert str(config) in line and "bogus_key" in line, line

        report = json.loads(cli("status", "--json").stdout)
        assert report["daemon"]["running"] and report["daemon"]["pid"] == running.proc.pid
        assert "bogus_key" in report["config_error"]
        assert running.proc.poll() is None, "the daemon runs on"
    wait_until(lambda: running.proc.poll() is not None, 60, "the daemon stopped")

    # no daemon: as before, the error line alone
    done = cli("status")
    assert done.returncode == 78 and done.stdout == "", done.stdout
