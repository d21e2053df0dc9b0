"""encrypt_to: objects and manifests are age files the `age` tool decrypts; names hide the sha256."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite.errors import OffsiteError
from influx_backupd.offsite.repo import Offsite
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import age_identity, cold_backup, make_tar, make_tree, offsite_section

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


def test_a_host_holding_only_the_recipient_sends_every_backup(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """The README's advice: the identity elsewhere. Before, the second sync read the last
    manifest back (to skip hashing what it held), needed the identity, and nothing more went."""
    identity, recipient = age_identity(tmp_path)
    sandbox.create_db("metrics")
    section = offsite_section(moto, encrypt_to=[recipient])
    cli = Cli(write_config(tmp_path, sandbox, extra=section))
    ids = []
    for night in range(3):
        sandbox.write_points("metrics", 300, start=night * 10_000)
        ids.append(cli.json("backup")["id"])
    assert cli.json("status")["offsite"]["not_offsite"] == []
    elsewhere = Offsite(moto.settings(encrypt_to=[recipient], identity_file=identity))
    # (two backups in one second: ids order by their random tail there, not by time)
    assert sorted(r.id for r in elsewhere.manifests()) == sorted(ids)


def test_a_changed_encrypted_object_is_named_and_the_others_are_still_checked(
    tmp_path: Path, moto: Endpoint
) -> None:
    identity, recipient = age_identity(tmp_path)
    files = {"meta/meta.db": b"m" * 3000, "data/1.tsm": os.urandom(200_000)}
    archive = make_tar(tmp_path / "nightly-1.tar", make_tree(tmp_path / "t", files))
    settings = moto.settings(encrypt_to=[recipient], identity_file=identity)
    (tmp_path / "state").mkdir()
    offsite = Offsite(settings, key_file=tmp_path / "state" / "name.key")
    offsite.send(cold_backup(archive, "20261130T030000Z-dddd"))
    manifest = offsite.manifest("20261130T030000Z-dddd")
    tsm = next(f for f in manifest.files if f.path == "data/1.tsm")
    client = moto.client()
    key = f"host-a/objects/{tsm.object[:2]}/{tsm.object}"
    body = bytearray(client.get_object(Bucket=moto.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 1
    client.put_object(Bucket=moto.bucket, Key=key, Body=bytes(body))
    result = offsite.verify("20261130T030000Z-dddd", read_percent=100)
    assert len(result.errors) == 1
    assert f"{key} (for data/1.tsm of backup 20261130T030000Z-dddd) is damaged" in result.errors[0]
    assert result.checked == 1, "meta.db was still downloaded and hashed"


def _encrypted_backup(
    tmp_path: Path,
    sandbox: Sandbox,
    moto: Endpoint,
    identity: Path,
    recipient: str,
    **extra: object,
) -> tuple[Path, Cli, dict[str, Any]]:
    """A config encrypting to recipient (identity_file: identity) and its first backup, sent."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    section = offsite_section(moto, encrypt_to=[recipient], identity_file=str(identity), **extra)
    config = write_config(tmp_path, sandbox, extra=section)
    cli = Cli(config)
    first = cli.json("backup")
    assert first["status"] == "ok"
    return config, cli, first


def test_after_encrypt_to_changes_new_backups_restore_with_the_new_identity_alone(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: files the new backup shared with older ones were named as before and not sent
    again: they stayed encrypted to the old recipient only, and verify --read-data and restore
    with the new identity failed while backup and sync said ok."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old_identity, old_recipient = age_identity(tmp_path / "old")
    new_identity, new_recipient = age_identity(tmp_path / "new")
    config, cli, first = _encrypted_backup(tmp_path, sandbox, moto, old_identity, old_recipient)
    # the old key is retired (lost, or handed on): encrypt to the new one from now on
    config.write_text(
        config.read_text()
        .replace(old_recipient, new_recipient)
        .replace(str(old_identity), str(new_identity))
    )
    sandbox.write_points("metrics", 300, start=50_000)
    second = cli.json("backup")
    assert second["status"] == "ok"
    checked = cli("verify", second["id"], "--offsite", "--read-data", "100", "--json")
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-1000:]
    Path(second["archive"]).unlink()
    restored = cli("restore", second["id"], "--from", "offsite", "--yes", timeout=300)
    assert restored.returncode == 0, restored.stderr[-2000:]
    # the backup before is still there, readable with the identity of before
    config.write_text(config.read_text().replace(str(new_identity), str(old_identity)))
    before = cli("verify", first["id"], "--offsite", "--read-data", "100")
    assert before.returncode == 0, before.stdout[-2000:]


def test_a_damaged_or_foreign_encrypted_manifest_is_passed_over_not_the_end_of_every_listing(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: one manifest failing age's MAC ended list, import and every sync."""
    identity, recipient = age_identity(tmp_path)
    (tmp_path / "other").mkdir()
    _, stranger = age_identity(tmp_path / "other")
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    section = offsite_section(moto, encrypt_to=[recipient], identity_file=str(identity))
    cli = Cli(write_config(tmp_path, sandbox, extra=section))
    rid = cli.json("backup")["id"]
    client = moto.client()
    prefix = "host-a/manifests/nightly/"
    body = client.get_object(Bucket=moto.bucket, Key=f"{prefix}{rid}.json.gz.age")["Body"].read()
    damaged = bytearray(body)
    damaged[-5] ^= 0xFF
    client.put_object(
        Bucket=moto.bucket, Key=f"{prefix}20200101T000000Z-dead.json.gz.age", Body=bytes(damaged)
    )
    import pyrage

    foreign = pyrage.encrypt(b"{}", [pyrage.x25519.Recipient.from_str(stranger)])
    client.put_object(
        Bucket=moto.bucket, Key=f"{prefix}20200101T000001Z-beef.json.gz.age", Body=foreign
    )

    listed = cli("list", "--offsite", "--json")
    assert listed.returncode == 1, "a script notices the two passed over"
    assert [r["id"] for r in json.loads(listed.stdout)] == [rid]
    assert "damaged" in listed.stderr and "Traceback" not in listed.stderr
    synced = cli("offsite", "sync")
    assert synced.returncode == 0, synced.stderr[-2000:]
    assert cli.json("status")["offsite"]["last_error"] is None

    # a wrong identity reads none of them: that is the identity's fault, said as such
    (tmp_path / "third").mkdir()
    wrong, _ = age_identity(tmp_path / "third")
    config = cli.config
    config.write_text(config.read_text().replace(str(identity), str(wrong)))
    listed = cli("list", "--offsite")
    assert listed.returncode == 1 and "identity_file" in listed.stderr.strip().splitlines()[-1]


def test_a_fresh_host_with_other_recipients_makes_its_own_name_key_and_repairs_nothing_of_others(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: a host without its name key took the bucket's, whatever recipients it was made
    for; new backups were deduplicated onto objects only the old identity reads, and verify
    noted those as damaged, so the next sync wrote over objects the old backups need."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old_identity, old_recipient = age_identity(tmp_path / "old")
    new_identity, new_recipient = age_identity(tmp_path / "new")
    both = tmp_path / "both.txt"
    both.write_text(old_identity.read_text() + new_identity.read_text())
    both.chmod(0o600)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2000)
    section = offsite_section(moto, encrypt_to=[old_recipient], identity_file=str(old_identity))
    config = write_config(tmp_path, sandbox, extra=section)
    cli = Cli(config)
    first = cli.json("backup")
    assert first["status"] == "ok"
    for key_file in (tmp_path / "state").glob("offsite-name.key*"):
        key_file.unlink()  # a fresh host
    config.write_text(
        config.read_text()
        .replace(old_recipient, new_recipient)
        .replace(str(old_identity), str(both))
    )
    second = cli.json("backup")
    assert second["status"] == "ok"
    config.write_text(config.read_text().replace(str(both), str(new_identity)))
    checked = cli("verify", second["id"], "--offsite", "--read-data", "100")
    assert checked.returncode == 0, checked.stdout[-2000:]
    # the first backup cannot be read with the new identity alone: an error, never "damage"
    checked = cli("verify", first["id"], "--offsite", "--read-data", "100")
    assert checked.returncode == 1 and "identity_file" in checked.stderr, checked.stderr
    checked = cli("verify", "--offsite", "--all", "--read-data", "100", "--json")
    assert checked.returncode == 1 and list(json.loads(checked.stdout)["unreadable"]) == [
        first["id"]
    ]
    assert not list((tmp_path / "state").glob("offsite-damaged/*")), "nothing noted as damage"
    assert cli.json("offsite", "sync")["repaired"] == []
    config.write_text(config.read_text().replace(str(new_identity), str(old_identity)))
    assert cli("verify", first["id"], "--offsite", "--read-data", "100").returncode == 0


def test_a_manifest_of_other_keys_neither_fails_the_sync_nor_stops_retention(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: one manifest encrypted to other keys (planted, or from before encrypt_to
    changed) failed the scheduled check and off-site retention's mark, on every sync."""
    import pyrage

    identity, recipient = age_identity(tmp_path)
    (tmp_path / "other").mkdir()
    _, stranger = age_identity(tmp_path / "other")
    sandbox.create_db("metrics")
    section = offsite_section(
        moto, encrypt_to=[recipient], identity_file=str(identity), keep_last=1
    )
    cli = Cli(write_config(tmp_path, sandbox, extra=section))
    foreign = pyrage.encrypt(b"{}", [pyrage.x25519.Recipient.from_str(stranger)])
    moto.client().put_object(
        Bucket=moto.bucket,
        Key="host-a/manifests/nightly/20200101T000001Z-beef.json.gz.age",
        Body=foreign,
    )
    ids = []
    for night in range(3):
        sandbox.write_points("metrics", 300, start=night * 10_000)
        done = cli("backup", "--json")
        assert done.returncode == 0 and "offsite:" not in done.stderr, done.stderr[-2000:]
        ids.append(json.loads(done.stdout)["id"])
    listed = cli("list", "--offsite", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == ids[-1:], "keep_last = 1 was applied"
    state = tmp_path / "state" / "offsite.json"
    saved = json.loads(state.read_text())
    assert saved["last_check"], "the scheduled check completed"
    saved["last_check"] -= 8 * 86400
    state.write_text(json.dumps(saved))
    synced = cli("offsite", "sync", "--json")
    assert synced.returncode == 1, "the manifest it could not read is said"
    report = json.loads(synced.stdout)
    assert list(report["check_failed"]) == ["20200101T000001Z-beef"] and report["checked"] == 1
    # retention judged the others, but swept nothing while that manifest may name any object:
    # said, as the sync's exit status, its line and status's error
    assert "20200101T000001Z-beef" in report["sweep_blocked"]
    assert "deleted no object" in cli.json("status")["offsite"]["last_error"]


def test_encrypted_backups_without_identity_file_are_a_config_error(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: restore --from offsite (and list, verify) exited 1, as for a failed restore."""
    identity, recipient = age_identity(tmp_path)
    config, cli, record = _encrypted_backup(tmp_path, sandbox, moto, identity, recipient)
    config.write_text(
        config.read_text().replace(f"identity_file = {json.dumps(str(identity))}\n", "")
    )
    assert "identity_file" not in config.read_text()
    Path(record["archive"]).unlink()
    for args in (
        ("restore", record["id"], "--from", "offsite", "--yes"),
        ("list", "--offsite"),
        ("verify", record["id"], "--offsite"),
    ):
        done = cli(*args)
        assert done.returncode == 78, (args, done.stderr[-2000:])
        last = done.stderr.strip().splitlines()[-1]
        assert "set [offsite] identity_file" in last and "Traceback" not in done.stderr, args
    assert sandbox.count("metrics") == 300, "nothing restored, nothing touched"
    config.write_text(
        config.read_text().replace(
            "[offsite]\n", f'[offsite]\nidentity_file = "{tmp_path}/none.txt"\n'
        )
    )
    done = cli("list", "--offsite")
    assert done.returncode == 78 and "none.txt" in done.stderr, done.stderr[-2000:]


def test_after_encrypt_to_changes_retention_says_it_sweeps_nothing_until_the_old_identity_is_given(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: the manifests of before (encrypted to the old recipient only) stopped every
    sweep, and `offsite sync` exited 0 saying "pruned 0 backups, 0 objects", for ever."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old_identity, old_recipient = age_identity(tmp_path / "old")
    new_identity, new_recipient = age_identity(tmp_path / "new")
    config, cli, first = _encrypted_backup(
        tmp_path, sandbox, moto, old_identity, old_recipient, keep_last=1, grace="0s"
    )
    config.write_text(
        config.read_text()
        .replace(old_recipient, new_recipient)
        .replace(str(old_identity), str(new_identity))
    )
    for night in range(3):
        sandbox.write_points("metrics", 300, start=night * 10_000)
        assert cli.json("backup")["status"] == "ok"

    synced = cli("offsite", "sync")
    assert synced.returncode == 1, synced.stdout
    last = synced.stderr.strip().splitlines()[-1]
    assert first["id"] in last and "deleted no object" in last and "identity_file" in last
    assert "Traceback" not in synced.stderr
    status = cli.json("status")["offsite"]
    assert first["id"] in status["last_error"]
    assert first["id"] in cli("status").stdout

    both = tmp_path / "both.txt"
    both.write_text(new_identity.read_text() + old_identity.read_text())
    both.chmod(0o600)
    config.write_text(config.read_text().replace(str(new_identity), str(both)))
    report = cli.json("offsite", "sync")
    assert report["sweep_blocked"] is None
    assert report["pruned"]["manifests_deleted"] == [first["id"]]
    assert report["pruned"]["objects_deleted"] > 0
    assert cli.json("status")["offsite"]["last_error"] is None


def test_after_encryption_is_turned_off_the_plain_backups_list_sync_and_import(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: one `.age` manifest in a prefix read without identity_file (the backups sent
    before encryption was turned off, or one planted) made every `list --offsite`, `verify
    --all --offsite`, `import --offsite` and `offsite sync` exit 78: nothing imported on a
    fresh host, no retention ever again. Now it is passed over, said in one line, and the
    sweep deletes no object while it may name any."""
    identity, recipient = age_identity(tmp_path)
    config, cli, first = _encrypted_backup(
        tmp_path, sandbox, moto, identity, recipient, keep_last=2, grace="0s"
    )
    plain_text = "".join(
        line
        for line in config.read_text().splitlines(keepends=True)
        if not line.startswith(("encrypt_to", "identity_file"))
    )
    config.write_text(plain_text)
    plain = [cli.json("backup") for _ in range(2)]
    assert all(r["status"] == "ok" for r in plain), plain

    listed = cli("list", "--offsite", "--json")
    assert listed.returncode == 1, listed.stderr[-2000:]
    assert {r["id"] for r in json.loads(listed.stdout)} == {r["id"] for r in plain}
    last = listed.stderr.strip().splitlines()[-1]
    assert first["id"] in last and "set [offsite] identity_file" in last, last

    verified = cli("verify", "--all", "--offsite", "--json")
    assert verified.returncode == 1 and "Traceback" not in verified.stderr
    report = json.loads(verified.stdout)
    assert {b["id"] for b in report["backups"]} == {r["id"] for r in plain}
    assert all(b["ok"] for b in report["backups"])
    assert list(report["unreadable"]) == [first["id"]]

    synced = cli("offsite", "sync")
    assert synced.returncode == 1 and "Traceback" not in synced.stderr, synced.stderr[-2000:]
    assert "deleted no object" in synced.stderr.strip().splitlines()[-1]

    fresh = tmp_path / "fresh-state"
    other = Cli(tmp_path / "fresh.toml")
    other.config.write_text(plain_text.replace(str(tmp_path / "state"), str(fresh)))
    imported = other("import", "--offsite")
    assert imported.returncode == 1, imported.stderr[-2000:]
    assert {r["id"] for r in other.json("list")} == {r["id"] for r in plain}

    # with nothing plain to read, the config is what is wrong: 78, one line
    moto_client = moto.client()
    for r in plain:
        for item in moto_client.list_objects_v2(
            Bucket=moto.bucket, Prefix=f"host-a/manifests/{r['job']}/{r['id']}"
        ).get("Contents", []):
            moto_client.delete_object(Bucket=moto.bucket, Key=item["Key"])
    done = cli("list", "--offsite")
    assert done.returncode == 78, done.stderr[-2000:]
    assert "set [offsite] identity_file" in done.stderr.strip().splitlines()[-1]
