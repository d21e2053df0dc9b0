"""Where the next hot backup goes in its chain: a pure decision from the job's history (a new
full after full_every, a broken link, another flavour or host, or increments that outgrew the
full), and the -since an increment takes, on the server's clock."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from influx_backupd.core.paths import real
from influx_backupd.store.catalog import ChainEnd
from influx_backupd.store.chain import ShardListing, link_problem, listing_of
from influx_backupd.store.record import Flavour, RunRecord

# Increments smaller than this together never force a new full (about 5 s of SELECT INTO).
OUTGROWN_FLOOR = 256 << 20
# Date has whole seconds and a request takes a moment: a clock behind by more than this went back.
CLOCK_STEP_S = 5.0
SINCE_MARGIN_S = CLOCK_STEP_S + 1.0  # -since this much before the last link's anchor


@dataclass(frozen=True)
class Clocks:
    """What the clocks say as a run plans its link (1.x increments: -since is a server time)."""

    ours: float  # our wall clock
    server: float | None  # the server's, from /ping's Date (None: unknown)
    steps_back: int  # this host's clock steps back the daemon has seen (store.state.ClockSteps)


@dataclass(frozen=True)
class LinkPlan:
    kind: Literal["full", "incremental"]
    chain_id: str | None  # None for a full: its own run id, set once known
    parent: RunRecord | None
    since: str | None  # RFC3339, 1.x increments only
    why: str


def rfc3339(ts: float) -> str:
    """Whole seconds, rounded down: an earlier -since only ever includes more."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def chain_links(records: list[RunRecord], chain_id: str) -> list[RunRecord]:
    """The ok links of one chain, oldest first."""
    links = [r for r in records if r.mode == "hot" and r.chain_id == chain_id and r.ok]
    return sorted(links, key=lambda r: (r.started_at, r.id))


def plan_link(
    history: list[RunRecord],
    *,
    full_every: float,
    now: float,
    flavour: Flavour,
    host: str,
    storage_dir: Path | None = None,
    exists: Callable[[Path], bool] = os.path.exists,
    problem: Callable[[RunRecord], str | None] = link_problem,
    clocks: Clocks | None = None,
    ends: Sequence[ChainEnd] = (),
    live: ShardListing | None = None,
) -> LinkPlan:
    """Full or incremental, from this job's earlier runs (any order). A chain is extended only
    while every link is there, good (no failed check: retention keeps such a link, but an
    increment on it would restore only as well as it does) and in storage_dir (a chain split
    across two dirs cannot be restored from the new one alone); and not past an end of the
    server's chains (ends, from the catalog: a whole-server restore since the chain's full),
    nor (1.x) when a live shard file (live: the shard listing taken now) predates -since yet is
    not as the last link's listing had it: an increment would leave it out."""
    hot = sorted((r for r in history if r.mode == "hot"), key=lambda r: (r.started_at, r.id))
    if not hot:
        return LinkPlan("full", None, None, None, "first hot run of this job")
    last = hot[-1]
    if not last.ok:
        return LinkPlan("full", None, None, None, f"the last hot run {last.id} is {last.status}")
    if last.flavour != flavour:
        return LinkPlan("full", None, None, None, "the influxd version changed")
    if last.backup_host != host:
        return LinkPlan("full", None, None, None, f"backup_host changed to {host}")
    if not last.chain_id:
        return LinkPlan("full", None, None, None, f"run {last.id} belongs to no chain")
    links = chain_links(hot, last.chain_id)
    if not links or links[0].kind != "full" or links[0].id != last.chain_id:
        return LinkPlan("full", None, None, None, f"chain {last.chain_id} has no ok full")
    for earlier, later in itertools.pairwise(links):
        if later.parent_id != earlier.id:
            return LinkPlan("full", None, None, None, f"chain {last.chain_id} has a gap")
    for link in links:
        if not link.archive or not exists(Path(link.archive)):
            return LinkPlan("full", None, None, None, f"link {link.id} is missing on disk")
        if link.failed_check:
            return LinkPlan("full", None, None, None, f"link {link.id} failed its last check")
        wrong = problem(link)
        if wrong is not None:
            return LinkPlan("full", None, None, None, wrong)
        if storage_dir is not None and not _within(Path(link.archive), storage_dir):
            return LinkPlan(
                "full", None, None, None, f"link {link.id} is not in storage.dir {storage_dir}"
            )
    for end in ends:
        if end.at >= links[0].started_at:
            return LinkPlan("full", None, None, None, f"{end.why}: a new chain")
    if now - links[0].started_at >= full_every:
        return LinkPlan("full", None, None, None, "full_every has passed since the chain's full")
    added = sum(link.bytes for link in links[1:])
    if flavour == "portable" and added >= max(links[0].bytes, OUTGROWN_FLOOR):
        # -since takes whole TSM files, and compactions rewrite them: increments can outgrow
        # the full, costing space, and, where the restore cannot merge them by files
        # (restore/merge.py), a SELECT * INTO each (slow, memory-hungry; see
        # docs/performance.md), while a full restores by file copy: start again. Small
        # increments restore in seconds whatever their ratio, hence the floor.
        return LinkPlan(
            "full",
            None,
            None,
            None,
            f"the increments of chain {last.chain_id} ({added} bytes) have outgrown its full "
            f"({links[0].bytes} bytes)",
        )
    if flavour == "portable" and clocks is not None:
        stepped = clock_stepped_back(links, clocks)
        if stepped is not None:
            return LinkPlan("full", None, None, None, stepped)
    if flavour == "portable" and live is not None:
        unheld = older_in_no_link(live, last)
        if unheld is not None:
            return LinkPlan("full", None, None, None, unheld)
    since = rfc3339(since_of(last)) if flavour == "portable" else None
    return LinkPlan("incremental", last.chain_id, last, since, f"extends chain {last.chain_id}")


def older_in_no_link(live: ShardListing, last: RunRecord) -> str | None:
    """Why an increment on last would miss a live file, or None: a file dated before -since
    (last's anchor: the increment leaves it out) that last's listing, taken right after its
    snapshot, does not have with that size and time, so no link holds it as it is: a restore
    of the server (tar keeps files' times) or a file moved into place since. Unknown without
    last's listing (a remote backup_host, a record from before listings): None."""
    before = listing_of(last)
    if before is None:
        return None
    since = since_of(last)  # -since as given
    for sid, files in sorted(live.items()):
        held = before.get(sid, {})
        for name, (size, mtime) in sorted(files.items()):
            if mtime > since:
                continue  # the increment takes it
            kept = held.get(name)
            if kept is not None and kept[0] == size and abs(kept[1] - mtime) < 1e-3:
                continue
            return (
                f"shard {sid}'s {name} is dated {rfc3339(mtime)}, before -since "
                f"{rfc3339(since)}, yet it was not live after link {last.id}: an increment "
                "would leave it out (a restore of the server or a file moved into place since)"
            )
    return None


def clock_stepped_back(links: list[RunRecord], clocks: Clocks) -> str | None:
    """Why an increment on these links could miss files because a clock went back, or None.

    influxd picks an increment's files by their times against -since (the last link's anchor,
    on its clock): files written while its clock was behind that anchor are dated before it and
    left out, with nothing to say so. Seen from here as: the server's clock now behind the
    anchor; ours behind the last link's start (the same clock, on one host); the server's clock
    gone back against ours since the last link (a remote server corrected); or a step back the
    daemon saw on this host since the chain's full. Any of them: a new full, which misses
    nothing."""
    last = links[-1]
    anchor = since_anchor(last)
    if clocks.server is not None and clocks.server < anchor - CLOCK_STEP_S:
        return (
            f"the server's clock ({rfc3339(clocks.server)}) is behind the anchor of link {last.id}"
            f" ({rfc3339(anchor)}): it went back, and files it wrote since may be dated before "
            "-since"
        )
    if clocks.ours < last.started_at - CLOCK_STEP_S:
        return (
            f"this host's clock ({rfc3339(clocks.ours)}) is behind the start of link {last.id} "
            f"({rfc3339(last.started_at)}): it went back since"
        )
    before = last.extra.get("server_clock_offset_s")
    if clocks.server is not None and isinstance(before, int | float):
        went_back = before - (clocks.server - clocks.ours)
        if went_back > CLOCK_STEP_S:
            return (
                f"the server's clock went back {went_back:.0f}s against ours since link "
                f"{last.id}: files it wrote since may be dated before -since"
            )
    seen = [link.extra.get("clock_steps_back") for link in links]
    counted = [n for n in seen if isinstance(n, int)]
    if counted and clocks.steps_back > min(counted):
        return "this host's clock was stepped back since the chain's full (the daemon saw it)"
    return None


def _within(archive: Path, storage_dir: Path) -> bool:
    """The archive lies in storage_dir (under whichever path names it: a symlink is not a move)."""
    return archive.parent == storage_dir or real(archive.parent) == real(storage_dir)


def since_of(last: RunRecord) -> float:
    """The -since of an increment on last: its anchor less the clock step the checks above
    let pass (CLOCK_STEP_S), in whole seconds, rounded down. A server whose clock went back by
    less (a remote one corrected: nothing here sees it) dates the files it wrote meanwhile
    before the anchor, and an increment from the anchor itself left them out: recorded ok,
    verified ok, a quarter of the points gone on restore (hot audit, a 4 s step). Files of the
    margin go in two links: harmless, a point is one per series and time."""
    return float(int(since_anchor(last) - SINCE_MARGIN_S))


def since_anchor(link: RunRecord) -> float:
    """When the link's snapshot began, on the server's clock (influxd compares -since with its
    own file times); our start time for records from before the server's clock was read."""
    anchor = link.since_anchor
    return float(anchor) if isinstance(anchor, int | float) else link.started_at
