"""Where the next hot backup goes in its chain: a pure decision from the job's history (a new
full after full_every, a broken link, another flavour or host, or increments that outgrew the
full), and the -since an increment takes, on the server's clock."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

# Date has whole seconds and the request takes a moment: beyond this, the clocks really differ.
from influx_backupd.store.chain import link_problem
from influx_backupd.store.record import Flavour, RunRecord

# Increments smaller than this together never force a new full (about 5 s of SELECT INTO).
OUTGROWN_FLOOR = 256 << 20


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
) -> LinkPlan:
    """Full or incremental, from this job's earlier runs (any order). A chain is extended only
    while every link is there, good (no failed check: retention keeps such a link, but an
    increment on it would restore only as well as it does) and in storage_dir (a chain split
    across two dirs cannot be restored from the new one alone)."""
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
    since = rfc3339(since_anchor(last)) if flavour == "portable" else None
    return LinkPlan("incremental", last.chain_id, last, since, f"extends chain {last.chain_id}")


def _within(archive: Path, storage_dir: Path) -> bool:
    """The archive lies in storage_dir (under whichever path names it: a symlink is not a move)."""
    return archive.parent == storage_dir or archive.parent.resolve() == storage_dir.resolve()


def since_anchor(link: RunRecord) -> float:
    """When the link's snapshot began, on the server's clock (influxd compares -since with its
    own file times); our start time for records from before the server's clock was read."""
    anchor = link.since_anchor
    return float(anchor) if isinstance(anchor, int | float) else link.started_at
