"""The backup lock across real processes, and the crash marker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from influx_backupd.core.processes import identity
from influx_backupd.store import state
from influx_backupd.store.state import BackupLock, Busy, CrashMarker

HOLD = """
import sys, time
from pathlib import Path
from influx_backupd.store.state import BackupLock
lock = BackupLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_the_lock_is_exclusive_across_processes_and_freed_when_its_holder_dies(
    tmp_path: Path,
) -> None:
    path = tmp_path / "backup.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"held by pid {holder.pid}"):
            BackupLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    lock = BackupLock(path)
    while True:
        try:
            lock.acquire()
            break
        except Busy:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    lock.release()


def test_crash_marker_round_trip_and_a_torn_marker_still_counts(tmp_path: Path) -> None:
    marker = CrashMarker(tmp_path)
    assert marker.read() is None
    marker.write("run-1", job="nightly")
    body = marker.read()
    assert body is not None and body["run_id"] == "run-1" and body["job"] == "nightly"
    marker.path.write_text('{"run_id": "ru')  # torn by a power loss
    assert marker.read() == {"run_id": None}
    marker.clear()
    assert marker.read() is None
    marker.clear()  # idempotent


def test_a_directory_in_the_markers_place_is_removed_if_empty_else_said(tmp_path: Path) -> None:
    """Before: "Is a directory: PATH" from every command, with nothing saying what it was."""
    marker = CrashMarker(tmp_path)
    marker.path.mkdir()
    assert marker.read() == {"run_id": None}, "read as torn: influxd may be down"
    marker.clear()
    assert not marker.path.exists(), "an empty one holds nothing of anyone's"
    marker.path.mkdir()
    (marker.path / "x").write_text("someone's")
    with pytest.raises(state.StateDirError, match="a directory where the crash marker"):
        marker.clear()
    assert (marker.path / "x").read_text() == "someone's"


def test_a_marker_tells_a_run_killed_before_it_asked_for_the_stop(tmp_path: Path) -> None:
    """The server it names (pid and create_time) still runs and no stop was asked: nothing
    was stopped. Asked, or another process on that pid, or an older marker: it may have been."""
    me = psutil.Process()
    marker = CrashMarker(tmp_path)
    marker.write("r1", influxd=identity(me))
    body = marker.read()
    assert body is not None and CrashMarker.never_stopped(body)
    marker.stopping()
    body = marker.read()
    assert body is not None and body["stopping"] is True and not CrashMarker.never_stopped(body)

    reused = {"run_id": "r", "stopping": False, "influxd": {"pid": me.pid, "create_time": 1.0}}
    assert not CrashMarker.never_stopped(reused)
    assert not CrashMarker.never_stopped({"run_id": "r", "pid": me.pid})  # before this field
    assert not CrashMarker.never_stopped({"run_id": None})  # torn
    marker.write("r2", influxd=None)  # nothing was running to stop
    body = marker.read()
    assert body is not None and not CrashMarker.never_stopped(body)


def test_a_signalled_marker_watches_only_the_server_it_stopped_and_only_for_a_while(
    tmp_path: Path,
) -> None:
    """After a stop that outlasted stop_timeout, the server that got it and still runs keeps a
    "signalled" marker (not "down"); another server, a stop never asked, or a watch past
    SIGNALLED_WATCH_S is not ours to start."""
    me = psutil.Process()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        marker = CrashMarker(tmp_path)
        marker.write("r1", kind="restore", swaps=[["a", "b", "c"]], influxd=identity(me))
        assert not marker.signalled(identity(me)), "the stop was never asked"
        assert marker.read() is None

        marker.write("r2", job="nightly", influxd=identity(me))
        marker.stopping()
        assert not marker.signalled(identity(psutil.Process(sleeper.pid)))
        assert marker.read() is None, "another server runs: not ours, cleared"

        marker.write(
            "r3",
            job="nightly",
            kind="restore",
            swaps=[["a", "b", "c"]],
            influxd=identity(psutil.Process(sleeper.pid)),
        )
        marker.stopping()
        assert marker.signalled(identity(psutil.Process(sleeper.pid)))
        body = marker.read()
        assert body is not None and body["run_id"] == "r3" and body["job"] == "nightly"
        assert "swaps" not in body and "kind" not in body, "nothing left to roll back"
        assert CrashMarker.signalled_runs(body) and not CrashMarker.may_be_down(body)
        assert not CrashMarker.never_stopped(body)

        stale = {**body, "signalled_at": time.time() - state.SIGNALLED_WATCH_S - 1}
        assert not CrashMarker.signalled_runs(stale) and CrashMarker.may_be_down(stale)
        for ahead in (time.time() + 3600, 9e99, float("nan")):  # hand-edited: never for ever
            assert not CrashMarker.signalled_runs({**body, "signalled_at": ahead}), ahead
        sleeper.kill()
        sleeper.wait()
        assert not CrashMarker.signalled_runs(body), "it exited: down, to be started"
        assert CrashMarker.may_be_down(body)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_windows_expected_end_counts_only_while_its_run_lives_and_starts_did_not_fail(
    tmp_path: Path,
) -> None:
    """down_expected_until (what keeps InfluxdLeftDown quiet through a long healthy window):
    the end the run wrote, while that very process lives; 0 once it is gone, once a start of
    influxd failed, or for a value no run writes (a hand-edited or damaged marker)."""
    marker = CrashMarker(tmp_path)
    until = time.time() + 3600
    marker.write("r1", job="nightly", influxd=identity(psutil.Process()), down_expected_until=until)
    body = marker.read()
    assert body is not None and CrashMarker.down_expected_until(body) == until
    marker.note_failed_start(1, "port in use", 1.0)
    assert CrashMarker.down_expected_until(marker.read()) == 0

    assert CrashMarker.down_expected_until(None) == 0
    assert CrashMarker.down_expected_until({"run_id": None}) == 0, "torn"
    marker.write("r2", job="nightly")  # no window written (a marker of an older version)
    assert CrashMarker.down_expected_until(marker.read()) == 0
    written = body["written_at"]
    for bad in (float("nan"), float("inf"), 9e99, written - 1, "soon", True):
        hostile = {**body, "down_expected_until": bad}
        assert CrashMarker.down_expected_until(hostile) == 0, bad
    over = written + state.MAX_EXPECTED_WINDOW_S + 1
    assert CrashMarker.down_expected_until({**body, "down_expected_until": over}) == 0

    # a writer that died: its window is over, whatever it expected
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from influx_backupd.store.state import CrashMarker; "
            "CrashMarker(Path(sys.argv[1])).write('r3', down_expected_until=time.time() + 3600)",
            str(tmp_path),
        ],
        check=True,
    )
    assert child.returncode == 0
    dead = marker.read()
    assert dead is not None and dead["run_id"] == "r3" and dead["down_expected_until"] > 0
    assert CrashMarker.down_expected_until(dead) == 0


def test_a_failed_start_noted_in_a_full_state_dir_still_raises_the_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker's count is written on each failed start, inside the retry loop that brings
    influxd back: a full state dir must cost the count, never the loop (or the alarm)."""
    from influx_backupd.core import alarms

    marker = CrashMarker(tmp_path)
    marker.write("run-1", job="nightly")
    told: list[tuple[str | None, str]] = []

    def full(*_args: object, **_kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state, "replace_json", full)
    with alarms.left_down_handler(lambda job, error: told.append((job, error))):
        marker.note_failed_start(1, "influxd exited 1", 5.0)
    assert told == [("nightly", "influxd exited 1")]
    assert marker.read() is not None and "start_failures" not in (marker.read() or {})


@pytest.mark.parametrize(
    ("written", "said"),
    [
        (b"4242 offsite\n", ("4242", "offsite")),
        (b"4242\n", ("4242", None)),  # an older version's
        (b"", ("unknown", None)),  # a holder between its flock and its write
        (b"xx\x00\xff garbage", ("unknown", None)),  # the audit's: printed as "pid xx\x00\ufffd"
        (b"4242 \x1b[2Jcleared", ("4242", None)),  # not a DOING we write: not repeated
    ],
)
def test_the_lock_holder_is_read_as_a_pid_and_a_known_doing_or_unknown(
    tmp_path: Path, written: bytes, said: tuple[str, str | None]
) -> None:
    (tmp_path / "backup.lock").write_bytes(written)
    assert state.lock_holder(tmp_path) == said


def test_a_lock_whose_file_was_removed_or_replaced_is_no_longer_held(tmp_path: Path) -> None:
    from influx_backupd.store.state import BackupLock, Busy

    path = tmp_path / "state" / "daemon.lock"
    mine = BackupLock(path)
    mine.acquire()
    assert mine.still_held()
    path.unlink()  # rm -rf of the state dir, in short
    assert not mine.still_held()
    other = BackupLock(path)
    other.acquire()  # a second process takes a new file there: nothing keeps it out
    assert not mine.still_held() and other.still_held()
    mine.release()
    with pytest.raises(Busy):
        mine.acquire()
    other.release()
    assert not other.still_held()


def test_a_stop_windows_expected_end_is_twice_its_work_plus_influxds_timeouts_and_capped(
    tmp_path: Path,
) -> None:
    """What a run writes before its stop: never more than a marker may expect (a longer one
    would read as damaged, so as no window at all, and page in the middle of a healthy copy)."""
    from influx_backupd.core.config import load
    from influx_backupd.influxd.server import WINDOW_MARGIN_S, Influxd
    from tests.unit.influxd.test_ping_auth import config_for

    server = Influxd(load(config_for(tmp_path, "http://127.0.0.1:8086", False)))
    timeouts = server.section.stop_timeout + server.section.start_timeout
    now = time.time()
    end = server.stop_window_end(600.0)
    assert now + 1200 + timeouts + WINDOW_MARGIN_S <= end <= time.time() + 1200 + timeouts + 300
    huge = server.stop_window_end(10e6)  # 200 TB at 20 MB/s
    assert huge <= time.time() + state.MAX_EXPECTED_WINDOW_S
    body = {
        "written_at": time.time(),
        "down_expected_until": huge,
        "writer": identity(psutil.Process()),
    }
    assert CrashMarker.down_expected_until(body) == huge, "still read as the window it is"


@pytest.mark.parametrize(
    ("code", "said", "not_said"),
    [
        (28, "filesystem is full: no space or no inodes left", "another user's service"),
        (13, "another user's service running?", "filesystem is full"),
        (30, "Read-only file system", "another user's service"),
    ],
)
def test_a_lock_that_cannot_be_made_says_the_likely_cause_of_what_the_system_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, said: str, not_said: str
) -> None:
    """Audit: a state dir out of inodes was asked whether another user's service ran."""
    import errno
    import os

    assert code in (errno.ENOSPC, errno.EACCES, errno.EROFS)

    def refused(*_args: object, **_kwargs: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(state.os, "open", refused)
    with pytest.raises(state.StateDirError) as failed:
        BackupLock(tmp_path / "backup.lock").acquire()
    assert said in str(failed.value) and not_said not in str(failed.value), str(failed.value)
