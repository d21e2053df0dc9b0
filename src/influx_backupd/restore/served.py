"""What a restore is ok by (invariant 3): once the restored server answers, it serves at least
the points each database was counted with (a cold backup's db_counts, taken before its stop; a
hot restore's build, counted before its throwaway stopped; counts.point_count on both sides).

An answer to /ping is not enough: a server whose shards failed to open (a disk that filled as
it started) answers it and serves nothing. A database below its count fails the restore, which
the caller then undoes. More points are fine (writes since the count). A database the time
budget leaves uncounted, or one our credentials may not read (a user without admin rights does
not even see it in SHOW DATABASES), is not compared: said, not failed (the restore test of
verify compares the same figures where it can).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from influx_backupd.core.config import Config
from influx_backupd.core.errors import BackupdError
from influx_backupd.core.log import Logger
from influx_backupd.influxd import counts

BUDGET_S = counts.BUDGET_S  # all databases together, after the start


class NotServed(BackupdError):
    """The restored server serves fewer points than were counted (the restore is undone)."""

    code = "restore.not_served"


@dataclass
class Served:
    """What the comparison found: counts per database, and what it could not compare."""

    floor: dict[str, int] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)
    not_compared: list[str] = field(default_factory=list)
    fewer: list[str] = field(default_factory=list)  # below their count, accepted
    note: str = ""  # why nothing was compared at all

    def summary(self) -> str:
        """One phrase for the operator: what was compared, and with what."""
        if self.note:
            return f"not compared: {self.note}"
        shown = ", ".join(
            f"{db} {n} (counted {self.floor[db]})" for db, n in sorted(self.counted.items())
        )
        left = f"; not compared: {', '.join(self.not_compared)}" if self.not_compared else ""
        fewer = (
            f"; fewer than counted, accepted (--accept-fewer-points): {', '.join(self.fewer)}"
            if self.fewer
            else ""
        )
        return f"points served: {shown or 'none compared'}{fewer}{left}"

    def fewer_warning(self) -> list[str]:
        """The operator's warning for the databases kept below their count (none: [])."""
        return [
            f"database {db} serves {self.counted[db]} points, {self.floor[db]} counted before "
            "the backup's stop: kept, as --accept-fewer-points asked"
            for db in self.fewer
        ]


def check_served(
    config: Config,
    floor: Mapping[str, int] | None,
    logger: Logger,
    *,
    what: str,
    budget: float = BUDGET_S,
    before_a_stop: bool = False,
    accept_fewer: bool = False,
) -> Served:
    """Count the live server's databases named in floor; NotServed naming the first one below
    its count (or missing). what: where floor came from ("counted at backup time").

    before_a_stop: floor was counted before a cold backup's stop, so a delete acknowledged
    between that count and the stop lowers what the archive holds, which no figure tells
    apart from loss: the refusal names accept_fewer, with which a database below its count
    (or missing) is said and kept (Served.fewer), not refused."""
    served = Served(floor=dict(floor or {}))
    if not floor:
        served.note = "no point counts to compare with"
        logger.info("restore.served_not_compared", reason=served.note)
        return served
    url, creds = config.url, config.credentials
    try:
        present = set(counts.databases(url, 30.0, credentials=creds))
    except counts.FiguresRefused as exc:
        served.note = f"the restored server refused the query ({exc})"
        logger.warning("restore.served_not_compared", reason=served.note)
        return served
    except counts.FiguresError as exc:
        raise NotServed(f"the restored server does not answer SHOW DATABASES: {exc}") from None
    deadline = time.monotonic() + budget
    why: dict[str, str] = {}  # per database not compared
    for db, want in sorted(floor.items()):
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise counts.FiguresError("time budget spent")
            got = counts.point_count(url, db, timeout=left, credentials=creds)
        except counts.FiguresRefused as exc:
            # A user without admin rights sees only the databases it may read (SHOW DATABASES
            # leaves the others out): refused is a figure not taken, never a missing database.
            why[db] = f"refused: {exc}"
            continue
        except counts.FiguresError as exc:
            if db not in present:
                if accept_fewer:
                    _fewer(served, db, 0, logger)
                    continue
                raise NotServed(
                    f"database {db} is missing on the restored server, {want} points {what}"
                    + (ACCEPT_HINT if before_a_stop else "")
                ) from None
            if time.monotonic() < deadline:
                raise NotServed(
                    f"database {db} does not answer on the restored server: {exc}"
                ) from None
            why[db] = f"not counted within {budget:g}s"
            continue
        served.counted[db] = got
        if got < want:
            if accept_fewer:
                _fewer(served, db, got, logger)
                continue
            raise NotServed(
                f"database {db}: the restored server serves {got} points, {want} {what}"
                + (ACCEPT_HINT if before_a_stop else "")
            )
    served.not_compared = list(why)  # in the floor's (sorted) order
    event = logger.warning if served.not_compared or served.fewer else logger.info
    event(
        "restore.served",
        counted=served.counted,
        floor=served.floor,
        not_compared=served.not_compared or None,
        fewer_accepted=served.fewer or None,
        why=why or None,
    )
    return served


# said when the flag was given where no count from before a stop is compared (a hot chain)
NOT_ACCEPTED = (
    "--accept-fewer-points not used: a hot chain is held to what its build served, which no "
    "delete before a stop can lower"
)

ACCEPT_HINT = (
    "; a delete acknowledged between that count and the backup's stop (DROP, DELETE, a "
    "retention policy expiring shards) lowers it too: to keep this restore all the same, "
    "run it again with --accept-fewer-points"
)


def _fewer(served: Served, db: str, got: int, logger: Logger) -> None:
    """A database below its count, kept because the operator accepted that (--accept-fewer-points)."""
    served.counted[db] = got
    served.fewer.append(db)
    logger.warning("restore.served_fewer_accepted", db=db, served=got, floor=served.floor[db])


def count_built(url: str, logger: Logger, budget: float = BUDGET_S) -> tuple[dict[str, int], str]:
    """A restore's build, counted before its throwaway stops (no auth): the floor the live
    server is held to once it serves the build, and what was not counted and why ("" when all
    was). Never raises: a figure not taken is a database not compared."""
    try:
        found, skipped = counts.point_counts(url, counts.databases(url), budget)
    except counts.FiguresError as exc:
        logger.warning("restore.build_not_counted", error=str(exc))
        return {}, str(exc)
    if skipped:
        logger.warning("restore.build_counted", counts=found, skipped=skipped)
    else:
        logger.info("restore.build_counted", counts=found)
    return found, skipped
