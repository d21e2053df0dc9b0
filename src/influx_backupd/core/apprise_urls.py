"""Which [notify] URLs apprise can use, asked of apprise in a child process.

apprise with its plugins loaded is some 24 MiB that a process keeps once it has used it. The
daemon loads its config at start and at every reload, and sends its notifications from a child
(report/notify_child.py); so the config's check asks a child too, one for all of a config's
URLs. The answer is a yes or no per URL: nothing the child says can carry a URL's secret.

Run as `python -P -m influx_backupd.core.apprise_urls`: reads a JSON list of URLs on stdin,
writes {"usable": [bool, ...]} or {"error": "..."} on stdout.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Sequence

from influx_backupd.core.interrupt import child_preexec

# Well under the unit's WatchdogSec=60: a reload is checked in the daemon's main loop.
TIMEOUT = 30.0


class Unchecked(Exception):
    """The child gave no answer: the one line says why (never a URL)."""


def installed() -> bool:
    """apprise can be imported here (found, not imported)."""
    return importlib.util.find_spec("apprise") is not None


def usable(urls: Sequence[str], timeout: float = TIMEOUT) -> list[bool]:
    """For each URL, whether apprise takes it (Apprise().add), asked of one child process."""
    if not urls:
        return []
    try:
        done = subprocess.run(
            # -P: the caller's working directory is not put on sys.path (as notify.py)
            [sys.executable, "-P", "-m", "influx_backupd.core.apprise_urls"],
            input=json.dumps(list(urls)).encode(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            preexec_fn=child_preexec(),
        )
    except subprocess.TimeoutExpired:
        raise Unchecked(f"apprise did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise Unchecked(f"the check did not start: {exc.strerror or exc}") from None
    from influx_backupd.core.jsontext import loads_json  # not in the child: it pulls in structlog

    try:
        answer = loads_json(done.stdout)
    except ValueError:
        raise Unchecked(f"the check ended with status {done.returncode} and no answer") from None
    found = answer.get("usable") if isinstance(answer, dict) else None
    if isinstance(found, list) and len(found) == len(urls):
        return [item is True for item in found]
    error = answer.get("error") if isinstance(answer, dict) else None
    raise Unchecked(
        f"apprise failed: {str(error)[:200]}" if error else "the check's answer is no list"
    )


def main() -> int:
    urls = json.load(sys.stdin)
    # apprise logs why it refuses (with the URL): the parent's message is the one line
    logging.getLogger("apprise").disabled = True
    answer: dict[str, object]
    try:
        import apprise
    except Exception as exc:  # a broken install: said by the parent in one line
        answer = {"error": f"importing it: {type(exc).__name__}: {exc}"}
    else:
        try:
            answer = {"usable": [bool(apprise.Apprise().add(str(u))) for u in urls]}
        except Exception as exc:  # its message may quote the URL: the kind only
            answer = {"error": type(exc).__name__}
    json.dump(answer, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
