from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from influx_backupd.keep.retention import (
    RetentionPlan,
    RetentionPolicy,
    day_of,
    hour_of,
    month_of,
    plan,
    week_of,
)
from influx_backupd.store.record import STATUSES, RunRecord, Status

NOW = datetime(2027, 3, 1, tzinfo=UTC).timestamp()


def ts(text: str) -> float:
    """'2026-11-25 13:05' (UTC) -> epoch seconds."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


def cold(rid: str, when: str, status: Status = "ok") -> RunRecord:
    return RunRecord(id=rid, job="j", mode="cold", status=status, started_at=ts(when))


def hot(
    rid: str,
    when: str,
    *,
    chain: str | None,
    parent: str | None = None,
    status: Status = "ok",
) -> RunRecord:
    return RunRecord(
        id=rid,
        job="j",
        mode="hot",
        status=status,
        started_at=ts(when),
        kind="incremental" if parent else "full",
        chain_id=chain,
        parent_id=parent,
    )


def ids(records: Sequence[RunRecord]) -> list[str]:
    return [r.id for r in records]


def run(records: Sequence[RunRecord], **policy: int) -> RetentionPlan:
    return plan(records, RetentionPolicy(**policy), now=NOW)


# --- policy -----------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3"])
def test_policy_rejects_non_counts(bad: Any) -> None:
    with pytest.raises(ValueError, match="keep_daily must be an integer >= 0"):
        RetentionPolicy(keep_daily=bad)


def test_policy_has_rules() -> None:
    assert not RetentionPolicy().has_rules
    assert RetentionPolicy(keep_monthly=1).has_rules


# --- periods ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "hour", "day", "week", "month"),
    [
        ("2026-11-25 13:59", "2026-11-25T13", "2026-11-25", "2026-W48", "2026-11"),
        # 2026 has 53 ISO weeks: Thu 31 Dec 2026 and Fri 1 Jan 2027 share a week
        ("2026-12-31 23:59", "2026-12-31T23", "2026-12-31", "2026-W53", "2026-12"),
        ("2027-01-01 00:00", "2027-01-01T00", "2027-01-01", "2026-W53", "2027-01"),
        ("2027-01-04 00:00", "2027-01-04T00", "2027-01-04", "2027-W01", "2027-01"),
    ],
)
def test_periods_are_utc(when: str, hour: str, day: str, week: str, month: str) -> None:
    t = ts(when)
    assert (hour_of(t), day_of(t), week_of(t), month_of(t)) == (hour, day, week, month)


# --- rules ------------------------------------------------------------------


def test_all_zero_policy_keeps_every_ok_and_running() -> None:
    records = [
        cold("a", "2026-11-01 00:00"),
        cold("b", "2026-11-02 00:00", "failed"),
        cold("c", "2026-11-03 00:00", "interrupted"),
        cold("d", "2026-11-04 00:00"),
        cold("e", "2026-11-05 00:00", "running"),
    ]
    p = run(records)
    assert ids(p.keep) == ["e", "d", "a"]
    assert ids(p.delete) == ["c", "b"]
    assert p.reasons["a"] == ["no retention rule set"]
    assert p.reasons["e"] == ["running"]


def test_keep_last() -> None:
    records = [cold(f"r{h}", f"2026-11-25 {h:02d}:00") for h in range(5)]
    p = run(records, keep_last=3)
    assert ids(p.keep) == ["r4", "r3", "r2"]
    assert ids(p.delete) == ["r1", "r0"]
    assert p.reasons["r4"] == ["newest ok", "last 1/3"]
    assert p.reasons["r2"] == ["last 3/3"]


def test_keep_last_skips_failed_runs() -> None:
    records = [
        cold("old", "2026-11-25 01:00"),
        cold("ok", "2026-11-25 02:00"),
        cold("bad", "2026-11-25 03:00", "failed"),
    ]
    p = run(records, keep_last=2)
    assert ids(p.keep) == ["ok", "old"]
    assert ids(p.delete) == ["bad"]


def test_keep_hourly_takes_newest_of_each_hour_and_skips_empty_hours() -> None:
    records = [
        cold("h10a", "2026-11-25 10:05"),
        cold("h10b", "2026-11-25 10:55"),
        # no backup at 11:00 — an hour without one does not use up the count
        cold("h12a", "2026-11-25 12:10"),
        cold("h12b", "2026-11-25 12:20"),
        cold("h09", "2026-11-25 09:00"),
    ]
    p = run(records, keep_hourly=2)
    assert ids(p.keep) == ["h12b", "h10b"]
    assert p.reasons["h10b"] == ["hourly 2026-11-25T10"]
    assert ids(p.delete) == ["h12a", "h10a", "h09"]


def test_keep_daily_uses_utc_days() -> None:
    records = [
        cold("d1", "2026-11-24 23:30"),
        cold("d2", "2026-11-25 00:30"),
        cold("d2-early", "2026-11-25 00:10"),
        cold("d0", "2026-11-23 12:00"),
    ]
    p = run(records, keep_daily=2)
    assert ids(p.keep) == ["d2", "d1"]
    assert p.reasons["d1"] == ["daily 2026-11-24"]
    assert ids(p.delete) == ["d2-early", "d0"]


def test_keep_weekly_uses_iso_weeks_across_new_year() -> None:
    records = [
        cold("thu", "2026-12-31 12:00"),
        cold("fri", "2027-01-01 12:00"),  # same ISO week 2026-W53
        cold("prev", "2026-12-24 12:00"),  # 2026-W52
        cold("older", "2026-12-17 12:00"),  # 2026-W51
    ]
    p = run(records, keep_weekly=2)
    assert ids(p.keep) == ["fri", "prev"]
    assert p.reasons["prev"] == ["weekly 2026-W52"]


def test_keep_monthly() -> None:
    records = [
        cold("nov-a", "2026-11-01 00:00"),
        cold("nov-b", "2026-11-30 23:59"),
        cold("dec", "2026-12-01 00:00"),
        cold("sep", "2026-09-15 00:00"),  # October has none: skipped, not counted
        cold("aug", "2026-08-15 00:00"),
    ]
    p = run(records, keep_monthly=3)
    assert ids(p.keep) == ["dec", "nov-b", "sep"]
    assert p.reasons["sep"] == ["monthly 2026-09"]


def test_rules_are_independent_and_reasons_accumulate() -> None:
    records = [
        cold("a", "2026-11-24 10:00"),
        cold("b", "2026-11-25 09:00"),
        cold("c", "2026-11-25 10:00"),
    ]
    p = run(records, keep_last=1, keep_daily=2, keep_monthly=1)
    # restic style: "c" satisfies keep_last, daily and monthly at once
    assert p.reasons["c"] == ["newest ok", "last 1/1", "daily 2026-11-25", "monthly 2026-11"]
    assert p.reasons["a"] == ["daily 2026-11-24"]
    assert ids(p.delete) == ["b"]


def test_running_is_never_touched_and_failed_always_deleted() -> None:
    records = [
        cold("old", "2026-11-20 00:00"),
        cold("run", "2026-11-21 00:00", "running"),
        cold("fail", "2026-11-25 00:00", "failed"),
        cold("intr", "2026-11-25 01:00", "interrupted"),
        cold("new", "2026-11-24 00:00"),
    ]
    p = run(records, keep_last=5, keep_daily=5)
    assert ids(p.keep) == ["new", "run", "old"]
    assert ids(p.delete) == ["intr", "fail"]
    assert "fail" not in p.reasons


def test_no_ok_backup_at_all() -> None:
    records = [cold("f", "2026-11-25 00:00", "failed"), cold("r", "2026-11-25 01:00", "running")]
    p = run(records, keep_last=1)
    assert ids(p.keep) == ["r"]
    assert ids(p.delete) == ["f"]


def test_empty_input() -> None:
    p = run([], keep_last=3)
    assert (p.keep, p.delete, p.reasons) == ([], [], {})


# --- chains -----------------------------------------------------------------


def chain_records() -> list[RunRecord]:
    # F1 <- I1 <- I2 on three days, then a cold backup after the chain
    return [
        hot("F1", "2026-11-23 00:00", chain="F1"),
        hot("I1", "2026-11-24 00:00", chain="F1", parent="F1"),
        hot("I2", "2026-11-25 00:00", chain="F1", parent="I1"),
        cold("C", "2026-11-25 06:00"),
    ]


def test_kept_increment_keeps_its_whole_chain() -> None:
    records = [*chain_records()[:3], hot("F0", "2026-11-22 00:00", chain=None)]
    p = run(records, keep_last=1)
    assert ids(p.keep) == ["I2", "I1", "F1"]
    assert ids(p.delete) == ["F0"]
    assert p.reasons["F1"] == ["chain F1 (kept with I2)"]


def test_chain_no_rule_selects_is_deleted_whole() -> None:
    p = run(chain_records(), keep_last=1)
    assert ids(p.keep) == ["C"]
    assert ids(p.delete) == ["I2", "I1", "F1"]


def test_selecting_an_early_member_keeps_later_members_too() -> None:
    # keep_daily=3 selects C (25th), I1 (24th), F1 (23rd); I2 comes with its chain
    p = run(chain_records(), keep_daily=3)
    assert ids(p.keep) == ["C", "I2", "I1", "F1"]
    assert p.reasons["I2"] == ["chain F1 (kept with I1)"]


def test_chain_full_alone_on_its_day_still_counts_for_daily() -> None:
    # Bucketing chains by their newest member would merge day A into day B and
    # lose day A; per-backup selection keeps the promise of two days.
    records = [
        hot("FA", "2026-11-24 12:00", chain="FA"),
        hot("IB", "2026-11-25 08:00", chain="FA", parent="FA"),
        hot("FB", "2026-11-25 12:00", chain="FB"),
    ]
    p = run(records, keep_daily=2)
    assert ids(p.keep) == ["FB", "IB", "FA"]


def test_full_with_chain_id_none_is_its_own_chain() -> None:
    records = [
        hot("F", "2026-11-23 00:00", chain=None),
        hot("I", "2026-11-24 00:00", chain="F", parent="F"),
        cold("old", "2026-11-01 00:00"),
    ]
    p = run(records, keep_last=1)
    assert ids(p.keep) == ["I", "F"]
    assert ids(p.delete) == ["old"]


def test_increment_without_chain_id_follows_parents() -> None:
    records = [
        hot("F", "2026-11-23 00:00", chain=None),
        hot("I1", "2026-11-24 00:00", chain=None, parent="F"),
        hot("I2", "2026-11-25 00:00", chain=None, parent="I1"),
    ]
    p = run(records, keep_last=1)
    assert ids(p.keep) == ["I2", "I1", "F"]


def test_an_increment_on_a_failed_parent_takes_no_place_and_prune_is_idempotent() -> None:
    # I2's chain runs through the failed I1: it restores nothing, so it never takes the place
    # of F, the one restorable backup (before, keep_last=1 kept I2 alone and deleted F). It is
    # kept beside, as a backup whose check failed is, while no good backup kept is newer.
    records = [
        hot("F", "2026-11-23 00:00", chain=None),
        hot("I1", "2026-11-24 00:00", chain=None, parent="F", status="failed"),
        hot("I2", "2026-11-25 00:00", chain=None, parent="I1"),
    ]
    first = run(records, keep_last=1)
    assert ids(first.keep) == ["I2", "F"]
    assert ids(run(first.keep, keep_last=1).keep) == ["I2", "F"]


def test_failed_member_of_kept_chain_is_still_deleted() -> None:
    records = [
        *chain_records()[:3],
        hot("Ibad", "2026-11-25 03:00", chain="F1", parent="I2", status="failed"),
    ]
    p = run(records, keep_last=1)
    assert ids(p.keep) == ["I2", "I1", "F1"]
    assert ids(p.delete) == ["Ibad"]


def test_running_increment_keeps_its_chain() -> None:
    records = [
        *chain_records(),
        hot("Irun", "2026-11-25 07:00", chain="F1", parent="I2", status="running"),
    ]
    # keep_last=1 alone would keep only C; the in-flight increment needs F1..I2
    p = run(records, keep_last=1)
    assert ids(p.keep) == ["Irun", "C", "I2", "I1", "F1"]
    assert p.reasons["F1"] == ["chain F1 (kept with Irun)"]


def test_idempotent_on_example() -> None:
    records = [*chain_records(), cold("x", "2026-11-25 05:00", "failed")]
    first = run(records, keep_daily=2)
    second = run(first.keep, keep_daily=2)
    assert ids(second.keep) == ids(first.keep)
    assert second.delete == []


# --- properties on synthetic catalogs ----------------------------------------

BASE = ts("2026-10-01 00:00")
SPAN = 120 * 86400  # four months: crosses hours, days, weeks, months


@dataclass
class Catalog:
    records: list[RunRecord]
    chain_of: dict[str, str]  # record id -> ground-truth chain (hot records only)


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    records: list[RunRecord] = []
    chain_of: dict[str, str] = {}
    status = st.sampled_from(STATUSES)
    # fine offsets so several backups share an hour, coarse so periods differ
    offset = st.one_of(st.integers(0, SPAN), st.integers(0, 6 * 3600))
    for _ in range(draw(st.integers(0, 8))):
        rid = f"r{len(records)}"
        if draw(st.booleans()):
            records.append(
                RunRecord(
                    id=rid,
                    job="j",
                    mode="cold",
                    status=draw(status),
                    started_at=BASE + draw(offset),
                )
            )
            continue
        full_id = rid
        t = float(BASE + draw(offset))
        records.append(
            RunRecord(
                id=full_id,
                job="j",
                mode="hot",
                status=draw(status),
                started_at=t,
                chain_id=draw(st.sampled_from([None, full_id])),
            )
        )
        chain_of[full_id] = full_id
        parent = full_id
        for _ in range(draw(st.integers(0, 4))):
            rid = f"r{len(records)}"
            t += draw(st.integers(1, 3 * 86400))
            records.append(
                RunRecord(
                    id=rid,
                    job="j",
                    mode="hot",
                    status=draw(status),
                    started_at=t,
                    kind="incremental",
                    chain_id=full_id,
                    parent_id=parent,
                )
            )
            chain_of[rid] = full_id
            parent = rid
    return Catalog(draw(st.permutations(records)), chain_of)


policies = st.builds(
    RetentionPolicy,
    keep_last=st.integers(0, 4),
    keep_hourly=st.integers(0, 4),
    keep_daily=st.integers(0, 4),
    keep_weekly=st.integers(0, 3),
    keep_monthly=st.integers(0, 3),
)


def newest_ok(records: Sequence[RunRecord]) -> RunRecord | None:
    oks = [r for r in records if r.ok]
    return max(oks, key=lambda r: (r.started_at, r.id)) if oks else None


@settings(max_examples=300, deadline=None)
@given(catalogs(), policies)
def test_property_partition_and_statuses(cat: Catalog, policy: RetentionPolicy) -> None:
    p = plan(cat.records, policy, now=NOW)
    kept, deleted = ids(p.keep), ids(p.delete)
    assert sorted(kept + deleted) == sorted(ids(cat.records))
    assert not set(kept) & set(deleted)
    for r in cat.records:
        if r.status == "running":
            assert r.id in kept
        if r.status in ("failed", "interrupted"):
            assert r.id in deleted
    assert set(p.reasons) == set(kept)
    assert all(p.reasons[k] for k in kept)


@settings(max_examples=300, deadline=None)
@given(catalogs(), policies)
def test_property_newest_ok_is_kept(cat: Catalog, policy: RetentionPolicy) -> None:
    newest = newest_ok(cat.records)
    p = plan(cat.records, policy, now=NOW)
    if newest is not None:
        assert newest.id in ids(p.keep)


@settings(max_examples=300, deadline=None)
@given(catalogs(), policies)
def test_property_dependencies_of_kept_increments_are_kept(
    cat: Catalog, policy: RetentionPolicy
) -> None:
    p = plan(cat.records, policy, now=NOW)
    kept = set(ids(p.keep))
    for inc in p.keep:
        if inc.kind != "incremental":
            continue
        chain = cat.chain_of[inc.id]
        for dep in cat.records:
            earlier = dep.started_at < inc.started_at
            if cat.chain_of.get(dep.id) == chain and earlier and dep.ok:
                assert dep.id in kept, f"{inc.id} kept but its dependency {dep.id} deleted"


@settings(max_examples=300, deadline=None)
@given(catalogs(), policies)
def test_property_idempotent(cat: Catalog, policy: RetentionPolicy) -> None:
    first = plan(cat.records, policy, now=NOW)
    second = plan(first.keep, policy, now=NOW)
    assert ids(second.keep) == ids(first.keep)
    assert second.delete == []


@settings(max_examples=300, deadline=None)
@given(catalogs())
def test_property_all_zero_policy_deletes_no_ok(cat: Catalog) -> None:
    p = plan(cat.records, RetentionPolicy(), now=NOW)
    assert not [r.id for r in p.delete if r.ok]


@settings(max_examples=300, deadline=None)
@given(catalogs(), policies)
def test_property_buckets_keep_what_they_promise(cat: Catalog, policy: RetentionPolicy) -> None:
    p = plan(cat.records, policy, now=NOW)
    kept = set(ids(p.keep))
    oks = sorted((r for r in cat.records if r.ok), key=lambda r: (r.started_at, r.id))
    assert {r.id for r in oks[::-1][: policy.keep_last]} <= kept
    for n, period_of in [
        (policy.keep_hourly, hour_of),
        (policy.keep_daily, day_of),
        (policy.keep_weekly, week_of),
        (policy.keep_monthly, month_of),
    ]:
        newest_in: dict[str, RunRecord] = {}
        for r in oks:  # oldest first, so the last write per period wins
            newest_in[period_of(r.started_at)] = r
        for period in sorted(newest_in, reverse=True)[:n]:
            assert newest_in[period].id in kept, f"{period} promised but not kept"


@settings(max_examples=200, deadline=None)
@given(catalogs(), policies)
def test_property_nothing_kept_without_a_rule_or_chain(
    cat: Catalog, policy: RetentionPolicy
) -> None:
    """The other side of the promise: with only cold backups, exactly the selected are kept."""
    colds = [r for r in cat.records if r.mode == "cold"]
    p = plan(colds, policy, now=NOW)
    oks = sorted((r for r in colds if r.ok), key=lambda r: (r.started_at, r.id), reverse=True)
    if not policy.has_rules:
        expected = {r.id for r in oks}
    else:
        expected = {r.id for r in oks[: max(1, policy.keep_last)]}
        for n, period_of in [
            (policy.keep_hourly, hour_of),
            (policy.keep_daily, day_of),
            (policy.keep_weekly, week_of),
            (policy.keep_monthly, month_of),
        ]:
            first_of: dict[str, str] = {}
            for r in oks:
                first_of.setdefault(period_of(r.started_at), r.id)
            expected |= {first_of[k] for k in sorted(first_of, reverse=True)[:n]}
    expected |= {r.id for r in colds if r.status == "running"}
    assert set(ids(p.keep)) == expected


# --- backups whose check failed since ---------------------------------------------------------


def checked_bad(record: RunRecord) -> RunRecord:
    record.verify_status = "failed"
    return record


def test_a_failed_check_alone_deletes_nothing() -> None:
    """Every backup's check failed (a storage mount that was down during verify): before, the
    next prune deleted them all, the newest included, with or without rules."""
    records = [checked_bad(cold(f"C{i}", f"2026-11-2{i} 00:00")) for i in range(1, 5)]
    for policy in ({}, {"keep_last": 1}, {"keep_daily": 2, "keep_weekly": 1}):
        p = run(records, **policy)
        assert p.delete == [], policy


def test_a_failed_check_is_kept_until_the_good_backups_kept_are_all_newer() -> None:
    records = [
        checked_bad(cold("OLD", "2026-11-20 00:00")),
        cold("G1", "2026-11-21 00:00"),
        checked_bad(cold("MID", "2026-11-22 00:00")),
        cold("G2", "2026-11-23 00:00"),
    ]
    p = run(records, keep_last=2)
    assert ids(p.keep) == ["G2", "MID", "G1"], "the rules count good backups only"
    assert ids(p.delete) == ["OLD"]
    assert p.reasons["MID"] == ["its check failed: kept until the good backups kept are all newer"]
    p = run([*records, cold("G3", "2026-11-24 00:00")], keep_last=2)
    assert ids(p.keep) == ["G3", "G2"] and ids(p.delete) == ["MID", "G1", "OLD"]


def test_a_kept_increment_keeps_the_full_whose_check_failed() -> None:
    """The full's check failed; its increments are good and kept: deleting the full would leave
    them unrestorable (before: the full was deleted, the increments kept)."""
    full, i1, i2, c = chain_records()
    p = run([checked_bad(full), i1, i2, c], keep_last=2)
    assert "F1" in ids(p.keep) and p.delete == []


def test_an_increment_on_a_link_whose_check_failed_counts_for_no_rule() -> None:
    """Before: B1 (on a full whose check failed) took keep_last's place, and A0, the only
    restorable backup older than C0, was deleted."""
    records = [
        hot("A0", "2026-11-20 00:00", chain="A0"),
        checked_bad(hot("B0", "2026-11-21 00:00", chain="B0")),
        hot("B1", "2026-11-22 00:00", chain="B0", parent="B0"),
        hot("C0", "2026-11-23 00:00", chain="C0"),
        hot("C1", "2026-11-24 00:00", chain="C0", parent="C0"),
    ]
    p = run(records, keep_last=3)
    assert ids(p.keep) == ["C1", "C0", "B1", "B0", "A0"]
    assert p.reasons["B1"] == [
        "a check of an earlier link failed: kept until the good backups kept are all newer"
    ]
    assert p.reasons["A0"] == ["last 3/3"]


def lost_points(rid: str, when: str, served_less: dict[str, Any]) -> RunRecord:
    record = cold(rid, when)
    record.extra = {"served_after_start_s": 0.02, "served_less": served_less}
    return record


def test_a_backup_whose_restart_lost_points_is_kept_for_30_days_whatever_the_rules() -> None:
    """The only copy of points the live server lost at the run's restart: the alert's reader
    gets a month to restore them, where keep_last = 1 would delete it at the next run."""
    records = [
        lost_points("lost", "2027-02-20 03:00", {"db1": {"before": 300, "after": 0}}),
        lost_points("same", "2027-02-21 03:00", {"db1": {"before": 5, "after": 5}}),
        cold("newer", "2027-02-28 03:00"),
    ]
    policy = RetentionPolicy(keep_last=1)

    within = plan(records, policy, now=ts("2027-03-01 00:00"))
    assert ids(within.keep) == ["newer", "lost"] and ids(within.delete) == ["same"]
    assert within.reasons["lost"] == [
        "holds what the live server lost at its restart: db1 (300 points); kept until 2027-03-22"
    ]

    after = plan(records, policy, now=ts("2027-03-22 03:01"))
    assert ids(after.keep) == ["newer"] and ids(after.delete) == ["same", "lost"]


def test_backups_dated_in_the_future_are_kept_and_take_no_rules_place() -> None:
    """Taken while the clock was 30 days ahead, for a week: before, they ranked newest, filled
    keep_last and keep_daily, and prune removed four of the five backups of today's data (only
    the newest present one was held) for as long as the clock had been ahead. Now each is kept,
    counted by no rule until its date has passed."""
    future = [cold(f"f{d}", f"2027-03-{d} 03:00") for d in range(24, 31)]
    present = [cold(f"p{d}", f"2027-02-{d} 03:00") for d in range(24, 29)]
    result = run(future + present, keep_last=3, keep_daily=7)
    assert result.delete == []
    assert all("dated in the future" in " ".join(result.reasons[r.id]) for r in future)
    assert result.reasons["p28"] == ["newest ok", "last 1/3", "daily 2027-02-28"]
    assert result.reasons["p24"] == ["daily 2027-02-24"]


def test_a_chain_with_a_link_dated_in_the_future_is_kept_whole() -> None:
    full = hot("full", "2027-02-27 03:00", chain="c")
    later = hot("inc", "2027-03-20 03:00", chain="c", parent="full")  # the clock ahead
    newer = [cold(f"p{d}", f"2027-02-{d} 04:00") for d in (27, 28)]
    result = run([full, later, *newer], keep_last=1)
    assert ids(result.keep) == ["inc", "p28", "full"], result.reasons
    assert ids(result.delete) == ["p27"]
