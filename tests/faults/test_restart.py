"""Class 2 and "influxd fails to start, then the cause goes": influxd is brought back, with
backoff, for as long as it takes, and every command says when it is down (real influxd, real CLI
and daemon; the cause is a real socket holding influxd's HTTP port)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import failure_hooked, wait_until, write_config
from tests.faults.conftest import Ledger, Watched, frozen, hold_port, one_line, run_cli
from tests.integration.test_notify import Receiver
from tests.system.test_daemon import daemon, ran_an_hour_ago

HUNG = ["sleep", "617"]  # what the hanging wrapper of the last test becomes
# Sparse, archived with holes = "fill": the copy (the stop window) lasts long enough to act in.
# A run killed in it copies only what it reached; a run that goes on to its end writes, syncs
# and hashes all of it, so those tests freeze the run in the window (_frozen) and need a
# window only as long as it takes to see an event and send a signal.
FILLER = 1_500_000_000
FROZEN_FILLER = 200_000_000
MARKER = "influxd-stopped.json"


def _filler(sandbox: Sandbox, size: int = FILLER) -> None:
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(size)


@contextmanager
def _frozen(proc: subprocess.Popen[Any], tmp_path: Path, sandbox: Sandbox) -> Iterator[None]:
    """proc (a backup, or the daemon, whose run just said influxd.stopped) frozen in its stop
    window while the body runs (tests.faults.conftest.frozen)."""
    with frozen(proc):
        # the signal landed in the window: influxd is down and not started again
        wait_until(lambda: _stopped_by_us(tmp_path, sandbox), 120, "influxd stopped by the run")
        yield


def _killed_mid_copy(config: Path, sandbox: Sandbox, ledger: Ledger) -> None:
    """ledger.take(), then a backup SIGKILLed as its copy begins: influxd left stopped (the
    filler that makes the copy long enough to aim at removed again)."""
    ledger.take()
    _filler(sandbox)
    backup = Watched(config, "backup")
    backup.wait_event("archive.writing", phase="copy")
    backup.kill()
    (sandbox.data / "filler.bin").unlink()


def _stopped_by_us(tmp_path: Path, sandbox: Sandbox) -> bool:
    return (tmp_path / "state" / MARKER).exists() and not sandbox.pids()


@pytest.mark.fault("no-start", "influxd cannot start until a port is released")
@pytest.mark.parametrize("port", ["HTTP port, foreground backup", "RPC port, foreground backup"])
def test_a_foreground_backup_retries_the_start_until_the_port_is_free(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, port: str
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    config = write_config(tmp_path, sandbox, holes="fill")
    ledger.take()
    _filler(sandbox, FROZEN_FILLER)
    backup = Watched(config, "backup", "--json")
    backup.wait_event("influxd.stopped")
    with _frozen(backup.proc, tmp_path, sandbox):
        holder = hold_port(sandbox.http_port if port.startswith("HTTP") else sandbox.rpc_port)
    try:
        failed = backup.wait_event("influxd.start_failed", timeout=120)
        assert failed["retry_in_s"] > 0, failed
    finally:
        holder.close()  # the cause is gone: the next attempt succeeds
    code, out, err = backup.finish()
    assert code == 0, err[-3000:]
    record = json.loads(out)
    assert record["status"] == "ok", record["error"]
    assert record["extra"]["start_attempts"] >= 2
    (sandbox.data / "filler.bin").unlink()
    lost_points, lost = ledger.settle()
    assert sandbox.ping()
    assert not (tmp_path / "state" / MARKER).exists()
    assert lost_points == 0 and lost == []


def _pinged(receiver: Receiver, path: str) -> list[bytes]:
    return [body for _, p, body in receiver.requests if p == path]


@pytest.mark.fault("no-start", "the first failed start is told while influxd is still down")
def test_the_first_failed_start_is_told_while_influxd_is_still_down(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """A foreground run retries the start for as long as it takes, and its own failure notice
    comes only at its end: the first failed start sets off the failure notifications, the
    heartbeat's /fail and left_down in the metrics at once, once a stop window."""
    receiver = Receiver()
    metrics = tmp_path / "m.prom"
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    config = write_config(
        tmp_path,
        sandbox,
        jobs=[{**job, "heartbeat_url": f"http://{receiver.url}/hb"}],
        daemon={"metrics_file": str(metrics)},
        extra=f'\n[notify]\ntimeout = "10s"\nfailure = ["json://{receiver.url}/failure"]\n',
        holes="fill",
    )
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    ledger.take()
    _filler(sandbox, FROZEN_FILLER)
    backup = Watched(config, "backup", "--json")
    try:
        backup.wait_event("influxd.stopped")
        with _frozen(backup.proc, tmp_path, sandbox):
            holder = hold_port(sandbox.http_port)
        try:
            backup.wait_event("influxd.start_failed", timeout=120)
            wait_until(
                lambda: receiver.posts("/failure") and _pinged(receiver, "/hb/fail"),
                30,
                "the alarm, while influxd is down",
            )
            assert not sandbox.pids(), "told while influxd was still down"
            assert (
                'influx_backupd_influxd_left_down{backup_instance="m"} 1\n' in metrics.read_text()
            )
            backup.wait_event("influxd.start_failed", timeout=60)  # a second attempt failed too
        finally:
            holder.close()
        code, out, err = backup.finish()
    finally:
        receiver.close()
    assert code == 0, err[-3000:]
    assert json.loads(out)["status"] == "ok"
    [alarm] = receiver.posts("/failure")  # once for the stop window, not once an attempt
    assert "influxd did not start again" in alarm["title"]
    assert "job nightly stopped influxd" in alarm["message"]
    assert len(_pinged(receiver, "/hb/fail")) == 1
    assert 'influx_backupd_influxd_left_down{backup_instance="m"} 0\n' in metrics.read_text()
    (sandbox.data / "filler.bin").unlink()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("2", "the daemon keeps starting influxd between jobs", "port held, then freed")
def test_the_daemon_keeps_trying_says_so_and_tells_on_failure(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    job, hook = failure_hooked(tmp_path, every="1h")
    metrics = tmp_path / "metrics.prom"
    config = write_config(
        tmp_path, sandbox, jobs=[job], daemon={"metrics_file": str(metrics)}, holes="fill"
    )
    ran_an_hour_ago(tmp_path / "state", "nightly")  # caught up at start
    ledger.take()
    _filler(sandbox, FROZEN_FILLER)
    holder: socket.socket | None = None
    with daemon(tmp_path, config) as d:
        try:
            d.wait_event("influxd.stopped", 120)  # the caught-up run's stop
            with _frozen(d.proc, tmp_path, sandbox):
                holder = hold_port(sandbox.http_port)
            wait_until(
                hook.called,
                180,
                "on_failure told of the failed start",
            )
            told = hook.told()
            assert told["INFLUX_BACKUPD_STATUS"] == "failed"
            assert "start" in told["INFLUX_BACKUPD_ERROR"], told
            # Between jobs it keeps trying, and says so: status line, status, metrics.
            wait_until(
                lambda: "influxd down" in (run_cli(config, "status").stdout or ""),
                60,
                "status saying influxd is down",
            )
            status = run_cli(config, "status", "--json")
            report = json.loads(status.stdout)
            assert "influxd down" in report["daemon"]["status"], report["daemon"]
            assert "retry" in report["daemon"]["status"], report["daemon"]
            wait_until(
                lambda: (
                    metrics.exists()
                    and 'influx_backupd_influxd_left_down{backup_instance="metrics"} 1'
                    in metrics.read_text()
                ),
                60,
                "influx_backupd_influxd_left_down 1 in the metrics",
            )
            assert not sandbox.ping()
            holder.close()
            holder = None
            wait_until(sandbox.ping, 120, "the daemon starting influxd once the port is free")
            wait_until(
                lambda: (
                    'influx_backupd_influxd_left_down{backup_instance="metrics"} 0'
                    in metrics.read_text()
                ),
                60,
                "influx_backupd_influxd_left_down 0",
            )
            wait_until(
                lambda: "influxd down" not in run_cli(config, "status").stdout,
                60,
                "status no longer saying influxd is down",
            )
            assert not (tmp_path / "state" / MARKER).exists()
            assert d.stop() == 0
        finally:
            if holder is not None:
                holder.close()
    (sandbox.data / "filler.bin").unlink()
    lost_points, lost = ledger.settle()
    assert sandbox.ping()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("2", "every command reports a pending crash marker", "after a SIGKILL mid-copy")
def test_every_command_reports_influxd_left_stopped_and_what_brings_it_back(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    config = write_config(tmp_path, sandbox, holes="fill")
    _killed_mid_copy(config, sandbox, ledger)
    assert not sandbox.ping(), "killed inside the stop window: influxd is down"

    for args in (("list",), ("status",), ("check-config",), ("list", "--json")):
        done = run_cli(config, *args)
        # status alone exits 1 for it: `influx-backupd status || alert`
        assert done.returncode == (1 if args == ("status",) else 0), done.stderr
        line = one_line(done.stderr)
        assert "influxd" in line and "stopped" in line, line
        assert "not started again" in line, line
        assert "`influx-backupd recover`" in line, "it tells what brings influxd back"
        assert not sandbox.ping(), f"{args} must not touch anything"
    status = run_cli(config, "status")
    assert "influxd down" in status.stdout, status.stdout

    done = run_cli(config, "verify", "--all")  # takes the lock: starts influxd, says so
    assert done.returncode == 0, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert "starts it again" in line, line
    assert sandbox.ping()
    quiet = run_cli(config, "list")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert run_cli(config, "status").returncode == 0, "influxd is back"
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault(
    "no-start", "influxd cannot start until a port is released", "recovery by the next command"
)
def test_the_next_command_keeps_trying_to_start_influxd_a_killed_run_left_stopped(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    config = write_config(tmp_path, sandbox, holes="fill")
    _killed_mid_copy(config, sandbox, ledger)
    holder = hold_port(sandbox.http_port)
    try:
        recovery = Watched(config, "prune", "--dry-run")
        recovery.wait_event("influxd.start_failed", timeout=120)
        recovery.wait_event("influxd.start_failed", timeout=120, attempt=2)  # it goes on
        left = run_cli(config, "list")  # meanwhile: the failed attempts are counted
        assert "start attempts failed" in one_line(left.stderr), left.stderr
    finally:
        holder.close()
    code, _out, err = recovery.finish()
    assert code == 0, err[-3000:]
    assert sandbox.ping()
    assert not (tmp_path / "state" / MARKER).exists()
    runs = json.loads(run_cli(config, "list", "--json").stdout)
    assert [r["status"] for r in runs] == ["interrupted"]
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault(
    "2",
    "the daemon keeps starting influxd between jobs",
    "a foreground backup killed beside an idle daemon",
)
def test_an_idle_daemon_starts_influxd_a_killed_foreground_backup_left_stopped(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """An operator's `backup` killed (SIGKILL, the OOM killer) while influxd was stopped,
    beside a daemon whose next run is hours away: the daemon starts influxd within seconds,
    as `status` says it does (it waited for its next scheduled run before)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    config = write_config(
        tmp_path, sandbox, holes="fill"
    )  # nightly at 03:00: the daemon stays idle
    with daemon(tmp_path, config) as d:
        d.wait_event("daemon.ready", 120)
        _killed_mid_copy(config, sandbox, ledger)
        assert _stopped_by_us(tmp_path, sandbox)
        found = d.wait_event("daemon.left_down_found", 60)
        assert found["run_id"], found
        wait_until(sandbox.ping, 120, "influxd started by the idle daemon")
        wait_until(lambda: not (tmp_path / "state" / MARKER).exists(), 60, "the marker cleared")
    runs = json.loads(run_cli(config, "list", "--json").stdout)
    assert [r["status"] for r in runs] == ["interrupted"]
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault(
    "2", "the daemon keeps starting influxd between jobs", "started after a kill, port held"
)
def test_a_daemon_started_after_a_kill_tells_on_failure_and_keeps_trying(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    job, hook = failure_hooked(tmp_path)
    config = write_config(tmp_path, sandbox, jobs=[job], holes="fill")
    _killed_mid_copy(config, sandbox, ledger)
    holder: socket.socket | None = hold_port(sandbox.http_port)
    try:
        with daemon(tmp_path, config) as d:
            # Recovery could not start influxd: the killed run is recorded and its on_failure
            # told now, not once influxd is back; the daemon is up and says what it does.
            d.wait_event("daemon.ready", 120)
            wait_until(
                hook.called,
                120,
                "on_failure told of the killed run",
            )
            told = hook.told()
            assert told["INFLUX_BACKUPD_STATUS"] == "interrupted", told
            assert "could not be started again" in told["INFLUX_BACKUPD_ERROR"], told
            wait_until(
                lambda: (
                    "retrying"
                    in json.loads(run_cli(config, "status", "--json").stdout)["daemon"]["status"]
                ),
                60,
                "the status line saying it retries",
            )
            assert not sandbox.ping()
            assert holder is not None
            holder.close()
            holder = None
            wait_until(sandbox.ping, 120, "the daemon starting influxd once the port is free")
            wait_until(
                lambda: not (tmp_path / "state" / MARKER).exists(), 60, "the crash marker cleared"
            )
            assert d.stop() == 0
    finally:
        if holder is not None:
            holder.close()
    lost_points, lost = ledger.settle()
    assert sandbox.ping()
    assert lost_points == 0 and lost == []


@pytest.mark.fault(
    "no-start",
    "another process answers /ping on influxd's port while influxd starts",
    "foreground backup",
)
def test_an_answer_from_another_process_on_the_port_is_not_taken_for_influxd(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """Before: its 204 counted as "influxd ready", the run said ok, and influxd, which had
    failed to bind its port and exited, stayed down with no crash marker left to say so."""
    from tests.integration.test_sandbox_ports import answering_pings

    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    config = write_config(tmp_path, sandbox, holes="fill")
    ledger.take()
    _filler(sandbox, FROZEN_FILLER)
    backup = Watched(config, "backup", "--json")
    backup.wait_event("influxd.stopped")
    with ExitStack() as answering:
        with _frozen(backup.proc, tmp_path, sandbox):  # influxd is stopped: its port is free
            answering.enter_context(answering_pings(sandbox.http_port))
        failed = backup.wait_event("influxd.start_failed", timeout=120)
    assert "another process answers there" in failed["error"], failed
    status, out, err = backup.finish()
    (sandbox.data / "filler.bin").unlink()
    assert status == 0, err[-2000:]
    assert json.loads(out)["status"] == "ok"
    assert sandbox.pids() and sandbox.ping(), "influxd itself runs again"
    assert not (tmp_path / "state" / MARKER).exists()
    assert ledger.settle() == (0, [])


@pytest.mark.fault(
    "no-start",
    "another process answers /ping on influxd's port while influxd starts",
    "recovery after a kill",
)
def test_recovery_does_not_take_an_answer_from_another_process_for_influxd(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """Before: recovery saw the 204, said influxd.already_running and cleared the crash marker;
    influxd stayed down and nothing was left to say so."""
    from tests.integration.test_sandbox_ports import answering_pings

    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    config = write_config(tmp_path, sandbox, holes="fill")
    _killed_mid_copy(config, sandbox, ledger)
    assert _stopped_by_us(tmp_path, sandbox)
    with answering_pings(sandbox.http_port):
        recovery = Watched(config, "prune", "--dry-run")
        failed = recovery.wait_event("influxd.start_failed", timeout=120)
        assert "another process answers there" in failed["error"], failed
    status, _out, err = recovery.finish()
    assert status == 0, err[-2000:]
    assert sandbox.pids() and sandbox.ping(), "influxd itself runs again"
    assert not (tmp_path / "state" / MARKER).exists()
    assert ledger.settle() == (0, [])


@pytest.mark.fault(
    "no-start",
    "influxd's command neither answers nor exits (a wrapper that hangs)",
    "foreground backup",
)
def test_a_start_that_hangs_is_waited_for_never_started_a_second_time(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """Before: each attempt ran the command again beside the one still running (a wrapper's
    command line does not name influxdb.conf, so it was not found): one more process every
    attempt, and two servers on the same files once they came up."""
    import psutil

    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    hang = tmp_path / "hang.sh"
    # exec: the process then runs `sleep 617`, its command line no longer names influxdb.conf
    hang.write_text("#!/bin/sh\nexec sleep 617\n")
    hang.chmod(0o755)
    config = write_config(
        tmp_path,
        sandbox,
        influxd={"command": [str(hang), "-config", str(sandbox.conf)], "start_timeout": "2s"},
    )
    ledger.take()
    backup = Watched(config, "backup")
    try:
        for attempt in (1, 2):
            backup.wait_event("influxd.start_failed", timeout=180, attempt=attempt)
        # its own (started by this backup; another test may hang its own beside it)
        wrappers = [
            p
            for p in psutil.process_iter(["cmdline", "ppid"])
            if p.info["cmdline"] == HUNG and p.info["ppid"] == backup.proc.pid
        ]
        assert len(wrappers) == 1, [p.info["cmdline"] for p in wrappers]
    finally:
        backup.kill()
        for proc in psutil.process_iter(["cmdline"]):
            if proc.info["cmdline"] == HUNG:
                proc.kill()
        sandbox.start()  # influxd itself again, as the operator would
    assert ledger.settle()[0] == 0


@pytest.mark.fault(
    "no-start", "influxd cannot start until a port is released", "daemon SIGTERMed meanwhile"
)
def test_a_daemon_stopped_while_influxd_cannot_start_exits_non_zero(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """Before: the run gave up, the worker returned (the daemon was stopping) and the daemon
    exited 0 with influxd down: Restart=on-failure did not bring it back, nothing retried."""
    config = write_config(
        tmp_path, sandbox, jobs=[{"name": "often", "every": "3s", "copy": "direct"}], holes="fill"
    )
    ledger.take()
    _filler(sandbox, FROZEN_FILLER)
    holder: socket.socket | None = None
    try:
        with daemon(tmp_path, config) as d:
            d.wait_event("influxd.stopped", 60)
            with _frozen(d.proc, tmp_path, sandbox):
                holder = hold_port(sandbox.http_port)
            d.wait_event("influxd.start_failed", 120)
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(120) == 1, d.tail()
            [said] = [e for e in d.events() if e.get("event") == "daemon.exit_influxd_down"]
            assert "Restart=on-failure" in said["error"], said
        assert (tmp_path / "state" / MARKER).exists() and not sandbox.ping()
        holder.close()
        holder = None
        # what the restarted daemon (or any lock-taking command) does: start it again
        assert run_cli(config, "prune", "--dry-run").returncode == 0
    finally:
        if holder is not None:
            holder.close()
    (sandbox.data / "filler.bin").unlink()
    lost_points, lost = ledger.settle()
    assert sandbox.ping()
    assert not (tmp_path / "state" / MARKER).exists()
    assert lost_points == 0 and lost == []
