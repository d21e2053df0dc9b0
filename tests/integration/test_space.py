"""The cold job refuses before stopping influxd when the archive cannot fit in the storage dir."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config


def test_not_enough_space_is_refused_before_the_stop(tmp_path: Path, sandbox: Sandbox) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    (tmp_path / "archives").mkdir()
    free = shutil.disk_usage(tmp_path / "archives").free
    # A sparse file: the prediction sums file sizes, so this "needs" more than is free.
    with open(sandbox.data / "huge.bin", "wb") as fh:
        fh.truncate(free + (1 << 30))
    pids = sandbox.pids()
    assert len(pids) == 1

    done = cli("backup", "--json")
    assert done.returncode == 1
    record = json.loads(done.stdout)
    assert record["status"] == "failed"
    assert "influxd not stopped" in record["error"]
    numbers = [int(n) for n in re.findall(r"\d{6,}", record["error"])]
    assert len(numbers) == 2, record["error"]
    need, have = numbers
    # have: the free space when the run looked; other tests beside this one write and remove
    # GBs meanwhile (a passing test's tmp dir goes as it ends), so it is free give or take that
    assert need > free + (1 << 30) and need > have, (need, have, free)
    assert abs(have - free) < (1 << 30), (need, have, free)
    assert record["stop_s"] is None and record["downtime_s"] is None
    assert sandbox.pids() == pids, "influxd was never stopped: same process"
    assert sandbox.ping()
    assert list((tmp_path / "archives").iterdir()) == []


def test_a_restore_into_a_dir_without_room_is_refused_before_a_byte_is_written(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The unpacked size of the archive's members, counted against the target's filesystem
    (a small real tmpfs): refused with one line naming it, nothing written there."""
    import os
    import subprocess

    cli = Cli(write_config(tmp_path, sandbox))
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.write(os.urandom(3 << 20))  # the archive: over 3 MiB of file data
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        done = cli("restore", record["id"], "--target", str(small / "restored"))
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        line = [ln for ln in done.stderr.splitlines() if ln.startswith("influx-backupd:")][-1]
        assert f"not enough space in {small}" in line and "nothing written" in line, line
        assert os.listdir(small) == [], os.listdir(small)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert sandbox.ping()
