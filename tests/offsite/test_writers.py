"""One writer per prefix: a marker below it names the host that writes there, each manifest the
writer that sent it; another host is refused (78) until it takes the prefix over (--adopt), and
retention never judges a manifest another writer sent. Against moto's server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite.errors import OffsiteError, PrefixTaken
from influx_backupd.offsite.repo import Offsite
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import cold_backup, make_tar, make_tree, offsite_section

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
    with pytest.raises(OffsiteError) as refused:
        Offsite(settings, writer=A).claim(host="db1.dc1")
    assert not isinstance(refused.value, PrefixTaken)
    assert "does not read as an influx-backupd writer marker" in str(refused.value)
    assert f"more than {1 << 20} bytes" in str(refused.value)


def test_a_page_that_is_no_marker_is_told_as_such_and_never_adopted(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """The audit's repro: a proxy or captive portal's HTML page (200) for writer.json was told
    as "written by another host ... --adopt", and --adopt wrote over that object."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    page = b"<!DOCTYPE html><html><body>Sign in to the guest Wi-Fi</body></html>"
    client = moto.client()
    key = "host-a/writer.json"
    client.put_object(Bucket=moto.bucket, Key=key, Body=page, ContentType="text/html")
    assert cli.json("backup")["status"] == "ok", "the local backup stays ok"
    for argv in (("offsite", "sync"), ("offsite", "sync", "--adopt")):
        done = cli(*argv)
        assert done.returncode == 1, (argv, done.stderr[-2000:])
        line = done.stderr.strip().splitlines()[-1]
        assert "Traceback" not in done.stderr, done.stderr
        assert f"{key} does not read as an influx-backupd writer marker" in line, line
        assert "got text/html" in line and "starting '<!DOCTYPE html>" in line, line
        assert moto.url in line and "--adopt" not in line, line
        assert client.get_object(Bucket=moto.bucket, Key=key)["Body"].read() == page
    assert cli.json("status")["offsite"]["not_offsite"], "nothing sent there"


def test_name_key_tags_and_manifests_that_are_pages_say_what_came(
    moto: Endpoint, tmp_path: Path
) -> None:
    """The other small objects read back: a recipients tag or name key that is a page is an
    error naming it (before: passed over as another's, and a fresh host made a new name key,
    sending every file again); a manifest that is one is passed over saying what came."""
    from tests.offsite.helpers import age_identity

    identity, recipient = age_identity(tmp_path)
    (tmp_path / "state").mkdir()
    settings = moto.settings(encrypt_to=[recipient])
    sent = Offsite(settings, key_file=tmp_path / "state" / "name.key").send(
        _backup(tmp_path, "20260101T000000Z-aaaa", b"1" * 5000)  # type: ignore[arg-type]
    )
    assert sent.complete
    client = moto.client()
    listed = client.list_objects_v2(Bucket=moto.bucket, Prefix="host-a/keys/")["Contents"]
    page = b"<html><body>Please log in</body></html>"
    fresh = moto.settings(encrypt_to=[recipient], identity_file=identity)
    for suffix, what in ((".recipients", "a recipients tag"), (".age", "an age-encrypted")):
        [key] = [o["Key"] for o in listed if o["Key"].endswith(suffix)]
        kept = client.get_object(Bucket=moto.bucket, Key=key)["Body"].read()
        client.put_object(Bucket=moto.bucket, Key=key, Body=page, ContentType="text/html")
        state = tmp_path / f"fresh{suffix}"
        state.mkdir()
        with pytest.raises(OffsiteError) as refused:
            Offsite(fresh, key_file=state / "name.key").send(
                _backup(tmp_path, "20260102T000000Z-bbbb", b"2" * 5000)  # type: ignore[arg-type]
            )
        said = str(refused.value)
        assert f"{key} does not read as {what}" in said and "got text/html" in said, said
        assert not (state / "name.key").exists(), "no new name key made"
        client.put_object(Bucket=moto.bucket, Key=key, Body=kept)

    planted = "host-a/manifests/nightly/20200101T000000Z-0001.json.gz"
    client.put_object(Bucket=moto.bucket, Key=planted, Body=page, ContentType="text/html")
    store = Offsite(fresh)
    skipped: dict[str, str] = {}
    found = list(store.readable(store.manifests(), skipped))
    assert [m.id for _, m in found] == ["20260101T000000Z-aaaa"]
    assert "got text/html" in skipped[planted], skipped


def test_two_hosts_claiming_a_new_prefix_in_the_same_moment_leave_it_to_one(
    moto: Endpoint,
) -> None:
    """Both found no marker; B wrote its own between A's read and A's write. Before, A wrote
    over it and read its own back, and B had read back its own a moment earlier: both wrote
    and pruned there as its sole writer. Now A's marker is written only if none is there
    (If-None-Match, honoured by AWS S3 and moto): A is refused, naming B's host."""
    settings = moto.settings()
    a = Offsite(settings, writer=A)
    read = a.bucket.get_typed

    def read_then_b_claims(key: str, limit: int) -> tuple[bytes, str]:
        try:
            return read(key, limit)
        finally:
            if key.endswith("writer.json") and not claimed:
                claimed.append(True)
                Offsite(settings, writer=B).claim(host="db1.dc2")

    claimed: list[bool] = []
    a.bucket.get_typed = read_then_b_claims  # type: ignore[method-assign]
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


def test_a_claim_whose_answer_was_lost_is_ours_not_another_hosts(moto: Endpoint) -> None:
    """The first marker is stored, its answer lost (a 500, a reset), and the retry gets 412:
    the marker there is this writer's own. Before: "written by another host … (writer X), not
    by this host (writer X)", advice to --adopt, and no send until the next sync."""
    settings = moto.settings()
    a = Offsite(settings, writer=A)
    put = a.bucket.put_bytes
    lost: list[str] = []

    def stored_but_answer_lost(key: str, body: bytes, **kw: Any) -> None:
        if kw.get("if_absent") and key.endswith("writer.json") and not lost:
            lost.append(key)
            put(key, body, **kw)  # stored; what the client sees is its retry, refused (412)
        put(key, body, **kw)

    a.bucket.put_bytes = stored_but_answer_lost  # type: ignore[method-assign]
    a.claim(host="db1.dc1")
    assert lost, "the conditional put was made"
    marker = moto.client().get_object(Bucket=moto.bucket, Key="host-a/writer.json")
    assert json.loads(marker["Body"].read())["writer"] == A
    with pytest.raises(PrefixTaken, match=r"'db1\.dc1'"):
        Offsite(settings, writer=B).claim(host="db1.dc2")


M1, M2 = "1" * 32, "2" * 32  # two machines' fingerprints (run.offsite.machine_fingerprint)


def _marker(moto: Endpoint) -> dict[str, Any]:
    body = moto.client().get_object(Bucket=moto.bucket, Key="host-a/writer.json")["Body"]
    found: dict[str, Any] = json.loads(body.read())
    return found


def test_a_copy_of_the_state_dir_on_another_machine_is_refused_until_it_adopts(
    moto: Endpoint,
) -> None:
    """A cloned VM (or a restored disk image) carries the first host's writer id: both would
    write one prefix as one writer, each pruning the other's backups as its own. The marker
    names the machine too: the same writer id from another machine is refused, with how to
    part them; --adopt is for a machine that replaces the first for good."""
    settings = moto.settings()
    Offsite(settings, writer=A).claim(host="db1", machine=M1)
    Offsite(settings, writer=A).claim(host="db1", machine=M1)  # its own: again and again
    with pytest.raises(PrefixTaken) as refused:
        Offsite(settings, writer=A).claim(host="db1", machine=M2)
    said = str(refused.value)
    assert "from another machine" in said and "copied" in said, said
    assert "offsite-writer.id" in said and "--adopt" in said, said
    assert _marker(moto)["machine"] == M1, "the first host's marker is left as it was"
    Offsite(settings, writer=A).claim(adopt=True, host="db1-new", machine=M2)
    assert _marker(moto)["machine"] == M2
    with pytest.raises(PrefixTaken, match="from another machine"):
        Offsite(settings, writer=A).claim(host="db1", machine=M1)


def test_a_marker_from_before_machines_takes_the_first_machine_that_claims_it(
    moto: Endpoint,
) -> None:
    settings = moto.settings()
    Offsite(settings, writer=A).claim(host="db1")  # no fingerprint: none is checked
    assert "machine" not in _marker(moto)
    Offsite(settings, writer=A).claim(host="db1", machine=M1)
    assert _marker(moto)["machine"] == M1 and _marker(moto)["writer"] == A
    with pytest.raises(PrefixTaken, match="from another machine"):
        Offsite(settings, writer=A).claim(host="db1", machine=M2)
    Offsite(settings, writer=A).claim(host="db1")  # a machine that has none is not refused


def _on_another_machine(
    config: Path, machine_id: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """The CLI as on a clone of this machine: its own /etc/machine-id (bind-mounted in a mount
    namespace of its own), the same state dir."""
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$0" /etc/machine-id && exec "$@"',
            str(machine_id),
            sys.executable,
            "-m",
            "influx_backupd",
            "--config",
            str(config),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_a_cloned_vm_syncing_with_the_first_hosts_state_dir_is_refused(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    config = write_config(tmp_path, sandbox, extra=offsite_section(moto))
    cli = Cli(config)
    assert cli.json("backup")["status"] == "ok"
    first = cli("offsite", "sync")
    assert first.returncode == 0, first.stderr[-2000:]
    named = _marker(moto)["machine"]
    assert len(named) == 32 and named not in Path("/etc/machine-id").read_text(), named
    clone_id = tmp_path / "machine-id"
    clone_id.write_text("0123456789abcdef0123456789abcdef\n")

    clone = _on_another_machine(config, clone_id, "offsite", "sync")
    assert clone.returncode == 78, clone.stderr[-2000:]
    line = clone.stderr.strip().splitlines()[-1]
    assert "Traceback" not in clone.stderr, clone.stderr[-3000:]
    assert "own writer id" in line and "from another machine" in line, line
    assert _marker(moto)["machine"] == named, "the first host keeps its prefix"
    assert cli("offsite", "sync").returncode == 0, "and goes on syncing"

    # the first machine is gone for good: this one replaces it
    taken = _on_another_machine(config, clone_id, "offsite", "sync", "--adopt")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert _marker(moto)["machine"] not in (named, "")
    again = cli("offsite", "sync")
    assert again.returncode == 78 and "from another machine" in again.stderr, again.stderr[-2000:]
