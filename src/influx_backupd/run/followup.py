"""What follows a finished run (runner.run_backup): counters, verify, prune, metrics, hooks, heartbeat.

Runs after the job returned, so influxd is serving again. Each step is on its own: a step that
fails is logged and the next one runs; nothing here changes the run's status or raises.
A follow-up is owed from the moment the run's final record is saved until it completes: one cut
short by a kill or a signal is run again, whole, by the next lock-taking command
(guard.recover), so hooks and heartbeats run at least once per run, late rather than never.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

from influx_backupd.core import alarms, log
from influx_backupd.core.cancel import DAEMON_SHUTDOWN, NEVER, CancelToken
from influx_backupd.core.config import Config, JobSection
from influx_backupd.core.errors import BackupdError
from influx_backupd.core.interrupt import Interrupted
from influx_backupd.keep.prune import prune
from influx_backupd.report import heartbeat, notify
from influx_backupd.report.hooks import environment, not_started_environment, run_hook
from influx_backupd.report.metrics import (
    DaemonFacts,
    carried_over,
    instance_of,
    render,
    write_textfile,
)
from influx_backupd.run import offsite
from influx_backupd.store.catalog import Catalog, ReadAgainOnChange
from influx_backupd.store.record import RunRecord
from influx_backupd.store.state import CrashMarker


class MetricsNotWritten(BackupdError):
    """The metrics file could not be replaced (its dir missing, read-only, full)."""

    code = "metrics"


_CATALOG_READ = ReadAgainOnChange()  # the daemon's heartbeat rewrites the file every 30 s


def write_metrics(config: Config, catalog: Catalog, daemon: DaemonFacts | None = None) -> None:
    """The textfile for node_exporter, when [daemon] metrics_file is set.

    `daemon`: given by the daemon itself (its heartbeat, at least every minute, and the next
    runs). Any other writer keeps what the daemon last wrote there (metrics.carried_over: its
    next runs only while it runs).
    """
    path = config.settings.daemon.metrics_file
    if path is None:
        return
    if daemon is None:
        daemon = carried_over(path, config.state_dir)
    exists = catalog.exists()
    shown, failing = offsite.for_metrics(config, catalog if exists else None)
    marker = CrashMarker(config.state_dir).read()
    records, counters = _CATALOG_READ.read(catalog) if exists else ([], None)
    text = render(
        records,
        counters=counters,
        daemon=daemon,
        left_down=CrashMarker.may_be_down(marker),
        down_expected_until=CrashMarker.down_expected_until(marker),
        offsite=shown,
        offsite_failing=failing,
        instance=instance_of(path),
        jobs=[job.name for job in config.settings.job],
    )
    try:
        write_textfile(path, text)
    except OSError as exc:  # the machine's answer, said of the setting (not of the temp file)
        raise MetricsNotWritten(
            f"daemon.metrics_file {path} not written: {exc.strerror or exc}"
        ) from None


def follow_up(
    config: Config,
    job: JobSection,
    catalog: Catalog,
    record: RunRecord,
    cancel: CancelToken = NEVER,
) -> None:
    """Everything that reads the finished record; never fails the run it follows. cancel (the
    daemon stops): the steps not begun are left, a hook running is stopped, and the follow-up
    stays owed, run again whole by the next lock-taking command (as after a signal in the
    foreground)."""
    # what its steps log (a hook, a notification's failure) belongs to the run too
    with log.run_context(run_id=record.id, job=job.name, mode=record.mode):
        _follow_up(config, job, catalog, record, cancel)


def _follow_up(
    config: Config, job: JobSection, catalog: Catalog, record: RunRecord, cancel: CancelToken
) -> None:
    logger = log.get(run_id=record.id, job=job.name)

    def step(name: str, action: Callable[[], None]) -> bool:
        if cancel.cancelled:
            raise Interrupted(DAEMON_SHUTDOWN)
        try:
            action()
        except BackupdError as exc:  # explained in its one line: no traceback wanted
            logger.error("after_run.step_failed", step=name, error=exc.line())
            return False
        except Exception as exc:
            logger.error("after_run.step_failed", step=name, error=str(exc), exc_info=True)
            return False
        return True

    def verify_it() -> None:
        # verify's readers and restore test: loaded by the runs that verify, not by every
        # command that imports this module (through run.guard)
        from influx_backupd.verify.check import save_result, verify

        if not record.archive:
            return
        result = verify(
            config,
            Path(record.archive),
            record,
            restore_test=job.verify_restore_test,
        )
        save_result(catalog, record, result)

    def prune_it() -> None:

        prune(config, catalog, job=job.name, hold=offsite.unsent_holds(config, catalog))

    def hooks() -> None:
        argv = job.on_success if record.good else job.on_failure
        if argv:
            name = "on_success" if record.good else "on_failure"
            result = run_hook(argv, environment(record), job.hook_timeout, name=name, cancel=cancel)
            if result.cancelled:
                raise Interrupted(DAEMON_SHUTDOWN)

    event = notify.event_for(record)

    def message() -> str:
        return notify.summary(event, record, log.RUN_TAILS.tail(record.id))

    def beat() -> None:
        if job.heartbeat_url:
            signal: heartbeat.Signal = "success" if record.good else "fail"
            heartbeat.ping(job.heartbeat_url, signal, body=message())

    def notify_it() -> None:
        section = config.settings.notify
        notify.send(
            getattr(section, event),
            notify.title(event, record),
            message(),
            event=event,
            timeout=section.timeout,
            run_id=record.id,
        )

    try:
        if record.ok and job.verify_after_backup:
            step("verify", verify_it)
        # Only a good run may prune: the plan keeps the newest good backup, and that must be it.
        if record.good:
            step("prune", prune_it)
        if record.status == "failed":
            step("space", lambda: name_what_holds_the_space(config, catalog, record))
        step("metrics", lambda: write_metrics(config, catalog))
        step("hooks", hooks)
        step("heartbeat", beat)
        step("notify", notify_it)
    except Interrupted as exc:
        # The run itself is finished and recorded; a signal only cuts what follows it short,
        # and the follow-up stays owed: the next lock-taking command runs it again whole.
        logger.warning("after_run.interrupted", signal=str(exc))
        return
    step("settle", lambda: catalog.followed_up(record.id))


# how a run that failed for want of space says so (our preflight; ENOSPC and EDQUOT's strerror)
_NO_SPACE = ("not enough space", "no space left", "disk quota")


def held_for_the_bucket(config: Config, catalog: Catalog, record: RunRecord) -> set[str]:
    """The backups hold_unsent keeps, when record is a run failed for want of space (else
    none): what an endpoint down for days fills the storage dir with."""
    error = record.error or ""
    if record.status != "failed" or not any(w in error.lower() for w in _NO_SPACE):
        return set()
    return set(offsite.unsent_holds(config, catalog))


def name_what_holds_the_space(config: Config, catalog: Catalog, record: RunRecord) -> None:
    """A run failed for want of space while backups wait for the bucket: say that hold_unsent
    keeps them (an endpoint down for days is what fills the storage dir), in the record's error
    that hooks and notifications pass on, and in a warning."""
    if "hold_unsent" in (record.error or ""):  # said by an earlier try of this follow-up
        return
    held = held_for_the_bucket(config, catalog, record)
    if not held:
        return
    error = record.error or ""
    records = [r for r in catalog.list() if r.id in held]
    size = sum(r.bytes for r in records)
    last_error = offsite.State.load(config.state_dir).last_error  # no bucket request
    said = (
        f"{len(records)} backup(s), {size} bytes, are kept until they are off-site "
        "([offsite] hold_unsent)"
        + (f"; the last off-site error: {last_error}" if last_error else "")
    )
    record.error = f"{error}; {said}"
    catalog.save(record)
    log.get(run_id=record.id, job=record.job).warning(
        "offsite.holding_space",
        held=len(records),
        bytes=size,
        last_error=last_error,
        detail="mend the endpoint (`influx-backupd offsite sync` says what fails) or set "
        "hold_unsent = false to let local retention delete them",
    )


def left_down_alarm(config: Config) -> alarms.Handler:
    """What the first failed start after our stop sets off, at once, without waiting: the
    metrics' left_down (the InfluxdLeftDown alert), the failure notifications and the job's
    heartbeat /fail (core/alarms.py)."""

    def alarm(job_name: str | None, error: str) -> None:
        with contextlib.suppress(Exception):
            write_metrics(config, Catalog(config.state_dir))
        subject, body = notify.left_down_message(job_name, error)
        pinged = _told_of_failure(config, job_name, subject, body)
        log.get(job=job_name).warning(
            "influxd.left_down_alarm",
            notified=len(config.settings.notify.failure),
            heartbeat=pinged,
        )

    return alarm


def not_started_alarm(
    config: Config, job_name: str, error: str, cancel: CancelToken = NEVER
) -> None:
    """A scheduled run the daemon could not begin (no record, so no follow-up of its own): the
    failure notifications and the job's heartbeat /fail, without waiting for them, then its
    on_failure hook (INFLUX_BACKUPD_STATUS=not_started), waited for as after a run."""
    subject, body = notify.not_started_message(job_name, error)
    _told_of_failure(config, job_name, subject, body)
    job = next((j for j in config.settings.job if j.name == job_name), None)
    if job is not None and job.on_failure:
        env = not_started_environment(job.name, job.mode, error)
        run_hook(job.on_failure, env, job.hook_timeout, name="on_failure", cancel=cancel)


def _told_of_failure(config: Config, job_name: str | None, subject: str, body: str) -> bool:
    """The failure notifications and job_name's heartbeat /fail, sent without waiting for
    either (an alarm raised where nothing may wait). Whether a heartbeat was pinged."""
    section = config.settings.notify
    notify.send_detached(section.failure, subject, body, event="failure", timeout=section.timeout)
    job = next((j for j in config.settings.job if j.name == job_name), None)
    if job is None or not job.heartbeat_url:
        return False
    threading.Thread(
        target=heartbeat.ping,
        args=(job.heartbeat_url, "fail"),
        kwargs={"body": f"{subject}\n{body}"},
        name="heartbeat-alarm",
        daemon=True,
    ).start()
    return True


def tell_verify_failed(config: Config, record: RunRecord) -> None:
    """A later check (the daemon's [verify]) found this run's backup bad: its job's on_failure
    hook, with the record (INFLUX_BACKUPD_VERIFY=failed and the errors in _VERIFY_DETAIL), as
    after a run whose verify failed. A hook never raises."""
    job = next((j for j in config.settings.job if j.name == record.job), None)
    if job is not None and job.on_failure:
        run_hook(job.on_failure, environment(record), job.hook_timeout, name="on_failure")
    section = config.settings.notify
    notify.send(
        section.verify_failed,
        notify.title("verify_failed", record),
        notify.summary("verify_failed", record),
        event="verify_failed",
        timeout=section.timeout,
        run_id=record.id,
    )
