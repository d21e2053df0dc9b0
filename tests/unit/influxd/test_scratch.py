"""Scratch dirs of throwaway influxd servers: who owns one, and whether that owner still runs
(real processes; a dir whose owner is gone is cleaned up by recovery and prune)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from influx_backupd.influxd import scratch


@pytest.fixture
def other_process() -> Iterator[psutil.Process]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _owned_by(tmp_path: Path, owner: dict[str, object]) -> Path:
    path = tmp_path / (scratch.PREFIX + "x")
    path.mkdir()
    (path / "owner.json").write_text(json.dumps(owner))
    return path


def test_a_new_dir_names_this_process_and_the_staging_dirs(tmp_path: Path) -> None:
    staging = [tmp_path / ".data.restore-1", tmp_path / ".meta.restore-1"]
    path = scratch.make(tmp_path / "storage", "restore-", staging)
    assert path.parent == tmp_path / "storage" and path.name.startswith(".verify-restore-")
    owner = scratch.owner(path)
    assert owner is not None
    assert owner.pid == psutil.Process().pid
    assert owner.started == psutil.Process().create_time()
    assert owner.staging == staging
    assert not scratch.owner_alive(path), "this process's own dirs are never in use when asked"


def test_a_running_owner_is_alive_and_a_dead_one_is_not(
    tmp_path: Path, other_process: psutil.Process
) -> None:
    path = _owned_by(tmp_path, {"pid": other_process.pid, "started": other_process.create_time()})
    assert scratch.owner_alive(path)
    other_process.kill()
    other_process.wait(10)
    assert not scratch.owner_alive(path)


def test_a_pid_reused_by_another_process_is_not_the_owner(
    tmp_path: Path, other_process: psutil.Process
) -> None:
    """The owner died; the kernel gave its pid to a process that started later."""
    reused = {"pid": other_process.pid, "started": other_process.create_time() - 3600}
    assert not scratch.owner_alive(_owned_by(tmp_path, reused))


def test_a_dir_from_before_start_times_were_recorded_goes_by_the_pid(
    tmp_path: Path, other_process: psutil.Process
) -> None:
    assert scratch.owner_alive(_owned_by(tmp_path, {"pid": other_process.pid}))


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"pid": "x"}', '{"staging": []}'])
def test_an_unreadable_owner_is_no_owner(tmp_path: Path, text: str) -> None:
    path = tmp_path / (scratch.PREFIX + "x")
    path.mkdir()
    (path / "owner.json").write_text(text)
    assert scratch.owner(path) is None
    assert not scratch.owner_alive(path)


def test_recovery_stops_a_throwaway_serving_from_a_dir_inside_the_scratch_dir(
    tmp_path: Path,
) -> None:
    """A restore killed while it applies a backup's deletes leaves that throwaway running
    from a dir of its own in the scratch dir; one serving a conf elsewhere is not ours."""
    path = _owned_by(tmp_path, {"pid": 1, "started": 0.0})
    nested = path / "deletes-abc" / "influxdb.conf"
    outside = tmp_path / "elsewhere" / "influxdb.conf"
    sleeper = "import time; time.sleep(60)"
    ours = subprocess.Popen([sys.executable, "-c", sleeper, "run", "-config", str(nested)])
    theirs = subprocess.Popen([sys.executable, "-c", sleeper, "run", "-config", str(outside)])
    try:
        assert scratch.stop_server(path) == [ours.pid]  # killed and waited for
        assert theirs.poll() is None
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
