"""URLs as an error or a log may show them: scheme and host, never user:password, path or
query (a healthchecks UUID, a token). Light on purpose: the hooks' logging imports it, and
`--help` must not load pydantic."""

from __future__ import annotations

import re
import urllib.parse

_URL_IN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]*")


def shown_url(text: str) -> str:
    """A hook's argument as a log may show it: each URL in it as scheme and host only (a
    healthchecks UUID, a token or user:password rides in the rest); the other text as it is."""

    def one(match: re.Match[str]) -> str:
        try:
            return shown_parts(urllib.parse.urlsplit(match.group(0))).strip("'")
        except ValueError:
            return "(a URL, not shown)"

    return _URL_IN.sub(one, text)


def shown_parts(parts: urllib.parse.SplitResult) -> str:
    """A URL as an error may show it: scheme and host; the rest, if any, as …"""
    if not parts.scheme or "@" in parts.netloc:
        return "(the value, not shown)"
    rest = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return repr(f"{parts.scheme}://{parts.hostname or ''}{rest}")
