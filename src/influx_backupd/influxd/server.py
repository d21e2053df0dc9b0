"""The InfluxDB server as one object: locate, stop, start, wait until ready, who holds its files.

Through systemctl when it is a systemd unit, else through signals and a detached start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from influx_backupd.core.config import Config
from influx_backupd.core.errors import BackupdError
from influx_backupd.influxd.influxql import ping_headers


class InfluxdError(BackupdError):
    """influxd could not be controlled as asked."""

    code = "influxd"


class StopTimeout(InfluxdError):
    pass


class StartFailed(InfluxdError):
    pass


@contextmanager
def normal_priority() -> Iterator[None]:
    """Children forked inside start at nice 0 and the default I/O class.

    The daemon's unit runs it at Nice=10 and best-effort I/O priority 7 so that its copies and
    hashing yield to the server; an influxd it starts itself must not inherit that. Both are
    per thread on Linux (fork copies the caller's), so only this thread is raised, and put back
    after. Raising needs CAP_SYS_NICE: without it, the child keeps ours.
    """
    tid = threading.get_native_id()
    me = psutil.Process(tid)
    nice = os.getpriority(os.PRIO_PROCESS, tid)
    ionice = me.ionice()
    try:
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        with suppress(OSError, psutil.Error, ValueError):
            me.ionice(psutil.IOPRIO_CLASS_NONE)
        yield
    finally:
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        with suppress(OSError, psutil.Error, ValueError):
            if ionice.ioclass == psutil.IOPRIO_CLASS_NONE:
                me.ionice(psutil.IOPRIO_CLASS_NONE)
            else:
                me.ionice(ionice.ioclass, ionice.value)


@dataclass(frozen=True)
class Holder:
    pid: int
    name: str
    path: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.name}) holds {self.path}"


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The process, unless the pid was reused by another one since we saw it."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.01:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


class Influxd:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.section = config.settings.influxd
        self._proc: psutil.Process | None = None

    # -- finding it -------------------------------------------------------
    def locate(self) -> psutil.Process | None:
        """The running influxd, checked against its create_time so a reused pid is never signalled."""
        if self.section.service:
            pid = self._service_main_pid()
            return self._remember(pid)
        if self.section.pidfile is not None:
            try:
                pid = int(self.section.pidfile.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            found = self._remember(pid)
            if found is not None:
                return found
        conf = str(self.config.server.conf)
        for proc in psutil.process_iter(["cmdline", "pid"]):
            cmdline = proc.info["cmdline"] or []
            if proc.pid == os.getpid():
                continue
            if any(arg == conf or arg.endswith("=" + conf) for arg in cmdline):
                return self._remember(proc.pid)
        return None

    def _remember(self, pid: int) -> psutil.Process | None:
        if pid <= 0:
            return None
        try:
            proc = psutil.Process(pid)
            checked = _same_process(pid, proc.create_time())
        except psutil.Error:
            return None
        self._proc = checked
        return checked

    def _service_main_pid(self) -> int:
        assert self.section.service
        out = self._systemctl("show", "-p", "MainPID", "--value", self.section.service, timeout=30)
        try:
            return int(out.strip() or 0)
        except ValueError:
            return 0

    def _systemctl(self, *args: str, timeout: float) -> str:
        try:
            done = subprocess.run(
                ["systemctl", *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise InfluxdError(
                f"systemctl {' '.join(args)} did not finish in {timeout:.0f}s"
            ) from None
        except FileNotFoundError:
            raise InfluxdError(
                "systemctl not found; use [influxd] command instead of service"
            ) from None
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise InfluxdError(
                f"systemctl {' '.join(args)} failed ({done.returncode}): "
                + (detail[-1] if detail else "no output")
            )
        return done.stdout

    # -- readiness --------------------------------------------------------
    def ping(self, timeout: float = 1.0) -> bool:
        """Whether influxd answers HTTP: 1.x starts its HTTP service only once its stores are
        open."""
        return ping_headers(self.config.url, timeout, self.config.credentials) is not None

    def wait_ready(self, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping(timeout=min(1.0, max(0.05, deadline - time.monotonic()))):
                return
            if proc is not None and proc.poll() is not None:
                raise StartFailed(
                    f"influxd exited with status {proc.returncode} before answering {self.config.url}/ping"
                )
            time.sleep(0.02)
        raise StartFailed(f"influxd did not answer {self.config.url}/ping within {timeout:.0f}s")

    # -- stopping ---------------------------------------------------------
    def stop(self) -> None:
        """Stop influxd and wait for it to exit; StopTimeout leaves it running and untouched."""
        timeout = self.section.stop_timeout
        if self.section.service:
            proc = self.locate()
            try:
                self._systemctl("stop", self.section.service, timeout=timeout)
            except InfluxdError as exc:
                raise StopTimeout(str(exc)) from None
            if proc is not None and not _wait_gone(proc, 5):
                raise StopTimeout(f"{self.section.service} stopped but pid {proc.pid} is alive")
            return
        proc = self._proc or self.locate()
        if proc is None:
            raise InfluxdError("influxd is not running (no process found)")
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            return
        if not _wait_gone(proc, timeout):
            # Never SIGKILL: a forced kill mid-write is the corruption we exist to avoid.
            raise StopTimeout(
                f"influxd (pid {proc.pid}) did not exit within stop_timeout={timeout:.0f}s after SIGTERM"
            )
        self._proc = None

    def wait_exit(self, proc: psutil.Process, timeout: float) -> bool:
        return _wait_gone(proc, timeout)

    def is_running(self) -> bool:
        return self.locate() is not None

    # -- starting ---------------------------------------------------------
    def start(self, log_path: Path | None = None) -> None:
        """Start influxd and wait until /ping answers 204, up to start_timeout."""
        timeout = self.section.start_timeout
        if self.section.service:
            self._systemctl("start", self.section.service, timeout=timeout)
            self.wait_ready(timeout)
            return
        assert self.section.command
        log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            # Its own session: influxd must outlive us and never get our terminal's signals.
            # The server we protect serves at normal priority, not at ours (the unit's Nice=).
            with normal_priority():
                child = subprocess.Popen(
                    self.section.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise StartFailed(f"cannot run {self.section.command[0]}: {exc.strerror}") from None
        finally:
            if not isinstance(log_file, int):
                log_file.close()
        if self.section.pidfile is not None:
            _write_pidfile(self.section.pidfile, child.pid)
        self.wait_ready(timeout, child)
        self._remember(child.pid)

    # -- who holds the files ---------------------------------------------
    def holders(self, dirs: Iterable[Path]) -> list[Holder]:
        """Processes with a file under dirs open or mapped (influxd mmaps TSM files)."""
        roots = tuple(str(d.resolve()).rstrip("/") + "/" for d in dirs)
        found: list[Holder] = []
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "name"]):
            if proc.pid == me:
                continue
            try:
                paths = [f.path for f in proc.open_files()]
                paths += [m.path for m in proc.memory_maps(grouped=True)]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            except OSError:
                continue
            for path in paths:
                if path.startswith(roots) or (path + "/") in roots:
                    found.append(Holder(proc.pid, proc.info["name"] or "?", path))
                    break
        return found


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait for exit; a zombie counts as gone (its parent, not us, may be the one to reap it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
            proc.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            return True
        except psutil.NoSuchProcess:
            return True
        except psutil.TimeoutExpired:
            if time.monotonic() >= deadline:
                return False


def _write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)
