"""What the commands print for a record: the short record's lines, and --json's times."""

from __future__ import annotations

import pytest

from influx_backupd.cli.output import print_record
from influx_backupd.store.record import RunRecord


@pytest.mark.parametrize("status", ["ok", "failed"])
def test_a_hot_record_has_no_downtime_sum(status: str, capsys: pytest.CaptureFixture[str]) -> None:
    record = RunRecord(id="20261126T122754Z-3f9a", job="hourly", mode="hot", status=status)
    record.started_at = record.finished_at = 1_790_000_000.0
    print_record(record, as_json=False)
    downtime = [line for line in capsys.readouterr().out.splitlines() if "downtime" in line]
    assert downtime == ["  downtime  none: hot, influxd kept serving"]


def test_a_cold_record_adds_up_its_phases(capsys: pytest.CaptureFixture[str]) -> None:
    record = RunRecord(id="20261126T122754Z-3f9a", job="nightly", mode="cold", status="ok")
    record.stop_s, record.copy_s, record.start_s, record.downtime_s = 1.0, 2.0, 3.0, 6.0
    print_record(record, as_json=False)
    assert (
        "  downtime  6.000s = stop 1.000s + copy 2.000s + start 3.000s" in capsys.readouterr().out
    )
