"""How an error line shows what a user typed: readable whatever the bytes, and short.

A non-UTF-8 argument arrives with lone surrogates (`\udcff`): shown as the bytes it was
(`\xff`). Control characters (a newline, ESC) are escaped, so the error stays one line and
cannot drive the terminal. A long argument is cut: a 10 KB --job is not echoed whole.
"""

from __future__ import annotations

import re
import sys

LIMIT = 100  # characters of a user's argument an error line quotes
NET_LIMIT = 500  # any unbroken run in an error line (a net for places that quote whole)


def readable(text: str) -> str:
    try:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no byte gives (not from argv): its code
        shown = text.encode("utf-8", "backslashreplace").decode()
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)


def quoted(text: str, limit: int = LIMIT) -> str:
    """text as an error line quotes it: readable, and at most `limit` characters of it with
    how long it was."""
    shown = readable(text)
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}… ({len(text)} characters)"


_LONG_RUN = re.compile(rf"\S{{{NET_LIMIT + 1},}}")


def capped(line: str) -> str:
    """A whole error line, readable (a newline or ESC in a path from --config or the config
    file escaped: one line, nothing that drives the terminal) with each unbroken run of over
    NET_LIMIT characters cut (no path is that long in practice; a pasted blob is)."""
    return _LONG_RUN.sub(lambda m: quoted(m.group(), NET_LIMIT), readable(line))


def say(text: str) -> None:
    """One line of ours on stderr, as every error and warning of the CLI is: capped."""
    print(f"influx-backupd: {capped(text)}", file=sys.stderr)
