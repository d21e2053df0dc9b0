"""Off-site pruning: manifests not kept go, then unreferenced objects past the grace period.
No object of a kept backup is ever deleted."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite.repo import Offsite
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import cold_backup, hot_backup, make_tar, make_tree, offsite_section


def _objects(ep: Endpoint) -> set[str]:
    pages = (
        ep.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=ep.bucket, Prefix="host-a/objects/")
    )
    return {o["Key"].rsplit("/", 1)[1] for page in pages for o in page.get("Contents", [])}


def test_no_object_of_a_kept_backup_is_ever_deleted(moto: Endpoint, tmp_path: Path) -> None:
    rng = random.Random(13)
    pool = [os.urandom(rng.randrange(1, 40_000)) for _ in range(12)]  # contents shared by backups
    offsite = Offsite(moto.settings(grace=3600))
    ids: list[str] = []
    parents: dict[str, str | None] = {}
    for n in range(8):
        bid = f"202611{10 + n:02d}T010000Z-{n:04x}"
        picked = {f"f{i}": pool[i] for i in rng.sample(range(len(pool)), 4)}
        if n % 4 == 0:  # cold archives
            tree = make_tree(tmp_path / f"t{n}", {f"data/{k}": v for k, v in picked.items()})
            backup = cold_backup(make_tar(tmp_path / f"nightly-{bid}.tar", tree), bid)
            parents[bid] = None
        else:  # a hot chain: full, then increments
            parent = None if n % 4 == 1 else ids[-1]
            backup = hot_backup(make_tree(tmp_path / f"hot-{bid}", picked), bid, parent=parent)
            parents[bid] = parent
        assert offsite.send(backup).complete
        ids.append(bid)
    manifests = {i: offsite.manifest(i) for i in ids}

    # nothing is old enough yet: all unreferenced objects are in their grace period
    young = offsite.prune({ids[-1]})
    assert young.objects_deleted == 0
    after_young = {r.id for r in offsite.manifests()}
    # the kept increment keeps its chain: ids 5, 6, 7 (full at 5)
    assert after_young == {ids[5], ids[6], ids[7]}

    later = time.time() + 7200
    for _ in range(4):
        alive = sorted(r.id for r in offsite.manifests())
        if not alive:
            break
        keep = set(rng.sample(alive, rng.randrange(0, len(alive))))
        result = offsite.prune(keep, now=later)
        alive_now = {r.id for r in offsite.manifests()}
        expected = set(keep)
        for bid in keep:  # a kept backup keeps its parents
            while parents[bid] is not None:
                bid = parents[bid]  # type: ignore[assignment]
                expected.add(bid)
        assert alive_now == expected
        present = _objects(moto)
        needed = set().union(*(manifests[i].objects() for i in alive_now)) if alive_now else set()
        assert needed <= present, "an object of a kept backup was deleted"
        assert present <= needed, "an unreferenced object past its grace period was left"
        assert result.objects_in_grace == 0


def test_prune_aborts_only_stale_multipart_uploads(rclone: Endpoint) -> None:
    # rclone: moto reports every upload as initiated in 2010
    client = rclone.client()
    name = "ab" + "0" * 62  # a key of our object form (no other is ever aborted)
    client.create_multipart_upload(Bucket=rclone.bucket, Key=f"host-a/objects/ab/{name}")
    offsite = Offsite(rclone.settings(grace=3600))
    assert offsite.prune(set()).uploads_aborted == 0
    assert len(offsite.bucket.uploads()) == 1
    assert offsite.prune(set(), now=time.time() + 7200).uploads_aborted == 1
    assert offsite.bucket.uploads() == []


COLD_KEEP_5 = [{"name": "nightly", "mode": "cold", "copy": "direct", "keep_last": 5}]


def test_a_backup_off_site_retention_deleted_is_not_sent_again(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: with off-site retention shorter than local retention, every sync sent the older
    local backups again and the prune after it deleted them again."""
    sandbox.create_db("metrics")
    section = offsite_section(moto, keep_last=1)
    cli = Cli(write_config(tmp_path, sandbox, jobs=COLD_KEEP_5, extra=section))
    ids = []
    for night in range(3):
        sandbox.write_points("metrics", 300, start=night * 10_000)
        ids.append(cli.json("backup")["id"])
    assert [r["id"] for r in cli.json("list", "--offsite")] == ids[-1:]
    for _ in range(2):
        synced = cli.json("offsite", "sync")
        assert synced["sent"] == [] and synced["pruned"]["manifests_deleted"] == [], synced
        assert synced["pending"] == [], "what retention deleted is not pending either"
    assert len(cli.json("list")) == 3, "local retention keeps its own"


def test_imported_backups_pruned_off_site_leave_no_record_without_a_copy(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: a fresh host's imported records stayed "ok" after off-site retention deleted
    their manifests (no archive anywhere), and every later sync failed sending them."""
    sandbox.create_db("metrics")
    first = Cli(write_config(tmp_path, sandbox, jobs=COLD_KEEP_5, extra=offsite_section(moto)))
    for night in range(3):
        sandbox.write_points("metrics", 300, start=night * 10_000)
        first.json("backup")
    (tmp_path / "b").mkdir()
    section = offsite_section(moto, keep_last=1)
    fresh = Cli(write_config(tmp_path / "b", sandbox, jobs=COLD_KEEP_5, extra=section))
    assert fresh("import", "--offsite").returncode == 0
    # the old host is gone for good: the new one takes its prefix over
    assert fresh.json("offsite", "sync", "--adopt")["pruned"]["manifests_deleted"]
    again = fresh("offsite", "sync", "--json")
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert json.loads(again.stdout)["skipped"] == []
    kept = fresh.json("list")
    assert [r["id"] for r in kept] == [r["id"] for r in fresh.json("list", "--offsite")]
    assert len(kept) == 1


def test_local_retention_keeps_what_is_not_off_site_yet(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: with the endpoint down for three nights and keep_last = 1, the first two backups
    were pruned locally before any sync could send them: lost to the off-site copy."""
    from tests.offsite.conftest import free_port

    sandbox.create_db("metrics")
    jobs = [{"name": "nightly", "mode": "cold", "copy": "direct", "keep_last": 1}]
    down = f"http://127.0.0.1:{free_port()}"
    section = offsite_section(moto, endpoint_url=down, retries=1)
    config = write_config(tmp_path, sandbox, jobs=jobs, extra=section)
    cli = Cli(config)
    ids = []
    for night in range(3):
        sandbox.write_points("metrics", 300, start=night * 10_000)
        done = cli("backup", "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        ids.append(json.loads(done.stdout)["id"])
    assert [r["id"] for r in cli.json("list")] == ids, "all three held: none is off-site"
    config.write_text(config.read_text().replace(down, moto.url))
    cli.json("offsite", "sync")
    assert sorted(r["id"] for r in cli.json("list", "--offsite")) == sorted(
        ids
    )  # same-second ids order by their random tail
    pruned = cli.json("prune")
    assert sorted(d["run_id"] for d in pruned["deleted"]) == sorted(ids[:2]), pruned
    assert [r["id"] for r in cli.json("list")] == ids[-1:]

    # hold_unsent = false: local retention alone
    config.write_text(config.read_text().replace(moto.url, down) + "hold_unsent = false\n")
    sandbox.write_points("metrics", 300, start=90_000)
    done = cli("backup", "--json")
    assert done.returncode == 0
    assert [r["id"] for r in cli.json("list")] == [json.loads(done.stdout)["id"]]


def test_a_run_short_of_space_names_the_backups_held_for_the_bucket(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """An endpoint down for days: hold_unsent keeps every backup, the storage dir fills, and
    the run that finds no room must say what holds it (before: only "not enough space")."""
    import shutil

    from tests.offsite.conftest import free_port

    sandbox.create_db("metrics")
    jobs = [{"name": "nightly", "mode": "cold", "copy": "direct", "keep_last": 1}]
    down = f"http://127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path,
        sandbox,
        jobs=jobs,
        extra=offsite_section(moto, endpoint_url=down, retries=1),
        holes="fill",
    )
    cli = Cli(config)
    held = []
    for night in range(2):
        sandbox.write_points("metrics", 300, start=night * 10_000)
        held.append(cli.json("backup"))
    assert all(r["status"] == "ok" for r in held), held
    with open(sandbox.data / "huge.bin", "wb") as fh:  # sparse: the prediction counts its size
        fh.truncate(shutil.disk_usage(tmp_path).free + (1 << 30))

    done = cli("backup", "--json")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    record = json.loads(done.stdout)
    size = sum(r["bytes"] for r in held)
    assert "not enough space" in record["error"], record["error"]
    # the figure is explained: the archive, its margin, the reserve kept free
    assert "a reserve of 67108864 bytes kept free" in record["error"], record["error"]
    assert f"2 backup(s), {size} bytes, are kept until they are off-site" in record["error"]
    assert "hold_unsent" in record["error"]
    assert "offsite.holding_space" in done.stderr
    assert [r["id"] for r in cli.json("list") if r["status"] == "ok"] == [r["id"] for r in held]
    assert cli.json("list")[-1]["error"] == record["error"], "the catalog says it too"

    # without the hold, retention kept one backup: nothing to name
    config.write_text(config.read_text() + "hold_unsent = false\n")
    done = cli("backup", "--json")
    assert done.returncode == 1
    assert "hold_unsent" not in json.loads(done.stdout)["error"]
