"""What deep checks remember of shard tars (store/scanners.py): bounded, as a daemon lives for
months and pruned links never come back (an audit found the cache grew without end)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from influx_backupd.store import scanners


def test_the_members_remembered_are_bounded_oldest_dropped_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanners, "_MEMBERS", type(scanners._MEMBERS)())
    monkeypatch.setattr(scanners, "_MEMBERS_MAX", 3)
    shards = []
    for i in range(5):
        path = tmp_path / f"s{i}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(__file__, arcname=f"{i}.tsm")
        scanners.remember_members(path, [(f"{i}.tsm", 1)])
        shards.append(path)
    assert [scanners.members_seen(p) for p in shards] == [
        None,
        None,
        [("2.tsm", 1)],
        [("3.tsm", 1)],
        [("4.tsm", 1)],
    ]
    assert scanners.shard_members(shards[0])[0][0] == "0.tsm", "read again when not remembered"
