"""Off-site pruning: manifests not kept go, then unreferenced objects past the grace period.
No object of a kept backup is ever deleted."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from influx_backupd.offsite.repo import Offsite
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import cold_backup, hot_backup, make_tar, make_tree


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
    client.create_multipart_upload(Bucket=rclone.bucket, Key="host-a/objects/ab/abandoned")
    offsite = Offsite(rclone.settings(grace=3600))
    assert offsite.prune(set()).uploads_aborted == 0
    assert len(offsite.bucket.uploads()) == 1
    assert offsite.prune(set(), now=time.time() + 7200).uploads_aborted == 1
    assert offsite.bucket.uploads() == []
