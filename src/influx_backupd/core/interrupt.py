"""A signal turned into an exception, and a window in which signals wait.

Its own small module so that every command can catch Interrupted without importing the cold
job (and, through it, psutil, tarfile and the format readers) just for a class name.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

# Every other signal whose default action ends the process (`kill -USR1`, `kill -QUIT`,
# `kill -34`): left at its default, one that came inside the stop window would end us with
# influxd down. Taken as SIGTERM is, everywhere. Not the fault signals (SEGV, BUS, ABRT, …):
# faulthandler and the kernel own those.
OTHER_ENDING: tuple[int, ...] = (
    *(
        getattr(signal, name)
        for name in (
            "SIGQUIT",
            "SIGUSR1",
            "SIGUSR2",
            "SIGALRM",
            "SIGVTALRM",
            "SIGPROF",
            "SIGIO",
            "SIGPWR",
            "SIGSTKFLT",
            "SIGXCPU",
            "SIGXFSZ",
        )
        if hasattr(signal, name)
    ),
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)
ENDING: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *OTHER_ENDING)
_SHIELDED = set(ENDING)


class Interrupted(BaseException):
    """A signal asked us to stop; raised in the main thread so `finally` restarts influxd."""


def signal_name(signum: int) -> str:
    """SIGTERM, SIGRTMIN+3: as `kill -l` says it."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


def raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal_name(signum))


def interrupt_on_signals() -> None:
    """SIGTERM, SIGINT, SIGHUP and every other signal that would end us (ENDING) raise
    Interrupted in the main thread: each command's `finally` undoes what it began (influxd
    started again), and it ends with "interrupted by SIG…", exit 1."""
    for sig in ENDING:
        signal.signal(sig, raise_interrupted)
    gate_job_control()


def done_with_signals() -> None:
    """The command's work is done and said, and the process is about to exit: a signal from
    here on changes nothing, so it is ignored. Else one in the last milliseconds (the
    interpreter's end, after Python resets our handlers) ended the process by that signal: a
    finished restore looked killed, and a service run by systemd failed. SIGQUIT keeps its
    default: the way to end a process whose exit hangs (a thread that does not end)."""
    for sig in ENDING:
        if sig != signal.SIGQUIT:
            signal.signal(sig, signal.SIG_IGN)


# While signals are held: the handlers set before (the main thread's only), and the signals
# that came meanwhile, delivered when the hold ends.
_held_handlers: dict[int, Any] = {}
_deferred: list[int] = []


def _defer(signum: int, _frame: FrameType | None) -> None:
    _deferred.append(signum)


def _hold_handlers() -> bool:
    """Swap the Python handlers of SIGTERM/SIGINT/SIGHUP for _defer (main thread, not held
    yet); True if this call did. A blocked mask alone does not hold a signal: it is the calling
    thread's, and the kernel gives a signal to any thread not blocking it (a progress thread, a
    forwarder's); Python then runs the handler in the main thread at its next bytecode, inside
    the window, even inside an at-fork hook of Popen, where the Interrupted it raises is printed
    and dropped (seen: a SIGTERM lost while a throwaway influxd started, the command went on)."""
    if _held_handlers or threading.current_thread() is not threading.main_thread():
        return False
    for sig in _SHIELDED:
        handler = signal.getsignal(sig)
        if callable(handler):
            _held_handlers[sig] = signal.signal(sig, _defer)
    return bool(_held_handlers)


def _release_handlers() -> None:
    """The handlers as before _hold_handlers (not yet: what came meanwhile, see _deliver)."""
    for sig, handler in _held_handlers.items():
        signal.signal(sig, handler)
    _held_handlers.clear()


def _deliver() -> None:
    """Each signal that came while held, to its own handler, now: Interrupted raised here."""
    while _deferred:
        signum = _deferred.pop(0)
        handler = signal.getsignal(signum)
        if callable(handler) and handler is not _defer:
            handler(signum, None)


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGINT/SIGHUP while influxd is being started; they are delivered afterwards."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SHIELDED)
    held = _hold_handlers()
    try:
        yield
    finally:
        if held:
            _release_handlers()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if held:
            _deliver()


@contextmanager
def signals_allowed() -> Iterator[None]:
    """Inside signals_blocked: let SIGTERM/SIGINT/SIGHUP through for a while (a wait between
    start attempts, when nothing is half-done)."""
    old = signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHIELDED)
    held = list(_held_handlers)
    _release_handlers()
    try:
        _deliver()
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for sig in held:
            _held_handlers[sig] = signal.signal(sig, _defer)


# Job control: Ctrl-Z (SIGTSTP, or `kill -TSTP`), and a background job touching its terminal
# (SIGTTIN; SIGTTOU under `stty tostop`). Obeyed inside the stop window, they would freeze us
# with influxd down until someone types `fg`. Windows may open in any thread (the daemon's
# runs are in its worker); the handler runs in the main thread, between bytecodes, so a plain
# counter read there needs no lock (one taken in a handler could be the main thread's own).
_SUSPEND_NOTE = (
    b"influx-backupd: SIGTSTP: influxd is stopped for this run; this process stops once it "
    b"runs again\n"
)
_windows_open = 0
_suspend_asked = False


def gate_job_control() -> None:
    """SIGTSTP obeyed at once outside a stop window, once the window ends inside one
    (suspend_deferred); SIGTTIN and SIGTTOU ignored (a read of the terminal fails with EIO, a
    write is written). Main thread, with the other handlers."""
    signal.signal(signal.SIGTSTP, _on_suspend)
    signal.signal(signal.SIGTTIN, signal.SIG_IGN)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)


def gate_job_control_where_unset() -> None:
    """gate_job_control for a command that set no handlers of its own (list, prune, recover:
    recovery after a killed run may start influxd in any of them). Main thread only; a
    SIGTSTP already caught or ignored is left as it is."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTSTP) == signal.SIG_DFL
    ):
        gate_job_control()


def _on_suspend(_signum: int, _frame: FrameType | None) -> None:
    global _suspend_asked
    if _windows_open:
        if not _suspend_asked:
            with suppress(OSError):  # a plain write: no lock of ours may be taken here
                os.write(2, _SUSPEND_NOTE)
        _suspend_asked = True
        return
    signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    try:
        os.kill(os.getpid(), signal.SIGTSTP)  # stopped here, until SIGCONT (`fg`)
    finally:
        signal.signal(signal.SIGTSTP, _on_suspend)


@contextmanager
def suspend_deferred() -> Iterator[None]:
    """While influxd is down because of us (any thread): a SIGTSTP waits until the body ends,
    then stops this process as it asked (gate_job_control; without it, the default applies)."""
    global _windows_open, _suspend_asked
    _windows_open += 1  # under the GIL: the handler only reads it
    try:
        yield
    finally:
        _windows_open -= 1
        if not _windows_open and _suspend_asked:
            _suspend_asked = False
            os.kill(os.getpid(), signal.SIGTSTP)  # to _on_suspend, in the main thread


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
