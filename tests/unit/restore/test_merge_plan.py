"""plan_merge: a 1.x chain's shard files merged exactly, or not at all (with the reason)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from influx_backupd.restore.merge import (
    LinkView,
    MergePlan,
    ShardPart,
    listing_of,
    parse_since,
    plan_merge,
    view_of,
    write_merged,
)
from influx_backupd.store.record import RunRecord

SINCE = 1_000.0


def part(*files: str) -> ShardPart:
    return ShardPart("db", "autogen", Path("/nowhere.tar.gz"), frozenset(files))


def full(shards: dict[int, ShardPart]) -> LinkView:
    return LinkView("full", None, shards)


def increment(
    shards: dict[int, ShardPart],
    listing: dict[int, dict[str, tuple[int, float]]] | None,
    label: str = "inc1",
) -> LinkView:
    return LinkView(label, SINCE, shards, listing)


def live(*names: str, mtime: float = SINCE + 5) -> dict[str, tuple[int, float]]:
    return {name: (100, mtime) for name in names}


def test_a_compaction_output_without_a_listing_falls_back() -> None:
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment({1: part("000000002-000000002.tsm")}, None),
        ]
    )
    assert not plan.exact
    assert plan.reason is not None
    assert plan.reason.startswith("inc1: shard 1: no listing"), plan.reason


def test_only_new_files_without_a_listing_fall_back_too() -> None:
    """influxd 1.6 removes a TSM file a delete emptied with no output: an increment holding
    only new cache snapshots does not prove that nothing of the earlier links was removed."""
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment({1: part("000000002-000000001.tsm")}, None),
        ]
    )
    assert not plan.exact


def test_a_shard_new_in_the_increment_needs_no_listing() -> None:
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment(
                {1: part(), 2: part("000000001-000000001.tsm")},
                {1: live("000000001-000000001.tsm", mtime=SINCE - 5)},
            ),
        ]
    )
    assert plan.exact, plan.reason
    assert plan.shards == {1: {"000000001-000000001.tsm": 0}, 2: {"000000001-000000001.tsm": 1}}


def test_a_shard_new_to_the_chain_with_a_live_file_older_than_since_falls_back() -> None:
    """A whole-server restore between the links brings shard files back with their old times:
    -since leaves them out, and a shard the earlier links never had was taken from the
    increment's files alone (its new points), losing the restored ones without a word."""
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment(
                {3: part("000000002-000000001.tsm")},
                {
                    3: {
                        **live("000000002-000000001.tsm"),
                        **live("000000001-000000001.tsm", mtime=SINCE - 3600),
                    }
                },
            ),
        ]
    )
    assert not plan.exact and plan.unheld
    assert plan.reason is not None
    assert plan.reason.startswith(
        "inc1: shard 3: 000000001-000000001.tsm is live but in no link (modified before -since"
    ), plan.reason
    # a cache snapshot written after the snapshot is not part of the link: still exact
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment(
                {3: part("000000002-000000001.tsm")},
                {3: live("000000002-000000001.tsm", "000000003-000000001.tsm")},
            ),
        ]
    )
    assert plan.exact, plan.reason


def test_with_a_listing_a_compaction_replaces_what_it_consumed() -> None:
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm", "000000002-000000001.tsm")}),
            increment(
                {1: part("000000003-000000002.tsm", "000000004-000000001.tsm")},
                {1: live("000000003-000000002.tsm", "000000004-000000001.tsm")},
            ),
        ]
    )
    assert plan.exact, plan.reason
    assert plan.shards == {1: {"000000003-000000002.tsm": 1, "000000004-000000001.tsm": 1}}


def test_a_file_a_delete_removed_without_output_is_left_out() -> None:
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm"), 2: part("000000001-000000001.tsm")}),
            increment(
                {1: part(), 2: part()},
                {1: {}, 2: live("000000001-000000001.tsm", mtime=SINCE - 50)},
            ),
        ]
    )
    assert plan.exact, plan.reason
    assert plan.shards == {1: {}, 2: {"000000001-000000001.tsm": 0}}


def test_an_unexplained_compaction_output_in_the_listing_falls_back() -> None:
    """Compacted after the snapshot: its output (seq 2) is live but in no link, and may have
    replaced files of the earlier links."""
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment(
                {1: part("000000002-000000001.tsm")},
                {1: live("000000002-000000002.tsm")},
            ),
        ]
    )
    assert not plan.exact
    assert plan.reason is not None
    assert "000000002-000000002.tsm is live but in no link" in plan.reason
    assert plan.reason.startswith("inc1: shard 1:")


def test_a_flush_after_the_snapshot_is_not_part_of_the_link() -> None:
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment(
                {1: part("000000002-000000001.tsm")},
                {
                    1: live(
                        "000000001-000000001.tsm",
                        "000000002-000000001.tsm",
                        "000000003-000000001.tsm",
                    )
                },
            ),
        ]
    )
    assert plan.exact, plan.reason
    assert plan.shards == {1: {"000000001-000000001.tsm": 0, "000000002-000000001.tsm": 1}}


def test_a_live_file_older_than_since_in_no_link_falls_back() -> None:
    """Renamed into place after the previous snapshot with an mtime before -since: no link
    holds it, and the increment cannot be trusted to be whole."""
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment(
                {1: part()},
                {
                    1: {
                        **live("000000001-000000001.tsm"),
                        **live("000000002-000000001.tsm", mtime=SINCE - 1),
                    }
                },
            ),
        ]
    )
    assert not plan.exact
    assert plan.reason is not None and "modified before -since" in plan.reason


def test_a_shard_dropped_in_the_newest_link_is_excluded() -> None:
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm"), 2: part("000000001-000000001.tsm")}),
            increment(
                {1: part("000000002-000000001.tsm")},
                {1: live("000000001-000000001.tsm", "000000002-000000001.tsm")},
            ),
        ]
    )
    assert plan.exact, plan.reason
    assert set(plan.shards) == {1}


def test_a_tombstone_merges_beside_its_file_and_is_applied_before_the_restore() -> None:
    """restore/deletes.py compacts it in before the tool sees the merged backup."""
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment(
                {1: part("000000001-000000001.tombstone")},
                {1: live("000000001-000000001.tsm", "000000001-000000001.tombstone")},
            ),
        ]
    )
    assert plan.exact, plan.reason
    assert plan.shards[1] == {"000000001-000000001.tsm": 0, "000000001-000000001.tombstone": 1}


def test_a_tombstone_whose_file_is_in_no_link_falls_back() -> None:
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment(
                {1: part("000000002-000000001.tombstone")},
                {1: live("000000001-000000001.tsm", "000000002-000000001.tombstone")},
            ),
        ]
    )
    assert not plan.exact
    assert plan.reason is not None and "000000002-000000001.tombstone" in plan.reason
    assert "in no link" in plan.reason


def test_a_listing_of_other_files_than_the_backup_falls_back() -> None:
    """A listing whose files differ in size from the link's is not this server's."""
    taken = ShardPart(
        "db",
        "autogen",
        Path("/x"),
        frozenset({"000000002-000000001.tsm"}),
        {"000000002-000000001.tsm": 99},
    )
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment({1: taken}, {1: live("000000001-000000001.tsm", "000000002-000000001.tsm")}),
        ]
    )
    assert not plan.exact
    assert plan.reason is not None and "99 bytes in the backup, 100 in the listing" in plan.reason


def test_the_reason_names_the_link() -> None:
    plan = plan_merge(
        [
            full({1: part("000000001-000000001.tsm")}),
            increment(
                {1: part("000000002-000000001.tsm")},
                {1: live("000000001-000000001.tsm", "000000002-000000001.tsm")},
            ),
            increment({1: part("000000003-000000001.tsm")}, None, label="inc2"),
        ]
    )
    assert plan.reason is not None and plan.reason.startswith("inc2: shard 1:")


def test_the_listing_and_since_are_read_from_the_record() -> None:
    record = RunRecord(id="r", job="j", mode="hot", started_at=0.0)
    record.extra["shard_listing"] = {"taken_at": 1.0, "shards": {"7": {"a.tsm": [10, 2.5]}}}
    assert listing_of(record) == {7: {"a.tsm": (10, 2.5)}}
    record.extra["shard_listing"] = {"shards": {"x": {}}}
    assert listing_of(record) is None
    assert listing_of(None) is None
    assert parse_since("1970-01-01T00:16:40Z") == SINCE
    assert parse_since("garbage") is None


NAMES = st.sampled_from([f"{g:09d}-{s:09d}.tsm" for g in range(1, 5) for s in range(1, 4)])


@given(
    st.sets(NAMES, max_size=6),
    st.sets(NAMES, max_size=6),
    st.sets(NAMES, max_size=6),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_an_exact_plan_is_the_listed_files_before_plus_the_increment(
    before: set[str], taken: set[str], listed: set[str], late: list[bool]
) -> None:
    """Whenever the plan says exact, every merged file is in the increment or was listed live,
    and every file listed live outside the merge is a seq-1 file written after -since."""
    listing = {
        name: (1, SINCE + 1 if late[i % len(late)] else SINCE - 1)
        for i, name in enumerate(sorted(listed))
    }
    plan = plan_merge([full({1: part(*before)}), increment({1: part(*taken)}, {1: listing})])
    if not plan.exact:
        return
    merged = set(plan.shards.get(1, {}))
    assert taken <= merged
    assert all(name in taken or name in listing for name in merged)
    for name in set(listing) - merged:
        assert (name.endswith("-000000001.tsm") and listing[name][1] > SINCE) or not before


def _link(directory: Path, prefix: str, shards: dict[int, dict[str, bytes]]) -> Path:
    """A portable backup dir as influxd writes one: manifest, meta, a tar.gz a shard."""
    directory.mkdir()
    (directory / f"{prefix}.meta").write_bytes(b"meta of " + prefix.encode())
    files = []
    for sid, members in shards.items():
        name = f"{prefix}.s{sid}.tar.gz"
        with tarfile.open(directory / name, "w:gz") as tw:
            for file, data in members.items():
                info = tarfile.TarInfo(f"db/autogen/{sid}/{file}")
                info.size = len(data)
                tw.addfile(info, io.BytesIO(data))
        size = len(gzip.decompress((directory / name).read_bytes()))
        files.append(
            {
                "database": "db",
                "policy": "autogen",
                "shardID": sid,
                "fileName": name,
                "size": size,
                "lastModified": 0,
            }
        )
    manifest = {"meta": {"fileName": f"{prefix}.meta", "size": 1}, "limited": False, "files": files}
    (directory / f"{prefix}.manifest").write_text(json.dumps(manifest))
    return directory


def test_the_merged_backup_reuses_whole_tars_and_packs_the_rest(tmp_path: Path) -> None:
    a, b, c = b"A" * 700, b"B" * 800, b"C" * 900
    full = _link(
        tmp_path / "full",
        "T1",
        {
            1: {"000000001-000000001.tsm": a, "000000002-000000001.tsm": b},
            2: {"000000001-000000001.tsm": a},
        },
    )
    inc = _link(tmp_path / "inc", "T2", {1: {"000000003-000000001.tsm": c}, 2: {}})
    views = [view_of(full, None, full=True), view_of(inc, None, full=False)]
    plan = MergePlan(
        True,
        None,
        {
            1: {"000000001-000000001.tsm": 0, "000000003-000000001.tsm": 1},
            2: {"000000001-000000001.tsm": 0},
        },
    )
    reused, packed = write_merged(views, plan, inc, tmp_path / "out")
    assert (reused, packed) == (1, 1)
    out = tmp_path / "out"
    manifest = json.loads((out / "T2.manifest").read_text())
    assert (out / "T2.meta").read_bytes() == b"meta of T2", "the newest link's meta"
    by_shard = {e["shardID"]: e for e in manifest["files"]}
    assert sorted(by_shard) == [1, 2]
    assert (out / by_shard[2]["fileName"]).stat().st_ino == (full / "T1.s2.tar.gz").stat().st_ino
    with tarfile.open(out / by_shard[1]["fileName"], "r:gz") as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf}  # type: ignore[union-attr]
    assert got == {
        "db/autogen/1/000000001-000000001.tsm": a,
        "db/autogen/1/000000003-000000001.tsm": c,
    }
    unpacked = len(gzip.decompress((out / by_shard[1]["fileName"]).read_bytes()))
    assert by_shard[1]["size"] == unpacked
