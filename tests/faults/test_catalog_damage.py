"""Class 3: a damaged catalog. Every command says so in one line (and how to rebuild it), with a
defined exit status and no traceback; nothing is stopped; `import` rebuilds it from the records
beside the archives whatever state the old file is in (moved aside, never deleted).

One real influxd and one cold and one hot backup serve every variant (module fixture): each
variant gets its own state_dir holding a copy of the good catalog, then damages it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.record import RunRecord
from influx_backupd.store.state import CrashMarker
from tests.conftest import Cli, write_config
from tests.faults.conftest import (
    COLD_AND_HOT,
    FaultResult,
    Ledger,
    Watched,
    backed_up,
    backups,
    one_line,
)

JOBS = COLD_AND_HOT
POINTS = 3_000


@dataclass
class World:
    root: Path
    server: Sandbox
    archives: Path
    catalog: bytes  # the good catalog.db after the two backups
    runs: list[str]
    backups: dict[str, str]  # name → sha256 of every backup in archives


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with backed_up(tmp_path_factory, "catalog", POINTS) as got:
        yield World(
            got.root,
            got.server,
            got.root / "archives",
            (got.root / "state" / "catalog.db").read_bytes(),
            [r["id"] for r in got.runs],
            backups(got.root / "archives"),
        )


def _settle(world: World, influxd: list[int], result: FaultResult) -> None:
    """Records what was lost (points, kept backups), then: influxd was never stopped."""
    after = backups(world.archives, world.backups)
    lost = [name for name, sha in world.backups.items() if after.get(name) != sha]
    result.lost(points=POINTS - world.server.count("metrics"), archives=len(lost))
    assert not lost, lost
    assert world.server.pids() == influxd, "influxd was stopped"


def _random_bytes(db: Path) -> None:
    db.write_bytes(bytes(range(256)) * 64)


def _truncated(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])


def _directory(db: Path) -> None:
    db.unlink()
    db.mkdir()
    (db / "something").write_text("x")


def _page_zeroed(db: Path) -> None:
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    data[page : 2 * page] = bytes(page)  # page 2: the first table's root
    db.write_bytes(bytes(data))


def _bad_json_row(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET record = '{not json' WHERE job = 'hotjob'")


def _wrong_shape_row(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            """UPDATE runs SET record = '{"id": 5, "bytes": "many"}' WHERE job = 'nightly'"""
        )


def _wrong_types_row(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT id, record FROM runs WHERE job = 'nightly'").fetchone()
        record = json.loads(row[1])
        record.update(started_at="yesterday", bytes=None, db_counts=[1, 2])
        conn.execute("UPDATE runs SET record = ? WHERE id = ?", (json.dumps(record), row[0]))


def _missing_table(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE runs")
        conn.execute("CREATE TABLE runs (x)")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "random bytes": _random_bytes,
    "truncated to a third": _truncated,
    "a directory in its place": _directory,
    "a page zeroed": _page_zeroed,
    "a row that is not JSON": _bad_json_row,
    "a row that is not a record": _wrong_shape_row,
    "a row with wrong types": _wrong_types_row,
    "the runs table of another shape": _missing_table,
}

# every command a user may run on this host; restore and verify name a backup the catalog knew
COMMANDS: list[tuple[str, ...]] = [
    ("list",),
    ("status",),
    ("verify", "--all"),
    ("prune",),
    ("backup", "--job", "nightly"),
    ("check-config",),
]


def _variant(world: World, name: str, *, own_storage: bool = False) -> tuple[Cli, Path]:
    """A state dir of its own with the world's catalog; the world's storage dir, or (one to
    run beside another variant's lock-taker: one command at a time per storage dir) its own."""
    home = world.root / ("v-" + name.replace(" ", "-"))
    home.mkdir()
    config = write_config(home, world.server, jobs=JOBS)
    if own_storage:
        (home / "archives").mkdir(mode=0o700)
    else:
        config.write_text(config.read_text().replace(str(home / "archives"), str(world.archives)))
    (home / "state").mkdir(mode=0o700)
    db = home / "state" / "catalog.db"
    db.write_bytes(world.catalog)
    return Cli(config), db


LOCK_TAKERS = {"backup", "verify", "prune", "restore", "import"}


def _all(
    cli: Cli, commands: list[tuple[str, ...]]
) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """Readers side by side; commands that take the backup lock one after another (side by
    side they would find each other's lock, exit 75, and say nothing about the catalog)."""
    takers = [argv for argv in commands if argv[0] in LOCK_TAKERS]
    readers = [argv for argv in commands if argv[0] not in LOCK_TAKERS]

    def in_turn() -> list[subprocess.CompletedProcess[str]]:
        return [cli(*argv, timeout=240) for argv in takers]

    with ThreadPoolExecutor(len(readers) + 1) as pool:
        serial = pool.submit(in_turn)
        found = dict(zip(readers, pool.map(lambda a: cli(*a, timeout=240), readers), strict=True))
        found.update(zip(takers, serial.result(), strict=True))
    return found


@pytest.mark.fault("3", "damaged catalog")
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_command_says_the_catalog_is_damaged_and_import_rebuilds_it(
    world: World, damage: str, fault_result: FaultResult
) -> None:
    cli, db = _variant(world, damage)
    DAMAGE[damage](db)
    influxd = world.server.pids()
    commands = [*COMMANDS, ("restore", world.runs[0], "--yes")]
    results = _all(cli, commands)
    for argv, done in results.items():
        line = one_line(done.stderr)
        assert "catalog" in line and str(db) in line, (argv, line)
        assert "damaged" in line and "influx-backupd import" in line, (argv, line)
        if argv == ("check-config",):
            assert done.returncode == 0, (argv, line)  # the config is fine: a warning
        else:
            assert done.returncode == 1, (argv, done.returncode, line)
    _settle(world, influxd, fault_result)

    kept = db.read_bytes() if db.is_file() else None
    dry = cli("import", "--dry-run", "--json")
    assert dry.returncode == 0 and "Traceback" not in dry.stderr, dry.stderr[-3000:]
    assert sorted(json.loads(dry.stdout)["imported"]) == sorted(world.runs)
    assert (db.read_bytes() if db.is_file() else None) == kept, "a dry run moves nothing"
    done = cli("import", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert sorted(report["imported"]) == sorted(world.runs)
    aside = Path(report["damaged_catalog_moved_to"])
    assert aside.parent == db.parent and aside.exists(), "the damaged catalog is kept aside"
    if kept is not None:
        assert aside.read_bytes() == kept, "moved aside as it was"
    assert sorted(r["id"] for r in cli.json("list")) == sorted(world.runs)
    if damage == "random bytes":  # the same after any damage: once is enough (CI's time)
        verified = cli("verify", "--all", "--json")
        assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
        again = cli.json("import")
        assert again["imported"] == [] and "damaged_catalog_moved_to" not in again
    _settle(world, influxd, fault_result)


@pytest.mark.fault("3", "catalog held or not writable", "an exclusive SQLite lock held")
def test_a_catalog_locked_by_another_process_makes_commands_busy_not_broken(
    world: World, fault_result: FaultResult
) -> None:
    # the two lock-takers each in a state dir (and storage dir) of its own, side by side with
    # the readers: each waits out SQLite's 30 s once (in one they would wait in turn, a minute)
    first = _variant(world, "locked")
    second = _variant(world, "locked-import", own_storage=True)
    influxd = world.server.pids()
    holders = [sqlite3.connect(db, isolation_level=None) for _, db in (first, second)]
    for holder in holders:
        holder.execute("BEGIN EXCLUSIVE")
    asked = [
        (first, ("list",)),
        (first, ("status",)),
        (first, ("backup", "--job", "nightly")),
        (second, ("import",)),
    ]
    try:
        with ThreadPoolExecutor(len(asked)) as pool:
            done_all = list(pool.map(lambda a: a[0][0](*a[1], timeout=240), asked))
    finally:
        for holder in holders:
            holder.rollback()
            holder.close()
    for ((_, db), argv), done in zip(asked, done_all, strict=True):
        line = one_line(done.stderr)
        assert done.returncode == 75, (argv, done.returncode, line)
        assert str(db) in line and "locked" in line, (argv, line)
    for _, db in (first, second):
        assert db.read_bytes() == world.catalog, "a locked catalog is not moved aside"
    _settle(world, influxd, fault_result)


def _fill(mount: Path) -> None:
    """Take every byte left on the filesystem."""
    fd = os.open(mount / "hog", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        step = 64 * 1024
        while step >= 512:
            try:
                os.write(fd, bytes(step))
            except OSError:
                step //= 2
    finally:
        os.close(fd)


@pytest.mark.fault("3", "catalog held or not writable", "state_dir full (a 2 MiB tmpfs)")
def test_a_full_state_dir_is_said_to_be_full_and_the_catalog_is_not_set_aside(
    world: World, fault_result: FaultResult
) -> None:
    """SQLITE_FULL is no damage: `import` as a damaged catalog's line says would set a healthy
    catalog aside and leave an empty one. Every command says the state_dir is full instead."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (CI runs as root)")
    cli, db = _variant(world, "full")
    state = db.parent
    influxd = world.server.pids()
    db.unlink()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(state)], check=True
    )
    try:
        db.write_bytes(world.catalog)
        (state / "backup.lock").write_text("1\n")  # as any earlier command leaves it
        _fill(state)
        commands = [
            ("verify", "--all"),
            ("prune",),
            ("backup", "--job", "nightly"),
            ("restore", world.runs[0], "--yes"),
            ("import",),
        ]
        results = _all(cli, commands)
        for argv, done in results.items():
            line = one_line(done.stderr)
            assert done.returncode == 1, (argv, done.returncode, line)
            assert f"state_dir {state} is full" in line, (argv, line)
            assert "is damaged" not in line and "import" not in line, (argv, line)
        assert db.read_bytes() == world.catalog, "the catalog is as it was"
        assert not list(state.glob("catalog.db.damaged-*")), "nothing is moved aside"
        (state / "hog").unlink()
        assert sorted(r["id"] for r in cli.json("list")) == sorted(world.runs)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    _settle(world, influxd, fault_result)


@pytest.mark.fault("3", "catalog held or not writable", "catalog.db immutable (chattr +i)")
def test_a_read_only_catalog_is_read_and_not_written(
    world: World, fault_result: FaultResult
) -> None:
    cli, db = _variant(world, "read-only")
    influxd = world.server.pids()
    # root ignores permission bits: the immutable attribute is what makes a file read-only for it
    subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        results = _all(cli, [*COMMANDS, ("import",)])
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    for argv in [("list",), ("status",), ("check-config",)]:
        assert results[argv].returncode == 0, (argv, results[argv].stderr[-2000:])
        assert "Traceback" not in results[argv].stderr
    for argv in [("verify", "--all"), ("prune",), ("backup", "--job", "nightly"), ("import",)]:
        line = one_line(results[argv].stderr)
        assert results[argv].returncode == 1, (argv, line)
        assert str(db) in line and "cannot be written" in line, (argv, line)
    assert db.read_bytes() == world.catalog
    _settle(world, influxd, fault_result)


@pytest.mark.fault("3", "damaged catalog", "a dangling symlink in its place")
def test_import_rebuilds_a_catalog_that_is_missing_its_state_dir_entry(
    world: World, fault_result: FaultResult
) -> None:
    """A dangling symlink where the catalog was (a state dir restored badly) is damage too."""
    cli, db = _variant(world, "dangling")
    influxd = world.server.pids()
    db.unlink()
    db.symlink_to(db.parent / "nowhere" / "catalog.db")
    listed = cli("list")
    line = one_line(listed.stderr)
    assert listed.returncode == 1 and "damaged" in line, line
    done = cli("import", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(json.loads(done.stdout)["imported"]) == sorted(world.runs)
    assert db.is_file() and not db.is_symlink()
    _settle(world, influxd, fault_result)


@pytest.mark.fault("3", "damaged catalog", "damaged while influxd was left stopped (crash marker)")
def test_import_brings_influxd_back_and_rebuilds_a_catalog_damaged_with_influxd_down(
    tmp_path: Path, sandbox: Sandbox, fault_result: FaultResult
) -> None:
    """Recovery needs no catalog: influxd is started again first, then the catalog repaired."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    cli = Cli(write_config(tmp_path, sandbox))
    run = cli.json("backup")
    assert run["status"] == "ok", run
    ledger = Ledger(sandbox, tmp_path / "archives", fault_result)
    ledger.take()
    # as a run SIGKILLed after its stop leaves it: influxd down, the marker naming the run
    sandbox.stop()
    CrashMarker(tmp_path / "state").write("20260101T000000Z-dead")
    _random_bytes(tmp_path / "state" / "catalog.db")
    done = cli("import", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["imported"] == [run["id"]]
    assert sandbox.ping(), "recovery started influxd again"
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and not lost
    assert [r["id"] for r in cli.json("list")] == [run["id"]]


@pytest.mark.fault("3", "damaged catalog", "damaged under a running daemon")
def test_a_daemon_whose_catalog_is_damaged_says_so_each_run_and_keeps_running(
    tmp_path: Path, sandbox: Sandbox, fault_result: FaultResult
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    job = {"name": "often", "every": "3s", "mode": "cold", "copy": "direct"}
    cli = Cli(write_config(tmp_path, sandbox, jobs=[job]))
    assert cli("backup", "--json").returncode == 0  # a catalog to damage, a backup to keep
    ledger = Ledger(sandbox, tmp_path / "archives", fault_result)
    ledger.take()
    daemon = cli.popen("run")  # a catalog damaged before the start: refused in one line
    try:
        seen = ""
        deadline = time.monotonic() + 90
        while "run.finished" not in seen and time.monotonic() < deadline:
            time.sleep(0.5)
            assert daemon.poll() is None, daemon.communicate(timeout=30)
            seen += _read_available(daemon)
        assert "run.finished" in seen, seen[-3000:]
        _random_bytes(tmp_path / "state" / "catalog.db")
        seen = ""
        while "run.catalog_unusable" not in seen and time.monotonic() < deadline:
            time.sleep(1)
            assert daemon.poll() is None, daemon.communicate(timeout=30)
            seen += _read_available(daemon)
            if "run.finished" in seen and "run.catalog_unusable" not in seen:
                # damaged inside one of the daemon's transactions: SQLite's rollback of its
                # journal wrote the pages back (a busy machine: 27 runs ok in CI): again
                _random_bytes(tmp_path / "state" / "catalog.db")
                seen = ""
        assert "run.catalog_unusable" in seen and "damaged" in seen, seen[-3000:]
        assert "run.crashed" not in seen and "Traceback" not in seen, seen[-3000:]
        assert daemon.poll() is None, "the daemon keeps running"
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=120)
    assert daemon.returncode == 0, err[-3000:]
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and not lost
    assert sandbox.ping()


def _read_available(proc: subprocess.Popen[str]) -> str:
    """What the daemon wrote to stdout so far, without blocking."""
    import os
    import select

    assert proc.stdout is not None
    chunks = []
    fd = proc.stdout.fileno()
    while select.select([fd], [], [], 0)[0]:
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data.decode(errors="replace"))
    return "".join(chunks)


@pytest.mark.fault("3", "catalog held or not writable", "held as a cold run saves its record")
def test_a_catalog_held_when_a_cold_backup_saves_its_record_does_not_lose_the_backup(
    tmp_path: Path, sandbox: Sandbox, fault_result: FaultResult
) -> None:
    """The final save waits longer than SQLite's 30 s for a catalog another process holds: a
    finished, checked backup is not turned into `busy` (and then deleted as a dead run's)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    config = write_config(tmp_path, sandbox)
    ledger = Ledger(sandbox, tmp_path / "archives", fault_result)
    ledger.take()
    db = tmp_path / "state" / "catalog.db"
    backup = Watched(config, "backup", "--json")
    # from the stop on, the run does not touch the catalog until its final record
    backup.wait_event("influxd.stopping")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        backup.wait_event("influxd.ready")
        # said once a save has failed after SQLite's own 30 s wait: held past it
        backup.wait_event("catalog.busy_final_save", 120)
    finally:
        holder.rollback()
        holder.close()
    code, out, err = backup.finish()
    assert code == 0, err[-3000:]
    run = json.loads(out)
    assert run["status"] == "ok", run
    assert "catalog.busy_final_save" in err
    listed = {r["id"]: r for r in Cli(config).json("list")}
    assert listed[run["id"]]["status"] == "ok"
    assert Path(run["archive"]).is_file()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and not lost
    assert sandbox.ping()


@pytest.mark.fault("3", "catalog held or not writable", "a checked run's final record not saved")
def test_a_checked_backup_whose_final_record_was_not_saved_is_adopted_not_deleted(
    tmp_path: Path, sandbox: Sandbox, fault_result: FaultResult
) -> None:
    """A run whose final save never happened (held past the longer wait, or a kill right after
    the check) stays `running`; the next lock-taking command adopts it from the record beside
    its archive when the archive matches that record, instead of deleting it as a dead run's."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    cli = Cli(write_config(tmp_path, sandbox))
    runs = [cli.json("backup") for _ in range(2)]
    assert [r["status"] for r in runs] == ["ok", "ok"], runs
    ledger = Ledger(sandbox, tmp_path / "archives", fault_result)
    ledger.take()
    db = tmp_path / "state" / "catalog.db"
    good, tampered = runs
    with sqlite3.connect(db) as conn:  # both rows as run_cold saved them at the start
        for run in runs:
            (started,) = conn.execute(
                "SELECT started_at FROM runs WHERE id = ?", (run["id"],)
            ).fetchone()
            start = RunRecord(id=run["id"], job=run["job"], mode="cold", started_at=started)
            conn.execute(
                "UPDATE runs SET status = 'running', record = ? WHERE id = ?",
                (json.dumps(start.to_dict()), run["id"]),
            )
    changed = Path(tampered["archive"])
    ledger.backups_before.pop(changed.name)
    with open(changed, "r+b") as fh:  # the record beside it no longer matches it
        fh.seek(700)
        byte = fh.read(1)
        fh.seek(700)
        fh.write(bytes([byte[0] ^ 0xFF]))
    done = cli("prune", "--json")  # takes the lock: recovery, then a prune
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recovery.run_adopted" in done.stderr
    listed = {r["id"]: r for r in cli.json("list")}
    assert listed[good["id"]]["status"] == "ok", listed[good["id"]]
    assert listed[good["id"]]["sha256"] == good["sha256"]
    assert listed[good["id"]]["archive"] == good["archive"]
    assert listed[tampered["id"]]["status"] == "interrupted", "not adopted: it does not match"
    assert Path(good["archive"]).is_file() and Path(good["archive"] + ".json").is_file()
    verified = cli("verify", good["id"], "--json")
    assert verified.returncode == 0, verified.stdout[-2000:]
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and not lost
