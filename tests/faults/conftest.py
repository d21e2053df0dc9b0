"""The fault suite's shared format (README.md here): the `fault` marker, `fault_result`, `ledger`,
and one JSON line per test in $INFLUX_BACKUPD_FAULT_RESULTS for scripts/reliability_report.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from tests.cli_process import run_cli_process
from tests.conftest import Cli, started, write_config

RESULTS_ENV = "INFLUX_BACKUPD_FAULT_RESULTS"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fault(cls, fault, variant=None): what a fault test tries (tests/faults/README.md)",
    )


@dataclass
class FaultResult:
    data_lost: dict[str, int] | None = None
    examples: int = 1
    outcome: str = "passed"
    started: float = field(default_factory=time.monotonic)

    def lost(self, *, points: int = 0, archives: int = 0) -> None:
        self.data_lost = {"points": max(0, points), "archives": max(0, archives)}


_RESULT = pytest.StashKey[FaultResult]()


def _result(item: pytest.Item) -> FaultResult:
    if _RESULT not in item.stash:
        item.stash[_RESULT] = FaultResult()
    return item.stash[_RESULT]


@pytest.fixture
def fault_result(request: pytest.FixtureRequest) -> FaultResult:
    return _result(request.node)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    result = _result(item)
    if report.failed:
        result.outcome = "failed"
    elif report.skipped and result.outcome != "failed":
        result.outcome = "skipped"
    if report.when == "teardown":
        _write(item, result)


def _write(item: pytest.Item, result: FaultResult) -> None:
    path = os.environ.get(RESULTS_ENV)
    marker = item.get_closest_marker("fault")
    if not path:
        return
    if marker is None:
        cls, fault = "?", "(no fault marker: see tests/faults/README.md)"
        variant: object = item.name
    else:
        cls, fault = str(marker.args[0]), str(marker.args[1])
        variant = marker.args[2] if len(marker.args) > 2 else marker.kwargs.get("variant")
        if variant is None:
            callspec = getattr(item, "callspec", None)
            variant = callspec.id if callspec is not None else item.name
    line = {
        "nodeid": item.nodeid,
        "class": cls,
        "fault": fault,
        "variant": str(variant),
        "outcome": result.outcome,
        "data_lost": result.data_lost,
        "examples": result.examples,
        "seconds": round(time.monotonic() - result.started, 1),
    }
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")


# -- what a user would call data lost --------------------------------------------------------


def points(server: Sandbox) -> dict[str, int]:
    """Points per database that the server answers now (nothing when it does not answer)."""
    found: dict[str, int] = {}
    try:
        dbs = server.databases()
    except OSError:
        return found
    for db in dbs:
        query = urllib.parse.urlencode({"q": "SELECT count(*) FROM /.*/", "db": db})
        with urllib.request.urlopen(f"{server.url}/query?{query}", timeout=60) as resp:
            answer = json.loads(resp.read())
        found[db] = sum(
            int(v)
            for series in answer["results"][0].get("series") or []
            for row in series["values"]
            for v in row[1:]
            if isinstance(v, int)
        )
    return found


def backups(storage: Path, names: Collection[str] | None = None) -> dict[str, str]:
    """Every finished backup in storage (cold tar or hot dir) → sha256 of its bytes; of those
    named only, when names is given (a backup made since need not be read, a GB or more in the
    tests that fill the stop window)."""
    found: dict[str, str] = {}
    if not storage.is_dir():
        return found
    for path in sorted(storage.iterdir()):
        name = path.name
        if name.startswith(".") or name.endswith((".json", ".partial", ".incomplete")):
            continue
        if names is not None and name not in names:
            continue
        digest = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path.parent)).encode() + b"\0")
            with open(file, "rb") as fh:  # in chunks: an archive may be larger than memory
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        found[name] = digest.hexdigest()
    return found


@dataclass
class Ledger:
    """What a user has before a fault, compared with what they have after it."""

    server: Sandbox
    storage: Path
    result: FaultResult
    points_before: dict[str, int] = field(default_factory=dict)
    backups_before: dict[str, str] = field(default_factory=dict)

    def take(self) -> None:
        self.points_before = points(self.server)
        self.backups_before = backups(self.storage)

    def settle(self) -> tuple[int, list[str]]:
        """(points lost, backups lost or changed); recorded in the results either way."""
        after = points(self.server)
        lost_points = sum(max(0, n - after.get(db, 0)) for db, n in self.points_before.items())
        now = backups(self.storage, self.backups_before)
        lost = [name for name, sha in self.backups_before.items() if now.get(name) != sha]
        self.result.lost(points=lost_points, archives=len(lost))
        return lost_points, lost


@pytest.fixture
def ledger(tmp_path: Path, sandbox: Sandbox, fault_result: FaultResult) -> Ledger:
    """For a sandbox with the conftest config (storage in tmp_path/archives)."""
    return Ledger(sandbox, tmp_path / "archives", fault_result)


def one_line(stderr: str) -> str:
    """The single error line a refused command prints (log events are JSON lines: skipped)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.lstrip().startswith("{")]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, f"expected one line on stderr, got: {lines}"
    return lines[0]


def data_of(path: Path) -> Any:
    return json.loads(path.read_text())


class Watched:
    """A real `influx-backupd` process whose stderr log events (JSON lines) a thread collects,
    so a test can act at the moment a phase begins."""

    def __init__(
        self, config: Path, *args: str, umask: int | None = None, own_group: bool = False
    ) -> None:
        import subprocess
        import sys
        import threading

        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "influx_backupd", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            umask=-1 if umask is None else umask,
            # a process group of its own, as a shell's job has: the kernel ignores job-control
            # stops (SIGTSTP) sent to a group it counts orphaned, which this worker's may be
            process_group=0 if own_group else None,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def wait_event(self, name: str, timeout: float = 120, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                    return event
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"exited {self.proc.returncode} before {name}: {self.tail()}")
            assert time.monotonic() < deadline, f"no {name} {match} in {timeout}s: {self.tail()}"
            time.sleep(0.005)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) once it exits."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code, out, "".join(self.lines)

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def tail(self) -> str:
        return "".join(self.lines)[-3000:]


@contextmanager
def frozen(proc: subprocess.Popen[Any]) -> Iterator[None]:
    """proc stopped (SIGSTOP) while the body runs, then continued. A cold run frozen in its
    stop window keeps the window open as long as the body needs, whatever the load, where a
    filler file copied for that long would be written, synced and hashed whole once the run
    goes on; what the run does is the same, only later."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


@contextmanager
def backup_frozen_in_window(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> Iterator[tuple[Path, Watched]]:
    """A foreground cold `backup` of 2,000 points, frozen (SIGSTOP) as its copy begins, while
    the body runs: influxd stopped, the run paused; it goes on as the body ends. A 200 MB
    filler (zeros, holes = "fill") keeps the copy long enough to freeze it there under any
    load. Yields its config and the process (finish() it after)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    config = write_config(tmp_path, sandbox, holes="fill")
    ledger.take()
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(200_000_000)
    backup = Watched(config, "backup")
    backup.wait_event("archive.writing", phase="copy")
    with frozen(backup.proc):
        assert not sandbox.pids(), "influxd is stopped"
        yield config, backup


def kill_backup_mid_copy(config: Path, sandbox: Sandbox, filler: int) -> None:
    """SIGKILL of config's cold direct `backup` as its copy begins, influxd stopped by it: a
    sparse filler of `filler` bytes in the data dir keeps the stop window open long enough to
    aim at (written out whole by the copy), removed after the kill."""
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(filler)
    backup = Watched(config, "backup", "--json")
    backup.wait_event("archive.writing", phase="copy")
    backup.kill()
    (sandbox.data / "filler.bin").unlink()


def hold_port(port: int) -> socket.socket:
    """What keeps influxd from starting: another socket listening on its HTTP port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def run_cli(config: Path, *args: str, umask: int | None = None, timeout: float = 300) -> Any:
    """Like tests.conftest.Cli, with the caller's umask chosen."""
    return run_cli_process(
        ["--config", str(config), *args],
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        umask=umask,
    )


# -- one server with a cold and a hot backup, shared by a module's variants ------------------

COLD_AND_HOT = [
    {"name": "nightly", "mode": "cold", "copy": "direct"},
    {"name": "hotjob", "mode": "hot"},
]


@dataclass
class BackedUp:
    root: Path
    server: Sandbox
    cli: Cli
    runs: list[dict[str, Any]]  # the records of the COLD_AND_HOT backups, in that order


@contextmanager
def backed_up(
    tmp_path_factory: pytest.TempPathFactory, name: str, points: int
) -> Iterator[BackedUp]:
    """A real influxd with `points` points in database metrics, and one backup by each job of
    COLD_AND_HOT (both ok): for a module fixture, under a temp dir of its own."""
    binary = influxd_binary()
    if binary is None:
        pytest.fail("influxd is not installed")
    root = tmp_path_factory.mktemp(name)
    with started(Sandbox(root / "server", binary=binary)) as server:
        server.create_db("metrics")
        server.write_points("metrics", points)
        cli = Cli(write_config(root, server, jobs=COLD_AND_HOT))
        runs = [cli.json("backup", "--job", job["name"]) for job in COLD_AND_HOT]
        assert [r["status"] for r in runs] == ["ok", "ok"], runs
        yield BackedUp(root, server, cli, runs)


HELD = """
import importlib, time
_module = importlib.import_module({module!r})
_real = getattr(_module, {function!r})
def _held(*args, **kwargs):
    time.sleep({seconds!r})
    return _real(*args, **kwargs)
setattr(_module, {function!r}, _held)
"""


def held_env(tmp_path: Path, target: str, seconds: float) -> dict[str, str]:
    """The environment of a CLI or daemon process in which target ("package.module:function",
    as the caller looks it up) sleeps `seconds` first (a sitecustomize): a window held open at a
    known step, long enough for a test's signal on a loaded machine."""
    module, function = target.split(":")
    site = tmp_path / f"held-{module.rsplit('.', 1)[-1]}-{function}"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        HELD.format(module=module, function=function, seconds=seconds)
    )
    return {"PYTHONPATH": os.pathsep.join([str(site), *__import__("sys").path])}
