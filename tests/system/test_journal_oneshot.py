"""A one-shot command started by systemd (a timer's service, `systemd-run`) logs to the journal
as fields, with the MESSAGE_IDs people alert on, as the daemon does: not JSON text lines in
MESSAGE. The journal is journald's protocol on a socket of the test's; systemd's own journald is
tested in tests/systemd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from influx_backupd.core.log import MESSAGE_IDS
from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.system.test_daemon import Datagrams, journal_fields


def under_systemd(tmp_path: Path, config: Path, *args: str) -> tuple[int, str, list[bytes]]:
    """`influx-backupd ARGS` with stdout and stderr on "the journal stream" systemd would give a
    service: its exit status, what reached the stream, the journal entries."""
    journal = Datagrams(tmp_path, "journal.sock")
    stream = tmp_path / "stream.out"
    try:
        with open(stream, "wb") as out:
            st = os.fstat(out.fileno())
            done = subprocess.run(
                [sys.executable, "-m", "influx_backupd", "--config", str(config), *args],
                stdout=out,
                stderr=out,
                env={
                    **os.environ,
                    "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
                    "INFLUX_BACKUPD_JOURNAL_SOCKET": str(journal.path),
                },
                timeout=300,
            )
        journal.wait_for(lambda m: b"EVENT=run.finished" in m, timeout=10)
    finally:
        journal.close()
    return done.returncode, stream.read_text(), journal.messages


def finished(entries: list[bytes]) -> dict[bytes, bytes]:
    [entry] = [journal_fields(m) for m in entries if b"EVENT=run.finished" in m]
    return entry


def test_a_backup_run_by_a_timer_logs_fields_with_its_message_id(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    status, stream, entries = under_systemd(tmp_path, config, "backup")
    assert status == 0, stream
    entry = finished(entries)
    assert entry[b"MESSAGE_ID"] == MESSAGE_IDS["run_ok"].encode()
    assert entry[b"JOB"] == b"nightly"
    assert entry[b"SYSLOG_IDENTIFIER"] == b"influx-backupd"
    assert any(b"PHASE=stop" in m for m in entries)
    # events are not printed a second time as JSON lines on the stream
    assert not [line for line in stream.splitlines() if line.startswith("{")], stream
    assert sandbox.ping()


def test_a_failed_run_under_systemd_carries_the_failure_message_id(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    # a hot job whose snapshot service is not there, with no fallback: the run fails, influxd
    # is never stopped
    config = write_config(
        tmp_path,
        sandbox,
        influxd={"backup_host": "127.0.0.1:1"},
        jobs=[{"name": "live", "schedule": "0 3 * * *", "mode": "hot", "fallback": "none"}],
    )
    status, stream, entries = under_systemd(tmp_path, config, "backup", "--json")
    assert status == 1, stream
    entry = finished(entries)
    assert entry[b"MESSAGE_ID"] == MESSAGE_IDS["run_failed"].encode()
    assert entry[b"PRIORITY"] in (b"3", b"4")
    record = json.loads(stream.strip().splitlines()[-1])  # the command's own output stays
    assert record["status"] == "failed"
    assert sandbox.ping()
