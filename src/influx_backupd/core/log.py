"""structlog set-up: JSON lines when the stream is not a terminal, readable lines when it is."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

from influx_backupd.core.journal import JOURNAL_SOCKET, JournalRenderer

LEVELS = ("debug", "info", "warning", "error")
Logger = structlog.typing.FilteringBoundLogger


JOURNAL_SOCKET_ENV = "INFLUX_BACKUPD_JOURNAL_SOCKET"  # tests point the journal mode elsewhere


def journal_socket() -> str:
    return os.environ.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET


# MESSAGE_IDs (fixed 128-bit ids, as journald's catalog uses) of the events people alert on:
# `journalctl MESSAGE_ID=…` finds them whatever the wording. docs/daemon.md lists them.
MESSAGE_IDS: dict[str, str] = {
    "run_ok": "afb5ed9765974a8b84f700c79e46fd04",  # run.finished, status ok
    # run.finished failed or interrupted; recovery.run_interrupted (a run killed outright)
    "run_failed": "b8f44c973ce5488bba57f203e89db459",
    "verify_failed": "de9334f97d014f968c77351dcc5e0c67",  # verify.finished / verify.scheduled
    # influxd is down because we stopped it: the run's left_down, the alarm at the first failed
    # start, each failed start after our stop, the daemon finding a marker of a dead run
    "influxd_left_down": "79d3fe3858984f03a7c86f4a916d259b",
    # influxd.served_less: after a cold run's restart a database served fewer points than
    # before the stop (the live server lost them; the run's archive holds them)
    "influxd_served_less": "9dedff1fc615431190a7c1a960ee317e",
}
LEFT_DOWN_EVENTS = frozenset(
    {
        "influxd.left_down",
        "influxd.left_down_alarm",
        "influxd.start_failed",  # start_until_up: only ever starts what we stopped
        "daemon.left_down_found",
    }
)


def message_id_for(event_dict: Mapping[str, Any]) -> str | None:
    event = event_dict.get("event")
    if event == "run.finished":
        record = event_dict.get("record")
        status = record.get("status") if isinstance(record, dict) else None
        return MESSAGE_IDS["run_ok" if status == "ok" else "run_failed"]
    if event == "recovery.run_interrupted":  # a run killed outright, recorded by the next command
        return MESSAGE_IDS["run_failed"]
    if event in ("verify.finished", "verify.scheduled"):
        failed = event_dict.get("status") == "failed" or bool(event_dict.get("failed"))
        return MESSAGE_IDS["verify_failed"] if failed else None
    if event in LEFT_DOWN_EVENTS:
        return MESSAGE_IDS["influxd_left_down"]
    if event == "influxd.served_less":
        return MESSAGE_IDS["influxd_served_less"]
    return None


def add_message_id(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    message_id = message_id_for(event_dict)
    if message_id is not None:
        event_dict["message_id"] = message_id
    return event_dict


class RunTails:
    """The last lines each recent run logged (events bound to a run_id), for notifications:
    a failure notice carries the tail of its run's log."""

    def __init__(self, lines: int = 40, runs: int = 8) -> None:
        self.lines = lines
        self.runs = runs
        self._tails: dict[str, deque[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, _logger: object, method: str, event_dict: EventDict) -> EventDict:
        run_id = event_dict.get("run_id")
        if isinstance(run_id, str):
            line = _plain_line(method, event_dict)
            with self._lock:
                tail = self._tails.pop(run_id, None) or deque(maxlen=self.lines)
                tail.append(line)
                self._tails[run_id] = tail  # newest last: the oldest run is dropped first
                while len(self._tails) > self.runs:
                    del self._tails[next(iter(self._tails))]
        return event_dict

    def tail(self, run_id: str) -> list[str]:
        with self._lock:
            return list(self._tails.get(run_id, ()))


def _plain_line(method: str, event_dict: Mapping[str, Any]) -> str:
    skip = {"event", "level", "timestamp", "run_id", "record", "exception", "message_id"}
    pairs = " ".join(
        f"{k}={json.dumps(v, default=str) if not isinstance(v, str) else v}"
        for k, v in event_dict.items()
        if k not in skip
    )
    stamp = str(event_dict.get("timestamp", ""))[11:19]
    level = str(event_dict.get("level", method))
    return f"{stamp} {level:<7} {event_dict.get('event', '')} {pairs}".rstrip()


RUN_TAILS = RunTails()


class _Console:
    """Where log lines go (by default whatever sys.stderr is at write time: test runners replace
    it). On a terminal a status line (the progress bar) may own the last line: a log line then
    clears it, prints above it, and draws it again, so the two never share a line. A log line
    that cannot be written (a closed pipe) is dropped: logging never fails a backup."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.RLock()
        self._status: str | None = None

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def line(self, text: str) -> None:
        with self._lock:
            out = self.stream
            try:
                if self._status is not None:
                    out.write(f"{CLEAR_LINE}{text}\n{fit(self._status, self.columns())}")
                else:
                    out.write(text + "\n")
                out.flush()
            except (OSError, ValueError):
                pass  # EPIPE, or a stream already closed

    def status(self, text: str | None) -> None:
        """Show `text` as the status line (None: remove it, leaving the line empty)."""
        with self._lock:
            out = self.stream
            try:
                out.write(CLEAR_LINE + fit(text or "", self.columns()))
                out.flush()
            except (OSError, ValueError):
                pass
            self._status = text

    def columns(self) -> int:
        """The terminal's width now (read at each draw: a resized window is followed)."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):  # not a terminal (tests, pipes)
            return shutil.get_terminal_size((80, 24)).columns

    # structlog calls the method named after the level with the rendered line
    def msg(self, message: str) -> None:
        self.line(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


CLEAR_LINE = "\r\x1b[K"  # to the line's start, erase it
CONSOLE = _Console()


def fit(text: str, columns: int) -> str:
    """text cut to fit one row of a terminal `columns` wide, leaving the last column free: a
    status line that wrapped would leave a row behind at each \\r redraw."""
    room = max(columns - 1, 1)
    return text if len(text) <= room else text[: room - 1] + "…"


def status_columns() -> int:
    """How wide the status line may be drawn, now."""
    return CONSOLE.columns()


def status_line(text: str | None) -> None:
    """The progress bar's line on the console (None: gone)."""
    CONSOLE.status(text)


def colours_wanted(stream: TextIO) -> bool:
    """Colours only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


class _ToStructlog(logging.Handler):
    """Libraries' stdlib logging (apprise, urllib3 …) into our events, so nothing is printed
    unformatted and everything reaches the journal as fields."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a log line never fails anything
            get(logger=record.name).log(record.levelno, "library.log", message=record.getMessage())


class _AtLeast:
    """Drops what is below the level shown (after the run tails have seen it)."""

    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(self, _logger: object, method: str, event_dict: EventDict) -> EventDict:
        name = str(event_dict.get("level", method)).upper()
        if logging.getLevelNamesMapping().get(name, logging.INFO) < self.level:
            raise structlog.DropEvent
        return event_dict


def _route_stdlib(level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    # Libraries are chatty at info: their warnings and errors are what we want to see.
    root.setLevel(max(level, logging.WARNING))


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
    global CONSOLE
    CONSOLE = _Console(stream)
    out = CONSOLE.stream
    as_json = (not out.isatty()) if json is None else json
    renderer: Any
    if journal is not None:
        renderer = JournalRenderer(socket_path=journal, drop=True)
    elif as_json:
        renderer = structlog.processors.JSONRenderer(sort_keys=False, default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=colours_wanted(out))
        processors = (*processors, _for_a_person)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            add_message_id,
            RUN_TAILS,
            _AtLeast(numeric),
            *processors,
            renderer,
        ],
        # info reaches the run tails even when less is shown (a terminal shows warnings only)
        wrapper_class=structlog.make_filtering_bound_logger(min(numeric, logging.INFO)),
        logger_factory=lambda *_args: CONSOLE,
        cache_logger_on_first_use=False,
    )
    _route_stdlib(numeric)


def _for_a_person(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """On a terminal: a run's record (run.finished) as its id, status and error, not a page of
    Python repr (the command prints the short record below it; -v the whole one); any other
    nested value as compact JSON, as jq and the journal show it."""
    for key, value in event_dict.items():
        if key == "record" and isinstance(value, dict):
            shown = f"{value.get('id')} {value.get('status')}"
            event_dict[key] = shown + (f": {value['error']}" if value.get("error") else "")
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = json.dumps(value, default=str, separators=(",", ":"))
    return event_dict


@contextlib.contextmanager
def run_context(**context: Any) -> Iterator[None]:
    """Every event logged in this thread while a run is under way carries its run_id, job and
    mode, whichever module logs it (a server's start retries too): journalctl RUN_ID=… and the
    run's log tail, keyed by run_id, find them all."""
    with structlog.contextvars.bound_contextvars(**context):
        yield


def get(**bound: Any) -> Logger:
    logger: Logger = structlog.get_logger("influx_backupd")
    return logger.bind(**bound) if bound else logger
