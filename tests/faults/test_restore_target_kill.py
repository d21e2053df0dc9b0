"""`restore BACKUP --target DIR --start` killed (SIGKILL, SIGTERM) while a throwaway influxd
starts or serves, for a cold archive and a hot chain, and DIRs it must refuse (real influxd,
real CLI, real signals).

What a user depends on: the live influxd is never stopped and keeps its points; no throwaway of
ours runs once the next lock-taking command is done, except a `--start` server that answered
(handed over to the user: it is meant to outlive the command, its pid logged); DIR is whole
(serves every point) or removed again, never a half tree that looks whole.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.restore.target import INCOMPLETE_MARK
from tests.conftest import write_config
from tests.faults.conftest import Ledger, Watched, one_line, run_cli
from tests.integration.test_restore_target import _counts, serving

HOT = [{"name": "hotjob", "mode": "hot"}]
EXPECTED = {"metrics": 3_500}
MARKER = "influxd-stopped.json"

# variant → (backup kind, the event the kill lands on, its fields, whether DIR is whole after)
KILLS: dict[str, tuple[str, str, dict[str, str], bool]] = {
    "cold, its --start influxd starting": ("cold", "throwaway.starting", {"what": "influxd"}, True),
    "cold, its --start influxd serving": ("cold", "restore.serving", {}, True),
    "hot, its build influxd starting": (
        "hot",
        "throwaway.starting",
        {"what": "an empty influxd"},
        False,
    ),
    "hot, its build influxd serving": ("hot", "restore.running", {}, False),
    "hot, its --start influxd starting": ("hot", "throwaway.starting", {"what": "influxd"}, True),
}


def _backup(tmp_path: Path, sandbox: Sandbox, kind: str) -> tuple[Path, str]:
    """A config and the id of a backup holding EXPECTED (hot: a full and an increment)."""
    config = write_config(tmp_path, sandbox, **({"jobs": HOT} if kind == "hot" else {}))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    if kind == "hot":
        full = run_cli(config, "backup", "--json")
        assert full.returncode == 0, full.stderr[-3000:]
    sandbox.write_points("metrics", 1_500, start=100_000)
    done = run_cli(config, "backup", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    assert record["kind"] == ("incremental" if kind == "hot" else "full"), record
    sandbox.write_points("metrics", 300, start=200_000)  # the live server moves on
    return config, record["id"]


def _restoring(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, kind: str
) -> tuple[Path, Watched, Path, list[int]]:
    """A backup taken (ledger.take() after it), then `restore --target DIR --start` of it
    running: (config, that process, DIR, the live influxd's pids)."""
    config, backup = _backup(tmp_path, sandbox, kind)
    ledger.take()
    live_pids = sandbox.pids()
    target = tmp_path / "look"
    restore = Watched(config, "restore", backup, "--target", str(target), "--start")
    return config, restore, target, live_pids


def _ours(tmp_path: Path, sandbox: Sandbox) -> list[psutil.Process]:
    """influxd processes running a config under this test's dirs, the live one aside (scoped:
    tests run side by side)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if str(sandbox.conf) not in argv and any(a.startswith(str(tmp_path)) for a in argv):
            found.append(proc)
    return found


def _whole(target: Path) -> None:
    """DIR is complete: its conf in, no mark, and served it answers every point."""
    assert not (target / INCOMPLETE_MARK).exists()
    with serving(target / "influxdb.conf") as url:
        assert _counts(url) == EXPECTED


@pytest.mark.fault("kill", "SIGKILL of restore --target --start")
@pytest.mark.parametrize("variant", list(KILLS))
def test_a_restore_into_a_dir_killed_leaves_no_server_of_ours_and_no_half_dir(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, variant: str
) -> None:
    kind, event, fields, whole = KILLS[variant]
    config, restore, target, live_pids = _restoring(tmp_path, sandbox, ledger, kind)
    seen = restore.wait_event(event, timeout=300, **fields)
    restore.kill()
    assert not (tmp_path / "state" / MARKER).exists(), "the live server was never to be stopped"
    if whole:
        assert (target / "influxdb.conf").is_file() and not (target / INCOMPLETE_MARK).exists()
    else:
        assert (target / INCOMPLETE_MARK).is_file(), "a DIR being written says it is incomplete"

    done = run_cli(config, "prune", "--dry-run")  # the next lock-taking command
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert sandbox.pids() == live_pids, "the live influxd was never stopped"
    assert sandbox.ping()
    left = _ours(tmp_path, sandbox)
    try:
        if event == "restore.serving":
            # Answered and handed over (its pid in the log): the user's now, left serving.
            assert [p.pid for p in left] == [seen["pid"]], left
            assert _counts(seen["url"]) == EXPECTED
        else:
            assert left == [], f"throwaways left running: {[p.cmdline() for p in left]}"
    finally:
        for proc in left:
            proc.kill()
            proc.wait(30)
    if whole:
        if event != "restore.serving":
            assert "recovery.target_kept" in done.stderr, done.stderr[-3000:]
        _whole(target)
    else:
        assert "recovery.target_removed" in done.stderr, done.stderr[-3000:]
        assert not target.exists(), "what the killed restore wrote is removed again"
    assert not list((tmp_path / "archives").glob(".verify-target-*")), "the ownership record"
    lost_points, lost = ledger.settle()
    assert lost_points == 0, "points lost"
    assert lost == [], f"archives lost or changed: {lost}"


# variant → (backup kind, the event SIGTERM lands on, its fields, whether DIR is whole after)
TERMS: dict[str, tuple[str, str, dict[str, str], bool]] = {
    "cold, its --start influxd starting": ("cold", "throwaway.starting", {"what": "influxd"}, True),
    "hot, its build influxd serving": ("hot", "restore.running", {}, False),
}


@pytest.mark.fault("term", "SIGTERM of restore --target --start")
@pytest.mark.parametrize("variant", list(TERMS))
def test_a_restore_into_a_dir_terminated_says_so_in_one_line_and_stops_its_server(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, variant: str
) -> None:
    kind, event, fields, whole = TERMS[variant]
    _config, restore, target, live_pids = _restoring(tmp_path, sandbox, ledger, kind)
    restore.wait_event(event, timeout=300, **fields)
    restore.proc.send_signal(signal.SIGTERM)
    code, _out, err = restore.finish()
    assert code == 1, err[-3000:]
    line = one_line(err)
    assert "interrupted by SIGTERM" in line and "the live server was not touched" in line, line
    assert str(target) in line
    assert _ours(tmp_path, sandbox) == [], "its throwaway was stopped before it exited"
    assert sandbox.pids() == live_pids and sandbox.ping()
    assert not list((tmp_path / "archives").glob(".verify-*")), "its scratch dir is gone"
    if whole:
        assert "the backup is in" in line, line
        _whole(target)
    else:
        assert "removed again" in line, line
        assert not target.exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0, "points lost"
    assert lost == [], f"archives lost or changed: {lost}"


@pytest.mark.fault(
    "refusal",
    "restore --target into a DIR it must refuse",
    "taken, cannot be made, inside the live dirs",
)
def test_a_dir_that_is_taken_cannot_be_made_or_is_inside_the_live_server_is_refused(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config, backup = _backup(tmp_path, sandbox, "cold")
    live = {db: sandbox.count(db) for db in sandbox.databases()}
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    outside = "; give a directory outside its meta, data and wal dirs"
    refusals = {
        busy: "not empty; give an empty or absent directory",
        a_file / "under" / "it": f"cannot be made, {a_file} is not a directory",
        sandbox.data / "look": f"inside the live server's data dir {sandbox.data}" + outside,
        sandbox.meta: f"inside the live server's meta dir {sandbox.meta}" + outside,
        sandbox.wal / "a" / "b": f"inside the live server's wal dir {sandbox.wal}" + outside,
    }
    if os.geteuid() == 0:  # writable by access(2) for root, refused by the filesystem itself
        refusals[Path("/proc/influx-backupd-look")] = "cannot be made (No such file or directory)"
    before = {p: sorted(q.name for q in p.iterdir()) for p in (busy, sandbox.data, sandbox.meta)}
    for target, why in refusals.items():
        for start in ([], ["--start"]):
            done = run_cli(config, "restore", backup, "--target", str(target), *start)
            assert done.returncode == 2, (target, done.stderr[-3000:])
            assert one_line(done.stderr) == f"influx-backupd: --target {target}: {why}"
    after = {p: sorted(q.name for q in p.iterdir()) for p in before}
    assert after == before, "nothing written into them"
    assert a_file.read_text() == "x"
    assert not (sandbox.wal / "a").exists()
    assert not list((tmp_path / "archives").glob(".verify-*"))
    assert {db: sandbox.count(db) for db in sandbox.databases()} == live
    assert _ours(tmp_path, sandbox) == []
