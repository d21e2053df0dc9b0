"""[offsite] prefix: the error says the rule the check enforces; a segment named like the
layout below a prefix is refused (one host's copies inside another's); and the sweep and the
abort of old uploads touch only keys of our own object form."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite.repo import Offsite
from influx_backupd.offsite.settings import OffsiteSettings
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import cold_backup, make_tar, make_tree


def _error(prefix: str) -> str:
    with pytest.raises(ValidationError) as caught:
        OffsiteSettings(bucket="some-bucket", prefix=prefix)
    [error] = caught.value.errors()
    return str(error["msg"])


@pytest.mark.parametrize("prefix", [".hidden", "a/.b", "-x", "a//b", "/a", "a/", "a b"])
def test_a_prefix_out_of_form_is_refused_saying_the_rule(prefix: str) -> None:
    said = _error(prefix)
    assert "each starting with a letter or digit" in said and repr(prefix) in said, said


@pytest.mark.parametrize(
    "prefix", ["objects", "db1/objects", "db1/manifests", "a/keys/b", "db1/writer.json"]
)
def test_a_prefix_with_a_segment_of_the_layout_is_refused(prefix: str) -> None:
    layout = ("objects", "manifests", "keys", "writer.json")
    taken = next(p for p in prefix.split("/") if p in layout)
    said = _error(prefix)
    assert f"segment named {taken!r}" in said, said


@pytest.mark.parametrize("prefix", ["db1", "db1.dc2.example", "fleet/db_1", "a.b/c-d/e"])
def test_prefixes_in_form_are_taken(prefix: str) -> None:
    assert OffsiteSettings(bucket="some-bucket", prefix=prefix).prefix == prefix


def test_check_config_refuses_such_a_prefix_in_one_line(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        extra='\n[offsite]\nbucket = "some-bucket"\nprefix = "db1/objects"\n',
    )
    done = Cli(config)("check-config")
    assert done.returncode == 78, done.stderr
    assert "offsite.prefix" in done.stderr and "Traceback" not in done.stderr
    assert "'objects'" in done.stderr.strip().splitlines()[-1]


def test_the_sweep_and_the_upload_abort_leave_keys_not_of_our_object_form(
    moto: Endpoint, tmp_path: Path
) -> None:
    """Keys below our objects/ of another form (a host whose prefix lay inside ours, another
    tool's) were deleted by the sweep; uploads anywhere below the prefix were aborted."""
    client = moto.client()
    name = hashlib.sha256(b"theirs").hexdigest()
    theirs = [
        f"host-a/objects/objects/{name[:2]}/{name}",  # a host with prefix host-a/objects
        f"host-a/objects/{name[:2]}/{name}.part",
        "host-a/objects/ab/notes.txt",
    ]
    for key in theirs:
        client.put_object(Bucket=moto.bucket, Key=key, Body=b"theirs")
    upload = client.create_multipart_upload(
        Bucket=moto.bucket, Key=f"host-a/fleet/objects/{name[:2]}/{name}"
    )["UploadId"]
    stray = hashlib.sha256(b"stray").hexdigest()  # ours, named by no manifest: swept
    client.put_object(Bucket=moto.bucket, Key=f"host-a/objects/{stray[:2]}/{stray}", Body=b"s")
    tree = make_tree(tmp_path / "t", {"data/a": b"a" * 1000})
    store = Offsite(moto.settings(grace=0))
    store.send(cold_backup(make_tar(tmp_path / "one.tar", tree), "20260101T000000Z-aaaa"))

    pruned = store.prune({"20260101T000000Z-aaaa"})
    assert pruned.objects_deleted == 1 and pruned.uploads_aborted == 0
    listed = client.list_objects_v2(Bucket=moto.bucket, Prefix="host-a/")
    keys = {o["Key"] for o in listed["Contents"]}
    assert set(theirs) <= keys and f"host-a/objects/{stray[:2]}/{stray}" not in keys
    uploads = client.list_multipart_uploads(Bucket=moto.bucket).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [upload]
