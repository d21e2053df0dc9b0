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
    assert need > free + (1 << 30) and have <= free + (64 << 20), (need, have, free)
    assert record["stop_s"] is None and record["downtime_s"] is None
    assert sandbox.pids() == pids, "influxd was never stopped: same process"
    assert sandbox.ping()
    assert list((tmp_path / "archives").iterdir()) == []
