"""on_success / on_failure hooks: an argv run without a shell, the run's record in its environment.

A hook runs in its own process group with a timeout; on timeout the whole group is killed, so a
hook that forks (a shell script's children) cannot keep us waiting. Its output goes to a temp
file, not a pipe: a grandchild that escaped the group and holds the pipe cannot block us either.
A hook never raises: what it did is returned and logged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from influx_backupd.core import log
from influx_backupd.core.cancel import DAEMON_SHUTDOWN, NEVER, CancelToken
from influx_backupd.core.interrupt import child_preexec
from influx_backupd.core.redact import shown_url
from influx_backupd.store.record import RunRecord

PREFIX = "INFLUX_BACKUPD_"
# The umask of whoever ran influx-backupd (the CLI keeps its own private): hooks are the
# operator's programs and create their files as the operator would. -1: leave it as it is.
CALLER_UMASK = -1
OUTPUT_TAIL = 2000  # characters of the hook's output kept in the log


@dataclass
class HookResult:
    argv: list[str]
    returncode: int | None  # None: did not start or was killed on timeout
    timed_out: bool
    seconds: float
    output: str
    error: str | None = None
    cancelled: bool = False  # stopped by its caller's cancel (the daemon stops)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def environment(record: RunRecord, status: str | None = None) -> dict[str, str]:
    """The record as INFLUX_BACKUPD_* variables; empty strings for what the run did not have."""

    def text(value: object) -> str:
        return "" if value is None else str(value)

    return {
        PREFIX + "JOB": record.job,
        PREFIX + "STATUS": status or record.status,
        PREFIX + "RUN_ID": record.id,
        PREFIX + "MODE": record.mode,
        PREFIX + "ARCHIVE": text(record.archive),
        PREFIX + "BYTES": str(record.bytes),
        PREFIX + "DOWNTIME_S": "" if record.downtime_s is None else f"{record.downtime_s:.3f}",
        PREFIX + "ERROR": text(record.error),
        PREFIX + "VERIFY": text(record.verify_status),
        PREFIX + "VERIFY_DETAIL": text(record.verify_detail),
    }


def not_started_environment(job: str, mode: str, error: str) -> dict[str, str]:
    """The variables of a scheduled run that could not begin: STATUS not_started, no run id
    (no record tells of it), the error; the rest empty."""
    empty = dict.fromkeys(("RUN_ID", "ARCHIVE", "DOWNTIME_S", "VERIFY", "VERIFY_DETAIL"), "")
    return {
        **{PREFIX + name: value for name, value in empty.items()},
        PREFIX + "JOB": job,
        PREFIX + "STATUS": "not_started",
        PREFIX + "MODE": mode,
        PREFIX + "BYTES": "0",
        PREFIX + "ERROR": error,
    }


def run_hook(
    argv: Sequence[str],
    env: dict[str, str],
    timeout: float,
    *,
    name: str = "hook",
    cancel: CancelToken = NEVER,
) -> HookResult:
    """argv, waited for up to timeout, then its process group killed. cancel: its process group
    is sent SIGTERM at once (SIGKILL STOP_GRACE later): a daemon stopping does not wait out a
    hook that may take hook_timeout (up to weeks)."""
    logger = log.get(hook=name)
    started = time.monotonic()
    result = HookResult(list(argv), None, False, 0.0, "")
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,  # its own process group, killed as one on timeout
                close_fds=True,
                umask=CALLER_UMASK,
                preexec_fn=child_preexec(),
            )
        except OSError as exc:
            result.error = f"cannot start {argv[0]}: {exc.strerror or exc}"
        else:
            forget = cancel.on_cancel(lambda: _stop_group(proc))
            try:
                result.returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                result.timed_out = True
                result.error = f"timed out after {timeout:g}s; its process group was killed"
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            finally:
                forget()
            # Children a hook left running on purpose (exit 0, `cmd &`) are not ours to kill:
            # they do not hold us up, as their output goes to a file, not a pipe we read.
            if result.returncode not in (0, None):
                result.error = f"exited with status {result.returncode}"
            if cancel.cancelled and result.returncode is not None and result.returncode < 0:
                result.cancelled = True
                result.error = f"stopped by {DAEMON_SHUTDOWN} (its process group was signalled)"
        # the tail only: a hook that printed 400 MB is not read into memory whole
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - 4 * OUTPUT_TAIL))
        result.output = out.read().decode(errors="replace")[-OUTPUT_TAIL:]
    result.seconds = round(time.monotonic() - started, 3)
    event = logger.info if result.ok else logger.warning
    event(
        "hook.finished",
        argv=[shown_url(arg) for arg in result.argv],
        returncode=result.returncode,
        timed_out=result.timed_out,
        seconds=result.seconds,
        error=result.error,
        output=result.output,
    )
    return result


STOP_GRACE = 5.0  # seconds a cancelled hook's group has between SIGTERM and SIGKILL


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """A cancelled hook: SIGTERM to its process group, SIGKILL if it outlives STOP_GRACE (from
    a thread: the canceller does not wait)."""

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    threading.Thread(target=stop, name="hook-stop", daemon=True).start()
