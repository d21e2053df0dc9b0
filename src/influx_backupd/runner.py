"""One backup run, from the job's mode to what follows the record (shared by CLI and daemon).

mode (cold | hot | auto → policy) → the job → record → after_run (prune, verify, metrics, hooks)
"""

from __future__ import annotations

from influx_backupd.catalog import Catalog
from influx_backupd.cold import run_cold
from influx_backupd.config import Config, JobSection
from influx_backupd.record import RunRecord


class ModeUnavailable(Exception):
    """The asked-for mode cannot run in this build or on this server (a usage error)."""


def run_backup(
    config: Config, job: JobSection, catalog: Catalog, mode: str | None = None
) -> RunRecord:
    """Run one backup of job; the caller holds the backup lock (guard.exclusive)."""
    chosen = mode or job.mode
    if chosen == "cold":
        record = run_cold(config, job, catalog)
    else:
        raise ModeUnavailable(f"mode {chosen!r} is not available in this version; use cold")
    after_run(config, job, catalog, record)
    return record


def after_run(config: Config, job: JobSection, catalog: Catalog, record: RunRecord) -> None:
    """Everything that reads the finished record. Never fails the run it follows."""
    del config, job, catalog, record
