"""Per-database point counts, taken from a running influxd: at backup time, and in restore tests.

A database's figure is the sum over its retention policies and measurements of the largest
per-field `count(*)`: the number of points when some field is in every point of a measurement,
a lower bound otherwise. Both sides of a restore test use this same function, so it compares
like with like.

Cost (measured on the sandbox, influxd 1.6, 2 cores): `SELECT count(*)` over 1,000,000 points
took 0.13 s, i.e. about 8 M points/s. A server with billions of points would need minutes, so
the whole pass has a time budget; databases not counted within it are left out of db_counts
(and so are not compared by a restore test), which is logged.
"""

from __future__ import annotations

import time
from collections.abc import Container, Mapping
from typing import Any

from influx_backupd.core.config import Config, Credentials
from influx_backupd.core.errors import BackupdError
from influx_backupd.core.log import Logger
from influx_backupd.influxd import influxql
from influx_backupd.influxd.influxql import ident
from influx_backupd.store.record import RunRecord

BUDGET_S = 30.0  # all databases together, before a cold stop


class FiguresError(BackupdError):
    code = "figures"


class FiguresRefused(FiguresError):
    """The server refused our credentials (told apart: a figure not taken, not a bad server)."""


def _query(
    url: str, q: str, db: str | None, timeout: float, credentials: Credentials | None
) -> list[dict[str, Any]]:
    # shard_wait: a count right after `influxd restore -portable` (a restore's build, a restore
    # test) meets a shard still opening for a moment; one such answer lost the figure
    try:
        return influxql.query(
            url, q, db, credentials=credentials, timeout=timeout, epoch="s", shard_wait=timeout
        )
    except influxql.AuthError as exc:
        raise FiguresRefused(str(exc)) from None
    except influxql.QueryError as exc:
        raise FiguresError(str(exc)) from None


# influxd's own monitoring database: the server's, not the user's. Left out of the figures,
# and `influxd restore -portable` skips it ("Meta info not found … Skipping shard").
INTERNAL = "_internal"


def databases(
    url: str, timeout: float = 10.0, *, credentials: Credentials | None = None
) -> list[str]:
    series = _query(url, "SHOW DATABASES", None, timeout, credentials)
    rows = (series[0].get("values") or []) if series else []
    return sorted(str(row[0]) for row in rows if row and row[0] != INTERNAL)


def point_count(
    url: str, db: str, timeout: float = 30.0, *, credentials: Credentials | None = None
) -> int:
    """The figure of one database (see the module docstring)."""
    deadline = time.monotonic() + timeout
    series = _query(url, f"SHOW RETENTION POLICIES ON {ident(db)}", db, timeout, credentials)
    rps = [str(row[0]) for s in series for row in s.get("values") or []]
    total = 0
    for rp in rps:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FiguresError(f"counting {db} took longer than {timeout:g}s")
        q = f"SELECT count(*) FROM {ident(db)}.{ident(rp)}./.*/"
        for s in _query(url, q, db, left, credentials):
            for row in s.get("values") or []:
                total += max((int(v) for v in row[1:] if isinstance(v, int | float)), default=0)
    return total


def shard_points(
    url: str,
    db: str,
    timeout: float = 30.0,
    *,
    credentials: Credentials | None = None,
    skip: Container[tuple[str, int]] = (),
) -> dict[tuple[str, int], int]:
    """The figure of each shard of db but those in skip, keyed by (retention policy, shard
    id): a count over the shard's time range in its retention policy (one shard group a range,
    one shard a group on a single node)."""
    deadline = time.monotonic() + timeout
    found: dict[tuple[str, int], int] = {}
    for s in _query(url, "SHOW SHARDS", None, timeout, credentials):
        if s.get("name") != db:
            continue
        cols = list(s.get("columns") or [])
        for row in s.get("values") or []:
            shard = dict(zip(cols, row, strict=False))
            left = deadline - time.monotonic()
            if left <= 0:
                raise FiguresError(f"counting {db} took longer than {timeout:g}s")
            rp = str(shard["retention_policy"])
            key = (rp, int(shard["id"]))
            if key in skip:
                continue
            q = (
                f"SELECT count(*) FROM {ident(db)}.{ident(rp)}./.*/ WHERE time >= "
                f"'{shard['start_time']}' AND time < '{shard['end_time']}'"
            )
            points = 0
            for series in _query(url, q, db, left, credentials):
                for counted in series.get("values") or []:
                    points += max(
                        (int(v) for v in counted[1:] if isinstance(v, int | float)), default=0
                    )
            found[key] = points
    return found


def shard_tsm_files(
    url: str, db: str, timeout: float = 30.0, *, credentials: Credentials | None = None
) -> dict[tuple[str, int], int]:
    """How many TSM files each open shard of db has loaded, keyed by (retention policy, shard
    id), from the server's own statistics: free to ask, where a count reads every block."""
    found: dict[tuple[str, int], int] = {}
    for s in _query(url, "SHOW STATS FOR 'tsm1_filestore'", None, timeout, credentials):
        tags = s.get("tags") or {}
        if tags.get("database") != db or not str(tags.get("id", "")).isdigit():
            continue
        row = dict(zip(s.get("columns") or [], (s.get("values") or [[]])[0], strict=False))
        files = row.get("numFiles")
        found[(str(tags.get("retentionPolicy")), int(tags["id"]))] = (
            int(files) if isinstance(files, int | float) else 0
        )
    return found


def point_counts(
    url: str,
    dbs: list[str],
    budget: float = BUDGET_S,
    *,
    credentials: Credentials | None = None,
) -> tuple[dict[str, int], str]:
    """Counts for dbs within budget seconds; the second item says what was skipped, or ""."""
    deadline = time.monotonic() + budget
    counts: dict[str, int] = {}
    for i, db in enumerate(dbs):
        left = deadline - time.monotonic()
        if left <= 0:
            return counts, f"time budget of {budget:g}s spent; not counted: {', '.join(dbs[i:])}"
        try:
            counts[db] = point_count(url, db, timeout=left, credentials=credentials)
        except FiguresError as exc:
            return counts, f"{exc}; not counted: {', '.join(dbs[i:])}"
    return counts, ""


def before_stop(
    config: Config, record: RunRecord, dirs: Mapping[str, object], logger: Logger
) -> None:
    """Called by the cold job just before it stops influxd. Never raises: figures are optional.

    Records which dirs go into the archive (verify's structure check) and the point counts.
    """
    try:
        record.dirs = sorted(dirs)
        started = time.monotonic()
        creds = config.credentials
        counts, skipped = point_counts(
            config.url, databases(config.url, credentials=creds), credentials=creds
        )
        record.db_counts = counts
        took = round(time.monotonic() - started, 3)
        if skipped:
            logger.warning("figures.partial", db_counts=counts, reason=skipped, took_s=took)
        else:
            logger.info("figures.taken", db_counts=counts, took_s=took)
    except Exception as exc:  # a figure is never worth failing a backup for
        logger.warning("figures.failed", error=str(exc))


SERVED_LESS = (
    "the restarted server serves fewer points than it did before the stop: the live server "
    "lost them at the restart (the archive holds them; restore it, or look at influxd's log). "
    "Writes since the stop only add points; a shard dropped by retention enforcement in "
    "between lowers a count too"
)


def after_start(config: Config, record: RunRecord, logger: Logger) -> None:
    """Called by the cold job once influxd serves again (never in the stop window): the
    databases counted before the stop, counted again. One that serves fewer points is a live
    server that lost data at the restart, not a bad archive: the run stays ok, with the loss in
    record.extra["served_less"] ({db: {before, after}}) and a warning event influxd.served_less
    per database (the run's log tail goes with its notification and heartbeat); status and the
    metrics read it back with store.record.served_less. Never raises.
    """
    before = record.db_counts
    if not before:  # not taken (auth, none): nothing to compare with
        return
    url, creds = config.url, config.credentials
    started = time.monotonic()
    after: dict[str, int] = {}
    try:
        present = set(databases(url, credentials=creds))
        # A database no longer listed serves nothing: 0, without a query.
        after = {db: 0 for db in before if db not in present}
        counted, skipped = point_counts(
            url, [db for db in sorted(before) if db in present], credentials=creds
        )
        after.update(counted)
        if skipped:
            logger.warning("figures.after_start_partial", reason=skipped, counted=after)
    except Exception as exc:  # a figure is never worth failing a backup for
        logger.warning("figures.after_start_failed", error=str(exc), counted=after)
    record.extra["served_after_start_s"] = round(time.monotonic() - started, 3)
    less = {
        db: {"before": n, "after": after[db]}
        for db, n in sorted(before.items())
        if db in after and after[db] < n
    }
    for db, seen in less.items():
        logger.warning("influxd.served_less", db=db, **seen, detail=SERVED_LESS)
    if less:
        record.extra["served_less"] = less
