"""A backup imported from the bucket (import --offsite) on a new host has no archive there until
`restore ID --from offsite` fetches it: a restore or verify of it here says so in one line and
writes no verdict (before: "No such file or directory", and verify marked it failed, after
which status said FAILING and prune kept it as "its check failed")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import offsite_section


@pytest.fixture
def new_host(tmp_path: Path, sandbox: Sandbox, moto: Endpoint) -> tuple[Cli, str]:
    """Host B, with the catalog of host A's bucket and nothing else."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    old = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    backup_id = old.json("backup")["id"]
    (tmp_path / "b").mkdir()
    new = Cli(write_config(tmp_path / "b", sandbox, extra=offsite_section(moto)))
    assert new.json("import", "--offsite")["imported"] == [backup_id]
    return new, backup_id


def test_restore_and_verify_say_it_is_only_in_the_bucket(
    tmp_path: Path, new_host: tuple[Cli, str]
) -> None:
    cli, backup_id = new_host
    line = (
        f"influx-backupd: verify {backup_id}: backup {backup_id} is only in the bucket (imported "
        "by import --offsite, no local copy); check it there: "
        f"verify {backup_id} --offsite\n"
    )
    hint = (
        f"influx-backupd: restore {backup_id}: backup {backup_id} is only in the bucket (imported "
        "by import --offsite, no local copy); add --from offsite to fetch and restore it: "
        f"restore {backup_id} --from offsite\n"
    )
    look = tmp_path / "look"
    for args in (("restore", backup_id, "--yes"), ("restore", backup_id, "--target", str(look))):
        done = cli(*args)
        # a usage mistake (2): the backup is fine, the command lacks --from offsite
        assert (done.returncode, done.stderr) == (2, hint), args
    assert not look.exists()
    done = cli("verify", backup_id)
    assert (done.returncode, done.stderr) == (2, line), "a usage mistake, as restore's"
    [record] = cli.json("list")
    assert record["verify_status"] is None, "no verdict: nothing was checked"
    assert record["only_in_bucket"] is True and record["status"] == "ok"
    [row] = cli("list").stdout.splitlines()[1:]
    assert "off-site only, no local copy" in row and record["archive"] not in row, row
    assert "FAILING" not in cli("status").stdout
    pruned = cli("prune", "--dry-run")
    assert "check failed" not in pruned.stdout and pruned.returncode == 0

    every = cli("verify", "--all")
    assert every.returncode == 0, every.stderr
    assert "passed over 1 backup(s) only in the bucket" in every.stdout
    assert json.loads(cli("verify", "--all", "--json").stdout) == []
