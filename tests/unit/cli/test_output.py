"""What the commands print for a record: the short record's lines, and --json's times."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from influx_backupd.cli.output import json_ready, print_record
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


def test_the_phases_add_up_to_the_downtime_and_a_run_never_stopped_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The checks between the stop and the copy are part of the window: before, 0.320 s was
    shown as stop 0.072 + copy 0.002 + start 0.104; and a run refused before the stop showed
    `downtime - = stop - + copy - + start -`."""
    record = RunRecord(id="20261126T122754Z-3f9a", job="nightly", mode="cold", status="ok")
    record.stop_s, record.copy_s, record.start_s, record.downtime_s = 0.072, 0.002, 0.104, 0.320
    print_record(record, as_json=False)
    assert (
        "  downtime  0.320s = stop 0.072s + checks 0.142s + copy 0.002s + start 0.104s"
        in capsys.readouterr().out
    )
    refused = RunRecord(id="20261126T122754Z-3f9b", job="nightly", mode="cold", status="failed")
    print_record(refused, as_json=False)
    assert "  downtime  none: influxd was not stopped" in capsys.readouterr().out
    # stopped, and not answering again when the run ended: never "not stopped"
    left = RunRecord(id="20261126T122754Z-3f9c", job="nightly", mode="cold", status="failed")
    left.stop_s, left.copy_s = 0.077, 0.04
    print_record(left, as_json=False)
    out = capsys.readouterr().out
    assert "  downtime  not ended: influxd was stopped and did not answer again in this run" in out
    assert "not stopped" not in out


def test_json_times_follow_one_rule_in_the_daemon_and_restore_parts_too() -> None:
    """status --json with a daemon running a job and a restore in progress: the published
    state's `since`, a process's `create_time` and a missing next_run follow the rule."""
    t = 1_790_000_000.5
    out = json_ready(
        {
            "restore": {"started_at": t, "create_time": t, "pid": 4},
            "daemon": {"run_in_flight": {"job": "a", "since": t}},
            "jobs": [{"next_run": None}, {"next_run": t}],
            "extra": {"shard_listing": {"taken_at": t, "shards": {"1": {"0001.tsm": [10, t]}}}},
        }
    )
    assert out["restore"]["create_time"] == "2026-09-21T14:13:20.500Z"
    assert out["restore"]["create_time_unix"] == t
    assert out["daemon"]["run_in_flight"]["since_unix"] == t
    assert out["jobs"][0] == {"next_run": None, "next_run_unix": None}
    assert out["jobs"][1]["next_run_unix"] == t
    entry = out["extra"]["shard_listing"]["shards"]["1"]["0001.tsm"]
    assert entry == {"size": 10, "mtime": "2026-09-21T14:13:20.500Z", "mtime_unix": t}


def test_the_readmes_backup_example_is_what_backup_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README's example lacked `+ checks` (and the sha256 was shortened to 8, not 12, digits)
    once the record's lines changed: the example is printed again from its own figures."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    start = readme.index("`backup` prints the run record")
    block = readme[readme.index("```\n", start) + 4 :]
    example = block[: block.index("```")]
    figures = dict(re.findall(r"(stop|checks|copy|start) (\d+\.\d+)s", example))
    record = RunRecord(id="20261126T124216Z-df01", job="nightly", mode="cold", status="ok")
    record.archive = "/var/backups/influxdb/nightly-20261126T124216Z-df01.tar"
    record.bytes, record.files = int(32.6 * (1 << 20)), 12
    record.sha256 = re.findall(r"sha256 ([0-9a-f]+)…", example)[0].ljust(64, "0")
    record.stop_s, record.copy_s, record.start_s = (
        float(figures[k]) for k in ("stop", "copy", "start")
    )
    record.downtime_s = float(re.findall(r"downtime  (\d+\.\d+)s", example)[0])
    print_record(record, as_json=False)
    assert capsys.readouterr().out == example


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("serving_after_stop", "none so far: influxd was asked to stop and still served past"),
        ("frozen_after_stop", "pending: influxd was asked to stop and frozen before it exited"),
    ],
)
def test_a_stop_asked_and_not_ended_is_never_said_not_stopped(
    key: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Audit: a server that got SIGTERM and outlasted stop_timeout was "not stopped"."""
    record = RunRecord(id="20261126T122754Z-3f9d", job="nightly", mode="cold", status="failed")
    record.extra[key] = 4242
    print_record(record, as_json=False)
    out = capsys.readouterr().out
    assert f"  downtime  {said}" in out and "not stopped" not in out


def test_a_restores_downtime_parts_add_up_too() -> None:
    """README walkthrough: `downtime 0.267s = stop 0.076s + swap 0.000s + start 0.074s`, the
    parts 0.150 s: the checks between the stop and the swap (files still held) were left out."""
    from influx_backupd.cli.output import downtime_sum

    said = downtime_sum(0.267, [("stop", 0.076), ("swap", 0.0), ("start", 0.074)])
    assert said == "0.267s = stop 0.076s + checks 0.117s + swap 0.000s + start 0.074s"
    assert downtime_sum(0.150, [("stop", 0.076), ("swap", 0.0), ("start", 0.074)]) == (
        "0.150s = stop 0.076s + swap 0.000s + start 0.074s"
    )


def test_a_run_killed_in_its_stop_window_shows_the_outage_recovery_ended(
    capsys: pytest.CaptureFixture[str],
) -> None:
    record = RunRecord(id="20261126T122754Z-3f9e", job="nightly", mode="cold", status="interrupted")
    record.downtime_s = 12.5
    record.extra["downtime_until_recovery"] = True
    print_record(record, as_json=False)
    out = capsys.readouterr().out
    assert "  downtime  12.500s: killed in its stop window; influxd ran again once recovery" in out
    assert record.checks_s is None, "no phases of its own: not all of it 'checks'"


def test_a_chain_copied_in_with_select_into_warns_of_deleted_points_coming_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Hot audit: a remote chain's restore brought 7,158 deleted points back, exit 0, said only
    in a log line (restore.sql_merge_caveat)."""
    from influx_backupd.cli.output import print_merge

    print_merge("sql", "no listing of the shards (a remote backup_host)")
    out = capsys.readouterr().out
    assert "  warning  SELECT INTO cannot undo a DELETE, DROP SERIES or DROP MEASUREMENT" in out
    print_merge("files", None)
    assert "warning" not in capsys.readouterr().out
