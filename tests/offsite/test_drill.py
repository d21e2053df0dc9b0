"""Disaster drill: the host is gone. A second host (fresh state dir, empty storage dir, its own
influxd) restores a cold archive and a hot chain from the bucket alone, 0 points lost."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import offsite_section

JOBS = [{"name": "nightly", "mode": "cold", "copy": "direct"}, {"name": "hotjob", "mode": "hot"}]


def test_a_fresh_host_restores_a_cold_archive_and_a_hot_chain_from_the_bucket(
    tmp_path: Path, sandbox: Sandbox, second: Sandbox, endpoint: Endpoint
) -> None:
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout.strip()
    section = offsite_section(endpoint, encrypt_to=[recipient], identity_file=str(identity))

    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)
    old = Cli(write_config(tmp_path, sandbox, jobs=JOBS, extra=section))
    cold = old.json("backup", "--job", "nightly")
    sandbox.write_points("metrics", 1_000, start=100_000)
    full = old.json("backup", "--job", "hotjob")
    sandbox.write_points("metrics", 400, start=200_000)
    increment = old.json("backup", "--job", "hotjob")
    assert [r["status"] for r in (cold, full, increment)] == ["ok"] * 3
    assert increment["kind"] == "incremental" and increment["parent_id"] == full["id"]
    assert old.json("status")["offsite"]["not_offsite"] == []

    # the new host: nothing of the old one but the bucket, the credentials and the identity
    home = tmp_path / "newhost"
    new = Cli(write_config(home, second, jobs=JOBS, extra=section))
    assert not (home / "archives").exists()
    assert {r["id"] for r in new.json("list", "--offsite")} == {
        cold["id"],
        full["id"],
        increment["id"],
    }
    imported = new.json("import", "--offsite")
    assert sorted(imported["imported"]) == sorted([cold["id"], full["id"], increment["id"]])
    # they are in the bucket, not here: verify --all has nothing to check yet (and fails none)
    checked = new("verify", "--all", "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout) == [], checked.stdout

    done = new("restore", cold["id"], "--from", "offsite", "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (home / "archives" / Path(cold["archive"]).name).read_bytes()
    assert second.count("metrics") == 3_000 == cold["db_counts"]["metrics"]

    done = new("restore", increment["id"], "--from", "offsite", "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert second.count("metrics") == 4_400
    assert sandbox.count("metrics") == 4_400  # the old host's data, untouched by all this
    checked = new("verify", "--all", "--json")  # what was fetched is checked like any backup
    assert checked.returncode == 0, checked.stdout[-2000:]
    assert sorted(r["run_id"] for r in json.loads(checked.stdout)) == sorted(
        [cold["id"], full["id"], increment["id"]]
    )
