"""encrypt_to: a large file goes as independently encrypted chunks, each its own object, so an
upload killed midway resumes chunk by chunk; what the earlier format wrote stays readable."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from influx_backupd.offsite.repo import Offsite
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import (
    age_identity,
    cold_backup,
    make_tar,
    make_tree,
    send_in_child,
    sha256,
)

MiB = 1 << 20


def _objects(endpoint: Endpoint) -> dict[str, str]:
    """key → ETag of every object below host-a/objects/."""
    client = endpoint.client()
    found: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=endpoint.bucket, Prefix="host-a/objects/"
    ):
        found.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return found


def test_an_encrypted_upload_killed_midway_sends_only_the_missing_chunks(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    identity, recipient = age_identity(tmp_path)
    big = os.urandom(30 * MiB + 123)  # 7 chunks of 5 MiB (the last one short)
    files = {"meta/meta.db": b"meta" * 300, "data/db/rp/1/000000001-000000001.tsm": big}
    archive = make_tar(tmp_path / "nightly-big.tar", make_tree(tmp_path / "t", files))
    before = sha256(archive)
    bid = "20261130T040000Z-kill"
    key_file = tmp_path / "name.key"
    common = {"encrypt_to": [recipient], "chunk_size": "5MiB"}
    slow = endpoint.settings(max_rate=4 * MiB, concurrency=1, **common)
    child = send_in_child(slow, archive, bid, key_file)
    there: dict[str, str] = {}
    deadline = time.monotonic() + 120
    try:
        # the small object and at least two chunks in the bucket, the rest still to come
        while len(there) < 3 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
            there = _objects(endpoint)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    there = _objects(endpoint)
    assert 3 <= len(there) < 8, child.stderr.read() if child.stderr else ""
    chunks_there = len(there) - 1

    offsite = Offsite(endpoint.settings(**common), key_file=key_file)
    assert offsite.manifests() == []  # a killed send claims nothing
    sent = offsite.send(cold_backup(archive, bid))
    assert sent.complete
    # only the missing chunks travelled: the bytes (ciphertext: + ~0.03 %), and what the store
    # holds of the chunks sent before the kill is the very same ciphertext (age's is random:
    # a chunk sent again would have another ETag)
    missing = len(big) - chunks_there * 5 * MiB
    assert sent.bytes_uploaded <= missing * 1.001 + 64 * 1024  # and the manifest
    assert sent.objects_uploaded == 7 - chunks_there
    assert sent.objects_skipped == chunks_there + 1
    after = _objects(endpoint)
    assert {k: after[k] for k in there} == there and len(after) == 8
    assert not offsite.bucket.uploads()

    # the names show no plaintext sha256
    hashes = {hashlib.sha256(big).hexdigest()} | {
        hashlib.sha256(big[i : i + 5 * MiB]).hexdigest() for i in range(0, len(big), 5 * MiB)
    }
    assert not [k for k in after if any(h in k for h in hashes)]

    # a fresh host with the identity restores it, every hash checked, also after a sweep of
    # everything no manifest names (the chunks are named)
    reader = Offsite(endpoint.settings(identity_file=identity, **common))
    pruned = reader.prune({bid}, now=time.time() + 10 * 86400)
    assert pruned.objects_deleted == 0
    out = tmp_path / "out"
    out.mkdir()
    got = reader.fetch(bid, out)
    assert got.rebuilt == "bytes" and got.path.read_bytes() == archive.read_bytes()
    assert reader.verify(bid, read_percent=100).errors == []
    assert sha256(archive) == before

    # by hand, with the age tool: the manifest lists the chunks; decrypted in order and
    # concatenated they are the file (docs/offsite.md shows the shell loop)
    client = endpoint.client()

    def age_decrypt(key: str) -> bytes:
        raw = client.get_object(Bucket=endpoint.bucket, Key=key)["Body"].read()
        return subprocess.run(
            ["age", "-d", "-i", str(identity)], input=raw, capture_output=True, check=True
        ).stdout

    manifest = json.loads(
        gzip.decompress(age_decrypt(f"host-a/manifests/nightly/{bid}.json.gz.age"))
    )
    assert manifest["format"] == 2
    (tsm,) = [f for f in manifest["files"] if f["path"].endswith(".tsm")]
    assert tsm["object"] == "" and len(tsm["chunks"]) == 7 and tsm["chunk_size"] == 5 * MiB
    joined = b"".join(age_decrypt(f"host-a/objects/{n[:2]}/{n}") for n in tsm["chunks"])
    assert joined == big


def test_what_the_earlier_format_wrote_stays_readable_and_is_not_sent_again(
    moto: Endpoint, tmp_path: Path
) -> None:
    identity, recipient = age_identity(tmp_path)
    big = os.urandom(12 * MiB + 5)
    archive = make_tar(tmp_path / "n1.tar", make_tree(tmp_path / "t", {"data/1.tsm": big}))
    key_file = tmp_path / "name.key"
    # as every version before chunks wrote it: one age file for the whole file, format 1
    whole = moto.settings(encrypt_to=[recipient], chunk_size="64MiB")
    assert Offsite(whole, key_file=key_file).send(cold_backup(archive, "20261130T010000Z-old"))
    client = moto.client()
    raw = client.get_object(
        Bucket=moto.bucket, Key="host-a/manifests/nightly/20261130T010000Z-old.json.gz.age"
    )["Body"].read()
    old = json.loads(
        gzip.decompress(
            subprocess.run(
                ["age", "-d", "-i", str(identity)], input=raw, capture_output=True, check=True
            ).stdout
        )
    )
    assert old["format"] == 1 and all("chunks" not in f for f in old["files"])

    chunked = moto.settings(encrypt_to=[recipient], chunk_size="5MiB")
    again = Offsite(chunked, key_file=key_file).send(cold_backup(archive, "20261201T010000Z-new"))
    assert again.complete and again.objects_uploaded == 0 and again.bytes_skipped == len(big)
    reader = Offsite(moto.settings(identity_file=identity, chunk_size="5MiB"))
    for bid in ("20261130T010000Z-old", "20261201T010000Z-new"):
        out = tmp_path / bid
        out.mkdir()
        assert reader.fetch(bid, out).path.read_bytes() == archive.read_bytes()
