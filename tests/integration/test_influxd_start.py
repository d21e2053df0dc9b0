"""Influxd.start against a real influxd that exits before it answers: the error says why."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.influxd.server import Influxd, StartFailed
from tests.conftest import write_config


def test_a_start_that_exits_before_answering_quotes_the_last_line_of_its_log(
    tmp_path: Path, influxd_path: str
) -> None:
    """Its HTTP port taken, influxd exits at once. Before: "influxd exited with status 1
    before answering …/ping", the reason only in the log."""
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    server.write_config()
    config = load(write_config(tmp_path, server, influxd={"start_timeout": "60s"}))
    log = tmp_path / "influxd.log"
    log.write_text("an earlier start's last line\n")
    with socket.socket() as taken:  # listening, never answering HTTP
        taken.bind(("127.0.0.1", server.http_port))
        taken.listen()
        with pytest.raises(StartFailed) as failed:
            Influxd(config).start(log_path=log)
    message = str(failed.value)
    assert "exited with status 1 before answering" in message, message
    assert f"its log {log} ends: " in message, message
    assert "address already in use" in message.split(" ends: ", 1)[1], message
    assert "\n" not in message and "earlier start" not in message
