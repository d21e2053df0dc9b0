"""The cold job: stop influxd, tar its meta, data and wal dirs plus influxdb.conf, start it again.

copy = "direct" writes the tar while influxd is stopped. copy = "staged" (the default) syncs the
dirs into a staging tree while influxd serves (phase 1, staging.py), stops it only to sync what
changed since (phase 2), starts it, and writes the tar from the staging tree (phase 3): downtime
is influxd's own stop and start plus a WAL-sized copy.

Every phase of the downtime is measured. influxd is started again whatever happens in between:
exceptions and signals alike (signals are blocked while it starts), and a crash marker covers
SIGKILL and power loss.

A run cancelled (the daemon is stopping) before it asks influxd to stop abandons at once: it
looks at the token at every step before the stop request, and the pre-copy of a staged run
stops between files. Once the stop is asked it finishes, influxd started again.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import psutil

from influx_backupd.core import log, unit_paths
from influx_backupd.core.cancel import NEVER, CancelToken
from influx_backupd.core.config import Config, JobSection
from influx_backupd.core.errors import BackupdError
from influx_backupd.core.interrupt import Interrupted, signals_blocked, suspend_deferred
from influx_backupd.core.log import Logger
from influx_backupd.core.processes import identity
from influx_backupd.influxd import counts, logfile, names
from influx_backupd.influxd.server import SUPERVISOR_HINT, Influxd, InfluxdError, NotAnswering
from influx_backupd.jobs.staging import Stager, SyncStopped
from influx_backupd.report import metrics, progress
from influx_backupd.store import layout, sparse
from influx_backupd.store.archive import (
    COLD_TOPS,
    ArchiveError,
    WriteResult,
    check_written,
    name_written,
    refused_link,
    write_archive,
)
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.layout import cold_archive, partial_of, staging_root
from influx_backupd.store.record import RunRecord, new_run_id
from influx_backupd.store.sidecar import sidecar_of, write_sidecar
from influx_backupd.store.state import CrashMarker

SPACE_MARGIN = 1.02  # tar headers and padding, plus slack for files that grow before the stop
SPACE_RESERVE = 64 << 20
# A slow disk's copy rate: how long a stop window of a job with no cold run yet is expected to
# take, from the bytes it copies (the metrics' down_expected_until; see Influxd.stop_window_end)
SLOW_COPY_RATE = 20 << 20  # B/s
# The job's recent cold runs whose stop windows say how long the next one takes
RECENT_WINDOWS = 20


class JobFailed(BackupdError):
    code = "cold"
    pass


class Abandoned(BackupdError):
    """Cancelled before influxd was asked to stop: nothing was stopped, nothing is kept."""

    code = "cold"


def _go_on(cancel: CancelToken, before: str) -> None:
    """Raise Abandoned when the run is cancelled. Called only before the stop request: from
    there on a run finishes (influxd started again), and a daemon that is stopping waited for a
    stop of its own making (under systemd, queued behind the daemon's own stop job)."""
    if cancel.cancelled:
        raise Abandoned(
            f"stopped by the daemon's shutdown {before}: influxd was not stopped, nothing copied"
        )


def tree_size(root: Path, keep_holes: bool = True) -> int:
    """The bytes an archive of root's regular files holds (keep_holes: without their holes)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # compaction removed it while we looked
            if stat.S_ISREG(st.st_mode):
                total += sparse.archived_size(path, st, keep_holes)
    return total


class _Progress:
    """A progress event every few seconds during long archive writes: bytes, rate, ETA."""

    def __init__(self, total: int, logger: Logger) -> None:
        self.total = total
        self.done = 0
        self.started = self.last = time.monotonic()
        self.logger = logger

    def __call__(self, n: int) -> None:
        self.done += n
        progress.notify(self.done, self.total)  # e.g. the CLI's progress bar
        now = time.monotonic()
        if now - self.last >= 5.0:
            self.last = now
            rate = self.done / max(now - self.started, 1e-6)
            eta = (self.total - self.done) / rate if rate > 0 else None
            self.logger.info(
                "archive.progress",
                bytes=self.done,
                total=self.total,
                rate_bytes_s=round(rate),
                eta_s=round(eta, 1) if eta is not None else None,
            )


def run_cold(
    config: Config, job: JobSection, catalog: Catalog, cancel: CancelToken = NEVER
) -> RunRecord:
    """One cold backup; always returns its record (saved in the catalog), ok or not.
    Cancelled before influxd is asked to stop, it is abandoned (`interrupted`)."""
    record = RunRecord(id=new_run_id(), job=job.name, mode="cold", started_at=time.time())
    # the job's off-site choice, kept with the backup: `offsite = false` must still hold for it
    # once the job is renamed or removed from the config (run/offsite.py wanted)
    record.extra["offsite"] = job.offsite
    catalog.start_run(record, lambda rid: layout.id_in_use(config.storage_dir, job.name, rid))
    logger = log.get(run_id=record.id, job=job.name, mode="cold")
    with log.run_context(run_id=record.id, job=job.name, mode="cold"):
        logger.info("run.started", phase="preflight")
        try:
            _cold(config, job, record, logger, cancel, _longest_window(catalog, job))
        except Abandoned as exc:
            record.status = "interrupted"
            record.error = str(exc)
            logger.warning("run.abandoned", error=record.error)
        except (JobFailed, InfluxdError, ArchiveError) as exc:
            record.status = "failed"
            record.error = str(exc)
        except OSError as exc:
            record.status = "failed"
            record.error = unit_paths.explain(config, exc)
        except Interrupted as exc:
            record.status = "interrupted"
            record.error = f"interrupted by {exc}"
        finally:
            catalog.finish(record, logger)
    return record


def _longest_window(catalog: Catalog, job: JobSection) -> float | None:
    """The longest stop window (downtime_s) among the job's recent ok cold runs (None: none)."""
    windows = [
        r.downtime_s
        for r in catalog.list(job=job.name)[-RECENT_WINDOWS:]
        if r.mode == "cold" and r.ok and r.downtime_s is not None
    ]
    return max(windows, default=None)


def space_needed(
    config: Config, dirs: dict[str, Path], staging: Path | None, keep_holes: bool = True
) -> tuple[int, int]:
    """(predicted archive bytes, bytes the storage dir needs free): the archive with margin and
    reserve, and for a staged copy the part of the staging tree not there yet."""
    predicted = sum(tree_size(p, keep_holes) for p in dirs.values())
    predicted += config.server.conf.stat().st_size
    needed = int(predicted * SPACE_MARGIN) + SPACE_RESERVE
    if staging is not None:
        staged_already = tree_size(staging, keep_holes) if staging.is_dir() else 0
        needed += max(0, int(predicted * SPACE_MARGIN) - staged_already)
    return predicted, needed


def prove_writable(config: Config, paths: list[Path]) -> None:
    """Create and remove each file (a .partial name prune's cleanup knows, should we be killed
    in between), or refuse in one line before anything is stopped."""
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            path.unlink()
        except OSError as exc:
            raise JobFailed(f"{unit_paths.explain(config, exc)}; influxd not stopped") from None


def _cold(
    config: Config,
    job: JobSection,
    record: RunRecord,
    logger: Logger,
    cancel: CancelToken,
    longest_window: float | None,
) -> None:
    _go_on(cancel, "before the run began")
    server = Influxd(config)
    dirs = config.server.dirs()
    for prefix, path in list(dirs.items()):
        if path.is_dir():
            continue
        if prefix in ("meta", "data"):
            raise JobFailed(f"{prefix} dir {path} (from {config.server.conf}) does not exist")
        # influxd creates wal/ and hh/ lazily: a server that never took a write has none yet
        logger.info("archive.dir_absent", dir=prefix, path=str(path))
        del dirs[prefix]
    storage = config.storage_dir
    storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The archive and its record are the files a run writes outside the state dir (the crash
    # marker and the catalog, written before the stop, prove that one): an existing dir that is
    # read-only (not in the unit's ReadWritePaths=, or a symlink into such a place) would fail
    # the copy only once influxd is down.
    dest = cold_archive(storage, job.name, record.id)
    prove_writable(config, [partial_of(dest), partial_of(sidecar_of(dest))])
    sources: list[tuple[str, Path]] = [*dirs.items(), ("influxdb.conf", config.server.conf)]
    keep_holes = job.holes == "keep"
    stager = (
        Stager(staging_root(storage, job.name), sources, keep_holes=keep_holes)
        if job.copy_mode == "staged"
        else None
    )
    record.extra["copy"] = job.copy_mode

    # Refuse before stopping anything when the archive (and the staging tree) cannot fit.
    staging = stager.root if stager is not None else None
    predicted, needed = space_needed(config, dirs, staging, keep_holes)
    free = shutil.disk_usage(storage).free
    if free < needed:
        staged = needed - int(predicted * SPACE_MARGIN) - SPACE_RESERVE
        raise JobFailed(
            f"not enough space in {storage}: need about {needed} bytes, {free} free (the archive "
            f"~{predicted} bytes, {SPACE_MARGIN:g}x for growth, "
            + (f"{staged} bytes of staging tree not copied yet, " if staged > 0 else "")
            + f"and a reserve of {SPACE_RESERVE} bytes kept free); influxd not stopped"
        )

    _go_on(cancel, "while the space needed was measured")  # a walk of every dir: long
    # Refuse before stopping anything what restore would refuse in the archive (a link inside
    # a dir to an absolute path): the check after writing would only fail it after the stop.
    for prefix, path in dirs.items():
        problem = refused_link(path, prefix)
        if problem is not None:
            raise JobFailed(
                f"{problem} (restore takes only links that stay inside the dir); "
                "influxd not stopped"
            )

    _go_on(cancel, "while the dirs were checked for links")
    problem = names.unloadable(dirs)  # the restart would come back without that data
    if problem is not None:
        raise JobFailed(f"{problem}; {names.HOT_HINT}; influxd not stopped")
    # Before anything is stopped: it can be started again the way the config says, and the
    # process the config names answers.
    proc = server.locate()
    problem = server.startable(proc)
    if problem is not None:
        raise JobFailed(f"{problem}; influxd not stopped")
    if proc is None or not server.answers_itself(proc.pid):
        raise JobFailed(
            f"{server.describe_down(proc)}; a cold backup stops and restarts a serving "
            "server: nothing stopped"
        )
    # how long the stop window is expected to take: as the longest recent one, or with none
    # yet, the data at a slow disk's rate
    window_s = longest_window if longest_window is not None else predicted / SLOW_COPY_RATE
    try:
        _stop_copy_start(
            config,
            record,
            logger,
            server,
            dirs,
            sources,
            stager,
            predicted,
            cancel,
            keep_holes,
            window_s,
        )
    finally:
        if stager is not None and not job.keep_staging:
            stager.remove()


def _running_again(
    config: Config,
    server: Influxd,
    record: RunRecord,
    logger: Logger,
    marker: CrashMarker,
    t_stop: float,
) -> psutil.Process | None:
    """After a stop was asked, whatever happened since: make sure influxd serves again.

    A server that never stopped (its shutdown outlasted stop_timeout) and still answers is
    left as it is, and watched: the marker stays "signalled" so that it is started again if it
    exits later; so is one frozen after it got the stop, which exits once thawed. One still
    shutting down is waited for, then started. Returned: a server found
    although the stop completed (every process on our influxdb.conf had exited), started by
    something else while the files were copied: nothing copied in that window can be trusted.
    """
    proc = server.locate()
    intruder = proc if proc is not None and record.stop_s is not None else None
    if intruder is not None:
        logger.error(
            "influxd.started_by_another",
            phase="start",
            pid=intruder.pid,
            detail="influxd was started by something else while the files were copied",
        )
    if proc is not None and server.answers_itself(proc.pid):
        if intruder is not None:
            marker.clear()
            return intruder
        watched = marker.signalled(identity(proc))
        if watched:
            record.extra["serving_after_stop"] = proc.pid  # asked: it may yet go down
        logger.warning(
            "influxd.still_running",
            phase="start",
            pid=proc.pid,
            detail="it got the stop and still serves; started again if it exits late"
            if watched
            else "another influxd answers than the one this run asked to stop",
        )
        return None
    if proc is not None and server.frozen(proc):
        if server.asked_to_stop(proc) and marker.signalled(identity(proc)):
            # It got our stop, then was frozen mid-shutdown (SIGSTOP, a cgroup freezer, a
            # debugger): it exits once thawed, and nothing can start it before. The marker stays
            # "signalled": recovery and the daemon start it again once it has exited.
            record.extra["frozen_after_stop"] = proc.pid
            logger.warning(
                "influxd.frozen_stopping",
                phase="start",
                pid=proc.pid,
                detail="it got the stop and was frozen before it exited: it goes down once "
                "thawed, and is started again then",
            )
            return None
        # stop() never signals a frozen process: it was not stopped by us, nothing to start
        marker.clear()
        return intruder
    if proc is not None and intruder is None:
        # still shutting down (1.x forces its own hard shutdown after 30 s): start_until_up
        # waits for it to go before it starts another on the same files
        logger.warning("influxd.still_stopping", phase="start", pid=proc.pid)
    # (an intruder still opening its stores is waited for by start_until_up, never doubled)
    t_start = time.monotonic()
    logger.info("influxd.starting", phase="start")
    record.extra["start_attempts"] = server.start_until_up(
        config.state_dir / logfile.NAME, on_failure=marker.note_failed_start
    )
    now = time.monotonic()
    record.start_s = now - t_start
    record.downtime_s = now - t_stop
    marker.clear()
    logger.info(
        "influxd.ready",
        phase="start",
        start_s=round(record.start_s, 3),
        downtime_s=round(record.downtime_s, 3),
    )
    return intruder


def _stop_copy_start(
    config: Config,
    record: RunRecord,
    logger: Logger,
    server: Influxd,
    dirs: dict[str, Path],
    sources: list[tuple[str, Path]],
    stager: Stager | None,
    predicted: int,
    cancel: CancelToken,
    keep_holes: bool,
    window_s: float,
) -> None:
    """Phase 1 (staged only), the stop window, then phase 3 (staged only) and the check.
    window_s: how long the stop window is expected to take (Influxd.stop_window_end)."""
    marker = CrashMarker(config.state_dir)
    dest = cold_archive(config.storage_dir, record.job, record.id)
    staging: dict[str, object] = {}
    if stager is not None:
        # Phase 1, influxd serving: most of the bytes, outside the stop window.
        _go_on(cancel, "before the pre-copy")
        logger.info("staging.syncing", phase="prestage", path=str(stager.root))
        t_pre = time.monotonic()
        try:
            # a large data dir takes minutes: a cancel stops it between files
            first = stager.sync(tolerant=True, stop=lambda: cancel.cancelled)
        except SyncStopped:
            _go_on(cancel, "during the pre-copy")
            raise  # not reached: only a cancel stops it
        except OSError as exc:
            raise name_written(exc, stager.root) from None
        record.prestage_s = time.monotonic() - t_pre
        staging["prestage"] = first.as_dict()
        record.extra["staging"] = staging
        logger.info("staging.synced", phase="prestage", **first.as_dict())

    counts.before_stop(config, record, dirs, logger)  # point counts for restore tests
    try:
        # The figures' queries may have timed out against a server frozen since: it must
        # answer right now, or it is not stopped (a signal would stay pending until it thaws).
        proc = server.check_answers()
    except NotAnswering as exc:
        raise JobFailed(f"{exc}; nothing stopped") from None
    pid = proc.pid
    # The last look, right before the stop request (the point counts' queries may have waited)
    _go_on(cancel, "before influxd was asked to stop")
    # Ctrl-Z from here until influxd runs again stops us only then (core/interrupt)
    with suspend_deferred():
        until = server.stop_window_end(window_s)
        marker.write(record.id, job=record.job, influxd=identity(proc), down_expected_until=until)
        # left_down 1 before the stop is asked, never after it (that would lengthen the downtime):
        # a run killed in the window leaves it so, where the InfluxdLeftDown alert sees it once
        # the window's expected end has passed; the follow-up's rewrite after the start sets it
        # back
        metrics.mark_left_down_before_stop(config.settings.daemon.metrics_file, logger, until)
        t_stop = time.monotonic()
        # Set before the stop is asked: a signal or error from here on must lead to a start.
        stop_requested = True
        result: WriteResult | None = None
        intruder: psutil.Process | None = None
        try:
            marker.stopping()  # before the event: "stopping" in the log means the stop was asked
            logger.info("influxd.stopping", phase="stop", pid=pid)
            try:
                server.stop(outcome="nothing copied")
            except InfluxdError as exc:
                raise JobFailed(str(exc)) from None
            t_copy = time.monotonic()
            record.stop_s = t_copy - t_stop
            logger.info("influxd.stopped", phase="stop", stop_s=round(record.stop_s, 3))

            # influxd makes wal/ (and hh/) at its first write: one made since the checks
            # before the stop holds acknowledged points (counted above), archived as the rest
            late = {
                prefix: path
                for prefix, path in config.server.dirs().items()
                if prefix not in dirs and path.is_dir()
            }
            if late:
                logger.info("archive.dir_appeared", dirs=sorted(late))
                dirs.update(late)
                sources[-1:-1] = list(late.items())  # before influxdb.conf
                if stager is not None:
                    stager.add_sources(list(late.items()))
            holders = server.holders(dirs.values())
            if holders:
                raise JobFailed(
                    "files still in use after the stop: " + "; ".join(map(str, holders))
                )
            t_copy = time.monotonic()  # copy_s is the copy alone; the holder check is in downtime_s
            record.extra["holders_s"] = round(t_copy - t_stop - record.stop_s, 3)

            if stager is not None:
                # Phase 2, influxd stopped: only what changed since phase 1, compared to the source.
                try:
                    second = stager.sync(tolerant=False)
                except OSError as exc:
                    raise name_written(exc, stager.root) from None
                record.copy_s = time.monotonic() - t_copy
                record.window_bytes = second.copied_bytes
                staging["window"] = second.as_dict()
                logger.info("staging.synced", phase="copy", **second.as_dict())
            else:
                logger.info(
                    "archive.writing", phase="copy", path=str(dest), predicted_bytes=predicted
                )
                result = write_archive(
                    dest, sources, progress=_Progress(predicted, logger), keep_holes=keep_holes
                )
                progress.ended()
                record.copy_s = time.monotonic() - t_copy
                record.window_bytes = result.bytes
        finally:
            if stop_requested:
                with signals_blocked():
                    intruder = _running_again(config, server, record, logger, marker, t_stop)
    if intruder is not None:
        # A live server may have written the files while they were copied: a torn copy that
        # every check would pass (sizes and sums are of what was read)
        if result is not None:
            dest.unlink(missing_ok=True)
        raise JobFailed(
            f"influxd (pid {intruder.pid}) was started by something else while the files were "
            f"copied: they may hold its writes, nothing is kept ({SUPERVISOR_HINT})"
        )
    # influxd serves again: does it serve what it did before the stop?
    counts.after_start(config, record, logger)

    if stager is not None:
        # Phase 3, influxd serving again: the tar comes from the staging tree.
        logger.info("archive.writing", phase="archive", path=str(dest), predicted_bytes=predicted)
        t_archive = time.monotonic()
        result = write_archive(
            dest,
            stager.archive_sources(),
            progress=_Progress(predicted, logger),
            keep_holes=keep_holes,
        )
        progress.ended()
        record.archive_s = time.monotonic() - t_archive
    assert result is not None
    record.archive, record.bytes, record.files = str(dest), result.bytes, result.files
    record.sha256 = result.sha256
    # ok only once the output is checked, never on "no exception" alone
    check_written(result, COLD_TOPS)
    # its sha256 and point counts beside it: the catalog is lost with the host's state_dir
    write_sidecar(dest, record)
    record.status = "ok"
