"""The InfluxDB server as one object: locate, stop, start, wait until ready, who holds its files.

Through systemctl when it is a systemd unit, else through signals and a detached start. Under
a systemd service of our own (the daemon's unit, a timer's oneshot), a detached start would
still leave influxd in our cgroup and sandbox: stopping our unit would kill it, and a command
that drops privileges could not; there it is started as a transient unit of its own.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from influx_backupd.core import log
from influx_backupd.core.atomic import read_small, replace_file
from influx_backupd.core.config import Config, ConfigError, read_server_paths
from influx_backupd.core.errors import BackupdError
from influx_backupd.core.interrupt import child_preexec, signals_allowed
from influx_backupd.core.paths import real
from influx_backupd.core.processes import identity, same_as
from influx_backupd.core.redact import shown_url
from influx_backupd.influxd import logfile
from influx_backupd.influxd.influxql import ping_headers
from influx_backupd.influxd.limits import server_limits, server_nofile
from influx_backupd.influxd.listening import listeners, listens
from influx_backupd.store.state import MAX_EXPECTED_WINDOW_S

# What influxd gets under its own service (Debian's unit, systemd's default): its new files are
# never world-writable, whatever umask the caller of influx-backupd had.
INFLUXD_UMASK = 0o022
# Waits between start attempts: doubling up to the cap, then every cap, for as long as it takes.
BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 30.0
# Start attempts a run makes before it gives up, leaving the crash marker: None in a foreground
# command (it returns only once influxd runs); the daemon sets a few, then keeps trying itself
# between jobs, so that it can still be stopped and can say what is going on.
RUN_START_ATTEMPTS: int | None = None
# What a caller says when something else runs our influxdb.conf once ours has stopped, or
# started it while it was stopped (a supervisor's restart): stopped through that unit instead,
# influxd stays stopped. One wording for the cold job and restores.
SUPERVISOR_HINT = (
    "if a supervisor restarts influxd when it stops, name its unit in [influxd] service"
)
# What systemd knows of a unit that a `systemctl start` would be refused for at once: the load
# state (not-found, bad-setting, error, masked: bus_unit_validate_load_state), a masked unit
# file, RefuseManualStart=, and CanStart (loaded, a type that starts, not refusing by hand).
UNIT_START_PROPERTIES = ("LoadState", "UnitFileState", "RefuseManualStart", "CanStart")
# Most of one influxd log line kept in an error message (its end: the reason comes last).
LOG_LINE_MAX = 300
MAX_PIDFILE = 64  # a pid and a newline; more is no pidfile of influxd's
# Slack on top of a stop window's expected length before influxd counts as down by mistake
# (stop_window_end)
WINDOW_MARGIN_S = 300.0
# backup_host's hosts that name this one: its port is one influxd itself listens on
LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::")


def backoff(failed: int) -> float:
    """Seconds to wait after the failed-th failed start attempt (1, 2, 4 … up to the cap)."""
    # the exponent is capped: a count read from a damaged marker (10**400) must not hang us
    return float(min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(32, max(0, failed - 1))))


class InfluxdError(BackupdError):
    """influxd could not be controlled as asked."""

    code = "influxd"
    label = "influxd"


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


# How long a start command that exited 0 (it put influxd in the background) may take to leave
# a process running our influxdb.conf: past it, the exit is a failed start
DETACH_GRACE_S = 3.0


def _nofile_property() -> str:
    """systemd-run's LimitNOFILE= for influxd: what server_limits gives a forked one."""
    soft, _hard = server_nofile(*resource.getrlimit(resource.RLIMIT_NOFILE))
    return "infinity" if soft == resource.RLIM_INFINITY else str(soft)


class NotAnswering(InfluxdError):
    """The process exists but does not answer: never stopped (a signal to a frozen process
    stays pending and would take it down later, when nobody is there to start it)."""


@dataclass(frozen=True)
class Holder:
    pid: int
    name: str
    path: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.name}) holds {self.path}"


# The environment variables influxd (1.x) reads over influxdb.conf's dirs, by our dir's name
DIR_ENV = {"meta": "INFLUXDB_META_DIR", "data": "INFLUXDB_DATA_DIR", "wal": "INFLUXDB_DATA_WAL_DIR"}


def config_flags(argv: list[str]) -> list[str]:
    """The values an argv gives influxd's `-config` flag (`-config PATH`, `-config=PATH`,
    `--config …`)."""
    values, after_flag = [], False
    for arg in argv:
        if after_flag:
            values.append(arg)
        elif arg.startswith(("-config=", "--config=")):
            values.append(arg.split("=", 1)[1])
        after_flag = arg in ("-config", "--config")
    return values


def names_conf(argv: list[str], conf: Path, cwd: Callable[[], str | None] | None = None) -> bool:
    """Whether an argv runs this influxdb.conf: as the value of influxd's `-config` flag, as
    influxd and a wrapper passing its arguments on name it. A path anywhere else (`tail -f`,
    `less`, an editor on the file) is not a server: taken for one, it was waited for as a
    server that would not exit, with influxd down meanwhile, and counted as another server
    started in the stop window. cwd: the process's working dir, against which a relative
    value is read (`cd /srv/influx && influxd -config influxdb.conf`), asked only for one."""
    resolved = real(conf)
    wanted = {str(conf), str(resolved)}
    # the last one given: Go's flag package keeps it (`-config ours -config other` runs other)
    for value in config_flags(argv)[-1:]:
        if value in wanted:
            return True
        # the config's path is resolved: /etc/influxdb/influxdb.conf may be a link to it.
        # Only a -config value is read: every process's every argument is looked at here, in
        # the stop window too
        if value.startswith("/") and os.path.realpath(value) == str(resolved):
            return True
        if value and not value.startswith("/") and cwd is not None:
            base = cwd()
            if base is not None and os.path.realpath(os.path.join(base, value)) == str(resolved):
                return True
    return False


def implicit_conf(argv: list[str], proc: psutil.Process) -> tuple[int, int] | None:
    """The influxdb.conf an influxd server started without `-config` reads, as influxd 1.x
    finds it ($INFLUXDB_CONFIG_PATH, else ~/.influxdb/influxdb.conf, else
    /etc/influxdb/influxdb.conf: the official Docker image, a hand start), as the file's
    (st_dev, st_ino). Looked up through the process's own root (/proc/PID/root): a container's
    /etc/influxdb/influxdb.conf is its own file, not the host's of the same name (taken for
    ours, its server was stopped instead of, or beside, ours). Only for a process that is
    `influxd` or `influxd run` (never its backup, restore or version tools); None for any
    other, or when its environment or root may not be read (another user's)."""
    if not argv or os.path.basename(argv[0]) != "influxd" or config_flags(argv):
        return None
    if len(argv) > 1 and argv[1] != "run" and not argv[1].startswith("-"):
        return None
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None

    def seen(path: str) -> tuple[int, int] | None:
        try:
            return _in_root(proc.pid, path)
        except OSError:
            return None

    named = env.get("INFLUXDB_CONFIG_PATH")
    if named:
        base = _cwd_of(proc)() if not named.startswith("/") else "/"
        return seen(os.path.join(base, named)) if base is not None else None
    home = env.get("HOME")
    for candidate in [
        *([os.path.join(home, ".influxdb", "influxdb.conf")] if home else []),
        "/etc/influxdb/influxdb.conf",
    ]:
        found = seen(candidate)
        if found is not None:
            return found
    return None  # influxd's built-in settings: no file of anyone's


def runs_conf(proc: psutil.Process, argv: list[str], conf: Path) -> bool:
    """Whether the process is influxd serving this influxdb.conf: named with -config (as a
    wrapper passing its arguments on names it too), or found by influxd itself; either way
    the file it sees at that path (through its own root: a container's is its own) must be
    ours. A -config match whose root, or our own file, may not be read counts, as it always
    did. Asked of every process in the stop window: our file is looked at only on a match."""
    cwd = _cwd_of(proc)
    if names_conf(argv, conf, cwd):
        value = config_flags(argv)[-1]
        base = "/" if value.startswith("/") else cwd()
        ours = _identity(conf)
        if base is None or ours is None:
            return True
        try:
            return _in_root(proc.pid, os.path.join(base, value)) == ours
        except OSError as exc:
            # not there in its root: another file system's (a container's); not readable: as
            # before, the path alone
            return exc.errno not in (errno.ENOENT, errno.ENOTDIR)
    implicit = implicit_conf(argv, proc)
    return implicit is not None and implicit == _identity(conf)


def _in_root(pid: int, path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of path as process pid sees it (links resolve inside its root)."""
    st = os.stat(f"/proc/{pid}/root" + path)
    return (st.st_dev, st.st_ino)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _cwd_of(proc: psutil.Process) -> Callable[[], str | None]:
    def cwd() -> str | None:
        try:
            return proc.cwd()
        except (psutil.Error, OSError):
            return None  # gone, or another user's: its relative path cannot be told

    return cwd


def _frozen(proc: psutil.Process) -> bool:
    try:
        return proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


class Influxd:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.section = config.settings.influxd
        self._proc: psutil.Process | None = None
        # the last process start() ran: a wrapper whose command line does not name our
        # influxdb.conf is not found by locate(), and must not be started a second time
        self._started: psutil.Process | None = None
        # the last process stop() asked to stop (SIGTERM sent, or the unit's stop run)
        self._asked: psutil.Process | None = None

    def stop_window_end(self, work_s: float = 0.0) -> float:
        """The unix time by which a stop window asked now, whose own work (a copy) takes about
        `work_s`, has ended with margin: twice that work, plus influxd's stop and start timeouts
        (a slower stop or start is a failure of its own), plus WINDOW_MARGIN_S. Until then a
        left_down is expected, not an outage (CrashMarker.down_expected_until)."""
        s = self.section
        window = 2 * work_s + s.stop_timeout + s.start_timeout + WINDOW_MARGIN_S
        # the most a marker may expect (a longer one reads as damaged, so as no window at all)
        return time.time() + min(window, MAX_EXPECTED_WINDOW_S)

    # -- finding it -------------------------------------------------------
    def locate(self) -> psutil.Process | None:
        """The running influxd, checked against its create_time so a reused pid is never signalled."""
        if self.section.service:
            pid = self._service_main_pid()
            return self._remember(pid)
        if self.section.pidfile is not None:
            try:
                # bounded, and never a FIFO's or a device's (read_small): a pid is a few digits
                text = read_small(self.section.pidfile, MAX_PIDFILE).decode("ascii")
                pid = int(text.strip() or 0)
            except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
                pid = 0
            found = self._remember(pid)
            # A stale pidfile may name a reused pid: only a process started with our
            # influxdb.conf is the server the config names. One naming a wrapper (runuser,
            # a script) leads to the influxd below it.
            if found is not None and self._names_our_conf(found):
                try:
                    below = [c for c in found.children(recursive=True) if self._names_our_conf(c)]
                except psutil.Error:
                    below = []
                return self._innermost([found, *below]) or found
            self._proc = None
        return self._innermost(self._all_naming_conf())

    def _innermost(self, candidates: list[psutil.Process]) -> psutil.Process | None:
        """Of the processes naming our conf, the one no other of them descends from: a wrapper
        that runs influxd as its child (`influxd "$@" & wait`, runuser) names the conf too,
        and a SIGTERM to it would end the wrapper alone (leaving influxd running on the files
        being copied) or, runuser, end influxd by SIGKILL two seconds later."""
        found = _innermost_of(candidates)
        return self._remember(found.pid) if found is not None else None

    def _all_naming_conf(self) -> list[psutil.Process]:
        conf = self.config.server.conf
        return [
            proc
            for proc in psutil.process_iter(["cmdline", "pid"])
            if proc.pid != os.getpid() and runs_conf(proc, proc.info["cmdline"] or [], conf)
        ]

    def _names_our_conf(self, proc: psutil.Process) -> bool:
        try:
            return runs_conf(proc, proc.cmdline(), self.config.server.conf)
        except psutil.Error:
            return False

    # -- can it be started again the way the config says? ---------------------------------
    def refuse_unstartable(self) -> None:
        """startable() as the one line (78) that check-config, backup, restore, `run` and a
        reload refuse with, before anything is stopped."""
        problem = self.startable()
        if problem is not None:
            raise ConfigError(f"{self.config.path}: {problem}")

    def startable(self, running: psutil.Process | Literal["look"] | None = "look") -> str | None:
        """Why influxd could not be started again as configured, or None. Checked before
        anything is stopped: a stop we cannot undo is the worst thing we can do. running: the
        process locate() found just before (else it is looked for)."""
        problem = self._conf_problem() or self._dirs_overridden(running)
        if problem is not None:
            return problem
        if self.section.service:
            return self._unit_unstartable(self.section.service)
        command = self.section.command or []
        if not command or not command[0]:
            return "influxd.command: empty; it must start with the influxd executable"
        exe = command[0]
        found = shutil.which(exe) if "/" not in exe else exe
        if found is None:
            return f"influxd.command: {exe} is not found in PATH"
        path = Path(found)
        if not path.exists():
            return f"influxd.command: {exe} does not exist"
        if not path.is_file():
            return f"influxd.command: {exe} is not a file"
        if not os.access(path, os.X_OK):
            return f"influxd.command: {exe} is not executable"
        if in_systemd_service() and shutil.which("systemd-run") is None:
            return (
                "influxd.command: under a systemd service influxd is started with systemd-run "
                "(in a unit of its own), which is not found in PATH"
            )
        conf = self.config.server.conf
        if not names_conf(command, conf):
            named = [a for a in command if a.endswith(".conf") or a.startswith("-config")]
            what = f"it names {' '.join(named)}" if named else "it names no config file"
            return (
                f"influxd.command must name the configured influxdb.conf {conf} "
                f"(influxd.config) with -config; {what}: influxd started by it would not be "
                "the server backed up"
            )
        return None

    def _conf_problem(self) -> str | None:
        """influxdb.conf as influxd will read it when it starts again: still there, readable,
        TOML, naming the dirs this command loaded. The command's own check may be hours old
        (a long extraction, a daemon's schedule): moved, broken or edited since, the start
        after the stop would fail, or bring up a server on other dirs than those copied."""
        loaded = self.config.server
        try:
            now, _ = read_server_paths(loaded.conf)
        except ConfigError as exc:
            return f"{exc}: influxd could not start again with it"
        moved = [
            f"{name} {getattr(loaded, name)} -> {getattr(now, name)}"
            for name in ("meta", "data", "wal", "hh")
            if getattr(now, name) != getattr(loaded, name)
        ]
        if moved:
            return (
                f"{loaded.conf} names other dirs than when this command read it "
                f"({', '.join(moved)}): influxd would start again on other dirs than these; "
                "run the command again (the daemon: systemctl reload influx-backupd)"
            )
        return None

    def _dirs_overridden(self, running: psutil.Process | Literal["look"] | None) -> str | None:
        """influxd takes INFLUXDB_META_DIR, INFLUXDB_DATA_DIR and INFLUXDB_DATA_WAL_DIR from its
        environment over influxdb.conf (/etc/default/influxdb, a unit's Environment=): one the
        running influxd has, naming another dir, means a backup copies dirs it does not use
        (and verifies them ok), a restore fills dirs it does not serve. Only these variables
        are read and said (others carry secrets)."""
        try:
            proc = self.locate() if running == "look" else running
        except InfluxdError:  # systemd not reachable here (a container): nothing to look at
            return None
        if proc is None:
            return None
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            return None
        loaded = self.config.server
        overridden = [
            f"{var}={env[var]!r} (influxdb.conf: {getattr(loaded, name)})"
            for name, var in DIR_ENV.items()
            if env.get(var) and real(Path(env[var])) != real(getattr(loaded, name))
        ]
        if not overridden:
            return None
        return (
            f"influxd (pid {proc.pid}) runs with {', '.join(overridden)}: its environment "
            f"overrides {loaded.conf}, so a backup would copy dirs that influxd does not use; "
            "set the dirs in influxdb.conf and remove the variables (/etc/default/influxdb, "
            "the unit's Environment=), then restart influxd"
        )

    def _unit_unstartable(self, unit: str) -> str | None:
        """Why systemd would refuse `systemctl start unit` (a stop of it is still obeyed: a
        masked unit stopped stays down until someone unmasks it), or None."""
        try:
            out = self._systemctl(
                "show", *(f"--property={p}" for p in UNIT_START_PROPERTIES), unit, timeout=30
            )
        except InfluxdError:
            # systemd not reachable here (a container, a chroot): it cannot say no
            return None
        props = dict(line.partition("=")[::2] for line in out.splitlines())
        where = f"influxd.service: unit {unit}"
        load = props.get("LoadState", "")
        if load == "not-found":
            return f"{where} does not exist"
        # a mask of the unit file becomes the load state at the next daemon-reload (any
        # package install does one): refused as if it were masked already
        if load == "masked" or props.get("UnitFileState") in ("masked", "masked-runtime"):
            return (
                f"{where} is masked: systemd would refuse to start it again after the stop "
                f"(`systemctl unmask {unit}`)"
            )
        if load and load != "loaded":  # bad-setting, error, or a state systemd calls unexpected
            return (
                f"{where} did not load (LoadState={load}): systemd would refuse to start it "
                f"again after the stop (`systemctl status {unit}` says why)"
            )
        if props.get("RefuseManualStart") == "yes":
            return (
                f"{where} has RefuseManualStart=yes: systemd would refuse to start it again "
                "after the stop"
            )
        if props.get("CanStart") == "no":  # the sum of the above, and a type that cannot start
            return f"{where} cannot be started (systemd says CanStart=no)"
        return None

    def describe_down(self, proc: psutil.Process | None) -> str:
        """Why the server does not count as serving, in words that fit what the process is."""
        ping = f"{self.config.url}/ping"
        if proc is None:
            outside = _innermost_of(self._outside(None))
            if outside is not None and self.section.service:
                # a server started by hand while the unit is down: running, not ours to stop
                return (
                    f"influxd pid {outside.pid} runs {self.config.server.conf} outside "
                    f"{self.section.service}, whose MainPID is none (started by hand?)"
                )
            return f"influxd is not running (no process for {self.config.server.conf})"
        if _frozen(proc):
            return (
                f"influxd (pid {proc.pid}) is stopped (frozen by SIGSTOP or a debugger) and "
                f"does not answer {ping}"
            )
        if self.section.service:
            with suppress(psutil.Error):
                argv = proc.cmdline()
                other = config_flags(argv)
                if other and not names_conf(argv, self.config.server.conf, _cwd_of(proc)):
                    # the unit runs another server: its port is not the one ours names
                    return (
                        f"{self.section.service}'s main process (pid {proc.pid}) runs "
                        f"-config {other[-1]}, not {self.config.server.conf}: [influxd] service "
                        "and config must name the same server"
                    )
        return f"influxd (pid {proc.pid}) does not answer {ping}"

    def frozen(self, proc: psutil.Process) -> bool:
        return _frozen(proc)

    def asked_to_stop(self, proc: psutil.Process) -> bool:
        """Whether stop() asked this very process (same pid, same create_time) to stop. One
        frozen since (SIGSTOP, a cgroup freezer, a debugger) holds that request and exits once
        thawed: it is going down, not left alone."""
        return self._asked is not None and self._asked == proc

    def check_answers(self) -> psutil.Process:
        """The process the config names, answering right now: the last check before a stop."""
        proc = self.locate()
        if (
            proc is None
            or _frozen(proc)
            or not self.ping(timeout=5.0)
            or _frozen(proc)
            or not self._listening_itself(proc.pid)
        ):
            raise NotAnswering(self.describe_down(proc))
        return proc

    def runs_as_other(self, uid: int) -> str | None:
        """How the running influxd's (effective) user differs from uid, whose files (at most
        0644/0755) it would then fail to write; None when it is that user (the group alone
        may differ: the owner writes its own files), when it runs as root (any owner's files
        are its own), when none runs or when that cannot be told."""
        proc = self.locate()
        if proc is None:
            return None
        try:
            runs = proc.uids().effective, proc.gids().effective
        except psutil.Error:
            return None
        if runs[0] in (0, uid):
            return None
        try:
            user = repr(pwd.getpwuid(runs[0]).pw_name)
        except KeyError:
            user = "?"
        try:
            group = repr(grp.getgrgid(runs[1]).gr_name)
        except KeyError:
            group = "?"
        return (
            f"influxd (pid {proc.pid}) runs as user {user}, group {group} "
            f"(uid {runs[0]}, gid {runs[1]})"
        )

    def _remember(self, pid: int) -> psutil.Process | None:
        if pid <= 0:
            return None
        try:
            checked = same_as(identity(psutil.Process(pid)))  # not a zombie
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
            done = _captured(["systemctl", *args], timeout)
        except subprocess.TimeoutExpired:
            raise InfluxdError(
                f"systemctl {' '.join(args)} did not finish in {timeout:.0f}s"
            ) from None
        except FileNotFoundError:
            raise InfluxdError(
                "systemctl not found; use [influxd] command instead of service"
            ) from None
        if done.returncode != 0:
            raise InfluxdError(
                f"systemctl {' '.join(args)} failed ({done.returncode}): "
                + _last_line(done, "no output")
            )
        return done.stdout

    # -- readiness --------------------------------------------------------
    def ping(self, timeout: float = 1.0) -> bool:
        """Whether influxd answers HTTP: 1.x starts its HTTP service only once its stores are
        open."""
        return ping_headers(self.config.url, timeout, self.config.credentials) is not None

    def wait_ready(
        self,
        timeout: float,
        proc: subprocess.Popen[bytes] | psutil.Process | None = None,
        *,
        where: str = "",
        log_from: tuple[Path, int] | None = None,
    ) -> None:
        """Until influxd answers /ping, up to timeout. An answer counts only while the server
        started (proc, the unit's main process, or the one running our influxdb.conf) is the one
        listening on its port: another process on that port answers 204 as well, while influxd
        fails to bind it and exits, and a start taken as done would leave it down. where: what
        the exit message adds (the transient unit whose journal says why); log_from: the log
        this start appends to and its size before, whose last line the exit message quotes
        (influxd's reason, such as a permission denied on meta.db)."""
        deadline = time.monotonic() + timeout
        impostor = False
        detached_by = 0.0  # when a command that exited 0 must have left influxd running
        while time.monotonic() < deadline:
            if self.ping(timeout=min(1.0, max(0.05, deadline - time.monotonic()))):
                if self._listening_itself(proc.pid if proc is not None else self._started_pid()):
                    return
                impostor = True
            if isinstance(proc, subprocess.Popen) and proc.poll() == 0:
                # An init script's way: influxd put in the background, the command returned
                # 0. The server is the process running our influxdb.conf, given a moment to
                # appear; taking the exit for a failed start raised a left-down alarm, and a
                # second start beside it, on every run.
                detached = self.locate()
                if detached is not None:
                    log.get().info("influxd.command_detached", pid=detached.pid)
                    proc = detached
                    continue
                detached_by = detached_by or time.monotonic() + DETACH_GRACE_S
                if time.monotonic() < detached_by:
                    time.sleep(0.05)
                    continue
            status = _exit_status(proc) if proc is not None else None
            if status is not None:
                said = _log_last_line(*log_from) if log_from is not None else None
                raise StartFailed(
                    f"influxd exited{status} before answering {self.config.url}/ping{where}"
                    + (self._impostor_note() if impostor else "")
                    + (f"; its log {log_from[0]} ends: {said}" if log_from and said else "")
                )
            time.sleep(0.1 if impostor else 0.02)
        raise StartFailed(
            f"influxd did not answer {self.config.url}/ping within {timeout:.0f}s"
            + (self._impostor_note() if impostor else "")
        )

    def _impostor_note(self) -> str:
        return (
            f" (another process answers there: influxd's own port {self.config.http_port} is "
            "taken; see `ss -ltnp`)"
        )

    def answers_itself(self, pid: int | None = None) -> bool:
        """/ping answers and the one answering is our influxd (pid, else the unit's main
        process or the one running our influxdb.conf), not another process on its port."""
        if not self.ping():
            return False
        return self._listening_itself(pid if pid is not None else self._started_pid())

    def _started_pid(self) -> int | None:
        """The unit's main process, or the one running our influxdb.conf (0: none; None:
        cannot be told, systemd not reachable)."""
        if self.section.service:
            try:
                return self._service_main_pid()
            except InfluxdError:
                return None
        located = self.locate()
        return located.pid if located is not None else 0

    def _listening_itself(self, pid: int | None) -> bool:
        """Process pid (or its children: a wrapper script) listens on influxdb.conf's HTTP
        port. True when that cannot be told (no pid or port known, another user's sockets)."""
        port = self.config.http_port
        if port is None or pid is None:
            return True
        if pid <= 0:
            return False
        return listens(pid, port) is not False  # None: cannot be told

    def stop(self, *, outcome: str = "") -> None:
        """Stop influxd and wait for it to exit; StopTimeout leaves it running and untouched.

        outcome: what the caller's failure means for its work, ending StopTimeout's message
        ("nothing copied", "nothing restored, live data untouched")."""
        timeout = self.section.stop_timeout
        tail = f": {outcome}" if outcome else ""
        if self.section.service:
            proc = self.locate()
            self._asked = proc  # systemd signals it, frozen or not: the stop stays pending
            try:
                # ignore-dependencies, as start: the daemon's unit is ordered after
                # influxdb.service, so a plain stop asked while `systemctl stop influx-backupd`
                # (an upgrade's prerm, a shutdown) is pending waits for our own stop job, which
                # waits for this run: stuck for stop_timeout, then run later, influxd left down
                self._systemctl(
                    "stop", "--job-mode=ignore-dependencies", self.section.service, timeout=timeout
                )
            except InfluxdError as exc:
                raise StopTimeout(f"{exc}{tail}") from None
            if proc is not None and not _wait_gone(proc, 5):
                raise StopTimeout(
                    f"{self.section.service} stopped but pid {proc.pid} is alive{tail}"
                )
            return
        proc = self._proc or self.locate()
        if proc is None:
            raise InfluxdError(self.describe_down(None))
        if _frozen(proc):
            # the signal would wait until it is thawed, and take it down then
            raise NotAnswering(self.describe_down(proc) + "; not signalled")
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            return
        self._asked = proc
        started = time.monotonic()
        if not _wait_gone(proc, timeout):
            # frozen since the signal (mid-shutdown): it exits once thawed, not before
            frozen = " (it is frozen by SIGSTOP or a debugger since)" if _frozen(proc) else ""
            # Never SIGKILL: a forced kill mid-write is the corruption we exist to avoid.
            raise StopTimeout(
                f"influxd (pid {proc.pid}) did not exit within stop_timeout={timeout:.0f}s "
                f"after SIGTERM{frozen}{tail}"
            )
        self._proc = None
        # Whatever else runs our influxdb.conf (a wrapper around influxd ends as its child
        # does; a server the one signalled had started beside itself does not): stopped means
        # none is left, or nothing may be copied or swapped as if it were
        for other in self._all_naming_conf():
            if not _wait_gone(other, max(1.0, timeout - (time.monotonic() - started))):
                raise StopTimeout(
                    f"pid {other.pid} still runs {self.config.server.conf} after influxd "
                    f"(pid {proc.pid}) exited{tail} ({SUPERVISOR_HINT})"
                )

    def wait_exit(self, proc: psutil.Process, timeout: float) -> bool:
        return _wait_gone(proc, timeout)

    def is_running(self) -> bool:
        return self.locate() is not None

    # -- starting ---------------------------------------------------------
    def start(self, log_path: Path | None = None) -> None:
        """Start influxd and wait until /ping answers 204, up to start_timeout."""
        timeout = self.section.start_timeout
        if self.section.service:
            # ignore-dependencies: the daemon's unit is ordered after influxdb.service, and
            # systemd runs a stop job before any start job of units ordered either way, so a
            # plain start, asked for by a cold run while `systemctl stop|restart influx-backupd`
            # waits for that run, would wait for the run itself (deadlock until the timeout).
            self._systemctl(
                "start", "--job-mode=ignore-dependencies", self.section.service, timeout=timeout
            )
            self.wait_ready(timeout)
            return
        assert self.section.command
        if log_path is not None:
            logfile.trim(log_path, log.get())
            log_path = _log_usable(log_path)
        if in_systemd_service():
            self._start_own_unit(self.section.command, log_path, timeout)
            return
        log_from = (log_path, _size(log_path)) if log_path else None
        log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            # Its own session: influxd must outlive us and never get our terminal's signals.
            # The server we protect serves at normal priority, not at ours (the unit's Nice=).
            with normal_priority(), server_limits():
                child = subprocess.Popen(
                    self.section.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                    close_fds=True,
                    umask=INFLUXD_UMASK,
                    preexec_fn=child_preexec(),
                )
        except OSError as exc:
            raise StartFailed(f"cannot run {self.section.command[0]}: {exc.strerror}") from None
        finally:
            if not isinstance(log_file, int):
                log_file.close()
        if self.section.pidfile is not None:
            _write_pidfile(self.section.pidfile, child.pid)
        with contextlib.suppress(psutil.Error):
            self._started = psutil.Process(child.pid)
        self.wait_ready(timeout, child, log_from=log_from)
        if self._remember(child.pid) is None:  # a command that put influxd in the background
            detached = self.locate()
            if detached is not None:
                self._remember(detached.pid)
                if self.section.pidfile is not None:  # it named the command, gone
                    _write_pidfile(self.section.pidfile, detached.pid)

    def _start_own_unit(self, command: list[str], log_path: Path | None, timeout: float) -> None:
        """The command as a transient service (systemd-run): outside our unit's cgroup, so that
        stopping or restarting influx-backupd never kills it (KillMode), and outside our
        sandbox (no capability bounding set: runuser can drop to the influxdb user)."""
        unit = transient_unit(self.config.server.conf)
        # one that failed earlier stays loaded under that name until reset (none: an error)
        with suppress(InfluxdError):
            self._systemctl("reset-failed", unit, timeout=30)
        argv = [
            "systemd-run",
            f"--unit={unit}",
            "--collect",
            "--quiet",
            f"--description=influxd for {self.config.server.conf} (started by influx-backupd)",
            f"--property=UMask={INFLUXD_UMASK:04o}",
            # a transient service's default is 1024 (systemd's DefaultLimitNOFILE): limits.py
            f"--property=LimitNOFILE={_nofile_property()}",
        ]
        # None of our environment is passed on: --setenv puts values in argv (ps shows them to
        # every user) and in the unit's Environment= (`systemctl show` does too), and
        # INFLUXDB_* settings carry secrets. influxd reads its settings from influxdb.conf.
        log_from = (log_path, _size(log_path)) if log_path else None
        if log_path is not None:  # made private by _log_usable (systemd: the unit's umask)
            argv += [f"--property=Standard{out}=append:{log_path}" for out in ("Output", "Error")]
        try:
            done = _captured([*argv, "--", *command], timeout)
        except subprocess.TimeoutExpired:
            raise StartFailed(f"systemd-run did not start unit {unit} in {timeout:.0f}s") from None
        except OSError as exc:
            raise StartFailed(f"cannot run systemd-run: {exc.strerror or exc}") from None
        where = f" (unit {unit}: `journalctl -u {unit}`)"
        if done.returncode != 0:
            raise StartFailed(
                f"systemd-run could not start {command[0]}{where}: "
                + _last_line(done, f"status {done.returncode}")
            )
        try:
            pid = int(self._systemctl("show", "-p", "MainPID", "--value", unit, timeout=30) or 0)
        except (InfluxdError, ValueError):
            pid = 0
        proc = self._remember(pid)
        if proc is None:
            raise StartFailed(f"influxd exited at once{where}")
        if self.section.pidfile is not None:
            _write_pidfile(self.section.pidfile, proc.pid)
        self._started = proc
        self.wait_ready(timeout, proc, where=where, log_from=log_from)

    def start_until_up(
        self,
        log_path: Path | None = None,
        *,
        attempts: int | None = None,
        on_failure: Callable[[int, str, float], None] | None = None,
    ) -> int:
        """Start influxd, retrying with backoff until it answers; the attempts it took.

        attempts=None: RUN_START_ATTEMPTS; when that is None too, for as long as it takes (a foreground command: influxd must run again
        before we return). Otherwise StartFailed after that many (the daemon tries again between
        jobs). A server that still runs is waited for, never doubled: one still exiting is let
        exit first, one starting is given start_timeout to answer. The waits between attempts
        let SIGTERM/SIGINT through: a command stopped there leaves the crash marker, and the
        next one goes on trying.
        """
        logger = log.get()
        limit = attempts if attempts is not None else RUN_START_ATTEMPTS
        failed = 0
        while True:
            try:
                self._start_once(log_path)
                return failed + 1
            except InfluxdError as exc:
                failed += 1
                wait = backoff(failed)
                last = limit is not None and failed >= limit
                logger.error(
                    "influxd.start_failed",
                    phase="start",
                    attempt=failed,
                    error=str(exc),
                    retry_in_s=None if last else wait,
                )
                if on_failure is not None:
                    on_failure(failed, str(exc), wait)
                if last:
                    raise StartFailed(
                        f"influxd did not start again ({failed} attempts; last: {exc})"
                    ) from None
                with signals_allowed():
                    time.sleep(wait)

    def _start_once(self, log_path: Path | None) -> None:
        proc = self.locate() or self._still_starting()
        if proc is not None:
            if _frozen(proc):
                raise StartFailed(self.describe_down(proc))
            # Exiting after a stop, or still opening its stores: never start a second one on
            # the same files. Wait for it to answer or to go (1.x forces its own hard
            # shutdown 30 s after SIGTERM).
            if self._answers_or_exits(proc, max(self.section.stop_timeout, 35.0)):
                return
        self.start(log_path=log_path)

    def _still_starting(self) -> psutil.Process | None:
        """What an earlier start() of ours ran, if it neither answered nor exited."""
        proc = self._started
        try:
            if proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except psutil.Error:
            pass
        return None

    def _answers_or_exits(self, proc: psutil.Process, timeout: float) -> bool:
        """True once proc answers; False once it is gone; StartFailed when neither happens."""
        deadline = time.monotonic() + timeout
        while True:
            if self.ping(timeout=1.0) and self._listening_itself(proc.pid):
                return True
            if _wait_gone(proc, 0.2):
                return False
            if time.monotonic() >= deadline:
                raise StartFailed(
                    f"influxd (pid {proc.pid}) neither answers {self.config.url}/ping nor "
                    f"exits within {timeout:.0f}s; not started beside it"
                )

    # -- who holds the files ---------------------------------------------
    def _outside(self, proc: psutil.Process | None) -> list[psutil.Process]:
        """The processes running our influxdb.conf other than proc and its children: under
        [influxd] service, a server started by hand beside the unit (locate() looks at the
        unit's MainPID alone); under [influxd] command, a second one beside the one found."""
        ours = _family(proc)
        return [p for p in self._all_naming_conf() if p.pid not in ours]

    def stranger(self, dirs: Iterable[Path], proc: psutil.Process | None) -> str | None:
        """Who else serves or holds dirs than proc (the server located, about to be stopped,
        or None) and its children, in words; None when nobody. Stopping proc (or starting the
        configured server) would not free the dirs: asked before anything is stopped or renamed.
        """
        conf = self.config.server.conf
        outside = _innermost_of(self._outside(proc))
        if outside is not None:
            if self.section.service:
                return (
                    f"influxd pid {outside.pid} serves {conf} outside {self.section.service} "
                    "(started by hand?): stop it, or start it through the unit"
                )
            beside = f" beside pid {proc.pid}" if proc is not None else ""
            return f"influxd pid {outside.pid} runs {conf}{beside}: stop it"
        ours = _family(proc)
        held = [h for h in self.holders(dirs) if h.pid not in ours]
        if not held:
            return None
        if self.section.service:
            found = f"{self.section.service}'s MainPID is {proc.pid if proc else 'none'}"
        else:
            found = f"the config's influxd is {f'pid {proc.pid}' if proc else 'not running'}"
        more = f" (and {len(held) - 1} more)" if len(held) > 1 else ""
        return f"{held[0]}{more}, which is not the influxd of {conf} ({found}): stop it"

    def in_use(self, dirs: Iterable[Path]) -> str | None:
        """Once influxd is stopped: who still holds a file under dirs (holders) or listens on
        influxd's own HTTP port, in words; None when nobody. A process found here would write
        into what is about to be moved aside, or keep the server started next from serving."""
        held = self.holders(dirs)
        if held:
            return "files still in use after the stop: " + "; ".join(map(str, held))
        for port in self._own_ports():
            pids = listeners(port)
            if pids is None or pids:
                who = f"pid {', '.join(map(str, pids))}" if pids else "a process"
                return f"{who} listens on influxd's port {port} after the stop"
        return None

    def _own_ports(self) -> list[int]:
        """The ports influxd itself listens on: [http] bind-address's, and backup_host's (the
        snapshot service) when that names this host."""
        ports = [self.config.http_port] if self.config.http_port is not None else []
        host, _, port = self.config.backup_host.rpartition(":")
        if host.strip("[]") in LOCAL_HOSTS and port.isdigit() and int(port) not in ports:
            ports.append(int(port))
        return ports

    def holders(self, dirs: Iterable[Path]) -> list[Holder]:
        """Processes with a file under dirs open or mapped (influxd mmaps TSM files). Asked
        inside the stop window: /proc is read directly, the descriptors' links and the maps'
        paths, where psutil's open_files() also reads each descriptor's fdinfo and
        memory_maps() the kernel's smaps (sizes of every mapping, worked out on read): 1.8 s
        of downtime beside a second influxd with 20,000 descriptors (the scale audit)."""
        roots = tuple(str(real(d)).rstrip("/") + "/" for d in dirs)
        found: list[Holder] = []
        me = os.getpid()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            path = _held_under(entry.path, roots)
            if path is not None:
                found.append(Holder(int(entry.name), _name_of(entry.path), path))
        return found


def _held_under(proc_dir: str, roots: tuple[str, ...]) -> str | None:
    """The first file under roots (or a root itself) the process of /proc/PID holds open or
    mapped; None when none is, or it went or may not be read (as psutil's AccessDenied)."""

    def under(path: str) -> bool:
        return path.startswith(roots) or (path + "/") in roots

    try:
        for fd in os.scandir(f"{proc_dir}/fd"):
            with suppress(OSError):  # closed meanwhile
                target = os.readlink(fd.path)
                # a file in there, as psutil's open_files() counted them: a dir walked (find,
                # du) or a file deleted while open is nothing a copy of the dir would meet
                if (
                    under(target)
                    and not target.endswith(" (deleted)")
                    and stat.S_ISREG(os.stat(fd.path).st_mode)
                ):
                    return target
        with open(f"{proc_dir}/maps", encoding="utf-8", errors="surrogateescape") as maps:
            for line in maps:
                # address perms offset dev inode [path]; a path may hold spaces
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) == 6 and under(fields[5]):
                    return fields[5]
    except OSError:
        return None
    return None


def _name_of(proc_dir: str) -> str:
    try:
        with open(f"{proc_dir}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip() or "?"
    except OSError:
        return "?"


def _innermost_of(candidates: list[psutil.Process]) -> psutil.Process | None:
    """Of candidates, the first that no other of them descends from (see Influxd._innermost)."""
    pids = {p.pid for p in candidates}
    for proc in candidates:
        try:
            if not any(c.pid in pids for c in proc.children(recursive=True)):
                return proc
        except psutil.Error:
            continue
    return None


def _family(proc: psutil.Process | None) -> set[int]:
    """proc's pid, its descendants' (a wrapper's influxd) and its ancestors' (the wrapper or
    supervisor that runs it, naming the same conf: stop() waits for those too); empty for
    None."""
    if proc is None:
        return set()
    found = {proc.pid}
    with suppress(psutil.Error):
        found.update(c.pid for c in proc.children(recursive=True))
    with suppress(psutil.Error):
        found.update(p.pid for p in proc.parents())
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


def _captured(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """A systemd tool run to its end, its output kept for the error line."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=child_preexec(),
    )


def _last_line(done: subprocess.CompletedProcess[str], otherwise: str) -> str:
    """What a failed systemctl/systemd-run said last (its reason), or otherwise."""
    return _final_line(done.stderr or done.stdout) or otherwise


def _final_line(text: str) -> str | None:
    """text's last non-empty line, stripped; None when it has none."""
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else None


def _log_usable(path: Path) -> Path | None:
    """path, made (0600) and opened for appending once to prove it can be; None when it cannot
    (the state dir removed, made read-only, the log a directory): influxd is then started with
    its output discarded, and that is said. Starting influxd again never depends on the state
    dir."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)  # NONBLOCK: a FIFO nobody reads must not hang us
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
        finally:
            os.close(fd)
    except OSError as exc:
        log.get().warning(
            "influxd.log_unavailable",
            path=str(path),
            error=exc.strerror or str(exc),
            detail="influxd started without its output kept",
        )
        return None
    return path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_last_line(path: Path, since: int) -> str | None:
    """The last non-empty line written to path after byte since (this start's own lines, not an
    earlier start's), its end kept when long; None when there is none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(since, _size(path) - 65536))
            text = fh.read(65536).decode(errors="replace")
    except OSError:
        return None
    last = _final_line(text)
    if last is None:
        return None
    last = shown_url(last)  # a URL's user:password or token never reaches an error
    return last if len(last) <= LOG_LINE_MAX else "…" + last[-LOG_LINE_MAX:]


def in_systemd_service() -> bool:
    """Whether we run inside a systemd service (systemd sets INVOCATION_ID for its processes):
    whatever we start stays in its cgroup and sandbox."""
    return bool(os.environ.get("INVOCATION_ID")) and os.path.isdir("/run/systemd/system")


def transient_unit(conf: Path) -> str:
    """The unit an influxd started under systemd runs in: one name per influxdb.conf."""
    digest = hashlib.sha256(str(real(conf)).encode()).hexdigest()[:12]
    return f"influx-backupd-influxd-{digest}.service"


def _exit_status(proc: subprocess.Popen[bytes] | psutil.Process) -> str | None:
    """None while proc runs; once it has exited, words for how (" with status N" for a child
    of ours, "" for a process we cannot reap)."""
    if isinstance(proc, subprocess.Popen):
        code = proc.poll()
        return None if code is None else f" with status {code}"
    try:
        running = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        running = False
    return None if running else ""


def _write_pidfile(path: Path, pid: int) -> None:
    """influxd's pidfile, as its init script would write it. Written after influxd runs: one
    that cannot be (its dir read-only, gone) is said, and the start goes on, as influxd's start
    never depends on our own files."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, f"{pid}\n".encode(), mode=0o644)
    except OSError as exc:
        log.get().warning(
            "influxd.pidfile_not_written", path=str(path), pid=pid, error=exc.strerror or str(exc)
        )
