"""encrypt_to: objects and manifests are age files the `age` tool decrypts; names hide the sha256."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from influx_backupd.offsite.errors import OffsiteError
from influx_backupd.offsite.repo import Offsite
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import age_identity, cold_backup, make_tar, make_tree

MiB = 1 << 20


def test_encrypted_backup_is_readable_by_age_and_names_hide_contents(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    identity, recipient = age_identity(tmp_path)
    files = {
        "meta/meta.db": b"meta" * 300,
        "data/db/rp/1/000000001-000000001.tsm": os.urandom(12 * MiB + 5),  # streamed in parts
        "wal/db/rp/1/_00001.wal": os.urandom(70_000),
    }
    archive = make_tar(tmp_path / "nightly-1.tar", make_tree(tmp_path / "t", files))
    backup = cold_backup(archive, "20261130T030000Z-eeee")
    settings = endpoint.settings(encrypt_to=[recipient])
    (tmp_path / "state").mkdir()
    sent = Offsite(settings, key_file=tmp_path / "state" / "name.key").send(backup)
    assert sent.complete
    assert (tmp_path / "state" / "name.key").stat().st_mode & 0o777 == 0o600

    client = endpoint.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=endpoint.bucket)["Contents"]]
    plain = {e.sha256 for e in backup.source.files()}
    assert not [k for k in keys if any(s in k for s in plain)]
    assert [k for k in keys if k.startswith("host-a/keys/") and k.endswith(".age")]
    manifest_key = "host-a/manifests/nightly/20261130T030000Z-eeee.json.gz.age"
    assert manifest_key in keys

    def age_decrypt(key: str) -> bytes:
        raw = client.get_object(Bucket=endpoint.bucket, Key=key)["Body"].read()
        assert b"age-encryption.org/v1" in raw[:40]
        return subprocess.run(
            ["age", "-d", "-i", str(identity)], input=raw, capture_output=True, check=True
        ).stdout

    manifest = json.loads(gzip.decompress(age_decrypt(manifest_key)))
    by_path = {f["path"]: f for f in manifest["files"]}
    big = by_path["data/db/rp/1/000000001-000000001.tsm"]
    obj = f"host-a/objects/{big['object'][:2]}/{big['object']}"
    assert age_decrypt(obj) == files["data/db/rp/1/000000001-000000001.tsm"]

    # a fresh host: no name key, only the bucket, the credentials and the identity
    fresh = endpoint.settings(encrypt_to=[recipient], identity_file=identity)
    out = tmp_path / "restore"
    out.mkdir()
    got = Offsite(fresh).fetch("20261130T030000Z-eeee", out)
    assert got.rebuilt == "bytes" and got.path.read_bytes() == archive.read_bytes()
    # and it finds the same name key, so what is in the bucket is not sent again
    (tmp_path / "fresh").mkdir()
    again = cold_backup(archive, "20261201T030000Z-ffff")
    resent = Offsite(fresh, key_file=tmp_path / "fresh" / "name.key").send(again)
    assert resent.objects_uploaded == 0 and resent.bytes_skipped == sum(map(len, files.values()))
    assert (tmp_path / "fresh" / "name.key").read_bytes() == (
        tmp_path / "state" / "name.key"
    ).read_bytes()

    with pytest.raises(OffsiteError, match="identity_file"):
        Offsite(endpoint.settings(encrypt_to=[recipient])).fetch("20261130T030000Z-eeee", out)
