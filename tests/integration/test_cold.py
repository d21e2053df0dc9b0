"""The cold job and its restore against a real influxd 1.x sandbox."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, Cli, whole, write_config


def _archives(tmp_path: Path) -> list[Path]:
    storage = tmp_path / "archives"
    return sorted(storage.iterdir()) if storage.exists() else []


def test_backup_then_restore_brings_back_exactly_the_backed_up_points(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, influxd={"user": "influxdb", "group": "influxdb"}))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 12_000)
    record = cli.json("backup")

    assert record["status"] == "ok", record["error"]
    for phase in ("stop_s", "copy_s", "start_s", "downtime_s"):
        assert record[phase] > 0, phase
    assert record["downtime_s"] >= record["stop_s"] + record["copy_s"] + record["start_s"] - 1e-6
    assert record["downtime_s"] >= record["copy_s"]
    archive = Path(record["archive"])
    assert archive.stat().st_mode & 0o777 == 0o600
    assert archive.stat().st_size == record["bytes"]
    assert archive.name.startswith("nightly-") and archive.suffix == ".tar"
    assert sandbox.ping(), "influxd must be running again after the backup"

    # GNU tar reads it, and the members are relative and stable
    listing = subprocess.run(
        ["tar", "-tf", str(archive)], capture_output=True, text=True, check=True
    )
    names = listing.stdout.split()
    assert "influxdb.conf" in names
    assert {n.split("/")[0] for n in names} == {"meta", "data", "wal", "influxdb.conf"}
    assert "meta/meta.db" in names
    assert any(n.startswith("data/metrics/autogen/") for n in names)
    assert not any(n.startswith("/") or ".." in n.split("/") for n in names)

    sandbox.write_points("metrics", 3_000, start=50_000)
    assert sandbox.count("metrics") == 15_000

    done = cli("restore", record["id"], "--yes")
    assert done.returncode == 0, done.stderr
    assert sandbox.ping()
    assert sandbox.count("metrics") == 12_000
    rollbacks = sorted(p.name.split(".rollback-")[0] for p in sandbox.root.glob("*.rollback-*"))
    assert rollbacks == ["data", "meta", "wal"], "the live dirs are moved aside, never deleted"
    assert "rm -rf" in done.stdout
    influx_uid = __import__("pwd").getpwnam("influxdb").pw_uid
    # influxd (root here) rewrites fields.idx and meta.db on start; directories it keeps
    restored = [n for n in names if n.startswith(("data/metrics", "wal/metrics"))]
    assert restored
    for name in restored:
        path = sandbox.root / name
        if path.is_dir():
            assert path.lstat().st_uid == influx_uid, f"{path} not owned by influxdb"

    listed = cli.json("list")
    assert [r["id"] for r in listed] == [record["id"]]


def test_sigkill_while_influxd_is_stopped_is_recovered_by_the_next_command(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    # A large (sparse) file makes the copy long enough to kill the backup inside the stop window.
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(1_500_000_000)
    cli = Cli(write_config(tmp_path, sandbox, holes="fill"))
    marker = tmp_path / "state" / "influxd-stopped.json"

    backup = cli.popen("backup", "--json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (
            marker.exists()
            and not sandbox.pids()
            and list((tmp_path / "archives").glob("*.partial"))
        ):
            break
        time.sleep(0.005)
    else:
        backup.kill()
        raise AssertionError("never saw influxd stopped with a partial archive being written")
    backup.send_signal(signal.SIGKILL)
    backup.wait()
    assert not sandbox.ping(), "influxd is down: the backup died in its stop window"

    os.unlink(sandbox.data / "filler.bin")
    listed = cli("list", "--json")  # list does not take the lock: it reports, it recovers nothing
    assert listed.returncode == 0

    second = cli.json("backup")
    assert sandbox.ping(), "the next command must have started influxd again"
    assert second["status"] == "ok", second["error"]
    runs = {r["id"]: r for r in cli.json("list")}
    first = next(r for r in runs.values() if r["id"] != second["id"])
    assert first["status"] == "interrupted"
    assert "influxd was started again" in first["error"]
    assert not marker.exists()
    assert not list((tmp_path / "archives").glob("*.partial"))
    assert sandbox.count("metrics") == 2_000


def test_influxd_ignoring_sigterm_is_left_running_and_nothing_is_copied(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.stop()
    pidfile = tmp_path / "influxd.pid"
    supervisor = subprocess.Popen(
        [
            sys.executable,
            str(STAND_INS / "term_ignoring_supervisor.py"),
            str(pidfile),
            *sandbox.command(),
        ],
        start_new_session=True,
    )
    try:
        sandbox.wait_ready()
        cli = Cli(
            write_config(
                tmp_path,
                sandbox,
                influxd={"pidfile": str(pidfile), "stop_timeout": "2s"},
            )
        )
        started = time.monotonic()
        done = cli("backup", "--json")
        assert done.returncode == 1
        assert time.monotonic() - started < 20
        record = json.loads(done.stdout)
        assert record["status"] == "failed"
        assert "stop_timeout" in record["error"]
        assert record["archive"] is None
        assert _archives(tmp_path) == [], "no archive and no partial file"
        assert psutil.pid_exists(supervisor.pid)
        assert sandbox.ping(), "influxd keeps serving"
        # it got the SIGTERM: watched by a "signalled" marker, started again if it exits late
        marker = json.loads((tmp_path / "state" / "influxd-stopped.json").read_text())
        assert marker["influxd"]["pid"] == supervisor.pid and "signalled_at" in marker, marker
    finally:
        supervisor.send_signal(signal.SIGUSR1)
        supervisor.wait(timeout=30)


def test_a_second_backup_while_one_holds_the_lock_is_busy(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "state").mkdir(exist_ok=True)
    with open(tmp_path / "state" / "backup.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        done = cli("backup")
    assert done.returncode == 75
    assert "busy" in done.stderr
    assert "Traceback" not in done.stderr
    assert _archives(tmp_path) == []


def test_a_stale_lock_file_from_a_dead_process_does_not_block(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "backup.lock").write_text("999999\n")
    assert cli.json("backup")["status"] == "ok"


def _damaged_copies(archive: Path, tmp_path: Path) -> dict[str, Path]:
    truncated = tmp_path / "truncated.tar"
    data = archive.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w", format=tarfile.PAX_FORMAT) as tar:
        with tarfile.open(archive) as src:
            for info in src:
                tar.addfile(*whole(src, info))
        payload = tmp_path / "payload"
        payload.write_text("owned")
        tar.add(payload, arcname="data/../../escaped")
    return {"truncated": truncated, "dot-dot": evil}


def test_restore_refuses_damaged_archives_and_leaves_live_data_untouched(
    tmp_path: Path, sandbox: Sandbox, cli: Cli
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 4_000)
    record = cli.json("backup")
    sandbox.write_points("metrics", 1_000, start=90_000)
    before = sorted(
        str(p.relative_to(sandbox.root))
        for p in sandbox.root.rglob("*")
        if "influxd.log" not in p.name
    )

    for what, damaged in _damaged_copies(Path(record["archive"]), tmp_path).items():
        done = cli("restore", str(damaged), "--yes")
        assert done.returncode == 1, what
        assert "refused" in done.stderr and "nothing touched" in done.stderr, what
        assert "Traceback" not in done.stderr
        assert sandbox.count("metrics") == 5_000, what
        after = sorted(
            str(p.relative_to(sandbox.root))
            for p in sandbox.root.rglob("*")
            if "influxd.log" not in p.name
        )
        assert after == before, what
    assert not (tmp_path / "escaped").exists()
    assert not (sandbox.root.parent / "escaped").exists()


def test_restore_refuses_an_archive_whose_sha256_differs_from_the_catalog(
    tmp_path: Path, sandbox: Sandbox, cli: Cli
) -> None:
    record = cli.json("backup")
    archive = Path(record["archive"])
    with open(archive, "r+b") as fh:  # flip one byte inside the data, same size
        fh.seek(archive.stat().st_size // 3)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    done = cli("restore", record["id"], "--yes")
    assert done.returncode == 1
    assert "sha256" in done.stderr
    assert sandbox.ping()


def test_sigterm_during_the_copy_restarts_influxd_and_records_an_interrupted_run(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(1_500_000_000)
    cli = Cli(write_config(tmp_path, sandbox, holes="fill"))
    marker = tmp_path / "state" / "influxd-stopped.json"
    backup = cli.popen("backup", "--json")
    deadline = time.monotonic() + 60
    while not (list((tmp_path / "archives").glob("*.partial")) and not sandbox.pids()):
        assert time.monotonic() < deadline, "never saw the copy start"
        time.sleep(0.005)
    backup.send_signal(signal.SIGTERM)
    out, err = backup.communicate(timeout=60)
    assert backup.returncode == 1, err
    record = json.loads(out)
    assert record["status"] == "interrupted"
    assert "SIGTERM" in record["error"]
    assert sandbox.ping(), "influxd runs again before the command exits"
    assert record["downtime_s"] > 0
    assert not marker.exists()
    assert _archives(tmp_path) == [], "the partial archive is removed"
    assert sandbox.count("metrics") == 1_000


HOLD_MAPPED = """
import mmap, sys, time
fh = open(sys.argv[1], "rb")
mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
fh.close()  # only the mapping holds it now, as influxd holds its TSM files
print("mapped", flush=True)
time.sleep(120)
"""


def test_a_file_still_mapped_after_the_stop_blocks_the_copy_and_influxd_restarts(
    tmp_path: Path, sandbox: Sandbox, cli: Cli
) -> None:
    held = sandbox.data / "held.bin"
    held.write_bytes(b"x" * 8192)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_MAPPED, str(held)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "mapped"
        record = cli.json("backup")
        assert record["status"] == "failed"
        assert f"pid {holder.pid}" in record["error"] and "held.bin" in record["error"]
        assert record["archive"] is None and _archives(tmp_path) == []
        assert sandbox.ping(), "influxd is started again after the refused copy"
    finally:
        holder.kill()
        holder.wait()


def test_a_restore_that_died_half_way_is_rolled_back_by_the_next_command(
    tmp_path: Path, sandbox: Sandbox, cli: Cli
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    # The state a SIGKILLed restore leaves: live dirs moved aside, other dirs in their place,
    # influxd started on them, the marker still there.
    sandbox.stop()
    swaps = []
    for name in ("meta", "data", "wal"):
        live = sandbox.root / name
        aside = sandbox.root / f"{name}.rollback-20260101T000000Z"
        live.rename(aside)
        live.mkdir()
        swaps.append(
            [str(live), str(aside), str(sandbox.root / f".{name}.restore-20260101T000000Z")]
        )
    marker = tmp_path / "state" / "influxd-stopped.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps({"run_id": "restore-20260101T000000Z", "kind": "restore", "swaps": swaps})
    )
    sandbox.start()
    assert sandbox.databases() == []

    assert cli("list").returncode == 0
    record = cli.json("backup")

    assert record["status"] == "ok", record["error"]
    assert sandbox.count("metrics") == 3_000, "the data from before the restore is back"
    assert not marker.exists()
    assert not list(sandbox.root.glob("*.rollback-*"))
    kept = sorted(p.name for p in sandbox.root.glob("*.failed-restore-*"))
    assert kept == [f"{n}.failed-restore-20260101T000000Z" for n in ("data", "meta", "wal")]


def test_an_influxd_still_shutting_down_after_stop_timeout_is_waited_for_and_started(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.stop()
    pidfile = tmp_path / "influxd.pid"
    supervisor = subprocess.Popen(
        [
            sys.executable,
            str(STAND_INS / "slow_exit_supervisor.py"),
            str(pidfile),
            "3",
            *sandbox.command(),
        ],
        start_new_session=True,
    )
    try:
        sandbox.wait_ready()
        cli = Cli(
            write_config(tmp_path, sandbox, influxd={"pidfile": str(pidfile), "stop_timeout": "1s"})
        )
        record = cli.json("backup")
        assert record["status"] == "failed"
        assert "stop_timeout" in record["error"]
        assert _archives(tmp_path) == [] or all(p.name == ".staging" for p in _archives(tmp_path))
        assert sandbox.ping(), "started again once the old process was gone"
        assert supervisor.wait(timeout=10) == 0
        assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def test_the_log_of_the_influxd_we_start_is_trimmed_before_it_starts(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """influxd writes every request to state_dir/influxd.log while it runs; a cold run's start
    trims it over 16 MiB (the last one kept as influxd.log.1), so it never grows for ever."""
    cli = Cli(write_config(tmp_path, sandbox))
    log = tmp_path / "state" / "influxd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"an old request line\n" * ((17 << 20) // 20))
    before = log.stat().st_size
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    assert (tmp_path / "state" / "influxd.log.1").stat().st_size == before
    started = log.read_bytes()
    assert b"an old request line" not in started and len(started) < 1 << 20, len(started)
    assert sandbox.ping(), "the server came back, writing to the trimmed log"
