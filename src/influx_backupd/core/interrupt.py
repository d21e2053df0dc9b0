"""A signal turned into an exception, and a window in which signals wait.

Its own small module so that every command can catch Interrupted without importing the cold
job (and, through it, psutil, tarfile and the format readers) just for a class name.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
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
    """Runs in a child between fork and exec: lets SIGTERM/SIGINT/SIGHUP through again."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHIELDED)


def child_preexec() -> Callable[[], None] | None:
    """preexec_fn for every process we start. A child inherits the signal mask: one started
    inside signals_blocked would hold SIGTERM/SIGINT/SIGHUP for life (influxd, Go, unblocks
    those it handles; a wrapper script, a stand-in or a hook never stops on SIGTERM). Given
    only then: a preexec_fn makes Popen run Python's at-fork hooks, and a signal handled
    inside one raises an exception Python prints and drops (seen: an Interrupted lost, the
    command went on). With the signals held, no handler can run there."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return unblock_in_child if held & _SHIELDED else None
