"""A signal turned into an exception, and a window in which signals wait.

Its own small module so that every command can catch Interrupted without importing the cold
job (and, through it, psutil, tarfile and the format readers) just for a class name.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_SHIELDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class Interrupted(BaseException):
    """A signal asked us to stop; raised in the main thread so `finally` restarts influxd."""


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGINT/SIGHUP while influxd is being started; they are delivered afterwards."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SHIELDED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def signals_allowed() -> Iterator[None]:
    """Inside signals_blocked: let SIGTERM/SIGINT/SIGHUP through for a while (a wait between
    start attempts, when nothing is half-done)."""
    old = signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHIELDED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def unblock_in_child() -> None:
    """preexec_fn of every process we start. A child inherits the signal mask: one started
    inside signals_blocked would hold SIGTERM/SIGINT/SIGHUP for its whole life. influxd (Go)
    unblocks the ones it handles, but a wrapper script, a stand-in or a hook would never stop
    on SIGTERM. Runs between fork and exec, so it takes no lock and imports nothing."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHIELDED)
