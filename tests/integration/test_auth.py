"""A live influxd with `[http] auth-enabled = true`: [influxd] username + password_file.

Real influxd 1.6 with an admin user; the restore tests' throwaway servers have no auth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.sandbox import Sandbox
from tests.conftest import Cli, write_config

ADMIN = ("admin", "pa:ss w0rd!")  # a colon and a space: Basic auth must carry them as they are
HOT = [{"name": "hotjob", "mode": "hot"}]


@pytest.fixture
def server(tmp_path: Path, influxd_path: str) -> Iterator[Sandbox]:
    """A real influxd with auth enabled and one admin; its helpers authenticate as the admin."""
    sandbox = Sandbox(tmp_path / "server", binary=influxd_path, admin=ADMIN)
    sandbox.write_config()
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


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


def last_line(done: Any) -> str:
    lines = str(done.stderr).strip().splitlines()
    return lines[-1] if lines else ""


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

    # Without credentials, or with wrong ones: refused before influxd is stopped.
    # (cli_for rewrites the one config file: each is written just before it is used)
    nope = password_file(tmp_path, "nope", "nope-password")
    for kwargs, line in (
        ({}, "influxd requires authentication: set [influxd] username and password_file"),
        (
            {"username": "admin", "password": nope},
            "influxd refused the credentials of [influxd] username = 'admin'",
        ),
    ):
        done = cli_for(tmp_path, server, jobs=HOT, **kwargs)("restore", increment["id"], "--yes")
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert line in last_line(done) and "nothing touched" in last_line(done), done.stderr
        assert {db: server.count(db) for db in live} == live
        assert not list(server.root.glob("*.rollback-*"))

    # A non-admin user cannot create or drop databases: refused too.
    reader = password_file(tmp_path, "r", "reader-password")
    done = cli_for(tmp_path, server, username="reader", password=reader, jobs=HOT)(
        "restore", increment["id"], "--yes"
    )
    assert done.returncode == 1
    assert "refused the credentials of [influxd] username = 'reader'" in last_line(done)
    assert "requires admin privilege" in last_line(done)

    done = cli_for(tmp_path, server, username=ADMIN[0], password=secret, jobs=HOT)(
        "restore", increment["id"], "--yes", "--json"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert {db: server.count(db) for db in expected} == expected
    assert sorted(server.databases()) == ["later", "metrics"]
    users = server.query("SHOW USERS")["results"][0]["series"][0]["values"]
    assert sorted(users) == [["admin", True], ["reader", False]], "accounts survive the restore"
    grants = server.query('SHOW GRANTS FOR "reader"')["results"][0]["series"][0]["values"]
    assert grants == [["metrics", "READ"]]

    # verify --restore-test of the chain: a throwaway influxd without auth
    done = cli("verify", increment["id"], "--restore-test", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(done.stdout)
    assert result["checks"]["restore_test"].startswith("ok (2 links restored")


def test_credentials_found_wrong_after_the_stop_put_the_old_data_back(
    tmp_path: Path, server: Sandbox
) -> None:
    server.create_db("metrics")
    server.write_points("metrics", 600)
    record = cli_for(tmp_path, server, jobs=HOT).json("backup")  # hot backups need no HTTP auth
    assert record["status"] == "ok", record["error"]
    server.write_points("metrics", 100, start=50_000)
    server.stop()  # not running: the credentials cannot be tried before the swap

    wrong = password_file(tmp_path, "Zq9-not-it")
    done = cli_for(tmp_path, server, username="admin", password=wrong, jobs=HOT)(
        "restore", record["id"], "--yes"
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    line = last_line(done)
    assert "influxd refused the credentials of [influxd] username = 'admin'" in line, line
    assert "previous data was put back" in line
    assert "Zq9-not-it" not in done.stderr, "the password is never logged"
    assert not list(server.root.glob("*.rollback-*"))
    server.start()
    assert server.count("metrics") == 700


def test_check_config_warns_when_auth_is_enabled_and_no_username_is_set(
    tmp_path: Path, influxd_path: str
) -> None:
    sandbox = Sandbox(tmp_path / "server", binary=influxd_path, admin=ADMIN)
    sandbox.write_config()  # check-config reads influxdb.conf only: no server needed

    done = cli_for(tmp_path, sandbox)("check-config")
    assert done.returncode == 0, done.stderr
    [warning] = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
    assert "auth-enabled = true" in warning and "point counts" in warning
    assert "hot restores" in warning and "set [influxd] username and password_file" in warning

    secret = password_file(tmp_path)
    cli = cli_for(tmp_path, sandbox, username="admin", password=secret)
    done = cli("check-config")
    assert done.returncode == 0, done.stderr
    assert "warning:" not in done.stdout
    assert "admin" in done.stdout and str(secret) in done.stdout
    plan = cli.json("check-config")
    assert plan["http_auth"] == {
        "auth_enabled": True,
        "username": "admin",
        "password_file": str(secret),
    }
    for out in (done.stdout + done.stderr, json.dumps(plan)):
        assert ADMIN[1] not in out, "the password is never printed"
