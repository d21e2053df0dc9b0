"""`restore BACKUP --database NAME [--as NEWNAME] [--replace]` against a real influxd 1.6: one
database back into the live server while it serves, every other database untouched."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.core import config as config_mod
from influx_backupd.core import log
from influx_backupd.influxd import counts
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.restore import database
from influx_backupd.store.scanners import scan_portable
from tests.conftest import STAND_INS, Cli, descendants_named, write_config
from tests.integration.test_auth import ADMIN, cli_for, password_file

HOT = [{"name": "hotjob", "mode": "hot"}]


def _points(sandbox: Sandbox) -> dict[str, int]:
    """Every database's points, every retention policy of each."""
    return {db: counts.point_count(sandbox.url, db, timeout=120) for db in sandbox.databases()}


def _accounts(sandbox: Sandbox) -> Any:
    users = sandbox.query("SHOW USERS")["results"][0]
    grants = sandbox.query('SHOW GRANTS FOR "reader"')["results"][0]
    return users, grants


def _populate(sandbox: Sandbox) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    sandbox.query(
        'CREATE RETENTION POLICY "year" ON "metrics" DURATION 100000h REPLICATION 1',
        method="POST",
    )
    sandbox.create_db("other")
    sandbox.write_points("other", 700, measurement="mem")
    sandbox.query("CREATE USER \"reader\" WITH PASSWORD 'pw'", method="POST")
    sandbox.query('GRANT READ ON "other" TO "reader"', method="POST")


def _write_rp(sandbox: Sandbox, db: str, rp: str, n: int) -> None:
    lines = "\n".join(f"load,host=h v={i}i {1_577_836_800 + i}" for i in range(n))
    req = urllib.request.Request(
        f"{sandbox.url}/write?db={db}&rp={rp}&precision=s", data=lines.encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


def test_a_dropped_database_comes_back_from_a_hot_chain_while_the_server_serves(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    _populate(sandbox)
    _write_rp(sandbox, "metrics", "year", 400)
    assert cli.json("backup")["status"] == "ok"
    sandbox.write_points("metrics", 1_500, start=100_000)
    sandbox.create_db("later")
    sandbox.write_points("later", 600)
    increment = cli.json("backup")
    assert increment["status"] == "ok" and increment["kind"] == "incremental"

    sandbox.query('DROP DATABASE "metrics"', method="POST")  # the accident
    sandbox.write_points("other", 50, start=500_000, measurement="mem")
    before, accounts, pids = _points(sandbox), _accounts(sandbox), sandbox.pids()
    assert "metrics" not in before

    done = cli("restore", increment["id"], "--database", "metrics", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["restored_as"] == "metrics" and result["replaced_copy"] is None
    # held to what the chain's build served of it, as a whole-server restore is
    assert result["served_check"] == "points served: metrics 6900 (counted 6900)"
    after = _points(sandbox)
    assert after == {**before, "metrics": 5_000 + 400 + 1_500}, "other databases untouched"
    assert sandbox.pids() == pids, "influxd was never stopped"
    assert _accounts(sandbox) == accounts, "users and grants as they were"
    rps = sandbox.query('SHOW RETENTION POLICIES ON "metrics"')["results"][0]["series"][0]
    assert {row[0] for row in rps["values"]} == {"autogen", "year"}
    assert not list((tmp_path / "archives").glob(".verify-*")), "the throwaway's scratch is gone"
    # it takes writes like any database
    sandbox.write_points("metrics", 10, start=900_000)
    assert sandbox.count("metrics") == 5_000 + 1_500 + 10


def test_a_database_from_a_cold_archive_under_a_new_name_beside_the_live_one(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    _populate(sandbox)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    sandbox.write_points("metrics", 300, start=100_000)
    before, pids = _points(sandbox), sandbox.pids()

    done = cli(
        "restore",
        record["id"],
        "--database",
        "metrics",
        "--as",
        "metrics_then",
        "--limit-rate",
        "8",
    )  # paced through the forwarder
    assert done.returncode == 0, done.stderr
    assert "as metrics_then" in done.stdout
    assert _points(sandbox) == {**before, "metrics_then": 5_000}
    assert sandbox.pids() == pids

    # the name exists now: refused, nothing touched; a usage mistake, as a name not in the backup
    done = cli("restore", record["id"], "--database", "metrics", "--as", "metrics_then")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "database metrics_then exists on the live server" in line and "--replace" in line
    done = cli("restore", record["id"], "--database", "nosuch", "--as", "x")
    assert done.returncode == 2, done.stderr
    assert "--database nosuch: not in" in done.stderr and "metrics, other" in done.stderr
    for bad in ("../x", "a\\b", "..", "a\nb"):  # names influxd would refuse mid-restore
        done = cli("restore", record["id"], "--database", "metrics", "--as", bad)
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert f"--as {bad!r}: not a name influxd accepts" in line
    # names influxd restore fails on after seconds of work: refused before any
    for bad, why in (
        ("nëw", "ASCII names only"),
        ("d" * 300, "at most 155 bytes"),
        ("d" * 156, "156 bytes long; at most 155 bytes"),  # a path influxd's tar cannot hold
        ("_internal", "statistics database"),
        ("", "empty"),
        # influxd takes it in, then serves none of it (it finds its files by glob patterns):
        # before, refused only once the upload was done, exit 1 (a hot backup's after 120 s)
        ("b[1]", "cannot load the files of a database whose name holds ["),
    ):
        done = cli("restore", record["id"], "--database", "metrics", "--as", bad)
        assert done.returncode == 2, (bad, done.stderr)
        [line] = done.stderr.strip().splitlines()
        assert why in line and line.startswith("influx-backupd: "), (bad, line)
    assert _points(sandbox) == {**before, "metrics_then": 5_000}
    done = cli("restore", record["id"], "--as", "x")
    assert done.returncode == 2 and "go with --database" in done.stderr
    done = cli("restore", record["id"], "--database", "metrics", "--limit-rate", "-1")
    assert done.returncode == 2 and "--limit-rate: '-1'" in done.stderr


def test_a_replace_that_fails_before_its_drop_says_the_database_was_not_touched(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: "database metrics, created meanwhile by another client, was left as it is" of
    the user's own database, which a --replace failing before its drop never touched."""
    _populate(sandbox)
    cli = Cli(write_config(tmp_path, sandbox))
    record = cli.json("backup")
    before = _points(sandbox)
    unconfirmed = cli("restore", record["id"], "--database", "metrics", "--replace")
    assert unconfirmed.returncode == 2  # stdin no terminal: no question asked
    assert unconfirmed.stderr.splitlines() == [
        "influx-backupd: restore replaces database metrics on the live server; pass --yes to "
        "confirm"
    ]
    # every `influxd backup` drops a file of what it wrote: the replaced one's copy is refused
    broken = Cli(
        write_config(
            tmp_path, sandbox, influxd={"binary": str(STAND_INS / "influxd_hot_drops_a_file")}
        )
    )
    done = broken("restore", record["id"], "--database", "metrics", "--replace", "--yes")
    assert done.returncode == 1, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert "database metrics was not touched" in line and "another client" not in line, line
    assert _points(sandbox) == before
    # the copy of it the --replace began (its export failed its check) is gone too
    assert not list((tmp_path / "archives").glob("metrics.replaced-*"))
    assert "was removed" in line, line


def test_an_interrupted_restore_says_what_it_put_back(tmp_path: Path, sandbox: Sandbox) -> None:
    """Before: only "interrupted by SIGTERM", not what became of the live server."""
    from tests.faults.conftest import Watched

    config = write_config(tmp_path, sandbox)
    _populate(sandbox)
    record = Cli(config).json("backup")
    before = _points(sandbox)
    restore = Watched(
        config, "restore", record["id"], "--database", "metrics", "--as", "m2",
        "--limit-rate", "0.02",
    )  # fmt: skip
    try:
        restore.wait_event("restore.running", timeout=120)
        time.sleep(1)  # the export from the archive's throwaway, or the upload
        restore.proc.send_signal(signal.SIGTERM)
        restore.proc.wait(timeout=120)
    finally:
        restore.kill()
    assert restore.proc.returncode == 1
    line = [ln for ln in restore.lines if not ln.startswith("{")][-1].strip()
    assert line.startswith(
        "influx-backupd: restore of database metrics as m2 interrupted by SIGTERM; "
    ), line
    assert _points(sandbox) == before


def test_replace_keeps_the_replaced_database_aside_and_a_failure_puts_it_back(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    _populate(sandbox)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    sandbox.write_points("metrics", 300, start=100_000)
    before = _points(sandbox)

    # `influxd restore -db metrics -newdb other` fails: "other" must come back as it was
    failing = STAND_INS / "influxd_restore_renaming_fails"
    broken = Cli(write_config(tmp_path, sandbox, influxd={"binary": str(failing)}))
    done = broken(
        "restore", record["id"], "--database", "metrics", "--as", "other", "--replace", "--yes"
    )
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert "stand-in failure" in line and "database other was put back from the copy" in line
    assert _points(sandbox) == before

    cli = Cli(write_config(tmp_path, sandbox))  # the real influxd again
    done = cli("restore", record["id"], "--database", "metrics", "--replace", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert _points(sandbox) == {**before, "metrics": 5_000}
    kept = Path(result["replaced_copy"])
    assert kept.is_dir() and kept.parent == tmp_path / "archives"
    # the copy kept aside is a portable backup of the replaced database, 5,300 points
    done = cli("restore", str(kept), "--database", "metrics", "--as", "metrics_before")
    assert done.returncode == 0, done.stderr
    assert sandbox.count("metrics_before") == 5_300


def test_a_replace_killed_after_the_drop_is_undone_by_the_next_command(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    _populate(sandbox)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    before = _points(sandbox)
    pending = tmp_path / "state" / "restore-database.json"

    # `influxd restore -db metrics -newdb other` hangs: the restore is killed while it runs
    hanging = STAND_INS / "influxd_restore_renaming_hangs"
    stuck = Cli(write_config(tmp_path, sandbox, influxd={"binary": str(hanging)}))
    proc = stuck.popen(
        "restore", record["id"], "--database", "metrics", "--as", "other", "--replace", "--yes"
    )
    try:
        deadline = time.monotonic() + 120
        while not descendants_named(proc.pid, "sleep"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the restore never reached the live server"
            time.sleep(0.1)
        assert json.loads(pending.read_text())["dropped"] is True
        assert "other" not in sandbox.databases(), "dropped, its copy kept aside"
        tool = descendants_named(proc.pid, "sleep")
        # `status` (no lock) shows the restore running, with its progress
        report = stuck.json("status")
        assert report["restore"]["what"] == f"restore {record['id']}"
        assert report["restore"]["pid"] == proc.pid
        while report["restore"]["total"] == 0:  # rewritten every 2 s
            assert time.monotonic() < deadline, "the archive's extraction was never counted"
            time.sleep(0.5)
            report = stuck.json("status")
        assert f"restore   restore {record['id']} (pid {proc.pid}" in stuck("status").stdout
    finally:
        proc.kill()
        proc.communicate()
    for p in tool:
        p.kill()
    assert stuck.json("status")["restore"] is None, "a file left by a dead restore is not shown"

    cli = Cli(write_config(tmp_path, sandbox))
    done = cli("prune", "--dry-run")  # a dry run says what it would do, and does none of it
    assert done.returncode == 0, done.stderr
    assert "put the replaced one back from" in done.stderr and '"dry_run": true' in done.stderr
    assert pending.exists() and "other" not in sandbox.databases()
    done = cli("recover")  # as any command that takes the lock
    assert done.returncode == 0, done.stderr
    assert "recovery.database_restore_undone" in done.stderr
    assert "undid the killed restore of database other: database other was put back" in (
        done.stdout
    ), done.stdout
    assert not pending.exists()
    assert not (tmp_path / "state" / "restore-progress.json").exists()
    assert _points(sandbox) == before, "other is back, as it was; nothing else changed"


def test_with_auth_it_needs_credentials_and_replaces_with_them(
    tmp_path: Path, influxd_path: str
) -> None:
    server = Sandbox(tmp_path / "server", binary=influxd_path, admin=ADMIN)
    server.write_config()
    server.start()
    try:
        server.create_db("metrics")
        server.write_points("metrics", 2_000)
        cli = cli_for(
            tmp_path, server, username=ADMIN[0], password=password_file(tmp_path), jobs=HOT
        )
        record = cli.json("backup")
        assert record["status"] == "ok", record["error"]
        server.write_points("metrics", 100, start=100_000)

        # Without credentials, or as a user who may only read (it sees only the databases it
        # may read, and cannot drop what a failed restore made): refused before anything.
        server.query("CREATE USER reader WITH PASSWORD 'r'", method="POST")
        server.query('GRANT READ ON "metrics" TO reader', method="POST")
        reader = password_file(tmp_path, "r", name="reader-password")
        for who in (
            cli_for(tmp_path, server, jobs=HOT),
            cli_for(tmp_path, server, username="reader", password=reader, jobs=HOT),
        ):
            done = who("restore", record["id"], "--database", "metrics", "--as", "m2")
            assert done.returncode == 78, done.stderr  # [influxd]'s credentials: the config's
            [line] = done.stderr.strip().splitlines()
            assert "needs an admin user on the live server" in line, line
            assert "nothing touched" in line, line
            assert "m2" not in server.databases()

        cli = cli_for(
            tmp_path, server, username=ADMIN[0], password=password_file(tmp_path), jobs=HOT
        )
        done = cli("restore", record["id"], "--database", "metrics", "--replace", "--yes")
        assert done.returncode == 0, done.stderr
        assert server.count("metrics") == 2_000
    finally:
        server.stop()


def test_restored_shards_count_only_once_every_policy_with_data_answers(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: Any
) -> None:
    """The wait after the tool: a total that holds still is not enough while a retention
    policy the backup has data for still counts 0 (a shard the server is still opening); a
    policy that stays empty past the wait is taken with a warning, not a failure."""
    _populate(sandbox)
    live = database._Live(config_mod.load(write_config(tmp_path, sandbox)), log.get(), 0)
    late = threading.Timer(4.0, _write_rp, (sandbox, "metrics", "year", 40))
    late.start()
    try:
        live.settled("metrics", Counter({"autogen": 1, "year": 1}))
        assert counts.shard_points(sandbox.url, "metrics")  # every shard answers
        assert counts.point_count(sandbox.url, "metrics") == 5_040, "returned after year counted"
    finally:
        late.cancel()
    monkeypatch.setattr(database, "SHARD_WAIT", 4.0)
    live.settled("metrics", Counter({"autogen": 1, "year": 1, "gone": 1}))  # warns, returns
    # but a shard known to hold TSM files that counts nothing was lost on the way: a failure
    with pytest.raises(database.StepFailed, match="1 of 2 shards of retention policy autogen"):
        live.settled("metrics", Counter({"autogen": 2}), Counter({"autogen": 2}))


def test_the_shards_known_to_hold_tsm_files_are_told_from_the_rest(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    _populate(sandbox)
    copy = tmp_path / "copy"
    database._export(
        config_mod.load(write_config(tmp_path, sandbox)),
        log.get(),
        sandbox.backup_host,
        "metrics",
        copy,
    )
    assert database._shards_with_data(copy, "metrics") == (Counter({"autogen": 1}), Counter())
    scan_portable(copy, deep=True)  # as a replaced database's copy is checked
    assert database._shards_with_data(copy, "metrics") == (
        Counter({"autogen": 1}),
        Counter({"autogen": 1}),
    )


def test_imported_shards_are_known_by_their_files_and_never_counted(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: Any
) -> None:
    """The wait after the tool reads the live server's statistics for the shards that loaded
    TSM files, and counts only the rest: a count reads every block of a shard, on the live
    server, and its writes wait behind it. It still returns only once the points answer."""
    _populate(sandbox)
    _write_rp(sandbox, "metrics", "year", 40)
    config = config_mod.load(write_config(tmp_path, sandbox))
    copy = tmp_path / "copy"
    database._export(config, log.get(), sandbox.backup_host, "metrics", copy)
    scan_portable(copy, deep=True)
    # shards written live hold their points in the cache, in no TSM file yet
    assert set(counts.shard_tsm_files(sandbox.url, "other").values()) == {0}

    counted: list[tuple[str, int]] = []
    real = counts.shard_points

    def spy(*args: Any, **kwargs: Any) -> dict[tuple[str, int], int]:
        found = real(*args, **kwargs)
        counted.extend(found)
        return found

    monkeypatch.setattr(counts, "shard_points", spy)
    database._Live(config, log.get(), 0).take(copy, "metrics", "copied")
    files = counts.shard_tsm_files(sandbox.url, "copied")
    assert sorted(rp for rp, _ in files) == ["autogen", "year"]
    assert all(n > 0 for n in files.values())
    assert not [shard for shard in counted if shard in files], "a shard with files was counted"
    assert counts.point_count(sandbox.url, "copied") == 5_040, "every point answers at once"


def test_without_the_servers_statistics_every_shard_is_counted(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: Any
) -> None:
    """SHOW STATS needs an admin: with other credentials the wait counts, as it did before."""
    _populate(sandbox)
    live = database._Live(config_mod.load(write_config(tmp_path, sandbox)), log.get(), 0)

    def refused(*_args: Any, **_kwargs: Any) -> dict[tuple[str, int], int]:
        raise counts.FiguresError("error authorizing query: reader not authorized to execute")

    monkeypatch.setattr(counts, "shard_tsm_files", refused)
    monkeypatch.setattr(database, "SHARD_WAIT", 4.0)
    live.settled("metrics", Counter({"autogen": 1}), Counter({"autogen": 1}))
    with pytest.raises(database.StepFailed, match="1 of 2 shards of retention policy autogen"):
        live.settled("metrics", Counter({"autogen": 2}), Counter({"autogen": 2}))
