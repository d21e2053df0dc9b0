"""Notifications through apprise (ntfy, Slack, e-mail, Telegram, Matrix, …): the `[notify]`
section names URLs per event, and each message is a short summary of the run and the tail of
its log.

apprise is optional (`pip install 'influx-backupd[notify]'`); the config refuses `[notify]` URLs
without it. A notification runs in a daemon thread that the caller waits for at most `timeout`
seconds; whatever happens is logged (`notify.sent`, `notify.failed`) and never raised: a failed
notification never fails a backup.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from typing import Literal

from influx_backupd.core import log
from influx_backupd.store.record import RunRecord

Event = Literal["start", "success", "failure", "verify_failed"]
EVENTS: tuple[Event, ...] = ("start", "success", "failure", "verify_failed")
TAIL_LINES = 20


def event_for(record: RunRecord) -> Event:
    """A finished run's event: a backup taken but found bad by its check is verify_failed."""
    if record.good:
        return "success"
    return "verify_failed" if record.failed_check else "failure"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def title(event: Event, record: RunRecord) -> str:
    what = {
        "start": "started",
        "success": "ok",
        "failure": record.status if record.status != "running" else "failed",
        "verify_failed": "backup failed verification",
    }[event]
    return f"influx-backupd on {socket.gethostname()}: {record.job} {what}"


def start_message(job: str, mode: str) -> tuple[str, str]:
    """(title, body) of the start event: there is no record yet."""
    return (
        f"influx-backupd on {socket.gethostname()}: {job} started",
        f"job {job}, mode {mode}: a backup run is starting",
    )


def summary(event: Event, record: RunRecord, tail: Sequence[str] = ()) -> str:
    """A few lines a phone can show: what, how it ended, why; then the run's last log lines."""
    lines = [f"run {record.id}, job {record.job}, mode {record.mode}: {record.status}"]
    if event != "start":
        if record.error:
            lines.append(f"error: {record.error}")
        if record.verify_status == "failed":
            lines.append(f"verify failed: {record.verify_detail}")
        if record.archive:
            lines.append(f"archive: {record.archive} ({_size(record.bytes)})")
        if record.downtime_s is not None:
            lines.append(f"downtime: {record.downtime_s:.3f}s")
    if tail:
        lines += ["", f"last {len(tail[-TAIL_LINES:])} log lines:", *tail[-TAIL_LINES:]]
    return "\n".join(lines)


def send(
    urls: Sequence[str],
    subject: str,
    body: str,
    *,
    event: Event,
    timeout: float = 30.0,
    run_id: str | None = None,
) -> bool:
    """Send to every URL; True when all took it. Never raises, waits at most `timeout`."""
    if not urls:
        return True
    logger = log.get(notify=event, run_id=run_id) if run_id else log.get(notify=event)
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            import apprise  # optional: the config refuses [notify] URLs when it is missing

            kind = {
                "start": apprise.NotifyType.INFO,
                "success": apprise.NotifyType.SUCCESS,
                "failure": apprise.NotifyType.FAILURE,
                "verify_failed": apprise.NotifyType.FAILURE,
            }[event]
            sender = apprise.Apprise()
            refused = [u for u in urls if not sender.add(u)]
            if refused:
                outcome["refused"] = len(refused)
            outcome["ok"] = bool(sender.notify(title=subject, body=body, notify_type=kind))
        except Exception as exc:  # reported below, never raised
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=call, name="notify", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok") is True and "refused" not in outcome:
        logger.info("notify.sent", targets=len(urls))
        return True
    error = outcome.get("error") or (
        "not every target took it (the library's warnings say which)"
        if "ok" in outcome
        else f"no answer within {timeout:g}s"
    )
    # URLs carry tokens and passwords: never log them, only how many.
    logger.warning("notify.failed", targets=len(urls), error=str(error))
    return False
