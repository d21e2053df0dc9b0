"""/ping on a server whose /ping needs credentials (1.8's `ping-auth-enabled = true`).

influxd 1.6 (the peer the rest of the suite runs) has no such option, so the server here is a
stand-in on a real socket that answers /ping like 1.8 does with it on: 401 without (good)
credentials, 204 with them, X-Influxdb-Version and Date on both.
"""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from influx_backupd.core.config import load
from influx_backupd.influxd.influxql import Credentials, ping_headers
from influx_backupd.influxd.server import Influxd
from influx_backupd.jobs.hot import server_clock

GOOD = "Basic " + base64.b64encode(b"backup:s3cret").decode()


@contextmanager
def ping_auth_server(status_without: int = 401) -> Iterator[tuple[str, list[str | None]]]:
    """(url, the Authorization header of every /ping seen)."""
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            seen.append(auth)
            self.send_response(204 if auth == GOOD else status_without)
            self.send_header("X-Influxdb-Version", "1.8.10")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def config_for(tmp_path: Path, url: str, with_credentials: bool) -> Path:
    port = url.rsplit(":", 1)[1]
    conf = tmp_path / "influxdb.conf"
    conf.write_text(
        f'[meta]\n  dir = "{tmp_path}/meta"\n[data]\n  dir = "{tmp_path}/data"\n'
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  auth-enabled = true\n'
    )
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    extra = f'username = "backup"\npassword_file = "{secret}"\n' if with_credentials else ""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[influxd]\nconfig = "{conf}"\nservice = "influxdb.service"\n{extra}'
        f'[storage]\ndir = "{tmp_path / "archives"}"\n'
    )
    return path


@pytest.mark.parametrize("with_credentials", [False, True])
def test_a_server_that_wants_credentials_on_ping_is_up(
    tmp_path: Path, with_credentials: bool
) -> None:
    """A cold run starts influxd and waits for /ping: a 401 must not read as 'never came up'
    (the start would be reported failed, and a restore rolled back)."""
    with ping_auth_server() as (url, seen):
        config = load(config_for(tmp_path, url, with_credentials))
        assert config.url == url
        server = Influxd(config)
        assert server.ping()
        server.wait_ready(timeout=2)
    assert seen[-1] == (GOOD if with_credentials else None), "credentials sent when configured"


def test_ping_headers_come_with_a_401_too() -> None:
    """The version (the policy's capability) and Date (a hot run's server clock)."""
    with ping_auth_server() as (url, _seen):
        answer = ping_headers(url, timeout=2)
        assert answer is not None
        assert answer[0]["X-Influxdb-Version"] == "1.8.10"
        assert server_clock(url, timeout=2) is not None
        good = server_clock(url, timeout=2, credentials=Credentials("backup", "s3cret"))
        assert good is not None


def test_a_server_error_on_ping_is_not_an_answer() -> None:
    with ping_auth_server(status_without=500) as (url, _seen):
        assert ping_headers(url, timeout=2) is None
