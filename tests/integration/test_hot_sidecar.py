"""A 1.x hot chain restored from the storage dir alone (the catalog lost with the host), by the
records the hot job writes beside each backup dir. Real influxd 1.6."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, hot_chain, write_config

HOT = [{"name": "hotjob", "mode": "hot"}]
SAME = ("id", "job", "mode", "kind", "chain_id", "parent_id", "since", "sha256", "bytes", "files")


def _flip_max_node_id(meta: Path) -> None:
    """The low bit of a 1.x portable .meta file's last byte: its MaxNodeID varint (field 2, which
    influxd writes last, 0 here), so the file stays well-formed."""
    data = bytearray(meta.read_bytes())
    assert data[-2] == 0x10 and data[-1] in (0, 1), data[-4:].hex()
    data[-1] ^= 1
    meta.write_bytes(bytes(data))


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "influxd.log" not in p.name)


def _sidecar(record: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(record["archive"] + ".json").read_text())
    return data


def _new_host(tmp_path: Path, server: Sandbox) -> Cli:
    """A config with an empty state_dir (no catalog) and the old storage dir; [influxd] server."""
    home = tmp_path / "newhost"
    home.mkdir()
    config = write_config(home, server, influxd={"user": "influxdb", "group": "influxdb"}, jobs=HOT)
    text = config.read_text().replace(str(home / "archives"), str(tmp_path / "archives"))
    config.write_text(text)
    return Cli(config)


def test_a_chain_restores_by_path_without_the_catalog_and_refuses_a_broken_one(
    tmp_path: Path, sandbox: Sandbox, influxd_path: str
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    # the last increment holds a database the full never saw
    full, first, second = hot_chain(
        cli,
        sandbox,
        [[("metrics", 3_000)], [("metrics", 1_000)], [("later", 500), ("metrics", 700)]],
    )
    for record in (full, first, second):
        sidecar = _sidecar(record)
        assert sidecar["format"] == 1 and sidecar["status"] == "ok"
        assert {k: sidecar[k] for k in SAME} == {k: record[k] for k in SAME}
        assert sidecar["started_at"] == record["started_at_unix"]
        for key in ("flavour", "backup_host"):
            assert sidecar[key] == record[key]
        assert sidecar["extra"]["influxd_version"] == record["extra"]["influxd_version"]
    assert [r["kind"] for r in (full, first, second)] == ["full", "incremental", "incremental"]
    assert not list((tmp_path / "archives").glob("*.partial"))
    expected = {"metrics": sandbox.count("metrics"), "later": sandbox.count("later")}
    assert expected == {"metrics": 4_700, "later": 500}

    fresh = Sandbox(tmp_path / "fresh", binary=influxd_path)
    fresh.write_config()
    fresh.start()
    try:
        cli = _new_host(tmp_path, fresh)
        before = _tree(fresh.root)

        # A flipped bit in the full's meta file that leaves it a well-formed meta (its last
        # field, MaxNodeID, 0 -> 1): every manifest and meta check passes, only the sha256 the
        # sidecar recorded tells. (A flip inside the meta store itself is refused by the scan.)
        meta = sorted(Path(full["archive"]).glob("*.meta"))[0]
        _flip_max_node_id(meta)
        refused = cli("restore", second["archive"], "--yes")
        assert refused.returncode == 1, refused.stderr[-2000:]
        assert "nothing touched" in refused.stderr and "Traceback" not in refused.stderr
        assert "does not match its backup record's" in refused.stderr
        assert _tree(fresh.root) == before
        _flip_max_node_id(meta)

        # The first increment gone: the second cannot be restored, and says which link it lacks.
        aside = tmp_path / "aside"
        shutil.move(first["archive"], aside)
        refused = cli("restore", second["archive"], "--yes")
        assert refused.returncode == 1
        lines = [line for line in refused.stderr.splitlines() if "restore refused" in line]
        assert len(lines) == 1, refused.stderr[-2000:]
        assert first["id"] in lines[0] and "cannot be restored without" in lines[0]
        assert "Traceback" not in refused.stderr
        assert _tree(fresh.root) == before
        shutil.move(aside, first["archive"])

        # verify --restore-test of the path follows the same chain.
        checked = cli.json("verify", second["archive"], "--restore-test")[0]
        assert checked["status"] == "ok", checked
        assert "3 links restored" in checked["checks"]["restore_test"]
        assert checked["checks"]["sha256"] == "ok"

        done = cli("restore", second["archive"], "--yes", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert result["links"] == [full["archive"], first["archive"], second["archive"]]
        assert result["run_id"] == second["id"]
        assert fresh.ping()
        assert {db: fresh.count(db) for db in expected} == expected
        assert sorted(fresh.databases()) == ["later", "metrics"], "temporary databases dropped"
    finally:
        fresh.stop()


def test_prune_removes_a_sidecar_with_its_backup_and_one_left_without(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    job = {**HOT[0], "full_every": "0s", "keep_last": 1}  # every run a full: its own chain
    cli = Cli(write_config(tmp_path, sandbox, jobs=[job]))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 200)
    old = cli.json("backup")
    time.sleep(1.1)  # run ids and start times sort by the second
    new = cli.json("backup")
    assert old["status"] == new["status"] == "ok"
    assert new["kind"] == "full"
    # keep_last = 1: the run's own prune took the old chain, its record with its dir.
    assert not Path(old["archive"]).exists() and not Path(old["archive"] + ".json").exists()
    assert Path(new["archive"]).is_dir() and Path(new["archive"] + ".json").is_file()
    storage = tmp_path / "archives"
    # A record whose dir and catalog entry are both gone (a prune that died halfway), and one
    # whose dir is there but which this catalog does not know (copied from another host).
    orphan = storage / "hotjob-20200101T000000Z-dead.json"
    orphan.write_text(json.dumps({**_sidecar(new), "id": "20200101T000000Z-dead"}))
    foreign_dir = storage / "hotjob-20200102T000000Z-beef"
    shutil.copytree(new["archive"], foreign_dir)
    foreign = foreign_dir.with_name(foreign_dir.name + ".json")
    foreign.write_text(json.dumps({**_sidecar(new), "id": "20200102T000000Z-beef"}))

    report = cli.json("prune")
    assert report["cleaned"] == [str(orphan)] and not orphan.exists()
    assert Path(new["archive"]).is_dir() and Path(new["archive"] + ".json").is_file()
    assert foreign.is_file(), "a record whose backup dir is there is kept"


def test_a_bare_portable_backup_without_a_record_restores_alone_with_a_warning(
    tmp_path: Path, sandbox: Sandbox, influxd_path: str
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_200)
    bare = tmp_path / "bare"
    subprocess.run(
        [influxd_path, "backup", "-portable", "-host", sandbox.backup_host, str(bare)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    fresh = Sandbox(tmp_path / "fresh", binary=influxd_path)
    fresh.write_config()
    fresh.start()
    try:
        done = _new_host(tmp_path, fresh)("restore", str(bare), "--yes", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "restore.no_sidecar" in done.stderr
        assert "restored as a full" in done.stderr
        assert fresh.count("metrics") == 1_200
    finally:
        fresh.stop()
