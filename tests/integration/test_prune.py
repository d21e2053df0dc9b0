"""prune on real archives: dry run, deletions through the catalog first, leftovers of dead runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.keep import prune as prune_module
from influx_backupd.keep.retention import RetentionPlan
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord, new_run_id
from tests.conftest import Cli, write_config


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_prune_dry_run_then_real_run_on_real_archives(tmp_path: Path, sandbox: Sandbox) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    keep_all = {"name": "nightly", "mode": "cold"}
    cli = Cli(write_config(tmp_path, sandbox, jobs=[keep_all]))
    records = [cli.json("backup") for _ in range(3)]
    assert [r["status"] for r in records] == ["ok"] * 3
    storage = tmp_path / "archives"
    catalog = Catalog(tmp_path / "state")

    # What dead runs leave: a failed run with a partial archive, a restore-test scratch dir.
    failed = RunRecord(
        new_run_id(), "nightly", "cold", status="failed", started_at=1.0, finished_at=2.0
    )
    catalog.save(failed)
    # it died after the rename, before recording the archive in its entry
    leftover = storage / f"nightly-{failed.id}.tar"
    leftover.write_bytes(b"an archive no entry names")
    scratch = storage / ".verify-dead"
    (scratch / "data").mkdir(parents=True)
    (scratch / "owner.json").write_text(json.dumps({"pid": _dead_pid()}))
    archives = {r["id"]: Path(r["archive"]) for r in records}

    cli = Cli(write_config(tmp_path, sandbox, jobs=[{**keep_all, "keep_last": 1}]))
    dry = cli.json("prune", "--dry-run")
    assert sorted(d["run_id"] for d in dry["deleted"]) == sorted(
        [records[0]["id"], records[1]["id"], failed.id]
    )
    assert [k["id"] for k in dry["kept"]] == [records[2]["id"]]
    assert str(scratch) in dry["cleaned"]
    assert all(p.exists() for p in archives.values()) and leftover.exists() and scratch.exists()
    assert len(catalog.list()) == 4, "a dry run deletes nothing"

    done = cli("prune", "--json")
    assert done.returncode == 0, done.stderr
    assert [r.id for r in catalog.list()] == [records[2]["id"]]
    assert archives[records[2]["id"]].exists(), "the newest good backup is kept"
    assert not archives[records[0]["id"]].exists() and not archives[records[1]["id"]].exists()
    assert not leftover.exists() and not scratch.exists()
    deleted_events = [
        json.loads(line)
        for line in done.stderr.splitlines()
        if line.startswith("{") and '"prune.deleted"' in line
    ]
    assert sorted(e["run_id"] for e in deleted_events) == sorted(
        [records[0]["id"], records[1]["id"], failed.id]
    ), "each deletion is logged on its own"

    again = cli.json("prune")
    assert again["deleted"] == [] and again["cleaned"] == [], "prune is idempotent"

    # And a prune follows every successful backup.
    fourth = cli.json("backup")
    assert fourth["status"] == "ok"
    assert [r.id for r in catalog.list()] == [fourth["id"]]
    kept = Path(fourth["archive"]).name
    assert sorted(p.name for p in storage.iterdir() if not p.name.startswith(".")) == [
        kept,
        kept + ".json",  # its record beside it; the pruned archives' records went with them
    ]


def _record(run_id: str, started: float, archive: Path) -> RunRecord:
    archive.write_bytes(b"archive of " + run_id.encode())
    return RunRecord(
        run_id,
        "nightly",
        "cold",
        status="ok",
        started_at=started,
        finished_at=started + 1,
        archive=str(archive),
        sha256="0" * 64,
    )


def _config(tmp_path: Path, **job: object) -> Path:
    server = Sandbox(tmp_path / "server")  # never started: prune needs no server
    server.write_config()
    return write_config(tmp_path, server, jobs=[{"name": "nightly", "mode": "cold", **job}])


def test_a_prune_that_died_between_catalog_and_file_is_finished_by_the_next(tmp_path: Path) -> None:
    config = load(_config(tmp_path, keep_last=1))
    config.storage_dir.mkdir(parents=True)
    catalog = Catalog(config.state_dir)
    old = _record("20200101T000000Z-0001", 100.0, config.storage_dir / "old.tar")
    new = _record("20200102T000000Z-0002", 200.0, config.storage_dir / "new.tar")
    catalog.save(old)
    catalog.save(new)
    # The state a crash leaves: pending list written, entry gone, file still there.
    prune_module._Pending(config.state_dir).add(old.id, [old.archive or ""])
    catalog.delete(old.id)

    report = prune_module.prune(config, catalog)
    assert report.cleaned == [old.archive]
    assert not Path(old.archive or "").exists() and Path(new.archive or "").exists()
    assert not (config.state_dir / "prune-pending.json").exists()


def test_a_plan_that_would_delete_the_newest_good_backup_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(_config(tmp_path, keep_last=1))
    config.storage_dir.mkdir(parents=True)
    catalog = Catalog(config.state_dir)
    records = [
        _record(f"2020010{i}T000000Z-000{i}", 100.0 * i, config.storage_dir / f"{i}.tar")
        for i in (1, 2)
    ]
    for r in records:
        catalog.save(r)

    def broken_plan(
        records: list[RunRecord], policy: object, *, now: float, **_: object
    ) -> RetentionPlan:
        return RetentionPlan(keep=[], delete=list(records))

    monkeypatch.setattr(prune_module, "plan", broken_plan)
    report = prune_module.prune(config, catalog)
    assert report.errors and "newest good backup" in report.errors[0]
    assert len(catalog.list()) == 2 and all(Path(r.archive or "").exists() for r in records)


def test_a_backup_that_failed_verification_is_not_counted_and_goes_once_superseded(
    tmp_path: Path,
) -> None:
    config = load(_config(tmp_path, keep_last=1))
    config.storage_dir.mkdir(parents=True)
    catalog = Catalog(config.state_dir)
    good = _record("20200101T000000Z-0001", 100.0, config.storage_dir / "good.tar")
    bad = _record("20200102T000000Z-0002", 200.0, config.storage_dir / "bad.tar")
    bad.verify_status = "failed"
    catalog.save(good)
    catalog.save(bad)
    report = prune_module.prune(config, catalog)
    kept = {k["id"]: k["reasons"] for k in report.kept}
    assert kept[good.id] == ["newest ok", "last 1/1"], "the rules count the good one"
    # the failed one is newer than every good backup kept: its check may have failed for a
    # reason outside it, and it may hold the newest data; kept until superseded
    assert kept[bad.id] == ["its check failed: kept until the good backups kept are all newer"]
    newer = _record("20200103T000000Z-0003", 300.0, config.storage_dir / "newer.tar")
    catalog.save(newer)
    report = prune_module.prune(config, catalog)
    assert [r.id for r in catalog.list()] == [newer.id]


def test_without_keep_rules_failures_stay_listed_but_their_files_go(tmp_path: Path) -> None:
    config = load(_config(tmp_path))
    config.storage_dir.mkdir(parents=True)
    catalog = Catalog(config.state_dir)
    ok = _record("20200102T000000Z-0002", 200.0, config.storage_dir / "ok.tar")
    failed = RunRecord(
        "20200101T000000Z-0001", "nightly", "cold", status="failed", started_at=100.0
    )
    leftover = config.storage_dir / f"nightly-{failed.id}.tar"
    leftover.write_bytes(b"complete archive, never recorded")
    catalog.save(ok)
    catalog.save(failed)

    report = prune_module.prune(config, catalog)
    assert report.deleted == [] and report.cleaned == [str(leftover)]
    assert not leftover.exists() and Path(ok.archive or "").exists()
    assert [r.status for r in catalog.list()] == ["failed", "ok"]


def test_staging_trees_no_job_will_use_again_are_cleaned_and_a_kept_one_stays(
    tmp_path: Path,
) -> None:
    server = Sandbox(tmp_path / "server")  # never started: prune needs no server
    server.write_config()
    jobs = [
        {"name": "nightly", "mode": "cold"},  # staged, keeps its tree: the default
        {"name": "direct", "mode": "cold", "copy": "direct"},
        {"name": "thrifty", "mode": "cold", "keep_staging": False},
    ]
    config = load(write_config(tmp_path, server, jobs=jobs))
    staging = config.storage_dir / ".staging"
    trees = {name: staging / name for name in ("nightly", "direct", "thrifty", "removed")}
    for tree in trees.values():
        (tree / "data" / "db").mkdir(parents=True)
        (tree / "data" / "db" / "000001.tsm").write_bytes(b"x" * 4096)
    # not trees of ours: a file, a name no job can have, a link (to someone's dir): left
    (staging / "notes.txt").write_text("mine")
    (staging / "my copy").mkdir()
    (staging / "my copy" / "f").write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "f").write_text("mine")
    (staging / "linked").symlink_to(elsewhere)
    others = sorted(["notes.txt", "my copy", "linked"])
    catalog = Catalog(config.state_dir)

    dry = prune_module.prune(config, catalog, dry_run=True)
    unused = sorted(str(trees[n]) for n in ("direct", "thrifty", "removed"))
    assert sorted(dry.cleaned) == unused
    assert all(tree.exists() for tree in trees.values()), "a dry run removes nothing"

    # `prune --job nightly` too: leftovers are the storage dir's, not one job's.
    report = prune_module.prune(config, catalog, job="nightly")
    assert sorted(report.cleaned) == unused and report.errors == []
    assert sorted(p.name for p in staging.iterdir()) == sorted(["nightly", *others])
    assert (trees["nightly"] / "data" / "db" / "000001.tsm").stat().st_size == 4096
    assert (staging / "notes.txt").read_text() == (staging / "my copy" / "f").read_text() == "mine"
    assert (elsewhere / "f").read_text() == "mine"


def test_a_renamed_jobs_backups_are_kept_and_prune_and_status_say_so(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """No keep_* rules apply to a job the config no longer names: its backups are kept for ever.
    Before, prune and status said nothing, and a renamed job's backups filled the disk."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    old = Cli(write_config(tmp_path, sandbox, jobs=[{"name": "hourly", "mode": "cold"}]))
    made = [old.json("backup") for _ in range(2)]
    assert [r["status"] for r in made] == ["ok", "ok"]
    renamed = {"name": "hourly2", "mode": "cold", "keep_last": 1}
    cli = Cli(write_config(tmp_path, sandbox, jobs=[renamed]))
    report = cli.json("prune")
    size = sum(r["bytes"] for r in made)
    assert report["not_in_config"] == [{"job": "hourly", "backups": 2, "bytes": size}]
    assert report["deleted"] == [], "kept: nothing says which rules would apply"
    assert all(Path(r["archive"]).exists() for r in made)
    text = cli("prune")
    assert text.returncode == 0, text.stderr
    [line] = [line for line in text.stdout.splitlines() if "hourly " in line]
    assert line.split()[:3] == ["kept", "2", "backups"] and "never pruned" in line, line
    [job] = [j for j in cli.json("status")["jobs"] if j["name"] == "hourly"]
    assert job["schedule"] == "not in the config: 2 backups kept, never pruned", job
    # one job of several pruned by name: the others are not its business
    assert "not_in_config" in cli.json("prune", "--job", "hourly2")
    assert cli.json("prune", "--job", "hourly2")["not_in_config"] == []


def test_a_dry_run_on_a_fresh_host_creates_nothing(tmp_path: Path, sandbox: Sandbox) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{"name": "nightly", "keep_last": 1}]))
    report = cli.json("prune", "--dry-run")
    assert report["deleted"] == [] and report["kept"] == [] and report["dry_run"] is True
    assert not (tmp_path / "state").exists(), "no state dir, catalog or lock made to say so"


def test_files_of_others_in_the_storage_dir_are_never_taken_for_a_dead_runs(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: every lock-taking command removed anything named *.partial or *.incomplete in
    the storage dir (rclone writes *.partial as it copies), prune a `.verify-*` dir of anyone's,
    and retention a directory found at a cold archive's name, with what they held."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{"name": "nightly", "keep_last": 1}]))
    first = cli.json("backup")
    storage = tmp_path / "archives"
    theirs = [storage / "notes.partial", storage / "x.tar.partial"]
    for path in theirs:
        path.write_text("mine")
    for name in ("photos.partial", "mine.incomplete", ".verify-mine", "nightly-x.incomplete"):
        (storage / name).mkdir()
        (storage / name / "precious.txt").write_text("mine")
        theirs.append(storage / name / "precious.txt")
    # retention's turn: the first backup's archive was moved away, a dir of someone's is there
    archive = Path(first["archive"])
    archive.rename(tmp_path / "moved-away.tar")
    archive.mkdir()
    (archive / "precious.txt").write_text("mine")
    theirs.append(archive / "precious.txt")

    for command in (("prune", "--dry-run"), ("recover",), ("verify", first["id"]), ("backup",)):
        done = cli(*command)
        assert "Traceback" not in done.stderr, (command, done.stderr[-2000:])
    done = cli("backup")
    assert done.returncode == 0, done.stderr[-2000:]
    assert cli("prune").returncode in (0, 1)
    assert [p for p in theirs if not p.exists()] == [], "none of theirs removed"
    assert "nothing to recover" in cli("recover").stdout
