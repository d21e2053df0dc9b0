"""A pid written down in a state file counts only while it is still the process it named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import psutil
import pytest

from influx_backupd.core.config import Config
from influx_backupd.core.processes import identity, names_same, own_identity, same_as, same_process
from influx_backupd.daemon.status import STATE_FILE, read_daemon_state
from influx_backupd.report.progress import read_published

ME = psutil.Process()


def test_this_process_is_itself() -> None:
    me = own_identity()
    assert me is not None and isinstance(me.get("start"), str)
    found = same_as(me)
    assert found is not None and found.pid == ME.pid
    assert same_as(json.loads(json.dumps(me))) is not None  # as a state file keeps it


def test_a_step_of_the_clock_does_not_make_a_process_another() -> None:
    """CI flake at 0d0b6b3: /proc/stat's btime (whole seconds, moved by NTP's slew and every
    clock step) ticked over during the suite, and this very process read a second off its
    recorded create_time: a live lock waiter, scratch owner or crash marker's influxd would
    have been taken for gone. The start ticks since boot do not move."""
    me = own_identity()
    assert me is not None
    for step in (-1.0, 1.0, -3600.0, 86400.0):
        created = cast(float, me["create_time"]) + step
        assert same_as({**me, "create_time": created}) is not None, step
        assert names_same({**me, "create_time": created}, me), step


def test_a_reused_pid_is_another_process() -> None:
    me = own_identity()
    assert me is not None
    boot, ticks = str(me["start"]).rsplit(":", 1)
    another = f"{boot}:{int(ticks) + 1}"
    assert same_as({**me, "start": another}) is None
    assert not names_same({**me, "start": another}, me)
    assert not names_same({**me, "pid": ME.pid + 1}, me)


def test_another_boot_id_is_another_boot_only_when_the_wall_clock_says_so_too() -> None:
    """CI at a675b84: in a container, the service (ProtectKernelTunables=) read the host's
    boot id and a shell nspawn's, and `status` said the running daemon was not. A reboot
    always moves the wall-clock start by more than a second."""
    me = own_identity()
    assert me is not None
    _, ticks = str(me["start"]).rsplit(":", 1)
    other_view = {**me, "start": f"00000000-0000-0000-0000-000000000000:{ticks}"}
    assert same_as(other_view) is not None
    assert names_same(other_view, me)
    rebooted = {**other_view, "create_time": cast(float, me["create_time"]) - 60}
    assert same_as(rebooted) is None
    assert not names_same(rebooted, me)
    unknown = {**me, "start": f":{ticks}"}  # no boot id could be read: the wall clock tells
    assert same_as(unknown) is not None
    assert same_as({**unknown, "create_time": cast(float, me["create_time"]) + 30}) is None


def test_a_record_without_start_is_judged_by_create_time_within_a_boot_time_step() -> None:
    """State files written before `start` was recorded (an upgrade with a marker left)."""
    assert same_process(ME.pid, ME.create_time() - 1.0) is not None
    assert same_process(ME.pid, ME.create_time() + 1.0) is not None
    assert same_process(ME.pid, ME.create_time() - 5) is None
    assert same_process(ME.pid, ME.create_time() + 5) is None


def test_an_exited_child_is_not_running(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    named = identity(psutil.Process(child.pid))
    child.wait()
    assert named is not None and same_as(named) is None
    assert same_process(child.pid, named["create_time"]) is None


def test_a_zombie_is_not_running() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    named = identity(psutil.Process(child.pid))
    assert named is not None
    created = named["create_time"]
    try:  # not reaped until child.wait(): a zombie once it has exited
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert same_process(child.pid, created) is None
        assert same_as(named) is None
    finally:
        child.wait()


@pytest.mark.parametrize(
    ("pid", "created"),
    [
        ("1", 0.0),
        (True, 0.0),
        (0, 0.0),
        (-1, 0.0),
        (10**400, 0.0),
        (2**63, 0.0),
        (None, 0.0),
        (ME.pid, float("nan")),
        (ME.pid, float("inf")),
        (ME.pid, "now"),
        (ME.pid, None),
        (ME.pid, True),
        (ME.pid, [ME.create_time()]),
    ],
    ids=lambda value: type(value).__name__,  # not the value: each worker has its own pid
)
def test_damaged_values_name_no_process(pid: object, created: object) -> None:
    assert same_process(pid, created) is None
    assert same_as({"pid": pid, "create_time": created}) is None
    for start in (None, 5, "", "x:y", "nonsense", ":", "x:"):
        assert same_process(pid, created, start) is None
        assert not names_same({"pid": pid, "create_time": created, "start": start}, own_identity())


def test_status_of_a_damaged_daemon_state_is_no_daemon(tmp_path: Path) -> None:
    """NaN as the start time once passed the old check (nothing is far from NaN): `status`
    showed a daemon that was not there."""
    state = tmp_path / "state"
    state.mkdir()
    config = cast(Config, SimpleNamespace(state_dir=state))  # all it reads
    good = {"pid": os.getpid(), "create_time": ME.create_time(), "jobs": {}}
    (state / STATE_FILE).write_text(json.dumps(good))
    assert read_daemon_state(config) is not None
    for damaged in (
        {**good, "create_time": float("nan")},
        {**good, "pid": 10**400},
        {**good, "pid": str(os.getpid())},
        {"pid": os.getpid()},
        [os.getpid(), ME.create_time()],
    ):
        (state / STATE_FILE).write_text(json.dumps(damaged))
        assert read_daemon_state(config) is None, damaged


def test_progress_of_a_gone_or_damaged_writer_is_none(tmp_path: Path) -> None:
    path = tmp_path / "restore-progress.json"
    good = {"pid": os.getpid(), "create_time": ME.create_time(), "what": "restore"}
    path.write_text(json.dumps(good))
    assert read_published(path) == good
    for damaged in (
        {**good, "create_time": float("nan")},
        {**good, "create_time": ME.create_time() - 30},
        {**good, "pid": -5},
        "just text",
    ):
        path.write_text(json.dumps(damaged))
        assert read_published(path) is None, damaged
