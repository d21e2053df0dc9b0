"""list --offsite reads each manifest from the bucket once: later listings take them from the
manifest cache in state_dir, keyed by key, ETag and size; what left the bucket leaves the list."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite.repo import Offsite
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import cold_backup, make_tar, make_tree, offsite_section
from tests.offsite.test_faults import _Throttling


@pytest.fixture
def proxy(moto: Endpoint) -> Iterator[_Throttling]:
    counting = _Throttling(moto.url, fail=0)
    yield counting
    counting.server.shutdown()


def _manifest_gets(proxy: _Throttling) -> list[str]:
    return [p for m, p, _, _ in proxy.seen if m == "GET" and "/manifests/" in p]


def test_a_second_listing_reads_no_manifest_and_a_deleted_one_leaves_the_list(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, proxy: _Throttling
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    ep = Endpoint(moto.kind, proxy.url, moto.bucket, moto.credentials)
    config = write_config(tmp_path, sandbox, extra=offsite_section(ep))
    cli = Cli(config)
    ids = [cli.json("backup")["id"] for _ in range(2)]
    proxy.seen.clear()
    assert [r["id"] for r in cli.json("list", "--offsite")] == ids
    assert len(_manifest_gets(proxy)) <= 2  # the send may have left them in the cache already
    proxy.seen.clear()
    listed = cli.json("list", "--offsite")
    assert [r["id"] for r in listed] == ids
    assert _manifest_gets(proxy) == []  # listed (one LIST request), none read again
    assert [m for m, *_ in proxy.seen] == ["GET"]  # that LIST
    cache = tmp_path / "state" / "offsite-manifests"
    assert len(os.listdir(cache)) == 2
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in cache.iterdir())
    assert cache.stat().st_mode & 0o777 == 0o700

    # a manifest deleted from the bucket (pruned by another host's mistake, or by hand)
    key = f"host-a/manifests/nightly/{ids[0]}.json.gz"
    moto.client().delete_object(Bucket=moto.bucket, Key=key)
    assert [r["id"] for r in cli.json("list", "--offsite")] == ids[1:]
    assert len(os.listdir(cache)) == 1


def test_a_manifest_written_again_or_damaged_in_the_cache_is_read_again(
    moto: Endpoint, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    archive = make_tar(tmp_path / "a.tar", make_tree(tmp_path / "t", {"data/1.tsm": b"x" * 999}))
    backup = cold_backup(archive, "20261130T010000Z-0001")
    Offsite(moto.settings()).send(backup)
    cache = tmp_path / "cache"
    gets: list[str] = []

    def count(params: dict[str, str], **_: object) -> None:
        gets.append(params["url_path"])

    def counted() -> Offsite:
        offsite = Offsite(moto.settings(), cache_dir=cache)
        # the client is the process's (offsite/bucket.py Clients): counted once, not once per
        # Offsite, and no longer once this test is done
        events, once = offsite.bucket.client.meta.events, "test-count-gets"
        events.register("before-call.s3.GetObject", count, unique_id=once)
        request.addfinalizer(lambda: events.unregister("before-call.s3.GetObject", unique_id=once))
        return offsite

    assert counted().manifest(backup.id).id == backup.id
    assert counted().manifest(backup.id).id == backup.id
    assert len(gets) == 1
    # damaged in the cache: gzip's CRC fails, it is read from the bucket again
    (only,) = cache.iterdir()
    only.write_bytes(only.read_bytes()[:-9] + b"\0" * 9)
    assert counted().manifest(backup.id).id == backup.id
    assert len(gets) == 2
    # written again under its key (another ETag): not the cached one
    key = f"host-a/manifests/nightly/{backup.id}.json.gz"
    old = moto.client().get_object(Bucket=moto.bucket, Key=key)["Body"].read()
    doc = json.loads(gzip.decompress(old))
    doc["sent_at"] = 12345.0  # a field no check ties to the record (kind is: see manifest_problem)
    moto.client().put_object(
        Bucket=moto.bucket, Key=key, Body=gzip.compress(json.dumps(doc).encode())
    )
    assert counted().manifest(backup.id).sent_at == 12345.0
    assert len(gets) == 3
    # a restore reads the bucket, whatever the cache holds
    assert counted().manifest(backup.id, fresh=True).sent_at == 12345.0
    assert len(gets) == 4
