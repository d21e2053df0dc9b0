"""One notification sent through apprise, in a process of its own (report/notify.py starts it).

apprise hands each send to a thread pool of its own, which Python joins when it exits: a receiver
that answers a byte at a time held a finished backup's process, or a stopping daemon, open for
minutes whatever our timeout said. In a child, the parent's timeout ends it: the parent kills
it, and it also ends itself by alarm should the parent be gone.

Reads {"urls", "subject", "body", "event", "timeout"} as JSON on stdin; writes {"ok",
"refused", "error", "warnings"} as JSON on stdout.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
from typing import Any


class _Kept(logging.Handler):
    """apprise's own warnings (which target refused, and why), for the parent to log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 10:
            self.lines.append(record.getMessage()[:300])


def send(request: dict[str, Any]) -> dict[str, Any]:
    outcome: dict[str, Any] = {}
    kept = _Kept()
    logging.getLogger("apprise").addHandler(kept)
    logging.getLogger("apprise").propagate = False
    try:
        import apprise  # optional: the config refuses [notify] URLs when it is missing

        kind = {
            "start": apprise.NotifyType.INFO,
            "success": apprise.NotifyType.SUCCESS,
            "failure": apprise.NotifyType.FAILURE,
            "verify_failed": apprise.NotifyType.FAILURE,
        }[str(request["event"])]
        sender = apprise.Apprise()
        refused = [u for u in request["urls"] if not sender.add(str(u))]
        if refused:
            outcome["refused"] = len(refused)
        outcome["ok"] = bool(
            sender.notify(
                title=str(request["subject"]), body=str(request["body"]), notify_type=kind
            )
        )
    except Exception as exc:  # reported by the parent, never raised
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    outcome["warnings"] = kept.lines
    return outcome


def main() -> int:
    request = json.load(sys.stdin)
    # the parent kills this at its timeout; should the parent be gone, this ends itself
    signal.alarm(max(1, math.ceil(float(request.get("timeout", 30))) + 5))
    json.dump(send(request), sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
