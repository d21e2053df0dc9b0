"""Heartbeat pings in the healthchecks.io style: GET url/start, url on success, url/fail on failure.

Each ping runs in a daemon thread that the caller waits for at most `timeout` seconds, so a slow
DNS lookup or a black-holed address never holds up a run for longer; failures are only logged.
"""

from __future__ import annotations

import threading
import urllib.parse
import urllib.request
from typing import Literal

from influx_backupd.core import log

TIMEOUT_S = 5.0
Signal = Literal["start", "success", "fail"]


def url_for(base: str, signal: Signal) -> str:
    """/start and /fail go on the path, before any query (healthchecks' `?create=1`, a push
    URL's `?status=up`): appended to the text, they landed in the query and every ping of a
    failed run reached the success endpoint. A fragment is never sent: dropped."""
    parts = urllib.parse.urlsplit(base)
    path = parts.path.rstrip("/")
    if signal != "success":
        path = f"{path}/{signal}"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


BODY_LIMIT = 100_000  # bytes healthchecks.io keeps of a ping's body


def ping(base: str, signal: Signal, *, timeout: float = TIMEOUT_S, body: str | None = None) -> bool:
    """True when the endpoint answered 2xx within timeout. `body` (the run's summary and log
    tail) is POSTed, as healthchecks.io shows it with the ping; without it, a GET."""
    # No ?rid=: healthchecks.io wants a UUID there and answers 400 to anything else.
    url = url_for(base, signal)
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            data = body.encode("utf-8", "replace")[-BODY_LIMIT:] if body is not None else None
            req = urllib.request.Request(
                url,
                data=data,
                headers={
                    "User-Agent": "influx-backupd",
                    "Content-Type": "text/plain; charset=utf-8",
                },
                method="POST" if data is not None else "GET",
            )
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                outcome["status"] = int(resp.status)
        except Exception as exc:  # reported below, never raised
            outcome["error"] = str(exc)

    thread = threading.Thread(target=call, name="heartbeat", daemon=True)
    thread.start()
    thread.join(timeout)
    logger = log.get(heartbeat=signal)
    status = outcome.get("status")
    if isinstance(status, int) and 200 <= status < 300:
        logger.debug("heartbeat.sent", url=_shown(url), status=status)
        return True
    error = outcome.get("error") or (
        f"HTTP {status}" if status is not None else f"no answer within {timeout:g}s"
    )
    logger.warning("heartbeat.failed", url=_shown(url), error=_scrubbed(str(error), url))
    return False


def _scrubbed(error: str, url: str) -> str:
    """An error without the URL's path or query, whole or as urllib quotes them (http.client
    quotes the path alone, "URL can't contain control characters. '/ping/UUID/start'")."""
    parts = urllib.parse.urlsplit(url)
    secret = parts.path + (f"?{parts.query}" if parts.query else "")
    for text in (url, secret, parts.path, parts.query):
        if len(text) > 1:  # "/" alone hides nothing and would spoil the message
            error = error.replace(text, _shown(url) if text == url else "…")
    return error


def _shown(url: str) -> str:
    """The endpoint without its path and credentials: a check's UUID or token is its secret."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # checked by the config; never a reason to fail a ping's log line
        port = ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}/…"
