"""Database and retention-policy names influxd 1.x cannot load its files under after a restart
(influxd/names.py): a cold run and a whole-server cold restore refuse them before anything is
stopped; names that still match themselves as glob patterns are backed up as any other."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, whole, write_config

POINTS = 30


def _bracketed(server: Sandbox, where: str) -> str:
    """A database (or a retention policy, the default of database rpdb) named with a [,
    holding POINTS points in the WAL: the dir a restart would not load."""
    if where == "database":
        server.create_db("br[ack]")
        server.write_points("br[ack]", POINTS)
        return "br[ack]"
    server.create_db("rpdb")
    server.query(
        'CREATE RETENTION POLICY "r[p]" ON "rpdb" DURATION 0s REPLICATION 1 DEFAULT',
        method="POST",
    )
    server.write_points("rpdb", POINTS)
    return "rpdb"


@pytest.mark.parametrize("where", ["database", "retention policy"])
@pytest.mark.parametrize("copy", ["direct", "staged"])
def test_a_cold_run_refuses_a_name_influxd_would_not_load_before_anything_is_stopped(
    tmp_path: Path, sandbox: Sandbox, where: str, copy: str
) -> None:
    db = _bracketed(sandbox, where)
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": copy}
    cli = Cli(write_config(tmp_path, sandbox, jobs=[job]))
    pids = sandbox.pids()

    done = cli("backup", "--json")

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    error = json.loads(done.stdout)["error"]
    named = "br[ack]" if where == "database" else "r[p]"
    assert "\n" not in error and named in error and "holds '['" in error, error
    assert "glob patterns" in error and "influxd not stopped" in error, error
    assert 'mode = "hot"' in error, error
    assert sandbox.pids() == pids, "influxd was never stopped"
    assert sandbox.count(db) == POINTS
    (record,) = cli.json("list")
    assert record["status"] == "failed" and record["error"] == error
    assert not list((tmp_path / "archives").glob("*.tar"))

    # check-config warns, naming the dir; the dry run says the cold run would be refused
    checked = cli("check-config")
    assert checked.returncode == 0, checked.stderr
    assert f"{named}" in checked.stdout and "a cold run of nightly is refused" in checked.stdout
    planned = cli("backup", "--dry-run", "--json")
    assert planned.returncode == 1, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["refused"] and named in plan["refused"]
    assert any("would be refused" in reason for reason in plan["reasons"])


def test_names_whose_patterns_still_match_themselves_are_backed_up_and_served_again(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Measured with influxd 1.6: ], *, ?, { and , in a name survive the restart."""
    names = ["b]r", "st*r", "q?m", "c{u}r", "a,b"]
    for name in names:
        sandbox.create_db(name)
        sandbox.write_points(name, POINTS)
    cli = Cli(write_config(tmp_path, sandbox))

    record = cli.json("backup")

    assert record["status"] == "ok", record["error"]
    assert {name: sandbox.count(name) for name in names} == dict.fromkeys(names, POINTS)
    assert "glob patterns" not in cli("check-config").stdout


def test_a_whole_server_restore_of_such_a_name_is_refused_before_influxd_is_stopped(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """An archive holding a database dir named with a [ (made here from a plain one's: our
    cold run refuses to write one): influxd restarted on it would serve none of its points."""
    sandbox.create_db("plain")
    sandbox.write_points("plain", POINTS)
    cli = Cli(write_config(tmp_path, sandbox))
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    renamed = tmp_path / "renamed.tar"  # no record beside it: restored as an unchecked path
    with tarfile.open(record["archive"]) as src, tarfile.open(renamed, "w") as dst:
        for info in src:
            plain, contents = whole(src, info)
            for top in ("data/", "wal/"):
                if plain.name == top + "plain" or plain.name.startswith(top + "plain/"):
                    plain.name = top + "br[ack]" + plain.name[len(top + "plain") :]
            dst.addfile(plain, contents)
    pids = sandbox.pids()

    done = cli("restore", str(renamed), "--yes")

    assert done.returncode == 1, done.stderr
    assert "holds '['" in done.stderr and "influxd not stopped" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert sandbox.pids() == pids, "influxd was never stopped"
    assert sandbox.count("plain") == POINTS
    assert not list(sandbox.root.glob("*.rollback-*"))
