"""`restore BACKUP --target DIR [--start]` against a real influxd 1.6: the backup unpacked or
rebuilt into DIR with a ready-to-run influxdb.conf, the live server never stopped or changed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from influx_backupd.influxd import counts
from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, Cli, write_config
from tests.integration.test_cli_terminal import run_in_pty, screen
from tests.integration.test_restore_live_dirs import _mounted

HOT = [{"name": "hotjob", "mode": "hot"}]
# quotes and spaces: the generated conf must quote them as TOML
ODD_NAME = 'copy "of" a backup'


@contextmanager
def _no_crash_marker(state: Path) -> Iterator[list[str]]:
    """Watch state_dir for the crash marker (written before any stop of influxd) meanwhile."""
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if (state / "influxd-stopped.json").exists():
                seen.append("marker")
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join()


def _live_state(sandbox: Sandbox) -> dict[str, Any]:
    return {
        "pids": sandbox.pids(),
        "counts": {db: sandbox.count(db) for db in sandbox.databases()},
        "meta": (sandbox.meta / "meta.db").read_bytes(),
    }


def _serve(conf: Path) -> Iterator[str]:
    """Run `influxd run -config CONF` as printed, yield its URL once it answers."""
    raw = tomllib.loads(conf.read_text())
    url = "http://" + raw["http"]["bind-address"]
    proc = subprocess.Popen(
        ["influxd", "run", "-config", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/ping", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, "influxd did not start on the restored dir"
                assert time.monotonic() < deadline, "influxd did not answer in 60 s"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


serving = contextmanager(_serve)


def _counts(url: str) -> dict[str, int]:
    return {db: counts.point_count(url, db, timeout=120) for db in counts.databases(url)}


def test_a_cold_archive_into_a_dir_and_served_leaves_the_live_server_alone(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    sandbox.create_db("other")
    sandbox.write_points("other", 700, measurement="mem")
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    sandbox.write_points("metrics", 300, start=100_000)  # the live server moves on
    before = _live_state(sandbox)
    target = tmp_path / ODD_NAME / "restored"

    with _no_crash_marker(tmp_path / "state") as seen:
        done = cli("restore", record["id"], "--target", str(target), "--start", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    pid = result["pid"]
    try:
        assert seen == [], "no crash marker: influxd was never about to be stopped"
        assert _live_state(sandbox) == before, "live pid, points and meta.db unchanged"
        conf = tomllib.loads((target / "influxdb.conf").read_text())
        assert conf["meta"]["dir"] == str(target / "meta")
        assert conf["data"]["dir"] == str(target / "data")
        assert conf["data"]["wal-dir"] == str(target / "wal")
        assert conf["retention"]["enabled"] is False, "an old backup's shards must stay"
        assert result["url"] == "http://" + conf["http"]["bind-address"]
        assert conf["http"]["bind-address"] != f"127.0.0.1:{sandbox.http_port}"
        assert target.stat().st_mode & 0o777 == 0o700
        assert _counts(result["url"]) == {"metrics": 5_000, "other": 700}
        assert psutil.Process(pid).cmdline()[-1] == str(target / "influxdb.conf")
    finally:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(60)
    assert _live_state(sandbox) == before


def test_a_hot_chain_rebuilt_into_a_dir_runs_with_the_printed_command(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    assert cli.json("backup")["status"] == "ok"
    sandbox.write_points("metrics", 1_500, start=100_000)
    sandbox.create_db("later")
    sandbox.write_points("later", 600)
    increment = cli.json("backup")
    assert increment["status"] == "ok" and increment["kind"] == "incremental"
    sandbox.write_points("metrics", 300, start=200_000)
    before = _live_state(sandbox)
    target = tmp_path / ODD_NAME

    with _no_crash_marker(tmp_path / "state") as seen:
        done = cli("restore", increment["id"], "--target", str(target))
    assert done.returncode == 0, done.stderr
    assert seen == []
    assert _live_state(sandbox) == before
    conf = target / "influxdb.conf"
    # the command as printed, pasted into a shell: its path quoted (a space, quotes)
    [line] = [ln for ln in done.stdout.splitlines() if "serve it with: " in ln]
    assert shlex.split(line.partition("serve it with: ")[2]) == [
        "influxd",
        "run",
        "-config",
        str(conf),
    ]
    [line] = [ln for ln in done.stdout.splitlines() if "remove the copy with: " in ln]
    assert shlex.split(line.partition("remove the copy with: ")[2]) == ["rm", "-rf", str(target)]
    assert not list((tmp_path / "archives").glob(".verify-*")), "the build's scratch is gone"
    with serving(conf) as url:
        assert _counts(url) == {"metrics": 6_500, "later": 600}


def test_a_dir_that_is_not_empty_is_refused_with_one_line_and_left_alone(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    record = cli.json("backup")
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    done = cli("restore", record["id"], "--target", str(target))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"influx-backupd: --target {target}: not empty; give an empty or absent directory"
    ]
    assert [p.name for p in target.iterdir()] == ["keep.txt"]

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    done = cli("restore", record["id"], "--target", str(a_file))
    assert done.returncode == 2 and "not a directory" in done.stderr
    done = cli("restore", record["id"], "--target", str(tmp_path / "a\\b"))
    assert done.returncode == 2 and "glob patterns" in done.stderr
    assert not (tmp_path / "a\\b").exists()
    done = cli("restore", record["id"], "--start")
    assert done.returncode == 2 and "--start goes with --target" in done.stderr

    # an empty --target ("$UNSET") named the current dir: before, the archive went into it, it
    # was made 0700, and a traceback followed
    here = tmp_path / "cwd"
    here.mkdir()
    command = [sys.executable, "-m", "influx_backupd", "--config", str(cli.config), "restore"]
    for empty in ("", " "):
        done = subprocess.run(
            [*command, record["id"], "--target", empty],
            capture_output=True,
            text=True,
            cwd=here,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "--target: empty: give a directory" in done.stderr
        assert "Traceback" not in done.stderr
        assert list(here.iterdir()) == [] and here.stat().st_mode & 0o777 == 0o755


def test_a_dir_among_our_own_files_or_one_that_cannot_be_written_is_refused_before_anything(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: a DIR inside the storage dir (a hot backup's own dir among them) or the state
    dir was restored into (the hot backup then failed its check for good: "inside is not in the
    manifest"); an over-long name, or an existing empty DIR on a read-only mount, got exit 1."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    record = cli.json("backup")
    backup_dir = Path(record["archive"])
    storage, state = tmp_path / "archives", tmp_path / "state"
    link = tmp_path / "to-storage"
    link.symlink_to(storage)
    for target, said in (
        (backup_dir / "inside", f"inside influx-backupd's storage dir {storage}"),
        (storage / "restored", f"inside influx-backupd's storage dir {storage}"),
        (link / "new", f"inside influx-backupd's storage dir {storage}"),
        (state / "restored", f"inside influx-backupd's state dir {state}"),
    ):
        done = cli("restore", record["id"], "--target", str(target))
        assert done.returncode == 2, (target, done.stderr)
        assert done.stderr.splitlines() == [
            f"influx-backupd: --target {target}: {said}; give a directory outside it"
        ], done.stderr
        assert not target.exists()
    assert cli("verify", record["id"]).returncode == 0
    # a backup given by path, outside the storage dir: not into itself either
    elsewhere = tmp_path / "copied"
    shutil.copytree(backup_dir, elsewhere)
    done = cli("restore", str(elsewhere), "--target", str(elsewhere / "inside"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "influx-backupd: restore refused, nothing touched: "
        f"--target {elsewhere / 'inside'}: inside the backup it restores, "
        f"{elsewhere}; give a directory outside it"
    )
    assert not (elsewhere / "inside").exists()

    too_long = tmp_path / ("n" * 300)
    done = cli("restore", record["id"], "--target", str(too_long))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"influx-backupd: --target {too_long}: File name too long"]

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], check=True
    )
    try:
        for target in (read_only, read_only / "a" / "b"):
            done = cli("restore", record["id"], "--target", str(target))
            assert done.returncode == 2, (target, done.stderr)
            [line] = done.stderr.splitlines()
            assert (
                line.startswith(f"influx-backupd: --target {target}: ") and "not writable" in line
            )
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert list(read_only.iterdir()) == []


def test_a_failed_restore_into_a_dir_it_made_removes_the_parents_it_made_too(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    record = cli.json("backup")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(small)], check=True)
    try:
        (small / "kept").mkdir()  # the user's: stays
        filler = os.statvfs(small)
        (small / "kept" / "filler").write_bytes(b"x" * (filler.f_bavail * filler.f_frsize - 8192))
        target = small / "kept" / "a" / "b" / "c"
        done = cli("restore", record["id"], "--target", str(target))
        assert done.returncode == 1, done.stderr
        assert sorted(str(p.relative_to(small)) for p in small.rglob("*")) == [
            "kept",
            "kept/filler",
        ]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_build_that_fails_removes_what_it_wrote_into_the_dir(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    before = _live_state(sandbox)
    failing = STAND_INS / "influxd_hot_restore_fails"
    cli = Cli(write_config(tmp_path, sandbox, influxd={"binary": str(failing)}, jobs=HOT))
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, left in ((tmp_path / "absent", False), (empty, True)):
        done = cli("restore", record["id"], "--target", str(target))
        assert done.returncode == 1
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"influx-backupd: restore into {target} failed"), line
        assert "stand-in failure" in line and "the live server was not touched" in line
        assert target.exists() == left
        assert not left or not any(target.iterdir())
    assert _live_state(sandbox) == before
    assert not list((tmp_path / "archives").glob(".verify-*"))


def test_a_backup_the_configured_influxd_cannot_read_is_refused_before_the_dir_is_made(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A 1.x backup with [influxd] binary an InfluxDB 0.9 (the stand-in): refused as the
    whole-server restore refuses it, not run into influxd's usage text after the dir was made."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    old = STAND_INS / "influxd09"
    cli = Cli(write_config(tmp_path, sandbox, influxd={"binary": str(old)}, jobs=HOT))
    target = tmp_path / "look"
    done = cli("restore", record["id"], "--target", str(target))
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "whose restore cannot read it" in line and "InfluxDB v0.9.6" in line, line
    assert not target.exists()


def test_restore_shows_its_progress_on_a_terminal_and_to_systemd(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    cli = Cli(config)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 20_000)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    argv = [sys.executable, "-m", "influx_backupd", "--config", str(config), "restore"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    status, text = run_in_pty([*argv, record["id"], "--target", str(tmp_path / "a")], env)
    assert status == 0, text
    assert re.search(r"restore \[[#.]+\] +\d+\.\d% .* \d+/\d+ files", text), "the bar was drawn"
    shown = [line for line in screen(text) if line.strip()]
    assert shown[0].startswith("restored "), "the bar is gone once done"

    # Under a unit (NOTIFY_SOCKET): more time asked for, the progress as the unit's status.
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(60)
        done = subprocess.run(
            [*argv, record["id"], "--target", str(tmp_path / "b")],
            env={**env, "NOTIFY_SOCKET": path},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        sock.settimeout(0.5)
        messages = []
        with contextlib.suppress(TimeoutError):
            while True:
                messages.append(sock.recv(4096).decode())
    assert messages[0] == "EXTEND_TIMEOUT_USEC=60000000", messages
    assert messages[-1] == f"STATUS=restore {record['id']}: finished", messages


def test_a_dir_with_room_for_the_bytes_but_not_the_blocks_is_refused_before_anything(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Hundreds of small files take a block each: a filesystem with room for their bytes but
    not their blocks was taken, and the restore failed half-way with a bare "[Errno 28] No
    space left on device". It is refused before anything is written, saying what it needs."""
    cli = Cli(write_config(tmp_path, sandbox))
    for n in range(30):
        sandbox.create_db(f"d{n}")
        sandbox.write_points(f"d{n}", 2)
    record = cli.json("backup")
    with tarfile.open(record["archive"]) as tar:
        files = [i for i in tar.getmembers() if i.isreg()]
    data = sum(length for i in files for _, length in (i.sparse or [(0, i.size)]))
    blocks = sum(
        -(-length // 4096) * 4096 for i in files for _, length in (i.sparse or [(0, i.size)])
    )
    assert blocks - data > 200_000, (data, blocks)  # many small files
    small = tmp_path / "small"
    small.mkdir()
    size = -(-(data + 100_000) // 4096) * 4096  # room for the bytes, not for the blocks
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)], check=True)
    try:
        done = cli("restore", record["id"], "--target", str(small / "t"))
        assert done.returncode == 1, done.stderr
        assert f"not enough space in {small / 't'}: the archive unpacks to about" in done.stderr, (
            done.stderr
        )
        assert "nothing written" in done.stderr and "Errno" not in done.stderr
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_accept_fewer_points_with_target_is_a_usage_error(tmp_path: Path, sandbox: Sandbox) -> None:
    """--target compares no counts: the flag there is a mistake, said before anything."""
    cli = Cli(
        write_config(tmp_path, sandbox, jobs=[{"name": "c", "mode": "cold", "copy": "direct"}])
    )
    rec = cli.json("backup")
    target = tmp_path / "into"

    done = cli("restore", rec["id"], "--target", str(target), "--accept-fewer-points")

    assert done.returncode == 2, done.stderr
    assert "--accept-fewer-points goes with a restore into the live server" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not target.exists()


def test_a_hot_chain_rebuilt_where_it_does_not_fit_is_refused_at_once(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The throwaway's `influxd restore` on a full filesystem waited for its whole
    backup_timeout (an hour by default) before the hostile-input audit's 25 s timeout cut it
    short; the cold form was refused at once. Now the chain's size is asked first too."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{"name": "hotjob", "mode": "hot"}]))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 50_000)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    with _mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as small:
        done = cli("restore", record["id"], "--target", str(small / "t"), timeout=60)
        assert done.returncode == 1, done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert f"not enough space in {small / 't'}: the chain rebuilt there needs about" in line
        assert list(small.iterdir()) == []


def test_accept_fewer_points_given_for_a_hot_chain_is_said_unused(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A hot chain is held to its build's count, never to one taken before a stop: the flag
    was taken in silence there (the review)."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{"name": "hotjob", "mode": "hot"}]))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]

    done = cli(
        "restore", record["id"], "--database", "metrics", "--as", "m2", "--accept-fewer-points"
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: --accept-fewer-points not used: a hot chain is held" in done.stderr
