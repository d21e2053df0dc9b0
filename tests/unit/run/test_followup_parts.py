"""The progress bar and the catalog's monotonic counters in the metrics."""

from __future__ import annotations

import io
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from influx_backupd.core import log
from influx_backupd.report import progress
from influx_backupd.report.metrics import VERIFY_FAILED, render
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord


def test_bar_shows_fraction_sizes_and_eta() -> None:
    bar = progress.TerminalBar(lambda _line: None, width=10)
    line = bar.line(512 << 20, 1 << 30, rate=256 << 20)
    assert "[#####.....]" in line and " 50.0%" in line
    assert "512.0 MiB / 1.0 GiB" in line and "256.0 MiB/s" in line and "ETA 2s" in line
    assert "100.0%" in bar.line(2 << 30, 1 << 30, rate=1.0), "files grew after the prediction"
    assert line.endswith("ETA 2s")
    assert bar.line(1, 100, rate=None).endswith("-/s  ETA -"), "no rate yet: no ETA"


def test_rate_only_once_writing_has_settled() -> None:
    shown: list[str | None] = []
    bar = progress.TerminalBar(shown.append, interval=0, settle=0.3, window=5.0)
    bar(0, 100 << 20)
    bar(1 << 20, 100 << 20)
    assert shown[-1] is not None and shown[-1].endswith("ETA -")
    time.sleep(0.35)
    bar(2 << 20, 100 << 20)
    last = shown[-1]
    assert last is not None and "ETA -" not in last and "MiB/s" in last
    bar.close()
    assert shown[-1] is None, "closing removes the bar's line"


def test_listeners_get_notified_and_a_broken_one_is_ignored() -> None:
    shown: list[str | None] = []
    bar = progress.TerminalBar(shown.append, interval=0)

    def broken(done: int, total: int) -> None:
        raise RuntimeError("display gone")

    progress.listen(broken)
    progress.listen(bar)
    try:
        progress.notify(10, 100)
    finally:
        progress.unlisten(broken)
        progress.unlisten(bar)
    bar.close()
    assert shown[0] is not None and shown[0].startswith("archive [") and shown[-1] is None
    progress.notify(1, 1)  # nobody listening: nothing happens


def test_log_lines_print_above_the_status_line() -> None:
    out = io.StringIO()
    log.configure(out, "info", json=True)
    try:
        log.status_line("archive [...]")
        log.get().info("influxd.starting")
        log.status_line(None)
    finally:
        log.configure(level="info")
    text = out.getvalue()
    clear = log.CLEAR_LINE
    assert text.startswith(clear + "archive [...]" + clear + '{"event": "influxd.starting"')
    assert text.endswith("}\narchive [...]" + clear)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_keep_runs_total_monotonic_when_records_are_pruned(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    for at in (10.0, 20.0):
        catalog.increment("nightly", "ok", at)
    catalog.increment("nightly", "failed", 15.0)
    catalog.increment("nightly", VERIFY_FAILED, 16.0)
    # only the newest ok record is left after retention
    left = [RunRecord("b", "nightly", "cold", status="ok", started_at=19.0, finished_at=20.0)]
    samples = _samples(render(left, counters=catalog.counters()))
    job = ("backup_instance", "default"), ("backup_job", "nightly")
    assert samples[("influx_backupd_runs_total", (*job, ("result", "ok")))] == 2
    assert samples[("influx_backupd_runs_total", (*job, ("result", "failed")))] == 1
    assert samples[("influx_backupd_runs_total", (*job, ("result", "interrupted")))] == 0
    assert samples[("influx_backupd_verify_failures_total", job)] == 1
    assert (
        samples[("influx_backupd_last_run_timestamp_seconds", (*job, ("result", "failed")))] == 15
    )
    assert catalog.counters()[("nightly", "ok")] == (2, 20.0)


def test_a_run_is_counted_with_its_final_record_once(tmp_path: Path) -> None:
    """The count is written in the same transaction as the finished record: a process killed
    right after cannot leave a finished run uncounted, and nothing else counts it again."""
    catalog = Catalog(tmp_path)
    record = RunRecord("a", "nightly", "hot", status="running", started_at=1.0)
    catalog.save(record)
    assert catalog.counters() == {}, "a running record is not counted"
    record.status = "interrupted"
    catalog.finish(record, log.get())
    assert catalog.counters() == {("nightly", "interrupted"): (1, record.finished_at)}
    [saved] = catalog.list()
    assert saved.status == "interrupted"
