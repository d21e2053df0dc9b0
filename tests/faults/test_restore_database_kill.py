"""`restore BACKUP --database NAME --as NEW` from a cold archive, killed (SIGKILL) in each of its
phases: while the throwaway on the archive starts, once the shards' tars are packed from the
archive's TSM files (restore/cold_files.py), and while the live server takes the database in
(real influxd, real CLI, real signals).

What a user depends on: the live influxd is never stopped and keeps every point; once the next
lock-taking command is done, no throwaway of ours runs, the half-restored database is gone (the
live server's databases are as they were), and no scratch dir of the restore is left.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import Ledger, Watched, points, run_cli
from tests.faults.test_restore_interrupted import paused_at
from tests.faults.test_restore_target_kill import _ours

# variant → (the event the kill lands on, its fields, how many of them come first)
KILLS: dict[str, tuple[str, dict[str, str], int]] = {
    "the throwaway on the archive starting": (
        "throwaway.starting",
        {"what": "influxd on the archive"},
        1,
    ),
    "the shards' tars packed": ("restore.cold_files", {}, 1),
    # the second restore.running is the tool against the live server (the first, the export)
    "the live server taking the database in": ("restore.running", {}, 2),
}


def backed_up(tmp_path: Path, sandbox: Sandbox, points: int) -> tuple[Path, dict[str, Any]]:
    """A config for the sandbox, and the record of a cold backup of `points` in metrics."""
    config = write_config(tmp_path, sandbox)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", points)
    done = run_cli(config, "backup", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return config, json.loads(done.stdout)


@pytest.mark.fault("kill", "SIGKILL of restore --database from a cold archive")
@pytest.mark.parametrize("variant", list(KILLS))
def test_a_database_restore_killed_leaves_the_live_server_as_it_was(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, variant: str
) -> None:
    event, fields, nth = KILLS[variant]
    config, record = backed_up(tmp_path, sandbox, 20_000)
    sandbox.write_points("metrics", 300, start=200_000)  # the live server moves on
    ledger.take()
    live_pids, before = sandbox.pids(), points(sandbox)

    # paced hard, so that the upload is still going when the kill lands
    restore = Watched(
        config, "restore", record["id"], "--database", "metrics", "--as", "m2",
        "--limit-rate", "0.02",
    )  # fmt: skip
    try:
        restore.wait_event(event, timeout=300, **fields)
        deadline = time.monotonic() + 120
        while sum(e.get("event") == event for e in restore.events()) < nth:
            assert time.monotonic() < deadline, restore.tail()
            time.sleep(0.005)
        if nth > 1:
            time.sleep(0.5)  # into the upload
    finally:
        restore.kill()
    assert "restore.database_done" not in "".join(restore.lines), "killed before it ended"

    if nth > 1:  # killed with the live server changed: a dry run says so and changes nothing
        done = run_cli(config, "prune", "--dry-run")
        assert done.returncode == 0, done.stderr[-3000:]
        assert '"dry_run": true' in done.stderr and "drop the half-restored m2" in done.stderr
        assert "m2" in points(sandbox), "a dry run drops no database"
        status = run_cli(config, "status")
        assert "a killed restore --database left m2 pending" in status.stdout, status.stdout
    done = run_cli(config, "recover")  # the next lock-taking command
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    if nth > 1:  # killed with the live server changed: undone from the pending file
        assert "recovery.database_restore_undone" in done.stderr, done.stderr[-3000:]
        assert "undid the killed restore of database m2: the half-restored m2" in done.stdout
    assert sandbox.pids() == live_pids, "the live influxd was never stopped"
    left = _ours(tmp_path, sandbox)
    for proc in left:
        proc.kill()
    assert left == [], "no throwaway of ours is left running"
    assert points(sandbox) == before, "the half-restored database is gone, nothing else changed"
    assert not (tmp_path / "state" / "restore-database.json").exists()
    # the killed run's unpacked copy of the backup too: before, `recover` left it for the next
    # prune and said "nothing to recover" the second time while it was there
    assert not list((tmp_path / "archives").glob(".verify-restore-*")), "the scratch is gone"
    assert run_cli(config, "recover").stdout.startswith("nothing to recover")
    lost_points, lost = ledger.settle()
    assert lost_points == 0, "points lost"
    assert lost == [], f"archives lost or changed: {lost}"


@pytest.mark.fault("kill", "SIGKILL of restore --database from a cold archive, once it is in")
@pytest.mark.parametrize("form", ["--as", "--as --replace"])
def test_a_database_restore_killed_once_its_database_is_in_is_finished_not_undone(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, form: str
) -> None:
    """Past the point of no return (the database taken in, every shard settled), clients may
    write into the restored database: the next lock-taking command keeps it, with those writes
    (with --replace, the replaced database stays in its copy aside, as after a restore)."""
    config, record = backed_up(tmp_path, sandbox, 20_000)
    pending = tmp_path / "state" / "restore-database.json"
    replace = form.endswith("--replace")
    if replace:
        sandbox.create_db("m2")
        sandbox.write_points("m2", 10)  # the database the restore replaces

    # paused past the point of no return (the database in, its continuous queries not yet
    # brought back), then killed: a kill on seeing restore.taken_in could land after the end
    restore = paused_at(
        tmp_path, config,
        ["restore", record["id"], "--database", "metrics", "--as", "m2",
         *(["--replace", "--yes"] if replace else [])],
        "influx_backupd.restore.database.bring_back", ".verify-restore",
    )  # fmt: skip
    restore.kill()
    restore.communicate(timeout=60)
    assert json.loads(pending.read_text())["in"] is True
    sandbox.write_points("m2", 50, start=500_000)  # a client writes into the restored database
    ledger.take()
    assert points(sandbox) == {"metrics": 20_000, "m2": 20_050}

    status = run_cli(config, "status")
    assert "a killed restore --database left m2 pending" in status.stdout, status.stdout
    assert "`influx-backupd recover` keeps it" in status.stdout
    done = run_cli(config, "prune", "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "keep the restored database m2" in done.stderr and pending.exists()
    done = run_cli(config, "recover")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "recovery.database_restore_finished" in done.stderr, done.stderr[-3000:]
    assert "finished the killed restore of database m2: kept the restored database m2" in (
        done.stdout
    ), done.stdout
    assert "not compared with the backup's count" in done.stdout
    if replace:
        [kept] = (tmp_path / "archives").glob("m2.replaced-*")
        assert f"the replaced m2 is kept in {kept}" in done.stdout, done.stdout
    assert not pending.exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0, "the restored database and the writes since are kept"
    assert lost == [], f"archives lost or changed: {lost}"
    assert points(sandbox) == {"metrics": 20_000, "m2": 20_050}
    assert "nothing to recover" in run_cli(config, "recover").stdout


@pytest.mark.fault(
    "kill", "SIGKILL of restore --database --replace while it keeps the replaced copy"
)
def test_a_replace_killed_while_keeping_its_copy_leaves_no_copy_behind(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """Killed between the export of the database it replaces and its drop: the live database
    was never touched, so the next lock-taking command removes the half-made copy aside (a
    database's size of disk). Before, the pending file did not name the copy yet: recovery
    said nothing and `m2.replaced-*` stayed in the storage dir for good."""
    config, record = backed_up(tmp_path, sandbox, 2_000)
    sandbox.create_db("m2")
    sandbox.write_points("m2", 10)  # the database the restore would replace
    ledger.take()  # before the copy is made: it is no backup, and goes
    restore = paused_at(
        tmp_path, config,
        ["restore", record["id"], "--database", "metrics", "--as", "m2", "--replace", "--yes"],
        "influx_backupd.restore.database.scan_portable", ".replaced-",
    )  # fmt: skip
    restore.kill()
    restore.communicate(timeout=60)
    [copy] = (tmp_path / "archives").glob("m2.replaced-*")
    before = points(sandbox)
    assert before == {"metrics": 2_000, "m2": 10}

    done = run_cli(config, "prune", "--dry-run")
    assert f"drop nothing, remove the copy begun in {copy}" in done.stderr, done.stderr[-3000:]
    assert copy.exists()
    done = run_cli(config, "recover")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "database m2 was not touched" in done.stdout, done.stdout
    assert f"the copy of it begun in {copy} was removed" in done.stdout, done.stdout
    assert not copy.exists()
    assert not (tmp_path / "state" / "restore-database.json").exists()
    assert points(sandbox) == before
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
    assert run_cli(config, "recover").stdout.startswith("nothing to recover")
