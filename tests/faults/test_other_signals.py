"""Signals other than TERM, INT and HUP inside the stop window. Their default action ends the
process: before, `kill -USR1` on a foreground backup ended it (exit 138) and `kill -USR2` the
daemon, with influxd left stopped until the next command or systemd's restart. Now every signal
that would end us is taken as SIGTERM is: the run ends (the daemon's finishes first) and influxd
runs again before we exit."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import wait_until, write_config
from tests.faults.conftest import (
    Ledger,
    Watched,
    backup_frozen_in_window,
    frozen,
    held_env,
    kill_backup_mid_copy,
    run_cli,
)
from tests.system.test_daemon import daemon, filler, ran_an_hour_ago

FILLER = 200_000_000  # zeros, copied whole (holes = "fill")
SIGNALS = {
    "SIGINT": signal.SIGINT,  # Ctrl-C: exit 1, as for any interruption
    "SIGUSR1": signal.SIGUSR1,
    "SIGQUIT": signal.SIGQUIT,
    "SIGALRM": signal.SIGALRM,
    "SIGRTMIN+3": signal.SIGRTMIN + 3,
}


@pytest.mark.fault("2", "a signal other than TERM/INT/HUP in the stop window", "foreground backup")
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_foreground_backup_given_another_ending_signal_starts_influxd_first(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, name: str
) -> None:
    with backup_frozen_in_window(tmp_path, sandbox, ledger) as (config, backup):
        backup.proc.send_signal(SIGNALS[name])  # delivered as it goes on
    code, out, err = backup.finish()
    assert code == 1, err[-3000:]
    assert f"interrupted by {name}" in out, out  # the record, as for SIGTERM
    assert "Traceback" not in err, err[-3000:]
    assert sandbox.ping(), "influxd runs again before the backup returns"
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    runs = json.loads(run_cli(config, "list", "--json").stdout)
    assert [r["status"] for r in runs] == ["interrupted"]
    lost_points, _ = ledger.settle()
    assert lost_points == 0


def _a_daemon_run_due_with_a_long_window(tmp_path: Path, sandbox: Sandbox, ledger: Ledger) -> Path:
    """A config whose hourly cold job is due as the daemon starts (it ran an hour ago), with a
    filler that keeps its stop window open long enough to see the stop in the log and act."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    config = write_config(
        tmp_path, sandbox, jobs=[{"name": "nightly", "every": "1h"}], holes="fill"
    )
    ran_an_hour_ago(tmp_path / "state", "nightly")
    ledger.take()
    filler(sandbox, FILLER)
    return config


@pytest.mark.fault("2", "a signal other than TERM/INT/HUP in the stop window", "the daemon")
def test_the_daemon_given_sigusr2_in_a_run_finishes_it_and_stops_cleanly(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    config = _a_daemon_run_due_with_a_long_window(tmp_path, sandbox, ledger)
    with daemon(tmp_path, config) as d:
        d.wait_event("influxd.stopped", 120)
        with frozen(d.proc):
            assert not sandbox.pids()
            d.proc.send_signal(signal.SIGUSR2)
        assert d.proc.wait(120) == 0, d.tail()
        events = [e for e in d.events() if e.get("event") == "daemon.stopping"]
        assert events and events[-1]["signal"] == "SIGUSR2", d.tail()
    assert sandbox.ping(), "influxd runs again before the daemon exits"
    runs = json.loads(run_cli(config, "list", "--json").stdout)
    assert runs[-1]["status"] == "ok", runs[-1]
    lost_points, _ = ledger.settle()
    assert lost_points == 0


@pytest.mark.fault("2", "Ctrl-Z (SIGTSTP) in the stop window", "foreground backup")
def test_ctrl_z_in_the_stop_window_stops_the_backup_once_influxd_runs_again(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """Before, Ctrl-Z on a foreground cold backup stopped it at once, influxd down until the
    operator typed `fg`. The stop now waits until influxd runs again; `fg` then finishes it."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    config = write_config(tmp_path, sandbox, holes="fill")
    ledger.take()
    filler(sandbox, FILLER)
    backup = Watched(config, "backup", own_group=True)
    backup.wait_event("archive.writing", phase="copy")
    backup.proc.send_signal(signal.SIGTSTP)
    assert not sandbox.pids(), "the signal came inside the stop window"
    _ctrl_z_obeyed_once_influxd_answers(backup, sandbox)
    runs = json.loads(run_cli(config, "list", "--json").stdout)
    assert [r["status"] for r in runs] == ["ok"]
    lost_points, _ = ledger.settle()
    assert lost_points == 0


def _stopped_by_job_control(proc: subprocess.Popen[str]) -> None:
    """Until proc is stopped (state T), failing if it exits or takes two minutes."""
    process = psutil.Process(proc.pid)

    def stopped() -> bool:
        assert proc.poll() is None, f"exited {proc.returncode}"
        return process.status() == psutil.STATUS_STOPPED

    wait_until(stopped, 120, "it stopped (state T)")


def _ctrl_z_obeyed_once_influxd_answers(command: Watched, sandbox: Sandbox) -> None:
    """After a SIGTSTP sent while influxd was down because of command: stopped only once
    influxd answers; `fg` (SIGCONT) then lets it end ok, having said why it waited."""
    _stopped_by_job_control(command.proc)
    assert sandbox.ping(), "influxd answers before the command stops"
    command.proc.send_signal(signal.SIGCONT)  # `fg`
    code, _, err = command.finish()
    assert code == 0, err[-3000:]
    assert "SIGTSTP: influxd is stopped for this run" in err, err[-3000:]


@pytest.mark.fault("2", "Ctrl-Z (SIGTSTP) in the stop window", "the daemon")
def test_the_daemon_given_sigtstp_in_a_run_stops_once_influxd_runs_again(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """The daemon's runs are in its worker thread: `kill -TSTP` in one's window waits there
    too, and the daemon goes on with its schedule after SIGCONT."""
    config = _a_daemon_run_due_with_a_long_window(tmp_path, sandbox, ledger)
    # the copy held 3 s: the window outlasts the test's look at the log on a loaded machine (a
    # 200 MB filler alone is copied in a fifth of a second: CI once saw it over before the signal)
    with daemon(
        tmp_path, config, **held_env(tmp_path, "influx_backupd.jobs.cold:write_archive", 3.0)
    ) as d:
        d.wait_event("influxd.stopped", 120)
        d.proc.send_signal(signal.SIGTSTP)
        assert not sandbox.pids(), "the signal came inside the stop window"
        _stopped_by_job_control(d.proc)
        assert sandbox.ping(), "influxd runs again before the daemon stops"
        d.proc.send_signal(signal.SIGCONT)
        d.wait_event("run.finished", 120)
        assert d.proc.poll() is None, d.tail()
    runs = json.loads(run_cli(config, "list", "--json").stdout)
    assert runs[-1]["status"] == "ok", runs[-1]
    lost_points, _ = ledger.settle()
    assert lost_points == 0


@pytest.mark.fault("2", "Ctrl-Z (SIGTSTP) while recovery starts influxd", "recover")
def test_ctrl_z_while_recovery_starts_influxd_stops_once_it_answers(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """After a killed run, the next command starts influxd again: obeyed at once, a Ctrl-Z there
    stopped it before influxd answered (or before a failed start was tried again). It now
    waits, as in the stop window. The command here is a wrapper that takes seconds to exec
    influxd: a start slow enough to aim at."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    slow = tmp_path / "slow-influxd.sh"
    slow.write_text(f'#!/bin/sh\nsleep 4\nexec {sandbox.binary} "$@"\n')
    slow.chmod(0o755)
    config = write_config(
        tmp_path,
        sandbox,
        holes="fill",
        influxd={"command": [str(slow), "-config", str(sandbox.conf)]},
    )
    ledger.take()
    kill_backup_mid_copy(config, sandbox, FILLER)
    assert not sandbox.ping(), "the killed backup left influxd stopped"
    recovery = Watched(config, "recover", own_group=True)
    recovery.wait_event("recovery.starting_influxd")
    recovery.proc.send_signal(signal.SIGTSTP)
    assert not sandbox.ping(), "the signal came before influxd answered"
    _ctrl_z_obeyed_once_influxd_answers(recovery, sandbox)
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    lost_points, _ = ledger.settle()
    assert lost_points == 0
