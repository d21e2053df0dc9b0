"""The swap at the heart of every full restore: a plan names, for each live dir of influxd, where
its replacement is staged and where it is moved aside; the swap stops influxd, renames, and
puts everything back if anything fails. Shared by cold and hot restores."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from influx_backupd.core.config import Config
from influx_backupd.core.errors import RestoreFailed, RestoreMisconfigured, RestoreRefused
from influx_backupd.core.interrupt import Interrupted, signals_blocked, suspend_deferred
from influx_backupd.core.log import Logger
from influx_backupd.core.paths import is_within, real
from influx_backupd.core.processes import identity
from influx_backupd.influxd import logfile
from influx_backupd.influxd.server import Influxd
from influx_backupd.report import metrics
from influx_backupd.restore.served import check_served
from influx_backupd.store import layout
from influx_backupd.store.state import CrashMarker


@dataclass
class RestoreResult:
    archive: str
    run_id: str | None
    rollback_dirs: list[str] = field(default_factory=list)
    stop_s: float | None = None
    swap_s: float | None = None
    start_s: float | None = None
    downtime_s: float | None = None  # from the stop until the restored server answers
    # the count of what the restored server serves, after its start: it answers meanwhile, so
    # this is not downtime (a failed count still rolls the restore back)
    check_s: float | None = None
    files: int = 0
    # the restored server's point counts, compared with those counted before (restore/served.py)
    served: dict[str, int] | None = None
    served_check: str | None = None  # what that comparison found, in words
    warnings: list[str] = field(default_factory=list)  # for the operator, besides the log


def check_served_after_start(
    result: RestoreResult,
    config: Config,
    floor: Mapping[str, int] | None,
    logger: Logger,
    *,
    what: str,
    before_a_stop: bool = False,
    accept_fewer: bool = False,
) -> None:
    """Hold the restored server, once it answers, to floor (restore/served.py; NotServed rolls
    the restore back), noting what it found and how long that took (check_s: not downtime)."""
    t_check = time.monotonic()
    served = check_served(
        config, floor, logger, what=what, before_a_stop=before_a_stop, accept_fewer=accept_fewer
    )
    result.served, result.served_check = served.counted, served.summary()
    result.warnings += served.fewer_warning()
    result.check_s = time.monotonic() - t_check


@dataclass(frozen=True)
class SwapPlan:
    """One restore's names: every configured dir of influxd (targets) is replaced, even one the
    backup lacks (it becomes empty: a live wal/ left beside restored data would replay newer
    writes into it)."""

    rid: str
    targets: dict[str, Path]
    staging: dict[str, Path]
    rollback: dict[str, Path]

    @classmethod
    def for_server(cls, config: Config) -> SwapPlan:
        """Refused before anything is stopped or written when a live dir cannot be swapped by
        rename: a mount point, or renames this process may not make (RestoreMisconfigured: the
        config or the host must change, exit 78, for cold and hot alike).

        Each live dir is taken at its real path (symlinks resolved): staging and rollback dirs
        lie beside the real dir, on its filesystem, and a symlink such as data -> /big/data
        stays as it is, naming the restored dir once the swap is done."""
        # the time for people reading the dir names, a random tail so that two restores in the
        # same second never share a rollback dir
        rid = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
        targets = {top: real_live_dir(path) for top, path in sorted(config.server.dirs().items())}
        plan = cls(
            rid=rid,
            targets=targets,
            staging={top: layout.restore_staging(t, rid) for top, t in targets.items()},
            rollback={top: layout.rollback_of(t, rid) for top, t in targets.items()},
        )
        configured = config.server.dirs()
        for top, target in targets.items():
            if is_mount_point(target):
                shown = (
                    str(target)
                    if target == configured[top]
                    else f"{configured[top]} (that is {target})"
                )
                raise RestoreMisconfigured(
                    f"{config.server.conf}: {top} dir {shown} is a mount point: a whole-server "
                    "restore swaps dirs by rename, which cannot move a mount point; influxd not "
                    "stopped (restore --target DIR instead, then copy DIR's files into the mount "
                    "with influxd stopped)"
                )
            below = sorted(m for m in _mount_points() if target in m.parents)
            if below:
                raise RestoreMisconfigured(
                    f"{config.server.conf}: {top} dir {configured[top]} holds the mount point "
                    f"{below[0]}: a whole-server restore moves the dir aside by rename, mount and "
                    "all, and would put the restored files on the dir's own filesystem; influxd "
                    "not stopped (restore --target DIR instead, then copy DIR's files in with "
                    "influxd stopped)"
                )
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RestoreMisconfigured(
                    f"{config.server.conf}: {top} dir {configured[top]}: its parent "
                    f"{target.parent} cannot be made ({exc.strerror or exc}); influxd not stopped"
                ) from None
            if plan.rollback[top].exists() or plan.staging[top].exists():
                raise RestoreRefused(
                    f"{plan.staging[top]} or {plan.rollback[top]} already exists; try again"
                )
        # before the staged copy is written beside the live dirs: the same renames are
        # checked again right before the stop (live_dirs_swapped)
        blocked = renames_blocked(plan.swaps())
        if blocked is not None:
            raise RestoreMisconfigured(f"{blocked}; influxd not stopped, nothing restored")
        return plan

    def swaps(self) -> list[list[str]]:
        """[live, rollback, staging] per dir: what the crash marker keeps for roll_back."""
        return [
            [str(self.targets[t]), str(self.rollback[t]), str(self.staging[t])]
            for t in self.targets
        ]

    def remove_staging(self) -> None:
        for path in self.staging.values():
            shutil.rmtree(path, ignore_errors=True)


def refuse_source_inside(plan: SwapPlan, backup_files: Iterable[Path]) -> None:
    """A backup lying inside a live dir moves aside with it at the swap: read after the stop
    (0.9's tool) it is gone, and either way it ends in a rollback dir an operator removes.
    Refused before anything is stopped, as the operator's to move."""
    for path in backup_files:
        for top, live in plan.targets.items():
            if is_within(real(path), live):
                raise RestoreRefused(
                    f"{path}: the backup lies inside the live {top} dir {live}, which a "
                    "whole-server restore moves aside: move it out of the server's dirs first "
                    "(or restore --target DIR); influxd not stopped"
                )


def refuse_stranger(server: Influxd, plan: SwapPlan, running: psutil.Process | None = None) -> None:
    """RestoreRefused when a process other than the server the config names (running: located
    already, else now) serves or holds the live dirs: under [influxd] service one started by
    hand beside the unit, whose MainPID alone locate() sees. Stopping the unit would not stop
    it; the renames would move the dirs from under it, and what it wrote meanwhile (a database
    created) would be lost with the dirs it wrote into."""
    if running is None:
        running = server.locate()
    stranger = server.stranger(plan.targets.values(), running)
    if stranger is not None:
        raise RestoreRefused(f"{stranger}, then restore again")


class HeldAfterStop(Exception):
    """Something still holds the live dirs or influxd's ports once influxd stopped: nothing
    is renamed, influxd is started again."""


def real_live_dir(path: Path) -> Path:
    """path with every symlink in it resolved: where the dir really is (it need not exist)."""
    return Path(os.path.realpath(path))


def _mount_points() -> set[Path]:
    """Every mount point of this mount namespace (bind mounts too, which share their parent's
    st_dev and so escape os.path.ismount)."""
    found: set[Path] = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split(" ")
                if len(fields) > 4:
                    # octal escapes for space, tab, newline and backslash
                    found.add(Path(re.sub(r"\\([0-7]{3})", _unescape, fields[4])))
    except OSError:
        pass
    return found


def _unescape(match: re.Match[str]) -> str:
    return chr(int(match.group(1), 8))


def is_mount_point(path: Path) -> bool:
    """A mount point cannot be renamed (EBUSY): found before anything is stopped."""
    return path.is_dir() and (os.path.ismount(path) or path in _mount_points())


@contextmanager
def live_dirs_swapped(
    config: Config,
    server: Influxd,
    plan: SwapPlan,
    result: RestoreResult,
    logger: Logger,
    *,
    move_staging_in: bool = True,
) -> Iterator[None]:
    """Stop influxd, move each live dir aside (and, if asked, each staged dir into its place);
    the body brings a server up on the new dirs and checks that it serves what it should
    (restore/served.py): until then a kill is rolled back by recovery.

    Whatever fails or signals in between, the previous dirs are put back and the previous
    server started again (signals held meanwhile), then RestoreFailed. The crash marker is
    written first and cleared only once a server runs, so a SIGKILL is undone by the next
    command (guard.recover).
    """
    marker = CrashMarker(config.state_dir)
    swaps = plan.swaps()
    # checked again here: the extraction before may have taken hours since the command's check
    running = server.locate()
    problem = server.startable(running)
    if problem is not None:
        raise RestoreMisconfigured(
            f"{config.path}: {problem}; influxd not stopped, nothing restored"
        )
    blocked = renames_blocked(swaps)
    if blocked is not None:
        raise RestoreMisconfigured(f"{blocked}; influxd not stopped, nothing restored")
    was_running = running is not None
    refuse_stranger(server, plan, running)  # the last look before the stop: nothing stopped
    # the server about to be stopped: a marker left by a kill before the stop names it still
    # running, and recovery leaves it alone (CrashMarker.never_stopped)
    # Ctrl-Z from here until a server runs again stops us only then (core/interrupt)
    with suspend_deferred():
        # the window's work is renames: influxd's own stop and start are what take time
        until = server.stop_window_end()
        marker.write(
            f"restore-{plan.rid}",
            kind="restore",
            swaps=swaps,
            influxd=identity(running),
            down_expected_until=until,
        )
        t_stop = time.monotonic()
        try:
            if was_running:
                # as a cold run: left_down 1 before the stop is asked (cli's restore rewrites it)
                metrics.mark_left_down_before_stop(
                    config.settings.daemon.metrics_file, logger, until
                )
                marker.stopping()  # before the event: "stopping" in the log means it was asked
                logger.info("influxd.stopping", phase="stop")
                server.stop(outcome="nothing restored, live data untouched")
            result.stop_s = time.monotonic() - t_stop
            # the last look before the renames: nothing may write into what is moved aside, nor
            # keep the restored server from its port (a server started in the stop window, a
            # process the unit's stop left behind)
            held = server.in_use(plan.targets.values())
            if held is not None:
                raise HeldAfterStop(held)
            t_swap = time.monotonic()
            for top, target in plan.targets.items():
                if target.exists():
                    os.rename(target, plan.rollback[top])
                    result.rollback_dirs.append(str(plan.rollback[top]))
                else:
                    note_absent(plan.rollback[top])
                if move_staging_in:
                    os.rename(plan.staging[top], target)
                elif target != config.server.dirs()[top]:
                    # a symlinked live dir: the tool writes through the link, which must name a dir
                    target.mkdir(mode=0o755)
            result.swap_s = time.monotonic() - t_swap
            yield
            result.downtime_s = time.monotonic() - t_stop - (result.check_s or 0.0)
            # the body returns once the restored server serves: from here a kill leaves it serving
            # (recovery keeps it, guard.recover), never rolled back under writes it took since
            try:
                marker.swap_done(identity(server.locate()))
            except OSError as exc:  # not worth a rollback of a server that answers: cleared below
                logger.warning("restore.marker_not_written", path=str(marker.path), error=str(exc))
            for path in plan.rollback.values():  # the restored dirs stay: no rollback needs them
                if path.is_file():
                    with contextlib.suppress(OSError):
                        path.unlink()
        except (Exception, Interrupted) as exc:
            # any failure at all once the swap began: the previous data must come back
            with signals_blocked():
                logger.error("restore.rolling_back", error=str(exc))
                if result.stop_s is not None and server.locate() is not None:
                    server.stop()  # past the stop, a running influxd is the (half-)restored one
                failed = roll_back(swaps)
                logger.error("restore.rolled_back", failed_restore=failed)
                left = server.locate()
                if left is not None and (
                    server.answers_itself(left.pid)
                    or (server.frozen(left) and server.asked_to_stop(left))
                ):
                    # its stop outlasted stop_timeout and it still serves the previous data, or it
                    # got the stop and was frozen before it exited (it goes down once thawed):
                    # left as it is, watched (started again should it exit late)
                    marker.signalled(identity(left))
                elif was_running and (left is None or not server.frozen(left)):
                    # the previous data must serve again: retried with backoff until it does. A
                    # server still shutting down (its stop outlasted stop_timeout) is waited for
                    # by start_until_up, then started; a frozen one never signalled is left
                    if left is not None:
                        logger.warning("influxd.still_stopping", phase="start", pid=left.pid)
                    server.start_until_up(
                        config.state_dir / logfile.NAME, on_failure=marker.note_failed_start
                    )
                    marker.clear()  # only once the old server runs again: else the next one retries
                else:
                    marker.clear()
            if isinstance(exc, HeldAfterStop):
                raise RestoreFailed(
                    f"restore failed ({exc}; stop it, then restore again): nothing was renamed, "
                    + ("influxd started again" if was_running else "influxd was not running")
                ) from None
            raise RestoreFailed(
                f"restore failed ({exc}); the previous data was put back" + failed_kept(failed)
            ) from None
        marker.clear()


def note_absent(rollback_dir: Path) -> None:
    """An empty file where the rollback dir would be: the live dir did not exist before the
    swap, so a rollback (ours, or recovery's after a kill: it reads only the marker's swaps and
    the disk) moves whatever the restore put there aside and puts nothing back. Synced before
    the staging dir is renamed in, which a power loss must not see without it."""
    fd = os.open(rollback_dir, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    parent = os.open(rollback_dir.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(parent)
    finally:
        os.close(parent)


def renames_blocked(swaps: list[list[str]]) -> str | None:
    """Why this process could not do a swap's renames (the restore's, or roll_back's), or None.

    Each live dir and its rollback dir is renamed inside their parent: the parent and the dirs
    must be writable here, and on a filesystem mounted read-write. os.access says EROFS even
    to root, whom modes never stop: a systemd unit's ProtectSystem=strict mounts everything
    outside its ReadWritePaths= read-only (for that unit alone; the same command run outside
    it can). Checked before influxd is stopped: a rename that fails after the stop leaves the
    server down on half-moved dirs."""
    for target_s, rollback_s, _staging in swaps:
        target, rollback_dir = Path(target_s), Path(rollback_s)
        for path in (target.parent, target, rollback_dir):
            if not path.is_dir():
                continue  # absent (a live dir that never existed, a rollback not made yet)
            try:
                read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
            except OSError:
                read_only = False
            if read_only or not os.access(path, os.W_OK | os.X_OK):
                why = "on a read-only mount" if read_only else "not writable"
                return (
                    f"{path} is {why} for this process (pid {os.getpid()}, uid {os.getuid()}), "
                    f"so the renames in {target.parent} cannot be done here (a systemd unit's "
                    f"sandbox: add {target.parent} to its ReadWritePaths=, or run the command "
                    "as root outside the unit)"
                )
    return None


def roll_back(swaps: list[list[str]]) -> list[str]:
    """Put each live dir back from its rollback dir; what was restored is kept aside, not
    deleted. A live dir that did not exist before (note_absent) is moved aside and stays
    absent. Returns where (the *.failed-restore-* dirs: full copies nobody else names)."""
    failed: list[str] = []
    for target_s, rollback_s, staging_s in swaps:
        target, rollback_dir, staging = Path(target_s), Path(rollback_s), Path(staging_s)
        aside = target.with_name(
            target.name + ".failed-restore-" + rollback_dir.name.rpartition(".rollback-")[2]
        )
        if rollback_dir.is_dir():
            if target.exists():
                os.rename(target, aside)
            os.rename(rollback_dir, target)
        elif rollback_dir.is_file():  # no previous dir: nothing comes back, nothing stays
            if target.exists():
                os.rename(target, aside)
            rollback_dir.unlink()
        # named also when an earlier rollback, killed part-way, moved it aside already
        if aside.is_dir():
            failed.append(str(aside))
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return failed


def failed_kept(failed: list[str]) -> str:
    """The tail of a rollback's message: where the restored dirs went, how to remove them (a
    command to paste: each path shell-quoted), and which live dirs had nothing to put back."""
    if not failed:
        return ""
    absent = [
        str(live)
        for live in (Path(path.rpartition(".failed-restore-")[0]) for path in failed)
        if not live.exists()
    ]
    return (
        "; what the restore had put in place was moved aside to "
        + ", ".join(failed)
        + (
            f" ({', '.join(absent)} did not exist before the restore: left absent)"
            if absent
            else ""
        )
        + " (not used again: once not needed, rm -rf "
        + shlex.join(failed)
        + ")"
    )
