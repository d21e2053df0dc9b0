"""The run record: one per backup run, written even when the run fails.

Everything after a job (catalog, logs, metrics, hooks, retention) reads this.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from influx_backupd.core.names import BACKUP_ID, BACKUP_ID_RULE, JOB_NAME, JOB_NAME_RULE
from influx_backupd.core.shapes import shape_problem

Mode = Literal["cold", "hot"]
Status = Literal["running", "ok", "failed", "interrupted"]
Kind = Literal["full", "incremental"]

STATUSES: tuple[Status, ...] = ("running", "ok", "failed", "interrupted")

# The two kinds of hot backup: 0.9 snapshot files, 1.5+ `-portable` dirs.
Flavour = Literal["0.9", "portable"]


TYPED_FROM_EXTRA = ("flavour", "backup_host", "since_anchor", "snapshot_base", "dirs")


# What new_run_id gives, as a pattern (layout knows the names a run gives by it)
RUN_ID_PATTERN = r"\d{8}T\d{6}Z-[0-9a-f]{4,}"


def new_run_id(now: float | None = None) -> str:
    """Sortable by time, unique enough for one host: 20261126T122754Z-3f9a."""
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return stamp.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def window_rest(total: float, phases: Iterable[float | None]) -> float | None:
    """A stop window's time besides its named phases (the checks between the stop and the
    next: files still held, the staged tree), so that they add up to it; None under half a ms
    (rounding)."""
    rest = total - sum(seconds or 0.0 for seconds in phases)
    return rest if rest >= 0.0005 else None


@dataclass
class RunRecord:
    id: str
    job: str
    mode: Mode
    status: Status = "running"
    started_at: float = 0.0  # epoch seconds, UTC
    finished_at: float | None = None
    archive: str | None = None  # absolute path: a file (cold, 0.9 hot) or a directory (1.x hot)
    bytes: int = 0
    files: int = 0
    sha256: str | None = None
    # downtime phases, seconds; None when the phase did not happen
    stop_s: float | None = None
    copy_s: float | None = None
    start_s: float | None = None
    downtime_s: float | None = None
    prestage_s: float | None = None
    archive_s: float | None = None
    window_bytes: int | None = None  # bytes copied while influxd was stopped
    error: str | None = None
    # hot backups: a chain is a full and its increments, kept or deleted as one unit
    kind: Kind = "full"
    chain_id: str | None = None
    parent_id: str | None = None
    since: str | None = None  # RFC3339 -since used for an incremental
    # per-database figures taken at backup time, for restore tests: {db: points}
    db_counts: dict[str, int] | None = None
    verify_status: Literal["ok", "failed"] | None = None
    verified_at: float | None = None
    verify_detail: str | None = None
    # Data that later steps act on, typed. Records written before these fields existed kept
    # them in `extra`: from_dict moves them here.
    flavour: Flavour | None = None  # hot: picks the restore path and the chain rules
    backup_host: str | None = None  # hot: a new host starts a new chain
    since_anchor: float | None = None  # hot: the next increment's -since, on the server's clock
    snapshot_base: str | None = None  # 0.9 hot: the PATH its increments PATH.N sit beside
    dirs: list[str] | None = None  # cold: the server dirs archived (restore tests expect them)
    extra: dict[str, Any] = field(default_factory=dict)  # figures for people: phases, versions

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        extra = dict(values.get("extra") or {})
        for name in TYPED_FROM_EXTRA:
            if values.get(name) is None and name in extra:
                values[name] = extra.pop(name)
        values["extra"] = extra
        return cls(**values)

    @classmethod
    def problem(cls, data: object) -> str | None:
        """Why data (a record read back from the catalog, a sidecar or a manifest) cannot be a
        RunRecord: a missing id, job or mode, or a field of the wrong type; None when it can."""
        wrong = shape_problem(cls, data)
        if wrong is not None:
            return wrong
        assert isinstance(data, dict)
        job = data["job"]
        if not JOB_NAME.match(job):
            return f"job is {job!r:.60}, not a job name ({JOB_NAME_RULE})"
        # an id names files (prune guesses JOB-ID[.tar] for a run that died) and keys: never
        # a path ("../../x") or anything else that is not one name
        for key in ("id", "parent_id"):
            value = data.get(key)
            if value is not None and not BACKUP_ID.match(value):
                return f"{key} is {value!r:.60}, not a backup id ({BACKUP_ID_RULE})"
        for f in dataclasses.fields(cls):
            value = data.get(f.name)
            if f.name.endswith("_at") and value is not None and not 0 <= value < LAST_TIME:
                return f"{f.name} is {value!r:.60}, not a time between 1970 and 9999"
            # sizes, counts and durations: what a restore test compares and figures show
            if f.name in COUNTS and value is not None and not _whole(value):
                return f"{f.name} is {value!r:.60}, not a count (a whole number, 0 or more)"
            if f.name.endswith("_s") and value is not None and value < 0:
                return f"{f.name} is {value!r:.60}, not a duration (0 or more seconds)"
        for db, points in (data.get("db_counts") or {}).items():
            if not _whole(points):
                return f"db_counts[{db!r:.40}] is {points!r:.40}, not a count of points"
        return None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed_check(self) -> bool:
        """A backup taken ok that a verify since found bad: kept, but no good backup."""
        return self.ok and self.verify_status == "failed"

    @property
    def good(self) -> bool:
        """A backup to rely on (hooks' success, retention's newest good, the exit status)."""
        return self.ok and not self.failed_check

    @property
    def checks_s(self) -> float | None:
        """The stop window's time besides the stop, copy and start (the checks between the stop
        and the copy: files still held, the staged tree): the downtime less those three, so the
        phases add up to it. None without a downtime, or when that rest is under half a ms."""
        if self.downtime_s is None or self.extra.get("downtime_until_recovery"):
            return None  # a killed run's outage: no phases of its own to add up
        return window_rest(self.downtime_s, (self.stop_s, self.copy_s, self.start_s))

    @property
    def lost_at_restart(self) -> dict[str, int]:
        """{database: points} the live server served fewer after this cold run's restart than
        before its stop (extra["served_less"], influxd/counts.after_start): points only this
        run's archive may still hold."""
        seen = self.extra.get("served_less")
        lost: dict[str, int] = {}
        for db, figures in (seen if isinstance(seen, dict) else {}).items():
            before = figures.get("before") if isinstance(figures, dict) else None
            after = figures.get("after") if isinstance(figures, dict) else None
            if isinstance(before, int) and isinstance(after, int) and before > after:
                lost[str(db)] = before - after
        return lost


def served_less(finished: Sequence[RunRecord]) -> tuple[str | None, dict[str, int]]:
    """The newest of `finished` (oldest first) that counted again after its start (a cold
    run, influxd/counts.after_start; a hot one leaves the figure standing): its id and
    {database: points fewer}. For `status` and the metrics."""
    counted = next((r for r in reversed(finished) if "served_after_start_s" in r.extra), None)
    if counted is None:
        return None, {}
    return counted.id, counted.lost_at_restart


# a run dated this far past now was taken while the clock was ahead (clocks of one host
# disagree by less)
FUTURE_SLACK_S = 300.0


def dated_ahead(record: RunRecord, now: float) -> bool:
    """Taken while the clock was ahead (or imported with such a date): ranked by its date, it
    passes for the newest run until then, hiding every later failure (status, the metrics'
    last success) and taking retention's places (keep/retention.py sets it aside)."""
    return max(record.started_at, record.finished_at or 0.0) > now + FUTURE_SLACK_S


def only_in_bucket(record: RunRecord) -> bool:
    """Imported from the bucket (import --offsite) and not fetched since: no archive here."""
    return bool(record.extra.get("offsite_only")) and not (
        record.archive and os.path.exists(record.archive)
    )


def missing_on_disk(record: RunRecord) -> bool:
    """An ok backup whose files are gone from here (not one only in the bucket): it restores
    nothing (prune plans it as missing, list shows it so)."""
    return (
        record.ok
        and not only_in_bucket(record)
        and not (record.archive and os.path.exists(record.archive))
    )


LAST_TIME = 253_402_300_800  # 10000-01-01T00:00:00Z in Unix seconds
COUNTS = ("bytes", "files", "window_bytes")


def _whole(value: object) -> bool:
    """A count read back: 0 or more and whole (3.0 is three; a JSON writer may say so)."""
    return isinstance(value, int | float) and value >= 0 and float(value).is_integer()
