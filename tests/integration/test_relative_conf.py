"""influxd started by hand on a relative config path (`cd /srv/influx && influxd run -config
influxdb.conf`), real influxd, real CLI. Before: a cold backup said "influxd is not running (no
process for …)" and stopped nothing (exit 1), while restore named the pid; the argv's relative
value was never read against the process's working dir."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import psutil

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config


def test_a_cold_backup_stops_and_restarts_an_influxd_started_on_a_relative_conf_path(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    sandbox.stop()
    by_hand = subprocess.Popen(
        [sandbox.binary, "run", "-config", sandbox.conf.name],
        cwd=sandbox.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        sandbox.wait_ready()
        done = Cli(write_config(tmp_path, sandbox))("backup", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        assert by_hand.wait(5) == 0, "the hand-started server was the one stopped"
        assert sandbox.ping(), "influxd runs again after the backup"
        assert sandbox.count("metrics") == 500
        started = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(sandbox.conf) in (p.info["cmdline"] or [])
        ]
        assert started, "started again by the config's command"
    finally:
        if by_hand.poll() is None:
            by_hand.kill()
            by_hand.wait()


def test_a_conf_spelling_its_names_in_other_case_is_backed_up_whole(
    tmp_path: Path, influxd_path: str
) -> None:
    """influxd reads `WAL-Dir` as wal-dir: the tool read names exactly, archived no wal at all
    and called the backup ok (its points not yet in TSM files were in none of it)."""
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    server.write_config()
    server.conf.write_text(server.conf.read_text().replace("wal-dir", "WAL-Dir"))
    server.start()
    try:
        server.create_db("metrics")
        server.write_points("metrics", 500)
        record = Cli(write_config(tmp_path, server)).json("backup")
        assert record["status"] == "ok", record["error"]
        assert sorted(record["dirs"]) == ["data", "meta", "wal"]
        with tarfile.open(record["archive"]) as tar:
            assert any(n.startswith("wal/") and n.endswith(".wal") for n in tar.getnames())
    finally:
        server.stop()
