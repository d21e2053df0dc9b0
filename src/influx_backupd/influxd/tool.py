"""The influxd binary as a tool: its version and flavour, the snapshot service probe, and running
`influxd backup` / `influxd restore` in their own process group under one timeout."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from influx_backupd.core.cancel import NEVER, CancelToken
from influx_backupd.core.errors import HotFailed
from influx_backupd.core.interrupt import child_preexec
from influx_backupd.core.log import Logger
from influx_backupd.influxd.limits import server_limits
from influx_backupd.store.record import Flavour

PROBE_TIMEOUT = 3.0


VERSION_TIMEOUT = 30.0


# What the tool prints when it cannot reach the snapshot service (Go's net errors, 0.9's HTTP 404).
UNREACHABLE_OUTPUT = re.compile(
    r"connection refused|i/o timeout|no route to host|network is unreachable|"
    r"no such host|status=404|404 not found",
    re.IGNORECASE,
)


_VERSION = re.compile(r"InfluxDB v(\d+)\.(\d+)\.(\d+)")


def split_host(host: str, default_port: int = 8088) -> tuple[str, int]:
    """'h:p', '[v6]:p', ':p' or 'h' → (host, port)."""
    name, sep, port = host.rpartition(":")
    if not sep or "]" in port:
        name, port = host, ""
    name = name.strip("[]") or "127.0.0.1"
    return name, int(port) if port.isdigit() else default_port


def probe_snapshot_service(host: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when a TCP connection to the snapshot service at host ('h:p') opens within timeout."""
    try:
        with socket.create_connection(split_host(host), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def unreachable_reason(host: str, timeout: float) -> str | None:
    """Why host cannot be reached, or None when it accepts a connection."""
    try:
        with socket.create_connection(split_host(host), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except ConnectionRefusedError:
        return "connection refused"
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)


@dataclass(frozen=True)
class ToolVersion:
    text: str  # "v1.6.7~rc0"
    major: int
    minor: int

    @property
    def flavour(self) -> Flavour | None:
        """None: a version with neither 0.9 snapshots nor -portable (0.10 to 1.4)."""
        if (self.major, self.minor) == (0, 9):
            return "0.9"
        if (self.major, self.minor) >= (1, 5):
            return "portable"
        return None


def parse_version(output: str) -> ToolVersion | None:
    """'InfluxDB v1.6.7~rc0 (git: ...)' or 'InfluxDB v0.9.6 (git: ...)' → ToolVersion."""
    match = _VERSION.search(output)
    if match is None:
        return None
    text = output[match.start() + len("InfluxDB ") :].split()[0]
    return ToolVersion(text=text, major=int(match.group(1)), minor=int(match.group(2)))


def tool_version(binary: Path) -> ToolVersion:
    try:
        done = subprocess.run(
            [str(binary), "version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT,
            check=False,
            preexec_fn=child_preexec(),
        )
    except FileNotFoundError:
        raise HotFailed(f"hot.tool: [influxd] binary {binary} does not exist") from None
    except PermissionError:
        raise HotFailed(f"hot.tool: [influxd] binary {binary} is not executable") from None
    except subprocess.TimeoutExpired:
        raise HotFailed(
            f"hot.tool: `{binary} version` did not finish in {VERSION_TIMEOUT:g}s"
        ) from None
    found = parse_version(done.stdout + done.stderr)
    if found is None:
        first = (done.stdout + done.stderr).strip().splitlines()
        raise HotFailed(
            f"hot.tool: cannot tell the InfluxDB version from `{binary} version`: "
            + (first[0] if first else f"no output, status {done.returncode}")
        )
    return found


# Output after which the tool's own retries (the 1.x client tries a failed shard ten times, two
# seconds apart) only delay the failure: a full filesystem stays full. The group is stopped at
# the first such line, which then ends the error.
HOPELESS_OUTPUT = ("no space left on device", "disk quota exceeded")


@dataclass
class ToolRun:
    returncode: int | None  # None: killed on timeout
    output: list[str]
    seconds: float


def run_tool(
    argv: list[str],
    timeout: float,
    logger: Logger,
    phase: str = "backup",
    cancel: CancelToken = NEVER,
) -> ToolRun:
    """Run argv in its own process group, its output logged line by line, under one timeout.

    On timeout, or when we are interrupted, the whole group is killed: the 1.x client retries a
    failed shard ten times and may otherwise outlive us. On a line of HOPELESS_OUTPUT the group
    is sent SIGTERM at once. Cancelled (the daemon is stopping), the
    group is sent SIGTERM: the caller then sees the tool fail.
    """
    started = time.monotonic()
    with server_limits():  # `influxd backup` and `restore` open every shard's files too
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=child_preexec(),
        )
    lines: list[str] = []

    def terminate() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    def pump() -> None:
        assert proc.stdout is not None
        gave_up = False
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                lines.append(line)
                logger.info("hot.output", phase=phase, line=line)
                if not gave_up and any(p in line.lower() for p in HOPELESS_OUTPUT):
                    gave_up = True
                    logger.warning("hot.giving_up", phase=phase, pid=proc.pid, line=line)
                    terminate()

    def cancelled() -> None:
        logger.info("hot.cancelled", phase=phase, pid=proc.pid)
        terminate()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    forget = cancel.on_cancel(cancelled)
    code: int | None = None
    try:
        code = _wait(proc, timeout)
        if code is None:
            logger.error("hot.timeout", phase=phase, timeout_s=timeout, pid=proc.pid)
    finally:
        forget()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    return ToolRun(code, lines, time.monotonic() - started)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """proc's exit status, or None after timeout.

    Popen.wait(timeout) polls with sleeps of up to 50 ms, which a hot run paid after every tool
    run (issue 6 counts it); a pidfd wakes us the moment the tool exits.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): Popen's polling
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    deadline = time.monotonic() + timeout
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        # poll() takes a C int of milliseconds: a long backup_timeout is waited in slices.
        while not poller.poll(min(max(1, int((deadline - time.monotonic()) * 1000)), 1 << 30)):
            if time.monotonic() >= deadline:
                return None
    finally:
        os.close(pidfd)
    return proc.wait()
