"""One writer per prefix: a marker below it names the host that writes there, each manifest the
writer that sent it; another host is refused (78) until it takes the prefix over (--adopt), and
retention never judges a manifest another writer sent. Against moto's server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influx_backupd.offsite.errors import PrefixTaken
from influx_backupd.offsite.repo import Offsite
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import cold_backup, make_tar, make_tree

A, B = "a" * 32, "b" * 32


def _backup(tmp_path: Path, bid: str, content: bytes) -> object:
    tree = make_tree(tmp_path / bid, {"data/x.tsm": content, "wal/_1.wal": bid.encode()})
    return cold_backup(make_tar(tmp_path / f"nightly-{bid}.tar", tree), bid)


def _manifests(moto: Endpoint) -> list[str]:
    listed = moto.client().list_objects_v2(Bucket=moto.bucket, Prefix="host-a/manifests/")
    return sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", []))


def test_a_second_writer_is_refused_until_it_adopts_the_prefix(moto: Endpoint) -> None:
    settings = moto.settings()
    Offsite(settings, writer=A).claim(host="db1.dc1")
    Offsite(settings, writer=A).claim(host="db1.dc1")  # its own: again and again
    with pytest.raises(PrefixTaken) as refused:
        Offsite(settings, writer=B).claim(host="db1.dc2")
    said = str(refused.value)
    assert "written by another host" in said and "'db1.dc1'" in said and "--adopt" in said
    Offsite(settings, writer=B).claim(adopt=True, host="db1.dc2")
    with pytest.raises(PrefixTaken):
        Offsite(settings, writer=A).claim()
    marker = moto.client().get_object(Bucket=moto.bucket, Key="host-a/writer.json")
    assert json.loads(marker["Body"].read())["adopted"] == [A]


def test_retention_never_deletes_what_another_writer_sent(moto: Endpoint, tmp_path: Path) -> None:
    """Two hosts that both sent (claims raced): each prunes only its own manifests, and no
    object the other's name is swept."""
    settings = moto.settings(grace=0)
    ours, theirs = Offsite(settings, writer=A), Offsite(settings, writer=B)
    ours.send(_backup(tmp_path, "20260101T000000Z-aaaa", b"1" * 5000))  # type: ignore[arg-type]
    theirs.send(_backup(tmp_path, "20260102T000000Z-bbbb", b"2" * 5000))  # type: ignore[arg-type]

    pruned = ours.prune(set())
    assert pruned.manifests_deleted == ["20260101T000000Z-aaaa"]
    assert _manifests(moto) == ["20260102T000000Z-bbbb.json.gz"]
    assert Offsite(settings).verify("20260102T000000Z-bbbb", read_percent=100).errors == []


def test_manifests_from_before_writer_ids_are_taken_by_the_first_writer(
    moto: Endpoint, tmp_path: Path
) -> None:
    settings = moto.settings(grace=0)
    Offsite(settings).send(_backup(tmp_path, "20260101T000000Z-aaaa", b"1" * 5000))  # type: ignore[arg-type]
    now = Offsite(settings, writer=A)
    now.claim()
    assert now.owns(now.manifest("20260101T000000Z-aaaa"))
    assert now.prune(set()).manifests_deleted == ["20260101T000000Z-aaaa"]


def test_what_the_bucket_serves_is_read_only_as_far_as_it_may_be_long(moto: Endpoint) -> None:
    """The audit's repro: a 600 MiB writer.json (anyone with the bucket's keys can put one)
    took the sync to 1.9 GB RSS on the influxd host before it said "does not read". A marker
    is read no further than SMALL_OBJECT: even our own, padded past it, is refused unread."""
    settings = moto.settings()
    store = Offsite(settings, writer=A)
    store.claim(host="db1.dc1")
    key = "host-a/writer.json"
    client = moto.client()
    ours = client.get_object(Bucket=moto.bucket, Key=key)["Body"].read()
    # still a marker of ours, were it read whole (an unknown field is passed over)
    padded = json.dumps({**json.loads(ours), "pad": "x" * (3 << 20)}).encode()
    client.put_object(Bucket=moto.bucket, Key=key, Body=padded)
    assert len(store.bucket.get_bytes(key, 1000)) == 1001
    with pytest.raises(PrefixTaken):
        Offsite(settings, writer=A).claim(host="db1.dc1")


def test_two_hosts_claiming_a_new_prefix_in_the_same_moment_leave_it_to_one(
    moto: Endpoint,
) -> None:
    """Both found no marker; B wrote its own between A's read and A's write. Before, A wrote
    over it and read its own back, and B had read back its own a moment earlier: both wrote
    and pruned there as its sole writer. Now A's marker is written only if none is there
    (If-None-Match, honoured by AWS S3 and moto): A is refused, naming B's host."""
    settings = moto.settings()
    a = Offsite(settings, writer=A)
    read = a.bucket.get_bytes

    def read_then_b_claims(key: str, limit: int) -> bytes:
        try:
            return read(key, limit)
        finally:
            if key.endswith("writer.json") and not claimed:
                claimed.append(True)
                Offsite(settings, writer=B).claim(host="db1.dc2")

    claimed: list[bool] = []
    a.bucket.get_bytes = read_then_b_claims  # type: ignore[method-assign]
    with pytest.raises(PrefixTaken, match=r"'db1\.dc2'"):
        a.claim(host="db1.dc1")
    marker = moto.client().get_object(Bucket=moto.bucket, Key="host-a/writer.json")
    assert json.loads(marker["Body"].read())["writer"] == B
    Offsite(settings, writer=B).claim(host="db1.dc2")  # still B's


def test_a_prefix_is_claimed_where_the_endpoint_ignores_the_condition(rclone: Endpoint) -> None:
    """rclone's serve s3 takes no If-None-Match: the first marker is written all the same."""
    settings = rclone.settings()
    Offsite(settings, writer=A).claim(host="db1.dc1")
    with pytest.raises(PrefixTaken):
        Offsite(settings, writer=B).claim(host="db1.dc2")
