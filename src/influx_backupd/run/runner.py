"""One backup run, from the job's mode to what follows the record (shared by CLI and daemon).

mode (cold | hot | auto → policy) → the job → record → follow_up (prune, verify, metrics, hooks)
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

from influx_backupd.core import log
from influx_backupd.core.cancel import NEVER, CancelToken
from influx_backupd.core.config import Config, JobSection
from influx_backupd.core.errors import EXIT_USAGE, BackupdError
from influx_backupd.influxd import names
from influx_backupd.influxd.influxql import ping_headers
from influx_backupd.influxd.tool import probe_snapshot_service
from influx_backupd.jobs.cold import run_cold, space_needed, tree_size
from influx_backupd.jobs.hot import run_hot
from influx_backupd.report import notify
from influx_backupd.report.heartbeat import ping
from influx_backupd.run.followup import follow_up
from influx_backupd.run.policy import Capability, Chosen, Decision, decide, predict_downtime
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.layout import staging_root
from influx_backupd.store.record import RunRecord
from influx_backupd.store.state import (
    OFFSITE,
    CrashMarker,
    ServerLock,
    holder_means,
    lock_held,
    lock_holder,
)


class ModeUnavailable(BackupdError):
    """The asked-for mode cannot run in this build or on this server (a usage error)."""

    code = "usage"
    exit_status = EXIT_USAGE


class Skipped(BackupdError):
    """The policy decided not to run now. Nothing ran, so no record is written; logged as
    `policy.skipped` (the daemon also shows it in `status`)."""

    code = "skipped"

    def __init__(self, decision: Decision) -> None:
        super().__init__("; ".join(decision.reasons))
        self.decision = decision


def run_backup(
    config: Config,
    job: JobSection,
    catalog: Catalog,
    mode: str | None = None,
    *,
    scheduled: bool = False,
    cancel: CancelToken = NEVER,
) -> RunRecord:
    """Run one backup of job; the caller holds the backup lock (guard.exclusive).

    Mode auto, and every scheduled run (`scheduled`: cold_window and max_downtime apply), go
    through the policy, which may raise Skipped. A mode asked for by hand runs as asked.
    """
    chosen = mode or job.mode
    fallback = "cold" if chosen == "hot" and job.fallback == "cold" else None
    if chosen == "auto" or scheduled:
        decision = policy_decision(config, job, catalog, chosen)
        if decision.mode == "skip":
            raise Skipped(decision)
        chosen, fallback = decision.mode, decision.fallback
    # Cancelled meanwhile (the daemon is stopping): no start is announced; the job records
    # the run as abandoned at once, influxd untouched.
    if job.heartbeat_url and not cancel.cancelled:
        ping(job.heartbeat_url, "start")  # at most a few seconds, never raises
    if config.settings.notify.start and not cancel.cancelled:
        subject, body = notify.start_message(job.name, chosen)
        section = config.settings.notify
        # before the run has an id: its job and mode tie the log's notify.sent to it
        with log.run_context(job=job.name, mode=chosen):
            notify.send(
                section.start, subject, body, event="start", timeout=section.timeout, cancel=cancel
            )
    if chosen == "cold":
        record = run_cold(config, job, catalog, cancel)
    elif chosen == "hot":
        record = run_hot(config, job, catalog, cancel)
    else:
        raise ModeUnavailable(f"mode {chosen!r} is not available in this version; use cold")
    if (
        fallback == "cold"
        and record.mode == "hot"
        and record.status == "failed"
        and not cancel.cancelled  # the daemon is stopping: no fallback run starts now
    ):
        record = _fall_back_to_cold(config, job, catalog, record, cancel)
    influxd_left_down(config, record)
    follow_up(config, job, catalog, record, cancel)
    return record


def influxd_left_down(config: Config, record: RunRecord) -> bool:
    """After a run: if influxd was stopped and is still not started again (its start failed),
    say so loudly (MESSAGE_ID influxd_left_down); the crash marker makes the next command that
    takes the lock try again."""
    left = CrashMarker(config.state_dir).read()
    if left is None or not CrashMarker.may_be_down(left):
        return False
    log.get(run_id=record.id, job=record.job).critical(
        "influxd.left_down",
        stopped_by=left.get("run_id"),
        error=record.error,
        detail="influxd was stopped and is not running again; the next command that takes "
        "the lock (the daemon's next run, or any backup, verify, prune) starts it",
    )
    return True


@dataclass(frozen=True)
class Plan:
    """What `backup --dry-run` reports for one job."""

    job: str
    mode: str  # cold | hot | skip
    reasons: list[str]
    fallback: str | None
    scheduled_mode: str  # what a scheduled run (through the policy) would do now
    scheduled_reasons: list[str]
    predicted_downtime_s: float | None  # None: no cold run to predict from yet
    downtime_basis: str
    predicted_bytes: int
    needed_bytes: int
    free_bytes: int
    storage_dir: str
    # what predicted_bytes is: a cold archive's size, or for hot an upper bound only
    size_basis: str = "the files' sizes"
    recent_hot_bytes: int | None = None  # hot: the largest of the job's recent ok hot runs
    refused: str | None = None  # why the run would be refused before anything is stopped

    @property
    def fits(self) -> bool | None:
        """None: no verdict, as only a cold run is refused for space (a hot run's output,
        gzipped and without the sparse _series files' holes, is a fraction of the estimate)."""
        if self.mode != "cold":
            return None
        return self.free_bytes >= self.needed_bytes

    @property
    def would_run(self) -> bool:
        return self.mode != "skip" and self.fits is not False and self.refused is None

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "fits": self.fits}


def dry_run(
    config: Config, job: JobSection, catalog: Catalog | None, mode: str | None = None
) -> Plan:
    """What `backup` would do now, stopping and writing nothing: the mode and why, the
    predicted downtime, the predicted size against the storage dir's free space."""
    requested = mode or job.mode
    capability = _capability(config, job, requested)
    history = catalog.list(job=job.name)[-20:] if catalog is not None else []
    now = datetime.now(UTC)
    if requested == "auto":
        decision = decide(job, now, capability, history, mode=requested)
    else:
        fallback: Literal["cold"] | None = (
            "cold" if requested == "hot" and job.fallback == "cold" else None
        )
        chosen: Chosen = "hot" if requested == "hot" else "cold"
        decision = Decision(chosen, [f"mode = {requested}, by hand: runs as asked"], fallback)
    busy = _lock_holder(config)
    if busy is not None:
        decision.reasons.append(f"but now {busy}")
    # A scheduled run goes through the policy whatever the mode: say what it would do now.
    scheduled = decide(job, now, capability, history, mode=job.mode)
    dirs = {k: p for k, p in config.server.dirs().items() if p.is_dir()}
    keep_holes = job.holes == "keep"
    data_bytes = sum(tree_size(p, keep_holes) for p in dirs.values())
    prediction = predict_downtime(history, data_bytes, job.copy_mode)
    staging = staging_root(config.storage_dir, job.name) if job.copy_mode == "staged" else None
    predicted, needed = space_needed(config, dirs, staging, keep_holes)
    size = "the files' sizes" + (", holes not counted" if keep_holes else "")
    existing = next(p for p in (config.storage_dir, *config.storage_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    cold = decision.mode == "cold"
    hot_sizes = [r.bytes for r in history if r.mode == "hot" and r.good]
    unloadable = names.unloadable(dirs) if cold else None
    if unloadable is not None:
        decision.reasons.append(f"but the cold run would be refused: {unloadable}")
    return Plan(
        job=job.name,
        mode=decision.mode,
        reasons=decision.reasons,
        fallback=decision.fallback,
        scheduled_mode=scheduled.mode,
        scheduled_reasons=scheduled.reasons,
        predicted_downtime_s=prediction.seconds if cold else 0.0,
        downtime_basis=prediction.basis if cold else "hot: influxd keeps serving",
        predicted_bytes=predicted,
        # a hot run is not refused for space; its output is about the data's size, gzipped
        needed_bytes=needed if cold else predicted,
        free_bytes=free,
        storage_dir=str(config.storage_dir),
        size_basis=size
        if cold
        else f"upper bound: {size}; a hot backup is gzipped, usually far smaller",
        recent_hot_bytes=max(hot_sizes) if hot_sizes and not cold else None,
        refused=unloadable,
    )


def _lock_holder(config: Config) -> str | None:
    """Who holds a lock a run would take (this state_dir's, or the server's), and what a run
    would do about it, said as such."""
    busy = "`backup` would exit 75 (busy), a scheduled run waits for it"
    if lock_held(config.state_dir):
        pid, doing = lock_holder(config.state_dir)
        if doing == OFFSITE:  # asked to yield (run/guard.exclusive)
            return (
                f"an off-site send (pid {pid}) holds the lock in {config.state_dir}: `backup` "
                "would ask it to yield and wait for it (up to [offsite] yield_within and 30 s), "
                "as a scheduled run would"
            )
        what = holder_means(doing)
        return f"{what} (pid {pid}, the lock in {config.state_dir}): {busy}"
    holder = ServerLock(config.settings.influxd.config).holder()
    if holder is not None:
        return (
            f"another influx-backupd ({holder}) holds influxd of "
            f"{config.settings.influxd.config}: {busy}"
        )
    return None


def _fall_back_to_cold(
    config: Config, job: JobSection, catalog: Catalog, failed: RunRecord, cancel: CancelToken
) -> RunRecord:
    """A failed hot run is a run of its own (recorded, followed up); cold only if allowed now."""
    follow_up(config, job, catalog, failed, cancel)
    decision = policy_decision(config, job, catalog, "cold", after=failed)
    if decision.mode != "cold":
        return failed
    return run_cold(config, job, catalog, cancel)  # a SIGTERM during the follow-up: abandoned


def _influxd_version(config: Config, timeout: float = 2.0) -> str | None:

    answer = ping_headers(config.url, timeout, config.credentials)
    return (answer[0].get("X-Influxdb-Version") or None) if answer else None


def _capability(config: Config, job: JobSection, requested: str) -> Capability:
    snapshot = False
    if requested == "auto":
        snapshot = probe_snapshot_service(config.backup_host, 3.0)
    data_bytes = None
    if job.max_downtime is not None and requested != "hot":
        dirs = [p for p in config.server.dirs().values() if p.is_dir()]
        data_bytes = sum(tree_size(p, job.holes == "keep") for p in dirs)
    return Capability(snapshot, _influxd_version(config), data_bytes)


def policy_decision(
    config: Config,
    job: JobSection,
    catalog: Catalog,
    requested: str,
    after: RunRecord | None = None,
) -> Decision:
    """Gather the policy's inputs, decide, and log the decision as one event."""
    capability = _capability(config, job, requested)
    history = catalog.list(job=job.name)[-20:]
    decision = decide(job, datetime.now(UTC), capability, history, mode=requested)
    logger = log.get(job=job.name)
    fields: dict[str, object] = {
        "mode": decision.mode,
        "requested": requested,
        "reasons": decision.reasons,
        "fallback": decision.fallback,
        "predicted_downtime_s": decision.predicted_downtime_s,
    }
    if after is not None:
        fields["fallback_for"] = after.id
    logger.info("policy.decided", **fields)
    if decision.mode == "skip":
        logger.warning("policy.skipped", reasons=decision.reasons)
    return decision
