"""Manifests in the bucket that this tool did not write as they are: damaged, planted by whoever
holds the bucket's credentials (the README says they can), or out of shape. None of them may
move, replace or delete a file on the host, stop the other backups from being listed, imported
or pruned, or end in a traceback."""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite.errors import BadManifest
from influx_backupd.offsite.manifest import MAX_TEXT
from influx_backupd.offsite.repo import Offsite
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import cold_backup, make_tar, make_tree, offsite_section

GOOD_ID = "20261130T030000Z-aaaa"
FORGED_ID = "20261201T030000Z-ffff"


def manifest_key(prefix: str, job: str, backup_id: str) -> str:
    return f"{prefix}/manifests/{job}/{backup_id}.json.gz"


def plant(
    endpoint: Endpoint,
    prefix: str,
    change: Callable[[dict[str, Any]], None],
    *,
    source_id: str = GOOD_ID,
    new_id: str = FORGED_ID,
    job: str = "nightly",
) -> str:
    """A copy of a real manifest, changed by change() (after its id was made new_id), stored
    under new_id's key, as someone with the bucket's credentials could."""
    client = endpoint.client()
    body = client.get_object(Bucket=endpoint.bucket, Key=manifest_key(prefix, job, source_id))
    raw = json.loads(gzip.decompress(body["Body"].read()))
    raw["name"] = raw["name"].replace(raw["id"], new_id)  # as the tool names new_id's
    raw["id"] = raw["record"]["id"] = new_id
    change(raw)
    key = manifest_key(prefix, job, new_id)
    client.put_object(Bucket=endpoint.bucket, Key=key, Body=gzip.compress(json.dumps(raw).encode()))
    return key


@pytest.fixture
def sent(moto: Endpoint, tmp_path: Path) -> Offsite:
    """One real cold backup in the bucket (prefix "test")."""
    files = {"meta/meta.db": b"m" * 500, "data/db/rp/1/1.tsm": os.urandom(50_000)}
    archive = make_tar(tmp_path / "nightly-1.tar", make_tree(tmp_path / "t", files))
    offsite = Offsite(moto.settings(prefix="test"))
    assert offsite.send(cold_backup(archive, GOOD_ID)).complete
    return offsite


def set_name(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw.__setitem__("name", name)


@pytest.mark.parametrize(
    "name",
    ["../victim/pwned.tar", "/tmp/abs.tar", "", "..", ".", "a/b.tar", "x\0y", ".verify-x", "\n"],
)
def test_a_name_that_is_no_plain_file_name_is_refused_before_anything_is_written(
    moto: Endpoint, sent: Offsite, tmp_path: Path, name: str
) -> None:
    victim = tmp_path / "victim" / "pwned.tar"
    victim.parent.mkdir()
    victim.write_text("mine")
    plant(moto, "test", set_name(name))
    storage = tmp_path / "storage"
    storage.mkdir()
    with pytest.raises(BadManifest, match=r"name .* is no file name in the storage dir") as caught:
        sent.fetch(FORGED_ID, storage)
    assert "\n" not in str(caught.value)
    assert list(storage.iterdir()) == []
    assert victim.read_text() == "mine" and sorted(os.listdir(victim.parent)) == ["pwned.tar"]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda r: r.__setitem__("size", "12"), "size is '12', not int"),
        (lambda r: r.__setitem__("size", -1), "size -1 is no byte count"),
        (lambda r: r.__setitem__("record", "x"), "record is 'x', not dict"),
        (lambda r: r.__setitem__("record", {}), "record: id is missing"),
        (lambda r: r["record"].__setitem__("started_at", "soon"), "record: started_at is"),
        (lambda r: r.__setitem__("name", ["a"]), "name is ['a'], not str"),
        (lambda r: r.__setitem__("id", None), "id is None, not str"),
        (lambda r: r.__setitem__("kind", "weird"), "kind 'weird' is not one of"),
        (lambda r: r.__setitem__("files", {}), "files is not a list"),
        (lambda r: r["files"][0].__setitem__("lead", "%%%"), "files[0]: lead is not base64"),
        (lambda r: r["files"][-1].__setitem__("object", "../x"), "object is no object name"),
        (lambda r: r["files"][-1].__setitem__("path", "../../etc/x"), "not a relative path"),
        (lambda r: r["files"][-1].__setitem__("path", "/etc/x"), "not a relative path"),
        (lambda r: r["files"][-1].__setitem__("mode", 1 << 20), "is no permission mode"),
        (lambda r: r["files"][-1].__setitem__("mtime", float("nan")), "mtime is nan"),
        (lambda r: r.__setitem__("format", 99), "format 99 is unknown"),
        (lambda r: r.__setitem__("surprise", 1), "unknown field 'surprise'"),
        (lambda r: r["record"].__setitem__("id", GOOD_ID), "its record is of backup"),
    ],
)
def test_a_field_out_of_shape_is_one_line_not_a_traceback(
    moto: Endpoint,
    sent: Offsite,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    said: str,
) -> None:
    plant(moto, "test", change)
    with pytest.raises(BadManifest) as caught:
        sent.fetch(FORGED_ID, tmp_path)
    line = str(caught.value)
    assert said in line and "\n" not in line, line
    assert line.startswith(manifest_key("test", "nightly", FORGED_ID))


def test_a_manifest_stored_under_another_backups_key_is_refused(
    moto: Endpoint, sent: Offsite, tmp_path: Path
) -> None:
    """Copied as it is under a new key: it would stand in for the backup whose key it took."""
    client = moto.client()
    body = client.get_object(Bucket=moto.bucket, Key=manifest_key("test", "nightly", GOOD_ID))
    client.put_object(
        Bucket=moto.bucket, Key=manifest_key("test", "nightly", FORGED_ID), Body=body["Body"].read()
    )
    with pytest.raises(BadManifest, match=f"holds backup {GOOD_ID} of job nightly, not the one"):
        sent.manifest(FORGED_ID)


def test_a_gzip_bomb_is_not_unpacked_past_the_limit(
    moto: Endpoint, sent: Offsite, tmp_path: Path
) -> None:
    bomb = gzip.compress(b" " * (MAX_TEXT + (8 << 20)), compresslevel=9)
    assert len(bomb) < (1 << 20)
    moto.client().put_object(
        Bucket=moto.bucket, Key=manifest_key("test", "nightly", FORGED_ID), Body=bomb
    )
    started = time.monotonic()
    with pytest.raises(BadManifest, match="more than 64 MiB unpacked"):
        sent.manifest(FORGED_ID)
    assert time.monotonic() - started < 30


def test_a_bad_manifest_is_passed_over_by_listing_and_pruning_keeps_every_object(
    moto: Endpoint, sent: Offsite
) -> None:
    client = moto.client()
    client.put_object(
        Bucket=moto.bucket, Key=manifest_key("test", "nightly", FORGED_ID), Body=b"not gzip"
    )
    skipped: dict[str, str] = {}
    found = [m.id for _, m in sent.readable(sent.manifests(), skipped)]
    assert found == [GOOD_ID]
    assert list(skipped) == [manifest_key("test", "nightly", FORGED_ID)]
    # keep nothing: the good backup's manifest goes; the unreadable one stays, and no object
    # is swept (which ones it names cannot be known)
    before = {o["Key"] for o in client.list_objects_v2(Bucket=moto.bucket)["Contents"]}
    result = sent.prune(set(), now=time.time() + 10**6)
    after = {o["Key"] for o in client.list_objects_v2(Bucket=moto.bucket)["Contents"]}
    assert result.manifests_deleted == [GOOD_ID]
    assert before - after == {manifest_key("test", "nightly", GOOD_ID)}
    assert result.objects_deleted == 0 and list(result.unreadable) == list(skipped)


def test_a_planted_manifest_naming_a_file_in_the_storage_dir_is_not_imported(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """A manifest names where its backup lies in the storage dir. Naming another backup's
    archive, imported and pruned, it took that archive with it (before an earlier fix); naming
    a user's file there, prune removed that file as the backup's archive (exit 0). Only the
    name the tool gives that backup is taken: import passes over the others and says so."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    jobs = [{"name": "nightly", "mode": "cold", "copy": "direct", "keep_last": 1}]
    config = write_config(tmp_path, sandbox, jobs=jobs, extra=offsite_section(moto))
    cli = Cli(config)
    mine = cli.json("backup")
    archive = Path(mine["archive"])
    users = archive.parent / "keepme"
    users.write_text("the user's own file")

    def old_and_named(name: str) -> Callable[[dict[str, Any]], None]:
        def change(raw: dict[str, Any]) -> None:
            raw["name"] = name
            raw["record"]["started_at"] = raw["record"]["finished_at"] = 1.577e9

        return change

    planted = {"20200101T000000Z-0001": archive.name, "20200101T000000Z-0003": users.name}
    for forged, name in planted.items():
        plant(moto, "host-a", old_and_named(name), source_id=mine["id"], new_id=forged)
    moto.client().put_object(
        Bucket=moto.bucket,
        Key=manifest_key("host-a", "nightly", "20200101T000000Z-0002"),
        Body=base64.b64decode("H4sIAAAAAAAA/w=="),  # a gzip cut short
    )
    imported = cli("import", "--offsite", "--json")
    assert imported.returncode == 1, imported.stderr
    assert json.loads(imported.stdout)["imported"] == []
    assert "cut short" in imported.stderr
    for forged, name in planted.items():
        assert f"name {name!r} is not 'nightly-{forged}.tar'" in imported.stderr
    assert imported.stderr.splitlines()[-1].startswith("influx-backupd: offsite: passed over 3")
    assert [r["id"] for r in cli.json("list")] == [mine["id"]]
    done = cli("prune")
    assert done.returncode == 0, done.stderr
    assert archive.is_file(), "the kept backup's archive is still there"
    assert users.read_text() == "the user's own file"
    assert cli("verify", mine["id"]).returncode == 0


def test_a_lie_in_the_last_manifest_does_not_spread_and_verify_finds_it(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before, the next backup took the files it shared with the last one from that backup's
    manifest in the bucket, lie included, and verify passed it (it downloads one file per
    object). What a backup holds is now known from this host's own last send."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    (sandbox.data / "junk.bin").write_bytes(os.urandom(40_000))
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    first = cli.json("backup")["id"]

    def lie(raw: dict[str, Any]) -> None:
        by_path = {f["path"]: f for f in raw["files"]}
        junk, meta = by_path["data/junk.bin"], by_path["meta/meta.db"]
        junk["sha256"], junk["object"] = meta["sha256"], meta["object"]

    plant(moto, "host-a", lie, source_id=first, new_id=first)
    checked = cli("verify", first, "--offsite", "--json")
    assert checked.returncode == 1
    assert "name the same object" in json.loads(checked.stdout)["errors"][0]
    second = cli.json("backup")["id"]
    manifest = Offsite(moto.settings()).manifest(second)
    junk = next(f for f in manifest.files if f.path == "data/junk.bin")
    assert junk.sha256 != next(f for f in manifest.files if f.path == "meta/meta.db").sha256
    assert cli("verify", second, "--offsite", "--read-data", "100").returncode == 0


def test_a_manifest_naming_another_backups_archive_does_not_move_it_aside(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    mine = cli.json("backup")
    archive = Path(mine["archive"])
    before = archive.read_bytes()
    # another content under that name: before, the archive was moved aside for it; and a
    # user's file and its .json beside: moved aside as "damaged" and written over
    users = archive.parent / "keepme"
    users.write_text("notes")
    users.with_name("keepme.json").write_text('{"mine": "precious"}')
    for name, forged in ((archive.name, FORGED_ID), ("keepme", "20261201T040000Z-eeee")):

        def named(raw: dict[str, Any], name: str = name) -> None:
            raw["sha256"], raw["name"] = "0" * 64, name

        plant(moto, "host-a", named, source_id=mine["id"], new_id=forged)
        done = cli("restore", forged, "--from", "offsite", "--target", str(tmp_path / "look"))
        assert done.returncode == 1, done.stderr
        assert f"name {name!r} is not 'nightly-{forged}.tar'" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    assert archive.read_bytes() == before
    assert users.read_text() == "notes"
    assert users.with_name("keepme.json").read_text() == '{"mine": "precious"}'
    assert not list(archive.parent.glob("*.damaged-*"))
    assert not (tmp_path / "look").exists()


def test_modes_from_a_manifest_are_capped_at_influxds_own(
    moto: Endpoint, sent: Offsite, tmp_path: Path
) -> None:
    """Set-id, group- and other-writable modes in a planted manifest: the fetched tree is no
    wider than influxd makes its dirs (0755) and files (0644)."""

    def wide(raw: dict[str, Any]) -> None:
        for f in raw["files"]:
            f["mode"] = 0o6777

    plant(moto, "test", wide)
    out = tmp_path / "out"
    out.mkdir()
    got = sent.fetch(FORGED_ID, out, tree=True)
    modes = {
        str(p.relative_to(got.path)): p.lstat().st_mode & 0o7777
        for p in got.path.rglob("*")
        if not p.is_symlink()
    }
    assert modes and {m for m in modes.values() if m & 0o7022} == set(), modes
    assert modes["meta/meta.db"] == 0o644 and modes["data/db"] == 0o755


def test_a_manifest_key_under_another_job_does_not_count_as_this_backup_sent(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """The sync took a backup as off-site when any job's manifests named its id: one under
    another job's key (a job renamed on another host sharing the prefix, or planted) had the
    backup recorded as sent, never sent, and no longer held back by retention."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    local = Cli(write_config(tmp_path, sandbox))
    mine = local.json("backup")["id"]
    moto.client().put_object(
        Bucket=moto.bucket,
        Key=manifest_key("host-a", "other", mine),
        Body=gzip.compress(b"{}"),
    )
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    synced = cli.json("offsite", "sync")
    assert [s["id"] for s in synced["sent"]] == [mine], synced
    assert moto.client().head_object(
        Bucket=moto.bucket, Key=manifest_key("host-a", "nightly", mine)
    )
