"""Intruder: a whole-server restore while another influxd than the one the config names serves
the live dirs (real influxd, real CLI).

Seen in a real systemd (Debian 12): `systemctl stop influxdb`, then influxd started by hand on
/etc/influxdb/influxdb.conf. The restore trusted the unit's MainPID (none), stopped nothing,
renamed meta/data/wal from under the serving process and moved the restored dirs in; the unit's
start failed (port taken) and the restore rolled back, while the hand-started server had written
a database created meanwhile into the restored meta dir, then moved aside: lost.

- service mode: systemd is not PID 1 here; the stand-in systemctl names no MainPID while the
  sandbox's influxd runs the same influxdb.conf, started outside the unit (the audit's case);
- command mode: an influxd given the same influxdb.conf through INFLUXDB_CONFIG_PATH under
  another name (argv[0]), so that neither its argv nor an `influxd` reading that variable names
  it (the analogue: a process holds the live dirs that is not the server located);
- after the stop: a unit whose stop leaves a process holding a file in a live dir
  (KillMode=process): nothing is renamed, influxd is started again through the unit.

Each: refused with one line, exit 1, nothing renamed, influxd serving, no point lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, write_config
from tests.faults.conftest import Ledger, one_line, run_cli

UNIT = "influxdb-sandbox.service"
MARKER = "influxd-stopped.json"


def _backed_up(tmp_path: Path, sandbox: Sandbox) -> str:
    """One cold backup of 2,000 points (command mode); its id."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    done = run_cli(write_config(tmp_path, sandbox), "backup", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return str(json.loads(done.stdout)["id"])


def _aside(sandbox: Sandbox) -> list[str]:
    """Whatever a swap leaves beside the live dirs (rollback, staging, failed-restore dirs)."""
    return sorted(p.name for p in sandbox.root.iterdir() if "." in p.name and p.is_dir())


@pytest.fixture
def units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "systemd"
    state.mkdir()
    monkeypatch.setenv("STANDIN_SYSTEMCTL_DIR", str(state))
    monkeypatch.setenv("PATH", f"{STAND_INS / 'bin'}:{os.environ['PATH']}")
    return state


@contextmanager
def _hidden_server(sandbox: Sandbox) -> Iterator[subprocess.Popen[bytes]]:
    """The sandbox's influxd replaced by one on the same influxdb.conf that no argv names."""
    sandbox.stop()
    env = {**os.environ, "INFLUXDB_CONFIG_PATH": str(sandbox.conf)}
    server = subprocess.Popen(
        ["server-under-another-name", "run"],
        executable=sandbox.binary,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        sandbox.wait_ready()
        yield server
    finally:
        server.terminate()
        server.wait(60)
        sandbox.start()


def _asked(units: Path) -> list[str]:
    """The stops and starts the stand-in systemctl was asked for."""
    log = units / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [c for c in lines if c.startswith(("stop", "start"))]


@pytest.mark.fault("intruder", "a restore while another influxd serves the live dirs")
@pytest.mark.parametrize("variant", ["started by hand outside the unit", "command mode"])
def test_a_restore_under_a_server_it_did_not_locate_is_refused_before_the_stop(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, units: Path, variant: str
) -> None:
    """Before: the restore renamed the live dirs from under the serving process."""
    backup_id = _backed_up(tmp_path, sandbox)
    (units / f"{UNIT}.json").write_text(json.dumps({"command": sandbox.command()}))
    if variant.startswith("started by hand"):
        # the sandbox's influxd runs our influxdb.conf; the unit has no MainPID
        config = write_config(tmp_path, sandbox, influxd={"command": None, "service": UNIT})
        [pid] = sandbox.pids()
        _refused(tmp_path, sandbox, ledger, config, backup_id, pid, units, service=True)
    else:
        config = write_config(tmp_path, sandbox)
        with _hidden_server(sandbox) as server:
            _refused(tmp_path, sandbox, ledger, config, backup_id, server.pid, units, service=False)


def _refused(
    tmp_path: Path,
    sandbox: Sandbox,
    ledger: Ledger,
    config: Path,
    backup_id: str,
    pid: int,
    units: Path,
    *,
    service: bool,
) -> None:
    ledger.take()
    sandbox.create_db("during_window")  # written by the serving process: must stay
    done = run_cli(config, "restore", backup_id, "--yes")
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    line = one_line(done.stderr)
    if service:
        assert (
            f"influxd pid {pid} serves {sandbox.conf} outside {UNIT} (started by hand?): "
            "stop it, or start it through the unit, then restore again"
        ) in line, line
    else:
        assert f"pid {pid} (influxd) holds {sandbox.root}/" in line, line
        assert "not the influxd of" in line and "then restore again" in line, line
    assert line.startswith("influx-backupd: restore refused, nothing touched: "), line
    assert _asked(units) == [], "nothing stopped, nothing started"
    assert _aside(sandbox) == [], "nothing renamed, no staging left"
    assert psutil.pid_exists(pid) and sandbox.ping(), "the serving process left as it was"
    assert "during_window" in sandbox.databases()
    assert not (tmp_path / "state" / MARKER).exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault(
    "intruder",
    "a restore while another influxd serves the live dirs",
    "a cold backup meanwhile says who serves",
)
def test_a_cold_backup_says_who_runs_the_config_outside_the_unit(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, units: Path
) -> None:
    """Before: "influxd is not running (no process for …)" while a pid served that config.
    Nothing is stopped either way."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    ledger.take()
    (units / f"{UNIT}.json").write_text(json.dumps({"command": sandbox.command()}))
    config = write_config(tmp_path, sandbox, influxd={"command": None, "service": UNIT})
    [pid] = sandbox.pids()
    done = run_cli(config, "backup", "--json")
    assert done.returncode == 1, done.stderr[-3000:]
    error = json.loads(done.stdout)["error"]
    assert (
        f"influxd pid {pid} runs {sandbox.conf} outside {UNIT}, whose MainPID is none "
        "(started by hand?)"
    ) in error, error
    assert _asked(units) == []
    assert sandbox.pids() == [pid] and sandbox.ping()
    assert ledger.settle() == (0, [])


@pytest.mark.fault(
    "intruder",
    "a restore while another influxd serves the live dirs",
    "a process the unit's stop left behind holds a live dir",
)
def test_a_live_dir_held_after_the_stop_is_not_renamed_and_influxd_starts_again(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, units: Path
) -> None:
    """The last look before the renames: after the stop, no process may hold the live dirs
    (or listen on influxd's port). Before: renamed under it."""
    backup_id = _backed_up(tmp_path, sandbox)
    holder_pid = tmp_path / "holder.pid"
    wrapper = [
        sys.executable,
        str(STAND_INS / "leaves_a_holder.py"),
        str(sandbox.meta / "meta.db"),
        str(holder_pid),
        *sandbox.command(),
    ]
    (units / f"{UNIT}.json").write_text(json.dumps({"command": wrapper}))
    sandbox.stop()
    subprocess.run(["systemctl", "start", UNIT], check=True)
    sandbox.wait_ready()
    config = write_config(tmp_path, sandbox, influxd={"command": None, "service": UNIT})
    ledger.take()
    holder = 0
    try:
        done = run_cli(config, "restore", backup_id, "--yes")
        holder = int(holder_pid.read_text())
        assert done.returncode == 1, done.stdout + done.stderr[-3000:]
        line = one_line(done.stderr)
        assert f"files still in use after the stop: pid {holder} (python" in line, line
        assert f"holds {sandbox.meta / 'meta.db'}" in line, line
        assert line.endswith("nothing was renamed, influxd started again"), line
        assert _aside(sandbox) == [], "nothing renamed, no staging left"
        calls = (units / "calls.log").read_text().splitlines()
        assert calls.count(f"start --job-mode=ignore-dependencies {UNIT}") == 1, calls
        assert sandbox.ping() and not (tmp_path / "state" / MARKER).exists()
        lost_points, lost = ledger.settle()
        assert lost_points == 0 and lost == []
    finally:
        if holder:
            os.kill(holder, signal.SIGKILL)
        subprocess.run(["systemctl", "stop", UNIT], check=False)
