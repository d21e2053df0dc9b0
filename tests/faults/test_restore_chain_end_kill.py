"""A whole-server restore killed after its swap ends the server's hot chains all the same.

The restore marks every hot chain ended in the catalog before its swap (restore/hot.py,
restore_backup): restored files keep their archived times, which the next increment's -since
leaves out. A restore killed once the restored server serves (before it could say it was done)
leaves that mark; the next hot run is a full, and a restore of it serves every point the live
server has. Real influxd, real CLI, SIGKILL.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.influxd import influxql
from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import started, write_config
from tests.faults.conftest import FaultResult, Watched, backups, run_cli
from tests.integration.test_restore_target import serving

JOBS = [{"name": "cold", "mode": "cold", "copy": "direct"}, {"name": "hot3", "mode": "hot"}]


@pytest.fixture
def flushing(tmp_path: Path, influxd_path: str) -> Iterator[Sandbox]:
    """A live server that snapshots its cache into a TSM file a second after a write."""
    settings = {"cache-snapshot-write-cold-duration": '"1s"'}
    with started(Sandbox(tmp_path / "server", binary=influxd_path, extra_data=settings)) as s:
        yield s


def _json(config: Path, *args: str) -> dict[str, object]:
    done = run_cli(config, *args, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


@pytest.mark.fault("kill", "SIGKILL of a whole-server restore after its swap: hot chains end")
@pytest.mark.parametrize(
    ("event", "live_after"),
    [("restore.served", 1_200), ("restore.done", 6_000)],
    ids=["served-rolled-back", "done-kept"],
)
def test_a_restore_killed_after_its_swap_leaves_no_chain_to_extend(
    tmp_path: Path, flushing: Sandbox, fault_result: FaultResult, event: str, live_after: int
) -> None:
    """Killed as the restored server serves (before the swap is marked done: the recovery
    rolls it back, and the chain ends needlessly, costing a full) or once the restore is done
    (the restored server kept, before or after it marked the chains ended as done)."""
    sandbox = flushing
    config = write_config(tmp_path, sandbox, jobs=JOBS)
    sandbox.create_db("db9")
    sandbox.write_points("db9", 5_000)
    deadline = time.monotonic() + 60
    while not any(sandbox.data.glob("db9/*/*/*.tsm")):  # in a TSM file: dated before -since
        assert time.monotonic() < deadline, "never snapshotted to TSM"
        time.sleep(0.2)
    time.sleep(1.5)
    cold = _json(config, "backup", "--job", "cold")
    sandbox.query('DROP DATABASE "db9"', method="POST")
    sandbox.create_db("db9")
    sandbox.write_points("db9", 200)
    full = _json(config, "backup", "--job", "hot3")
    assert full["kind"] == "full", full

    kept = backups(tmp_path / "archives")
    watched = Watched(config, "restore", str(cold["id"]), "--yes")
    watched.wait_event(event)
    watched.proc.send_signal(signal.SIGSTOP)
    watched.kill()
    recovered = run_cli(config, "prune", "--dry-run")  # the next lock-taking command
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    assert sandbox.ping(), "influxd serves after the recovery"

    sandbox.write_points("db9", 1_000, start=10_000)
    live = _count(sandbox.url)
    done = run_cli(config, "backup", "--job", "hot3", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    after = json.loads(done.stdout)
    [plan] = [
        json.loads(ln)
        for ln in done.stderr.splitlines()
        if ln.startswith("{") and json.loads(ln).get("event") == "hot.plan"
    ]
    assert after["kind"] == "full", plan
    assert plan["why"].endswith(": a new chain"), plan
    assert f"from {cold['id']}" in plan["why"], plan  # "began at", or "restored" if it got there

    target = tmp_path / "restored"
    restored = run_cli(config, "restore", after["id"], "--target", str(target))
    assert restored.returncode == 0, restored.stderr[-3000:]
    with serving(target / "influxdb.conf") as url:
        served = _count(url)
    now = backups(tmp_path / "archives", kept)
    changed = [name for name, sha in kept.items() if now.get(name) != sha]
    # what the live server had that its newest backup cannot give back
    fault_result.lost(points=max(0, live - served), archives=len(changed))
    assert live == live_after and served == live
    assert changed == []


def _count(url: str) -> int:
    q = 'SELECT count("value") FROM "cpu"'
    rows = influxql.values(influxql.query(url, q, "db9", timeout=120))
    return int(rows[0][1]) if rows else 0
