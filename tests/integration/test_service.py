"""The `service` control path (systemctl stop/start, MainPID) against a real influxd.

systemd cannot run as PID 1 here, so `systemctl` is the stand-in in tests/stand_ins/bin, which
starts, tracks and stops the real influxd the way systemd does for a simple service. What this
does not cover: a real systemd's unit state machine and its D-Bus.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, Cli, write_config

UNIT = "influxdb-sandbox.service"


@pytest.fixture
def service(tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "systemd"
    state.mkdir()
    (state / f"{UNIT}.json").write_text(json.dumps({"command": sandbox.command()}))
    monkeypatch.setenv("STANDIN_SYSTEMCTL_DIR", str(state))
    monkeypatch.setenv("PATH", f"{STAND_INS / 'bin'}:{os.environ['PATH']}")
    sandbox.stop()
    subprocess.run(["systemctl", "start", UNIT], check=True)
    sandbox.wait_ready()
    return state


def test_backup_and_restore_through_systemctl(
    tmp_path: Path, sandbox: Sandbox, service: Path
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, influxd={"command": None, "service": UNIT}))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    pid_before = int((service / f"{UNIT}.pid").read_text())

    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    assert sandbox.ping()
    assert int((service / f"{UNIT}.pid").read_text()) != pid_before, "restarted by the unit"
    calls = (service / "calls.log").read_text().splitlines()
    assert calls.count(f"start {UNIT}") == 1  # the fixture's
    # ours: not held up by the daemon's own unit being stopped (see Influxd.start, .stop)
    assert f"stop --job-mode=ignore-dependencies {UNIT}" in calls
    assert calls.count(f"start --job-mode=ignore-dependencies {UNIT}") == 1
    assert f"show -p MainPID --value {UNIT}" in calls

    sandbox.write_points("metrics", 1_000, start=80_000)
    done = cli("restore", record["id"], "--yes")
    assert done.returncode == 0, done.stderr
    assert sandbox.count("metrics") == 5_000


def test_a_stopped_unit_is_not_backed_up_and_not_started(
    tmp_path: Path, sandbox: Sandbox, service: Path
) -> None:
    subprocess.run(["systemctl", "stop", UNIT], check=True)
    cli = Cli(write_config(tmp_path, sandbox, influxd={"command": None, "service": UNIT}))
    record = cli.json("backup")
    assert record["status"] == "failed"
    assert "not running" in record["error"]
    assert not sandbox.ping(), "an operator's stopped server stays stopped"


def test_a_unit_that_runs_another_config_is_said_as_that(
    tmp_path: Path, sandbox: Sandbox, service: Path, influxd_path: str
) -> None:
    """[influxd] service names a unit whose process runs another influxdb.conf than [influxd]
    config: before, `influxd (pid N) does not answer http://…:8086/ping`, of a pid that answers
    on its own port. Nothing stopped either way."""
    other = Sandbox(tmp_path / "other", binary=influxd_path)
    other.write_config()  # the config names this server's conf; the unit runs the sandbox's
    for d in (other.meta, other.data, other.wal):
        d.mkdir(parents=True, exist_ok=True)
    cli = Cli(write_config(tmp_path, other, influxd={"command": None, "service": UNIT}))
    pid = int((service / f"{UNIT}.pid").read_text())
    record = cli.json("backup")
    assert record["status"] == "failed"
    assert (
        f"{UNIT}'s main process (pid {pid}) runs -config {sandbox.conf}, not {other.conf}: "
        "[influxd] service and config must name the same server; "
    ) in record["error"], record["error"]
    assert record["error"].endswith("nothing stopped"), record["error"]
    assert int((service / f"{UNIT}.pid").read_text()) == pid and sandbox.ping()
