"""influxd refusing to stop: one that ignores SIGTERM, and one whose exit outlasts stop_timeout.

The real influxd cannot be made to do either (its Go runtime re-enables SIGTERM; its shutdown
cannot be slowed on demand): tests/stand_ins supervisors around a real influxd play that part,
each explaining itself at its top. The server behind them is real and keeps the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, wait_until, write_config
from tests.faults.conftest import Ledger, run_cli
from tests.system.test_daemon import daemon

MARKER = "influxd-stopped.json"


def _supervised(tmp_path: Path, sandbox: Sandbox, *stand_in: str) -> list[str]:
    return [sys.executable, str(STAND_INS / stand_in[0]), *stand_in[1:], *sandbox.command()]


def _serve_supervised(tmp_path: Path, sandbox: Sandbox, *stand_in: str) -> list[str]:
    """The sandbox's server stopped and started again under a stand-in supervisor: its command."""
    sandbox.stop()
    command = _supervised(tmp_path, sandbox, *stand_in)
    subprocess.Popen(command, start_new_session=True)
    sandbox.wait_ready()
    return command


def _signalled(tmp_path: Path) -> int | None:
    """The pid a "signalled" crash marker names (a server that got our stop and still runs)."""
    path = tmp_path / "state" / MARKER
    if not path.exists():
        return None
    body = json.loads(path.read_text())
    return body["influxd"]["pid"] if "signalled_at" in body else None


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# late_exit_supervisor.py's linger: longer than any test waits; the test ends it (_release) once
# it has seen what must happen while the signalled server still serves.
UNTIL_RELEASED = "600"


def _release(pid: int) -> None:
    """The lingering late_exit_supervisor.py of that pid ends its shutdown now."""
    os.kill(pid, signal.SIGUSR1)


def _under(
    tmp_path: Path, sandbox: Sandbox, pidfile: Path, stand_in: str, linger: str, stop_timeout: str
) -> Path:
    """3,000 points, the server under a stand-in supervisor lingering that long after SIGTERM,
    and a config controlling it through its pidfile with that stop_timeout."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    command = _serve_supervised(tmp_path, sandbox, stand_in, str(pidfile), linger)
    influxd = {"pidfile": str(pidfile), "command": command, "stop_timeout": stop_timeout}
    return write_config(tmp_path, sandbox, influxd=influxd)


@pytest.fixture
def pidfile(tmp_path: Path, sandbox: Sandbox) -> Iterator[Path]:
    path = tmp_path / "influxd.pid"
    yield path
    # whichever supervisor runs now: SIGUSR1 ends the term-ignoring one, SIGTERM the other
    for proc in psutil.process_iter(["cmdline"]):
        if str(path) in (proc.info["cmdline"] or []):
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(sig)
            psutil.wait_procs([proc], timeout=60)


@pytest.mark.fault("no-stop", "influxd refuses to stop", "SIGTERM ignored")
def test_a_server_ignoring_sigterm_keeps_serving_and_nothing_is_copied(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, pidfile: Path
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    command = _serve_supervised(tmp_path, sandbox, "term_ignoring_supervisor.py", str(pidfile))
    config = write_config(
        tmp_path,
        sandbox,
        influxd={"pidfile": str(pidfile), "command": command, "stop_timeout": "3s"},
    )
    ledger.take()
    supervisor = int(pidfile.read_text())
    done = run_cli(config, "backup", "--json")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "failed" and "stop_timeout" in record["error"], record["error"]
    assert record["archive"] is None
    assert record["extra"]["serving_after_stop"] == supervisor  # "none so far", not "none"
    assert int(pidfile.read_text()) == supervisor and psutil.pid_exists(supervisor)
    assert sandbox.ping(), "influxd serves on: never killed, never doubled"
    # it got the SIGTERM: watched (started again should it exit late), never said to be down
    assert _signalled(tmp_path) == supervisor
    status = json.loads(run_cli(config, "status", "--json").stdout)
    assert status["influxd_down"] is None, status["influxd_down"]
    assert not list((tmp_path / "archives").glob("*.tar*"))
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("no-stop", "influxd refuses to stop", "exit outlasts stop_timeout")
def test_a_server_exiting_after_stop_timeout_is_started_again_once_it_is_gone(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, pidfile: Path
) -> None:
    config = _under(tmp_path, sandbox, pidfile, "slow_exit_supervisor.py", "8", "2s")
    ledger.take()
    first = int(pidfile.read_text())
    started = time.monotonic()
    done = run_cli(config, "backup", "--json")
    assert "Traceback" not in done.stderr
    record = json.loads(done.stdout)
    # nothing was copied from a server that had not exited; it was started again once gone
    assert done.returncode == 1 and record["status"] == "failed", record
    assert "stop_timeout" in record["error"], record["error"]
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert sandbox.ping(), "started again after the slow exit"
    assert [p for p in sandbox.pids() if p != first], "a new server runs"
    assert not (tmp_path / "state" / MARKER).exists()
    assert time.monotonic() - started < 300
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("no-stop", "influxd refuses to stop", "exit outlasts stop_timeout in a restore")
@pytest.mark.parametrize("mode", ["cold", "hot"])
def test_a_restore_whose_stop_outlasts_stop_timeout_starts_the_server_again(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, pidfile: Path, mode: str
) -> None:
    """Before: the rollback started influxd only if no process ran at that moment; the old one
    was still shutting down, so none was started, the marker was cleared, and influxd stayed
    down once it had exited, with the line saying the previous data was put back."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    command = _serve_supervised(tmp_path, sandbox, "slow_exit_supervisor.py", str(pidfile), "8")
    job = {"name": "nightly", "mode": mode, **({"copy": "direct"} if mode == "cold" else {})}

    def config(stop_timeout: str) -> Path:
        influxd = {"pidfile": str(pidfile), "command": command, "stop_timeout": stop_timeout}
        return write_config(tmp_path, sandbox, jobs=[job], influxd=influxd)

    backup = run_cli(config("60s"), "backup", "--json")
    assert backup.returncode == 0, backup.stderr[-3000:]
    ledger.take()
    first = int(pidfile.read_text())
    done = run_cli(config("2s"), "restore", json.loads(backup.stdout)["id"], "--yes")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "the previous data was put back" in done.stderr.strip().splitlines()[-1]
    # the command returned: a server runs (the slow exit waited for, another started)
    assert sandbox.ping(), "influxd left down after the restore returned"
    assert [p for p in sandbox.pids() if p != first], "a new server runs"
    assert not (tmp_path / "state" / MARKER).exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault(
    "no-stop", "influxd refuses to stop", "a supervisor starts it again at once: restore"
)
def test_a_restore_whose_stop_a_supervisor_undoes_says_nothing_was_restored(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """A supervisor (its argv naming the config, as runuser's does) starts influxd again the
    moment it exits. Before: the restore failed with the cold backup's "nothing copied" and
    without the cold job's hint to name the supervisor's unit in [influxd] service."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    backup = run_cli(write_config(tmp_path, sandbox), "backup", "--json")
    assert backup.returncode == 0, backup.stderr[-3000:]
    command = _serve_supervised(tmp_path, sandbox, "respawning_supervisor.py")
    [supervisor] = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "respawning_supervisor.py" in " ".join(p.info["cmdline"] or [])
    ]
    try:
        config = write_config(tmp_path, sandbox, influxd={"command": command, "stop_timeout": "3s"})
        ledger.take()
        live = sorted(p.name for p in sandbox.root.iterdir())
        done = run_cli(config, "restore", json.loads(backup.stdout)["id"], "--yes")
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        line = done.stderr.strip().splitlines()[-1]
        assert f"pid {supervisor} still runs {sandbox.conf}" in line, line
        assert "nothing restored, live data untouched" in line and "nothing copied" not in line
        assert "name its unit in [influxd] service" in line, line
        assert sorted(p.name for p in sandbox.root.iterdir()) == live, "live dirs moved"
        wait_until(sandbox.ping, 60, "the respawned server answering")
        lost_points, lost = ledger.settle()
        assert lost_points == 0 and lost == []
    finally:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(supervisor)
            proc.terminate()
            proc.wait(60)
        sandbox.start()


@pytest.mark.fault(
    "no-stop", "influxd refuses to stop", "serves past stop_timeout, exits later: next command"
)
@pytest.mark.parametrize("command", ["backup", "restore"])
def test_a_server_serving_past_stop_timeout_that_exits_later_is_started_by_the_next_command(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, pidfile: Path, command: str
) -> None:
    """Before: the run (or the restore's rollback) saw the server still answering, cleared the
    crash marker and returned; when that server's shutdown ended later, nothing started it and
    no command said it was down."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    served = _serve_supervised(
        tmp_path, sandbox, "late_exit_supervisor.py", str(pidfile), UNTIL_RELEASED
    )

    def config(stop_timeout: str) -> Path:
        influxd = {"pidfile": str(pidfile), "command": served, "stop_timeout": stop_timeout}
        return write_config(tmp_path, sandbox, influxd=influxd)

    args = ["backup", "--json"]
    if command == "restore":
        _release(int(pidfile.read_text()))  # this backup's stop ends as a plain one
        backup = run_cli(config("60s"), "backup", "--json")
        assert backup.returncode == 0, backup.stderr[-3000:]
        args = ["restore", json.loads(backup.stdout)["id"], "--yes"]
    ledger.take()
    first = int(pidfile.read_text())
    done = run_cli(config("2s"), *args)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "stop_timeout" in done.stdout + done.stderr
    assert sandbox.ping() and _signalled(tmp_path) == first, "left serving, and watched"
    _release(first)
    wait_until(lambda: _gone(first), 60, "the late end of its shutdown")
    assert not sandbox.ping()
    # now influxd is down: every command says so, the next one taking the lock starts it
    told = run_cli(config("2s"), "status")
    assert "not started again" in told.stderr + told.stdout, told.stderr
    prune = run_cli(config("2s"), "prune", "--dry-run")
    assert prune.returncode == 0, prune.stderr[-3000:]
    assert sandbox.ping(), "started again by the next command"
    assert not (tmp_path / "state" / MARKER).exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault(
    "no-stop", "influxd refuses to stop", "serves past stop_timeout, exits later: the daemon"
)
def test_the_daemon_starts_a_server_that_exits_long_after_the_stop_it_outlasted(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, pidfile: Path
) -> None:
    """No command runs after the failed backup: the daemon alone sees the late exit."""
    config = _under(tmp_path, sandbox, pidfile, "late_exit_supervisor.py", UNTIL_RELEASED, "2s")
    ledger.take()
    first = int(pidfile.read_text())
    done = run_cli(config, "backup", "--json")
    assert done.returncode == 1 and json.loads(done.stdout)["status"] == "failed", done.stderr
    assert sandbox.ping() and _signalled(tmp_path) == first
    with daemon(tmp_path, config) as d:
        d.wait_event("daemon.ready", 120)
        assert not _gone(first), "the server exited before the daemon was up"
        _release(first)
        wait_until(lambda: _gone(first), 60, "the late end of its shutdown")
        wait_until(sandbox.ping, 60, "the daemon starting influxd after the late exit")
        wait_until(lambda: not (tmp_path / "state" / MARKER).exists(), 30, "the marker cleared")
        assert [p for p in sandbox.pids() if p != first], "a new server runs"
        assert d.stop() == 0
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
