"""A throwaway influxd whose ports were taken between choosing them and binding them.

free_port() names a port that was free a moment ago; under `pytest -n` and on a busy host another
server or an outgoing connection may take it first. CI once saw a restore fail on exactly that
("listen tcp 127.0.0.1:55037: bind: address already in use").
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox


@contextmanager
def held(port: int) -> Iterator[None]:
    """A plain listener on 127.0.0.1:port for as long as the block runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


class PingAnswerer(http.server.BaseHTTPRequestHandler):
    """Another server on the port that answers /ping as influxd does (204)."""

    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def answering_pings(port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), PingAnswerer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def serving(server: Sandbox) -> None:
    """server runs, its own process listens on its port, and what it is told it keeps."""
    assert server.proc is not None and server.proc.poll() is None
    own = {c.laddr[1] for c in psutil.Process(server.proc.pid).net_connections(kind="tcp")}
    assert server.http_port in own and server.rpc_port in own
    server.create_db("kept")
    names = server.query("SHOW DATABASES")["results"][0]["series"][0]["values"]
    assert ["kept"] in names


@pytest.mark.parametrize("which", ["http_port", "rpc_port"])
def test_a_taken_port_is_replaced_by_a_free_one(
    tmp_path: Path, influxd_path: str, which: str
) -> None:
    server = Sandbox(tmp_path / "s", binary=influxd_path)
    taken = getattr(server, which)
    server.write_config()
    with held(taken):
        try:
            server.start()
            assert getattr(server, which) != taken
            serving(server)
            assert f"127.0.0.1:{getattr(server, which)}" in server.conf.read_text()
        finally:
            server.stop()


def test_another_server_answering_pings_on_its_port_is_not_taken_for_it(
    tmp_path: Path, influxd_path: str
) -> None:
    """Before: the other server's 204 counted as "ready", and the throwaway's queries went to it
    while the throwaway itself had exited."""
    server = Sandbox(tmp_path / "s", binary=influxd_path)
    taken = server.http_port
    server.write_config()
    with answering_pings(taken):
        try:
            server.start()
            assert server.http_port != taken
            serving(server)
        finally:
            server.stop()
