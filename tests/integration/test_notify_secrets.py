"""apprise's own warnings are logged, but never a secret part of the configured URLs: a
receiver answering 500 to ntfy (its topic is its secret on ntfy.sh) and to json:// (a token
in the path and the query) — real apprise, a real local HTTP receiver and a real influxd."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, log_events, serving, write_config


class _Refusing(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def refusing() -> Iterator[str]:
    """host:port of a receiver that answers 500 to everything."""
    with serving(_Refusing) as port:
        yield f"127.0.0.1:{port}"


pytestmark = pytest.mark.influxd

SECRETS = ("tokuser", "TOPICPW", "brokentopic42", "brokenhook77", "qtoken99", "jsonpw55")


def test_library_warnings_hold_no_secret_of_the_urls(
    tmp_path: Path, sandbox: Sandbox, refusing: str
) -> None:
    urls = [
        f"ntfy://tokuser:TOPICPW@{refusing}/brokentopic42?mode=private",
        f"json://jsonuser:jsonpw55@{refusing}/brokenhook77?token=qtoken99",
    ]
    extra = '\n[notify]\ntimeout = "21d"\nsuccess = [' + ", ".join(f'"{u}"' for u in urls) + "]\n"
    config = write_config(tmp_path, sandbox, extra=extra)
    done = Cli(config)("backup", "--json")
    assert done.returncode == 0, done.stderr[-3000:]  # 21d: the largest timeout, no traceback
    assert "Traceback" not in done.stderr
    warnings = log_events(done.stderr, "notify.library")
    assert warnings, done.stderr[-3000:]
    assert log_events(done.stderr, "notify.failed")
    for secret in SECRETS:
        assert secret not in done.stderr, (secret, done.stderr[-3000:])
