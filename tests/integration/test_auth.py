"""A live influxd with `[http] auth-enabled = true`: [influxd] username + password_file.

Real influxd 1.6 with an admin user; the restore tests' throwaway servers have no auth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, started, write_config

ADMIN = ("admin", "pa:ss w0rd!")  # a colon and a space: Basic auth must carry them as they are
HOT = [{"name": "hotjob", "mode": "hot"}]


@pytest.fixture
def server(tmp_path: Path, influxd_path: str) -> Iterator[Sandbox]:
    """A real influxd with auth enabled and one admin; its helpers authenticate as the admin."""
    with started(Sandbox(tmp_path / "server", binary=influxd_path, admin=ADMIN)) as sandbox:
        yield sandbox


def password_file(tmp_path: Path, password: str = ADMIN[1], name: str = "influx-password") -> Path:
    path = tmp_path / name
    path.write_text(password + "\n")  # as `echo` or systemd-creds leave it
    path.chmod(0o600)
    return path


def cli_for(
    tmp_path: Path,
    server: Sandbox,
    *,
    username: str | None = None,
    password: Path | None = None,
    jobs: list[dict[str, Any]] | None = None,
) -> Cli:
    section: dict[str, Any] = {"user": "influxdb", "group": "influxdb"}
    if username is not None:
        section["username"] = username
    if password is not None:
        section["password_file"] = str(password)
    return Cli(write_config(tmp_path, server, influxd=section, jobs=jobs))


def test_cold_backups_count_points_with_credentials_and_say_why_not_without(
    tmp_path: Path, server: Sandbox
) -> None:
    server.create_db("metrics")
    server.write_points("metrics", 1_500)

    without = cli_for(tmp_path, server).json("backup")
    assert without["status"] == "ok", "a cold backup needs no HTTP auth"
    assert not without["db_counts"]
    log = cli_for(tmp_path, server)("backup")
    assert log.returncode == 0
    assert "figures.failed" in log.stderr
    assert "influxd requires authentication: set [influxd] username and password_file" in (
        log.stderr
    )

    cli = cli_for(tmp_path, server, username=ADMIN[0], password=password_file(tmp_path))
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    assert record["db_counts"] == {"metrics": 1_500}
    assert server.count("metrics") == 1_500, "the server came back with its data and users"

    # The throwaway server writes its own influxdb.conf: no auth, no credentials sent.
    done = cli("verify", record["id"], "--restore-test", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(done.stdout)
    assert result["checks"]["restore_test"].startswith("ok (1 databases answer, 1 point counts")


def test_a_hot_chain_restores_into_the_live_auth_server_keeping_its_users(
    tmp_path: Path, server: Sandbox
) -> None:
    server.create_db("metrics")
    server.write_points("metrics", 3_000)
    server.query("CREATE USER reader WITH PASSWORD 'r'", method="POST")
    server.query('GRANT READ ON "metrics" TO reader', method="POST")
    secret = password_file(tmp_path)
    cli = cli_for(tmp_path, server, username=ADMIN[0], password=secret, jobs=HOT)
    full = cli.json("backup")
    server.create_db("later")
    server.write_points("later", 400)
    server.write_points("metrics", 1_000, start=100_000)
    increment = cli.json("backup")
    for record in (full, increment):
        assert record["status"] == "ok", record["error"]
    assert increment["kind"] == "incremental"
    expected = {"metrics": 4_000, "later": 400}
    server.write_points("metrics", 500, start=200_000)  # newer than the backup
    live = {"metrics": 4_500, "later": 400}
    assert {db: server.count(db) for db in live} == live

    # The chain is built in a throwaway influxd without auth, beside the live server, which is
    # never queried: a restore needs no credentials (none are configured here).
    done = cli_for(tmp_path, server, jobs=HOT)("restore", increment["id"], "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert {db: server.count(db) for db in expected} == expected
    assert sorted(server.databases()) == ["later", "metrics"]
    users = server.query("SHOW USERS")["results"][0]["series"][0]["values"]
    assert sorted(users) == [["admin", True], ["reader", False]], "accounts survive the restore"
    grants = server.query('SHOW GRANTS FOR "reader"')["results"][0]["series"][0]["values"]
    assert grants == [["metrics", "READ"]]
    old = next(p for p in json.loads(done.stdout)["rollback_dirs"] if "data.rollback-" in p)
    assert (Path(old) / "metrics").is_dir(), "the live data is kept aside"

    # verify --restore-test of the chain: a throwaway influxd without auth
    done = cli("verify", increment["id"], "--restore-test", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(done.stdout)
    assert result["checks"]["restore_test"].startswith("ok (2 links restored")


def test_a_restore_checked_as_a_user_who_may_read_one_database_is_not_undone(
    tmp_path: Path, server: Sandbox
) -> None:
    """After the swap the restored server's points are counted with [influxd]'s credentials. A
    user without admin rights sees only the databases it may read: the others are not compared
    (said), never taken for missing (which undid a good restore)."""
    server.create_db("metrics")
    server.create_db("private")
    server.write_points("metrics", 700)
    server.write_points("private", 300)
    server.query("CREATE USER reader WITH PASSWORD 'r3ad er'", method="POST")
    server.query('GRANT READ ON "metrics" TO reader', method="POST")
    reader = password_file(tmp_path, "r3ad er", name="reader-password")
    cli = cli_for(tmp_path, server, username="reader", password=reader, jobs=HOT)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    server.write_points("private", 50, start=80_000)  # after the backup: undone by the restore

    done = cli("restore", record["id"], "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert {db: server.count(db) for db in ("metrics", "private")} == {
        "metrics": 700,
        "private": 300,
    }
    served = result["served_check"]
    assert served.startswith("points served: metrics 700 (counted 700)"), served
    assert "not compared: private" in served, served
    assert "restore.served" in done.stderr and "refused" in done.stderr


def test_a_stopped_auth_server_is_restored_and_started_without_using_the_credentials(
    tmp_path: Path, server: Sandbox
) -> None:
    server.create_db("metrics")
    server.write_points("metrics", 600)
    record = cli_for(tmp_path, server, jobs=HOT).json("backup")  # hot backups need no HTTP auth
    assert record["status"] == "ok", record["error"]
    server.write_points("metrics", 100, start=50_000)
    server.stop()

    # Wrong credentials are never tried: nothing the restore does queries the live server.
    wrong = password_file(tmp_path, "Zq9-not-it")
    done = cli_for(tmp_path, server, username="admin", password=wrong, jobs=HOT)(
        "restore", record["id"], "--yes"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Zq9-not-it" not in done.stdout + done.stderr, "the password is never logged"
    assert server.ping(), "the restore started the server on the restored data"
    assert server.count("metrics") == 600
    users = server.query("SHOW USERS")["results"][0]["series"][0]["values"]
    assert users == [["admin", True]], "the admin kept: the helpers here authenticate as it"


def test_check_config_warns_when_auth_is_enabled_and_no_username_is_set(
    tmp_path: Path, influxd_path: str
) -> None:
    sandbox = Sandbox(tmp_path / "server", binary=influxd_path, admin=ADMIN)
    sandbox.write_config()  # check-config reads influxdb.conf only: no server needed

    done = cli_for(tmp_path, sandbox)("check-config")
    assert done.returncode == 0, done.stderr
    # (the job's missing retention rule is warned about too: not this test's concern)
    [warning] = [
        line
        for line in done.stdout.splitlines()
        if line.startswith("warning:") and "auth-enabled" in line
    ]
    assert "auth-enabled = true" in warning and "point counts" in warning
    assert "hot restores" not in warning, "a hot restore needs no credentials"
    assert "set [influxd] username and password_file" in warning

    secret = password_file(tmp_path)
    cli = cli_for(tmp_path, sandbox, username="admin", password=secret)
    done = cli("check-config")
    assert done.returncode == 0, done.stderr
    assert "auth-enabled" not in done.stdout, "no auth warning once a username is set"
    assert "admin" in done.stdout and str(secret) in done.stdout
    plan = cli.json("check-config")
    assert plan["auth_enabled"] is True
    assert plan["influxd"]["username"] == "admin"
    assert plan["influxd"]["password_file"] == str(secret)
    for out in (done.stdout + done.stderr, json.dumps(plan)):
        assert ADMIN[1] not in out, "the password is never printed"


def test_check_config_warns_when_the_user_is_no_admin_on_the_running_server(
    tmp_path: Path, server: Sandbox
) -> None:
    server.query("CREATE USER reader WITH PASSWORD 'r'", method="POST")
    reader = password_file(tmp_path, "r", name="reader-password")
    as_reader = cli_for(tmp_path, server, username="reader", password=reader).json("check-config")
    [warning] = [w for w in as_reader["warnings"] if "not an admin" in w]
    assert warning.startswith("[influxd] username 'reader' is not an admin on http://127.0.0.1:")
    assert "cover only the databases it may read" in warning
    as_admin = cli_for(tmp_path, server, username=ADMIN[0], password=password_file(tmp_path))
    assert not [w for w in as_admin.json("check-config")["warnings"] if "not an admin" in w]
    server.stop()  # a server that does not answer: nothing to say, nothing waited for long
    again = cli_for(tmp_path, server, username="reader", password=reader).json("check-config")
    assert not [w for w in again["warnings"] if "not an admin" in w]
