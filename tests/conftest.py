"""Shared fixtures: a real sandbox influxd per test, a config pointing at it, a CLI runner."""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from tests.cli_process import run_cli_process

STAND_INS = Path(__file__).parent / "stand_ins"


def descendants_named(pid: int, part: str) -> list[psutil.Process]:
    """pid's descendants whose name holds part; one that exits while they are read is left
    out (a shell's short-lived children: name() of a gone process raises)."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if part in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Polls predicate until it is true; fails naming what never came."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.005)


def throwaway_influxds(storage: Path) -> list[psutil.Process]:
    """influxd processes serving a config in a verify/restore scratch dir of this storage dir.
    Scoped to one storage dir: tests run side by side (pytest -n) and must not see, or stop,
    each other's throwaways."""
    prefix = str(storage / ".verify-")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if any(a.startswith(prefix) for a in argv):
            found.append(proc)
    return found


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP stand-in on 127.0.0.1 (a /ping, a receiver) in a thread while the body runs:
    its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Silent:
    """A TCP peer that accepts and never answers: its port, the connections it holds."""

    port: int
    accepted: list[socket.socket] = field(default_factory=list)


@contextmanager
def silent() -> Iterator[Silent]:
    """A TCP listener on 127.0.0.1 that accepts connections and never reads or answers them (a
    hung webhook, a snapshot service that hangs) in a thread while the body runs."""
    sock = socket.create_server(("127.0.0.1", 0))
    peer = Silent(sock.getsockname()[1])

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            peer.accepted.append(conn)  # held open, never read from or answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        # shutdown wakes the blocked accept(); a close alone leaves the port listening (Linux)
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join()
        for conn in peer.accepted:
            conn.close()


@pytest.fixture
def influxd_path() -> str:
    found = influxd_binary()
    if found is None:
        pytest.fail("influxd is not installed: run the README's test command, which installs it")
    return found


@contextmanager
def started(server: Sandbox) -> Iterator[Sandbox]:
    """server with its config written and running; stopped on the way out."""
    server.write_config()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sandbox(tmp_path: Path, influxd_path: str) -> Iterator[Sandbox]:
    """A real influxd 1.x on free ports, its dirs under tmp_path/server."""
    with started(Sandbox(tmp_path / "server", binary=influxd_path)) as server:
        yield server


def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A copy of info to write again, with tarfile's addfile, over the member's whole contents:
    a file with holes read from our archive keeps its GNU.sparse pax records, which addfile
    would write over data without the map they announce (a copy tarfile cannot read back)."""
    copied = copy.copy(info)
    copied.pax_headers = {
        key: value for key, value in info.pax_headers.items() if not key.startswith("GNU.sparse.")
    }
    copied.sparse = None
    return copied


def whole(tar: tarfile.TarFile, info: tarfile.TarInfo) -> tuple[tarfile.TarInfo, IO[bytes] | None]:
    """addfile's arguments to write member info of tar again, whole (see plain)."""
    return plain(info), tar.extractfile(info) if info.isreg() else None


def write_config(
    tmp_path: Path,
    server: Sandbox,
    *,
    influxd: dict[str, Any] | None = None,
    jobs: list[dict[str, Any]] | None = None,
    extra: str = "",
    daemon: dict[str, Any] | None = None,
    holes: str | None = None,
) -> Path:
    """holes: every job's `holes`; "fill" where a test's sparse filler file must make the copy
    (the stop window) last, as a file of data would."""
    section: dict[str, Any] = {
        "config": str(server.conf),
        "command": server.command(),
        "user": "root",
        "group": "root",
        "stop_timeout": "40s",
        "start_timeout": "30s",
    }
    section.update(influxd or {})
    lines = [
        "[daemon]",
        f'state_dir = "{tmp_path / "state"}"',
        *(f"{k} = {json.dumps(v)}" for k, v in (daemon or {}).items()),
        "",
        "[influxd]",
        *(f"{k} = {json.dumps(v)}" for k, v in section.items() if v is not None),
        "",
        "[storage]",
        f'dir = "{tmp_path / "archives"}"',
    ]
    # copy = "direct": these tests watch the stop window's tar; staged has tests/integration/test_staged.py
    default_job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    for job in jobs or [default_job]:
        job = {**job, "holes": holes} if holes is not None else job
        lines += ["", "[[job]]", *(f"{k} = {json.dumps(v)}" for k, v in job.items())]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def new_host_config(tmp_path: Path, server: Sandbox, **settings: Any) -> Path:
    """The documented new-host route: a config under tmp_path/newhost with an empty state_dir
    (no catalog) and tmp_path's storage dir (settings: write_config's)."""
    home = tmp_path / "newhost"
    home.mkdir()
    config = write_config(home, server, **settings)
    config.write_text(
        config.read_text().replace(str(home / "archives"), str(tmp_path / "archives"))
    )
    return config


def log_events(text: str, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines in a command's stderr (off a tty, every event is one), or those of
    one event; other lines (a human one-liner, a traceback) are skipped."""
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and (name is None or event.get("event") == name):
            found.append(event)
    return found


@dataclass
class FailureHook:
    """A job's on_failure that writes the INFLUX_BACKUPD_ variables it was given to a file."""

    out: Path

    @property
    def argv(self) -> list[str]:
        return ["sh", "-c", f"env | grep ^INFLUX_BACKUPD_ > {self.out}"]

    def called(self) -> bool:
        """Whether it ran and was told an error."""
        return self.out.exists() and "INFLUX_BACKUPD_ERROR=" in self.out.read_text()

    def told(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.out.read_text().splitlines())


def failure_hooked(tmp_path: Path, **when: str) -> tuple[dict[str, Any], FailureHook]:
    """The default job (cold, direct copy, nightly at 03:00 unless `when` says otherwise, e.g.
    every="1h") with a FailureHook writing to tmp_path/on_failure.env."""
    hook = FailureHook(tmp_path / "on_failure.env")
    job = {
        "name": "nightly",
        **(when or {"schedule": "0 3 * * *"}),
        "mode": "cold",
        "copy": "direct",
        "on_failure": hook.argv,
    }
    return job, hook


def stopped_with_deletes_pending(server: Sandbox, db: str, tries: int = 5) -> list[Path]:
    """A DELETE and a DROP SERIES in db's cpu, then the server stopped at once, until it stopped
    before its compaction took them in (about a second's race): the .tombstone files left. The
    server is left stopped; which points went is for the caller to read from it afterwards."""
    for attempt in range(tries):
        server.query(
            f"DELETE FROM cpu WHERE time >= '2020-01-01T00:0{attempt * 2}:00Z' "
            "AND time < '2020-01-01T00:05:00Z'",
            db=db,
            method="POST",
        )
        server.query(f"DROP SERIES FROM cpu WHERE host='h{attempt + 1}'", db=db, method="POST")
        server.stop()
        found = list(server.data.glob(f"{db}/*/*/*.tombstone"))
        if found:
            return found
        server.start()
    raise AssertionError(f"{tries} tries, and the server compacted the deletes before it stopped")


@dataclass
class Cli:
    config: Path

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        done = run_cli_process(
            ["--config", str(self.config), *args],
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{args} exited {done.returncode}: {done.stderr[-2000:]}")
        return done

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "influx_backupd", "--config", str(self.config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def json(self, *args: str) -> Any:
        done = self(*args, "--json", check=False)
        try:
            return json.loads(done.stdout)
        except ValueError:
            raise AssertionError(
                f"{args}: no JSON ({done.returncode}): {done.stderr[-2000:]}"
            ) from None


@pytest.fixture
def config_path(tmp_path: Path, sandbox: Sandbox) -> Path:
    return write_config(tmp_path, sandbox)


@pytest.fixture
def cli(config_path: Path) -> Cli:
    return Cli(config_path)


MakeConfig = Callable[..., Path]


Writes = list[tuple[str, int]]  # (database, points) written before one backup


def hot_chain(
    cli: Cli, server: Sandbox, batches: list[Writes], *, job: str | None = None
) -> list[Any]:
    """A hot chain as the tests need it: before each backup, its batch of writes (each batch's
    points at new timestamps, so that nothing overwrites); the first backup a full, the others
    increments, every link ok. Returns the links' records, full first."""
    links: list[Any] = []
    for number, batch in enumerate(batches):
        for db, points in batch:
            server.create_db(db)  # CREATE DATABASE is idempotent
            server.write_points(db, points, start=number * 100_000)
        link = cli.json("backup", *(["--job", job] if job else []))
        assert link["status"] == "ok", link["error"]
        links.append(link)
    assert [link["kind"] for link in links] == ["full"] + ["incremental"] * (len(links) - 1)
    for parent, child in itertools.pairwise(links):
        assert child["parent_id"] == parent["id"]
    return links


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test (and its fixtures, torn down before this autouse one), kill what still
    runs on the test's own files: a throwaway influxd, a stand-in tool, our CLI, and their
    children. A test that fails between killing our process and its own clean-up would
    otherwise leave them running on a dir pytest then deletes, for the rest of the suite."""
    yield
    tmp_path = request.node.funcargs.get("tmp_path")
    if not isinstance(tmp_path, Path):
        return
    prefix = str(tmp_path)  # the dir itself or below it, not test_x10 for test_x1
    left: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or ()
        if proc.pid != os.getpid() and any(a == prefix or prefix + os.sep in a for a in argv):
            with suppress(psutil.Error):
                left += [proc, *proc.children(recursive=True)]
    for proc in left:
        with suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under pytest -n (scripts/test.sh), the tests of a module that builds a module-scoped
    fixture (a shared influxd with backups, CLI outcomes gathered side by side, a booted
    container) run on one worker, so the fixture is built once, not once per worker. Marked as
    each test is collected: pytest-xdist reads the marker in its collection_modifyitems."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else []
    if any(d and d[-1].scope in ("module", "package") for d in defs):
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def pytest_configure(config: pytest.Config) -> None:
    """pytest 9.2 ignores the group tag pytest-xdist 3.8 puts on each grouped test's nodeid
    (pytest-dev/pytest-xdist#1386): a module's tests would be spread over workers, each
    building its own shared fixture (a stateful container missing its installed package).
    Refused in one line rather than failing as a dozen unrelated tests."""
    workers = getattr(config.option, "numprocesses", None)
    if not workers or getattr(config.option, "dist", None) != "loadgroup":
        return
    import xdist  # present whenever -n is

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())

    if version(pytest.__version__) >= (9, 2) and version(xdist.__version__) <= (3, 8):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__} drops the "
            "test groups tests/conftest.py sets: pip install -e '.[test]' (pyproject.toml "
            "pins pytest below 9.2), or run the tests one at a time (TEST_WORKERS=0)"
        )


def raised_promptly(read: Callable[[], object]) -> BaseException | None:
    """What read() raised (None: it returned), or a failed test if it was still reading after
    5 s (a FIFO nobody writes to blocks a plain read for ever)."""
    outcome: list[BaseException | None] = []

    def reader() -> None:
        try:
            read()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        pytest.fail("still reading after 5 s")
    return outcome[0]


def catalog_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at each Catalog.list() from now on: reads a change must not
    multiply (a catalog parsed again per link, per metrics write)."""
    from influx_backupd.store.catalog import Catalog

    reads: list[int] = []
    listed = Catalog.list

    def counted(self: Catalog, job: str | None = None) -> list[Any]:
        reads.append(1)
        return listed(self, job)

    monkeypatch.setattr(Catalog, "list", counted)
    return reads
