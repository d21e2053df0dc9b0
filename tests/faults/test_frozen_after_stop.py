"""influxd frozen (SIGSTOP, a cgroup freezer, a debugger) after it got our SIGTERM, mid-shutdown.

The stop outlasts stop_timeout and the run fails; once thawed, influxd acts on the SIGTERM it
holds and exits. Before: the run (or the restore's rollback) took the frozen server for one
never signalled, cleared the crash marker and started nothing: influxd stayed down after the
thaw, no command knew, and the record said "downtime none: influxd was not stopped".

The freeze comes from a sitecustomize on the failing command's PYTHONPATH: our SIGTERM to a
process running the sandbox's influxdb.conf reaches it frozen (SIGSTOP, seen to take hold, just
before the signal is sent, after stop() looked for a frozen server): it holds the SIGTERM and
acts on it once thawed, as one frozen mid-shutdown does. Freezing it after the signal loses the
race, now and then, to a server with little data that ends its shutdown within a millisecond.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.cli_process import run_cli_process
from tests.conftest import wait_until, write_config
from tests.faults.conftest import Ledger, run_cli
from tests.system.test_daemon import daemon

MARKER = "influxd-stopped.json"

FREEZER = """
import os
import signal
import time

import psutil

_send = psutil.Process.send_signal


def send_signal(self, sig):
    if sig == signal.SIGTERM and os.environ["FREEZE_AFTER_SIGTERM"] in self.cmdline():
        os.kill(self.pid, signal.SIGSTOP)
        while self.status() != psutil.STATUS_STOPPED:
            time.sleep(0.001)
    _send(self, sig)


psutil.Process.send_signal = send_signal
"""


def _frozen_after_sigterm(tmp_path: Path, sandbox: Sandbox, config: Path, *args: str) -> str:
    """config's command run with influxd frozen as our SIGTERM reaches it: its stdout."""
    site = tmp_path / "freezer"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FREEZER)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": path,
        "FREEZE_AFTER_SIGTERM": str(sandbox.conf),
    }
    done = run_cli_process(["--config", str(config), *args], env=env, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "stop_timeout" in done.stdout + done.stderr, done.stdout + done.stderr[-3000:]
    return done.stdout


def _signalled(tmp_path: Path) -> int | None:
    """The pid a "signalled" crash marker names (a server that got our stop, not yet gone)."""
    path = tmp_path / "state" / MARKER
    if not path.exists():
        return None
    body = json.loads(path.read_text())
    return body["influxd"]["pid"] if "signalled_at" in body else None


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _thaw(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _is_frozen(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def _failed_frozen(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, command: str
) -> tuple[Path, int]:
    """3,000 points; the command (a cold backup, or a restore of one) failed with influxd
    frozen after our SIGTERM, which must have left a "signalled" marker naming it. The config,
    and the frozen server's pid."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    args = ["backup"]
    if command == "restore":
        backup = run_cli(write_config(tmp_path, sandbox), "backup", "--json")
        assert backup.returncode == 0, backup.stderr[-3000:]
        args = ["restore", json.loads(backup.stdout)["id"], "--yes"]
    config = write_config(tmp_path, sandbox, influxd={"stop_timeout": "3s"})
    ledger.take()
    [pid] = sandbox.pids()
    out = _frozen_after_sigterm(tmp_path, sandbox, config, *args)
    assert _is_frozen(pid), "influxd frozen after it got the SIGTERM"
    # it goes down once thawed: watched, started again then
    assert _signalled(tmp_path) == pid, "the crash marker cleared: nobody starts it after the thaw"
    if command == "backup":
        # it was asked to stop: not "not stopped"
        assert "influxd was not stopped" not in out, out
        assert "downtime  pending: influxd was asked to stop" in out, out
    return config, pid


@pytest.mark.fault("2", "influxd frozen (SIGSTOP) after it got SIGTERM, exits once thawed")
@pytest.mark.parametrize("command", ["backup", "restore"])
def test_a_server_frozen_after_sigterm_is_started_again_once_thawed_and_gone(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, command: str
) -> None:
    config, pid = _failed_frozen(tmp_path, sandbox, ledger, command)
    try:
        # still frozen: a command taking the lock leaves it be (no start beside it, no wait for
        # a thaw), the marker kept
        prune = run_cli(config, "prune", "--dry-run", timeout=120)
        assert prune.returncode == 0, prune.stderr[-3000:]
        assert _is_frozen(pid) and _signalled(tmp_path) == pid
    finally:
        _thaw(pid)
    wait_until(lambda: _gone(pid), 60, "the thawed server acting on the SIGTERM it held")
    assert not sandbox.ping()
    # now influxd is down: every command says so, the next one taking the lock starts it
    told = run_cli(config, "list")
    assert "not started again" in told.stderr + told.stdout, told.stderr[-3000:]
    recovered = run_cli(config, "recover")
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    assert sandbox.ping(), "started again by the next command"
    assert [p for p in sandbox.pids() if p != pid], "a new server runs"
    assert not (tmp_path / "state" / MARKER).exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault(
    "2", "influxd frozen (SIGSTOP) after it got SIGTERM, exits once thawed", "the daemon"
)
def test_the_daemon_starts_a_server_frozen_after_sigterm_once_it_exits(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """No command runs after the failed backup: the daemon alone sees the exit after the thaw."""
    config, pid = _failed_frozen(tmp_path, sandbox, ledger, "backup")
    try:
        with daemon(tmp_path, config) as d:
            d.wait_event("daemon.ready", 120)
            assert _is_frozen(pid) and _signalled(tmp_path) == pid
            os.kill(pid, signal.SIGCONT)
            wait_until(lambda: _gone(pid), 60, "the thawed server acting on the SIGTERM it held")
            wait_until(sandbox.ping, 60, "the daemon starting influxd after the exit")
            wait_until(lambda: not (tmp_path / "state" / MARKER).exists(), 30, "marker cleared")
            assert [p for p in sandbox.pids() if p != pid], "a new server runs"
            assert d.stop() == 0
    finally:
        _thaw(pid)
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
