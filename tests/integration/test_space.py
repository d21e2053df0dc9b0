"""The cold job refuses before stopping influxd when the archive cannot fit in the storage dir."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config


def test_not_enough_space_is_refused_before_the_stop(tmp_path: Path, sandbox: Sandbox) -> None:
    cli = Cli(write_config(tmp_path, sandbox, holes="fill"))
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
    # need, have, then what need is made of: the archive, (no staging here), the reserve
    numbers = [int(n) for n in re.findall(r"\d{6,}", record["error"])]
    assert len(numbers) == 4, record["error"]
    need, have, archive, reserve = numbers
    assert need == int(archive * 1.02) + reserve, record["error"]
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


def test_a_hot_dry_run_gives_no_space_verdict_but_cold_does(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Only a cold run is refused for space: a hot dry run calls its size an upper bound and
    does not fail for it (the hot run itself then succeeds), while cold still says it would be
    refused."""
    jobs = [
        {"name": "hourly", "every": "1h", "mode": "hot"},
        {"name": "nightly", "every": "1d", "mode": "cold", "copy": "direct"},
    ]
    cli = Cli(write_config(tmp_path, sandbox, jobs=jobs, holes="fill"))
    sandbox.create_db("db")
    sandbox.write_points("db", 100)
    (tmp_path / "archives").mkdir()
    free = shutil.disk_usage(tmp_path / "archives").free
    with open(sandbox.data / "huge.bin", "wb") as fh:  # sparse, as _series files are
        fh.truncate(free + (1 << 30))

    done = cli("backup", "--dry-run", "--job", "hourly")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "would be refused" not in done.stdout and "upper bound" in done.stdout, done.stdout
    plan = cli.json("backup", "--dry-run", "--job", "hourly")
    assert plan["mode"] == "hot" and plan["fits"] is None
    assert plan["predicted_bytes"] > free

    cold = cli("backup", "--dry-run", "--job", "nightly")
    assert cold.returncode == 1 and "does NOT fit: the backup would be refused" in cold.stdout
    assert cli.json("backup", "--dry-run", "--job", "nightly")["fits"] is False

    record = cli.json("backup", "--job", "hourly")
    assert record["status"] == "ok", record["error"]
    plan = cli.json("backup", "--dry-run", "--job", "hourly")
    assert plan["recent_hot_bytes"] == record["bytes"]
