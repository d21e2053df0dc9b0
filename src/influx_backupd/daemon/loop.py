"""`influx-backupd run`: the scheduler, one worker that runs backups one at a time, signals.

Threads:
- main: the loop. Signal handlers only queue the signal (like gunicorn's arbiter); the loop
  acts on it between ticks: SIGHUP reloads, SIGTERM/SIGINT stop. Each tick it publishes the
  state (STATUS=, state_dir/daemon.json) and proves it is alive to the watchdog.
- APScheduler: fires triggers; a fire only queues the job (it never runs a backup itself).
- worker: takes queued runs one at a time, each under the backup lock (guard.exclusive).

Overlap: a job due while another runs waits and then runs once (a job already waiting is not
queued twice); a job due while that same job still runs is skipped with a logged reason. A run
that would start later than its job's catch_up after it was due is skipped, logged. The
scheduled verify ([verify]) queues like a job, but yields to a backup that falls due: it stops
between archives and queues itself again behind it.

Why one module of this size: the Daemon's state (the queue of due runs, the run in flight,
the stopping flag, what is published) is shared by the signal handling, the scheduler's callbacks,
the worker and the status; split into mixins, each part would read state defined elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from influx_backupd import __version__
from influx_backupd.core import log, systemd, unit_paths
from influx_backupd.core.atomic import replace_file
from influx_backupd.core.cancel import CancelToken
from influx_backupd.core.config import (
    Config,
    ConfigError,
    JobSection,
    Scheduled,
    job_warnings,
    load,
)
from influx_backupd.core.errors import EXIT_FAILED, BackupdError
from influx_backupd.core.interrupt import OTHER_ENDING, gate_job_control, signal_name
from influx_backupd.core.journal import journal_available
from influx_backupd.core.jsontext import count
from influx_backupd.core.processes import own_identity
from influx_backupd.core.schedule import build_trigger, describe, missed_run
from influx_backupd.daemon.status import STATE_FILE
from influx_backupd.influxd import logfile, server
from influx_backupd.influxd.server import BACKOFF_CAP_S, Influxd, InfluxdError, backoff
from influx_backupd.report.metrics import DaemonFacts
from influx_backupd.run import offsite
from influx_backupd.run.followup import (
    MetricsNotWritten,
    held_for_the_bucket,
    not_started_alarm,
    tell_verify_failed,
    write_metrics,
)
from influx_backupd.run.guard import RollbackBlocked, exclusive
from influx_backupd.run.runner import ModeUnavailable, Skipped, run_backup
from influx_backupd.store.catalog import Catalog, CatalogError
from influx_backupd.store.record import RunRecord
from influx_backupd.store.state import (
    DAEMON_LOCK,
    BackupLock,
    Busy,
    ClockSteps,
    CrashMarker,
    StateDirError,
    lock_held,
    lock_wanted,
)
from influx_backupd.store.state import OFFSITE as STATE_OFFSITE
from influx_backupd.verify.check import verify_all

DAEMON_RUN_START_ATTEMPTS = 3
TICK = 1.0  # seconds between main-loop ticks
MAIN_LOOP_CATALOG_WAIT = 0.5  # seconds the main loop waits for a catalog another process holds
# The metrics file's heartbeat: rewritten at least this often, so that an alert can tell a dead
# daemon (heartbeat older than a few minutes) from a quiet one.
METRICS_EVERY = 30.0
SIGNALLED_LOOK_S = 2.0  # how often a signalled, still running influxd is looked at
LEFT_DOWN_LOOK_S = 5.0  # how often an idle daemon looks for a marker another process left
STALL = 30.0  # a main loop silent this long is hung: the watchdog stops pinging
EXTEND_EVERY = 10.0  # while a stop waits for a run: ask systemd for EXTEND_BY more this often
EXTEND_BY = 60.0
CLOCK_JUMP = 5.0  # wall clock vs monotonic drift that counts as a suspend or clock change
_SCHEDULE_KEYS = ("schedule", "every", "jitter", "timezone", "catch_up")
# The scheduled `verify --all` ([verify]) in the queue and the scheduler; not a valid job name.
VERIFY_ALL = "[verify]"
# Off-site copies ([offsite]): queued after each backup and at start-up; yields to backups.
OFFSITE = "[offsite]"
_LEFT_BEHIND = object()  # _sync_yielding: the sync was left on a request that does not end
OFFSITE_RETRY_MAX = 6 * 3600.0  # the longest wait between tries after failures
# any signal that would end the daemon ends it cleanly, as SIGTERM does (a run in flight
# finishes: influxd runs again before we exit)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, *OTHER_ENDING)


@dataclass(frozen=True)
class Due:
    job: str
    due: float  # epoch seconds the run was due
    reason: str  # "schedule" or "catch-up"


# events that show a follow-up step under way (False) or over (True)
_STEP_EVENTS = (
    ("verify.finished", "verify", True),
    ("verify.", "verify", False),
    ("prune.finished", "prune", True),
    ("prune.", "prune", False),
    ("hook.finished", "hooks", True),
    ("heartbeat.", "heartbeat", True),
    ("notify.", "notify", True),
)


def _after_run_seen(steps: list[str], event: MutableMapping[str, Any]) -> list[str]:
    """steps without those an event shows to be over."""
    name = str(event.get("event", ""))
    found: tuple[str, bool] | None = None
    if name == "after_run.step_failed":
        found = (str(event.get("step")), True)
    else:
        found = next(((step, over) for p, step, over in _STEP_EVENTS if name.startswith(p)), None)
        if found is None and event.get("action") == "prune":  # its other events (clean, …)
            found = ("prune", False)
    if found is None or found[0] not in steps:
        return steps
    at = steps.index(found[0])
    return steps[at + 1 :] if found[1] else steps[at:]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Readers (`status`) see the old file or the new one, never half of one."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    replace_file(path, text.encode(), durable=False)  # rewritten as it changes: no fsync


def _now() -> bool:
    """exclusive()'s give_up for a take that waits for no off-site send: Busy at once."""
    return True


def daemon_lock(state_dir: Path) -> BackupLock:
    """One daemon per state_dir: flock held for the daemon's lifetime (dropped if it dies)."""
    return BackupLock(
        state_dir / DAEMON_LOCK,
        busy_means=f"another influx-backupd daemon uses state_dir {state_dir}",
    )


class Daemon:
    def __init__(self, config: Config, *, log_level: str | None = None) -> None:
        self.config = config
        # the level logging was set up with (a reload cannot change it: said at the reload)
        self._log_level = log_level or config.settings.daemon.log_level
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending: list[Due] = []
        self._running: str | None = None  # the job of the run in flight
        self._current: dict[str, Any] = {}  # run_id, mode, phase: from the run's own log events
        self._starting = False  # run(): recovery of what a predecessor left is under way
        self._skips: dict[str, dict[str, Any]] = {}  # job → the last policy skip
        # job → (count, last time, its error): scheduled runs that could not begin (no record)
        self._not_started: dict[str, tuple[int, float, str]] = {}
        self._offsite_failures = 0  # in a row: the retry waits double each time
        self._held_sync: threading.Thread | None = None  # a sync left behind on a stuck request
        self._stopping = threading.Event()
        # cancelled on SIGTERM: a hot run's tool is stopped by the job itself, no fallback run
        # starts, and a cold run not yet at its stop request is abandoned (influxd untouched);
        # one past it finishes, influxd started again
        self._cancel = CancelToken()
        self._last_tick = time.monotonic()
        self._metrics_written = 0.0
        self._metrics_failing: str | None = None  # the last write's error, logged once
        self._tick_failing: dict[str, str] = {}  # a main-loop step's last error, logged once
        self._clock_offset = time.time() - time.monotonic()
        self._started_at = time.time()
        self._identity = own_identity()
        self._published: dict[str, Any] | None = None
        self._lock: BackupLock | None = None  # the daemon lock, held from run() on
        self._lock_lost = False  # another process took the state dir: exit 1
        self._publish_failed: str | None = None  # the error daemon.json's last write got
        self._status_line = ""
        # influxd left stopped (a crash marker): when the worker tries to start it next, and
        # what the status line says about it meanwhile
        self._next_start: float | None = None
        self._left_down_looked = 0.0  # monotonic: when _watch_left_down last read the marker
        self._down_note: str | None = None
        self._blocked_said: str | None = None  # the rollback_blocked reason the log last gave
        self._worker = threading.Thread(target=self._work, name="backup-worker", daemon=True)
        self._watchdog = systemd.Watchdog(self.alive)
        self._scheduler: Any = None
        self._log = log.get()

    # -- the run's phase, from its own log events (a structlog processor) -----------------
    def observe(
        self, _logger: object, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if threading.current_thread() is self._worker:
            with contextlib.suppress(Exception):  # status must never break a log line
                self._follow(event_dict)
        return event_dict

    def _follow(self, event: MutableMapping[str, Any]) -> None:
        current = dict(self._current)
        steps: list[str] | None = current.get("after_run")
        run_id = event.get("run_id")
        # after the run, prune names the runs it removes and has no phase: still this run's
        # follow-up; a fallback run starts with a phase of its own
        if (
            run_id is not None
            and current.get("run_id") != run_id
            and (steps is None or "phase" in event)
        ):
            current = {"run_id": run_id, "since": time.time()}
            steps = None
        if steps is None:
            if run_id is None:
                return
            for key in ("job", "mode", "phase"):
                if key in event:
                    current[key] = event[key]
            if event.get("event") == "run.finished":
                steps = self._after_run_steps(current.get("job"), event.get("record"))
        else:
            steps = _after_run_seen(steps, event)
        if steps is not None:
            # what is left of the follow-up (run/followup.py), the step under way first: its
            # steps log no start of their own, only what they did
            current["after_run"] = steps
            current["phase"] = "after run" + (": " + ", ".join(steps) if steps else "")
        self._current = current  # one assignment: readers never see half an update

    def _after_run_steps(self, job_name: Any, record: Any) -> list[str]:
        """The follow-up steps that take time, in order, for this finished run."""
        job = next((j for j in self.config.settings.job if j.name == job_name), None)
        if job is None or not isinstance(record, dict):
            return []
        ok = record.get("status") == "ok"
        told = self.config.settings.notify
        return [
            step
            for step, applies in (
                ("verify", ok and job.verify_after_backup),
                ("prune", ok),
                ("hooks", bool(job.on_success if ok else job.on_failure)),
                ("heartbeat", bool(job.heartbeat_url)),
                ("notify", bool(told.success or told.verify_failed if ok else told.failure)),
            )
            if applies
        ]

    # -- start and the main loop ------------------------------------------------------------
    def run(self) -> int:
        lock = self._lock = daemon_lock(self.config.state_dir)
        try:
            lock.acquire()
        except StateDirError as exc:
            # No restart mends a state_dir this daemon cannot write (under a unit, its sandbox
            # is the usual why): 78, which the unit's RestartPreventExitStatus= does not retry,
            # with the ReadWritePaths= hint a storage dir's error already gives.
            why = exc.os_error
            if why is None or why.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            raise ConfigError(
                f"{self.config.path}: {unit_paths.explain(self.config, why)}"
            ) from None
        try:
            for sig in (*_STOP_SIGNALS, signal.SIGHUP):
                signal.signal(sig, self._queue_signal)
            gate_job_control()  # `kill -TSTP` in a run's stop window: obeyed once influxd runs
            # said before recovery, which may wait on influxd's start for minutes: `status`
            # meanwhile shows the daemon starting, not "not running"
            self._starting = True
            self._publish()
            self._recover_keeping_alive()
            self._starting = False
            early = self._stop_signal_queued()
            if early is not None:
                # a SIGTERM during recovery, acted on now that influxd runs: no run starts
                self._stopping.set()
                systemd.stopping()
                self._log.info("daemon.stopping", signal=signal_name(early))
                self._write_metrics(stopping=True)
            else:
                try:
                    self._serve()
                except BaseException as exc:
                    # whatever ends the daemon, a run in flight finishes first: a cold run in
                    # its stop window starts influxd again before we return (the worker is a
                    # daemon thread, which the interpreter would abandon at exit)
                    self._log.error("daemon.failed", error=f"{type(exc).__name__}: {exc}")
                    self._stop_after_failure()
                    raise
            status = self._exit_status()
            if self._lock_lost:
                status = EXIT_FAILED  # not stopped by anyone: the state dir went to another
        finally:
            if not self._lock_lost:  # else daemon.json is the new holder's
                with contextlib.suppress(OSError):
                    (self.config.state_dir / STATE_FILE).unlink()
            lock.release()
        self._log.info("daemon.stopped", exit_status=status)
        return status

    def _serve(self) -> None:
        """From the scheduler's start to the end of the stop (the worker's run finished)."""
        self._start_scheduler()
        self._worker.start()
        self._watchdog.start()
        self._publish()
        self._write_metrics()
        self._trim_influxd_log()
        systemd.ready()
        self._tell_unwritable()
        self._log.info(
            "daemon.ready",
            pid=os.getpid(),
            config=str(self.config.path),
            jobs=self._job_summary(),
            watchdog_s=self._watchdog.interval,
        )
        signum = self._main_loop()
        self._shutdown(signal_name(signum))
        self._write_metrics(stopping=True)

    def _stop_signal_queued(self) -> int | None:
        """A SIGTERM/SIGINT that arrived while nothing could act on it (start-up recovery);
        a SIGHUP is queued again for the main loop."""
        others: list[int] = []
        found: int | None = None
        while found is None:
            try:
                signum = self._signals.get_nowait()
            except queue.Empty:
                break
            if signum in _STOP_SIGNALS:
                found = signum
            else:
                others.append(signum)
        for signum in others:
            self._signals.put(signum)
        return found

    def _stop_after_failure(self) -> None:
        """The daemon is ending on an error: stop as on SIGTERM (the run in flight finishes);
        should that fail too, at least wait for the worker."""
        try:
            self._shutdown("an error in the daemon")
        except BaseException:
            while self._worker.is_alive():
                self._worker.join(TICK)

    def _exit_status(self) -> int:
        """1 when influxd may be left down (a crash marker, and no other process holding the
        backup lock to start it): exit 0 would keep Restart=on-failure from bringing the daemon
        back, and with it the recovery that keeps trying to start influxd. So too while a stop
        a run asked for may still take it down (a "signalled" marker whose server still runs:
        it outlasted stop_timeout): nobody watches it once we are gone."""
        state_dir = self.config.state_dir
        marker = CrashMarker(state_dir)
        left = marker.read()
        if lock_held(state_dir):
            return 0
        if left is not None and CrashMarker.signalled_runs(left):
            why = (
                f"influxd (pid {CrashMarker.named_pid(left)}) got the stop run "
                f"{left.get('run_id')} asked for and still runs: it may yet go down, and "
                "nobody starts it again once the daemon is gone (crash marker "
                f"{marker.path} left)"
            )
        elif CrashMarker.may_be_down(left):
            why = f"influxd may be down (crash marker {marker.path} left)"
        else:
            return 0
        self._log.error(
            "daemon.exit_influxd_down",
            error=(
                f"{why}: exit status 1, so that the unit's Restart=on-failure starts the "
                "daemon again and its recovery keeps trying to start influxd"
            ),
        )
        return EXIT_FAILED

    def _queue_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.put(signum)  # SimpleQueue.put is reentrant: safe in a handler

    def _main_loop(self) -> int:
        while True:
            try:
                signum: int | None = self._signals.get(timeout=TICK)
            except queue.Empty:
                signum = None
            self._last_tick = time.monotonic()
            if signum in _STOP_SIGNALS:
                assert signum is not None
                return signum
            if signum == signal.SIGHUP:
                # a burst of SIGHUPs is one reload (each took its time: a SIGTERM waited behind
                # them); a stop among them comes first
                merged = self._queued_since()
                if merged is not None:
                    return merged
                try:
                    self.reload()
                except Exception as exc:  # a reload never ends the daemon (a run may be in flight)
                    self._log.exception("config.reload_failed", error=str(exc), kept="running")
                    systemd.ready()
            self._tick(stopping=False)

    def _queued_since(self) -> int | None:
        """Drain the signals queued after a SIGHUP: the stop signal among them (None: only
        more SIGHUPs, which the one reload covers)."""
        while True:
            try:
                again = self._signals.get_nowait()
            except queue.Empty:
                return None
            if again in _STOP_SIGNALS:
                return again

    def _tick(self, *, stopping: bool) -> None:
        """What the main loop does each tick, also while a stop waits for a run. Nothing here
        may end the daemon with a run in flight (a cold run's influxd would be abandoned):
        an unexpected error is logged in one line, once until it changes, and the loop goes on."""
        for name, step in (
            ("lock", self._check_lock),
            ("clock", self._check_clock),
            ("left down", self._watch_left_down),
            ("publish", self._publish),
            ("metrics", lambda: self._heartbeat(stopping=stopping)),
        ):
            try:
                step()
            except Exception as exc:
                line = f"{type(exc).__name__}: {exc}"
                if self._tick_failing.get(name) != line:
                    self._log.error("daemon.step_failed", step=name, error=line, then="goes on")
                self._tick_failing[name] = line
            else:
                self._tick_failing.pop(name, None)

    def _check_lock(self) -> None:
        """The daemon lock's file is still the one we hold. The state dir removed (or the lock
        replaced) under us: a second daemon could take a new lock there and run the same jobs.
        Taken again at once on the path (the state dir made again, 0700); if another process
        took it first, this daemon stops (after a run in flight), exit 1, and leaves the dir to
        it. The catalog made again is empty: said, with what rebuilds it."""
        lock = self._lock
        if lock is None or lock.still_held() or self._stopping.is_set():
            return
        lock.release()
        try:
            lock.acquire()
        except (Busy, StateDirError) as exc:
            self._log.error(
                "daemon.lock_lost",
                path=str(lock.path),
                error=exc.line(),
                then="stops: another process holds the state dir now",
            )
            self._lock = None
            self._lock_lost = True
            self._signals.put(signal.SIGTERM)
            return
        self._log.error(
            "daemon.lock_lost",
            path=str(lock.path),
            then="taken again",
            detail=(
                "the state dir was removed or its lock replaced under the running daemon; the "
                "catalog there is new: `influx-backupd import` rebuilds it from the records "
                "beside the archives"
            ),
        )

    def _heartbeat(self, *, stopping: bool) -> None:
        if time.monotonic() - self._metrics_written < METRICS_EVERY:
            return
        self._write_metrics(stopping=stopping)
        # daemon.json's mtime: when this daemon was last alive, for `status` after a kill
        with contextlib.suppress(OSError):
            os.utime(self.config.state_dir / STATE_FILE)
        self._trim_influxd_log()

    def _trim_influxd_log(self) -> None:
        """The influxd we started writes its log there as long as it runs (between cold runs)."""
        if self.config.settings.influxd.command:
            logfile.trim(self.config.state_dir / logfile.NAME, self._log)

    def _write_metrics(self, *, stopping: bool = False) -> None:
        """The metrics file with this daemon's heartbeat and next runs (none once stopping)."""
        self._metrics_written = time.monotonic()
        config = self.config
        if config.settings.daemon.metrics_file is None:
            return
        next_runs = {} if stopping else self._next_runs()
        facts = DaemonFacts(
            heartbeat=time.time(),
            next_runs={n: t for n, t in next_runs.items() if n != VERIFY_ALL and t is not None},
            not_started={job: (n, at) for job, (n, at, _) in self._not_started.items()},
        )
        try:
            # the main loop's: never stalled by a catalog another process holds (30 s was the
            # watchdog's own limit); said once, tried again with the next heartbeat
            write_metrics(config, Catalog(config.state_dir, timeout=MAIN_LOOP_CATALOG_WAIT), facts)
        except Exception as exc:  # a damaged catalog or state file, a full disk, a bug
            # said once, and again only when it changes: the heartbeat tries every 30 s. Never
            # raised: this runs in the main loop, whose end would abandon a run in flight
            known = isinstance(exc, OSError | sqlite3.Error | BackupdError)
            line = str(exc) if known else f"{type(exc).__name__}: {exc}"
            if line != self._metrics_failing:
                self._log.warning("metrics.write_failed", error=line)
            self._metrics_failing = line
            return
        if self._metrics_failing is not None:
            self._log.info("metrics.written_again", path=str(config.settings.daemon.metrics_file))
            self._metrics_failing = None

    def _check_clock(self) -> None:
        # A suspend or a clock change moves the wall clock against the monotonic one; the
        # scheduler sleeps on the monotonic clock, so wake it to look at its jobs again. A
        # step back leaves every next fire time computed under the old clock that far ahead
        # (a VM booted with its clock ahead, then corrected by NTP: no run for the size of the
        # step): they are computed again from the new clock.
        offset = time.time() - time.monotonic()
        jump = offset - self._clock_offset
        self._clock_offset = offset
        if abs(jump) <= CLOCK_JUMP:
            return
        back = jump < 0
        self._log.warning(
            "clock.jumped",
            by_s=round(jump, 1),
            then="next runs computed again from the new clock" if back else "scheduler woken",
        )
        if back:
            # counted for hot chains: files influxd writes from now on may be dated before the
            # last link's -since, so the next increment is a new full (jobs/plan.py)
            try:
                ClockSteps(self.config.state_dir).note_back(round(jump, 1))
            except OSError as exc:
                self._log.error("clock.step_not_noted", error=str(exc))
        if self._scheduler is None or self._stopping.is_set():  # not started, or shut down
            return
        if back:
            self._reschedule_all()
            self._shift_waits(jump)
        self._scheduler.wakeup()

    def _shift_waits(self, jump: float) -> None:
        """Waits set as wall clock + delay, moved with a clock stepped back: influxd's next
        start attempt and the off-site retry would otherwise wait the step on top."""
        if self._next_start is not None:
            self._next_start += jump
        retry = self._scheduler.get_job(OFFSITE + " retry")
        if retry is not None and retry.next_run_time is not None:
            when = max(retry.next_run_time.timestamp() + jump, time.time())
            retry.modify(next_run_time=datetime.fromtimestamp(when, UTC))

    def _reschedule_all(self) -> None:
        """Every job's and [verify]'s next run, computed again from the wall clock as it is."""
        catalog = Catalog(self.config.state_dir)
        for job in self.config.settings.job:
            self._add_job(job, catalog, startup=False)
        self._add_verify(catalog, startup=False)
        self._log.info(
            "schedule.recomputed",
            next_runs={n: _iso(t) for n, t in self._next_runs().items()},
        )

    def alive(self) -> bool:
        """The watchdog's health check: main loop ticking, worker and scheduler threads up."""
        if time.monotonic() - self._last_tick > STALL or not self._worker.is_alive():
            return False
        if self._stopping.is_set():
            return True
        thread = getattr(self._scheduler, "_thread", None)
        return thread is not None and thread.is_alive()

    # -- scheduling ---------------------------------------------------------------------------
    def _start_scheduler(self) -> None:
        import logging

        from apscheduler.events import EVENT_JOB_MISSED
        from apscheduler.schedulers.background import BackgroundScheduler

        # Its own warnings ("missed by …") are replaced by our schedule.missed event.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self._scheduler.start()
        catalog = Catalog(self.config.state_dir)
        for job in self.config.settings.job:
            self._add_job(job, catalog, startup=True)
        self._add_verify(catalog, startup=True)
        if offsite.enabled(self.config):
            self._fire(OFFSITE, "start")  # what an earlier run left unsent

    def _on_missed(self, event: Any) -> None:
        self._log.warning(
            "schedule.missed",
            job=event.job_id,
            due=event.scheduled_run_time.isoformat(timespec="seconds"),
            reason="woke up too late (suspend or clock jump): older than catch_up",
        )

    def _history(self, catalog: Catalog, job: str | None = None) -> list[RunRecord]:
        """What the schedule anchors on. A catalog that cannot be read (damaged, held, its
        disk failing) must not end the daemon at a reload or a start: the job is scheduled as
        if it had no run yet, and the runs themselves say what is wrong with the catalog."""
        try:
            return catalog.list(job=job) if catalog.exists() else []
        except CatalogError as exc:
            self._log.error(
                "schedule.catalog_unusable",
                job=job or VERIFY_ALL,
                error=str(exc),
                then="scheduled as if it had no earlier run",
            )
            return []

    def _add_job(self, job: JobSection, catalog: Catalog, *, startup: bool) -> None:
        records = self._history(catalog, job.name)
        starts = self._not_ahead(job.name, [(r.id, r.started_at) for r in records])
        self._schedule(job.name, job, max(starts, default=None), startup=startup)

    def _not_ahead(self, name: str, times: list[tuple[str, float]]) -> list[float]:
        """The times not in the future. A run recorded while the clock was ahead (corrected
        since) would put an `every` job's next run that far away: it is no anchor (said)."""
        now = time.time()
        ahead = sorted((t, run_id) for run_id, t in times if t > now)
        if ahead:
            self._log.warning(
                "schedule.record_in_the_future",
                job=name,
                run_ids=[run_id for _, run_id in ahead],
                latest=_iso(ahead[-1][0]),
                now=_iso(now),
                then="not anchored on: recorded while the clock was ahead",
            )
        return [t for _, t in times if t <= now]

    def _add_verify(self, catalog: Catalog, *, startup: bool) -> None:
        """[verify]: anchored at the oldest check of any good backup (a backup is checked when
        it is taken, and again by each verify), so every backup is checked again at least
        every `every`, however often the daemon restarts."""
        records = self._history(catalog)
        checked = [(r.id, r.verified_at or r.finished_at) for r in records if r.ok and r.archive]
        times = self._not_ahead(VERIFY_ALL, [(i, t) for i, t in checked if t is not None])
        oldest = min(times, default=None)
        self._schedule(VERIFY_ALL, self.config.settings.verify, oldest, startup=startup)

    def _schedule(self, name: str, when: Scheduled, last: float | None, *, startup: bool) -> None:
        """Add (or replace) name's trigger, or remove it when `when` has none (manual only); at
        start-up, run once what was missed since `last` if no older than catch_up, else log it."""
        last_dt = datetime.fromtimestamp(last, UTC) if last is not None else None
        anchor = last_dt if when.every is not None else None
        trigger = build_trigger(when, anchor=anchor)
        if trigger is None:
            if self._scheduler.get_job(name) is not None:
                self._scheduler.remove_job(name)
            return
        self._scheduler.add_job(
            self._fire,
            trigger,
            args=[name],
            id=name,
            name=name,
            replace_existing=True,
            misfire_grace_time=max(1, int(when.catch_up)),
            coalesce=True,  # however many were missed, at most one run
            max_instances=1,
        )
        if not startup:
            return
        plain = build_trigger(when, anchor=anchor, with_jitter=False)
        assert plain is not None
        now = datetime.now(UTC)
        missed = missed_run(plain, last_dt, now, when.catch_up)
        if missed is None:
            return
        if missed.catch_up:
            self._log.info(
                "schedule.catch_up",
                job=name,
                missed=missed.fire_time.isoformat(timespec="seconds"),
                last_run=_iso(last),
            )
            self._fire(name, "catch-up", missed.fire_time.timestamp())
        else:
            self._log.warning(
                "schedule.missed",
                job=name,
                due=missed.fire_time.isoformat(timespec="seconds"),
                last_run=_iso(last),
                reason=f"older than catch_up={when.catch_up:g}s: not run",
            )

    def _fire(self, name: str, reason: str = "schedule", due: float | None = None) -> None:
        """A trigger fired (APScheduler's thread): queue the run, never run it here."""
        due = time.time() if due is None else due
        with self._cond:
            if self._stopping.is_set():
                return
            if self._running == name:
                self._log.warning(
                    "run.skipped", job=name, reason="the previous run of this job is still running"
                )
                return
            for i, waiting in enumerate(self._pending):
                if waiting.job != name:
                    continue
                # One run, due at the newest fire: a wait that outlasts catch_up after the
                # older fire must not drop the run this newer one is owed
                if due > waiting.due:
                    self._pending[i] = Due(name, due, reason)
                self._log.info(
                    "run.skipped",
                    job=name,
                    reason="a run of this job is already waiting: it now counts as due at "
                    "this fire",
                )
                return
            ahead = [self._running] if self._running else []
            ahead += [d.job for d in self._pending]
            self._pending.append(Due(name, due, reason))
            if ahead:
                self._log.info("run.waiting", job=name, behind=ahead)
            self._cond.notify_all()

    def reload(self) -> None:
        """SIGHUP: a valid config replaces the jobs; a run in flight keeps the config it has."""
        systemd.reloading()
        path = self.config.path
        self._log.info("config.reloading", config=str(path))
        try:
            new = load(path)
            if new.state_dir != self.config.state_dir:
                raise ConfigError(
                    f"{path}: daemon.state_dir: changing it needs a restart "
                    f"(running with {self.config.state_dir})"
                )
            # what check-config refuses beyond load(): every scheduled run would fail, or
            # every backup go with the unit's private /tmp at its stop
            Influxd(new).refuse_unstartable()
            unit_paths.refuse_private_tmp(new)
        except ConfigError as exc:
            self._log.error(
                "config.reload_failed", config=str(path), error=str(exc), kept="the old config"
            )
            systemd.ready()
            return
        old = {j.name: j for j in self.config.settings.job}
        fresh = {j.name: j for j in new.settings.job}
        old_verify = self.config.settings.verify
        old_level = self.config.settings.daemon.log_level
        self.config = new
        catalog = Catalog(new.state_dir)
        for name in old.keys() - fresh.keys():
            with contextlib.suppress(Exception):
                self._scheduler.remove_job(name)
        changed = []
        for name, job in fresh.items():
            before = old.get(name)
            if before is None or any(getattr(before, k) != getattr(job, k) for k in _SCHEDULE_KEYS):
                changed.append(name)
                self._add_job(job, catalog, startup=False)
        if any(getattr(old_verify, k) != getattr(new.settings.verify, k) for k in _SCHEDULE_KEYS):
            changed.append(VERIFY_ALL)
            self._add_verify(catalog, startup=False)
        self._log.info(
            "config.reloaded",
            config=str(path),
            jobs=self._job_summary(),
            rescheduled=changed,
            removed=sorted(old.keys() - fresh.keys()),
        )
        self._publish()
        self._metrics_written = 0.0  # the next tick writes the new schedule's next runs
        systemd.ready()
        self._tell_unwritable()
        level = new.settings.daemon.log_level
        if level != old_level:  # not vs the level in effect: `run --log-level` overrides it
            self._log.warning(
                "config.warning",
                detail=f"daemon.log_level: changed to {level!r}; the daemon keeps logging at "
                f"{self._log_level!r} until it is restarted",
            )

    # -- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping.is_set() and not self._start_due():
                    self._cond.wait(TICK)
                if self._stopping.is_set():
                    return
                if not self._pending:
                    item = None
                else:
                    item = self._pending.pop(0)
                    self._running = item.job
            if item is None:
                self._start_influxd()
                continue
            try:
                if item.job == VERIFY_ALL:
                    self._verify_all(item)
                elif item.job == OFFSITE:
                    self._offsite(item)
                else:
                    self._run(item)
            except BackupdError as exc:
                # one of ours, before the run could begin (a state dir made read-only or
                # removed: no lock, so no record): its one line, not a traceback each fire
                self._not_begun(item, "run.not_started", exc.line())
            except Exception:
                # The worker must outlive any one run; the run's record says what happened.
                self._log.exception("run.crashed", job=item.job)
            finally:
                with self._cond:
                    self._running = None
                    self._current = {}
                self._note_left_down()
                # the run's own metrics write kept the next runs the file had (one now past):
                # the main loop's next tick writes them as they are
                self._metrics_written = 0.0

    # -- influxd left stopped: tried again between jobs, with backoff, for as long as it takes --
    def _watch_left_down(self) -> None:
        """A crash marker another process left: a foreground backup or restore killed (SIGKILL,
        the OOM killer) while influxd was stopped. The worker starts influxd as it does after
        its own runs; an idle daemon waited for its next scheduled run (an hour, a day) while
        `status` said it kept trying. A live command holding the lock is left alone: it
        starts influxd itself, and if it dies its lock goes with it."""
        now = time.monotonic()
        if now < self._left_down_looked + LEFT_DOWN_LOOK_S:
            return
        self._left_down_looked = now
        if self._running is not None or self._next_start is not None or self._starting:
            return
        marker = CrashMarker(self.config.state_dir)
        if not marker.path.exists() or lock_held(self.config.state_dir):
            return
        left = marker.read()
        if not CrashMarker.may_be_down(left) and not (left and CrashMarker.signalled_runs(left)):
            return
        self._log.warning(
            "daemon.left_down_found",
            run_id=left.get("run_id") if left else None,
            detail="a command that stopped influxd ended without starting it: starting it",
        )
        self._note_left_down()
        with self._cond:
            self._cond.notify_all()

    def _start_due(self) -> bool:
        return self._next_start is not None and time.time() >= self._next_start

    def _note_left_down(self, error: str | None = None, *, retry_in: float | None = None) -> None:
        """After a run (or a failed recovery): a crash marker left means influxd is down, and
        the worker tries to start it between jobs until it runs. retry_in: when the next
        attempt is due, if not after backoff of the start attempts failed so far."""
        left = CrashMarker(self.config.state_dir).read()
        if left is not None and CrashMarker.signalled_runs(left):
            # a server that got a run's stop and outlasted stop_timeout: looked at every few
            # seconds, and started again (by recovery) should it exit late
            self._next_start = time.time() + SIGNALLED_LOOK_S
            left = None
        elif not CrashMarker.may_be_down(left):
            # none, or a run killed before its stop: influxd runs; the next run clears it
            self._next_start, left = None, None
        if left is None:
            if self._down_note is not None:
                self._log.warning("daemon.influxd_running_again")
            self._down_note = None
            return
        failures = count(left.get("start_failures")) or 0
        last = error or left.get("last_start_error") or "not started yet"
        wait = retry_in if retry_in is not None else backoff(max(1, failures))
        if self._next_start is None or error is not None or retry_in is not None:
            self._next_start = time.time() + wait
        at = datetime.fromtimestamp(self._next_start, UTC).strftime("%H:%M:%SZ")
        blocked = left.get("rollback_blocked")
        if isinstance(blocked, str):
            # no start is tried until the rollback before it can be done: not "retrying"
            self._down_note = (
                f"restore {left.get('run_id')} killed before its check is not rolled back: "
                f"{blocked}; looked at again at {at}"
            )
            return
        tried = f"{failures} start attempts failed" if failures else "not started"
        self._down_note = (
            f"influxd down since run {left.get('run_id')}: {tried} (last: {last}); retrying at {at}"
        )

    def _start_influxd(self) -> None:
        """One start attempt under the backup lock (recovery does it), between jobs. Every
        failed attempt, whatever raised it, is noted: the status line, the left-down metric
        and the time of the next attempt."""
        self._next_start = None
        left = CrashMarker(self.config.state_dir).read()
        if left is not None and CrashMarker.signalled_runs(left):
            self._next_start = time.time() + SIGNALLED_LOOK_S  # still runs: nothing to start
            return
        try:
            # an off-site send holding the lock is not waited for here: tried again in 5 s
            with exclusive(self.config, start_attempts=1, doing="recovery", give_up=_now):
                pass
        except Busy:
            self._next_start = time.time() + 5.0  # a foreground command runs: it starts it
            return
        except RollbackBlocked as exc:
            self._rollback_blocked(exc)
            return
        except CatalogError as exc:  # after influxd's start (recovery needs no catalog for it)
            self._log.error("daemon.catalog_unusable", error=str(exc))
            self._note_left_down()
            self._write_metrics()
            return
        except Exception as exc:  # a start that failed; an OSError (a rename, the state_dir)
            self._note_failed(exc)
            self._log.error(
                "daemon.influxd_start_failed",
                error=str(exc) or type(exc).__name__,
                retry_at=_iso(self._next_start),
                detail="influxd stays down until a start succeeds; the daemon keeps trying",
            )
            return
        self._blocked_said = None
        self._note_left_down()
        self._write_metrics()  # influx_backupd_influxd_left_down back to 0

    def _note_failed(self, exc: Exception) -> None:
        """A recovery that failed, noted (the status line, the left-down metric, the next
        attempt): after backoff of the starts it counted, or BACKOFF_CAP_S when it failed
        before any start (an OSError: nothing counted, so no backoff grows)."""
        attempted = isinstance(exc, InfluxdError)
        self._note_left_down(
            str(exc) or type(exc).__name__, retry_in=None if attempted else BACKOFF_CAP_S
        )
        self._write_metrics()  # influx_backupd_influxd_left_down 1

    def _rollback_blocked(self, exc: RollbackBlocked) -> None:
        """Recovery of a killed restore stopped nothing: the renames of its rollback cannot be
        made by this process (the unit's sandbox). Tried again every BACKOFF_CAP_S (a remount,
        a command run by hand may end it), said in the log once per reason."""
        if str(exc) != self._blocked_said:
            self._log.error("daemon.rollback_blocked", error=str(exc))
            self._blocked_said = str(exc)
        self._note_left_down(retry_in=BACKOFF_CAP_S)
        self._write_metrics()

    def _run(self, item: Due) -> None:
        queued = self.config  # as the run was queued (the lock it waits for is that state dir's)
        first = next((j for j in queued.settings.job if j.name == item.job), None)
        if first is None:
            self._log.info("run.dropped", job=item.job, reason="the job is no longer configured")
            return

        def backup(catalog: Catalog, late: float) -> None:
            # a reload while the run waited for the lock: it runs as its job is configured now,
            # or not at all (a job removed or renamed; the state dir moved, whose lock it holds)
            config = self.config  # a reload from now on does not touch this run
            job = next((j for j in config.settings.job if j.name == item.job), None)
            if job is None or config.state_dir != queued.state_dir:
                why = "no longer configured" if job is None else "moved: its state dir changed"
                self._log.info(
                    "run.dropped",
                    job=item.job,
                    reason=f"the job is {why} (a reload while it waited for the lock)",
                )
                return
            self._current = {"job": job.name, "phase": "policy", "since": time.time()}
            self._log.info("run.due", job=job.name, reason=item.reason, late_s=round(late, 3))
            try:
                record = run_backup(config, job, catalog, scheduled=True, cancel=self._cancel)
            except Skipped as exc:
                self._skips[job.name] = {"at": time.time(), "reasons": exc.decision.reasons}
                return
            except ModeUnavailable as exc:
                self._log.error("run.unavailable", job=job.name, error=str(exc))
                return
            self._after_stop_request(catalog, record)
            if record.good and job.offsite and offsite.enabled(config):
                self._fire(OFFSITE, "after a backup")  # after the lock: influxd serves again
            elif held_for_the_bucket(config, catalog, record):
                # backups hold_unsent keeps fill the storage dir: the bucket is tried now, not
                # when the back-off says (up to 6 h of refused runs after the endpoint is back)
                self._fire(OFFSITE, "backups held for the bucket fill the storage dir")

        self._with_lock(queued, item, first.catch_up, backup)

    def _offsite(self, item: Due) -> None:
        """[offsite]: send what the bucket lacks, under the lock, stopping between objects for
        a backup that falls due (queued again behind it). A failure is logged and told to the
        on_failure hooks, and tried again after [offsite] retry_after, doubling up to 6 h (the
        next backup queues it too)."""
        config = self.config
        if self._held_sync is not None and self._held_sync.is_alive():
            # a sync left behind still waits on its request: never two at once
            self._log.warning(
                "offsite.still_held", reason="an earlier upload's request has not ended"
            )
            # the same hung request, seen again: not a new failure (each counted doubled the
            # wait: 60 s to 480 s within a minute for one request)
            self._retry_offsite(config, new_failure=False)
            return

        def send(catalog: Catalog, _late: float) -> None:
            self._current = {"job": OFFSITE, "phase": "upload", "since": time.time()}
            report = self._sync_yielding(config, catalog)
            if report is _LEFT_BEHIND:
                return
            if report is None and not self._stopping.is_set():
                self._retry_offsite(config)
            elif report is not None:
                self._offsite_failures = 0
            if report is not None and report.yielded and not self._stopping.is_set():
                waiting = lock_wanted(config.state_dir)
                reason = f"{waiting} waits for the lock" if waiting else "a backup is due"
                self._log.info("offsite.yielded", reason=f"{reason}: resumed after it")
                with self._cond:
                    self._pending.append(Due(OFFSITE, time.time(), "resume"))
                    self._cond.notify_all()
            try:
                write_metrics(config, catalog)
            except (OSError, MetricsNotWritten) as exc:
                self._log.error("after_run.step_failed", step="metrics", error=str(exc))

        self._with_lock(config, item, float("inf"), send)

    def _sync_yielding(self, config: Config, catalog: Catalog) -> Any:
        """run_sync in a thread of its own, asked to stop between objects when a backup is due
        or the daemon stops. It yields there; a request that does not end (an endpoint that
        answers a byte at a time defeats the read timeout) would hold the backup for good, so
        after [offsite] yield_within it is left behind (its thread ends when the request does,
        doing nothing more) and _LEFT_BEHIND is returned: the backup goes first."""
        section = config.settings.offsite
        grace = section.yield_within if section is not None else 60.0
        left_behind = threading.Event()

        def stop() -> bool:
            # a foreground command (cron's `backup`, a restore) waiting for the lock too
            return (
                left_behind.is_set()
                or self._stopping.is_set()
                or self._backup_waiting()
                or lock_wanted(config.state_dir) is not None
            )

        outcome: list[Any] = []
        thread = threading.Thread(
            target=lambda: outcome.append(offsite.run_sync(config, catalog, stop=stop)),
            name="offsite-sync",
            daemon=True,
        )
        thread.start()
        asked: float | None = None
        stall_after = section.stall_after if section is not None else 300.0
        while True:
            thread.join(0.5)
            if not thread.is_alive():
                return outcome[0] if outcome else None
            stalled = offsite.stalled_for() >= stall_after
            if not stop() and not stalled:
                asked = None
                continue
            asked = asked if asked is not None else time.monotonic()
            if stalled or time.monotonic() - asked >= grace:
                left_behind.set()
                self._held_sync = thread
                reason = (
                    f"a request to the endpoint has made no progress for stall_after "
                    f"({stall_after:.0f}s)"
                    if stalled
                    else "a request to the endpoint has not ended; the upload did not stop "
                    f"within yield_within ({grace:.0f}s)"
                )
                self._log.warning(
                    "offsite.left_behind",
                    reason=reason,
                    then="resumed after what is due, once that request ends",
                )
                if not self._stopping.is_set():
                    self._retry_offsite(config)
                return _LEFT_BEHIND

    def _retry_offsite(self, config: Config, *, new_failure: bool = True) -> None:
        section = config.settings.offsite
        if section is None:
            return
        if new_failure or not self._offsite_failures:
            self._offsite_failures += 1
        delay = min(OFFSITE_RETRY_MAX, section.retry_after * 2 ** (self._offsite_failures - 1))
        self._scheduler.add_job(
            self._fire,
            "date",
            run_date=datetime.fromtimestamp(time.time() + delay, UTC),
            args=[OFFSITE, "retry"],
            id=OFFSITE + " retry",
            replace_existing=True,
        )
        self._log.info(
            "offsite.retry_scheduled", in_s=round(delay, 1), failures=self._offsite_failures
        )

    def _verify_all(self, item: Due) -> None:
        """[verify]: every good backup checked again, under the backup lock, between runs."""

        config = self.config  # a reload from now on does not touch this check
        section = config.settings.verify

        def check(catalog: Catalog, _late: float) -> None:
            self._current = {"job": VERIFY_ALL, "phase": "verify", "since": time.time()}
            started = time.monotonic()
            results = verify_all(
                config,
                catalog,
                deep=section.deep,
                restore_test=section.restore_test,
                stop=lambda: self._stopping.is_set() or self._backup_waiting(),
            )
            yielded = not self._stopping.is_set() and self._backup_waiting()
            if yielded:  # the rest after the backups now due: least recently checked first
                with self._cond:
                    self._pending.append(Due(VERIFY_ALL, time.time(), "resume"))
                    self._cond.notify_all()
            try:
                write_metrics(config, catalog)
            except (OSError, MetricsNotWritten) as exc:
                self._log.error("after_run.step_failed", step="metrics", error=str(exc))
            for result in results:
                record = catalog.get(result.run_id) if result.run_id and not result.ok else None
                if record is not None:
                    tell_verify_failed(config, record)
            # Last: once it is logged, the catalog, the metrics and the hooks all know.
            failed = [f"{r.run_id}: {'; '.join(r.errors)}" for r in results if not r.ok]
            (self._log.error if failed else self._log.info)(
                "verify.scheduled",
                reason=item.reason,
                checked=len(results),
                ok=len(results) - len(failed),
                failed=failed,
                cut_short="daemon stopping"
                if self._stopping.is_set()
                else ("a backup is due: resumed after it" if yielded else None),
                took_s=round(time.monotonic() - started, 3),
            )

        self._with_lock(config, item, section.catch_up, check)

    def _backup_waiting(self) -> bool:
        with self._cond:
            return any(d.job not in (VERIFY_ALL, OFFSITE) for d in self._pending)

    def _with_lock(
        self,
        config: Config,
        item: Due,
        catch_up: float,
        action: Callable[[Catalog, float], None],
    ) -> None:
        """action(catalog, seconds late) under the backup lock, once it is free; given up when
        the wait would start it later than catch_up after it was due, or the daemon stops."""
        waited_for_lock = False
        doing = {OFFSITE: STATE_OFFSITE, VERIFY_ALL: "verify"}.get(item.job, "backup")

        def give_up() -> bool:  # waiting for an off-site send (another process's) to yield
            return self._stopping.is_set() or time.time() - item.due > catch_up

        while True:
            late = time.time() - item.due
            if late > catch_up:
                why = f"it would start {late:.0f}s after it was due, later than catch_up"
                if waited_for_lock:  # held from it by another holder of the lock
                    self._not_begun(item, "run.skipped", f"{why} (the backup lock was held)")
                else:
                    self._log.warning("run.skipped", job=item.job, reason=why)
                return
            if self._stopping.is_set():
                self._log.info("run.dropped", job=item.job, reason="the daemon is stopping")
                return
            try:
                with exclusive(config, doing=doing, give_up=give_up) as catalog:
                    # late as it starts: exclusive() may have waited for a send to yield
                    action(catalog, time.time() - item.due)
                    return
            except Busy as exc:
                if item.job in (OFFSITE, VERIFY_ALL) and self._backup_waiting():
                    # a send or check that cannot have the lock now (a command waits for it,
                    # a send of its own holds it, for as long as they like) must not hold up
                    # the backups queued behind it, which may take the lock: they go first
                    self._log.info(
                        "run.deferred",
                        job=item.job,
                        reason=f"{exc}: the backups queued behind it go first",
                    )
                    with self._cond:
                        if not any(d.job == item.job for d in self._pending):
                            self._pending.append(Due(item.job, item.due, item.reason))
                        self._cond.notify_all()
                    return
                if not waited_for_lock:
                    self._log.info("run.waiting_for_lock", job=item.job, detail=str(exc))
                    waited_for_lock = True
                self._stopping.wait(1.0)
            except InfluxdError as exc:  # recovery could not start influxd
                self._not_begun(item, "run.failed_to_start", str(exc))
                return
            except CatalogError as exc:  # damaged (import rebuilds it), held or read-only
                self._not_begun(item, "run.catalog_unusable", str(exc))
                return

    def _not_begun(self, item: Due, event: str, error: str) -> None:
        """A run that could not begin, so that no record tells of it: said, and for a backup
        job counted (the metrics' runs_not_started_total, `status`) and told to the failure
        notifications, its heartbeat and its on_failure hook, as a failed run is."""
        self._log.error(event, job=item.job, error=error)
        if item.job in (OFFSITE, VERIFY_ALL) or self._stopping.is_set():
            return
        count = self._not_started.get(item.job, (0, 0.0, ""))[0]
        self._not_started[item.job] = (count + 1, time.time(), error)
        config = self.config
        with contextlib.suppress(Exception):  # an alarm never ends the worker
            not_started_alarm(config, item.job, error, self._cancel)
        self._metrics_written = 0.0  # the main loop's next tick writes the metrics file

    def _after_stop_request(self, catalog: Catalog, record: RunRecord) -> None:
        # A hot run we cut short on SIGTERM failed because we asked it to: say so.
        if self._stopping.is_set() and record.mode == "hot" and record.status == "failed":
            record.status = "interrupted"
            record.error = f"stopped by the daemon's shutdown ({record.error})"
            catalog.save(record)

    # -- stopping -----------------------------------------------------------------------------
    def _shutdown(self, why: str) -> None:
        """why: the signal's name, or what else ends the daemon."""
        self._stopping.set()
        self._cancel.cancel()  # a hot run's tool is stopped; no fallback run starts now
        systemd.stopping()
        self._log.info("daemon.stopping", signal=why)
        if self._scheduler is not None:
            with contextlib.suppress(Exception):  # not running (it failed to start): nothing
                self._scheduler.shutdown(wait=False)
        with self._cond:
            dropped, self._pending = self._pending, []
            self._cond.notify_all()
        for item in dropped:
            self._log.info("run.dropped", job=item.job, reason="the daemon is stopping")
        if self._running is not None:
            mode = self._current.get("mode")
            self._log.info(
                "daemon.waiting_for_run",
                job=self._running,
                mode=mode,
                action="stopping the hot backup"
                if mode == "hot"
                else "abandoning it unless influxd's stop was asked, then letting it finish",
            )
        last_extend = 0.0
        while self._worker.is_alive():
            self._last_tick = time.monotonic()
            if time.monotonic() - last_extend >= EXTEND_EVERY:
                systemd.extend_timeout(EXTEND_BY)
                last_extend = time.monotonic()
            self._tick(stopping=True)  # STATUS=, daemon.json, the metrics heartbeat
            self._worker.join(TICK / 2)
            with contextlib.suppress(queue.Empty):
                again = self._signals.get_nowait()
                self._log.info(
                    "daemon.still_stopping",
                    signal=signal_name(again),
                    detail="a backup is finishing; influxd is started again before exit",
                )
        self._watchdog.stop()

    # -- what others can see: STATUS=, daemon.json ---------------------------------------------
    def _job_summary(self) -> list[str]:
        return [f"{j.name}: {describe(j)}, mode {j.mode}" for j in self.config.settings.job]

    def _next_runs(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for job in self.config.settings.job:
            scheduled = self._scheduler.get_job(job.name) if self._scheduler else None
            when = getattr(scheduled, "next_run_time", None) if scheduled else None
            out[job.name] = when.timestamp() if when is not None else None
        scheduled = self._scheduler.get_job(VERIFY_ALL) if self._scheduler else None
        if scheduled is not None and scheduled.next_run_time is not None:
            out[VERIFY_ALL] = scheduled.next_run_time.timestamp()
        return out

    def _status_text(self, next_runs: dict[str, float | None]) -> str:
        text = self._job_status_text(next_runs)
        down = self._down_note
        return f"{down}; {text}" if down else text

    def _job_status_text(self, next_runs: dict[str, float | None]) -> str:
        if self._starting:
            return "starting: undoing what an earlier run left (influxd, partial archives)"
        current = self._current
        if self._running is not None:
            text = f"running {self._running}"
            if current.get("mode"):
                text += f" ({current['mode']})"
            text += f", phase {current.get('phase', 'starting')}"
            if current.get("run_id"):
                text += f", run {current['run_id']}"
            return ("stopping: waiting for " if self._stopping.is_set() else "") + text
        if self._stopping.is_set():
            return "stopping"
        upcoming = sorted((t, n) for n, t in next_runs.items() if t is not None)
        if not upcoming:
            return "idle; no scheduled jobs"
        when, name = upcoming[0]
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return f"idle; next: {name} at {stamp}"

    def _not_started_json(self, job: str) -> dict[str, Any] | None:
        if job not in self._not_started:
            return None
        count, at, error = self._not_started[job]
        return {"count": count, "at": at, "error": error}

    def _publish(self) -> None:
        next_runs = {} if self._stopping.is_set() else self._next_runs()
        line = self._status_text(next_runs)
        if line != self._status_line:
            systemd.status(line)
            self._status_line = line
        with self._cond:
            pending = [d.job for d in self._pending]
        state = {
            **self._identity,
            "started_at": self._started_at,
            "version": __version__,
            "config": str(self.config.path),
            "status": line,
            "stopping": self._stopping.is_set(),
            "jobs": {
                job.name: {
                    "schedule": describe(job),
                    "mode": job.mode,
                    "next_run": next_runs.get(job.name),
                    "last_skip": self._skips.get(job.name),
                    "not_started": self._not_started_json(job.name),
                }
                for job in self.config.settings.job
            },
            "verify": {
                "schedule": describe(self.config.settings.verify),
                "next_run": next_runs.get(VERIFY_ALL),
            },
            "running": dict(self._current, job=self._running) if self._running else None,
            "pending": pending,
        }
        if state != self._published and not self._lock_lost:  # else the file is another's
            try:
                write_json_atomic(self.config.state_dir / STATE_FILE, state)
                self._published = state
            except OSError as exc:
                # said when it starts failing or fails otherwise, not at every tick
                if str(exc) != self._publish_failed:
                    self._log.warning("state.write_failed", error=str(exc))
                self._publish_failed = str(exc)
            else:
                if self._publish_failed is not None:
                    self._log.info("state.written_again", after=self._publish_failed)
                self._publish_failed = None

    def _tell_unwritable(self) -> None:
        """At start and reload: no job (nothing will ever run), a job that keeps every backup,
        a configured dir this process cannot write (the unit's sandbox, a read-only mount: it
        fails every run); said now, once each, as check-config says it."""
        for line in job_warnings(self.config.settings) + unit_paths.warnings(self.config):
            self._log.warning("config.warning", detail=line)

    def _recover_keeping_alive(self) -> None:
        """Recovery may wait minutes on influxd's start (start_timeout × attempts, longer than
        systemd's default 90 s start timeout, and the unit sets none): meanwhile systemd is
        asked for more time and the metrics heartbeat goes on, so that neither systemd nor
        the InfluxBackupDaemonSilent alert takes a recovering daemon for a hung one. A SIGTERM
        meanwhile waits in the queue: acted on as soon as influxd runs (run())."""
        done = threading.Event()

        def keep_alive() -> None:
            while not done.wait(EXTEND_EVERY):
                systemd.extend_timeout(EXTEND_BY)
                self._heartbeat(stopping=True)  # no next runs yet: nothing is scheduled

        thread = threading.Thread(target=keep_alive, name="recovery-keepalive", daemon=True)
        thread.start()
        try:
            self._recover()
        finally:
            done.set()
            thread.join()

    def _recover(self) -> None:
        """Whatever a dead predecessor left (influxd down, a partial archive), undone now."""
        try:
            # influxd's lock too if a marker is left; an off-site send's lock is not waited for
            with exclusive(self.config, influxd=False, doing="recovery", give_up=_now):
                pass
        except Busy as exc:
            self._log.info("daemon.recovery_deferred", detail=str(exc))
        except RollbackBlocked as exc:
            self._rollback_blocked(exc)
        except (InfluxdError, OSError) as exc:  # OSError: a rename refused, before any start
            self._log.error("daemon.recovery_failed", error=str(exc))
            self._note_failed(exc)
        else:
            self._note_left_down()  # a server a dead run signalled, still running: watched


def run_daemon(config: Config, level: str) -> int:
    """`influx-backupd run`: log set-up for a service, then the daemon until SIGTERM/SIGINT."""
    import sys

    # A run gives up starting influxd after a few attempts, leaving its crash marker; the
    # worker then keeps trying between jobs (the daemon stays stoppable and says so).
    server.RUN_START_ATTEMPTS = DAEMON_RUN_START_ATTEMPTS
    daemon = Daemon(config, log_level=level)
    journal = log.journal_socket() if journal_available() else None
    log.configure(sys.stdout, level, journal=journal, processors=[daemon.observe])
    status = daemon.run()
    if daemon._held_sync is not None and daemon._held_sync.is_alive():
        # Python joins the upload's worker threads at exit, which would wait on the request
        # that does not end: everything of ours is written; leave now, with our status
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)
    return status
