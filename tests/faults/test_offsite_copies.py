"""Faults of the off-site copies against a real influxd and moto's S3 server: damage in the
bucket that a later check must not forget, a prefix two hosts write, a prune cut short."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.faults.conftest import FaultResult, Watched
from tests.offsite.conftest import Endpoint, moto, moto_url
from tests.offsite.helpers import StallingProxy, offsite_section

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
    # check_every 1s: a sync 1 s after the last checks the bucket (check_read_data 0: sizes)
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto, check_every="1s")))
    record = cli.json("backup")
    assert record["status"] == "ok"
    objects = _objects(moto)
    key = max(objects, key=lambda k: objects[k])
    _spoil(moto, key)
    found = cli("verify", record["id"], "--offsite", "--read-data", "100")
    assert found.returncode == 1, found.stdout

    # the backup's own sync checked the bucket: on a fast machine less than check_every ago
    time.sleep(1.1)
    synced = cli("offsite", "sync", "--json")
    report = json.loads(synced.stdout)
    assert report["checked"] == 1, "the scheduled check ran, reading nothing back"
    assert report["repaired"] == [record["id"]], (synced.stdout, synced.stderr[-2000:])
    fault_result.lost(archives=0 if _intact(moto, key) else 1)
    assert _intact(moto, key)
    again = cli("verify", record["id"], "--offsite", "--read-data", "100")
    assert again.returncode == 0, again.stdout


@pytest.mark.fault("offsite", "a prune cut short after deleting manifests")
@pytest.mark.parametrize("cut", ["sigkill", "endpoint-stalls"])
def test_a_prune_cut_short_after_deleting_manifests_is_resumed_not_undone(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, fault_result: FaultResult, cut: str
) -> None:
    """Before: the retirement was recorded only after the mark and sweep; killed between, the
    next sync sent the pruned backup again ("offsite.manifest_gone … deleted outside
    influx-backupd?") for the prune after it to delete again."""
    sandbox.create_db("metrics")
    seen_delete = threading.Event()

    def stalls(method: str, path: str) -> bool:
        # everything after the first DeleteObjects (the manifests retention deletes) hangs
        if seen_delete.is_set():
            return True
        if method == "POST" and "?delete" in path:
            seen_delete.set()
        return False

    armed = [False]
    proxy = StallingProxy(moto.url, lambda m, p: armed[0] and stalls(m, p))
    try:
        section = offsite_section(moto, endpoint_url=proxy.url)
        config = write_config(tmp_path, sandbox, extra=section)
        cli = Cli(config)
        ids = []
        for night in range(2):
            sandbox.write_points("metrics", 300, start=night * 10_000)
            ids.append(cli.json("backup")["id"])
        assert cli.json("status")["offsite"]["not_offsite"] == []
        rules = 'keep_last = 1\ngrace = "0s"\n' + (
            'stall_after = "3s"\n' if cut != "sigkill" else ""
        )
        config.write_text(config.read_text().replace("[offsite]\n", f"[offsite]\n{rules}"))
        armed[0] = True
        if cut == "sigkill":
            sync = Watched(config, "offsite", "sync")
            deadline = time.monotonic() + 120
            while not proxy.stalled:
                assert sync.proc.poll() is None, f"sync ended before its mark: {sync.tail()}"
                assert time.monotonic() < deadline, "the sync never deleted a manifest"
                time.sleep(0.05)
            sync.kill()
        else:  # the mark's listing hangs: given up after stall_after, one line, exit 1
            given_up = cli("offsite", "sync")
            assert given_up.returncode == 1 and proxy.stalled, given_up.stderr[-2000:]
            assert "stalls" in given_up.stderr.strip().splitlines()[-1]
        armed[0] = False
        manifests = moto.client().list_objects_v2(Bucket=moto.bucket, Prefix="host-a/manifests/")
        assert [o["Key"].rsplit("/", 1)[1] for o in manifests["Contents"]] == [
            f"{ids[1]}.json.gz"
        ], "killed after the manifest of the first was deleted"

        again = cli("offsite", "sync", "--json")
        assert again.returncode == 0, again.stderr[-3000:]
        report = json.loads(again.stdout)
        sent_again = [s["id"] for s in report["sent"]]
        fault_result.lost(archives=0)
        assert sent_again == [], "the pruned backup was not sent again"
        assert "offsite.manifest_gone" not in again.stderr
        assert report["pruned"]["objects_deleted"] > 0, "the sweep cut short was done now"
        assert cli.json("status")["offsite"]["not_offsite"] == []
        listed = cli.json("list", "--offsite")
        assert [r["id"] for r in listed] == [ids[1]]
    finally:
        proxy.close()


@pytest.mark.fault("offsite", "two hosts write one prefix", "same prefix and job, keep_last 1")
def test_a_second_host_on_the_same_prefix_is_refused_and_deletes_nothing(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, fault_result: FaultResult
) -> None:
    """Before: host B's sync pruned host A's backups (keep_last counted them as its own), A
    sent its pruned backup again, and B's status said "0 not off-site"."""
    sandbox.create_db("metrics")
    section = offsite_section(moto, keep_last=1, grace="0s")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Cli(write_config(tmp_path / "a", sandbox, extra=section))
    b = Cli(write_config(tmp_path / "b", sandbox, extra=section))
    first = a.json("backup")
    sandbox.write_points("metrics", 300)
    theirs = b.json("backup")
    assert theirs["status"] == "ok", "the local backup is kept whatever the bucket says"
    refused = b("offsite", "sync")
    assert refused.returncode == 78, refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert "written by another host" in line and "--adopt" in line, line
    assert "Traceback" not in refused.stderr
    status = b.json("status")["offsite"]
    assert status["not_offsite"] == [theirs["id"]] and "--adopt" in status["last_error"]
    sandbox.write_points("metrics", 300, start=50_000)
    second = a.json("backup")

    listed = [r["id"] for r in b.json("list", "--offsite")]  # reading is anyone's
    fault_result.lost(archives=0 if listed == [second["id"]] else 1)
    assert listed == [second["id"]], "A's newest is there, B deleted nothing"
    assert first["id"] not in listed, "A's retention judged A's own"
    assert not any("manifest_gone" in line for line in (a("offsite", "sync").stderr,))

    # host A is gone for good: B takes the prefix over, with A's backups
    taken = b("offsite", "sync", "--adopt", "--json")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert [s["id"] for s in json.loads(taken.stdout)["sent"]] == [theirs["id"]]
    again = a("offsite", "sync")
    assert again.returncode == 78 and "--adopt" in again.stderr, again.stderr[-2000:]
