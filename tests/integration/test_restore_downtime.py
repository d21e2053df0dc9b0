"""A whole-server restore's downtime is the stop, the swap and the start: the count of what the
restored server serves comes after, with influxd answering, and is shown on its own (on a big
server the count took 28 of a "downtime 31.7 s = stop 0.06 + swap 0.005 + start 3.2")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config

JOBS = {
    "cold": {"name": "nightly", "mode": "cold", "copy": "direct"},
    "hot": {"name": "hotjob", "mode": "hot"},
}


@pytest.mark.parametrize("mode", list(JOBS))
def test_the_served_count_after_the_start_is_not_downtime(
    tmp_path: Path, sandbox: Sandbox, mode: str
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 20_000)
    cli = Cli(write_config(tmp_path, sandbox, jobs=[JOBS[mode]]))
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]

    done = cli("restore", record["id"], "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    phases = result["stop_s"] + result["swap_s"] + result["start_s"]
    assert result["check_s"] > 0 and result["served"] == {"metrics": 20_000}, result["warnings"]
    assert result["downtime_s"] >= phases  # the phases and the moments between them

    shown = cli("restore", record["id"], "--yes")
    assert shown.returncode == 0, shown.stderr[-3000:]
    (checked,) = [line for line in shown.stdout.splitlines() if line.startswith("  checked")]
    assert checked.endswith("s, influxd answering)"), checked
