"""A restore SIGKILLed while a throwaway influxd applies the deletes its hot backup holds
(restore/deletes.py), for one database and for the whole server (real influxd, real CLI, real
signals).

What a user depends on: the live influxd is not stopped by a restore killed before its swap and
keeps every point; the next lock-taking command stops that throwaway (it serves from a dir inside
the restore's scratch dir) and whatever else the restore started, and prune leaves no scratch.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import Ledger, Watched, points, run_cli
from tests.faults.test_restore_target_kill import _ours
from tests.integration.test_restore_deletes import _with_tombstones

VARIANTS = {"one database": ["--database", "metrics", "--as", "m2"], "the whole server": ["--yes"]}


def _applying(tmp_path: Path) -> bool:
    """The deletes throwaway runs: an influxd whose conf is in a deletes- dir of ours."""
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if any(a.startswith(str(tmp_path)) and "/deletes-" in a for a in argv):
            return True
    return False


@pytest.mark.fault("kill", "SIGKILL of a restore while a throwaway applies the backup's deletes")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_restore_killed_while_it_applies_deletes_leaves_nothing_running(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, variant: str
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    sandbox.write_points("metrics", 1_500, start=900_000)
    backup = _with_tombstones(sandbox, tmp_path / "backup")
    config = write_config(tmp_path, sandbox)
    ledger.take()
    live_pids, before = sandbox.pids(), points(sandbox)

    restore = Watched(config, "restore", str(backup), *VARIANTS[variant])
    try:
        restore.wait_event(
            "throwaway.starting", timeout=300, what="an influxd applying the backup's deletes"
        )
        deadline = time.monotonic() + 60
        while not _applying(tmp_path):
            assert time.monotonic() < deadline, restore.tail()
            time.sleep(0.01)
    finally:
        restore.kill()
    assert "restore.done" not in "".join(restore.lines), "killed before it ended"
    assert _applying(tmp_path), "the throwaway outlives its restore: what recovery must stop"

    done = run_cli(config, "prune", "--dry-run")  # the next lock-taking command
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert sandbox.pids() == live_pids, "the live influxd was never stopped"
    left = _ours(tmp_path, sandbox)
    for proc in left:
        proc.kill()
    assert left == [], "no throwaway of ours is left running"
    assert points(sandbox) == before, "the live server's points as they were"
    done = run_cli(config, "prune")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list((tmp_path / "archives").glob(".verify-*")), "the scratch is gone"
    assert not list(sandbox.data.parent.glob(".*.restore-*")), "no staging dir is left"
    lost_points, lost = ledger.settle()
    assert lost_points == 0, "points lost"
    assert lost == [], f"archives lost or changed: {lost}"
