"""A run that ends with influxd still stopped by us (its crash marker pending) says so loudly:
a critical `influxd.left_down` event with its MESSAGE_ID, and the metric alerts watch."""

from __future__ import annotations

import io
import json
from pathlib import Path

from influx_backupd.core import log
from influx_backupd.core.config import load
from influx_backupd.run.followup import MetricsNotWritten, write_metrics
from influx_backupd.run.runner import influxd_left_down
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord
from influx_backupd.store.state import CrashMarker
from tests.system.test_cli_surface import serverless_config


def test_left_down_is_logged_and_counted(tmp_path: Path) -> None:
    metrics = tmp_path / "m.prom"
    config = load(serverless_config(tmp_path, daemon=f'metrics_file = "{metrics}"'))
    record = RunRecord(id="r-1", job="nightly", mode="cold", status="failed", error="no start")
    out = io.StringIO()
    log.configure(out, "info", json=True)
    try:
        assert influxd_left_down(config, record) is False, "no marker: influxd is not ours"
        write_metrics(config, Catalog(config.state_dir))
        assert 'influx_backupd_influxd_left_down{backup_instance="m"} 0\n' in metrics.read_text()

        CrashMarker(config.state_dir).write("r-1")
        assert influxd_left_down(config, record) is True
        write_metrics(config, Catalog(config.state_dir))
    finally:
        log.configure(level="info")
    [event] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert event["event"] == "influxd.left_down" and event["level"] == "critical"
    assert event["message_id"] == log.MESSAGE_IDS["influxd_left_down"]
    assert event["stopped_by"] == "r-1" and event["error"] == "no start"
    assert 'influx_backupd_influxd_left_down{backup_instance="m"} 1\n' in metrics.read_text()


def test_a_metrics_file_that_cannot_be_written_is_one_line_about_the_setting(
    tmp_path: Path,
) -> None:
    """Its directory gone after check-config (node_exporter removed): the backup goes on, the
    line names the setting and the reason, never the temp file or a traceback."""
    metrics = tmp_path / "textfile" / "m.prom"
    config = load(serverless_config(tmp_path, daemon=f'metrics_file = "{metrics}"'))
    try:
        write_metrics(config, Catalog(config.state_dir))
    except MetricsNotWritten as exc:
        assert str(exc) == f"daemon.metrics_file {metrics} not written: No such file or directory"
    else:
        raise AssertionError("written into a dir that does not exist")
    assert not list(tmp_path.glob("**/*.tmp"))
