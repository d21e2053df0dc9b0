"""A whole-server restore and live dirs that are not plain dirs beside influxdb.conf: a disk
without room for the build.

Real influxd 1.6, real tmpfs (root).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, started, write_config


def _job(mode: str) -> list[dict[str, str]]:
    if mode == "hot":
        return [{"name": "h", "mode": "hot"}]
    return [{"name": "c", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}]


@contextmanager
def _mounted(where: Path, *options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *options, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _free_kib(path: Path) -> int:
    out = subprocess.run(
        ["df", "-k", "--output=avail", str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


def test_a_hot_restore_on_a_full_disk_is_refused_at_once_naming_the_space(
    tmp_path: Path, influxd_path: str
) -> None:
    """It hung inside `influxd restore` until backup_timeout (the build's server could not
    write), holding the backup lock, then said "timed out: no output"."""
    mnt = tmp_path / "fs"
    with (
        _mounted(mnt, "-t", "tmpfs", "-o", "size=40m", "tmpfs"),
        started(Sandbox(mnt / "server", binary=influxd_path)) as server,
    ):
        server.create_db("metrics")
        server.write_points("metrics", 1000)
        server.create_db("other")
        server.write_points("other", 500)
        cli = Cli(
            write_config(tmp_path, server, jobs=_job("hot"), influxd={"backup_timeout": "20s"})
        )
        rec = cli.json("backup")
        assert rec["status"] == "ok", rec["error"]
        subprocess.run(
            ["fallocate", "-l", str((_free_kib(mnt) - 60) * 1024), str(mnt / "filler")],
            check=True,
        )
        pids = server.pids()

        t0 = time.monotonic()
        done = cli("restore", rec["id"], "--yes", timeout=300)
        took = time.monotonic() - t0

        assert done.returncode == 1, done.stderr[-2000:]
        last = done.stderr.splitlines()[-1]
        assert took < 15, f"took {took:.0f}s (until backup_timeout?): {last}"
        assert "space" in last and "free" in last and "influxd not stopped" in last, last
        assert server.pids() == pids, "influxd was never stopped"
        assert server.count("metrics") == 1000
        assert not list((mnt / "server").glob(".*.restore-*"))
