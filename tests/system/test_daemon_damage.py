"""The daemon against damaged state files, slow starts and kills: a real `influx-backupd run`, a
real influxd, real signals. Nothing in state_dir may end the daemon (a run in flight would be
abandoned with influxd down); a stop or a recovery that waits keeps the daemon visibly alive."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.state import CrashMarker
from tests.conftest import Cli, wait_until, write_config
from tests.system.test_daemon import Datagrams, daemon, filler, runs
from tests.system.test_daemon_metrics import heartbeat, wait_heartbeat

# a string where a time belongs (TypeError in the metrics), an integer no float holds
# (OverflowError in State.load)
DAMAGED_OFFSITE = '{"jobs": {"nightly": {"last_success": "yesterday"}}}'
OVERFLOWING_OFFSITE = f'{{"sent": {{"20260101T000000Z-0000": {"9" * 400}}}, "last_check": 1e300}}'


@contextmanager
def dead_offsite(tmp_path: Path) -> Iterator[str]:
    """An [offsite] section whose endpoint refuses every connection (a bound, unlistened port):
    each sync fails at once and is retried in an hour."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = AKIAX\naws_secret_access_key = y\n")
    creds.chmod(0o600)
    try:
        yield (
            f'\n[offsite]\nbucket = "bkt"\nendpoint_url = "http://127.0.0.1:'
            f'{dead.getsockname()[1]}"\ncredentials_file = "{creds}"\nretries = 1\n'
            'retry_after = "1h"\nhold_unsent = false\n'
        )
    finally:
        dead.close()


def test_damaged_state_files_end_neither_the_daemon_nor_status_nor_a_backup(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: the metrics write at start raised TypeError on offsite.json's "yesterday" (and
    OverflowError on its 400-digit integer): the daemon exited 1 before READY, on every restart;
    `status` and `backup` printed tracebacks."""
    metrics = tmp_path / "m.prom"
    state = tmp_path / "state"
    state.mkdir()
    (state / "offsite.json").write_text(OVERFLOWING_OFFSITE)
    (state / "offsite-damaged").mkdir()
    (state / "offsite-damaged" / "b.json").write_text(
        '{"backup": "b", "job": "nightly", "objects": {"k": "missing"}, "found_at": 1e999}'
    )
    with dead_offsite(tmp_path) as extra:
        config = write_config(tmp_path, sandbox, daemon={"metrics_file": str(metrics)}, extra=extra)
        with daemon(tmp_path, config) as d:
            d.wait_event("daemon.ready", 60)
            assert heartbeat(metrics) is not None, metrics.read_text()
            status = Cli(config)("status")
            assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
            assert "offsite" in status.stdout and "DAMAGED" not in status.stdout, status.stdout
            backup = Cli(config)("backup", "--job", "nightly")
            assert backup.returncode == 0, backup.stderr[-3000:]
            assert "Traceback" not in backup.stderr + backup.stdout, backup.stderr[-3000:]
            assert d.stop() == 0, d.tail()
        told = [e for e in d.events() if e.get("event") == "state.damaged"]
        # said once, not with every metrics write
        assert [e["path"] for e in told] == [str(state / "offsite.json")], told
        assert not any("Traceback" in e.get("line", "") for e in d.events()), d.tail()
    shutil.rmtree(tmp_path / "archives", ignore_errors=True)


def test_a_stop_waiting_on_a_slow_start_keeps_the_heartbeat_whatever_offsite_json_holds(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A SIGTERM in a cold run's stop window, influxd slow to start again (35 s), offsite.json
    damaged meanwhile. Before: the main loop's metrics write raised on it, and the daemon
    exited 1 with its worker (a daemon thread) abandoned, influxd never started again; and
    the stop wrote no heartbeat while it waited."""
    filler(sandbox, 300_000_000)
    metrics = tmp_path / "m.prom"
    slow = tmp_path / "slow-influxd"
    slow.write_text('#!/bin/sh\nsleep 35\nexec "$@"\n')
    slow.chmod(0o755)
    with dead_offsite(tmp_path) as extra:
        config = write_config(
            tmp_path,
            sandbox,
            influxd={"command": [str(slow), *sandbox.command()], "start_timeout": "60s"},
            jobs=[{"name": "often", "every": "1s", "mode": "cold", "copy": "direct"}],
            daemon={"metrics_file": str(metrics)},
            extra=extra,
        )
        with daemon(tmp_path, config) as d:
            d.wait_event("archive.writing", 60)
            (tmp_path / "state" / "offsite.json").write_text(
                DAMAGED_OFFSITE.replace("nightly", "often")
            )
            d.proc.send_signal(signal.SIGTERM)
            d.wait_event("daemon.stopping", 10)
            before = heartbeat(metrics)
            assert before is not None
            # the stop waits on the start (35 s): the heartbeat goes on meanwhile
            wait_until(
                lambda: (heartbeat(metrics) or 0) > before or d.proc.poll() is not None,
                45,
                "a heartbeat during the stop",
            )
            assert d.proc.poll() is None, f"exited {d.proc.returncode} before influxd ran"
            assert not sandbox.ping(), "the heartbeat came only after the start, as the stop ended"
            assert d.proc.wait(60) == 0, d.tail()
    assert sandbox.ping(), "influxd must run again when the daemon has exited"
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    assert [r.status for r in runs(tmp_path)] == ["ok"]
    assert not any("Traceback" in e.get("line", "") for e in d.events()), d.tail()
    shutil.rmtree(tmp_path / "archives", ignore_errors=True)


def test_a_sigterm_during_start_up_recovery_extends_the_start_and_ends_once_influxd_runs(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Recovery of a crash marker, influxd slow to start (15 s). Before: no EXTEND_TIMEOUT_USEC
    and no heartbeat while it waited (systemd's 90 s start timeout could kill it), and a
    SIGTERM meanwhile was acted on only after the scheduler, the worker and READY."""
    metrics = tmp_path / "m.prom"
    slow = tmp_path / "slow-influxd"
    slow.write_text('#!/bin/sh\nsleep 15\nexec "$@"\n')
    slow.chmod(0o755)
    config = write_config(
        tmp_path,
        sandbox,
        influxd={"command": [str(slow), *sandbox.command()], "start_timeout": "40s"},
        daemon={"metrics_file": str(metrics)},
    )
    sandbox.stop()
    CrashMarker(tmp_path / "state").write("20260101T000000Z-0001", job="nightly")
    notify = Datagrams(tmp_path, "notify.sock")
    try:
        with daemon(tmp_path, config, NOTIFY_SOCKET=str(notify.path)) as d:
            d.wait_event("recovery.starting_influxd", 30)
            d.proc.send_signal(signal.SIGTERM)
            notify.wait_for(lambda m: m.startswith(b"EXTEND_TIMEOUT_USEC="), 15)
            # the keep-alive writes the heartbeat just after it asks for more time
            wait_heartbeat(metrics, 0, d.proc, 3)
            assert d.proc.poll() is None and not sandbox.ping()  # still recovering
            assert d.proc.wait(60) == 0, d.tail()
    finally:
        notify.close()
    assert sandbox.ping()
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    names = [e.get("event") for e in d.events()]
    assert "daemon.ready" not in names and "run.due" not in names, names
    assert b"READY=1" not in notify.messages


def test_status_after_a_kill_says_the_daemon_did_not_stop_cleanly(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: "daemon not running", as after a clean stop."""
    config = write_config(tmp_path, sandbox)
    with daemon(tmp_path, config) as d:
        d.wait_event("daemon.ready", 60)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
    text = Cli(config)("status", check=True).stdout
    assert "did not stop cleanly (killed or crashed" in text, text
    assert f"pid {d.proc.pid}" in text and "last alive 20" in text, text
    report = Cli(config).json("status")
    assert report["daemon"]["running"] is False
    assert report["daemon"]["gone"]["pid"] == d.proc.pid, report["daemon"]
    # a clean stop leaves nothing to say
    with daemon(tmp_path, config) as d:
        d.wait_event("daemon.ready", 60)
        assert d.stop() == 0
    assert "daemon    not running\n" in Cli(config)("status", check=True).stdout + "\n"
    assert json.loads(Cli(config)("status", "--json").stdout)["daemon"]["gone"] is None


@pytest.mark.parametrize("under_systemd", [False, True], ids=["foreground", "under a unit"])
def test_a_state_dir_the_daemon_cannot_write_is_a_config_error_not_a_restart_loop(
    tmp_path: Path, under_systemd: bool
) -> None:
    """A state_dir outside the unit's ReadWritePaths= (EROFS there): exit 1 made
    Restart=on-failure start the daemon every 10 s for ever, with no word of the sandbox.
    78 is what RestartPreventExitStatus= leaves alone; the line names the key and, under a
    unit, the fix."""
    server = Sandbox(tmp_path / "server")
    server.write_config()  # not started: the daemon must end before it looks at influxd
    read_only = tmp_path / "ro"
    read_only.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], check=True
    )
    try:
        config = write_config(tmp_path, server)
        text = config.read_text().replace(str(tmp_path / "state"), str(read_only / "state"))
        config.write_text(text)
        env = (
            {**os.environ, "INVOCATION_ID": "0" * 32}
            if under_systemd
            else {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
        )
        done = subprocess.run(
            [sys.executable, "-m", "influx_backupd", "--config", str(config), "run"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert done.returncode == 78, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr[-2000:]
    assert f"daemon.state_dir {read_only / 'state'}: Read-only file system" in lines[0]
    assert ("ReadWritePaths=" in lines[0]) is under_systemd, lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_a_state_dir_made_read_only_under_an_idle_daemon_is_one_line_per_fire_not_a_traceback(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: each scheduled fire logged run.crashed with the whole traceback of a one-line
    StateDirError, and state.write_failed came every second with the same error."""
    config = write_config(tmp_path, sandbox, jobs=[{"name": "often", "every": "2s", "mode": "hot"}])
    state = tmp_path / "state"
    with daemon(tmp_path, config) as d:
        d.wait_event("run.finished", 60)
        subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(state)], check=True)
            wait_until(
                lambda: sum(e.get("event") == "run.not_started" for e in d.events()) >= 2,
                60,
                "two fires that could not start",
            )
            time.sleep(2)  # ticks enough for a repeated state.write_failed
            events = d.events()
        finally:
            subprocess.run(["umount", str(state)], check=False)
        not_started = [e for e in events if e.get("event") == "run.not_started"]
        assert str(state) in not_started[0]["error"], not_started[0]
        assert not [e for e in events if e.get("event") == "run.crashed"], d.tail()
        assert not any("Traceback" in e.get("line", "") for e in events), d.tail()
        failed = [e for e in events if e.get("event") == "state.write_failed"]
        assert 1 <= len(failed) <= 2, failed  # said as it starts failing, not every tick
        # writable again: the runs go on
        after = len([e for e in d.events() if e.get("event") == "run.finished"])
        wait_until(
            lambda: len([e for e in d.events() if e.get("event") == "run.finished"]) > after,
            60,
            "a run once the state dir is writable again",
        )
        assert any(e.get("event") == "state.written_again" for e in d.events())
    assert sandbox.ping()


def test_a_state_dir_removed_under_the_daemon_is_taken_again_and_keeps_a_second_daemon_out(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: the daemon went on holding the lock of the removed file, and a second `run` on
    the same state dir made a new lock there and ran the same jobs beside it."""
    config = write_config(tmp_path, sandbox, jobs=[{"name": "often", "every": "1h", "mode": "hot"}])
    state = tmp_path / "state"
    with daemon(tmp_path, config) as d:
        d.wait_event("daemon.ready", 60)
        shutil.rmtree(state)
        lost = d.wait_event("daemon.lock_lost", 30)
        assert lost["then"] == "taken again" and "import" in lost["detail"], lost
        assert (state / "daemon.lock").exists() and state.stat().st_mode & 0o777 == 0o700
        second = subprocess.run(
            [sys.executable, "-m", "influx_backupd", "--config", str(config), "run"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 75, second.stderr[-2000:]
        assert "another influx-backupd daemon uses state_dir" in second.stderr
        assert d.proc.poll() is None, "the first daemon goes on"
        assert d.stop() == 0, d.tail()
