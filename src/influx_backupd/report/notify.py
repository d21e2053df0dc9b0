"""Notifications through apprise (ntfy, Slack, e-mail, Telegram, Matrix, …): the `[notify]`
section names URLs per event, and each message is a short summary of the run and the tail of
its log.

apprise is optional (`pip install 'influx-backupd[notify]'`); the config refuses `[notify]` URLs
without it. A notification is sent by a child process (report/notify_child.py) that the caller
waits for at most `timeout` seconds and then kills: apprise's own threads cannot outlive it.
Whatever happens is logged (`notify.sent`, `notify.failed`) and never raised: a failed
notification never fails a backup.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any, Literal

from influx_backupd.core import log
from influx_backupd.core.cancel import NEVER, CancelToken
from influx_backupd.core.interrupt import child_preexec
from influx_backupd.core.jsontext import loads_json
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
    cancel: CancelToken = NEVER,
) -> bool:
    """Send to every URL; True when all took it. Never raises, waits at most `timeout`, and
    no longer once cancelled (the daemon is stopping)."""
    if not urls:
        return True
    logger = log.get(notify=event, run_id=run_id) if run_id else log.get(notify=event)
    request = {"urls": list(urls), "subject": subject, "body": body, "event": event}
    outcome = _in_child({**request, "timeout": timeout}, timeout, cancel)
    secrets = secret_parts(urls)
    for line in outcome.get("warnings") or []:
        logger.warning("notify.library", detail=scrub(str(line), secrets))
    if outcome.get("ok") is True and "refused" not in outcome:
        logger.info("notify.sent", targets=len(urls))
        return True
    error = outcome.get("error") or (
        "not every target took it (the library's warnings say which)"
        if "ok" in outcome
        else f"no answer within {timeout:g}s"
    )
    # URLs carry tokens and passwords: never log them, only how many.
    logger.warning("notify.failed", targets=len(urls), error=scrub(str(error), secrets))
    return False


_WORD = re.compile(r"[A-Za-z0-9]")


def secret_parts(urls: Sequence[str]) -> list[str]:
    """Every part of the URLs that may be a secret, longest first: user, password, each path
    segment (an ntfy topic, a webhook token), each query value and the fragment; the host too
    unless it looks like one (a dot, a colon, localhost): discord://ID/TOKEN and slack://A/B/C
    put tokens where a host goes. In raw and percent-decoded form."""
    parts: set[str] = set()
    for url in urls:
        rest = url.split("://", 1)[-1]
        netloc, _, tail = rest.partition("/")
        if "?" in netloc or "#" in netloc:  # no path: scheme://host?query
            netloc, tail = re.split(r"(?=[?#])", netloc, maxsplit=1)
        userinfo, at, hostport = netloc.rpartition("@")
        if at:
            parts.update(userinfo.split(":", 1))
        host = re.sub(r":[0-9]*\Z", "", hostport)
        if not ("." in host or ":" in host or host.lower() == "localhost"):
            parts.add(host)
        path, _, query = tail.partition("?")
        query, _, fragment = query.partition("#")
        path, _, frag2 = path.partition("#")
        parts.update(path.split("/"))
        parts.update(p.partition("=")[2] for p in re.split(r"[&;]", query))
        parts.update((fragment, frag2))
    parts |= {urllib.parse.unquote_plus(p) for p in parts}
    parts |= {urllib.parse.quote(p, safe="") for p in parts}
    return sorted((p for p in parts if p), key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """text (a library's warning or error) with every secret part replaced by ***: a short one
    only where it stands as a word of its own, so that "pw" spares "pwd"."""
    for secret in secrets:
        if len(secret) >= 6:
            text = text.replace(secret, "***")
        else:
            edge = "" if _WORD.match(secret[0]) is None else r"(?<![A-Za-z0-9])"
            end = "" if _WORD.match(secret[-1]) is None else r"(?![A-Za-z0-9])"
            text = re.sub(edge + re.escape(secret) + end, "***", text)
    return text


def send_detached(
    urls: Sequence[str], subject: str, body: str, *, event: Event, timeout: float = 30.0
) -> None:
    """send() without waiting for it: for an alarm raised where nothing may wait (influxd
    being started again). Its outcome is logged when it comes."""
    if urls:
        threading.Thread(
            target=send,
            args=(urls, subject, body),
            kwargs={"event": event, "timeout": timeout},
            name="notify-alarm",
            daemon=True,
        ).start()


def left_down_message(job: str | None, error: str) -> tuple[str, str]:
    """(title, body) of the alarm raised at the first failed start after our stop."""
    whose = f"job {job}" if job else "a run"
    return (
        f"influx-backupd on {socket.gethostname()}: influxd did not start again",
        f"{whose} stopped influxd, and starting it again failed: {error}\n"
        "influx-backupd keeps trying (backoff up to 30 s) and says when it is back "
        "(`influx-backupd status`).",
    )


def not_started_message(job: str, error: str) -> tuple[str, str]:
    """(title, body) of the alarm for a scheduled run the daemon could not begin."""
    return (
        f"influx-backupd on {socket.gethostname()}: backup {job} not started",
        f"the scheduled run of job {job} could not begin, and no run record tells of it: "
        f"{error}\nThe daemon tries again at the next scheduled time (`influx-backupd status`).",
    )


def _in_child(
    request: dict[str, Any], timeout: float, cancel: CancelToken = NEVER
) -> dict[str, Any]:
    """notify_child's outcome; {} when it gave none within timeout (it is killed then, or as
    soon as cancel is)."""
    try:
        proc = subprocess.Popen(
            # -P: the caller's working directory is not put on sys.path (a root command run
            # in a dir that holds an influx_backupd/ of someone else's would import theirs)
            [sys.executable, "-P", "-m", "influx_backupd.report.notify_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # killed as a group, whatever it started
            preexec_fn=child_preexec(),
        )
    except OSError as exc:
        return {"error": f"the notifier did not start: {exc.strerror or exc}"}

    def stop() -> None:
        if proc.returncode is None:  # not reaped yet: its pid is still its own
            _kill_group(proc.pid)

    forget = cancel.on_cancel(stop)
    try:
        out, _ = proc.communicate(json.dumps(request).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {}
    except OSError as exc:  # the pipe or the wait itself failed: a notification, not the run
        return {"error": f"talking to the notifier failed: {exc.strerror or exc}"}
    finally:
        forget()
        if proc.poll() is None:
            _kill_group(proc.pid)
            with contextlib.suppress(OSError):
                proc.wait()
    try:
        outcome = loads_json(out)
    except ValueError:
        if cancel.cancelled:
            return {"error": "cut short: the daemon is stopping"}
        return {"error": f"the notifier ended with status {proc.returncode} and no answer"}
    return outcome if isinstance(outcome, dict) else {"error": "the notifier's answer is no object"}


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
