"""A host whose catalog came from `import --offsite` has no local copies: a repair of damage it
finds in the bucket can send nothing, and says so in one short line per backup naming its own
missing copy (before: each line listed every imported backup's archive as "not there")."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import offsite_section


def test_a_repair_on_a_host_without_local_copies_says_one_short_line_per_backup(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    old = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    ids = []
    for n in range(3):
        sandbox.write_points("metrics", 200, start=n * 10_000)
        ids.append(old.json("backup")["id"])
    (tmp_path / "b").mkdir()
    new = Cli(write_config(tmp_path / "b", sandbox, extra=offsite_section(moto)))
    # ids of one second sort by their random suffix, not by when they were taken
    assert sorted(new.json("import", "--offsite")["imported"]) == sorted(ids)
    client = moto.client()
    for o in client.list_objects_v2(Bucket=moto.bucket, Prefix="host-a/objects/")["Contents"]:
        client.delete_object(Bucket=moto.bucket, Key=o["Key"])
    assert new("verify", "--offsite", "--all").returncode == 1
    # before: "the next sync sends them again from a local copy", which no copy here holds
    said = [x for x in new("status").stdout.splitlines() if "DAMAGED" in x]
    assert len(said) == len(ids) and all("its own local copy is not here" in x for x in said)
    assert not any("sends them again from" in x for x in said), said

    synced = new("offsite", "sync", "--adopt")  # the old host is gone: its prefix is taken over
    assert synced.returncode == 1, synced.stdout
    lines = [x for x in synced.stderr.splitlines() if "not repaired" in x]
    assert len(lines) == len(ids), synced.stderr
    for backup_id, line in zip(
        sorted(ids), sorted(lines, key=lambda x: x.split("not repaired: ")[1]), strict=True
    ):
        others = [i for i in ids if i != backup_id]
        assert backup_id in line and not any(i in line for i in others), line
        assert "no local copy" in line and len(line) < 200, line
    assert "Traceback" not in synced.stderr
    # the repair found no local backup holding them: status says so, and what to do
    said = [x for x in new("status").stdout.splitlines() if "DAMAGED" in x]
    assert len(said) == len(ids), said
    for line in said:
        assert "NOT repairable: " in line and "no local copy" in line, line
        assert "take a new backup" in line and "sends them again" not in line, line
    damaged = new.json("status")["offsite"]["damaged"]
    assert {d["repair"]["can"] for d in damaged} == {"not_repairable"}, damaged
