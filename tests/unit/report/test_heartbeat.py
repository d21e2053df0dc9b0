"""A heartbeat that fails says why without its URL's secret (a healthchecks UUID in the path, a
token in the query): the error text of urllib and http.client quotes the path alone."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from influx_backupd.core.config_values import url_problem
from influx_backupd.report.heartbeat import ping


@pytest.mark.parametrize(
    "base",
    [
        "http://127.0.0.1:9/ok/HB SECRETTOK?k=QTOKEN",  # a space in the path: http.client refuses
        "http://127.0.0.1:9/ok/HBSECRETTOK?k=QTOKEN",  # nothing listens: connection refused
        "http://127.0.0.1:9/ok/HBSECRETTOKé?k=QTOKEN",  # not ASCII: the path cannot be encoded
    ],
)
def test_a_failed_ping_names_neither_the_path_nor_the_query(base: str) -> None:
    with capture_logs() as events:
        assert ping(base, "start", timeout=5) is False
    failed = [e for e in events if e["event"] == "heartbeat.failed"]
    assert len(failed) == 1, events
    said = repr(failed[0])
    assert "SECRETTOK" not in said and "QTOKEN" not in said, said
    assert failed[0]["error"], failed[0]  # still says what went wrong


@pytest.mark.parametrize(
    "url",
    [
        "https://hc-ping.com/5ec2e7 token",
        "https://hc-ping.com/5ec2e7-token ",  # pasted with a trailing space
        "https://hc-ping.com/5ec2e7-token\u00a0",  # a no-break space
        "https://hc-ping.com/5ec2e7-tökén",
        "https://hc-ping.com/5ec2e7?k=tökén",
    ],
)
def test_a_heartbeat_url_no_request_could_send_is_refused_without_it(url: str) -> None:
    said = url_problem(url, "heartbeat_url")
    assert said is not None and "spaces or non-ASCII" in said, said
    assert "5ec2e7" not in said and "token" not in said.replace("tokens", ""), said


def test_an_encoded_heartbeat_url_is_accepted() -> None:
    assert url_problem("https://hc-ping.com/5ec2e7%20token?k=t%C3%B6k", "heartbeat_url") is None
    assert url_problem(" http://127.0.0.1:8086", "url") is None  # urllib strips leading spaces
