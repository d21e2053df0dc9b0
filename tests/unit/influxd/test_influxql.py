"""InfluxQL over HTTP against a real socket: retries while a shard opens, one line on refusal.

The server here is a small stand-in (http.server) that answers like influxd 1.6's /query, so
the moments the real server shows only by chance (a shard just restored) can be replayed.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from influx_backupd.influxd import influxql


@contextmanager
def answering(*answers: tuple[int, dict[str, object]]) -> Iterator[list[str]]:
    """A /query endpoint giving these answers in turn (the last one repeats)."""
    queue = list(answers)
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.path)
            status, body = queue.pop(0) if len(queue) > 1 else queue[0]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        seen.insert(0, f"http://127.0.0.1:{server.server_address[1]}")
        yield seen
    finally:
        server.shutdown()
        server.server_close()


OK = (200, {"results": [{"series": [{"name": "databases", "values": [["metrics"]]}]}]})


@pytest.mark.parametrize("transient", ["shard is disabled", "engine is closed"])
def test_a_shard_still_opening_is_waited_out(transient: str) -> None:
    busy = (200, {"results": [{"error": transient}]})
    with answering(busy, busy, OK) as seen:
        series = influxql.query(seen[0], "SHOW DATABASES", shard_wait=10)
    assert influxql.values(series) == [["metrics"]]
    assert len(seen) - 1 == 3, "asked again until the shard answered"


def test_without_shard_wait_the_first_error_is_the_answer() -> None:
    closed = (200, {"results": [{"error": "engine is closed"}]})
    with answering(closed, OK) as seen, pytest.raises(influxql.QueryError, match="engine is"):
        influxql.query(seen[0], "SHOW DATABASES")


def test_other_errors_are_not_retried() -> None:
    missing = (200, {"results": [{"error": "database not found: x"}]})
    with answering(missing, OK) as seen, pytest.raises(influxql.QueryError, match="not found"):
        influxql.query(seen[0], "SHOW MEASUREMENTS", "x", shard_wait=10)
    assert len(seen) - 1 == 1


def test_a_refusal_says_what_to_set() -> None:
    with answering((401, {"error": "unable to parse authentication credentials"})) as seen:
        with pytest.raises(influxql.AuthError, match=r"set \[influxd\] username and password_file"):
            influxql.query(seen[0], "SHOW DATABASES")
        creds = influxql.Credentials("backupd", "s3cret")
        with pytest.raises(influxql.AuthError) as refused:
            influxql.query(seen[0], "SHOW DATABASES", credentials=creds)
    assert "'backupd'" in str(refused.value) and "s3cret" not in str(refused.value)
