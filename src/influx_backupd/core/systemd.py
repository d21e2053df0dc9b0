"""systemd integration without libsystemd: sd_notify, the watchdog and the journal.

Both protocols are small datagram protocols over AF_UNIX sockets, so they are
written here rather than pulled in as a dependency:

- sd_notify(3): newline-separated ``KEY=value`` assignments sent to $NOTIFY_SOCKET.
- https://systemd.io/JOURNAL_NATIVE_PROTOCOL/: one datagram per entry, or a sealed
  memfd passed with SCM_RIGHTS when the entry is larger than a datagram may be.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from influx_backupd.core import log
from influx_backupd.core.journal import (
    JOURNAL_SOCKET,
    JournalRenderer,
    journal_available,
    journal_send,
    priority_for,
)

__all__ = [
    "JOURNAL_SOCKET",
    "JournalRenderer",
    "Watchdog",
    "extend_timeout",
    "journal_available",
    "journal_send",
    "notify",
    "priority_for",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog_interval",
    "watchdog_ping",
]


# --- sd_notify ----------------------------------------------------------------------------------


def _socket_address(value: str) -> str:
    # systemd writes an abstract socket name with a leading "@"; the kernel wants a NUL byte.
    return "\0" + value[1:] if value.startswith("@") else value


def notify(*assignments: str) -> bool:
    """Send ``assignments`` (e.g. ``"READY=1"``) to the service manager.

    Returns True when the datagram was sent; False when $NOTIFY_SOCKET is unset (not
    running under systemd, or NotifyAccess does not allow it) or the send failed. Never
    raises: a lost notification must not take the daemon down.
    """
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not assignments:
        return False
    if not target.startswith(("/", "@")):
        # e.g. "vsock:..." (systemd >= 254, VMs): not needed for a host daemon.
        if (target, None) not in _TOLD:
            _TOLD.add((target, None))
            log.get().warning("systemd.notify_unsupported", address=target)
        return False
    payload = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # MSG_DONTWAIT: a receiver that stopped reading (full queue, max_dgram_qlen is
            # often 10) must not block the daemon's main loop; the message is dropped instead.
            sock.sendto(payload, socket.MSG_DONTWAIT, _socket_address(target))
    except OSError as exc:
        # said once per kind of failure, not on every watchdog ping (a socket nobody reads
        # filled the log 3 times a second); said again after a send got through
        said = (target, exc.errno)
        if said not in _TOLD:
            _TOLD.add(said)
            log.get().warning(
                "systemd.notify_failed",
                address=target,
                error=str(exc),
                then="said once until a notification gets through",
            )
        return False
    if _TOLD:
        _TOLD.clear()
        log.get().info("systemd.notify_recovered", address=target)
    return True


_TOLD: set[tuple[str, int | None]] = set()  # notify(): failures already logged


def ready() -> bool:
    return notify("READY=1")


def status(text: str) -> bool:
    # A newline would start a new assignment, so a status text can never carry one.
    return notify("STATUS=" + " ".join(text.splitlines()))


def stopping() -> bool:
    return notify("STOPPING=1")


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading() -> bool:
    # Type=notify-reload (systemd >= 253) ignores RELOADING=1 without MONOTONIC_USEC;
    # older managers ignore the extra field.
    return notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}")


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more from now before the start/stop timeout fires."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


# Pings at most this often, at least this seldom: WATCHDOG_USEC=1 would ping tens of thousands
# of times a second, a huge one overflows the wait (the thread died, no ping ever again).
# A ping more often than half the timeout is harmless.
WATCHDOG_MIN_S = 0.1
WATCHDOG_MAX_S = 3600.0
_CLAMP_TOLD: set[float] = set()


def clamp_interval(interval: float) -> float:
    """interval within [WATCHDOG_MIN_S, WATCHDOG_MAX_S]; what was changed is logged once."""
    clamped = min(max(interval, WATCHDOG_MIN_S), WATCHDOG_MAX_S)
    if clamped != interval and interval not in _CLAMP_TOLD:
        _CLAMP_TOLD.add(interval)
        log.get().warning(
            "systemd.watchdog_clamped",
            asked_s=interval,
            pinging_every_s=clamped,
            reason=f"WATCHDOG_USEC gives a ping interval outside "
            f"{WATCHDOG_MIN_S:g}-{WATCHDOG_MAX_S:g}s",
        )
    return clamped


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec=, clamped to a sane range), or
    None if no watchdog is set.

    WATCHDOG_PID, when present, names the process the watchdog is meant for; a child that
    inherited the environment must not ping on the parent's behalf.
    """
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return clamp_interval(usec / 2 / 1_000_000)


class Watchdog:
    """Pings the service manager every ``interval`` seconds while ``alive()`` says so.

    ``alive`` is the daemon's own health check (e.g. "the main loop ticked recently"):
    when it returns False — or raises — no ping is sent, so a hung daemon is restarted
    by systemd instead of being kept alive by this thread.
    """

    def __init__(self, alive: Callable[[], bool], interval: float | None = None) -> None:
        self._alive = alive
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float | None:
        return self._interval if self._interval is not None else watchdog_interval()

    def start(self) -> bool:
        """Start the thread; False (and no thread) when no watchdog is configured."""
        interval = self.interval
        if interval is None or self._thread is not None:
            return False
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="sd-watchdog", daemon=True
        )
        self._thread.start()
        return True

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self, interval: float) -> None:
        interval = min(interval, WATCHDOG_MAX_S)  # a longer wait overflows: the thread died
        while True:
            try:
                healthy = self._alive()
            except Exception:
                log.get().error("systemd.watchdog_check_failed", exc_info=True)
                healthy = False
            if healthy:
                watchdog_ping()
            if self._stop.wait(interval):
                return


# --- journal native protocol --------------------------------------------------------------------
