"""The backup lock and the crash marker, both in state_dir.

The lock is flock(2): the kernel drops it when its holder dies, so a stale lock never blocks.
The marker says "influxd was stopped by run X": written before the stop, removed after the start.
A marker found by whoever takes the lock next was left by a process that died with influxd down.
A server that got our SIGTERM and outlasted stop_timeout still serving keeps a "signalled"
marker for SIGNALLED_WATCH_S: should it exit late, nothing else would start it again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from influx_backupd.core import alarms
from influx_backupd.core.atomic import (
    fsync_dir,
    not_regular_fd,
    read_ours_text,
    read_small,
    replace_json,
)
from influx_backupd.core.errors import EXIT_BUSY, BackupdError
from influx_backupd.core.jsontext import count, loads_json
from influx_backupd.core.processes import names_same, own_identity, same_as

# How long a server that got our stop signal and still runs is watched: influxd 1.x ends its own
# shutdown by force 30 s after SIGTERM; an exit later than this is not taken as ours.
SIGNALLED_WATCH_S = 900.0
# The longest stop window a marker may call expected (CrashMarker.down_expected_until): a copy of
# 20 TB at 200 MB/s, and a bound on what a hand-edited marker can silence.
MAX_EXPECTED_WINDOW_S = 48 * 3600.0
# A restore marker's phase once the restored server answers (CrashMarker.swap_done).
SWAP_DONE = "swap_done"

# What a `restore --database` has done to the live server so far (restore/database.py), in
# state_dir while it changes it; read here too by `status` and `recover`, which say it.
PENDING_DATABASE_RESTORE = "restore-database.json"

# Set while a --dry-run command holds the lock: its recovery says what it would do to the live
# server's databases (a killed `restore --database`'s) and does none of it.
_DRY_RECOVERY: ContextVar[bool] = ContextVar("dry_recovery", default=False)


@contextlib.contextmanager
def dry_recovery(dry: bool) -> Iterator[None]:
    token = _DRY_RECOVERY.set(dry)
    try:
        yield
    finally:
        _DRY_RECOVERY.reset(token)


def recovery_is_dry() -> bool:
    return _DRY_RECOVERY.get()


def pending_database_restore(state_dir: Path) -> dict[str, Any] | None:
    """A killed `restore --database`'s pending state ({} if unreadable), None if there is none."""
    path = state_dir / PENDING_DATABASE_RESTORE
    try:
        text = read_ours_text(path)
    except OSError:  # none, or a state dir this user cannot read (said elsewhere)
        return None
    try:
        data = loads_json(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# What a holder of the backup lock does, written after its pid in the lock file ("PID DOING"),
# as the busy line says it. A holder that only sends off-site (OFFSITE) yields to a command that
# waits for the lock (LockWanted); whatever else holds it makes that command busy (75).
OFFSITE = "offsite"
HOLDERS = {
    "backup": "another backup is running",
    "restore": "a restore is running",
    "prune": "a prune is running",
    "verify": "a verify is running",
    "recovery": "the daemon is recovering what a dead run left",
    "import": "an import is running",
    "fetch": "a fetch from the bucket for a restore is running",
    OFFSITE: "an off-site send is running",
}
UNKNOWN_HOLDER = HOLDERS["backup"]  # a lock file without DOING (an older version's)


def holder_means(doing: str | None) -> str:
    """What a holder that wrote DOING in the lock file is doing, as a busy line says it."""
    return HOLDERS.get(doing or "", UNKNOWN_HOLDER)


class Busy(BackupdError):
    """Another influx-backupd holds the backup lock (exit status 75). doing: what the holder
    said it does in the lock file (HOLDERS), None if it did not say."""

    code = "busy"
    label = "busy"
    exit_status = EXIT_BUSY

    def __init__(self, message: str, doing: str | None = None) -> None:
        super().__init__(message)
        self.doing = doing


class Yielded(Busy):
    """An off-site send gave the backup lock up to a command waiting for it, before it was done:
    the next sync resumes it (exit status 75: try again later)."""

    code = "offsite.yielded"
    label = "offsite"


class StateDirError(BackupdError):
    """The state_dir cannot hold the lock (not writable, not a directory): exit status 1."""

    code = "state_dir"
    label = "state_dir"

    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error  # what the lock's open said, with its path


_NOT_OURS = (
    "not the lock file influx-backupd makes (a regular file); remove it, the next command makes "
    "it again"
)


def _why_unwritable(exc: OSError) -> str:
    """The likely cause of a lock file that cannot be made, by what the system said."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            " (the state_dir must be a directory this user can write; is another user's "
            "service running?)"
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # no blocks, or no inodes (df -i)
        return " (the state_dir's filesystem is full: no space or no inodes left, see df -i)"
    return ""


@dataclass
class BackupLock:
    path: Path
    fd: int | None = None
    # what a second caller is told is going on (the daemon's own lock reuses this class); None:
    # what the holder wrote it does (HOLDERS)
    busy_means: str | None = None
    doing: str | None = None  # what this holder does, written after its pid

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a symlink put there would have us truncate and write whatever it
            # names (as root); refused, it is the one-line error below
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateDirError(f"cannot take the lock {self.path}: {_NOT_OURS}", exc) from None
            raise StateDirError(
                f"cannot take the lock {self.path}: {exc.strerror or exc}{_why_unwritable(exc)}",
                exc,
            ) from None
        kind = not_regular_fd(fd)
        if kind is not None:  # a FIFO, a device: no lock file of ours
            os.close(fd)
            raise StateDirError(f"cannot take the lock {self.path}: it is {kind}; {_NOT_OURS}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, doing = _holder_said(os.pread(fd, 64, 0))
            os.close(fd)
            means = self.busy_means or holder_means(doing)
            raise Busy(f"{means} (lock {self.path} held by pid {pid})", doing) from None
        os.ftruncate(fd, 0)
        said = f"{os.getpid()} {self.doing}" if self.doing else str(os.getpid())
        try:
            os.pwrite(fd, f"{said}\n".encode(), 0)
        except OSError as exc:
            # The flock is the lock; the pid only names its holder to a second caller (one
            # that cannot read it waits as for a backup). A full state dir must not stop the
            # recovery that starts an influxd left down.
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                os.close(fd)
                raise
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def still_held(self) -> bool:
        """The file we hold is still the one at path: not removed (rm -rf of the state dir)
        nor replaced. A flock on a removed file keeps nobody out: a second process would make
        a new file there and take it."""
        if self.fd is None:
            return False
        try:
            there = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        held = os.fstat(self.fd)
        return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)

    def __enter__(self) -> BackupLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_for(state_dir: Path, doing: str | None = None) -> BackupLock:
    return BackupLock(state_dir / "backup.lock", doing=doing)


def _holder_said(raw: bytes) -> tuple[str, str | None]:
    """The pid and what it does, as a holder wrote them in the lock file ("PID DOING"; an older
    version wrote the pid alone; a holder between its flock and its write, nothing)."""
    words = raw.decode(errors="replace").split()
    # whatever else is there (garbage, a NUL) is not printed as a pid
    pid = words[0] if words and words[0].isascii() and words[0].isdigit() else "unknown"
    doing = words[1] if len(words) > 1 and words[1] in HOLDERS else None
    return pid, doing


def lock_holder(state_dir: Path) -> tuple[str, str | None]:
    """The pid the backup lock's holder wrote ("unknown" if none) and what it does; takes
    nothing."""
    try:
        return _holder_said(read_small(state_dir / "backup.lock", 4096)[:64])
    except OSError:
        return "unknown", None


WANTED_DIR = "lock-wanted"
# A crash marker or a lock request is a few hundred bytes; past this, not ours (read as torn)
MARKER_MAX = 1 << 20


class LockWanted:
    """While a command waits for the backup lock that an off-site send holds: a file of its own
    in <state_dir>/lock-wanted/ (pid, process start time, what it will do), which the send
    polls between objects and parts (lock_wanted) and yields to. Removed when the wait ends;
    one left by a waiter killed meanwhile names a dead process: ignored, and removed."""

    def __init__(self, state_dir: Path, doing: str | None) -> None:
        self.path = state_dir / WANTED_DIR / f"{os.getpid()}.json"
        self.doing = doing

    def __enter__(self) -> LockWanted:
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        body = {
            **own_identity(),
            "doing": self.doing,
            "since": time.time(),
        }
        replace_json(self.path, body, durable=False)  # a wait outlives no reboot
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def lock_wanted(state_dir: Path, *, other_than: int | None = None) -> str | None:
    """A live command waiting for the backup lock, said as "a backup (pid N)"; None if none.
    other_than: a pid whose own request does not count (the asker's)."""
    try:
        entries = sorted(p for p in (state_dir / WANTED_DIR).iterdir() if p.suffix == ".json")
    except OSError:
        return None  # none yet (most of the time), or not readable: nobody can wait there
    for path in entries:
        if path.name.startswith("."):
            continue  # a LockWanted being written (replace_json's temp file)
        try:
            body = loads_json(read_small(path, MARKER_MAX).decode())
        except (OSError, ValueError):
            continue  # not a request of ours (not even a regular file): passed over
        if not isinstance(body, dict) or same_as(body) is None:
            path.unlink(missing_ok=True)  # its waiter was killed (or the file is not ours)
            continue
        if body.get("pid") == other_than:
            continue
        doing = body.get("doing")
        what = WAITERS.get(doing if isinstance(doing, str) else "", "a command")
        return f"{what} (pid {body['pid']})"
    return None


WAITERS = {
    "backup": "a backup",
    "restore": "a restore",
    "prune": "a prune",
    "verify": "a verify",
}


class _ReadOnlyFlock:
    """An exclusive flock(2) on a file or dir that exists, opened read-only: nothing is written
    there and no write access is needed. None there yet, or a filesystem that refuses flock
    (some network filesystems): the command goes on without it, as before these locks."""

    def __init__(self, path: Path, busy_line: Callable[[str], str], flags: int = 0) -> None:
        """busy_line: the Busy line, given who holds it ("pid N")."""
        self.path = path
        self._busy_line = busy_line
        self._flags = flags
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | self._flags)
        except OSError:
            return  # none yet, or unreadable: said where it is used
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _flock_holder(fd)
            os.close(fd)
            raise Busy(self._busy_line(holder)) from None
        except OSError:
            os.close(fd)
            return
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ServerLock(_ReadOnlyFlock):
    """One influx-backupd at a time per influxd, whatever its state_dir: two configs (two
    daemons, a daemon and a foreground command) naming the same influxdb.conf would otherwise
    stop the server at once, each counting the other's downtime and starting it mid-copy.

    On influxdb.conf itself: the file's inode is the server's identity (a restore swaps meta,
    data and wal dirs, never the conf)."""

    def __init__(self, conf: Path) -> None:
        super().__init__(
            conf,
            lambda holder: (
                f"influxd of {conf} is being backed up or restored by another influx-backupd "
                f"({holder}; a config with another state_dir naming the same influxdb.conf): "
                "one at a time per influxd"
            ),
        )
        self.conf = conf

    def holder(self) -> str | None:
        """'pid N' of whoever holds the server's lock now, or None; takes nothing (dry runs)."""
        return flock_holder(self.conf)


class StorageLock(_ReadOnlyFlock):
    """One influx-backupd at a time per storage dir, whatever its state_dir: two instances
    sharing one (a config copied for an influx-backupd@NAME, only [influxd] changed) filled one
    staging tree with both servers' files at once, an ok backup holding the other server's
    data, and each one's recovery removed the other's unfinished archive as a dead run's.

    On the storage dir itself: a read-only mount of backups restores as before."""

    def __init__(self, storage: Path) -> None:
        super().__init__(
            storage,
            lambda holder: (
                f"storage dir {storage} is in use by another influx-backupd ({holder}; a "
                "config with another state_dir naming the same storage.dir): one at a time per "
                "storage dir; give each instance a storage.dir of its own"
            ),
            os.O_DIRECTORY,
        )


def flock_holder(path: Path) -> str | None:
    """'pid N' (from /proc/locks) of a live process holding an exclusive flock on path, or None
    (no such file, no holder); creates and takes nothing: read-only commands ask it."""
    try:
        # O_NONBLOCK: a FIFO put there would block the open until a writer came
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _flock_holder(fd)
    except OSError:
        return None  # flock refused (some network filesystems): nothing known to hold it
    finally:
        os.close(fd)  # drops the shared lock, if taken
    return None


def _flock_holder(fd: int) -> str:
    """'pid N' of the process holding a flock on fd's file, from /proc/locks, if it says."""
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "pid unknown"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters' lines have "->"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            return f"pid {fields[4]}"
    return "pid unknown"


def lock_held(state_dir: Path) -> bool:
    """Whether a live process holds the backup lock; creates nothing (read-only commands)."""
    return flock_holder(state_dir / "backup.lock") is not None


DAEMON_LOCK = "daemon.lock"  # held by the daemon for its lifetime (daemon/loop.daemon_lock)


def daemon_holder(state_dir: Path) -> str | None:
    """'pid N' of a live daemon on this state dir, or None; takes nothing."""
    return flock_holder(state_dir / DAEMON_LOCK)


class CrashMarker:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "influxd-stopped.json"

    def write(
        self,
        run_id: str,
        *,
        influxd: dict[str, object] | None = None,
        down_expected_until: float | None = None,
        **detail: Any,
    ) -> None:
        """influxd: the pid and create_time of the server about to be stopped, so that a marker
        left by a process killed before it asked for the stop is told apart (never_stopped).
        down_expected_until: the unix time by which the stop window ends, past which influxd is
        down by mistake (see the static method of that name)."""
        now = time.time()
        body: dict[str, Any] = {"run_id": run_id, "pid": os.getpid(), "written_at": now}
        if influxd is not None:
            body["influxd"] = influxd
            body["stopping"] = False
        if down_expected_until is not None:
            body["down_expected_until"] = down_expected_until
            body["writer"] = own_identity()
        self._write({**body, **detail})

    def stopping(self) -> None:
        """Written just before influxd is asked to stop: from here on, the server named in the
        marker may be on its way down even while it still runs."""
        body = self.read()
        if body is not None and body.get("stopping") is not True:
            # stopping_at: a run killed from here on has its outage measured by the recovery
            # that starts influxd again (guard._recover), to the record and the metrics
            self._write({**body, "stopping": True, "stopping_at": time.time()})

    def swap_done(self, restored: dict[str, object] | None) -> None:
        """A restore's server answers on the restored dirs (pid, create_time): the swap is done.
        A marker left from here on is not rolled back by recovery (guard.recover): the restored
        server may have taken writes since, and a rollback would be a second outage."""
        body = self.read()
        if body is not None:
            self._write({**body, "phase": SWAP_DONE, "restored_influxd": restored})

    @staticmethod
    def restore_swap_done(body: dict[str, Any]) -> bool:
        return body.get("kind") == "restore" and body.get("phase") == SWAP_DONE

    def _write(self, body: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_json(self.path, body)

    def note_failed_start(self, _attempt: int, error: str, retry_in_s: float) -> None:
        """A start attempt failed: counted in the marker (over every command and the daemon),
        so that every command can say so."""
        body = self.read()
        if body is None:
            return
        failures = count(body.get("start_failures")) or 0
        first = body.get("alarmed") is not True  # once a stop window, whoever retries
        body.update(
            start_failures=failures + 1,
            last_start_error=error,
            last_start_at=time.time(),
            next_start_at=time.time() + retry_in_s,
            alarmed=True,
        )
        with contextlib.suppress(OSError):  # a full state dir: the count lost, not the retry
            self._write(body)
        if first:
            job = body.get("job")
            alarms.left_down(job if isinstance(job, str) else None, error)

    def rollback_blocked(self, why: str | None) -> None:
        """Why a restore's rollback could not be done by the last process that tried
        (guard.recover), None once one can: kept in the marker, so that every command and
        `status` say so, not that a start is being retried."""
        body = self.read()
        if body is not None and body.get("rollback_blocked") != why:
            body.pop("rollback_blocked", None)
            self._write({**body, **({"rollback_blocked": why} if why else {})})

    def read(self) -> dict[str, Any] | None:
        try:
            # bounded, and never blocking on a FIFO nor reading a device put there
            data = loads_json(read_small(self.path, MARKER_MAX).decode())
        except (FileNotFoundError, NotADirectoryError):
            return None  # none there; or no state dir at all (a file in its place): none either
        except (OSError, ValueError):
            # A torn marker still means influxd may be down.
            return {"run_id": None}
        return data if isinstance(data, dict) else {"run_id": None}

    def signalled(self, influxd: dict[str, object] | None) -> bool:
        """After a stop that outlasted stop_timeout: influxd (pid, create_time) still runs.

        When it is the very server this marker named and its stop was asked, the marker is
        kept as "signalled" (nothing left to roll back: a restore's swaps are dropped) and True:
        recovery and the daemon start influxd again should that process exit late. Otherwise
        (another server runs: someone started one) the marker is cleared and False.
        """
        body = self.read()
        named = body.get("influxd") if body is not None else None
        if (
            body is None
            or influxd is None
            or body.get("stopping") is not True
            or not names_same(named, influxd)
        ):
            self.clear()
            return False
        self._write(
            {
                "run_id": body.get("run_id"),
                "job": body.get("job"),
                "pid": os.getpid(),
                "written_at": body.get("written_at"),
                "influxd": named,
                "stopping": True,
                "signalled_at": time.time(),
            }
        )
        return True

    @staticmethod
    def never_stopped(body: dict[str, Any]) -> bool:
        """The marker's writer died before asking influxd to stop: the very server it named
        (same pid, same create_time: not a reused pid, not a restart) still runs."""
        return body.get("stopping") is False and _named_runs(body)

    @staticmethod
    def signalled_runs(body: dict[str, Any]) -> bool:
        """A "signalled" marker whose server still runs, within SIGNALLED_WATCH_S: influxd was
        never taken down (yet); it is watched, not started."""
        at, now = body.get("signalled_at"), time.time()
        # a time ahead of ours (a hand-edited marker, a clock set back) would watch for ever
        if not isinstance(at, int | float) or not at - 60 <= now < at + SIGNALLED_WATCH_S:
            return False
        return _named_runs(body)

    @staticmethod
    def may_be_down(body: dict[str, Any] | None) -> bool:
        """Whether this marker means influxd may be down: not one left before the stop was
        asked, nor one whose signalled server still runs."""
        return (
            body is not None
            and not CrashMarker.never_stopped(body)
            and not CrashMarker.signalled_runs(body)
        )

    @staticmethod
    def down_expected_until(body: dict[str, Any] | None) -> float:
        """Unix time until which influxd is down on purpose (0: it is not): the end of the stop
        window a run wrote in its marker before the stop (`down_expected_until`, with
        `writer`: its own identity), only while that very process lives and no start of
        influxd has failed. A run killed in its window, or whose start fails, is down by
        mistake at once (the InfluxdLeftDown alert waits for this time, not for a dead run's)."""
        if body is None or body.get("start_failures"):
            return 0.0
        until, written = body.get("down_expected_until"), body.get("written_at")
        if (
            not isinstance(until, int | float)
            or isinstance(until, bool)
            or not isinstance(written, int | float)
            or not math.isfinite(until)
            # a hand-edited or damaged marker never silences the alert for long
            or not written <= until <= written + MAX_EXPECTED_WINDOW_S
        ):
            return 0.0
        return float(until) if same_as(body.get("writer")) is not None else 0.0

    @staticmethod
    def named_pid(body: dict[str, Any]) -> int | None:
        named = body.get("influxd")
        pid = named.get("pid") if isinstance(named, dict) else None
        return pid if isinstance(pid, int) and pid > 0 else None

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        except IsADirectoryError:
            try:
                self.path.rmdir()  # empty: nothing of anyone's in it
            except OSError:
                raise StateDirError(
                    f"{self.path}: a directory where the crash marker (a file influx-backupd "
                    f"writes) belongs; remove it (rm -r {shlex.quote(str(self.path))}) for the "
                    "next command to go on"
                ) from None
        fsync_dir(self.path.parent)


def _named_runs(body: dict[str, Any]) -> bool:
    """The server the marker names (same pid, same create_time: not a reused pid, not a
    restart) still runs."""
    return same_as(body.get("influxd")) is not None


class ClockSteps:
    """How often the daemon saw this host's wall clock stepped back (clock-steps.json).

    A hot increment takes the files influxd dates after its parent's snapshot (-since); a
    clock stepped back since then dates new files before it, and the increment would miss
    them without a word. Each hot link records the count it saw; a higher count now means a
    step since: the next link is a new full (jobs/plan.py)."""

    NAME = "clock-steps.json"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.NAME

    def count(self) -> int:
        try:
            body = loads_json(read_ours_text(self.path))
        except (OSError, ValueError):
            return 0
        return (count(body.get("steps_back")) or 0) if isinstance(body, dict) else 0

    def note_back(self, by_s: float) -> None:
        body = {"steps_back": self.count() + 1, "last_at": time.time(), "last_by_s": by_s}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_json(self.path, body)
