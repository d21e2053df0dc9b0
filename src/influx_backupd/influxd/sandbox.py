"""A throwaway influxd: own dirs, own config, free ports on 127.0.0.1, never the system instance.

Used by the demo, by restore tests, by the 1.x hot restore (which builds the restored server in
one) and by the test suite's fixtures.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influx_backupd.core.interrupt import child_preexec, signals_blocked
from influx_backupd.core.jsontext import loads_json
from influx_backupd.influxd.limits import server_limits
from influx_backupd.influxd.listening import listens

# Go's default is 100. Copying an increment of about 1 GB in with SELECT INTO, the throwaway's
# anonymous memory peaked at 2.2 GB by default and 1.46 GB at 25, with no slower copy
# (bench/restore_memory.py, docs/performance.md).
BESIDE_LIVE_GOGC = 25
BESIDE_LIVE_NICE = 10  # and the lowest best-effort I/O priority


# The restored server must not change what it serves while we count it.
RESTORE_TEST_SECTIONS = """
[retention]
  enabled = false

[subscriber]
  enabled = false
"""


def toml_value(value: object) -> str | None:
    """A TOML scalar for a bool, number or string (None for anything else): paths and names go
    into a config quoted, whatever quotes, backslashes or control characters they hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str | Path):
        # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped too
        return json.dumps(str(value)).replace("\x7f", "\\u007f")
    return None


def server_settings(raw: dict[str, Any]) -> tuple[dict[str, str], str]:
    """An influxdb.conf's [data] scalars (but its dirs) and its [coordinator] section, as TOML
    for a throwaway's config: shards it restores must be what that server expects
    (index-version: an inmem-built shard has no TSI index), its queries meet the same limits."""
    data_table = raw.get("data")
    data: dict[str, str] = {}
    for key, value in (data_table if isinstance(data_table, dict) else {}).items():
        text = toml_value(value)
        if key not in OWN_DATA_KEYS and text is not None and plain_key(key):
            data[str(key)] = text
    table = raw.get("coordinator")
    coordinator = [
        f"  {key} = {text}\n"
        for key, value in (table if isinstance(table, dict) else {}).items()
        if (text := toml_value(value)) is not None and plain_key(key)
    ]
    return data, ("\n[coordinator]\n" + "".join(coordinator)) if coordinator else ""


def plain_key(key: object) -> bool:
    """A bare TOML key as influxd names its settings. Keys come from an archive's
    influxdb.conf, which may be hostile: a quoted key holding a newline, written as it is,
    would end its line and open sections of its own (a [[udp]] listener on every interface)."""
    return isinstance(key, str) and re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,99}", key) is not None


# [data] keys a sandbox's own config sets (Sandbox.write_config)
OWN_DATA_KEYS = {"dir", "wal-dir", "query-log-enabled"}


# Starts on fresh ports after a start that lost its port to someone else (Sandbox.start)
PORT_ATTEMPTS = 5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def influxd_binary() -> str | None:
    return shutil.which("influxd") or (
        "/usr/bin/influxd" if os.path.exists("/usr/bin/influxd") else None
    )


@dataclass
class Sandbox:
    root: Path
    http_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    binary: str = "/usr/bin/influxd"
    extra_data: dict[str, str] = field(default_factory=dict)
    extra_sections: str = ""  # whole TOML sections appended to the config (restore tests)
    # Opt-in [http] auth-enabled: (username, password) of an admin user that start() creates
    # (idempotent) and the helpers below authenticate as.
    admin: tuple[str, str] | None = None
    # Opt-in: "meta", "data", "wal" at these paths instead of under root (a hot restore builds
    # the restored server in staging dirs beside the live ones).
    dirs: dict[str, Path] = field(default_factory=dict)
    # Opt-in, for a server that runs beside the live influxd (a restore's build, a restore
    # test): the live one is otherwise the largest process, the one the kernel's OOM killer
    # takes when the two no longer fit in memory. So this one is the OOM killer's first choice
    # (oom_score_adj 1000), and runs with Go's GOGC at BESIDE_LIVE_GOGC, holding less heap, at
    # nice BESIDE_LIVE_NICE and the lowest best-effort I/O priority.
    beside_live: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.root / "influxdb.conf"

    @property
    def meta(self) -> Path:
        return self.dirs.get("meta", self.root / "meta")

    @property
    def data(self) -> Path:
        return self.dirs.get("data", self.root / "data")

    @property
    def wal(self) -> Path:
        return self.dirs.get("wal", self.root / "wal")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def backup_host(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    def command(self) -> list[str]:
        return [self.binary, "run", "-config", str(self.conf)]

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        data_extra = "".join(
            f"  {k} = {v}\n" for k, v in self.extra_data.items() if plain_key(k) and "\n" not in v
        )
        self.conf.write_text(
            f"""# generated by influx-backupd's sandbox: a throwaway server
reporting-enabled = false
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = {toml_value(self.meta)}

[data]
  dir = {toml_value(self.data)}
  wal-dir = {toml_value(self.wal)}
  query-log-enabled = false
{data_extra}
[http]
  bind-address = "127.0.0.1:{self.http_port}"
  log-enabled = false
  auth-enabled = {"true" if self.admin else "false"}

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[logging]
  level = "warn"
{self.extra_sections}"""
        )
        return self.conf

    def log_tail(self, n: int = 600) -> str:
        """The end of this server's log on one line: why it did not start, for an error line."""
        try:
            text = (self.root / "influxd.log").read_text(errors="replace")
        except OSError:
            return ""
        return text[-n:].strip().replace("\n", " | ")

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers on its own port. free_port() only names a
        port that was free a moment ago: anything may take it before influxd binds it (another
        throwaway, an outgoing connection's ephemeral port). A server that lost its port that way
        is started again on fresh ports, up to PORT_ATTEMPTS times."""
        if not self.conf.exists():
            self.write_config()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            log_start = self._log_size()
            self._spawn()
            try:
                self.wait_ready(timeout)
                break
            except RuntimeError:
                exited = self.proc is not None and self.proc.poll() is not None
                if not (exited and attempt < PORT_ATTEMPTS and self._lost_port(log_start)):
                    raise
                self.http_port, self.rpc_port = free_port(), free_port()
                self.write_config()
        if self.admin:
            # Allowed unauthenticated while no admin exists; a no-op when it exists already.
            name, password = self.admin
            escaped = password.replace("\\", "\\\\").replace("'", "\\'")
            self.query(
                f"CREATE USER \"{name}\" WITH PASSWORD '{escaped}' WITH ALL PRIVILEGES",
                method="POST",
            )

    def _log_size(self) -> int:
        try:
            return (self.root / "influxd.log").stat().st_size
        except OSError:
            return 0

    def _lost_port(self, log_start: int) -> bool:
        """This start's own log lines say a port was taken."""
        try:
            with open(self.root / "influxd.log", "rb") as logfile:
                logfile.seek(log_start)
                return b"address already in use" in logfile.read(1 << 20)
        except OSError:
            return False

    def _spawn(self) -> None:
        logfile = open(self.root / "influxd.log", "ab")  # noqa: SIM115
        try:
            env = dict(os.environ)
            if self.beside_live:
                env["GOGC"] = str(BESIDE_LIVE_GOGC)
            # A signal raised while Popen waits for the exec would leave a server starting
            # whose pid nobody has: held here until self.proc names it; the child lets them
            # through again before its exec (child_preexec).
            with signals_blocked(), server_limits():
                self.proc = subprocess.Popen(
                    self.command(),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=logfile,
                    start_new_session=True,
                    preexec_fn=child_preexec(),
                )
        finally:
            logfile.close()
        if self.beside_live:
            # Raising a score needs no privilege (only lowering does), and this runs before the
            # server has loaded anything. A mark that could not be set is no reason to refuse
            # the restore it protects; the score is then influxd's default.
            with contextlib.suppress(OSError):
                Path(f"/proc/{self.proc.pid}/oom_score_adj").write_text("1000")
            # ...and the CPU and disk go to the live server first (a database restored into
            # it while it serves: its write p99 rose 4.4-fold with the throwaway at nice 0)
            with contextlib.suppress(Exception):
                import psutil

                proc = psutil.Process(self.proc.pid)
                proc.nice(max(proc.nice(), BESIDE_LIVE_NICE))
                proc.ionice(psutil.IOPRIO_CLASS_BE, 7)

    def _request(self, url: str, data: bytes | None = None) -> urllib.request.Request:
        req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
        if self.admin:
            token = base64.b64encode(":".join(self.admin).encode()).decode()
            req.add_header("Authorization", "Basic " + token)
        return req

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=1) as resp:
                return int(resp.status) == 204
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping() and self._listening_itself():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"sandbox influxd exited ({self.proc.returncode}); see {self.root}/influxd.log"
                )
            time.sleep(0.05)
        raise RuntimeError(f"sandbox influxd not ready in {timeout}s; see {self.root}/influxd.log")

    def _listening_itself(self) -> bool:
        """The answer came from this server, not from another one that holds its port (this
        one then fails to bind and exits). True for a server this object did not start."""
        if self.proc is None:
            return True
        return listens(self.proc.pid, self.http_port) is not False

    def killed_by(self) -> str | None:
        """The signal that ended the server this object started ("SIGKILL": the OOM killer's
        signal), or None while it runs or after an exit of its own."""
        code = self.proc.poll() if self.proc is not None else None
        if code is None or code >= 0:
            return None
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"

    def killed_note(self) -> str | None:
        """One clause for an error line when the server died by a signal, else None."""
        killed = self.killed_by()
        if killed is None:
            return None
        note = f"its influxd was killed by {killed}"
        if killed == "SIGKILL" and self.beside_live:
            note += (
                " (when memory runs out, the kernel's OOM killer takes it first, before the live "
                "server: see `dmesg`)"
            )
        return note

    def pids(self) -> list[int]:
        """Every influxd process running this sandbox's config, whoever started it."""
        import psutil

        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.conf) in (proc.info["cmdline"] or []):
                found.append(proc.pid)
        return found

    def stop(self, timeout: float = 40.0) -> None:
        """Stop every influxd of this sandbox (SIGTERM, SIGKILL after timeout). A signal to us
        meanwhile waits until it is done: one that landed while the servers were being looked
        up left a throwaway serving for good (its command's cleanup was over)."""
        with signals_blocked():
            self._stop(timeout)

    def _stop(self, timeout: float) -> None:
        import psutil

        procs = []
        for pid in self.pids():
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
        for proc in procs:
            try:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                continue
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            proc.kill()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.proc = None

    # -- data ---------------------------------------------------------------
    def query(self, q: str, db: str | None = None, method: str = "GET") -> dict[str, Any]:
        params = {"q": q}
        if db:
            params["db"] = db
        body = urllib.parse.urlencode(params).encode()
        if method == "POST":
            req = self._request(self.url + "/query", data=body)
        else:
            req = self._request(self.url + "/query?" + body.decode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, Any] = loads_json(resp.read())
        return result

    def create_db(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"', method="POST")

    def write_points(
        self, db: str, count: int, *, start: int = 0, measurement: str = "cpu"
    ) -> None:
        """count points, one per second from `start` (seconds since 2020-01-01), in batches."""
        base = 1_577_836_800 + start
        batch = 5000
        for offset in range(0, count, batch):
            lines = "\n".join(
                f"{measurement},host=h{(i % 7)} value={i}i {base + i}"
                for i in range(offset, min(offset + batch, count))
            )
            req = self._request(
                self.url + "/write?" + urllib.parse.urlencode({"db": db, "precision": "s"}),
                data=lines.encode(),
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                if resp.status != 204:
                    raise RuntimeError(f"write failed: {resp.status}")

    def count(self, db: str, measurement: str = "cpu") -> int:
        result = self.query(f'SELECT count("value") FROM "{measurement}"', db=db)
        series = result["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    def databases(self) -> list[str]:
        result = self.query("SHOW DATABASES")
        series = result["results"][0].get("series") or [{}]
        return [row[0] for row in series[0].get("values") or [] if row[0] != "_internal"]
