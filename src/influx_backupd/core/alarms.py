"""Who is told at once when influxd does not start again after we stopped it.

A start that fails is retried until it succeeds (a foreground command does not return with
influxd down), and the run's own failure notice comes only after that: hours later, if ever.
The crash marker (store/state.py) sees the first failed start of every stop window, whichever
command or daemon retries it; the run layer, which knows what telling means (the failure
notifications, the heartbeat's /fail, the metrics' left_down), registers it here while it
holds the backup lock. Raising the alarm never waits and never raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Handler = Callable[[str | None, str], None]  # (the stopped run's job, if known; the error)
_handlers: list[Handler] = []


@contextmanager
def left_down_handler(handler: Handler) -> Iterator[None]:
    _handlers.append(handler)
    try:
        yield
    finally:
        _handlers.remove(handler)


def left_down(job: str | None, error: str) -> None:
    for handler in list(_handlers):
        try:
            handler(job, error)
        except Exception:  # an alarm that fails must not stop the retries
            continue
