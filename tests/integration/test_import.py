"""`import`: a new host's catalog rebuilt from the records beside the archives. Real influxd 1.6."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from tests.conftest import Cli, write_config

JOBS = [{"name": "nightly", "mode": "cold", "copy": "direct"}, {"name": "hotjob", "mode": "hot"}]


def test_a_new_host_imports_the_backups_then_lists_verifies_and_restores_them(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    old = Cli(write_config(tmp_path, sandbox, jobs=JOBS))
    cold = old.json("backup", "--job", "nightly")
    full = old.json("backup", "--job", "hotjob")
    sandbox.write_points("metrics", 700, start=100_000)
    increment = old.json("backup", "--job", "hotjob")
    runs = [cold, full, increment]
    assert [r["status"] for r in runs] == ["ok"] * 3 and increment["kind"] == "incremental"

    # The new host: an empty state_dir, the old storage dir (mounted where the config says).
    home = tmp_path / "newhost"
    home.mkdir()
    config = write_config(home, sandbox, jobs=JOBS)
    config.write_text(
        config.read_text().replace(str(home / "archives"), str(tmp_path / "archives"))
    )
    new = Cli(config)
    assert new.json("list") == []

    dry = new.json("import", "--dry-run")
    assert sorted(dry["imported"]) == sorted(r["id"] for r in runs)
    assert new.json("list") == [], "a dry run adds nothing"
    assert not (home / "state").exists(), "a dry run on a fresh host creates nothing there"

    # A record that cannot be read is named; the others are imported anyway (exit 1).
    stray = tmp_path / "archives" / "nightly-20200101T000000Z-dead.tar"
    stray.write_bytes(b"")
    Path(str(stray) + ".json").write_text("{not json")
    done = new("import", "--json")
    assert done.returncode == 1
    assert "not imported" in done.stderr and stray.name in done.stderr
    assert sorted(json.loads(done.stdout)["imported"]) == sorted(r["id"] for r in runs)
    listed = {r["id"]: r for r in new.json("list")}
    assert set(listed) == {r["id"] for r in runs}
    assert listed[increment["id"]]["parent_id"] == full["id"]
    stray.unlink()
    Path(str(stray) + ".json").unlink()

    again = new.json("import")
    assert again["imported"] == [] and len(again["already_known"]) == 3, "import is idempotent"

    verified = new("verify", "--all", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr[-2000:]
    assert [r["checks"].get("sha256") for r in json.loads(verified.stdout)].count("ok") >= 1

    # The chain by its catalog id, on the new host: full then increment.
    sandbox.write_points("metrics", 300, start=200_000)
    restored = new("restore", increment["id"], "--yes", "--json")
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert sandbox.count("metrics") == 2_700


def test_import_from_a_storage_dir_that_does_not_exist_is_a_config_error(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    config.write_text(config.read_text().replace(str(tmp_path / "archives"), "/nonexistent/x"))
    done = Cli(config)("import", "--json")
    assert done.returncode == 78, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "storage.dir" in line and "/nonexistent/x" in line, line
    assert not (tmp_path / "state").exists()


def test_backups_that_failed_their_check_stay_failed_through_an_import_and_prune_keeps_good_ones(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: a verdict was kept only in the catalog. Rebuilt by import (a damaged catalog, a
    new host), the two newest backups, found damaged by verify, counted as good again: keep_last
    = 2 kept them and prune removed the two good ones, exit 0. The record beside each backup now
    carries the verdict, and a later good verdict too."""
    runs = _backups(tmp_path, sandbox, 4)
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{**NIGHTLY, "keep_last": 2}]))
    kept_bytes = {}
    for run in runs[2:]:  # the two newest rot on disk
        archive = Path(run["archive"])
        kept_bytes[archive] = archive.read_bytes()
        data = bytearray(kept_bytes[archive])
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
    assert cli("verify", "--all").returncode == 1
    # the catalog is lost (a new host, or a damaged one rebuilt the documented way)
    (tmp_path / "state" / "catalog.db").unlink()
    imported = cli.json("import")
    assert sorted(imported["imported"]) == sorted(r["id"] for r in runs)
    listed = {r["id"]: r["verify_status"] for r in cli.json("list")}
    assert listed == {
        runs[0]["id"]: "ok",
        runs[1]["id"]: "ok",
        runs[2]["id"]: "failed",
        runs[3]["id"]: "failed",
    }
    pruned = cli.json("prune")
    assert pruned["deleted"] == [], "the only good backups must stay"
    for run in runs:
        assert Path(run["archive"]).exists()

    # mended (copied back from elsewhere): verify says ok, and so does the record beside it
    for archive, data in kept_bytes.items():
        archive.write_bytes(data)
    assert cli("verify", "--all").returncode == 0
    (tmp_path / "state" / "catalog.db").unlink()
    cli.json("import")
    assert {r["verify_status"] for r in cli.json("list")} == {"ok"}


def test_an_empty_catalog_beside_backups_says_to_import_them(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: a catalog.db truncated to 0 bytes (or none, on a new host) beside a storage dir
    full of backups: `list` said "no backups yet", `status` "never ran", `verify --all` "no
    backups to verify", all exit 0, and nothing said the backups were there to be imported."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{"name": "nightly", "mode": "cold"}]))
    taken = [cli.json("backup") for _ in range(2)]
    assert [r["status"] for r in taken] == ["ok", "ok"]
    (tmp_path / "state" / "catalog.db").write_bytes(b"")
    hint = (
        f"the catalog knows no backups, but 2 backups with their records lie in storage.dir "
        f"{tmp_path / 'archives'}: add them with `influx-backupd import`"
    )
    for argv in (["list"], ["list", "--json"], ["status"], ["verify", "--all"]):
        done = cli(*argv)
        assert done.returncode == 0, (argv, done.stderr)
        assert hint in done.stderr.splitlines()[-1], (argv, done.stderr)
    assert cli.json("list") == []
    cli("import", check=True)
    assert len(cli.json("list")) == 2
    assert "import" not in cli("list").stderr


def test_a_verdict_an_older_release_kept_only_in_the_catalog_reaches_the_record_beside(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The upgrade audit: verdicts of releases before the record beside a backup carried them
    were in the catalog alone; the catalog lost after the upgrade, import counted those
    backups good and keep_last pruned a good one for them. The next prune writes them beside."""
    runs = _backups(tmp_path, sandbox, 3)
    catalog = Catalog(tmp_path / "state")
    for run in runs[1:]:  # found bad by an older release's verify: the catalog says so, alone
        record = catalog.get(run["id"])
        assert record is not None
        record.verify_status, record.verified_at = "failed", record.started_at + 60
        record.verify_detail = "sha256: the archive changed"
        catalog.save(record)
        beside = json.loads(Path(run["archive"] + ".json").read_text())
        assert beside["verify_status"] is None
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{**NIGHTLY, "keep_last": 2}]))

    assert cli.json("prune")["deleted"] == []

    for run in runs[1:]:
        beside = json.loads(Path(run["archive"] + ".json").read_text())
        assert beside["verify_status"] == "failed", beside
    (tmp_path / "state" / "catalog.db").unlink()
    cli.json("import")
    listed = {r["id"]: r["verify_status"] for r in cli.json("list")}
    assert listed == {runs[0]["id"]: None, runs[1]["id"]: "failed", runs[2]["id"]: "failed"}
    assert cli.json("prune")["deleted"] == [], "the only good backup stays"
    assert all(Path(run["archive"]).exists() for run in runs)


NIGHTLY = {"name": "nightly", "mode": "cold", "copy": "direct"}


def _backups(tmp_path: Path, sandbox: Sandbox, count: int) -> list[dict[str, Any]]:
    """count ok cold backups of a server with one database, oldest first."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    cli = Cli(write_config(tmp_path, sandbox, jobs=[NIGHTLY]))
    runs = [cli.json("backup") for _ in range(count)]
    assert [r["status"] for r in runs] == ["ok"] * count, [r.get("error") for r in runs]
    return runs
