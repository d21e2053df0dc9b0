"""packaging/prometheus-alerts.yml: valid for promtool, and each alert fires when it should.

`promtool test rules` evaluates the rules over made-up series, as Prometheus would: each case
below says which alerts must be firing at a time, with which labels (no other alert of that
name may fire). The test files are written as JSON, which is YAML.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from influx_backupd.report.metrics import JOB_LABEL, METRIC_LABELS, METRIC_NAMES, OFFSITE_FAMILIES

ALERTS = Path(__file__).resolve().parents[3] / "packaging" / "prometheus-alerts.yml"
# the scrape's target labels, and the influx-backupd instance whose file the series come from
TARGET = {"instance": "db1:9100", "job": "node", "backup_instance": "default"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
    return found


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    rendered = ",".join(f'{k}="{v}"' for k, v in {**TARGET, **labels}.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def fires(alert: str, at: str, *label_sets: dict[str, str]) -> dict[str, Any]:
    """`alert` firing at `at` exactly once per label set (none: not firing)."""
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": labels} for labels in label_sets],
    }


def run_cases(
    promtool: str, tmp_path: Path, cases: list[dict[str, Any]], *, annotations: bool = False
) -> None:
    """Run `cases` (promtool's `tests:` list). promtool compares annotations too; unless asked
    to, the rules are run from a copy without them (every expr, for and label kept)."""
    rules = ALERTS
    if not annotations:
        data = yaml.safe_load(ALERTS.read_text())
        for group in data["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
        rules = tmp_path / "rules.yml"
        rules.write_text(json.dumps(data))
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(
        json.dumps({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": cases})
    )
    done = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_are_valid(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rules = ALERTS.read_text().count("\n      - alert: ")
    assert rules >= 6 and f"SUCCESS: {rules} rules found" in done.stdout, done.stdout


def labels(backup_job: str | None = None, **more: str) -> dict[str, str]:
    job = {"backup_job": backup_job} if backup_job else {}
    return {**TARGET, **job, "severity": "critical", **more}


def by_job(backup_job: str) -> dict[str, str]:
    """Labels of an alert that aggregates by (instance, backup_job)."""
    return {
        "instance": TARGET["instance"],
        "backup_instance": TARGET["backup_instance"],
        "backup_job": backup_job,
        "severity": "critical",
    }


LAST_RUN = "influx_backupd_last_run_timestamp_seconds"


def test_failed_fires_until_a_run_succeeds(promtool: str, tmp_path: Path) -> None:
    # Times in the series are Unix seconds; the test clock starts at 0.
    cases = [
        {
            "interval": "1m",
            "input_series": [
                # a: ok at 100, failed at 200 (the newest): firing
                series(LAST_RUN, "100x10", backup_job="a", result="ok"),
                series(LAST_RUN, "200x10", backup_job="a", result="failed"),
                # b: interrupted at 100, ok at 200: quiet
                series(LAST_RUN, "200x10", backup_job="b", result="ok"),
                series(LAST_RUN, "100x10", backup_job="b", result="interrupted"),
                # c: never succeeded: firing
                series(LAST_RUN, "150x10", backup_job="c", result="failed"),
                # d: only successes
                series(LAST_RUN, "150x10", backup_job="d", result="ok"),
            ],
            "alert_rule_test": [
                fires("InfluxBackupFailed", "5m", by_job("a"), by_job("c")),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                # failed at 100, then (from minute 3) an ok run at 300: stops firing
                series(LAST_RUN, "100x10", backup_job="a", result="failed"),
                series(LAST_RUN, "_x2 300x8", backup_job="a", result="ok"),
            ],
            "alert_rule_test": [
                fires("InfluxBackupFailed", "1m", by_job("a")),
                fires("InfluxBackupFailed", "4m"),
            ],
        },
    ]
    run_cases(promtool, tmp_path, cases)


def test_too_old(promtool: str, tmp_path: Path) -> None:
    cases = [
        {
            "interval": "1h",
            "input_series": [
                series("influx_backupd_last_success_timestamp_seconds", "0x30", backup_job="a"),
                # succeeds every hour
                series(
                    "influx_backupd_last_success_timestamp_seconds", "0+3600x30", backup_job="b"
                ),
            ],
            "alert_rule_test": [
                fires("InfluxBackupTooOld", "25h"),
                fires("InfluxBackupTooOld", "27h", labels("a")),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_failing_verify_with_its_annotations(promtool: str, tmp_path: Path) -> None:
    cases = [
        {
            "interval": "1m",
            "input_series": [
                series("influx_backupd_backups_failing_verify", "0 0 2 2 0", backup_job="a"),
                series("influx_backupd_backups_failing_verify", "0x5", backup_job="b"),
            ],
            "alert_rule_test": [
                fires("InfluxBackupFailingVerify", "1m"),
                {
                    "eval_time": "3m",
                    "alertname": "InfluxBackupFailingVerify",
                    "exp_alerts": [
                        {
                            "exp_labels": labels("a"),
                            "exp_annotations": {
                                "summary": "influx-backupd: 2 kept backup(s) of a on db1:9100 (default) "
                                "failed verification",
                                "description": "`influx-backupd status` names them; they "
                                "will not restore as taken.",
                            },
                        }
                    ],
                },
                fires("InfluxBackupFailingVerify", "4m"),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases, annotations=True)


def test_daemon_silent(promtool: str, tmp_path: Path) -> None:
    heartbeat = "influx_backupd_heartbeat_timestamp_seconds"
    cases = [
        {
            "interval": "1m",
            "input_series": [
                # a daemon that wrote every minute until minute 3, then died
                {
                    "series": f'{heartbeat}{{instance="db1:9100",job="node",backup_instance="default"}}',
                    "values": "0+60x3 180x20",
                },
                # one that keeps writing
                {
                    "series": f'{heartbeat}{{instance="db2:9100",job="node",backup_instance="default"}}',
                    "values": "0+60x23",
                },
            ],
            "alert_rule_test": [
                fires("InfluxBackupDaemonSilent", "7m"),
                fires("InfluxBackupDaemonSilent", "9m", {**TARGET, "severity": "warning"}),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_not_started_fires_for_the_hour_after_a_run_that_could_not_begin(
    promtool: str, tmp_path: Path
) -> None:
    name = "influx_backupd_runs_not_started_total"
    cases = [
        {
            "interval": "1m",
            "input_series": [
                # 0 from the daemon's start; one run not begun at minute 5
                series(name, "0x4 1x100", backup_job="nightly"),
                series(name, "0x104", backup_job="hourly"),  # every run begun
            ],
            "alert_rule_test": [
                fires("InfluxBackupNotStarted", "4m"),
                fires(
                    "InfluxBackupNotStarted",
                    "6m",
                    {**TARGET, "backup_job": "nightly", "severity": "critical"},
                ),
                fires("InfluxBackupNotStarted", "70m"),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_influxd_left_down_after_two_minutes(promtool: str, tmp_path: Path) -> None:
    cases = [
        {
            "interval": "1m",
            "input_series": [
                series("influx_backupd_influxd_left_down", "0 1 1 1 1 0"),
                # a cold backup's stop window seen by one write: not an outage
                {
                    "series": "influx_backupd_influxd_left_down"
                    '{instance="db2:9100",job="node",backup_instance="default"}',
                    "values": "0 1 0 0 0 0",
                },
            ],
            "alert_rule_test": [
                fires("InfluxdLeftDown", "2m"),
                fires("InfluxdLeftDown", "3m", labels()),
                fires("InfluxdLeftDown", "5m"),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_influxd_left_down_waits_for_the_windows_expected_end(
    promtool: str, tmp_path: Path
) -> None:
    """A long healthy stop window (a large direct copy) wrote until when its run expects
    influxd down: no alert before that time, and 2 minutes after it, one. A window whose run
    died (the next writer, a recovery whose start fails, wrote 0) fires 2 minutes on, not at
    the dead run's expected end."""
    left_down = "influx_backupd_influxd_left_down"
    expected = "influx_backupd_influxd_down_expected_until_timestamp_seconds"
    db2 = {"backup_instance": "db2"}
    cases = [
        {
            "interval": "1m",
            "input_series": [
                # stopped at minute 1, its window expected to end by minute 30 (1800 s)
                series(left_down, "0 1x40"),
                series(expected, "0 1800x40"),
                # db2's run expected its window until minute 60, and died: 0 from minute 2
                series(left_down, "0 1x40", **db2),
                series(expected, "0 3600 0x39", **db2),
            ],
            "alert_rule_test": [
                fires("InfluxdLeftDown", "3m"),
                fires("InfluxdLeftDown", "4m", labels(**db2)),
                fires("InfluxdLeftDown", "29m", labels(**db2)),
                fires("InfluxdLeftDown", "31m", labels(**db2)),
                fires("InfluxdLeftDown", "32m", labels(), labels(**db2)),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_two_instances_on_one_host_alert_apart(promtool: str, tmp_path: Path) -> None:
    """influx-backupd@db2 beside the plain unit on db1:9100, both with a job `nightly`: each
    instance's failure and left_down is its own alert (one `by` without backup_instance would
    merge them, and a ok run of one would hide the other's failure)."""
    db2 = {"backup_instance": "db2"}
    cases = [
        {
            "interval": "1m",
            "input_series": [
                series(LAST_RUN, "100x10", backup_job="nightly", result="ok"),
                series(LAST_RUN, "200x10", backup_job="nightly", result="failed", **db2),
                series(LAST_RUN, "300x10", backup_job="nightly", result="ok", **db2),
                series(LAST_RUN, "50x10", backup_job="nightly", result="failed"),
                series(LAST_RUN, "400x10", backup_job="weekly", result="failed", **db2),
                series(LAST_RUN, "500x10", backup_job="weekly", result="ok"),
                series("influx_backupd_influxd_left_down", "0x10"),
                series("influx_backupd_influxd_left_down", "1x10", **db2),
            ],
            "alert_rule_test": [
                fires("InfluxBackupFailed", "5m", by_job("weekly") | db2),
                fires("InfluxdLeftDown", "5m", labels(**db2)),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_served_less_fires_per_database_until_a_restart_serves_everything(
    promtool: str, tmp_path: Path
) -> None:
    lost = "influx_backupd_served_less_points"
    cases = [
        {
            "interval": "1m",
            "input_series": [
                # a cold run at minute 1 lost 300 points of db1; the next one (minute 4) did not
                series(lost, "_ 300x2 _x5", backup_job="nightly", database="db1"),
            ],
            "alert_rule_test": [
                fires("InfluxdServedLess", "0m"),
                fires("InfluxdServedLess", "2m", by_job("nightly") | {"database": "db1"}),
                fires("InfluxdServedLess", "9m"),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_metrics_absent_for_an_hour(promtool: str, tmp_path: Path) -> None:
    """A metrics file that never was (its directory missing): no series at all to go stale."""
    cases = [
        {
            "interval": "1m",
            "input_series": [],
            "alert_rule_test": [
                fires("InfluxBackupMetricsAbsent", "50m"),
                fires("InfluxBackupMetricsAbsent", "61m", {"severity": "warning"}),
            ],
        },
        {
            "interval": "1m",
            "input_series": [series("influx_backupd_build_info", "1x90", version="0.1.0")],
            "alert_rule_test": [fires("InfluxBackupMetricsAbsent", "61m")],
        },
    ]
    run_cases(promtool, tmp_path, cases)


def test_offsite_damaged_fires_when_a_day_of_syncs_has_not_repaired_it(
    promtool: str, tmp_path: Path
) -> None:
    damaged = "influx_backupd_offsite_damaged_objects"
    cases = [
        {
            "interval": "1m",
            "input_series": [
                # a: found damaged at minute 1, never repaired; b: repaired after 2 hours
                series(damaged, "0 3x1800", backup_job="a"),
                series(damaged, "0 2x120 0x1680", backup_job="b"),
            ],
            "alert_rule_test": [
                fires("InfluxBackupOffsiteDamaged", "20h"),
                fires(
                    "InfluxBackupOffsiteDamaged",
                    "28h",
                    {**TARGET, "backup_job": "a", "severity": "warning"},
                ),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_offsite_behind_fires_after_half_a_day_of_backups_waiting(
    promtool: str, tmp_path: Path
) -> None:
    """Job a: the endpoint down, pending grows for a day. Job b: a backup waits an hour for
    each sync, 0 in between: that is the normal case, never an alert."""
    pending = "influx_backupd_offsite_pending_backups"
    cases = [
        {
            "interval": "1m",
            "input_series": [
                series(pending, "1+0x360 2+0x360 3+0x800", backup_job="a"),
                series(pending, " ".join(["1x58 0"] * 14), backup_job="b"),
            ],
            "alert_rule_test": [
                fires("InfluxBackupOffsiteBehind", "11h"),
                fires(
                    "InfluxBackupOffsiteBehind",
                    "13h",
                    {**TARGET, "backup_job": "a", "severity": "warning"},
                ),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_offsite_failing_fires_per_reason_after_an_hour_until_a_sync_completes(
    promtool: str, tmp_path: Path
) -> None:
    """prefix_taken from minute 1 on; unreachable for 40 minutes (the daemon's retry got
    through): never an alert; damaged is InfluxBackupOffsiteDamaged's; sweep_blocked for two
    hours, then a sync that completed."""
    failing = "influx_backupd_offsite_failing"

    def warns(reason: str) -> dict[str, str]:
        return {
            "instance": TARGET["instance"],
            "backup_instance": TARGET["backup_instance"],
            "reason": reason,
            "severity": "warning",
        }

    cases = [
        {
            "interval": "1m",
            "input_series": [
                series(failing, "0 1x300", reason="prefix_taken"),
                series(failing, "0 1x40 0x260", reason="unreachable"),
                series(failing, "0 1x300", reason="damaged"),
                series(failing, "0 1x120 0x180", reason="sweep_blocked"),
                series(failing, "0x300", reason="credentials"),
            ],
            "alert_rule_test": [
                fires("InfluxBackupOffsiteFailing", "50m"),
                fires(
                    "InfluxBackupOffsiteFailing",
                    "90m",
                    warns("prefix_taken"),
                    warns("sweep_blocked"),
                ),
                fires("InfluxBackupOffsiteFailing", "150m", warns("prefix_taken")),
            ],
        }
    ]
    run_cases(promtool, tmp_path, cases)


def test_alerts_use_only_metrics_and_labels_the_code_writes() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\binflux_backupd_\w+", expr)}
    names = METRIC_NAMES | {f.name for f in OFFSITE_FAMILIES}
    assert used and used <= names, sorted(used - names)
    labels = {lbl for expr in exprs for lbl in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr)}
    labels |= {
        lbl.strip()
        for expr in exprs
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)
        for lbl in clause.split(",")
    }
    known = {**METRIC_LABELS, **{f.name: f.labels for f in OFFSITE_FAMILIES}}
    written = {lbl for name in used for lbl in known[name]} | {"instance", "job"}
    assert labels <= written, sorted(labels - written)
    assert JOB_LABEL in labels
