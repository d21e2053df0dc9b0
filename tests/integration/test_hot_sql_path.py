"""A 1.x hot chain restored by the SQL merge (links without the shard listing, as from a remote
backup_host), against a real influxd 1.6: the restored server holds what the source held at the
newest link, per database, retention policy and measurement. The newest link's meta decides
which databases, retention policies (durations, default) and shards exist; a measurement whose
field type changed in a shard is taken from the newer links only; what the meta cannot tell is
said, not kept silent."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from influx_backupd.influxd import counts, influxql
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.restore.sql_chain import CAVEAT
from tests.conftest import Cli, log_events, write_config
from tests.integration.test_chain_merge import _without_listing
from tests.integration.test_restore_target import serving

HOT = [{"name": "hotjob", "mode": "hot"}]
B = 1_577_836_800  # 2020-01-01, seconds


def _write(server: Sandbox, db: str, lines: list[str], rp: str | None = None) -> None:
    params = {"db": db, "precision": "s", **({"rp": rp} if rp else {})}
    req = urllib.request.Request(
        f"{server.url}/write?{urllib.parse.urlencode(params)}", data="\n".join(lines).encode()
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


def _points(m: str, n: int, at: int, value: str = "{i}i") -> list[str]:
    """n points of m, one a minute from `at` (seconds since the epoch), over 3 hosts."""
    return [f"{m},host=h{i % 3} value={value.format(i=i)} {at + 60 * i}" for i in range(n)]


def _q(server: Sandbox, statement: str, db: str | None = None) -> None:
    answer = json.dumps(server.query(statement, db=db, method="POST"))
    assert '"error"' not in answer, (statement, answer)


def _figures(url: str) -> dict[str, Any]:
    """Per database: its retention policies (name, duration, shard duration, default) and the
    points of each retention policy and measurement holding some."""
    found: dict[str, Any] = {}
    for db in sorted(set(counts.databases(url)) - {"_internal"}):
        rps = influxql.values(influxql.query(url, "SHOW RETENTION POLICIES", db, timeout=60))
        measurements = influxql.values(influxql.query(url, "SHOW MEASUREMENTS", db, timeout=60))
        points: dict[str, int] = {}
        for rp in rps:
            for (m,) in measurements:
                q = f'SELECT count("value") FROM "{db}"."{rp[0]}"."{m}"'
                rows = influxql.values(influxql.query(url, q, db, timeout=60))
                if rows and rows[0][1]:
                    points[f"{rp[0]}.{m}"] = int(rows[0][1])
        found[db] = {"rps": sorted((r[0], r[1], r[2], r[4]) for r in rps), "points": points}
    return found


def _shard_of(server: Sandbox, db: str, rp: str, at: int) -> int:
    """The id of db's shard in rp whose group holds the time `at` (seconds)."""
    for series in server.query("SHOW SHARDS")["results"][0]["series"]:
        for sid, database, policy, _, start, end, *_ in (
            series["values"] if series["name"] == db else []
        ):
            bounds = [
                datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in (start, end)
            ]
            if (database, policy) == (db, rp) and bounds[0] <= at < bounds[1]:
                return int(sid)
    raise AssertionError(f"no shard of {db}.{rp} holds {at}")


def _settled(server: Sandbox) -> None:
    """No tombstone left in the live shards (a DROP applied), so no link holds one."""
    deadline = time.monotonic() + 60
    while any(server.data.rglob("*.tombstone")):
        assert time.monotonic() < deadline, "tombstones never applied"
        time.sleep(0.2)


def test_the_sql_merge_restores_the_newest_links_databases_policies_shards_and_types(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    now = int(time.time()) // 3600 * 3600
    for db in ("db1", "db2", "db3"):
        sandbox.create_db(db)
    _write(sandbox, "db1", _points("cpu", 300, B))
    _write(sandbox, "db1", _points("cpu", 200, B + 30 * 86400))  # a shard dropped below
    _write(sandbox, "db1", _points("mem", 100, B))
    _write(sandbox, "db1", _points("typed", 50, B + 1000))  # integer, then float
    _q(sandbox, "CREATE RETENTION POLICY short ON db1 DURATION 48h REPLICATION 1 SHARD DURATION 1h")
    _write(sandbox, "db1", _points("temp", 60, now - 3 * 3600), rp="short")
    _write(sandbox, "db2", _points("disk", 100, B + 60 * 86400))
    _q(sandbox, "CREATE RETENTION POLICY other ON db2 DURATION INF REPLICATION 1")
    _write(sandbox, "db2", _points("disk", 50, B + 62 * 86400), rp="other")
    _write(sandbox, "db3", _points("x", 100, B))
    full = cli.json("backup")
    assert full["kind"] == "full" and full["status"] == "ok", full

    # between the full and the first increment: what only the newest meta can tell
    _q(sandbox, "DROP DATABASE db3")
    _q(sandbox, "CREATE DATABASE db3")  # the same name, new shards
    _write(sandbox, "db3", _points("y", 30, B))
    _q(sandbox, "DROP RETENTION POLICY other ON db2")
    _q(sandbox, "ALTER RETENTION POLICY short ON db1 DURATION 72h DEFAULT")
    _q(sandbox, f"DROP SHARD {_shard_of(sandbox, 'db1', 'autogen', B + 30 * 86400)}")
    _q(sandbox, "DROP MEASUREMENT typed", "db1")
    _settled(sandbox)
    _write(sandbox, "db1", _points("typed", 70, B + 1000, "{i}.5"), rp="autogen")  # now float
    _write(sandbox, "db1", _points("cpu", 100, B + 100_000), rp="autogen")
    sandbox.create_db("db4")
    _write(sandbox, "db4", _points("z", 40, B))
    first = cli.json("backup")
    assert first["kind"] == "incremental" and first["status"] == "ok", first

    _write(sandbox, "db1", _points("typed", 20, B + 9000, "{i}.25"), rp="autogen")
    _write(sandbox, "db2", _points("disk", 30, B + 60 * 86400 + 30_000))
    _q(sandbox, "DROP DATABASE db4")  # created and dropped between links
    second = cli.json("backup")
    assert second["kind"] == "incremental" and second["status"] == "ok", second
    expected = _figures(sandbox.url)
    assert expected["db1"]["points"]["autogen.typed"] == 90, expected
    assert "db4" not in expected and "other" not in str(expected["db2"]["rps"]), expected
    for record in (first, second):
        _without_listing(tmp_path, record)  # as a remote backup_host's: by SELECT INTO

    target = tmp_path / "by-sql"
    done = cli("restore", second["id"], "--target", str(target), "--json", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["merge"] == "sql", result
    assert CAVEAT in result["warnings"], "what the meta cannot tell is said"
    [superseded] = log_events(done.stderr, "restore.superseded_by_type")
    assert any(
        ": typed (field value integer, later float)" in m for m in superseded["measurements"]
    )
    with serving(target / "influxdb.conf") as url:
        assert _figures(url) == expected

    # one database of the same chain into the live server, by the same merge
    done = cli("restore", second["id"], "--database", "db1", "--as", "copy", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads(done.stdout)
    assert one["merge"] == "sql" and CAVEAT in one["warnings"], one
    assert _figures(sandbox.url)["copy"] == expected["db1"]

    # verify's restore test goes the same way: db3's old shards, db4, db2's policy other, the
    # dropped shard are not expected back (they were, as databases missing after the restore)
    done = cli("verify", second["id"], "--restore-test", "--json", timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
