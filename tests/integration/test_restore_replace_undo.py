"""`restore --database NAME --replace` drops the live database first: DROP DATABASE takes its
continuous queries and the users' grants on it along, which `influxd restore -portable` of the
copy kept aside does not bring back (its retention policies, their durations and default it
does). Before, a failed replace put the data back without them, and a replace that worked left
the users without their grants. Real influxd 1.6; the failure is the stand-in tool's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, Cli, descendants_named, wait_until, write_config

CQ = (
    'CREATE CONTINUOUS QUERY "hourly" ON "other" BEGIN SELECT mean("value") INTO '
    '"other"."autogen"."mem_1h" FROM "other"."autogen"."mem" GROUP BY time(1h) END'
)


def _live(sandbox: Sandbox) -> dict[str, Any]:
    """What the drop loses, and what the tool restores, of database other."""

    def rows(q: str) -> Any:
        return sandbox.query(q)["results"][0].get("series")

    cqs = [s for s in rows("SHOW CONTINUOUS QUERIES") or [] if s["name"] == "other"]
    return {
        "cqs": [row[0] for s in cqs for row in s.get("values") or []],
        "grants": rows('SHOW GRANTS FOR "reader"')[0].get("values"),
        "policies": rows('SHOW RETENTION POLICIES ON "other"')[0]["values"],
        "points": rows('SELECT count("value") FROM "other"."autogen"."mem"')[0]["values"][0][1],
    }


def _set_up(tmp_path: Path, sandbox: Sandbox) -> str:
    """A cold backup of metrics and other; then other gets a CQ, a retention policy (the
    default, with its own shard group duration) and a grant the backup does not hold."""
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    sandbox.create_db("other")
    sandbox.write_points("other", 700, measurement="mem")
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    for q in (
        CQ,
        'CREATE RETENTION POLICY "long" ON "other" DURATION 100000h REPLICATION 1 '
        "SHARD DURATION 3d DEFAULT",
        "CREATE USER \"reader\" WITH PASSWORD 'pw'",
        'GRANT READ ON "other" TO "reader"',
    ):
        sandbox.query(q, method="POST")
    return str(record["id"])


def test_a_failed_replace_puts_the_database_back_with_its_cqs_and_grants(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    backup_id = _set_up(tmp_path, sandbox)
    before = _live(sandbox)
    assert before["cqs"] == ["hourly"] and before["grants"] == [["other", "READ"]]

    # `influxd restore -db metrics -newdb other` fails after other was dropped
    failing = STAND_INS / "influxd_restore_renaming_fails"
    broken = Cli(write_config(tmp_path, sandbox, influxd={"binary": str(failing)}))
    done = broken(
        "restore", backup_id, "--database", "metrics", "--as", "other", "--replace", "--yes"
    )

    assert done.returncode == 1, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert "database other was put back from the copy" in line, line
    assert "continuous queries hourly" in line and "grants to reader" in line, line
    assert "; but" not in line, line
    assert _live(sandbox) == before, "data, retention policies, CQ and grant as they were"


def test_a_replace_killed_after_the_drop_is_undone_with_its_cqs_and_grants(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    backup_id = _set_up(tmp_path, sandbox)
    before = _live(sandbox)
    pending = tmp_path / "state" / "restore-database.json"
    hanging = STAND_INS / "influxd_restore_renaming_hangs"
    stuck = Cli(write_config(tmp_path, sandbox, influxd={"binary": str(hanging)}))
    proc = stuck.popen(
        "restore", backup_id, "--database", "metrics", "--as", "other", "--replace", "--yes"
    )

    def tool() -> list[psutil.Process]:  # the stand-in's hanging `influxd restore`
        assert proc.poll() is None, proc.communicate()
        return descendants_named(proc.pid, "sleep")

    try:
        wait_until(tool, 120, "the restore's tool on the live server")
        hanging_tool = tool()
        assert "other" not in sandbox.databases(), "dropped"
        assert json.loads(pending.read_text())["lost"]["cqs"][0][1] == "hourly"
    finally:
        proc.kill()
        proc.communicate()
    for p in hanging_tool:
        p.kill()

    done = Cli(write_config(tmp_path, sandbox))("prune")  # takes the lock (a dry run: not)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recovery.database_restore_undone" in done.stderr
    assert not pending.exists()
    assert _live(sandbox) == before


def test_a_replace_that_works_keeps_the_users_grants_and_names_a_cq_it_loses(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    backup_id = _set_up(tmp_path, sandbox)
    cli = Cli(write_config(tmp_path, sandbox))
    done = cli("restore", backup_id, "--database", "other", "--replace", "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    after = _live(sandbox)
    assert after["points"] == 700 and after["grants"] == [["other", "READ"]]
    assert after["cqs"] == [], "the backup's other had no CQ"
    warned = [ln for ln in done.stderr.splitlines() if "warning: " in ln]
    assert any("continuous query hourly ON other is not in the backup" in w for w in warned), (
        done.stderr[-3000:]
    )
