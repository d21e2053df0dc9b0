"""InfluxQL over HTTP: one statement to a running influxd, with [influxd] username/password.

InfluxDB 1.x accepts HTTP Basic auth on /query. The live server may have `[http] auth-enabled`;
the throwaway servers of restore tests write their own influxdb.conf without it, so they are
queried with credentials=None.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from typing import Any

from influx_backupd.core.config import Credentials
from influx_backupd.core.errors import BackupdError
from influx_backupd.core.jsontext import loads_json

# What a query meets while a shard that `influxd restore -portable` just uploaded is being
# opened (disabled) or swapped under it (its engine closed): both pass within moments.
SHARD_OPENING = ("shard is disabled", "engine is closed")


class QueryError(BackupdError):
    """A statement failed: unreachable server, HTTP error, or InfluxQL error."""

    code = "influxql"


class AuthError(QueryError):
    """influxd answered 401/403: no credentials, wrong ones, or a user lacking privileges."""


def ident(name: str) -> str:
    """A quoted InfluxQL identifier (database, retention policy, measurement, user)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _server_error(exc: urllib.error.HTTPError) -> str:
    try:
        return str(loads_json(exc.read()).get("error") or exc.reason)
    except (OSError, ValueError, AttributeError):
        return str(exc.reason)


def _refused(status: int, detail: str, credentials: Credentials | None) -> AuthError:
    if credentials is None:
        what = "influxd requires authentication: set [influxd] username and password_file"
    else:
        what = f"influxd refused the credentials of [influxd] username = {credentials.username!r}"
    return AuthError(f"{what} (HTTP {status}: {detail})")


def query(
    url: str,
    q: str,
    db: str | None = None,
    *,
    credentials: Credentials | None = None,
    timeout: float = 30.0,
    post: bool = False,
    epoch: str | None = None,
    shard_wait: float = 0.0,
) -> list[dict[str, Any]]:
    """The first result's series of one statement. post: for statements that change something.

    shard_wait: how long to retry while the server answers that a shard is still being opened
    (SHARD_OPENING: one `influxd restore -portable` just uploaded). Raises QueryError / AuthError.
    """
    params = {"q": q}
    if db is not None:
        params["db"] = db
    if epoch is not None:
        params["epoch"] = epoch
    encoded = urllib.parse.urlencode(params)
    deadline = time.monotonic() + shard_wait
    pause = 0.02
    while True:
        if post:
            req = urllib.request.Request(url + "/query", data=encoded.encode(), method="POST")
        else:
            req = urllib.request.Request(url + "/query?" + encoded)
        if credentials is not None:
            req.add_header("Authorization", credentials.header())
        try:
            with urllib.request.urlopen(req, timeout=max(timeout, 0.1)) as resp:
                answer: dict[str, Any] = loads_json(resp.read())
        except urllib.error.HTTPError as exc:
            detail = _server_error(exc)
            if exc.code in (401, 403):
                raise _refused(exc.code, detail, credentials) from None
            raise QueryError(f"{q!r}: HTTP {exc.code}: {detail}") from None
        except (OSError, ValueError) as exc:
            raise QueryError(f"{q!r}: {exc}") from None
        results: list[dict[str, Any]] = answer.get("results") or [{}]
        error = results[0].get("error")
        if error is None:
            series: list[dict[str, Any]] = results[0].get("series") or []
            return series
        opening = any(text in str(error) for text in SHARD_OPENING)
        if not opening or time.monotonic() >= deadline:
            raise QueryError(f"{q!r}: {error}")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def ping_headers(
    url: str, timeout: float, credentials: Credentials | None = None
) -> tuple[Message, float] | None:
    """The headers of the server's /ping (version, Date) and our time when they came; None when
    it does not answer.

    /ping needs no credentials on 1.x up to 1.7. 1.8's `ping-auth-enabled` answers 401 (403)
    without (good) ones: that is still an answer, so a server started by a cold run is not
    taken for one that never came up. Its credentials are sent when configured."""
    request = urllib.request.Request(url + "/ping")
    if credentials is not None:
        request.add_header("Authorization", credentials.header())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.headers, time.time()  # case-insensitive, readable after close
    except urllib.error.HTTPError as exc:
        return (exc.headers, time.time()) if exc.code in (401, 403) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def values(series: list[dict[str, Any]]) -> list[list[Any]]:
    """Every row of every series."""
    return [row for s in series for row in s.get("values") or []]


def not_admin(url: str, credentials: Credentials | None, timeout: float = 10.0) -> str | None:
    """Why our user may not administer the server (SHOW USERS refused), or None if it may.
    QueryError when the server does not answer."""
    try:
        query(url, "SHOW USERS", None, credentials=credentials, timeout=timeout)
    except AuthError as exc:
        return str(exc)
    return None
