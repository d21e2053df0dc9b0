"""prune's hold: backups kept whatever the rules say (not off-site yet), with their chains."""

from __future__ import annotations

from influx_backupd.keep.prune import _holding
from influx_backupd.store.record import RunRecord
from tests.unit.keep.test_retention import cold, hot, ids, run


def _by_id(records: list[RunRecord]) -> dict[str, RunRecord]:
    return {r.id: r for r in records}


def test_a_held_increment_keeps_every_earlier_link_of_its_chain() -> None:
    records = [
        hot("f1", "2026-11-01 01:00", chain="f1"),
        hot("i1", "2026-11-02 01:00", chain="f1", parent="f1"),
        hot("i2", "2026-11-03 01:00", chain="f1", parent="i1"),
        hot("f2", "2026-11-04 01:00", chain="f2"),
        cold("c0", "2026-10-01 01:00"),
    ]
    planned = run(records, keep_last=1)
    assert "i2" in ids(planned.delete) and "f1" in ids(planned.delete)
    held = _holding(planned, _by_id(records), {"i2": "not off-site yet"})
    assert set(ids(held.keep)) == {"f2", "i2", "i1", "f1"}
    assert ids(held.delete) == ["c0"]
    assert held.reasons["i2"] == ["not off-site yet"]
    assert held.reasons["f1"] == ["an earlier link of i2: not off-site yet"]


def test_a_looping_chain_ends_the_walk() -> None:
    records = [
        hot("a", "2026-11-01 01:00", chain="a", parent="b"),
        hot("b", "2026-11-02 01:00", chain="a", parent="a"),
        hot("new", "2026-11-05 01:00", chain="new"),
    ]
    planned = run(records, keep_last=1)
    held = _holding(planned, _by_id(records), {"a": "not off-site yet"})
    assert set(ids(held.keep)) >= {"a", "b", "new"}


def test_nothing_held_is_the_plan_itself() -> None:
    records = [cold("a", "2026-11-01 01:00"), cold("b", "2026-11-02 01:00")]
    planned = run(records, keep_last=1)
    assert _holding(planned, _by_id(records), {}) is planned
    assert _holding(planned, _by_id(records), {"zz": "unknown id"}) is planned
