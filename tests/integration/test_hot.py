"""The hot job (`influxd backup`) and its restore: real influxd 1.6, and a 0.9 stand-in."""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import json
import os
import pwd
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox, free_port
from influx_backupd.jobs.plan import SINCE_MARGIN_S, rfc3339
from influx_backupd.store.scanners import scan_portable
from tests.conftest import STAND_INS, Cli, log_events, serving, write_config

HOT = [{"name": "hotjob", "mode": "hot"}]
INFLUXD09 = STAND_INS / "influxd09"


def _flip_byte(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "influxd.log" not in p.name)


def test_a_full_and_two_increments_restore_into_a_fresh_server(
    tmp_path: Path, sandbox: Sandbox, influxd_path: str
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 6_000)
    full = cli.json("backup")
    sandbox.write_points("metrics", 2_000, start=100_000)
    first = cli.json("backup")
    sandbox.create_db("later")  # a database the full never saw
    sandbox.write_points("later", 700)
    sandbox.write_points("metrics", 1_000, start=200_000)
    second = cli.json("backup")

    for record in (full, first, second):
        assert record["status"] == "ok", record["error"]
        assert record["mode"] == "hot"
        assert record["downtime_s"] is None, "a hot backup never stops influxd"
        assert Path(record["archive"]).is_dir()
        assert record["bytes"] > 0 and record["files"] >= 3 and len(record["sha256"]) == 64
        assert record["chain_id"] == full["id"]
    assert [r["kind"] for r in (full, first, second)] == ["full", "incremental", "incremental"]
    assert (full["parent_id"], first["parent_id"], second["parent_id"]) == (
        None,
        full["id"],
        first["id"],
    )
    assert full["since"] is None
    # -since is when the full's snapshot began on the server's clock (read just before the
    # tool ran: a second or more after our start on a busy machine), rounded down
    anchor = full["since_anchor_unix"]  # --json: since_anchor in RFC 3339, this its twin
    assert abs(anchor - full["started_at_unix"]) < 60
    # less the margin a clock step the checks let pass needs (plan.SINCE_MARGIN_S)
    assert first["since"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(anchor - SINCE_MARGIN_S))
    )
    assert second["extra"]["databases"] == ["later", "metrics"]
    for record in (full, first, second):
        # Hashed while the tool wrote it; read back from scratch, the same digest.
        assert scan_portable(Path(record["archive"]), deep=True).sha256 == record["sha256"]
    assert sandbox.ping()
    expected = {"metrics": sandbox.count("metrics"), "later": sandbox.count("later")}
    assert expected == {"metrics": 9_000, "later": 700}

    fresh = Sandbox(tmp_path / "fresh", binary=influxd_path)
    fresh.write_config()
    fresh.start()
    try:
        # Same catalog and archives, [influxd] now the fresh server.
        cli = Cli(
            write_config(
                tmp_path, fresh, influxd={"user": "influxdb", "group": "influxdb"}, jobs=HOT
            )
        )
        shard = sorted(Path(first["archive"]).glob("*.tar.gz"))[0]
        before = _tree(fresh.root)
        _flip_byte(shard)
        refused = cli("restore", second["id"], "--yes")
        assert refused.returncode == 1
        assert "refused" in refused.stderr and "nothing touched" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert _tree(fresh.root) == before
        _flip_byte(shard)

        done = cli("restore", second["id"], "--yes", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert result["links"] == [full["archive"], first["archive"], second["archive"]]
        assert fresh.ping()
        assert {db: fresh.count(db) for db in expected} == expected
        assert sorted(fresh.databases()) == ["later", "metrics"], "temporary databases dropped"
        assert sorted(Path(p).name.split(".rollback-")[0] for p in result["rollback_dirs"]) == [
            "data",
            "meta",
        ]
        influx_uid = pwd.getpwnam("influxdb").pw_uid
        for path in (fresh.data / "metrics", fresh.data / "later", fresh.meta):
            assert path.stat().st_uid == influx_uid, f"{path} not owned by influxdb"
    finally:
        fresh.stop()


def test_the_remote_form_backs_up_the_backup_host_not_the_local_server(
    tmp_path: Path, sandbox: Sandbox, influxd_path: str
) -> None:
    sandbox.create_db("local")
    sandbox.write_points("local", 100)
    remote = Sandbox(tmp_path / "remote", binary=influxd_path)
    remote.write_config()
    remote.start()
    try:
        remote.create_db("remote")
        remote.write_points("remote", 1_500)
        cli = Cli(
            write_config(tmp_path, sandbox, influxd={"backup_host": remote.backup_host}, jobs=HOT)
        )
        record = cli.json("backup")
        assert record["status"] == "ok", record["error"]
        assert record["backup_host"] == remote.backup_host
        assert record["extra"]["databases"] == ["remote"]
        manifest = json.loads(next(Path(record["archive"]).glob("*.manifest")).read_text())
        assert {f["database"] for f in manifest["files"]} == {"remote"}
    finally:
        remote.stop()


class _ShiftedPing(http.server.BaseHTTPRequestHandler):
    """Stand-in for the HTTP API of a server whose clock is `ahead` seconds off ours (a remote
    backup_host; one set back by NTP): only /ping, with influxd 1.6's headers. The real influxd
    here shares our clock, and libfaketime cannot move a Go program's."""

    ahead = 0.0

    def do_GET(self) -> None:
        self.send_response_only(204)
        self.send_header("X-Influxdb-Version", "1.6.7~rc0")
        self.send_header("Date", email.utils.formatdate(time.time() + self.ahead, usegmt=True))
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def _shifted_ping(ahead: float) -> Iterator[str]:
    """A _ShiftedPing server `ahead` seconds off our clock, on a free port: its URL."""
    _ShiftedPing.ahead = ahead
    with serving(_ShiftedPing) as port:
        yield f"http://127.0.0.1:{port}"


def test_increments_take_since_from_the_servers_clock_not_ours(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    with _shifted_ping(-3600.0) as skewed:
        cli = Cli(write_config(tmp_path, sandbox, influxd={"backup_url": skewed}, jobs=HOT))
        sandbox.create_db("metrics")
        sandbox.write_points("metrics", 1_000)
        full = cli("backup", "--json")
        record = json.loads(full.stdout)
        assert record["status"] == "ok", record["error"]
        anchor = record["since_anchor_unix"]
        assert abs(anchor - (record["started_at_unix"] - 3600)) < 5
        assert abs(record["extra"]["server_clock_offset_s"] + 3600) < 5
        assert '"hot.clock_skew"' in full.stderr, "an hour of skew is worth a warning"

        sandbox.write_points("metrics", 500, start=100_000)
        increment = cli.json("backup")
        assert increment["status"] == "ok", increment["error"]
        assert increment["kind"] == "incremental"
        assert increment["since"] == rfc3339(int(anchor - SINCE_MARGIN_S)), (
            "-since is the server's time, not ours"
        )


def test_a_server_clock_stepped_back_since_the_last_link_makes_a_new_full(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """influxd takes the files it dates after -since, the last link's anchor on its clock: once
    its clock is set back, the files it writes are dated before that anchor, and an increment
    missed them (2000 of 3000 points restored, backup, verify and the restore test all ok)."""
    with _shifted_ping(7200.0) as stepped:
        cli = Cli(write_config(tmp_path, sandbox, influxd={"backup_url": stepped}, jobs=HOT))
        sandbox.create_db("metrics")
        sandbox.write_points("metrics", 1_000)
        assert cli.json("backup")["kind"] == "full"
        sandbox.write_points("metrics", 1_000, start=100_000)
        assert cli.json("backup")["kind"] == "incremental"
        _ShiftedPing.ahead = 0.0  # NTP corrects the server's clock
        sandbox.write_points("metrics", 1_000, start=200_000)
        done = cli("backup", "--json")
        record = json.loads(done.stdout)
        assert record["status"] == "ok", record["error"]
        assert record["kind"] == "full" and record["parent_id"] is None
        [plan] = log_events(done.stderr, "hot.plan")
        assert "behind the anchor" in plan["why"], plan
        checked = cli("verify", record["id"], "--restore-test", "--json")
        assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
        assert json.loads(checked.stdout)[0]["restored_counts"] == {"metrics": 3_000}


def test_without_the_servers_clock_since_falls_back_to_ours_and_says_so(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    # A port held bound, never listening: every connection is refused, and no other test's
    # influxd can take it meanwhile (a free_port() did: seen once in CI, its Date answered)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{held.getsockname()[1]}"
        cli = Cli(write_config(tmp_path, sandbox, influxd={"backup_url": nobody}, jobs=HOT))
        sandbox.create_db("metrics")
        sandbox.write_points("metrics", 300)
        done = cli("backup", "--json")
    record = json.loads(done.stdout)
    assert record["status"] == "ok", record["error"]
    assert record["since_anchor_unix"] == record["started_at_unix"]
    assert record["since_anchor"] == record["started_at"]
    assert '"hot.server_clock_unknown"' in done.stderr


def test_an_unreachable_backup_host_fails_quickly_as_unavailable(tmp_path: Path) -> None:
    server = Sandbox(tmp_path / "server")  # config only: nothing needs to run
    server.write_config()
    host = f"127.0.0.1:{free_port()}"
    cli = Cli(write_config(tmp_path, server, influxd={"backup_host": host}, jobs=HOT))
    started = time.monotonic()
    done = cli("backup", "--json")
    assert time.monotonic() - started < 10, "a bound on a hang, not a performance figure"
    assert done.returncode == 1
    record = json.loads(done.stdout)
    assert record["status"] == "failed"
    assert record["error"].startswith("hot.unavailable: ")
    assert host in record["error"]
    assert cli.json("list")[0]["status"] == "failed", "the failed run is recorded"


def test_a_backup_that_exits_0_but_misses_a_manifest_file_is_recorded_failed(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    wrapper = STAND_INS / "influxd_hot_drops_a_file"
    cli = Cli(write_config(tmp_path, sandbox, influxd={"binary": str(wrapper)}, jobs=HOT))
    done = cli("backup", "--json")
    assert done.returncode == 1
    record = json.loads(done.stdout)
    assert record["status"] == "failed"
    assert record["error"].startswith("hot.check: ")
    assert "does not exist" in record["error"]
    assert record["sha256"] is None

    # The next run does not extend a chain with a broken link: a new full.
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    after = cli.json("backup")
    assert after["status"] == "ok", after["error"]
    assert after["kind"] == "full" and after["chain_id"] == after["id"]


def test_a_shard_whose_gzip_size_disagrees_with_the_manifest_is_recorded_failed(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    wrapper = STAND_INS / "influxd_hot_bad_gzip_size"
    cli = Cli(write_config(tmp_path, sandbox, influxd={"binary": str(wrapper)}, jobs=HOT))
    done = cli("backup", "--json")
    assert done.returncode == 1
    record = json.loads(done.stdout)
    assert record["status"] == "failed"
    assert record["error"].startswith("hot.check: ")
    assert "gzip trailer says" in record["error"] and "manifest says" in record["error"]
    assert record["sha256"] is None
    assert Path(record["archive"]).name.endswith(".incomplete"), "never renamed as a good backup"


# -- 0.9, through the stand-in ----------------------------------------------------------------------


@pytest.fixture
def server09(tmp_path: Path) -> Sandbox:
    """The 0.9 stand-in serving a sandbox-style influxdb.conf, with a meta file and one shard."""
    server = Sandbox(tmp_path / "server09", binary=str(INFLUXD09))
    server.write_config()
    (server.meta).mkdir(parents=True)
    (server.meta / "meta").write_bytes(b"meta v1")
    shard = server.data / "db" / "default" / "1"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(os.urandom(3000))
    return server


def _set(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # newer than any snapshot


def test_09_snapshots_make_one_chain_and_restore_with_influxd_stopped(
    tmp_path: Path, server09: Sandbox
) -> None:
    server09.start()
    try:
        cli = Cli(
            write_config(
                tmp_path,
                server09,
                influxd={"binary": str(INFLUXD09), "user": "influxdb", "group": "influxdb"},
                jobs=HOT,
            )
        )
        full = cli.json("backup")
        _set(server09.data / "db" / "default" / "2", b"second shard")
        first = cli.json("backup")
        _set(server09.data / "db" / "default" / "1", b"shard one, rewritten")
        second = cli.json("backup")

        for record in (full, first, second):
            assert record["status"] == "ok", record["error"]
            assert record["chain_id"] == full["id"]
            assert record["flavour"] == "0.9"
        base = full["archive"]
        assert base.endswith(".snapshot")
        assert [first["archive"], second["archive"]] == [base + ".0", base + ".1"]
        assert [r["kind"] for r in (full, first, second)] == ["full", "incremental", "incremental"]
        assert (first["parent_id"], second["parent_id"]) == (full["id"], first["id"])
        assert (full["files"], first["files"], second["files"]) == (2, 1, 1), "only what changed"
        wanted = {p: (server09.root / p).read_bytes() for p in _files(server09)}

        # forms a 0.9 snapshot cannot take: usage mistakes (2), nothing touched
        pids = server09.pids()
        for form, says in (
            (["--database", "db", "--as", "db2"], "restores only as a whole server"),
            (["--target", str(tmp_path / "look"), "--start"], "cannot be served"),
        ):
            refused = cli("restore", second["id"], *form)
            assert refused.returncode == 2, (form, refused.returncode, refused.stderr)
            [line] = refused.stderr.strip().splitlines()
            assert says in line and "nothing touched" in line, line
        assert server09.pids() == pids and not (tmp_path / "look").exists()

        _set(server09.data / "db" / "default" / "3", b"written after the last backup")
        done = cli("restore", second["id"], "--yes", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert result["links"] == [base, base + ".0", base + ".1"]
        assert server09.ping(), "influxd runs again after the restore"
        assert {p: (server09.root / p).read_bytes() for p in _files(server09)} == wanted
        rid = result["rollback_dirs"][0].split(".rollback-", 1)[1]
        assert (server09.root / f"data.rollback-{rid}").exists()
        influx_uid = pwd.getpwnam("influxdb").pw_uid
        assert (server09.data / "db" / "default" / "1").stat().st_uid == influx_uid
    finally:
        server09.stop()


def _files(server: Sandbox) -> list[str]:
    return sorted(
        str(p.relative_to(server.root))
        for d in (server.meta, server.data)
        for p in d.rglob("*")
        if p.is_file()
    )


@pytest.mark.parametrize(
    ("fault", "error"),
    [("missing-file", "hot.check: "), ("404", "hot.unavailable: ")],
)
def test_09_broken_snapshots_and_404_are_recorded_failed(
    tmp_path: Path, server09: Sandbox, monkeypatch: pytest.MonkeyPatch, fault: str, error: str
) -> None:
    monkeypatch.setenv("INFLUXD09_STANDIN_FAULT", fault)
    server09.start()
    try:
        cli = Cli(write_config(tmp_path, server09, influxd={"binary": str(INFLUXD09)}, jobs=HOT))
        done = cli("backup", "--json")
        assert done.returncode == 1
        record = json.loads(done.stdout)
        assert record["status"] == "failed"
        assert record["error"].startswith(error), record["error"]
        if fault == "404":
            assert server09.backup_host in record["error"]
        else:
            assert "db/default/999" in record["error"]
    finally:
        server09.stop()
