"""A metrics_file or pidfile that exists and is not a regular file (a device like /dev/null, a
FIFO, a socket, a directory): load refuses it in one line; the writer never replaces it by a
file; every read back is bounded and never opens a device nor blocks on a FIFO.

Every node is made under the test's tmp dir: nothing here points at the machine's /dev."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from influx_backupd.cli import main as cli
from influx_backupd.core.atomic import NotRegularFile, read_small, replace_file
from influx_backupd.core.config import load
from influx_backupd.influxd.server import Influxd
from influx_backupd.report import metrics
from influx_backupd.store.state import MARKER_MAX, WANTED_DIR, CrashMarker, lock_wanted
from tests.unit.core.test_config import base, influxdb_conf, write

__all__ = ["influxdb_conf"]


def _device(path: Path, minor: int) -> None:
    """A character device like /dev/null (1, 3) or /dev/zero (1, 5), at path."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")


@contextlib.contextmanager
def _socket(path: Path) -> Iterator[None]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        yield


NODES: dict[str, tuple[Callable[[Path], None], str]] = {
    "null device": (lambda p: _device(p, 3), "a character device"),
    "zero device": (lambda p: _device(p, 5), "a character device"),
    "fifo": (os.mkfifo, "a FIFO"),
    "directory": (os.mkdir, "a directory"),
}


def _kind(path: Path) -> int:
    return stat.S_IFMT(path.lstat().st_mode)


@pytest.mark.parametrize("key", ["metrics_file", "pidfile"])
@pytest.mark.parametrize("node", [*NODES, "socket", "symlink to a fifo"])
def test_check_config_refuses_a_metrics_file_or_pidfile_that_is_no_regular_file(
    tmp_path: Path,
    influxdb_conf: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
    node: str,
) -> None:
    target = tmp_path / "node"
    with contextlib.ExitStack() as stack:
        if node == "socket":
            stack.enter_context(_socket(target))
            kind = "a socket"
        elif node == "symlink to a fifo":
            os.mkfifo(tmp_path / "fifo")
            target.symlink_to(tmp_path / "fifo")
            kind = "a FIFO"
        else:
            make, kind = NODES[node]
            make(target)
        before = _kind(target)
        body = base(influxdb_conf, tmp_path)
        if key == "metrics_file":
            body = body.replace("[daemon]\n", f'[daemon]\nmetrics_file = "{target}"\n')
            section = "daemon"
        else:
            body = body.replace("[influxd]\n", f'[influxd]\npidfile = "{target}"\n')
            section = "influxd"
        path = write(tmp_path, body)
        assert cli.main(["--config", str(path), "check-config"]) == 78
        err = capsys.readouterr().err
        assert err == (
            f"influx-backupd: {path}: {section}.{key}: {target} is {kind}: "
            "must be a regular file (or not exist yet)\n"
        )
        assert _kind(target) == before, "the node is left as it is"
        assert not (tmp_path / "state").exists()


def test_a_metrics_file_or_pidfile_not_there_yet_or_regular_is_taken(
    tmp_path: Path, influxdb_conf: Path
) -> None:
    (tmp_path / "metrics.prom").write_text("")
    body = base(influxdb_conf, tmp_path, influxd_extra=f'pidfile = "{tmp_path / "none.pid"}"')
    body = body.replace("[daemon]\n", f'[daemon]\nmetrics_file = "{tmp_path / "metrics.prom"}"\n')
    assert cli.main(["--config", str(write(tmp_path, body)), "check-config"]) == 0


@pytest.mark.parametrize("node", NODES)
def test_no_file_is_renamed_over_a_node(tmp_path: Path, node: str) -> None:
    """Before: os.replace put a regular file where the device was (the machine's /dev/null
    became a file)."""
    target = tmp_path / "node"
    make, _ = NODES[node]
    make(target)
    before = _kind(target)
    with pytest.raises(NotRegularFile, match="not a regular file"):
        replace_file(target, b"1\n")
    assert _kind(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node"], "no temp file is left"


def test_mark_left_down_leaves_a_device_or_socket_as_it_is(tmp_path: Path) -> None:
    """A cold run marks left_down just before its stop: over a socket (which open() refuses)
    or a null device (read as empty) the metrics file was written from nothing, by a rename
    over the node. Now it is said and the run goes on."""
    null = tmp_path / "null"
    _device(null, 3)
    sock = tmp_path / "sock"
    with _socket(sock):
        for path in (null, sock):
            before = _kind(path)
            with pytest.raises(NotRegularFile):
                metrics.mark_left_down(path)
            metrics.mark_left_down_before_stop(
                path, structlog.get_logger(), 0.0
            )  # said, not raised
            assert _kind(path) == before


@pytest.mark.parametrize("node", NODES)
def test_read_small_refuses_a_node_without_reading_or_blocking(tmp_path: Path, node: str) -> None:
    """A FIFO (no writer: open() would block for ever) and /dev/zero (read_text() never ends,
    MemoryError) are refused before they are opened."""
    target = tmp_path / "node"
    make, kind = NODES[node]
    make(target)
    with pytest.raises(NotRegularFile, match=f"it is {kind}, not a regular file"):
        read_small(target, 64)
    # what reads the metrics file back keeps nothing of it, and says nothing
    assert metrics.carried_over(target, tmp_path) is None


def test_read_small_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"7" * 65)
    with pytest.raises(OSError, match="larger than 64 bytes") as caught:
        read_small(path, 64)
    assert caught.value.errno == errno.EFBIG
    path.write_bytes(b"7" * 64)
    assert read_small(path, 64) == b"7" * 64


@pytest.mark.parametrize("node", ["zero device", "fifo"])
def test_locate_reads_no_pidfile_turned_into_a_node_after_load(
    tmp_path: Path, influxdb_conf: Path, node: str
) -> None:
    """The pidfile was read with read_text(): a FIFO blocked open() for ever, /dev/zero's
    zeros filled the memory. Now it names no pid, and influxd is looked for by its config."""
    pidfile = tmp_path / "influxd.pid"
    body = base(influxdb_conf, tmp_path, influxd_extra=f'pidfile = "{pidfile}"')
    body = body.replace('service = "influxdb.service"', 'command = ["/usr/bin/influxd"]')
    config = load(write(tmp_path, body))
    make, _ = NODES[node]
    make(pidfile)
    assert Influxd(config).locate() is None  # no influxd runs with this test's influxdb.conf


@contextlib.contextmanager
def _within(seconds: int) -> Iterator[None]:
    """Fails the test, rather than hanging it, on a read that blocks (a FIFO opened for read)."""

    def hung(_signum: int, _frame: object) -> None:
        raise AssertionError(f"blocked for {seconds}s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_as_crash_marker_or_lock_request_is_read_without_blocking(tmp_path: Path) -> None:
    """The audit's repro: a FIFO at influxd-stopped.json hung every command (status, list,
    recover: ExecStopPost= for up to TimeoutStopSec), one in lock-wanted/ every backup. Now a
    marker that is no regular file reads as torn (influxd may be down: recovery acts on it), and
    such a lock request is passed over; a huge marker is not read whole."""
    os.mkfifo(tmp_path / "influxd-stopped.json")
    (tmp_path / WANTED_DIR).mkdir()
    os.mkfifo(tmp_path / WANTED_DIR / "123.json")
    with _within(5):
        assert CrashMarker(tmp_path).read() == {"run_id": None}
        assert lock_wanted(tmp_path) is None
    os.unlink(tmp_path / "influxd-stopped.json")
    (tmp_path / "influxd-stopped.json").write_bytes(b" " * (MARKER_MAX + 1))
    assert CrashMarker(tmp_path).read() == {"run_id": None}
