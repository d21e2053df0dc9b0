"""Continuous queries (and, for --target, users) after a 1.x hot restore, against a real
influxd 1.6: `influxd restore -portable` restores none of them, although the backup's meta holds
them; every restore form re-creates them (restore/cqs.py) and says so in its JSON."""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.restore.cqs import ContinuousQuery, renamed
from tests.conftest import Cli, write_config
from tests.integration.test_restore_target import serving

HOT = [{"name": "hotjob", "mode": "hot"}]
COLD = [{"name": "nightly", "mode": "cold", "copy": "direct"}]
CQ1 = (
    "CREATE CONTINUOUS QUERY cq1 ON db1 BEGIN SELECT mean(value) INTO cpu_1h FROM cpu "
    "GROUP BY time(1h), * END"
)
# added by the increment; it reads db1 and writes db2: under another name, not the same query
CQ2 = (
    'CREATE CONTINUOUS QUERY "cq 2" ON db1 RESAMPLE EVERY 2h BEGIN SELECT max(value) INTO '
    "db2.autogen.cpu_max FROM db1.autogen.cpu GROUP BY time(1h) END"
)
CQ3 = "CREATE CONTINUOUS QUERY cq3 ON db2 BEGIN SELECT count(value) INTO n FROM mem GROUP BY time(1d) END"


def _q(url: str, statement: str, auth: tuple[str, str] | None = None) -> Any:
    req = urllib.request.Request(
        url + "/query", data=urllib.parse.urlencode({"q": statement}).encode(), method="POST"
    )
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert "error" not in answer["results"][0], (statement, answer)
    return answer["results"][0]


def _cqs(url: str) -> dict[tuple[str, str], str]:
    """SHOW CONTINUOUS QUERIES: (database, name) → its statement as influxd stored it."""
    return {
        (s["name"], row[0]): row[1]
        for s in _q(url, "SHOW CONTINUOUS QUERIES").get("series", [])
        for row in s.get("values") or []
    }


def _chain(tmp_path: Path, sandbox: Sandbox, jobs: list[dict[str, Any]] = HOT) -> tuple[Cli, str]:
    """A hot chain whose full holds cq1 ON db1, an admin and a user with a grant, whose increment adds
    cq 2 (ON db1, into db2) and cq3 ON db2. Returns the CLI and the increment's id."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=jobs))
    sandbox.create_db("db1")
    sandbox.write_points("db1", 500)
    _q(sandbox.url, CQ1)
    _q(sandbox.url, "CREATE USER reader WITH PASSWORD 'r3ad'")
    _q(sandbox.url, "GRANT READ ON db1 TO reader")
    _q(sandbox.url, "CREATE USER boss WITH PASSWORD 'b0ss' WITH ALL PRIVILEGES")
    full = cli.json("backup", "--job", "hotjob")
    assert full["status"] == "ok", full["error"]
    sandbox.create_db("db2")
    sandbox.write_points("db2", 300, start=100_000, measurement="mem")
    _q(sandbox.url, CQ2)
    _q(sandbox.url, CQ3)
    increment = cli.json("backup", "--job", "hotjob")
    assert increment["status"] == "ok" and increment["kind"] == "incremental", increment
    return cli, str(increment["id"])


def test_a_whole_server_restore_recreates_the_backups_cqs_and_names_the_live_ones_it_drops(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli, increment = _chain(tmp_path, sandbox)
    backed_up = _cqs(sandbox.url)
    assert len(backed_up) == 3
    # after the backup: a query of the live server's own, which the restored state never had
    _q(
        sandbox.url,
        "CREATE CONTINUOUS QUERY later ON db2 BEGIN SELECT min(value) INTO m FROM mem GROUP BY time(1h) END",
    )

    done = cli("restore", increment, "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    assert _cqs(sandbox.url) == backed_up, "the link's queries, as they were defined"
    assert sorted(result["continuous_queries"]["recreated"]) == [
        "cq 2 ON db1",
        "cq1 ON db1",
        "cq3 ON db2",
    ]
    assert result["continuous_queries"]["not_recreated"] == {}
    lost = [w for w in result["warnings"] if "later ON db2" in w]
    assert len(lost) == 1 and "not in the backup" in lost[0] and "min(value)" in lost[0], result
    assert "warning: the live server's continuous query later ON db2" in done.stderr
    users = _q(sandbox.url, "SHOW USERS")["series"][0]["values"]
    assert ["reader", False] in users
    assert _q(sandbox.url, "SHOW GRANTS FOR reader")["series"][0]["values"] == [["db1", "READ"]]


def test_a_chain_rebuilt_into_a_dir_has_its_cqs_and_its_users_with_their_passwords(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli, increment = _chain(tmp_path, sandbox)
    backed_up = _cqs(sandbox.url)
    target = tmp_path / "restored"

    done = cli("restore", increment, "--target", str(target), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    conf = target / "influxdb.conf"
    with serving(conf) as url:
        assert _cqs(url) == backed_up
        assert ["reader", False] in _q(url, "SHOW USERS")["series"][0]["values"]
        assert _q(url, "SHOW GRANTS FOR reader")["series"][0]["values"] == [["db1", "READ"]]
    assert len(result["continuous_queries"]["recreated"]) == 3, result
    # the password hash came along: with auth on, the user's own password is taken
    conf.write_text(conf.read_text().replace("auth-enabled = false", "auth-enabled = true"))
    with serving(conf) as url:
        answer = _q(url, "SELECT count(value) FROM db1.autogen.cpu", auth=("reader", "r3ad"))
        assert answer["series"][0]["values"][0][1] == 500


def test_one_database_restored_as_another_name_gets_its_cqs_that_name_only_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli, increment = _chain(tmp_path, sandbox)

    done = cli("restore", increment, "--database", "db1", "--as", "db1_copy", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    cqs = _cqs(sandbox.url)
    assert cqs[("db1_copy", "cq1")] == (
        "CREATE CONTINUOUS QUERY cq1 ON db1_copy BEGIN SELECT mean(value) INTO "
        "db1_copy.autogen.cpu_1h FROM db1_copy.autogen.cpu GROUP BY time(1h), * END"
    )
    assert ("db1_copy", "cq 2") not in cqs, "it writes into db2: not rewritten"
    assert result["continuous_queries"]["recreated"] == ["cq1 ON db1_copy"]
    why = result["continuous_queries"]["not_recreated"]["cq 2 ON db1"]
    assert "names database db2 besides db1" in why and "cpu_max" in why
    assert "warning: continuous query cq 2 ON db1 not re-created" in done.stderr
    assert ("db2", "cq3") in cqs and ("db1", "cq1") in cqs, "the live ones untouched"


def test_a_dropped_database_comes_back_with_its_cqs_from_a_hot_chain_and_a_cold_archive(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli, increment = _chain(tmp_path, sandbox, jobs=HOT + COLD)
    cold = cli.json("backup", "--job", "nightly")
    assert cold["status"] == "ok", cold["error"]
    backed_up = _cqs(sandbox.url)

    for backup in (increment, cold["id"]):
        _q(sandbox.url, "DROP DATABASE db1")  # its queries go with it
        done = cli("restore", backup, "--database", "db1", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        assert _cqs(sandbox.url) == backed_up, backup
        result = json.loads(done.stdout)
        assert sorted(result["continuous_queries"]["recreated"]) == ["cq 2 ON db1", "cq1 ON db1"]


def test_a_cold_restore_keeps_the_cqs_in_its_meta(tmp_path: Path, sandbox: Sandbox) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("db1")
    sandbox.write_points("db1", 100)
    _q(sandbox.url, CQ1)
    backed_up = _cqs(sandbox.url)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    _q(sandbox.url, "DROP CONTINUOUS QUERY cq1 ON db1")
    done = cli("restore", record["id"], "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _cqs(sandbox.url) == backed_up


def test_a_cq_is_renamed_only_where_it_names_its_own_database() -> None:
    def cq(text: str, db: str = "db 2") -> tuple[str | None, str | None]:
        return renamed(ContinuousQuery(db, "q", text), "new")

    head = 'CREATE CONTINUOUS QUERY q ON "db 2" BEGIN SELECT max(value) / 2 INTO '
    # a regex, a subquery, an empty retention policy, a division, a regex naming another db
    statement, why = cq(
        head + '"db 2".autogen.:MEASUREMENT FROM "db 2".autogen./cp.*/, (SELECT a FROM '
        '"db 2"..x), "db 2".autogen.y WHERE h =~ /x\\/FROM db9.a.b/ GROUP BY time(1h) END'
    )
    assert why is None
    assert statement == (
        'CREATE CONTINUOUS QUERY q ON "new" BEGIN SELECT max(value) / 2 INTO '
        '"new".autogen.:MEASUREMENT FROM "new".autogen./cp.*/, (SELECT a FROM "new"..x), '
        '"new".autogen.y WHERE h =~ /x\\/FROM db9.a.b/ GROUP BY time(1h) END'
    )
    statement, why = cq(head + '"db 2".autogen.m FROM (SELECT v FROM db7.autogen.m) END')
    assert statement is None and why is not None and "names database db7" in why
    statement, why = cq("DROP SERIES FROM x")
    assert statement is None and why is not None and "not a CREATE CONTINUOUS QUERY" in why
    # under its own name the text runs as it is, and only as the one CQ it says it is: a
    # tampered meta must not run another statement on the live server by way of a CQ
    plain = 'CREATE CONTINUOUS QUERY q ON "new" BEGIN SELECT max(v) INTO m2 FROM m GROUP BY time(1h) END'
    assert cq(plain, db="new") == (plain, None)
    for hostile in ("DROP DATABASE other", plain + '; DROP DATABASE "other"'):
        statement, why = cq(hostile, db="new")
        assert statement is None and why is not None, hostile
    assert "more than one statement" in str(cq(plain + "; DROP DATABASE x", db="new")[1])
