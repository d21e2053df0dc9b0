"""Run records on disk: SQLite in state_dir, one row per run, the record as JSON.

SQLite's journal makes every save atomic and crash-safe; readers (list, status) never need the lock.

Whatever is wrong with the file (not a database, truncated, a directory in its place, a row that
is not a record) is one CatalogDamaged, whose line says how to rebuild it (`import`, from the
records beside the archives: it moves the damaged file aside). What is wrong around a healthy
file is never called damage, or `import` would set a good catalog aside: one held by another
process is CatalogBusy, one that cannot be written CatalogReadOnly, a full state_dir
CatalogFull, an I/O error (or one SQLite cannot open) CatalogUnavailable. Never an sqlite3 or
JSON exception.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from influx_backupd.core.errors import EXIT_BUSY, BackupdError
from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.log import Logger
from influx_backupd.core.paths import real
from influx_backupd.store.record import RunRecord, new_run_id
from influx_backupd.store.sidecar import sidecar_of

TIMEOUT_S = 30.0  # how long a command waits for another one's write to the catalog
# A run's final record waits longer (SQLite's wait again and again): a finished, checked backup
# is not given up for a reader or a manual `sqlite3` session that holds the catalog a while.
FINAL_WAIT_S = 300.0


class CatalogError(BackupdError):
    code = "catalog"


class CatalogDamaged(CatalogError):
    code = "catalog.damaged"

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(
            f"catalog {path} is damaged ({detail}); rebuild it from the records beside the "
            "archives with `influx-backupd import` (it moves the damaged file aside)"
        )


_ID_DRAWS = 100  # a free id is found at the first or second draw; this bounds a broken taken()


class CatalogBusy(CatalogError):
    code = "catalog.locked"
    label = "busy"
    exit_status = EXIT_BUSY


class CatalogReadOnly(CatalogError):
    code = "catalog.read_only"


class CatalogFull(CatalogError):
    """The filesystem under state_dir has no room for the catalog's write (SQLITE_FULL)."""

    code = "catalog.full"


class CatalogUnavailable(CatalogError):
    """The file could not be read or written for a reason outside it (an I/O error, out of
    memory, cannot be opened): not damage, so nothing is moved aside."""

    code = "catalog.unavailable"


# SQLite's primary result codes (sqlite3 exceptions carry them from Python 3.11 on)
_BUSY, _LOCKED, _READONLY, _PERM, _AUTH = 5, 6, 8, 3, 23
_FULL = 13
_IOERR, _NOMEM, _INTERRUPT, _CANTOPEN, _NOLFS = 10, 7, 9, 14, 22


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_job_started ON runs (job, started_at);
-- monotonic per-job counts (runs by result, verify failures): runs are pruned, counters never
CREATE TABLE IF NOT EXISTS counters (
    job TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    last_at REAL NOT NULL,
    PRIMARY KEY (job, name)
);
-- finished runs whose follow-up (verify, prune, metrics, hooks, heartbeat) has not completed:
-- written with the final record, removed once the follow-up is done; the next lock-taking
-- command runs what a killed process left owed
CREATE TABLE IF NOT EXISTS owed (run_id TEXT PRIMARY KEY);
"""
# events that end every hot chain of the server (a whole-server restore): the next hot run of
# each job is a full (jobs/plan.py); one row per kind, the newest kept. Made by the first mark,
# not with the schema: a catalog from before it is read as it is, by readers that cannot write.
_CHAIN_ENDS = """
CREATE TABLE IF NOT EXISTS chain_ends (
    kind TEXT PRIMARY KEY,
    at REAL NOT NULL,
    why TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class ChainEnd:
    """Every hot chain begun before `at` (our clock) ends there: the next link is a full."""

    at: float
    why: str  # said in the next hot run's plan


class Catalog:
    def __init__(self, state_dir: Path, *, timeout: float = TIMEOUT_S) -> None:
        """timeout: how long a read or write waits for another process's write (a loop that
        must not stall, the daemon's heartbeat, waits less)."""
        self.path = state_dir / "catalog.db"
        self.timeout = timeout
        self.moved_aside: Path | None = None  # where set_aside() put a damaged one
        self.damage: str | None = None  # a damage found and left alone (import --dry-run)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            what = "a dangling symlink" if not self.path.exists() else "not a regular file"
            raise CatalogDamaged(self.path, what)
        try:
            with closing(sqlite3.connect(self.path, timeout=self.timeout)) as conn:
                conn.execute("PRAGMA synchronous=FULL")
                if not _has_schema(conn):
                    conn.executescript(_SCHEMA)
                with conn:
                    yield conn
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> CatalogError:
        """What SQLite's error says: damage only when the file itself is wrong (not a
        database, malformed, tables of another shape); never a full disk or an I/O error."""
        text = str(exc)
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        state_dir = self.path.parent
        if primary in (_BUSY, _LOCKED) or (
            primary is None and isinstance(exc, sqlite3.OperationalError) and "locked" in text
        ):
            return CatalogBusy(
                f"catalog {self.path} is locked by another process (waited {self.timeout:g}s); "
                "try again when it is done"
            )
        if primary in (_READONLY, _PERM, _AUTH) or "readonly" in text or "read-only" in text:
            return CatalogReadOnly(f"catalog {self.path} cannot be written ({text})")
        if primary == _FULL:
            return CatalogFull(
                f"state_dir {state_dir} is full: catalog {self.path} cannot be written ({text}); "
                "free some space there and run the command again (the catalog is not damaged)"
            )
        if primary in (_IOERR, _NOMEM, _INTERRUPT, _CANTOPEN, _NOLFS):
            return CatalogUnavailable(
                f"catalog {self.path} could not be read or written ({text}); check the "
                f"filesystem under state_dir {state_dir} and run the command again (the "
                "catalog is not called damaged: nothing was moved aside)"
            )
        return CatalogDamaged(self.path, text)

    def _record(self, raw: object) -> RunRecord:
        """A row's record, or CatalogDamaged naming what is wrong with it."""
        try:
            data = loads_json(raw) if isinstance(raw, str | bytes) else raw
        except ValueError as exc:
            raise CatalogDamaged(self.path, f"a run's record is not JSON: {exc}") from None
        problem = RunRecord.problem(data)
        if problem is not None:
            run = data.get("id") if isinstance(data, dict) else None
            raise CatalogDamaged(self.path, f"run {run!r:.40}: {problem}")
        return RunRecord.from_dict(data)  # type: ignore[arg-type]

    def check(self, *, write: bool = False) -> None:
        """The whole catalog is usable: SQLite's own check of every page, every run's record,
        the counters; write: and it can be written (every lock-taking command, before it acts)."""
        if not self.exists():
            return
        with self._connect() as conn:
            found = conn.execute("PRAGMA quick_check").fetchall()
            if found != [("ok",)]:
                raise CatalogDamaged(self.path, "; ".join(str(r[0]) for r in found[:2]))
            for (raw,) in conn.execute("SELECT record FROM runs"):
                self._record(raw)
            for row in conn.execute("SELECT job, name, value, last_at FROM counters"):
                if not (isinstance(row[2], int) and isinstance(row[3], int | float)):
                    raise CatalogDamaged(self.path, f"counter {row[0]!r:.40}: not a number")
            conn.execute("SELECT run_id FROM owed LIMIT 1").fetchall()
            if write:
                # a write that is rolled back: refused at once on a read-only file or dir
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("CREATE TABLE _write_check (x)")
                conn.rollback()

    def set_aside(self) -> Path:
        """Move the catalog (and SQLite's journal files beside it) aside, never deleting it;
        the next connection makes a new, empty one. Returns where it went."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        try:
            os.rename(self.path, aside)
            for suffix in ("-journal", "-wal", "-shm"):
                extra = self.path.with_name(self.path.name + suffix)
                if os.path.lexists(extra):
                    os.rename(extra, aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise CatalogReadOnly(
                f"catalog {self.path} is damaged and cannot be moved aside ({exc.strerror})"
            ) from None
        return aside

    def start_run(self, record: RunRecord, taken: Callable[[str], bool]) -> None:
        """Save a new run's first record under an id no run has: record.id is drawn again
        while the catalog has a run of that id or taken(id) (its names in the storage dir).
        Two runs in one second shared an id once in 65,536 (a fast failure, then its fallback;
        seconds repeated after the clock stepped back), and the second replaced the first's
        record (INSERT OR REPLACE) and archive (a rename over it)."""
        for _ in range(_ID_DRAWS):
            if not taken(record.id):
                with self._connect() as conn:
                    held = conn.execute("SELECT 1 FROM runs WHERE id = ?", (record.id,))
                    if held.fetchone() is None:
                        _save_row(conn, record)
                        return
            record.id = new_run_id(record.started_at or None)
        raise CatalogBusy(f"no free run id after {_ID_DRAWS} draws: {self.path}")

    def save(self, record: RunRecord) -> None:
        with self._connect() as conn:
            _save_row(conn, record)

    def save_finished(self, record: RunRecord) -> None:
        """A run's final record, its count in runs_total and its follow-up owed, in one
        transaction: every run is counted exactly once and followed up at least once, even
        when the process dies right after."""
        with self._connect() as conn:
            _save_row(conn, record)
            _count(conn, record.job, record.status, record.finished_at or time.time())
            conn.execute("INSERT OR IGNORE INTO owed (run_id) VALUES (?)", (record.id,))

    def followed_up(self, run_id: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM owed WHERE run_id = ?", (run_id,))

    def owed(self) -> list[RunRecord]:
        """Finished runs whose follow-up never completed, oldest first (a run deleted since,
        by prune, takes its entry with it)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT record FROM runs JOIN owed ON owed.run_id = runs.id "
                "WHERE status != 'running' ORDER BY started_at, id"
            ).fetchall()
        return [self._record(row[0]) for row in rows]

    def finish(self, record: RunRecord, logger: Logger) -> None:
        """The end of every run, whatever happened: a final status, saved, one event with it all."""
        if record.status == "running":
            record.status = "failed"
            record.error = record.error or "unexpected error"
        # never before its start: a clock stepped back mid-run made `took -3598s` (time audit)
        record.finished_at = max(time.time(), record.started_at)
        self._save_final(record, logger)
        event = logger.info if record.ok else logger.error
        event("run.finished", phase="done", record=record.to_dict())

    def _save_final(self, record: RunRecord, logger: Logger) -> None:
        """save_finished, waiting out a catalog held by another process for FINAL_WAIT_S. Still
        held then: CatalogBusy saying what became of the run (an ok backup's record beside its
        archive is what the next lock-taking command adopts it from, guard.recover)."""
        deadline = time.monotonic() + FINAL_WAIT_S
        while True:
            try:
                self.save_finished(record)
                return
            except CatalogBusy:
                if time.monotonic() >= deadline:
                    break
                time.sleep(1.0)  # SQLite waited TIMEOUT_S already, unless it failed at once
                logger.warning(
                    "catalog.busy_final_save",
                    path=str(self.path),
                    status=record.status,
                    detail=f"the run's record waits for the catalog (up to {FINAL_WAIT_S:g}s)",
                )
        held = f"catalog {self.path} stayed locked by another process ({FINAL_WAIT_S:g}s)"
        if record.ok and record.archive:
            raise CatalogBusy(
                f"backup {record.id} is ok and checked ({record.archive}), but {held} and its "
                f"record was not saved there; the record beside it ({sidecar_of(Path(record.archive))}) "
                "stays, and the next command that takes the backup lock adopts it from there"
            )
        raise CatalogBusy(
            f"run {record.id} ended {record.status}, but {held} and its record was not saved "
            "there; the next command that takes the backup lock records it as interrupted"
        )

    def get(self, run_id: str) -> RunRecord | None:
        with self._connect() as conn:
            row = conn.execute("SELECT record FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._record(row[0]) if row else None

    def find_by_archive(self, archive: Path) -> RunRecord | None:
        wanted = str(real(archive))
        for record in self.list():
            if record.archive and str(real(Path(record.archive))) == wanted:
                return record
        return None

    def running(self) -> list[RunRecord]:
        """Runs not finished; read by every lock-taking command, so only these rows are parsed."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT record FROM runs WHERE status = 'running' ORDER BY started_at, id"
            ).fetchall()
        return [self._record(row[0]) for row in rows]

    def list(self, job: str | None = None) -> list[RunRecord]:
        """Oldest first."""
        with self._connect() as conn:
            if job is None:
                rows = conn.execute("SELECT record FROM runs ORDER BY started_at, id").fetchall()
            else:
                rows = conn.execute(
                    "SELECT record FROM runs WHERE job = ? ORDER BY started_at, id", (job,)
                ).fetchall()
        return [self._record(row[0]) for row in rows]

    def knows_any(self) -> bool:
        """Whether any run is recorded: one row read, none parsed."""
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None

    def delete(self, run_id: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            conn.execute("DELETE FROM owed WHERE run_id = ?", (run_id,))

    def increment(self, job: str, name: str, at: float) -> None:
        with self._connect() as conn:
            _count(conn, job, name, at)

    def counters(self) -> dict[tuple[str, str], tuple[int, float]]:
        """(job, name) → (value, time of the last increment)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT job, name, value, last_at FROM counters").fetchall()
        try:
            return {(job, name): (int(value), float(at)) for job, name, value, at in rows}
        except (TypeError, ValueError):
            raise CatalogDamaged(self.path, "a counter is not a number") from None

    def end_chains(self, kind: str, why: str, at: float | None = None) -> None:
        """Mark every hot chain of the server ended now (or at `at`): the next hot run of each
        job takes a full, saying `why`. A later mark of the same kind replaces it."""
        with self._connect() as conn:
            conn.execute(_CHAIN_ENDS)
            conn.execute(
                "INSERT OR REPLACE INTO chain_ends (kind, at, why) VALUES (?,?,?)",
                (kind, time.time() if at is None else at, why),
            )

    def chain_ends(self) -> tuple[ChainEnd, ...]:
        """The marks that end chains, oldest first (none in a catalog that has none)."""
        if not self.exists():
            return ()
        with self._connect() as conn:
            if not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chain_ends'"
            ).fetchall():
                return ()
            rows = conn.execute("SELECT at, why FROM chain_ends ORDER BY at").fetchall()
        try:
            return tuple(ChainEnd(float(at), str(why)) for at, why in rows)
        except (TypeError, ValueError):
            raise CatalogDamaged(self.path, "a chain end is not a time") from None

    def exists(self) -> bool:
        return os.path.lexists(self.path)  # a dangling symlink is a damaged catalog, not none


def _has_schema(conn: sqlite3.Connection) -> bool:
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    return {"runs", "counters", "owed"} <= names


class ReadAgainOnChange:
    """The catalog's records and counters, read again only once its file changed (SQLite's
    change counter, size, mtime, inode) or max_age_s passed: the daemon rewrites its metrics
    every 30 s, and parsing every record each time cost 0.37 s at 5,000 records (1 % of a
    core, idle). max_age_s bounds what anything the key misses could hide."""

    def __init__(self, max_age_s: float = 600.0) -> None:
        self.max_age_s = max_age_s
        self._key: tuple[object, ...] | None = None
        self._read_at = 0.0
        self._value: tuple[list[RunRecord], dict[tuple[str, str], tuple[int, float]]] = ([], {})

    def read(
        self, catalog: Catalog
    ) -> tuple[list[RunRecord], dict[tuple[str, str], tuple[int, float]]]:
        try:
            # never blocking on a FIFO, never through a link: anything but a regular file is
            # read the usual way below, which names it damaged as it always did
            fd = os.open(catalog.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            fd = None
        if fd is None:
            self._key = None
            return catalog.list(), catalog.counters()
        try:
            st = os.fstat(fd)
            # SQLite's file change counter (header bytes 24-27): every commit in rollback
            # journal mode, the catalog's, adds one, where an mtime may not move within a tick
            counter = os.pread(fd, 4, 24) if stat.S_ISREG(st.st_mode) else None
        except OSError:
            counter = None
        finally:
            os.close(fd)
        if counter is None:
            self._key = None
            return catalog.list(), catalog.counters()
        # taken before the read: a change meanwhile makes the next key differ
        key = (str(catalog.path), st.st_ino, st.st_size, st.st_mtime_ns, counter)
        if key != self._key or time.monotonic() - self._read_at >= self.max_age_s:
            self._value = (catalog.list(), catalog.counters())
            self._key, self._read_at = key, time.monotonic()
        return self._value


def _save_row(conn: sqlite3.Connection, record: RunRecord) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO runs (id, job, status, started_at, record) VALUES (?,?,?,?,?)",
        (
            record.id,
            record.job,
            record.status,
            record.started_at,
            json.dumps(record.to_dict(), sort_keys=True),
        ),
    )


def _count(conn: sqlite3.Connection, job: str, name: str, at: float) -> None:
    conn.execute(
        "INSERT INTO counters (job, name, value, last_at) VALUES (?,?,1,?) "
        "ON CONFLICT (job, name) DO UPDATE SET value = value + 1, "
        "last_at = max(last_at, excluded.last_at)",
        (job, name, at),
    )
