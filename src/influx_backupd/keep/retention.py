"""Retention: which runs of one job to keep, which to delete, and why.

Grandfather-father-son over backup start times (UTC), restic style: every rule
is applied on its own to the ok backups, and a backup may satisfy several rules
at once ("keep_daily=7" keeps the newest ok backup of each of the 7 newest days
that have one, whatever the other rules picked).

Chains (hot backups: a full and its increments) are kept or deleted as one
unit. The rules select individual ok backups; every selected backup then keeps
its whole chain (all ok members, earlier and later). Selecting per backup
rather than per chain keeps each rule's promise literally: a day whose only ok
backup is a chain's full still counts as a day. Keeping the whole chain, not
just the prefix a selection depends on, never leaves a chain half-pruned, so
the hot job never extends a chain whose tail was deleted.

Statuses: "running" is never touched (a backup may be in flight) and keeps its
chain too, since an increment being written depends on it; "failed" and
"interrupted" are always deleted (their leftovers are cleaned), even inside a
kept chain; only good backups ("ok", no failed check since) count toward any rule.

A backup whose check failed since (or an increment on a link whose check failed) is no good
backup, but it is not deleted for that: the check may have failed for a reason outside it (a
storage mount that was down, a throwaway influxd that would not start) and it may hold the
newest data there is. It is kept until the
good backups the rules keep are all newer than it (with no rule, for ever) — and in any case
while the rules would keep it were its check good — and a kept chain keeps it like any member.

A backup whose restart lost points (the live server served fewer after the cold run's restart
than before its stop) holds the only copy of them: it is kept for LOST_POINTS_HOLD_DAYS after it
was taken, whatever the rules say, so that the operator the alert woke has time to restore them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from influx_backupd.store.chain import ChainCut, parents
from influx_backupd.store.record import RunRecord, dated_ahead

LOST_POINTS_HOLD_DAYS = 30


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups each rule keeps; all zero means keep everything."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # bool is an int subclass; "keep_daily = true" in TOML is a mistake.
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{f.name} must be an integer >= 0, got {value!r}")

    @property
    def has_rules(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@dataclass
class RetentionPlan:
    keep: list[RunRecord] = field(default_factory=list)
    delete: list[RunRecord] = field(default_factory=list)
    # record id -> why it is kept; only kept records have an entry
    reasons: dict[str, list[str]] = field(default_factory=dict)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def hour_of(ts: float) -> str:
    return _utc(ts).strftime("%Y-%m-%dT%H")


def day_of(ts: float) -> str:
    return _utc(ts).strftime("%Y-%m-%d")


def week_of(ts: float) -> str:
    iso = _utc(ts).isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def month_of(ts: float) -> str:
    return _utc(ts).strftime("%Y-%m")


# (reason label, policy field, period of a start time)
BUCKETS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("hourly", "keep_hourly", hour_of),
    ("daily", "keep_daily", day_of),
    ("weekly", "keep_weekly", week_of),
    ("monthly", "keep_monthly", month_of),
)


def chain_key(record: RunRecord, members: dict[str, RunRecord]) -> str:
    """The chain a record belongs to: its chain_id, else its own id for a full.

    An increment without chain_id (legacy or malformed) follows parent_id
    through `members` (ok and running records only, so the answer is the same
    after failed runs are pruned — that keeps plan() idempotent); a parent that
    is not there names the chain.
    """
    current = record
    visited: set[str] = set()
    while True:
        if current.chain_id:
            return current.chain_id
        if current.kind == "full" or not current.parent_id or current.id in visited:
            return current.id
        visited.add(current.id)
        parent = members.get(current.parent_id)
        if parent is None:
            return current.parent_id
        current = parent


def _on_failed_link(
    record: RunRecord, members: dict[str, RunRecord], failed: Callable[[RunRecord], bool]
) -> bool:
    """An earlier link of record's chain failed its last check (or its files are gone), or is
    not kept as ok: the chain cannot be restored. A loop of parents is chain_key's to name."""
    try:
        return any(failed(parent) for parent in parents(record, members))
    except ChainCut as cut:
        return cut.parent is None


def _selected(oks: list[RunRecord], policy: RetentionPolicy) -> dict[str, list[str]]:
    """The rules applied to oks (newest first): each backup they keep, with why."""
    reasons: dict[str, list[str]] = {}

    def mark(record: RunRecord, why: str) -> None:
        reasons.setdefault(record.id, []).append(why)

    if not policy.has_rules:
        for r in oks:
            mark(r, "no retention rule set")
        return reasons
    if oks:
        mark(oks[0], "newest ok")
    for i, r in enumerate(oks[: policy.keep_last]):
        mark(r, f"last {i + 1}/{policy.keep_last}")
    for label, attr, period_of in BUCKETS:
        wanted: int = getattr(policy, attr)
        if not wanted:
            continue
        seen: set[str] = set()
        for r in oks:  # newest first, so the first of each period is its newest
            period = period_of(r.started_at)
            if period in seen:
                continue
            seen.add(period)
            mark(r, f"{label} {period}")
            if len(seen) == wanted:
                break
    return reasons


def _newest_first(records: Sequence[RunRecord]) -> list[RunRecord]:
    return sorted(records, key=lambda r: (r.started_at, r.id), reverse=True)


def plan(
    records: Sequence[RunRecord],
    policy: RetentionPolicy,
    *,
    now: float,
    missing: Collection[str] = (),
    aside: Mapping[str, str] | None = None,
) -> RetentionPlan:
    """Split one job's runs into keep and delete, newest first in each list. missing: the ids
    of backups whose files are gone, which restore nothing: as a failed check, they never take
    a restorable backup's place, nor do their chain's later links.

    The rules count periods that have a backup, not periods back from now; `now` ends the hold
    of a backup whose restart lost points (LOST_POINTS_HOLD_DAYS), and tells the backups dated
    in the future (taken while the clock was ahead): each is kept, counted by no rule until its
    date has passed (ranked newest, they took the rules' places and today's backups went).
    aside: backups kept and counted by no rule either (id → why: not the caller's to judge).
    """
    ordered = _newest_first(records)
    aside = dict(aside or {})
    for r in ordered:
        if r.ok and dated_ahead(r, now):
            when = _utc(max(r.started_at, r.finished_at or 0.0)).strftime("%Y-%m-%d %H:%M")
            aside.setdefault(
                r.id, f"dated in the future ({when} UTC): kept, counted by no rule until then"
            )
    members = {r.id: r for r in ordered if r.status in ("ok", "running")}

    # an increment restores only as well as its earlier links: one on a link whose check
    # failed is no good backup either (it would take a rule's place from a restorable one)
    def failed(r: RunRecord) -> bool:
        return r.failed_check or (r.ok and r.id in missing)

    unproven = {r.id for r in ordered if failed(r) or _on_failed_link(r, members, failed)}
    # what the rules count
    oks = [r for r in ordered if r.good and r.id not in unproven and r.id not in aside]
    checked_bad = [r for r in ordered if r.ok and r.id in unproven]
    reasons = _selected(oks, policy)
    # what the rules would keep were every check good: a failed check never has them delete a
    # backup they would otherwise keep
    as_if_good = _selected([r for r in ordered if r.ok and r.id not in aside], policy)

    def mark(record: RunRecord, why: str) -> None:
        reasons.setdefault(record.id, []).append(why)

    for r in ordered:
        if r.status == "running":
            mark(r, "running")
        elif r.id in aside:
            mark(r, aside[r.id])
    kept_good = [r.started_at for r in oks if r.id in reasons]
    for r in checked_bad:
        newer = not kept_good or r.started_at >= min(kept_good)
        if r.id not in reasons and (newer or r.id in as_if_good):
            what = (
                "its files are gone"
                if r.id in missing
                else "its check failed"
                if r.failed_check
                else "a check of an earlier link failed"
            )
            mark(r, f"{what}: kept until the good backups kept are all newer")

    hold_s = LOST_POINTS_HOLD_DAYS * 86400
    for r in ordered:
        lost = r.lost_at_restart if r.ok else {}
        if lost and now - r.started_at < hold_s:
            until = _utc(r.started_at + hold_s).strftime("%Y-%m-%d")
            dbs = ", ".join(f"{db} ({n} points)" for db, n in sorted(lost.items()))
            mark(r, f"holds what the live server lost at its restart: {dbs}; kept until {until}")

    # Whole chains: the newest anchoring member names the reason.
    keys = {rid: chain_key(r, members) for rid, r in members.items()}
    anchors: dict[str, str] = {}
    for r in ordered:
        if r.id in reasons and r.id in keys:
            anchors.setdefault(keys[r.id], r.id)
    for r in ordered:
        key = keys.get(r.id)
        if r.ok and r.id not in reasons and key in anchors:
            mark(r, f"chain {key} (kept with {anchors[key]})")

    result = RetentionPlan(reasons=reasons)
    for r in ordered:
        (result.keep if r.id in reasons else result.delete).append(r)
    return result
