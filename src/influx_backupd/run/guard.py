"""Everything that may stop influxd runs inside `exclusive()`: the lock, then crash recovery."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from influx_backupd.core import alarms, atomic, log
from influx_backupd.core.config import (
    Config,
    ConfigError,
    default_state_dir,
    load,
    resolve_path,
    state_dir_leniently,
)
from influx_backupd.core.errors import BackupdError
from influx_backupd.core.interrupt import gate_job_control_where_unset, suspend_deferred
from influx_backupd.core.jsontext import count, number
from influx_backupd.core.processes import same_as
from influx_backupd.influxd import logfile, scratch
from influx_backupd.influxd.server import Influxd, InfluxdError
from influx_backupd.report import metrics, progress
from influx_backupd.run.followup import (
    MetricsNotWritten,
    follow_up,
    left_down_alarm,
    write_metrics,
)
from influx_backupd.store import layout
from influx_backupd.store.catalog import Catalog, CatalogDamaged
from influx_backupd.store.record import RunRecord
from influx_backupd.store.sidecar import SidecarError, record_beside, sidecar_of
from influx_backupd.store.state import (
    OFFSITE,
    BackupLock,
    Busy,
    CrashMarker,
    LockWanted,
    ServerLock,
    StorageLock,
    daemon_holder,
    lock_for,
    lock_held,
    lock_holder,
    lock_wanted,
    recovery_is_dry,
)

OnDamage = Literal["raise", "set_aside", "ignore"]


class RollbackBlocked(InfluxdError):
    """A killed restore's rollback needs renames this process cannot make (a read-only mount,
    the daemon unit's sandbox): nothing was stopped, the crash marker stays for one that can."""

    code = "influxd.rollback_blocked"


# How long past [offsite] yield_within a command waits for an off-site send to let the lock go:
# a send that gave its upload up still unwinds (its state saved, its metrics written).
YIELD_MARGIN_S = 30.0
# How long a taker leaves a free lock to a command that was waiting for it first (it polls
# every 0.1 s); one that does not take it by then (suspended with Ctrl-Z) holds nobody up.
FIRST_WAITER_GRACE_S = 3.0
DEFAULT_YIELD_WITHIN = 60.0  # a config without [offsite] waits as long for another's send


@contextmanager
def exclusive(
    config: Config,
    *,
    start_attempts: int | None = None,
    on_damage: OnDamage = "raise",
    influxd: bool = True,
    doing: str | None = None,
    give_up: Callable[[], bool] = lambda: False,
) -> Iterator[Catalog]:
    """Take the backup lock (Busy if held), recover from a dead predecessor, yield the catalog.

    doing: what this holder does (store.state.HOLDERS), as a second caller's busy line says it.
    A lock held by an off-site send (doing OFFSITE) is asked to yield and waited for, up to
    [offsite] yield_within and a margin (or until give_up() says so); whatever else holds it is
    Busy at once. An off-site send (OFFSITE) waits for nothing, and takes no lock a command
    waits for.

    influxd: the caller may stop or start the server (a run, a restore), so the server's own
    lock is taken too (Busy while another state_dir's run holds it); False for callers that
    only read backups or the catalog (verify, prune, off-site). Recovery that has a crash
    marker to act on takes it either way: it may start influxd.

    A start that recovery cannot make is retried start_attempts times (None: the default of
    influxd.server, for as long as it takes in a foreground command), then StartFailed.
    on_damage: what a damaged catalog does (after influxd was brought back: that needs no
    catalog); "raise" CatalogDamaged, "set_aside" (import, which rebuilds it: catalog.moved_aside
    says where it went), "ignore" (import --dry-run: catalog.damage says what is wrong)."""
    lock = lock_for(config.state_dir, doing)
    _take(config, lock, give_up)
    server_lock = ServerLock(config.settings.influxd.config)
    storage_lock = StorageLock(config.storage_dir)
    try:
        if influxd or CrashMarker(config.state_dir).path.exists():
            server_lock.acquire()
        # under the lock, whatever stops influxd (a cold run, a restore's swap) or starts it
        # again (recovery): its first failed start is told at once (core/alarms.py)
        with alarms.left_down_handler(left_down_alarm(config)):
            catalog = Catalog(config.state_dir)
            recover(
                config,
                catalog,
                start_attempts=start_attempts,
                on_damage=on_damage,
                storage_lock=storage_lock,
            )
            if influxd:  # after recovery: a full state dir must not keep influxd down
                keep_config_in_use(config)
            yield catalog
    finally:
        storage_lock.release()
        server_lock.release()
        lock.release()


def _take(config: Config, lock: BackupLock, give_up: Callable[[], bool]) -> None:
    """lock.acquire(), waiting for an off-site send to yield (exclusive)."""
    state_dir = config.state_dir
    if lock.doing == OFFSITE:
        # a command waits for the lock (a send left it for that command): no send takes it
        # first, as the daemon's resumed one or the next cron backup's would
        waiting = lock_wanted(state_dir)
        if waiting is not None:
            raise Busy(f"{waiting} waits for the backup lock in {state_dir}")
        lock.acquire()
        return
    _leave_to_first_waiter(state_dir, give_up)
    try:
        lock.acquire()
        return
    except Busy as exc:
        if exc.doing != OFFSITE:
            raise
        holder = str(exc)
    section = config.settings.offsite
    within = section.yield_within if section is not None else DEFAULT_YIELD_WITHIN
    within += YIELD_MARGIN_S
    log.get().info("lock.waiting_for_offsite", holder=holder, within_s=within)
    waited = time.monotonic()
    with LockWanted(state_dir, lock.doing):
        while True:
            time.sleep(0.1)
            try:
                lock.acquire()
                break
            except Busy as exc:
                if exc.doing != OFFSITE:
                    raise  # taken by a backup (or another holder) meanwhile: busy, as it says
                if time.monotonic() - waited >= within or give_up():
                    raise Busy(
                        f"{exc}, asked to yield, has not let it go in "
                        f"{time.monotonic() - waited:.0f}s ([offsite] yield_within and "
                        f"{YIELD_MARGIN_S:.0f}s)",
                        OFFSITE,
                    ) from None
    log.get().info(
        "lock.offsite_yielded", holder=holder, waited_s=round(time.monotonic() - waited, 3)
    )


# The config of the last run that may stop influxd, as it loaded it: what starts influxd again
# after that run was killed, should the file have been edited into one that does not load since
# (recover_despite). Beside the crash marker, 0600 in the 0700 state dir, as the config's own
# secrets ([notify] URLs) deserve.
CONFIG_IN_USE = "config-in-use.toml"


def keep_config_in_use(config: Config) -> None:
    """Kept before anything is stopped; written only when it changed (an fsync per change)."""
    path = config.state_dir / CONFIG_IN_USE
    try:
        if atomic.read_small(path, len(config.text)) == config.text:
            return
    except OSError:
        pass  # none yet, longer, or not a file we wrote: written anew
    try:
        atomic.replace_file(path, config.text)
    except OSError as exc:
        # a full state dir: the run says so where it writes what it must (its record, the
        # marker); this copy is a spare, and the one kept before (if any) is left as it was
        log.get().warning("state.config_not_kept", path=str(path), error=str(exc))


def left_down_despite(config_arg: str | None, *, act: bool) -> str | None:
    """A config that does not load, and a crash marker saying a killed run left influxd
    stopped (the daemon killed mid-copy after its file was edited, restarted by systemd into
    that error): the server is started again with the config that run used (act; `status`
    only says so). The one line to print before the config's own error, or None. A best effort
    beside that error: never raises."""
    try:
        return _left_down_despite(config_arg, act=act)
    except (OSError, ValueError):  # a state dir named past the system's limits: nothing known
        return None


def _left_down_despite(config_arg: str | None, *, act: bool) -> str | None:
    try:
        path = resolve_path(config_arg)
    except ConfigError:
        return None
    # a file that is no TOML now (half-edited): the state dir a config without state_dir has
    # (the kept config must name that same dir for anything to be done)
    state_dir = state_dir_leniently(path) or default_state_dir(path)
    if not state_dir.is_dir() or not os.access(state_dir, os.R_OK | os.X_OK):
        # no state dir, no crash marker (a file in its place: the config's error says so);
        # one this user cannot read (the service's, without sudo): nothing known of one
        return None
    marker = CrashMarker(state_dir)
    daemon = daemon_holder(state_dir)
    if daemon is not None:
        # a daemon alive on the config it loaded before: it keeps starting influxd itself,
        # nobody else is to (and no command here was "killed")
        left = marker.read()
        if not CrashMarker.may_be_down(left):
            return None
        assert left is not None
        failed = count(left.get("start_failures")) or 0
        last = f"; last: {left.get('last_start_error')}" if left.get("last_start_error") else ""
        return (
            f"influxd may be down: run {left.get('run_id') or '(unknown)'} stopped it (crash "
            f"marker {marker.path}); the daemon ({daemon}) keeps trying to start it with the "
            f"config it loaded ({failed} failed starts{last})"
        )
    if not act:
        if not CrashMarker.may_be_down(marker.read()):
            return None
        return (
            f"influxd may be down: a run stopped it and was killed (crash marker "
            f"{marker.path}); any other command starts it again: influx-backupd recover"
        )
    try:
        return recover_despite(path, state_dir)
    except BackupdError as exc:  # what recovery itself ran into, said as any command says it
        return exc.line()
    except (OSError, ValueError):
        return None


def recover_despite(config_path: Path, state_dir: Path) -> str | None:
    """config_path does not load, and the crash marker in its state dir says a killed
    run left influxd stopped: every command, `run` under systemd after the kill included, would
    refuse the config and leave the server down with nothing saying so. Started again here the
    way that run would have, with the config it ran on (CONFIG_IN_USE). Returns one line saying
    what was done, or None when nothing was left stopped (or a live process owns it)."""
    marker = CrashMarker(state_dir)
    left = marker.read()
    if left is None or not CrashMarker.may_be_down(left) or lock_held(state_dir):
        return None
    stopped_by = f"run {left.get('run_id') or '(unknown)'}"
    kept_path = state_dir / CONFIG_IN_USE
    loaded = _config_to_restart(config_path, kept_path)
    if isinstance(loaded, str):
        return (
            f"influxd may be down: {stopped_by} stopped it and was killed (crash marker "
            f"{marker.path}); it cannot be started from the config that run used ({loaded}): "
            f"once that and {config_path} load, any command starts it"
        )
    config, used = loaded
    if config.state_dir != state_dir:  # a config of another instance kept there: not ours
        return (
            f"influxd may be down: {stopped_by} stopped it and was killed (crash marker "
            f"{marker.path}); the config kept in {kept_path} names another state_dir "
            f"({config.state_dir}), so nothing was started: fix {config_path}, then any "
            "command starts it"
        )
    try:
        with exclusive(config, start_attempts=3):
            pass
    except (Busy, CatalogDamaged):
        pass  # a live command owns it; or the catalog: recovery started influxd before that
    except InfluxdError as exc:
        return (
            f"influxd was left stopped by {stopped_by} (killed), and starting it again with "
            f"the config that run used ({kept_path}) failed: {exc}; the next command retries"
        )
    if CrashMarker.may_be_down(marker.read()):
        return None
    return (
        f"influxd was left stopped by {stopped_by} (killed): started again with {used}, "
        f"because {config_path} does not load now"
    )


def _config_to_restart(config_path: Path, kept_path: Path) -> tuple[Config, str] | str:
    """The config to start influxd again with, and how the line names it; or why none loads.
    The one the killed run used, whole; else only what a start reads of it (a job or notify
    value a newer release refuses, after an upgrade, must not keep the server down); else,
    that file missing (a release before it was kept) or unusable, the same of config_path."""
    try:
        kept: bytes | None = atomic.read_small(kept_path, 1 << 20)
    except OSError as exc:
        kept, why = None, f"{kept_path}: {exc.strerror}"
    if kept is not None:
        try:
            config = load(config_path, ask_apprise=False, text=kept, to_restart=True)
            return config, f"the config that run used ({kept_path})"
        except ConfigError as exc:
            # said of the kept file, which is what did not load (load() names config_path)
            why = exc.line().replace(str(config_path), str(kept_path), 1)
        with suppress(ConfigError):
            config = load(
                config_path, ask_apprise=False, text=kept, to_restart=True, essentials_only=True
            )
            return config, f"[influxd] of the config that run used ({kept_path}; {why})"
    with suppress(ConfigError):
        config = load(config_path, ask_apprise=False, to_restart=True, essentials_only=True)
        return config, f"[influxd] of {config_path} ({why})"
    return why


def _leave_to_first_waiter(state_dir: Path, give_up: Callable[[], bool]) -> None:
    """First come, first served: a command that waits for the lock (an off-site send was asked
    to yield it to that command) takes it when it comes free, before a taker that came later
    (the daemon's backup fallen due meanwhile took it, and the command got 75 after its wait).
    Waits at most FIRST_WAITER_GRACE_S, and not at all while a crash marker says influxd may
    be down: whoever takes the lock first starts it."""
    deadline = time.monotonic() + FIRST_WAITER_GRACE_S
    waiting = lock_wanted(state_dir, other_than=os.getpid())
    if waiting is None or CrashMarker(state_dir).path.exists():
        return
    log.get().info("lock.after_first_waiter", waiting=waiting, within_s=FIRST_WAITER_GRACE_S)
    while time.monotonic() < deadline and not give_up() and not lock_held(state_dir):
        time.sleep(0.1)
        if lock_wanted(state_dir, other_than=os.getpid()) is None:
            return


def _catalog_usable(catalog: Catalog, on_damage: OnDamage) -> bool:
    """Checked before recovery reads it; False: damaged and left alone (recovery skips it)."""
    try:
        catalog.check(write=True)
    except CatalogDamaged as exc:
        if on_damage == "raise":
            raise
        if on_damage == "ignore":
            catalog.damage = str(exc)
            return False
        catalog.moved_aside = catalog.set_aside()
        log.get().warning("catalog.moved_aside", path=str(catalog.moved_aside))
    return True


def recover(
    config: Config,
    catalog: Catalog,
    *,
    start_attempts: int | None = None,
    on_damage: OnDamage = "raise",
    storage_lock: StorageLock | None = None,
) -> None:
    """We hold the lock, so no other run is alive: undo what a dead one left behind.
    storage_lock: taken once influxd is back (Busy while another instance uses the storage
    dir: its unfinished archive is no dead run's), before the storage dir is cleaned."""
    try:
        _recover(
            config,
            catalog,
            start_attempts=start_attempts,
            on_damage=on_damage,
            storage_lock=storage_lock,
        )
    finally:
        _left_down_as_the_marker_says(config)


def _left_down_as_the_marker_says(config: Config) -> None:
    """The metrics file's left_down made to agree with the crash marker, as the recovery left
    it. Under the lock no run is in a stop window, so the marker alone says whether influxd is
    down. A recovery that started influxd (or found it running) clears the marker, but rewrites
    the metrics only through a dead run's follow-up: a killed restore (no record), a run that
    failed its start and was followed up before its killer came, or a marker of a run killed
    before its stop left `left_down 1` there while influxd served, and InfluxdLeftDown (critical)
    firing until some later full rewrite. Only that sample changes; no catalog read."""
    path = config.settings.daemon.metrics_file
    if path is None:
        return
    marker = CrashMarker(config.state_dir).read()
    down = CrashMarker.may_be_down(marker)
    # a dead run's window is no longer expected (its writer is gone): left_down then counts
    until = CrashMarker.down_expected_until(marker) if down else 0.0
    said = metrics.left_down_in(path)
    if said is None or said == (down, until):
        return  # no file (the next full write makes it), or it agrees
    try:
        metrics.set_left_down(path, down, until)
    except OSError as exc:
        log.get().error("metrics.not_written", path=str(path), error=exc.strerror or str(exc))


def _recover(
    config: Config,
    catalog: Catalog,
    *,
    start_attempts: int | None,
    on_damage: OnDamage,
    storage_lock: StorageLock | None,
) -> None:
    # here, not at the top: `list` and `status` import this module for left_stopped only
    from influx_backupd.restore.database import recover_database_restore
    from influx_backupd.restore.swap import failed_kept, renames_blocked, roll_back

    logger = log.get()
    marker = CrashMarker(config.state_dir)
    left = marker.read()
    not_started: InfluxdError | None = None
    back_at: float | None = None  # when recovery had influxd answering again (it started it)
    if left is not None and CrashMarker.never_stopped(left):
        # Its writer died between writing it and asking influxd to stop: the server it named
        # runs untouched, nothing was swapped. Only a restore's staging dirs may be left.
        if left.get("kind") == "restore":
            roll_back(left.get("swaps", []))
        logger.info(
            "recovery.influxd_never_stopped",
            run_id=left.get("run_id"),
            detail="the run died before it stopped influxd; its crash marker is cleared",
        )
        marker.clear()
        left = None
    # A server that got a run's stop and outlasted stop_timeout: while it serves, or is frozen
    # (it exits once thawed; no start can be tried beside it), it is left alone, the marker kept
    # (started again should it exit late); one still shutting down is waited for and started
    # below
    if left is not None and CrashMarker.signalled_runs(left):
        named = same_as(left.get("influxd"))
        server = Influxd(config)
        if named is not None and server.frozen(named):
            logger.warning(
                "recovery.influxd_signalled_frozen",
                run_id=left.get("run_id"),
                pid=named.pid,
                detail="it got the run's stop and is frozen: started again once it has exited",
            )
            left = None
        elif server.answers_itself(CrashMarker.named_pid(left)):
            logger.info(
                "recovery.influxd_signalled_serving",
                run_id=left.get("run_id"),
                pid=CrashMarker.named_pid(left),
            )
            left = None
    if left is not None:
        # influxd is down because of a dead run until this ends (a rollback, the start, its
        # retries): a Ctrl-Z waits for it, as in a stop window
        gate_job_control_where_unset()
        with suspend_deferred():
            server = Influxd(config)
            run_id = left.get("run_id")
            swap_done = CrashMarker.restore_swap_done(left)
            answering = server.answers_itself()
            if swap_done:
                # Killed after its restored server answered: the swap is done. A rollback now would
                # be a second outage and lose the writes made since; the restored data stays.
                kept = _rollback_dirs(left)
                logger.warning(
                    "recovery.restore_kept",
                    run_id=run_id,
                    previous_data=kept,
                    detail=f"restore {run_id} was killed after its restored influxd answered: the "
                    "restored data stays in use"
                    + (", influxd answers" if answering else ", influxd is started again on it")
                    + (
                        "; the previous data is kept in "
                        + ", ".join(kept)
                        + " (to go back to it: stop influxd, rename those dirs back by hand)"
                        if kept
                        else ""
                    ),
                )
            elif left.get("kind") == "restore" and (
                blocked := renames_blocked(left.get("swaps", []))
            ):
                # Proved before anything is stopped: a server stopped for a rollback that then
                # fails stays down on half-moved dirs (inside the daemon's unit, whose sandbox
                # mounts dirs outside ReadWritePaths= read-only). Whatever runs is left running.
                not_started = RollbackBlocked(
                    f"restore {run_id} was killed before its restored influxd was checked, and "
                    f"its rollback cannot be done by this process: {blocked}; influxd "
                    + (
                        "serves (the restored data, unchecked) and is not stopped"
                        if answering
                        else "stays stopped"
                    )
                    + f"; the crash marker {marker.path} stays for a command that can (e.g. "
                    "`influx-backupd recover`)"
                )
                marker.rollback_blocked(blocked)
                logger.error(
                    "recovery.rollback_blocked",
                    run_id=run_id,
                    answers=answering,
                    detail=str(not_started),
                )
            elif left.get("kind") == "restore":
                # The restore never finished, so whatever runs now may be half-restored: go back to
                # the data as it was before (the restored dirs are kept aside, not deleted).

                marker.rollback_blocked(None)
                if server.locate() is not None:
                    logger.warning("recovery.stopping_unfinished_restore", run_id=run_id)
                    server.stop()
                failed = roll_back(left.get("swaps", []))
                logger.warning(
                    "recovery.restore_rolled_back",
                    run_id=run_id,
                    failed_restore=failed,
                    detail="the previous data was put back" + failed_kept(failed),
                )
                answering = server.answers_itself()
            if not_started is not None:
                pass  # the rollback that must come first cannot be done here: nothing started
            elif answering:
                if not swap_done:
                    logger.warning("recovery.influxd_already_running", run_id=run_id)
            else:
                logger.warning(
                    "recovery.starting_influxd",
                    run_id=run_id,
                    marker=str(marker.path),
                    detail=(
                        f"influxd (pid {CrashMarker.named_pid(left)}) outlasted this run's stop "
                        "and exited since: started again"
                        if "signalled_at" in left
                        else "the restored influxd exited since: started again on the restored data"
                        if swap_done
                        else "influxd was left stopped by this run"
                    ),
                )
                started = time.monotonic()
                try:
                    server.start_until_up(
                        config.state_dir / logfile.NAME,
                        attempts=start_attempts,
                        on_failure=marker.note_failed_start,
                    )
                except InfluxdError as exc:
                    # Only with start_attempts (the daemon): the dead run is still recorded and
                    # followed up (its on_failure told) below, then the caller tries again later.
                    not_started = exc
                else:
                    back_at = time.time()
                    logger.warning(
                        "recovery.influxd_started",
                        run_id=run_id,
                        start_s=round(time.monotonic() - started, 3),
                    )
            if not_started is None and not CrashMarker.signalled_runs(left):
                marker.clear()
    if storage_lock is not None:
        storage_lock.acquire()
    storage = config.storage_dir
    if storage.is_dir():
        for leftover in _unfinished(storage):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            logger.warning("recovery.partial_removed", path=str(leftover))
        _restore_tests_left(storage)
    recover_database_restore(config)  # a killed `restore --database`: undone on the live server
    # a restore's published progress, left by one killed outright (restores hold the lock)
    (config.state_dir / progress.RUNNING_FILE).unlink(missing_ok=True)
    if not _catalog_usable(catalog, on_damage):
        if not_started is not None:
            raise not_started
        return
    dead = catalog.running()
    for record in dead:
        adopted = _adopt(config, record)
        if adopted is not None:
            # finished and checked, its final save lost (the catalog held by another process,
            # or a kill right after): the record beside the archive says so, the archive agrees
            catalog.save_finished(adopted)
            logger.warning(
                "recovery.run_adopted", run_id=record.id, job=record.job, archive=adopted.archive
            )
            continue
        record.status = "interrupted"
        record.finished_at = record.finished_at or time.time()
        stopped_it = left is not None and left.get("run_id") == record.id
        if stopped_it and back_at is not None and left is not None:
            # killed inside its stop window: the outage it caused ran until this start (the
            # dead process's clock and ours: both wall clocks, one host)
            asked = number(left.get("stopping_at"))
            if asked is not None and left.get("stopping") is True:
                record.downtime_s = max(0.0, back_at - asked)
                record.extra["downtime_until_recovery"] = True
        record.error = "the backup process died before finishing" + (
            ""
            if not stopped_it
            else "; influxd was started again by recovery"
            if not_started is None
            else f"; influxd could not be started again yet ({not_started}): still trying"
        )
        catalog.save_finished(record)  # counted in runs_total with it
        # with the record, as run.finished carries it: the same MESSAGE_ID (run_failed) finds
        # the runs a kill, the OOM killer or a power loss ended
        logger.warning(
            "recovery.run_interrupted", run_id=record.id, job=record.job, record=record.to_dict()
        )
    # The dead runs just saved, and runs that finished but were killed (or signalled) before
    # their follow-up completed.
    for record in catalog.owed():
        _follow_up_late(config, catalog, record)
    if not_started is not None:
        raise not_started


def _adopt(config: Config, record: RunRecord) -> RunRecord | None:
    """A run left `running` whose backup finished: its archive under the name the job gives it,
    the record beside it (written only once the output was checked) naming this run as ok, and
    the archive verifying against that record (sha256, structure). None otherwise: then the
    run was interrupted, as before."""
    from influx_backupd.verify.check import verify  # only for a run that died near its end

    storage = config.storage_dir
    for archive in layout.run_archives(storage, record.job, record.id):
        if not archive.exists() or archive.is_symlink():
            continue
        try:
            found = record_beside(archive)
        except SidecarError:
            continue
        if found is None or (found.id, found.job, found.status) != (record.id, record.job, "ok"):
            continue
        if not found.sha256 or not verify(config, archive, found).ok:
            log.get().warning(
                "recovery.not_adopted",
                run_id=record.id,
                archive=str(archive),
                detail="the record beside it says ok, the archive does not match it",
            )
            continue
        try:
            found.finished_at = found.finished_at or sidecar_of(archive).stat().st_mtime
        except OSError:
            found.finished_at = time.time()
        found.extra["adopted"] = "its final record was not saved; adopted by recovery"
        return found
    return None


def _rollback_dirs(left: dict[str, Any]) -> list[str]:
    """The rollback dirs a restore's marker names that are there: its previous data."""
    swaps = left.get("swaps")
    return [
        swap[1]
        for swap in (swaps if isinstance(swaps, list) else [])
        if isinstance(swap, list)
        and len(swap) == 3
        and isinstance(swap[1], str)
        and Path(swap[1]).is_dir()
    ]


def left_stopped(config: Config) -> dict[str, Any] | None:
    """The crash marker of a run that is gone (nobody holds the backup lock): influxd was
    stopped by it and not started again. Also a marker whose start keeps failing while a live
    process holds the lock (it is retrying: its pid is under "lock_holder"). None when there is
    none, or a live run owns it and nothing has failed (its stop window)."""
    left = CrashMarker(config.state_dir).read()
    if left is None or not CrashMarker.may_be_down(left):
        # a run killed before its stop (the next lock-taking command clears it), or a server
        # that got a stop and still runs (watched)
        return None
    if lock_held(config.state_dir):
        if not left.get("start_failures"):
            return None
        left["lock_holder"] = lock_holder(config.state_dir)[0]
    return left


def left_stopped_line(
    config: Config,
    left: dict[str, Any],
    *,
    daemon_pid: int | None,
    this_command_starts: bool,
    answering: bool | None = None,
) -> str:
    """One line for every command: who stopped influxd, what failed since, what brings it back
    (and, for a restore, what recovery will do with its data). answering: whether influxd
    answers, if the caller asked already."""
    marker = CrashMarker(config.state_dir).path
    when = number(left.get("written_at"))  # a damaged marker's 1e300 is no time
    at = (
        datetime.fromtimestamp(when, UTC).strftime(" at %Y-%m-%d %H:%M:%SZ")
        if when is not None
        else ""
    )
    restore = left.get("kind") == "restore"
    run_id = left.get("run_id") or "(unknown)"
    if answering is None:
        answering = Influxd(config).answers_itself()
    if CrashMarker.restore_swap_done(left):
        text = (
            f"restore {run_id} was killed after its restored influxd answered (crash marker "
            f"{marker}); influxd "
            + ("answers on the restored data" if answering else "is down since")
            + "; "
        )
        does = "keeps the restored data and clears the marker" + (
            "" if answering else ", starting influxd again"
        )
    else:
        text = f"influxd was stopped by {'restore' if restore else 'run'} {run_id}{at}"
        if answering:
            text += " and answers again, but its crash marker is still there"
        else:
            text += " and not started again"
        failures = count(left.get("start_failures"))
        if failures:
            text += f" ({failures} start attempts failed, last: {left.get('last_start_error')})"
        text += f" (crash marker {marker}); "
        does = (
            # not finished: whatever serves may be half-restored
            "rolls the restore back (stops influxd, moves the restored dirs aside, puts the "
            "previous data back, starts influxd)"
            if restore
            else "clears it"
            if answering
            else "starts it again"
        )
    blocked = left.get("rollback_blocked") if restore and not this_command_starts else None
    if isinstance(blocked, str):
        # the daemon's unit cannot: not "keeps trying", which it cannot succeed at
        return text + (
            f"its rollback was not done (nothing stopped for it): {blocked}; a command that can "
            f"rolls it back, e.g. `influx-backupd recover` as root outside the unit"
        )
    if "lock_holder" in left:
        return text + f"pid {left['lock_holder']}, which holds the backup lock, keeps trying"
    if this_command_starts:
        return text + f"this command {does} first"
    if daemon_pid is not None and not answering:
        return text + f"the daemon (pid {daemon_pid}) keeps trying to start it"
    return text + (f"`influx-backupd recover` (or any command that takes the backup lock) {does}")


def _follow_up_late(config: Config, catalog: Catalog, record: RunRecord) -> None:
    """A run whose follow-up never completed: rewrite the metrics (its count is in), run its
    hooks and heartbeat now (on_failure for a run killed outright), late rather than never."""

    log.get(run_id=record.id, job=record.job).warning(
        "recovery.follow_up_owed", status=record.status
    )
    job = next((j for j in config.settings.job if j.name == record.job), None)
    if job is not None:
        follow_up(config, job, catalog, record)
        return
    # The job is gone from the config: no hooks to run, only the metrics.
    try:
        write_metrics(config, catalog)
    except (OSError, MetricsNotWritten) as exc:
        log.get(job=record.job).error("after_run.step_failed", step="metrics", error=str(exc))
    catalog.followed_up(record.id)


def _unfinished(storage: Path) -> list[Path]:
    """A dead cold run's partial tar (or record), a dead hot run's incomplete dir (under the
    lock: no live run's); only names a run gives (layout): not another tool's "x.partial"."""
    try:
        entries = sorted(storage.iterdir())
    except OSError:
        return []
    return [
        path
        for path in entries
        if layout.is_partial(path) or (layout.is_incomplete(path) and path.is_dir())
    ]


def dead_runs_left(config: Config) -> list[str]:
    """What killed runs left that the lock's recovery clears, besides a crash marker and a
    pending database restore (`recover` says them): throwaway influxds and restore staging of
    dead owners, unfinished archives, runs the catalog still has `running`. Read without the
    lock. None while a live process holds the lock: it cleared what dead runs left when it took
    the lock, and its own partial archive or `running` record is no leftover (the unit's
    ExecStopPost `recover` beside an operator's backup must not fail on it)."""
    found: list[str] = []
    if not config.state_dir.is_dir() or lock_held(config.state_dir):
        return found
    storage = config.storage_dir
    if storage.is_dir():
        for path in sorted(storage.glob(scratch.PREFIX + "*")):
            if path.is_dir():
                found += scratch.left_behind(path)
        found += [f"unfinished backup {p}" for p in sorted(_unfinished(storage))]
    catalog = Catalog(config.state_dir)
    try:
        running = catalog.running() if catalog.exists() else []
        # a run the daemon's stop cut short (SIGTERM: recorded interrupted) owes its failure
        # notification, hooks and metrics: `recover` (the unit's ExecStopPost) sends them now,
        # where they waited for the daemon's next start (the soak audit), perhaps for ever. An
        # ok run's owed follow-up (a verify of its archive: minutes) waits for the next
        # lock-taking command, as before: a stop or a shutdown must not wait on it
        owed = [r for r in catalog.owed() if not r.ok] if catalog.exists() else []
    except (CatalogDamaged, OSError, ValueError):
        running, owed = [], []  # the recovery says what is wrong with the catalog
    found += [f"run {r.id} ({r.job}) still recorded running" for r in running]
    found += [
        f"run {r.id} ({r.job}) owed its follow-up (notifications, hooks, metrics)" for r in owed
    ]
    return found


def _restore_tests_left(storage: Path) -> None:
    """A verify --restore-test killed mid-way leaves its throwaway influxd serving: stop it.

    A whole-server restore (a cold one extracting, a 1.x hot one building beside the live
    server) killed before its swap also leaves the staging dirs its owner.json names (full
    copies of the data): removed here. Its owner is dead and every restore holds the lock we
    hold, so none is in use. (One killed during the swap
    left the crash marker too, handled before this: by then no staging dir is left.)
    Then its scratch dir goes too (a restore's unpacked copy of the backup, a restore test's
    server files): nothing of a dead owner's is in use, as prune, which removed them before,
    also finds. Left for the next prune, a killed restore's copy of a database took its size
    of disk while `recover` said "nothing to recover".
    """
    from influx_backupd.restore.target import recover_target

    for path in storage.glob(scratch.PREFIX + "*"):
        if not path.is_dir() or scratch.owner_alive(path):
            continue
        made_by = scratch.owner(path)
        stopped = scratch.stop_server(path)
        if stopped:
            log.get().warning("recovery.throwaway_stopped", scratch=str(path), pids=stopped)
        # a staging dir is there only until the swap renames it into place: never live data
        removed = [
            staged
            for staged in (made_by.staging if made_by else [])
            if layout.is_restore_staging(staged) and staged.is_dir()
        ]
        for staged in removed:
            shutil.rmtree(staged, ignore_errors=True)
        if removed:
            log.get().warning(
                "recovery.restore_staging_removed",
                paths=[str(p) for p in removed],
                detail="a restore killed before its swap left these copies beside the live dirs",
            )
        if made_by is not None and made_by.target is not None:
            target = made_by.target
            if recover_target(target, made_by.created):
                log.get().warning(
                    "recovery.target_removed",
                    path=str(target),
                    detail="a restore --target killed before it finished: what it wrote is gone",
                )
            elif target.is_dir():
                log.get().warning(
                    "recovery.target_kept",
                    path=str(target),
                    detail="a restore --target killed while its influxd started: the copy is "
                    "whole, that server stopped; serve it with influxd run -config "
                    + shlex.quote(str(target / "influxdb.conf")),
                )
        elif recovery_is_dry() or not scratch.is_ours(path, made_by):
            # prune --dry-run: its own report says the dir; one without our owner record (a
            # person's `.verify-x`) is never removed, only a server of ours in it stopped
            continue
        # a --target's DIR dealt with (even in a dry run, as before): a later restore into the
        # same DIR must never be taken for this one
        shutil.rmtree(path, ignore_errors=True)
        log.get().warning(
            "recovery.scratch_removed",
            path=str(path),
            detail="the working dir of a killed restore or restore test",
        )
