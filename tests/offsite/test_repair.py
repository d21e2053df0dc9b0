"""Off-site copies found damaged by `verify --offsite` are sent again by the next sync, from a
local backup holding their content; what none holds is said by sync, status and the metrics.
Against a real influxd and moto's server; the damage is done to the objects in the bucket."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.report.metrics import JOB_LABEL
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import age_identity, offsite_section, sha256


def _setup(tmp_path: Path, sandbox: Sandbox, moto: Endpoint, **extra: object) -> tuple[Cli, Path]:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    metrics = tmp_path / "metrics.prom"
    config = write_config(tmp_path, sandbox, extra=offsite_section(moto, **extra))
    config.write_text(
        config.read_text().replace("[daemon]\n", f'[daemon]\nmetrics_file = "{metrics}"\n')
    )
    return Cli(config), metrics


def _objects(moto: Endpoint) -> dict[str, int]:
    listed = moto.client().list_objects_v2(Bucket=moto.bucket, Prefix="host-a/objects/")
    return {o["Key"]: o["Size"] for o in listed.get("Contents", [])}


def _largest(moto: Endpoint) -> str:
    objects = _objects(moto)
    return max(objects, key=lambda k: objects[k])


def _spoil(moto: Endpoint, key: str) -> None:
    """The same size, other bytes: only reading it back can tell."""
    client = moto.client()
    body = bytearray(client.get_object(Bucket=moto.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=moto.bucket, Key=key, Body=bytes(body))


def _verify_all(cli: Cli) -> tuple[int, dict[str, Any]]:
    done = cli("verify", "--offsite", "--all", "--read-data", "100", "--json")
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def test_a_damaged_object_is_noted_by_verify_and_sent_again_by_the_next_sync(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    cli, metrics = _setup(tmp_path, sandbox, moto)
    record = cli.json("backup")
    assert record["status"] == "ok"
    key = _largest(moto)
    _spoil(moto, key)

    status, found = _verify_all(cli)
    assert status == 1 and not found["ok"]
    [backup] = found["backups"]
    assert backup["id"] == record["id"] and list(backup["bad"]) == [key.rsplit("/", 1)[1]]
    text = cli("verify", record["id"], "--offsite", "--read-data", "100")
    assert text.returncode == 1 and "the next `offsite sync`" in text.stdout, text.stdout
    noted = cli.json("status")["offsite"]["damaged"]
    assert [(d["backup"], d["objects"]) for d in noted] == [(record["id"], 1)]
    assert "the next sync sends them again from its local copy" in cli("status").stdout
    assert cli.json("status")["offsite"]["damaged"][0]["repair"]["can"] == "local_copy"
    cli("offsite", "sync")  # also rewrites the metrics
    assert (
        f'influx_backupd_offsite_damaged_objects{{backup_instance="metrics",{JOB_LABEL}="nightly"}} 0'
        in (metrics.read_text())
    ), "the sync put it right before writing the metrics"
    assert (
        'influx_backupd_offsite_failing{backup_instance="metrics",reason="damaged"} 0'
        in metrics.read_text()
    )

    status, found = _verify_all(cli)
    assert status == 0 and found["ok"], found
    assert cli.json("status")["offsite"]["damaged"] == []

    # and the bucket's copy restores: the local archive gone, fetched back byte for byte
    archive = Path(record["archive"])
    archive.unlink()
    done = cli("restore", record["id"], "--from", "offsite", "--yes", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sha256(archive) == record["sha256"]


def test_an_object_deleted_from_the_bucket_is_sent_again_from_another_local_backup(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Objects are shared between backups: the first backup's local copy is gone, the second
    holds the same file."""
    cli, _ = _setup(tmp_path, sandbox, moto)
    first = cli.json("backup")
    second = cli.json("backup")
    assert first["status"] == second["status"] == "ok"
    shared = _largest(moto)
    moto.client().delete_object(Bucket=moto.bucket, Key=shared)
    Path(first["archive"]).unlink()

    done = cli("verify", first["id"], "--offsite", "--json")  # listing alone finds it missing
    assert done.returncode == 1 and "is missing" in done.stdout, done.stdout
    synced = cli("offsite", "sync", "--json")
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert json.loads(synced.stdout)["repaired"] == [first["id"]]
    assert shared in _objects(moto)
    status, found = _verify_all(cli)
    assert status == 0, found


def test_what_no_local_backup_holds_is_said_by_sync_status_and_metrics(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    cli, metrics = _setup(tmp_path, sandbox, moto)
    record = cli.json("backup")
    key = _largest(moto)
    _spoil(moto, key)
    Path(record["archive"]).unlink()
    status, _ = _verify_all(cli)
    assert status == 1
    # said by the check itself (before: only from the next sync or run)
    assert (
        f'influx_backupd_offsite_damaged_objects{{backup_instance="metrics",{JOB_LABEL}="nightly"}} 1'
        in (metrics.read_text())
    )

    synced = cli("offsite", "sync")
    assert synced.returncode == 1, synced.stdout
    lines = [x for x in synced.stderr.splitlines() if x.startswith("influx-backupd:")]
    assert len(lines) == 1 and "not repaired" in lines[0] and record["id"] in lines[0], lines
    assert "held by no local backup" in lines[0] and "Traceback" not in synced.stderr
    assert [d["backup"] for d in cli.json("status")["offsite"]["damaged"]] == [record["id"]]
    assert (
        f'influx_backupd_offsite_damaged_objects{{backup_instance="metrics",{JOB_LABEL}="nightly"}} 1'
        in (metrics.read_text())
    )
    assert (
        'influx_backupd_offsite_failing{backup_instance="metrics",reason="damaged"} 1'
        in metrics.read_text()
    )
    assert _objects(moto)[key], "the damaged object is left as it was: nothing to replace it"


def test_a_damaged_chunk_of_an_encrypted_file_is_sent_again(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    identity, recipient = age_identity(tmp_path)
    cli, _ = _setup(
        tmp_path,
        sandbox,
        moto,
        encrypt_to=[recipient],
        identity_file=str(identity),
        chunk_size="5MiB",
    )
    record = cli.json("backup")
    assert record["status"] == "ok"
    _spoil(moto, _largest(moto))
    status, found = _verify_all(cli)
    assert status == 1 and found["backups"][0]["bad"], found
    synced = cli.json("offsite", "sync")
    assert synced["repaired"] == [record["id"]]
    status, found = _verify_all(cli)
    assert status == 0, found


def test_verify_offsite_refuses_what_only_a_local_check_does(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    cli, _ = _setup(tmp_path, sandbox, moto)
    for argv in (
        ("verify", "--offsite"),
        ("verify", "x", "--offsite", "--all"),
        ("verify", "x", "--offsite", "--job", "nightly"),
        ("verify", "x", "--offsite", "--deep"),
        ("verify", "x", "--offsite", "--restore-test"),
    ):
        done = cli(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("influx-backupd: "), (argv, lines)
    status, found = _verify_all(cli)
    assert status == 0 and found["backups"] == [], found


def test_the_sync_checks_the_bucket_every_check_every_and_repairs_in_the_same_run(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    cli, _ = _setup(tmp_path, sandbox, moto, check_every="1h", check_read_data=100)
    record = cli.json("backup")  # its sync sends it and checks the bucket: last_check set
    assert record["status"] == "ok"
    key = _largest(moto)
    _spoil(moto, key)
    quiet = cli.json("offsite", "sync")
    assert quiet["checked"] == 0, "checked less than check_every ago: not again"

    state = tmp_path / "state" / "offsite.json"
    saved = json.loads(state.read_text())
    saved["last_check"] -= 3601  # an hour later
    state.write_text(json.dumps(saved))
    synced = cli.json("offsite", "sync")
    assert synced["checked"] == 1 and synced["repaired"] == [record["id"]], synced
    status, found = _verify_all(cli)
    assert status == 0, found

    # stamped while the clock was a year ahead: due now, not in a year (the time audit)
    _spoil(moto, key)
    saved = json.loads(state.read_text())
    saved["last_check"] += 365 * 86_400
    state.write_text(json.dumps(saved))
    ahead = cli.json("offsite", "sync")
    assert ahead["checked"] == 1 and ahead["repaired"] == [record["id"]], ahead

    # off: never checked by the sync
    config = cli.config
    config.write_text(config.read_text().replace('check_every = "1h"', 'check_every = "0"'))
    _spoil(moto, key)
    saved = json.loads(state.read_text())
    saved["last_check"] = 0
    state.write_text(json.dumps(saved))
    assert cli.json("offsite", "sync")["checked"] == 0


def test_an_object_moved_elsewhere_below_objects_is_missing_and_sent_again(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: objects were matched by their file name anywhere below objects/, so verify and
    send counted a moved one as there, and the restore failed on "not found"."""
    cli, _ = _setup(tmp_path, sandbox, moto)
    record = cli.json("backup")
    key = _largest(moto)
    name = key.rsplit("/", 1)[1]
    client = moto.client()
    client.copy_object(
        Bucket=moto.bucket,
        Key=f"host-a/objects/zz/{name}",
        CopySource={"Bucket": moto.bucket, "Key": key},
    )
    client.delete_object(Bucket=moto.bucket, Key=key)
    done = cli("verify", record["id"], "--offsite")
    assert done.returncode == 1 and "is missing" in done.stdout, done.stdout
    assert cli.json("offsite", "sync")["repaired"] == [record["id"]]
    Path(record["archive"]).unlink()
    restored = cli("restore", record["id"], "--from", "offsite", "--yes", timeout=300)
    assert restored.returncode == 0, restored.stderr[-2000:]


def test_the_local_copy_a_repair_needs_is_held_from_local_retention(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: the next backup's prune (before its sync) deleted the only local copy that
    held the damaged objects, and the repair could never be done."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2000)
    job = {"name": "nightly", "mode": "cold", "copy": "direct", "keep_last": 1}
    cli = Cli(write_config(tmp_path, sandbox, jobs=[job], extra=offsite_section(moto)))
    first = cli.json("backup")
    client = moto.client()
    for key in _objects(moto):
        client.delete_object(Bucket=moto.bucket, Key=key)
    assert cli("verify", first["id"], "--offsite").returncode == 1
    sandbox.write_points("metrics", 2000, start=100_000)
    assert cli.json("backup")["status"] == "ok"  # its sync repairs, from the held copy
    status, found = _verify_all(cli)
    assert status == 0, found
    assert cli.json("status")["offsite"]["damaged"] == []
    assert cli.json("prune")["deleted"], "once repaired, local retention has its way"
    assert not Path(first["archive"]).exists()


def test_a_chunk_of_a_file_sent_before_chunk_size_changed_is_sent_again_as_named(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    identity, recipient = age_identity(tmp_path)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    (sandbox.data / "metrics" / "big.bin").write_bytes(os.urandom(13 << 20))
    section = offsite_section(
        moto, encrypt_to=[recipient], identity_file=str(identity), chunk_size="5MiB"
    )
    config = write_config(tmp_path, sandbox, extra=section)
    cli = Cli(config)
    record = cli.json("backup")
    assert record["status"] == "ok"
    _spoil(moto, _largest(moto))
    status, _ = _verify_all(cli)
    assert status == 1
    before = set(_objects(moto))
    config.write_text(config.read_text().replace('chunk_size = "5MiB"', 'chunk_size = "6MiB"'))
    synced = cli.json("offsite", "sync")
    assert synced["repaired"] == [record["id"]] and synced["bytes_uploaded"] > 0, synced
    assert set(_objects(moto)) == before, "the chunks went under their own names, no others"
    status, found = _verify_all(cli)
    assert status == 0, found


def test_objects_shared_by_backups_are_downloaded_once_per_check(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    cli, _ = _setup(tmp_path, sandbox, moto, check_every="0")
    for _ in range(4):
        assert cli.json("backup")["status"] == "ok"
    status, found = _verify_all(cli)
    assert status == 0 and len(found["backups"]) == 4
    read = sum(b["bytes_read"] for b in found["backups"])
    assert read <= 1.1 * sum(_objects(moto).values()), (read, sum(_objects(moto).values()))
    assert all(b["checked"] == b["objects"] for b in found["backups"])


def test_a_note_that_does_not_parse_is_passed_over(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    cli, _ = _setup(tmp_path, sandbox, moto)
    record = cli.json("backup")
    notes = tmp_path / "state" / "offsite-damaged"
    notes.mkdir(exist_ok=True)
    huge = "1" + "0" * 400
    (notes / "a.json").write_text(
        f'{{"backup": "{record["id"]}", "job": "nightly", "objects": {{"x": "y"}}, '
        f'"found_at": {huge}}}'
    )
    (notes / "b.json").write_text("not json")
    for argv in (("status",), ("offsite", "sync"), ("prune", "--dry-run")):
        done = cli(*argv)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (argv, done.stderr)


def test_a_check_of_many_backups_lists_the_bucket_once(
    tmp_path: Path, moto: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each backup's check listed every object below the prefix again: a weekly check
    of N backups paged through the whole bucket N times."""
    from influx_backupd.offsite.bucket import Bucket
    from influx_backupd.offsite.repo import Offsite
    from influx_backupd.run import offsite_repair
    from tests.offsite.helpers import cold_backup, make_tar, make_tree

    offsite = Offsite(moto.settings())
    for n in range(4):
        tree = make_tree(
            tmp_path / f"t{n}", {"meta/meta.db": b"m" * 100, f"data/{n}": os.urandom(99)}
        )
        offsite.send(
            cold_backup(make_tar(tmp_path / f"n{n}.tar", tree), f"20261130T0{n}0000Z-000{n}")
        )
    listings: list[str] = []
    real = Bucket.ls

    def counted(self: Bucket, what: str) -> Any:
        listings.append(what)
        return real(self, what)

    monkeypatch.setattr(Bucket, "ls", counted)
    report = offsite_repair.check(Offsite(moto.settings()), tmp_path / "state", read_percent=100)
    assert report.checked == 4 and report.complete and not report.damaged
    assert listings.count("objects") == 1, listings


def test_a_check_that_reads_nothing_back_keeps_the_damage_an_earlier_one_found(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    cli, _ = _setup(tmp_path, sandbox, moto, check_every="0")
    record = cli.json("backup")
    key = _largest(moto)
    _spoil(moto, key)  # its size unchanged: a listing cannot tell
    found = cli("verify", record["id"], "--offsite", "--read-data", "100")
    assert found.returncode == 1 and "1 damaged or missing objects noted" in found.stdout

    listed = cli("verify", record["id"], "--offsite")  # sizes only: it reads nothing back
    assert listed.returncode == 1, listed.stdout
    assert "noted damaged by an earlier check were not read back now" in listed.stdout
    [noted] = cli.json("status")["offsite"]["damaged"]
    assert (noted["backup"], noted["objects"]) == (record["id"], 1)

    synced = cli("offsite", "sync")
    assert f"{record['id']:<22} repaired" in synced.stdout, synced.stdout + synced.stderr
    assert cli.json("status")["offsite"]["damaged"] == []
    status, checked = _verify_all(cli)
    assert status == 0 and checked["ok"], checked


def test_an_object_known_damaged_is_written_again_by_a_send_that_holds_it(
    tmp_path: Path, moto: Endpoint
) -> None:
    """The listing shows a damaged object with its size: a later backup holding its content
    must not take it as there (and point at it), but write it again."""
    from influx_backupd.offsite.repo import Offsite
    from tests.offsite.helpers import cold_backup, make_tar, make_tree

    tree = make_tree(tmp_path / "t", {"data/a.tsm": b"A" * 70_000, "wal/_1.wal": b"w1"})
    first = make_tar(tmp_path / "one.tar", tree)
    (tree / "wal" / "_1.wal").write_bytes(b"w2")
    second = make_tar(tmp_path / "two.tar", tree)
    settings = moto.settings()
    Offsite(settings).send(cold_backup(first, "20260101T000000Z-aaaa"))
    tsm = hashlib.sha256(b"A" * 70_000).hexdigest()
    _spoil(moto, f"host-a/objects/{tsm[:2]}/{tsm}")

    store = Offsite(settings)
    store.distrust([tsm])
    sent = store.send(cold_backup(second, "20260102T000000Z-bbbb"))
    assert sent.resent == [tsm]
    body = moto.client().get_object(Bucket=moto.bucket, Key=f"host-a/objects/{tsm[:2]}/{tsm}")
    assert hashlib.sha256(body["Body"].read()).hexdigest() == tsm


# Loaded into `verify --offsite` (sitecustomize): just before the first backup's check, a sync
# beside it prunes that backup (its manifest, then the objects no other backup names), as
# `offsite sync` may at any time: verify takes no backup lock.
PRUNED_DURING_CHECK = """
import os
from influx_backupd.offsite import repo
from influx_backupd.offsite.repo import object_name
_manifest = repo.Offsite.manifest
_pruned = []
def _prune(self, ref):
    others = set()
    for other in self.manifests():
        if other.id != ref.id:
            others |= _manifest(self, other).objects()
    only = _manifest(self, ref).objects() - others
    assert only
    self.bucket.delete([ref.key])
    self.bucket.delete([self.bucket.key(object_name(n)) for n in only])
def _read_for_the_check(self, ref, *, fresh=False):
    if not fresh or _pruned:  # the check's own read is fresh: from the bucket
        return _manifest(self, ref, fresh=fresh)
    _pruned.append(ref)
    if os.environ["PRUNED"] == "before its manifest is read":
        _prune(self, ref)
        return _manifest(self, ref, fresh=True)
    read = _manifest(self, ref, fresh=True)
    _prune(self, ref)
    return read
repo.Offsite.manifest = _read_for_the_check
"""


@pytest.mark.parametrize("when", ["before its manifest is read", "after its manifest was read"])
def test_a_backup_pruned_by_a_sync_while_verify_checked_it_is_no_damage(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, when: str
) -> None:
    """Before: its objects, deleted with it, were called missing: `verify --offsite --all`
    failed (exit 1) on a backup removed on purpose and noted damage no sync could repair."""
    import subprocess
    import sys

    cli, _ = _setup(tmp_path, sandbox, moto)
    first = cli.json("backup")
    sandbox.write_points("metrics", 500, start=10_000)
    second = cli.json("backup")
    assert first["status"] == second["status"] == "ok"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PRUNED_DURING_CHECK)
    argv = [sys.executable, "-m", "influx_backupd", "--config", str(cli.config)]
    done = subprocess.run(
        [*argv, "verify", "--offsite", "--all", "--read-data", "100", "--json"],
        env={**os.environ, "PRUNED": when, "PYTHONPATH": os.pathsep.join([str(hook), *sys.path])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stdout, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert done.returncode == 0 and found["ok"], found
    [pruned] = found["pruned_while_checked"]  # the first checked (ids sort within a second)
    assert [pruned, *(b["id"] for b in found["backups"])] in (
        [first["id"], second["id"]],
        [second["id"], first["id"]],
    )
    assert cli.json("status")["offsite"]["damaged"] == []
    assert "offsite.pruned_while_checked" in done.stderr


@pytest.mark.parametrize("when", ["before its manifest is read", "after its manifest was read"])
def test_the_daemons_check_passes_over_a_backup_pruned_while_checked(
    tmp_path: Path, moto: Endpoint, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    from influx_backupd.offsite import repo
    from influx_backupd.run import offsite_repair
    from tests.offsite.helpers import cold_backup, make_tar, make_tree

    offsite = repo.Offsite(moto.settings())
    for n in range(2):
        tree = make_tree(tmp_path / f"t{n}", {"meta/meta.db": b"m" * 100, f"data/{n}": b"%d" % n})
        offsite.send(
            cold_backup(make_tar(tmp_path / f"n{n}.tar", tree), f"20261130T0{n}0000Z-000{n}")
        )
    monkeypatch.setattr(repo.Offsite, "manifest", repo.Offsite.manifest)  # put back after
    monkeypatch.setenv("PRUNED", when)
    exec(PRUNED_DURING_CHECK, {})
    report = offsite_repair.check(repo.Offsite(moto.settings()), tmp_path, read_percent=100)
    assert report.complete and not report.damaged and not report.broken, report
    assert offsite_repair.noted(tmp_path) == []


def test_an_object_listed_then_gone_when_read_is_noted_missing_the_check_goes_on(
    tmp_path: Path, moto: Endpoint
) -> None:
    """Before: the 404 of a listed object ended the whole check (one line, exit 1) with nothing
    noted, so the next sync repaired nothing of it and the other backups went unchecked."""
    from influx_backupd.offsite import repo
    from influx_backupd.offsite.repo import object_name
    from influx_backupd.run import offsite_repair
    from tests.offsite.helpers import cold_backup, make_tar, make_tree

    offsite = repo.Offsite(moto.settings())
    for n in range(2):
        tree = make_tree(tmp_path / f"t{n}", {f"data/{n}": b"%d" % n * 1000})
        offsite.send(
            cold_backup(make_tar(tmp_path / f"n{n}.tar", tree), f"20261130T0{n}0000Z-000{n}")
        )
    checking = repo.Offsite(moto.settings())
    listed = checking.objects_in_place()
    [first, second] = checking.manifests()
    [victim] = checking.manifest(first).objects() - checking.manifest(second).objects()
    checking.bucket.delete([checking.bucket.key(object_name(victim))])
    done: dict[str, repo.VerifyResult] = {}
    for ref in (first, second):
        checking.verify_chain(ref, done, listed=listed, read_percent=100)
    assert list(done[first.id].bad) == [victim] and "not found" in done[first.id].bad[victim]
    assert not done[second.id].failed
    assert offsite_repair.pruned_meanwhile(checking, {first.id: first}, done.values()) == set()
