"""Faults of the off-site copies against a real influxd and moto's S3 server: damage in the
bucket that a later check must not forget, a prefix two hosts write, a prune cut short."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.faults.conftest import FaultResult
from tests.offsite.conftest import Endpoint, moto, moto_url
from tests.offsite.helpers import offsite_section

__all__ = ["moto", "moto_url"]  # the fixtures, used by name


def _objects(moto: Endpoint, prefix: str = "host-a") -> dict[str, int]:
    listed = moto.client().list_objects_v2(Bucket=moto.bucket, Prefix=f"{prefix}/objects/")
    return {o["Key"]: o["Size"] for o in listed.get("Contents", [])}


def _spoil(moto: Endpoint, key: str) -> None:
    """One byte changed, the size kept: only reading it back can tell."""
    client = moto.client()
    body = bytearray(client.get_object(Bucket=moto.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=moto.bucket, Key=key, Body=bytes(body))


def _intact(moto: Endpoint, key: str) -> bool:
    body = moto.client().get_object(Bucket=moto.bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[1]


@pytest.mark.fault("offsite", "a changed byte in the bucket", "scheduled check reads nothing")
def test_damage_found_off_site_survives_the_scheduled_check_and_is_repaired(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, fault_result: FaultResult
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    # check_every 1s: every sync checks the bucket, with the default check_read_data 0
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto, check_every="1s")))
    record = cli.json("backup")
    assert record["status"] == "ok"
    objects = _objects(moto)
    key = max(objects, key=lambda k: objects[k])
    _spoil(moto, key)
    found = cli("verify", record["id"], "--offsite", "--read-data", "100")
    assert found.returncode == 1, found.stdout

    synced = cli("offsite", "sync", "--json")
    report = json.loads(synced.stdout)
    assert report["checked"] == 1, "the scheduled check ran, reading nothing back"
    assert report["repaired"] == [record["id"]], (synced.stdout, synced.stderr[-2000:])
    fault_result.lost(archives=0 if _intact(moto, key) else 1)
    assert _intact(moto, key)
    again = cli("verify", record["id"], "--offsite", "--read-data", "100")
    assert again.returncode == 0, again.stdout
