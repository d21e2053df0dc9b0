"""restore --target and --database take a backup from the bucket too (--from offsite): a new
host with nothing but the bucket looks at a cold archive in a dir of its own and brings one
database of a hot chain into its live server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import offsite_section

JOBS = [{"name": "nightly", "mode": "cold", "copy": "direct"}, {"name": "hotjob", "mode": "hot"}]


@pytest.mark.parametrize("endpoint", ["moto"], indirect=True)
def test_target_and_database_from_the_bucket(
    tmp_path: Path, sandbox: Sandbox, second: Sandbox, endpoint: Endpoint
) -> None:
    section = offsite_section(endpoint)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    old = Cli(write_config(tmp_path, sandbox, jobs=JOBS, extra=section))
    cold = old.json("backup", "--job", "nightly")
    sandbox.write_points("metrics", 1_000, start=100_000)
    assert old.json("backup", "--job", "hotjob")["status"] == "ok"
    sandbox.write_points("metrics", 400, start=200_000)
    increment = old.json("backup", "--job", "hotjob")
    assert cold["status"] == "ok" and increment["kind"] == "incremental"

    home = tmp_path / "newhost"
    new = Cli(write_config(home, second, jobs=JOBS, extra=section))
    assert new("import", "--offsite").returncode == 0
    second.create_db("mine")
    second.write_points("mine", 50)

    target = tmp_path / "look"
    done = new("restore", cold["id"], "--from", "offsite", "--target", str(target), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (target / "influxdb.conf").is_file() and (target / "data" / "metrics").is_dir()
    assert json.loads(done.stdout)["files"] > 0

    done = new("restore", increment["id"], "--from", "offsite", "--database", "metrics", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert second.count("metrics") == 4_400, "the whole chain, fetched"
    assert second.count("mine") == 50, "the new host's own database untouched"
