"""A whole-server restore and live dirs that are not plain dirs beside influxdb.conf: a disk
without room for the build, a live dir that is a mount point, a symlinked live dir.

Real influxd 1.6, real tmpfs and bind mounts (root).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, Cli, started, write_config

MODES = ["cold", "hot"]
INFLUXD09 = STAND_INS / "influxd09"


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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mount", ["tmpfs", "bind"])
def test_a_live_data_dir_that_is_a_mount_point_is_refused_before_the_stop(
    tmp_path: Path, influxd_path: str, mode: str, mount: str
) -> None:
    """rename(2) of a mount point is EBUSY: the restore stopped influxd, failed at the swap and
    rolled back (downtime for nothing). Refused before the stop now, in one line. A bind mount
    shares its parent's st_dev (os.path.ismount misses it): found in mountinfo."""
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    server.write_config()
    if mount == "tmpfs":
        options = ["-t", "tmpfs", "-o", "size=200m", "tmpfs"]
    else:
        (tmp_path / "elsewhere").mkdir()
        options = ["--bind", str(tmp_path / "elsewhere")]
    with _mounted(server.data, *options):
        server.start()
        try:
            server.create_db("metrics")
            server.write_points("metrics", 100)
            cli = Cli(write_config(tmp_path, server, jobs=_job(mode)))
            rec = cli.json("backup")
            assert rec["status"] == "ok", rec["error"]
            server.write_points("metrics", 50, start=100_000)  # newer than the backup
            pids = server.pids()

            done = cli("restore", rec["id"], "--yes")

            assert done.returncode == 78, done.stderr[-2000:]  # the config's, as cold or hot
            last = done.stderr.splitlines()[-1]
            assert last.startswith("influx-backupd: "), last
            assert f"{server.data} is a mount point" in last, last
            assert "restore --target" in last and "influxd not stopped" in last, last
            assert "Traceback" not in done.stderr
            assert server.pids() == pids, "influxd was never stopped"
            assert server.count("metrics") == 150, "the live data is untouched"
            assert not list(tmp_path.rglob("*.restore-*")) and not list(
                tmp_path.rglob("*.rollback-*")
            )
        finally:
            server.stop()


def _symlinked_data(tmp_path: Path, server: Sandbox) -> Path:
    """server's data dir moved to tmp_path/big/data, a symlink left in its place (server
    stopped meanwhile)."""
    server.stop()
    big = tmp_path / "big"
    big.mkdir()
    server.data.rename(big / "data")
    server.data.symlink_to(big / "data")
    server.start()
    return big


@pytest.mark.parametrize("mode", MODES)
def test_a_symlinked_live_data_dir_is_restored_through_its_link(
    tmp_path: Path, influxd_path: str, mode: str
) -> None:
    """It was staged beside the link, on the parent's filesystem, the link moved aside and a
    plain dir left in its place: the data silently moved off the volume the link named."""
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    with started(server):
        server.create_db("metrics")
        server.write_points("metrics", 100)
        cli = Cli(write_config(tmp_path, server, jobs=_job(mode)))
        rec = cli.json("backup")
        assert rec["status"] == "ok", rec["error"]
        big = _symlinked_data(tmp_path, server)
        server.write_points("metrics", 50, start=100_000)  # newer than the backup

        done = cli("restore", rec["id"], "--yes", "--json")

        assert done.returncode == 0, done.stderr[-2000:]
        assert server.data.is_symlink(), "data/ is now a plain dir on the parent's filesystem"
        assert server.data.readlink() == big / "data"
        assert server.count("metrics") == 100, "the backup's points, served through the link"
        aside = sorted(p.name for p in big.iterdir())
        assert aside[0] == "data" and aside[1].startswith("data.rollback-"), aside
        assert len(aside) == 2, f"no staging dir left beside the real dir: {aside}"
        assert not list(server.root.glob("*data.*")), "nothing staged or moved beside the link"


def test_a_09_restore_with_a_symlinked_data_dir_is_refused_before_the_stop(
    tmp_path: Path,
) -> None:
    """0.9's `influxd restore` removes the data dir itself (os.RemoveAll: the link, not what it
    names) and makes a plain dir in its place; a rollback would then lose the link."""
    server = Sandbox(tmp_path / "server09", binary=str(INFLUXD09))
    server.write_config()
    server.meta.mkdir(parents=True)
    (server.meta / "meta").write_bytes(b"meta v1")
    big = tmp_path / "big"
    (big / "data" / "db" / "default").mkdir(parents=True)
    (big / "data" / "db" / "default" / "1").write_bytes(b"shard")
    server.data.symlink_to(big / "data")
    server.start()
    try:
        influxd = {"binary": str(INFLUXD09), "user": "root", "group": "root"}
        cli = Cli(write_config(tmp_path, server, influxd=influxd, jobs=_job("hot")))
        rec = cli.json("backup")
        assert rec["status"] == "ok", rec["error"]
        pids = server.pids()

        done = cli("restore", rec["id"], "--yes")

        # the config must name the dir itself first: a configuration error, as other refusals
        assert done.returncode == 78, done.stderr[-2000:]
        last = done.stderr.splitlines()[-1]
        assert f"{server.data} is a symlink" in last and "influxd not stopped" in last, last
        assert server.pids() == pids
        assert server.data.is_symlink() and (big / "data" / "db" / "default" / "1").exists()
        assert not list(big.glob("*.rollback-*")) and not list(server.root.glob("*.rollback-*"))
    finally:
        server.stop()


def test_a_mount_point_under_a_live_dir_is_refused_before_the_stop(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A database's dir on a disk of its own (data/metrics a mount point): the swap moved the
    data dir aside by rename, mount and all, the restored database landed on the data dir's
    own filesystem, and the rollback dir the restore names for `rm -rf` held the mounted
    disk. Refused before the stop, naming the mount."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    cli = Cli(write_config(tmp_path, sandbox, jobs=_job("cold")))
    rec = cli.json("backup")
    assert rec["status"] == "ok", rec["error"]
    disk = sandbox.data / "disk"
    disk.mkdir()
    with _mounted(disk, "-t", "tmpfs", "-o", "size=10m", "tmpfs"):
        (disk / "kept").write_text("on its own disk")
        pids = sandbox.pids()
        done = cli("restore", rec["id"], "--yes")
        assert done.returncode == 78, done.stderr[-2000:]
        last = done.stderr.splitlines()[-1]
        assert f"holds the mount point {disk}" in last, last
        assert "influxd not stopped" in last, last
        assert sandbox.pids() == pids, "influxd was never stopped"
        assert (disk / "kept").read_text() == "on its own disk"
        assert not list(tmp_path.rglob("*.rollback-*"))
