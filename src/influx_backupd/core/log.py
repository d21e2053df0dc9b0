"""structlog set-up: JSON lines when the stream is not a terminal, readable lines when it is."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import structlog

from influx_backupd.core.systemd import JOURNAL_SOCKET, JournalRenderer

LEVELS = ("debug", "info", "warning", "error")
Logger = structlog.typing.FilteringBoundLogger


JOURNAL_SOCKET_ENV = "INFLUX_BACKUPD_JOURNAL_SOCKET"  # tests point the journal mode elsewhere


def journal_socket() -> str:
    return os.environ.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time (it is replaced by test runners, and a
    logger bound to an old, closed stream would fail on its next event)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(
    stream: TextIO | None = None,
    level: str = "info",
    *,
    json: bool | None = None,
    journal: str | None = None,
    processors: Sequence[Any] = (),
) -> None:
    """`journal`: a journald socket path; events go there as fields (RUN_ID, JOB, PHASE …) and
    `stream` only gets the lines the journal did not take. `processors` run before rendering."""
    out = stream if stream is not None else sys.stderr
    target: Any = stream if stream is not None else _CurrentStderr()
    as_json = (not out.isatty()) if json is None else json
    renderer: Any
    if journal is not None:
        renderer = JournalRenderer(socket_path=journal, drop=True)
    elif as_json:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *processors,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(target),
        cache_logger_on_first_use=False,
    )


def get(**bound: Any) -> Logger:
    logger: Logger = structlog.get_logger("influx_backupd")
    return logger.bind(**bound) if bound else logger
