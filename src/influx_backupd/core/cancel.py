"""A cancel token: whoever wants a run stopped (the daemon, on SIGTERM) cancels it; the run and
the tools it started act on it themselves. Passed down, never a module global."""

from __future__ import annotations

import threading
from collections.abc import Callable


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call callback when cancelled (at once if already); returns the way to unregister."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


# What cancels a run's follow-up and the hook it waits for, as their lines say it
DAEMON_SHUTDOWN = "the daemon's shutdown"

NEVER = CancelToken()  # for callers that never cancel (a foreground command: Ctrl-C interrupts)
