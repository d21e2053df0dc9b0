"""Class 1: a run that could not have succeeded must not stop influxd (real influxd, real CLI).

The `command` must be able to start influxd again the way the config says, the process found
must be the one the config names, and a server that does not answer (frozen) is never signalled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, wait_until, write_config
from tests.faults.conftest import Ledger, Watched, frozen, one_line, run_cli

MARKER = "influxd-stopped.json"


def _missing(tmp_path: Path, sandbox: Sandbox) -> list[str]:
    return [str(tmp_path / "no-such-dir" / "influxd"), "run", "-config", str(sandbox.conf)]


def _not_executable(tmp_path: Path, sandbox: Sandbox) -> list[str]:
    binary = tmp_path / "bin" / "influxd"
    binary.parent.mkdir()
    shutil.copyfile(sandbox.binary, binary)
    binary.chmod(0o644)
    return [str(binary), "run", "-config", str(sandbox.conf)]


def _a_directory(tmp_path: Path, sandbox: Sandbox) -> list[str]:
    (tmp_path / "bin").mkdir()
    return [str(tmp_path / "bin"), "run", "-config", str(sandbox.conf)]


def _other_conf(tmp_path: Path, sandbox: Sandbox) -> list[str]:
    other = tmp_path / "other" / "influxdb.conf"
    other.parent.mkdir()
    shutil.copyfile(sandbox.conf, other)
    return [sandbox.binary, "run", "-config", str(other)]


def _no_conf(tmp_path: Path, sandbox: Sandbox) -> list[str]:
    return [sandbox.binary, "run"]  # influxd would read /etc/influxdb/influxdb.conf


COMMANDS = {
    "missing binary": _missing,
    "non-executable binary": _not_executable,
    "binary is a directory": _a_directory,
    "names another influxdb.conf": _other_conf,
    "names no influxdb.conf": _no_conf,
}


@pytest.mark.fault("1", "a command that cannot start influxd again")
@pytest.mark.parametrize("variant", list(COMMANDS))
def test_a_command_that_cannot_start_influxd_is_refused_before_anything_is_stopped(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, variant: str
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    good = run_cli(write_config(tmp_path, sandbox), "backup", "--json")  # one to restore
    assert good.returncode == 0, good.stderr[-3000:]
    command = COMMANDS[variant](tmp_path, sandbox)
    config = write_config(tmp_path, sandbox, influxd={"command": command})
    pid = sandbox.pids()
    ledger.take()
    stored = sorted(p.name for p in (tmp_path / "archives").iterdir())

    checked = run_cli(config, "check-config")
    assert checked.returncode == 78, checked.stdout + checked.stderr
    line = one_line(checked.stderr)
    assert "influxd.command" in line, line
    assert str(config) in line, "the line names the config file"

    restore = ("restore", json.loads(good.stdout)["id"], "--yes")
    for args in (("backup", "--mode", "cold"), ("backup", "--mode", "auto"), restore):
        done = run_cli(config, *args)
        assert done.returncode == 78, done.stdout + done.stderr
        line = one_line(done.stderr)
        assert "influxd.command" in line, line
    lost_points, lost = ledger.settle()
    assert sandbox.pids() == pid, "the same influxd process still runs: never stopped"
    assert sandbox.ping()
    assert not (tmp_path / "state" / MARKER).exists()
    assert lost_points == 0 and lost == []
    assert sorted(p.name for p in (tmp_path / "archives").iterdir()) == stored, "nothing written"


@pytest.mark.fault("1", "the process found is not the one the config names", "stale pidfile")
def test_a_pidfile_naming_another_process_never_gets_it_signalled(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    pidfile = tmp_path / "influxd.pid"
    # A pid reused by an unrelated process (as after a reboot): it must never get SIGTERM.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        pidfile.write_text(f"{bystander.pid}\n")
        config = write_config(tmp_path, sandbox, influxd={"pidfile": str(pidfile)})
        ledger.take()
        done = run_cli(config, "backup", "--json")
        assert "Traceback" not in done.stderr
        assert bystander.poll() is None, "the unrelated process was signalled"
        assert psutil.Process(bystander.pid).status() != psutil.STATUS_STOPPED
        lost_points, lost = ledger.settle()
        assert sandbox.ping()
        assert lost_points == 0 and lost == []
        # Either the real influxd was found by its command line and backed up, or the run was
        # refused with one line; both leave influxd serving.
        if done.returncode != 0:
            one_line(done.stderr)
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize(
    "variant", ["forks influxd", "forks and traps SIGTERM", "traps SIGTERM, pidfile names it"]
)
@pytest.mark.fault("1", "the process found is not the one the config names")
def test_a_wrapper_that_runs_influxd_as_its_child_gets_influxd_itself_stopped(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, variant: str
) -> None:
    """`influxd "$@" & wait`: before, the wrapper got the SIGTERM and exited, influxd ran on
    (the copy then failed on files in use; on an empty server the run said ok, copied from a
    running influxd). Now influxd itself is stopped and the wrapper ends with it."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    binary = sandbox.binary
    trap = "trap '' TERM\n" if "traps" in variant else ""
    wrapper = tmp_path / "influxd-wrapper"
    wrapper.write_text(f'#!/bin/sh\n{trap}{binary} "$@" &\nwait\n')
    wrapper.chmod(0o755)
    command = [str(wrapper), "run", "-config", str(sandbox.conf)]
    sandbox.stop()
    started = subprocess.Popen(command, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not sandbox.ping():
            assert time.monotonic() < deadline, "the wrapped influxd did not come up"
            time.sleep(0.2)
        influxd: dict[str, object] = {"command": command}
        if "pidfile" in variant:
            # what `systemd-run`'s MainPID or a start-stop-daemon records: the wrapper's pid
            pidfile = tmp_path / "influxd.pid"
            pidfile.write_text(f"{started.pid}\n")
            influxd["pidfile"] = str(pidfile)
        config = write_config(tmp_path, sandbox, influxd=influxd)
        ledger.take()
        done = run_cli(config, "backup", "--json")
        lost_points, lost = ledger.settle()
        assert done.returncode == 0, done.stderr[-3000:]
        record = json.loads(done.stdout)
        assert record["status"] == "ok" and record["downtime_s"], record
        assert started.wait(timeout=30) is not None, "the first wrapper ended with its influxd"
        assert sandbox.ping()
        assert lost_points == 0 and lost == []
    finally:
        started.kill()
        started.wait()


def _pending_signals(pid: int) -> int:
    """The signals pending for pid (its threads' and the process's), as a bit mask."""
    mask = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("SigPnd:", "ShdPnd:")):
                mask |= int(line.split()[1], 16)
    return mask


def _frozen_check(tmp_path: Path, sandbox: Sandbox, pid: int, done: tuple[int, str, str]) -> None:
    code, out, err = done
    assert code == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    record = json.loads(out)
    assert record["status"] == "failed" and record["archive"] is None, record
    error = record["error"]
    assert "not running" not in error, "a stopped process exists: it is not 'not running'"
    assert str(pid) in error and "answer" in error, error
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    assert _pending_signals(pid) & (1 << (signal.SIGTERM - 1)) == 0, "SIGTERM left pending"
    assert not (tmp_path / "state" / MARKER).exists()
    os.kill(pid, signal.SIGCONT)
    # Thawed, it carries on serving: no signal was waiting for it.
    deadline = time.monotonic() + 30
    while not sandbox.ping():
        assert time.monotonic() < deadline, "influxd did not answer again after SIGCONT"
        time.sleep(0.1)
    time.sleep(2)
    assert psutil.pid_exists(pid) and sandbox.pids() == [pid]
    assert sandbox.ping()


@pytest.mark.fault("1", "a frozen server (SIGSTOP) is never sent SIGTERM", "frozen before the run")
def test_a_frozen_server_is_not_signalled(tmp_path: Path, sandbox: Sandbox, ledger: Ledger) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    config = write_config(tmp_path, sandbox)
    ledger.take()
    [pid] = sandbox.pids()
    os.kill(pid, signal.SIGSTOP)
    try:
        backup = Watched(config, "backup", "--json")
        _frozen_check(tmp_path, sandbox, pid, backup.finish())
    finally:
        os.kill(pid, signal.SIGCONT)
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault(
    "1", "a frozen server (SIGSTOP) is never sent SIGTERM", "frozen during the pre-stop queries"
)
def test_a_server_frozen_after_the_run_began_is_not_signalled(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 20_000)
    config = write_config(tmp_path, sandbox)
    ledger.take()
    [pid] = sandbox.pids()
    backup = Watched(config, "backup", "--json")
    try:
        backup.wait_event("run.started")
        os.kill(pid, signal.SIGSTOP)
        _frozen_check(tmp_path, sandbox, pid, backup.finish())
    finally:
        os.kill(pid, signal.SIGCONT)
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("1", "a command that cannot start influxd again", "service unit does not exist")
def test_a_service_that_does_not_exist_is_refused_before_anything_is_stopped(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd is not PID 1 here: the stand-in systemctl answers LoadState as systemd does
    units = tmp_path / "systemd"
    units.mkdir()
    monkeypatch.setenv("STANDIN_SYSTEMCTL_DIR", str(units))
    monkeypatch.setenv("PATH", f"{STAND_INS / 'bin'}:{os.environ['PATH']}")
    config = write_config(
        tmp_path, sandbox, influxd={"command": None, "service": "influxdb-typo.service"}
    )
    pid = sandbox.pids()
    ledger.take()
    for args in (("check-config",), ("backup",)):
        done = run_cli(config, *args)
        assert done.returncode == 78, done.stdout + done.stderr
        line = one_line(done.stderr)
        assert "influxdb-typo.service" in line and "does not exist" in line, line
    assert "stop influxdb-typo.service" not in (units / "calls.log").read_text()
    lost_points, lost = ledger.settle()
    assert sandbox.pids() == pid and sandbox.ping()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("intruder", "influxd started by someone else inside the stop window")
@pytest.mark.parametrize("variant", ["serving when the copy ends", "frozen when the copy ends"])
def test_a_server_started_by_someone_else_during_the_copy_fails_the_run(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, variant: str
) -> None:
    """An operator or a supervisor starts influxd while the cold copy runs. Before: the run
    said ok (no downtime, no start) for files read while a live server wrote them, and its
    log line said influxd "was not stopped by this run"."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    # sparse, filled: the copy lasts long enough to freeze the run in it (frozen)
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(200_000_000)
    config = write_config(tmp_path, sandbox, holes="fill")
    ledger.take()
    backup = Watched(config, "backup", "--json")
    backup.wait_event("archive.writing", phase="copy")
    other_frozen = variant.startswith("frozen")
    with frozen(backup.proc):  # the copy goes on once the other server is as the variant says
        other = subprocess.Popen(
            sandbox.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if other_frozen:
            # found, not answering: never doubled, never signalled
            os.kill(other.pid, signal.SIGSTOP)
        else:
            wait_until(sandbox.ping, 60, "the other server answering")
    try:
        code, out, err = backup.finish()
        if other_frozen:
            os.kill(other.pid, signal.SIGCONT)
            wait_until(sandbox.ping, 60, "the thawed server answering")
        assert code == 1 and "Traceback" not in err, err[-3000:]
        record = json.loads(out)
        assert record["status"] == "failed", record
        assert f"influxd (pid {other.pid}) was started by something else" in record["error"]
        assert record["archive"] is None
        assert not list((tmp_path / "archives").glob("*.tar")), "a torn copy kept"
        assert sandbox.ping() and other.poll() is None, "the other server is left serving"
        assert not (tmp_path / "state" / MARKER).exists()
        (sandbox.data / "filler.bin").unlink()
        lost_points, lost = ledger.settle()
        assert lost_points == 0 and lost == []
    finally:
        other.terminate()
        other.wait(60)
        sandbox.start()


@pytest.mark.fault("intruder", "a process that names influxdb.conf but is no server")
@pytest.mark.parametrize("when", ["open before the run", "opened during the copy"])
def test_a_tail_of_influxdb_conf_is_no_server(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, when: str
) -> None:
    """`tail -f influxdb.conf` (a pager, an editor). Before: taken for a server. Opened during
    the copy it failed the run as an intruder, deleted the good archive, and influxd stayed
    down while the tail ran; open before the run, the stop waited for it and copied nothing."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    config = write_config(tmp_path, sandbox, influxd={"stop_timeout": "5s"})
    ledger.take()
    tail: subprocess.Popen[bytes] | None = None
    try:
        if when.startswith("open"):
            tail = subprocess.Popen(["tail", "-f", str(sandbox.conf)], stdout=subprocess.DEVNULL)
            backup = Watched(config, "backup", "--json")
        else:
            backup = Watched(config, "backup", "--json")
            backup.wait_event("influxd.stopped")
            tail = subprocess.Popen(["tail", "-f", str(sandbox.conf)], stdout=subprocess.DEVNULL)
        code, out, err = backup.finish()
        assert code == 0, err[-3000:]
        record = json.loads(out)
        assert record["status"] == "ok" and record["downtime_s"], record
        assert sandbox.ping() and tail.poll() is None, "influxd serves, the tail runs on"
        assert ledger.settle() == (0, [])
    finally:
        if tail is not None:
            tail.kill()
            tail.wait()
