"""Run records on disk: SQLite in state_dir, one row per run, the record as JSON.

SQLite's journal makes every save atomic and crash-safe; readers (list, status) never need the lock.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from influx_backupd.core.log import Logger
from influx_backupd.store.record import RunRecord

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


class Catalog:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "catalog.db"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=30)) as conn:
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            with conn:
                yield conn

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
        return [RunRecord.from_dict(json.loads(row[0])) for row in rows]

    def finish(self, record: RunRecord, logger: Logger) -> None:
        """The end of every run, whatever happened: a final status, saved, one event with it all."""
        if record.status == "running":
            record.status = "failed"
            record.error = record.error or "unexpected error"
        record.finished_at = time.time()
        self.save_finished(record)
        event = logger.info if record.ok else logger.error
        event("run.finished", phase="done", record=record.to_dict())

    def get(self, run_id: str) -> RunRecord | None:
        with self._connect() as conn:
            row = conn.execute("SELECT record FROM runs WHERE id = ?", (run_id,)).fetchone()
        return RunRecord.from_dict(json.loads(row[0])) if row else None

    def find_by_archive(self, archive: Path) -> RunRecord | None:
        wanted = str(archive.resolve())
        for record in self.list():
            if record.archive and str(Path(record.archive).resolve()) == wanted:
                return record
        return None

    def running(self) -> list[RunRecord]:
        """Runs not finished; read by every lock-taking command, so only these rows are parsed."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT record FROM runs WHERE status = 'running' ORDER BY started_at, id"
            ).fetchall()
        return [RunRecord.from_dict(json.loads(row[0])) for row in rows]

    def list(self, job: str | None = None) -> list[RunRecord]:
        """Oldest first."""
        with self._connect() as conn:
            if job is None:
                rows = conn.execute("SELECT record FROM runs ORDER BY started_at, id").fetchall()
            else:
                rows = conn.execute(
                    "SELECT record FROM runs WHERE job = ? ORDER BY started_at, id", (job,)
                ).fetchall()
        return [RunRecord.from_dict(json.loads(row[0])) for row in rows]

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
        return {(job, name): (int(value), float(at)) for job, name, value, at in rows}

    def exists(self) -> bool:
        return self.path.exists()


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
