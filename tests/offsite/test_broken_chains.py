"""What the bucket holds must restore: no increment off-site without its earlier links, no
damaged backup counted by off-site retention as one of its good ones, and a local backup the
sync finds damaged is a failed check (the next hot run starts a new chain). Against a real
influxd and moto's server; the damage is done to real files and objects."""

from __future__ import annotations

import json
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite.repo import Offsite
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import offsite_section

HOT = [{"name": "hotjob", "mode": "hot", "keep_last": 1}]


def _flip(path: Path) -> None:
    """One byte of a file changed, its size kept: only a hash can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _spoil_object(moto: Endpoint, name: str) -> None:
    client = moto.client()
    key = f"host-a/objects/{name[:2]}/{name}"
    body = bytearray(client.get_object(Bucket=moto.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=moto.bucket, Key=key, Body=bytes(body))


def _ids(listed: list[dict[str, object]]) -> list[object]:
    return [r["id"] for r in listed]


def test_off_site_retention_never_counts_a_damaged_backup_as_a_good_one(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """The audit's repro, cold: the newest backup in the bucket is damaged and has no local
    copy to repair it from. Before: keep_last = 1 kept it as "newest" and deleted every intact
    backup; nothing restorable was left in the bucket."""
    sandbox.create_db("metrics")
    config = write_config(tmp_path, sandbox, extra=offsite_section(moto))
    cli = Cli(config)
    ids = []
    for night in range(3):
        sandbox.write_points("metrics", 500, start=night * 10_000)
        ids.append(cli.json("backup")["id"])
    store = Offsite(moto.settings())
    newest = store.manifest(ids[-1])
    others = store.manifest(ids[0]).objects() | store.manifest(ids[1]).objects()
    own = sorted(newest.objects() - others)
    assert own, "the newest backup has an object of its own"
    _spoil_object(moto, own[0])
    Path(cli.json("list")[-1]["archive"]).unlink()  # no local copy to repair it from
    checked = cli("verify", "--offsite", "--all", "--read-data", "100")
    assert checked.returncode == 1 and "1 damaged or missing objects noted" in checked.stdout

    config.write_text(config.read_text() + "keep_last = 1\n")
    synced = cli("offsite", "sync", "--json")
    assert synced.returncode == 1, synced.stderr[-2000:]
    report = json.loads(synced.stdout)
    assert ids[-1] in report["unrepaired"]
    assert report["pruned"]["manifests_deleted"] == [ids[0]], report["pruned"]
    assert _ids(cli.json("list", "--offsite")) == ids[1:], "the newest intact one is kept"
    assert cli("verify", ids[1], "--offsite", "--read-data", "100").returncode == 0


def test_a_local_copy_found_damaged_by_a_repair_fails_its_check(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2000)
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    record = cli.json("backup")
    store = Offsite(moto.settings())
    manifest = store.manifest(record["id"])
    largest = max((f for f in manifest.files if f.type == "file"), key=lambda f: f.size)
    _spoil_object(moto, largest.object)
    assert cli("verify", record["id"], "--offsite", "--read-data", "100").returncode == 1
    _flip(Path(record["archive"]))
    synced = cli("offsite", "sync", "--json")
    assert synced.returncode == 1
    assert record["id"] in json.loads(synced.stdout)["unrepaired"]
    [listed] = cli.json("list")
    assert listed["verify_status"] == "failed", listed
