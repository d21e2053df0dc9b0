from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from influx_backupd import __version__
from influx_backupd.offsite.errors import REASONS
from influx_backupd.report.metrics import (
    FAMILIES,
    METRIC_LABELS,
    METRIC_NAMES,
    OFFSITE_FAILING,
    DaemonFacts,
    OffsiteFigures,
    format_value,
    left_down_in,
    previous_daemon_facts,
    render,
    set_left_down,
    write_textfile,
)
from influx_backupd.store.record import RunRecord

Key = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> tuple[dict[Key, float], dict[str, str]]:
    """Samples keyed by (name, labels), and sample name -> family type."""
    values: dict[Key, float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in values, f"duplicate sample {key}"
            values[key] = s.value
            types[s.name] = family.type
    return values, types


def k(name: str, **labels: str) -> Key:
    """A sample's key; render's default instance unless `backup_instance` is given."""
    return (f"influx_backupd_{name}", frozenset({"backup_instance": "default", **labels}.items()))


def rec(rid: str, job: str, status: str, started: float, **kw: object) -> RunRecord:
    finished = None if status == "running" else started + 100
    return RunRecord.from_dict(
        {
            "id": rid,
            "job": job,
            "mode": "cold",
            "status": status,
            "started_at": started,
            "finished_at": finished,
            **kw,
        }
    )


def catalog() -> list[RunRecord]:
    return [
        # job "cold": ok, ok, failed, interrupted, then one still running
        rec("c1", "cold", "ok", 1000.0, bytes=10, downtime_s=5.0, stop_s=1.0, copy_s=3.0,
            start_s=1.0, archive_s=2.5, verify_status="failed"),
        rec("c2", "cold", "ok", 2000.0, bytes=20, downtime_s=6.5, stop_s=2.0, copy_s=3.5,
            start_s=1.0, verify_status="ok", extra={"served_after_start_s": 0.02, "served_less":
            {"lost": {"before": 300, "after": 0}, "same": {"before": 5, "after": 5}}}),
        rec("c3", "cold", "failed", 3000.0, downtime_s=0.75, stop_s=0.5, start_s=0.25,
            verify_status="failed"),
        rec("c4", "cold", "interrupted", 4000.0, stop_s=0.5),
        rec("c5", "cold", "running", 5000.0, bytes=999, downtime_s=99.0, stop_s=9.0),
        # job "hot": one ok, no downtime at all (influxd kept serving)
        rec("h1", "hot", "ok", 1500.0, mode="hot", bytes=7, prestage_s=4.0, archive_s=1.0),
    ]  # fmt: skip


def test_render_values_and_labels() -> None:
    values, types = parse(render(catalog(), {"cold": 2, "other": 1}))
    expected = {
        k("last_success_timestamp_seconds", backup_job="cold"): 2100.0,
        k("last_success_timestamp_seconds", backup_job="hot"): 1600.0,
        k("last_run_timestamp_seconds", backup_job="cold", result="ok"): 2100.0,
        k("last_run_timestamp_seconds", backup_job="cold", result="failed"): 3100.0,
        k("last_run_timestamp_seconds", backup_job="cold", result="interrupted"): 4100.0,
        k("last_run_timestamp_seconds", backup_job="hot", result="ok"): 1600.0,
        # c4 (newest finished) has no downtime: c3's is the last one measured
        k("downtime_seconds", backup_job="cold"): 0.75,
        # phases of c4, the last finished run; the running c5 is ignored
        k("phase_seconds", backup_job="cold", phase="stop"): 0.5,
        k("phase_seconds", backup_job="hot", phase="prestage"): 4.0,
        k("phase_seconds", backup_job="hot", phase="archive"): 1.0,
        k("archive_bytes", backup_job="cold"): 20.0,
        k("archive_bytes", backup_job="hot"): 7.0,
        k("runs_total", backup_job="cold", result="ok"): 2.0,
        k("runs_total", backup_job="cold", result="failed"): 1.0,
        k("runs_total", backup_job="cold", result="interrupted"): 1.0,
        k("runs_total", backup_job="hot", result="ok"): 1.0,
        k("runs_total", backup_job="hot", result="failed"): 0.0,
        k("runs_total", backup_job="hot", result="interrupted"): 0.0,
        # a job known only from the mapping still gets its series
        k("runs_total", backup_job="other", result="ok"): 0.0,
        k("runs_total", backup_job="other", result="failed"): 0.0,
        k("runs_total", backup_job="other", result="interrupted"): 0.0,
        # two failed records plus two from the mapping
        k("verify_failures_total", backup_job="cold"): 4.0,
        k("verify_failures_total", backup_job="hot"): 0.0,
        k("verify_failures_total", backup_job="other"): 1.0,
        # c1 is kept as good but failed its last verify; c3 failed as a run, not a verify
        k("backups_failing_verify", backup_job="cold"): 1.0,
        k("backups_failing_verify", backup_job="hot"): 0.0,
        k("backups_failing_verify", backup_job="other"): 0.0,
        # never verified since they were taken: c1 at 1100 is the oldest check of "cold"
        k("oldest_check_timestamp_seconds", backup_job="cold"): 1100.0,
        k("oldest_check_timestamp_seconds", backup_job="hot"): 1600.0,
        # ok records in the catalog: c1 (failing its verify) and c2; h1
        k("backups_kept", backup_job="cold"): 2.0,
        k("backups_kept", backup_job="hot"): 1.0,
        k("backups_kept", backup_job="other"): 0.0,
        k("build_info", version=__version__): 1.0,
        k("influxd_left_down"): 0.0,
        k("influxd_down_expected_until_timestamp_seconds"): 0.0,
        # c2's restart served 300 points fewer of "lost" (c3 and c4 counted nothing after)
        k("served_less_points", backup_job="cold", database="lost"): 300.0,
        # no daemon: no heartbeat, no next runs
    }
    assert values == expected
    daemon_only = {
        "influx_backupd_heartbeat_timestamp_seconds",
        "influx_backupd_next_run_timestamp_seconds",
        "influx_backupd_runs_not_started_total",
        "influx_backupd_last_not_started_timestamp_seconds",
    }
    assert set(types) == METRIC_NAMES - daemon_only
    assert {name: types[name] for name in types} == {
        f.name: f.type for f in FAMILIES if f.name in types
    }


def test_phases_of_last_finished_run_only_those_measured() -> None:
    records = [
        rec(
            "a", "j", "ok", 1.0, stop_s=1.0, copy_s=2.0, start_s=3.0, prestage_s=4.0, archive_s=5.0
        ),
        rec("b", "j", "ok", 2.0, stop_s=0.125, copy_s=0.0),
    ]
    values, _ = parse(render(records))
    phases = {dict(labels)["phase"]: v for (name, labels), v in values.items() if "phase" in name}
    assert phases == {"stop": 0.125, "copy": 0.0}


def test_the_phases_add_up_to_the_downtime() -> None:
    """The window's checks (files still held, between the stop and the copy) are a phase too:
    stop, checks, copy and start add up to downtime_seconds, as `backup` prints them."""
    run = rec("a", "j", "ok", 1.0, stop_s=1.5, copy_s=2.0, start_s=3.0, downtime_s=7.25)
    values, _ = parse(render([run]))
    phases = {dict(labels)["phase"]: v for (name, labels), v in values.items() if "phase" in name}
    assert phases == {"stop": 1.5, "checks": 0.75, "copy": 2.0, "start": 3.0}
    assert sum(phases.values()) == values[k("downtime_seconds", backup_job="j")]
    exact = rec("b", "j", "ok", 2.0, stop_s=1.0, copy_s=1.0, start_s=1.0, downtime_s=3.0)
    phases_b = parse(render([exact]))[0]
    assert not any(dict(labels).get("phase") == "checks" for (_, labels) in phases_b)


def test_the_oldest_check_moves_when_every_backup_is_verified_again() -> None:
    """A scheduled verify checks them all: the oldest check becomes the earliest of those."""
    records = [
        rec("a", "j", "ok", 10.0, verified_at=900.0, verify_status="ok"),
        rec("b", "j", "ok", 20.0, verified_at=905.0, verify_status="ok"),
        rec("c", "j", "failed", 5.0),  # not a backup: never counted
    ]
    values, _ = parse(render(records))
    assert values[k("oldest_check_timestamp_seconds", backup_job="j")] == 900.0
    assert values[k("backups_failing_verify", backup_job="j")] == 0.0


def test_newest_is_by_finish_time() -> None:
    # "late" started first but finished last: it is the newest success
    records = [
        rec("late", "j", "ok", 10.0, finished_at=500.0, bytes=1),
        rec("early", "j", "ok", 20.0, finished_at=200.0, bytes=2),
    ]
    values, _ = parse(render(records))
    assert values[k("last_success_timestamp_seconds", backup_job="j")] == 500.0
    assert values[k("archive_bytes", backup_job="j")] == 1.0


def test_no_records_renders_only_help_type_and_host_facts() -> None:
    text = render([])
    families = list(text_string_to_metric_families(text))
    assert len(families) == len(METRIC_NAMES)
    with_samples = {f.name: [s.value for s in f.samples] for f in families if f.samples}
    # prometheus_client names an info-like gauge without its _info suffix handling: by sample
    assert with_samples == {
        "influx_backupd_build_info": [1.0],
        "influx_backupd_influxd_left_down": [0.0],
        "influx_backupd_influxd_down_expected_until_timestamp_seconds": [0.0],
    }
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text
        assert f"# HELP {name} " in text


def test_only_running_and_failed_has_no_success_series() -> None:
    values, _ = parse(render([rec("f", "j", "failed", 1.0), rec("r", "j", "running", 2.0)]))
    names = {name for name, _ in values}
    assert "influx_backupd_last_success_timestamp_seconds" not in names
    assert "influx_backupd_archive_bytes" not in names
    assert values[k("runs_total", backup_job="j", result="failed")] == 1.0


@pytest.mark.parametrize("job", ['a"b\\c', "line\nbreak", "plain"])
def test_label_values_are_escaped(job: str) -> None:
    text = render([rec("x", job, "ok", 1.0)])
    values, _ = parse(text)
    assert values[k("runs_total", backup_job=job, result="ok")] == 1.0
    assert {dict(labels).get("backup_job") for _, labels in values} - {None} == {job}
    # one sample per line: a raw newline in a label would split one
    assert all(
        line.startswith(("# HELP ", "# TYPE ", "influx_backupd_")) for line in text.splitlines()
    )


def test_escaping_is_exactly_the_exposition_format() -> None:
    text = render([rec("x", 'a"b\\c', "ok", 1.0)])
    assert (
        'influx_backupd_runs_total{backup_instance="default",backup_job="a\\"b\\\\c",result="ok"} 1\n'
        in text
    )


def test_names_follow_prometheus_conventions() -> None:
    for family in FAMILIES:
        assert re.fullmatch(r"influx_backupd_[a-z][a-z_]*[a-z]", family.name)
        assert family.name.endswith("_total") == (family.type == "counter")
        assert family.labels[:1] in (("backup_job",), ("version",), ())
        assert {"job", "instance"}.isdisjoint(family.labels), "Prometheus's own target labels"
        assert METRIC_LABELS[family.name] == ("backup_instance", *family.labels)
    assert len(METRIC_NAMES) == 18


def test_daemon_facts_and_left_down() -> None:
    facts = DaemonFacts(heartbeat=1234.5, next_runs={"b": 2000.0, 'a"x': 3000.0})
    text = render([rec("x", "a", "ok", 1.0)], daemon=facts, left_down=True)
    values, _ = parse(text)
    assert values[k("heartbeat_timestamp_seconds")] == 1234.5
    assert values[k("next_run_timestamp_seconds", backup_job="b")] == 2000.0
    assert values[k("next_run_timestamp_seconds", backup_job='a"x')] == 3000.0
    assert values[k("influxd_left_down")] == 1.0
    assert values[k("influxd_down_expected_until_timestamp_seconds")] == 0
    window = render([], left_down=True, down_expected_until=77.5)
    assert parse(window)[0][k("influxd_down_expected_until_timestamp_seconds")] == 77.5
    up = render([], left_down=False, down_expected_until=77.5)
    assert parse(up)[0][k("influxd_down_expected_until_timestamp_seconds")] == 0, "up: none"
    # another writer reads them back from the file the daemon wrote
    assert previous_daemon_facts(text) == facts
    assert previous_daemon_facts(render([])) is None


def test_runs_not_started_are_counted_per_job_zero_included() -> None:
    """A scheduled run the daemon could not begin leaves no record: only the daemon's count
    shows it (InfluxBackupNotStarted). Every configured job has a sample, 0 included, so that
    increase() sees the first one; a job no longer configured has none."""
    facts = DaemonFacts(
        heartbeat=10.0, next_runs={}, not_started={"a": (3, 1700.5), "gone": (1, 5.0)}
    )
    text = render([], daemon=facts, jobs=["a", "b"])
    values, types = parse(text)
    assert types["influx_backupd_runs_not_started_total"] == "counter"
    assert values[k("runs_not_started_total", backup_job="a")] == 3
    assert values[k("last_not_started_timestamp_seconds", backup_job="a")] == 1700.5
    assert values[k("runs_not_started_total", backup_job="b")] == 0
    assert values[k("last_not_started_timestamp_seconds", backup_job="b")] == 0
    assert k("runs_not_started_total", backup_job="gone") not in values
    # carried over by another writer (a backup by hand) as the daemon wrote them
    assert previous_daemon_facts(text) == DaemonFacts(10.0, {}, {"a": (3, 1700.5)})


def test_left_down_and_the_windows_expected_end_change_alone(tmp_path: Path) -> None:
    """set_left_down rewrites only its two samples, keeps the rest, and adds the expected end
    to a file an older version wrote (none there); an expected end means nothing while up."""
    path = tmp_path / "influx_backupd_db2.prom"
    expected = "influx_backupd_influxd_down_expected_until_timestamp_seconds"
    full = render([rec("x", "a", "ok", 1.0)], instance="db2")
    older = "\n".join(line for line in full.splitlines() if expected not in line) + "\n"
    write_textfile(path, older)
    assert left_down_in(path) == (False, 0.0)

    set_left_down(path, True, 1234567890.5)
    values, _ = parse(path.read_text())
    assert values[k("influxd_left_down", backup_instance="db2")] == 1
    assert values[k("influxd_down_expected_until_timestamp_seconds", backup_instance="db2")] == (
        1234567890.5
    )
    assert values[k("backups_kept", backup_instance="db2", backup_job="a")] == 1, "kept"
    assert left_down_in(path) == (True, 1234567890.5)

    set_left_down(path, False, 1234567890.5)
    assert left_down_in(path) == (False, 0.0)
    assert path.read_text().count(f"# TYPE {expected} ") == 1

    nothing = tmp_path / "influx_backupd.prom"
    set_left_down(nothing, True, 99.0)  # no file yet: a whole one
    assert left_down_in(nothing) == (True, 99.0)
    parse(nothing.read_text())


def test_offsite_failing_is_a_state_set_of_every_reason() -> None:
    """With [offsite], every reason has a sample: 1 for those failing now, 0 for the others (a
    healthy host shows 0s, not no series); without [offsite], none."""
    figures = {"a": OffsiteFigures(last_success=None, uploaded_bytes=0, skipped_bytes=0, pending=1)}
    failing = "offsite_failing"
    values, types = parse(render([], offsite=figures, offsite_failing={"prefix_taken", "damaged"}))
    assert {r: values[k(failing, reason=r)] for r in REASONS} == {
        "prefix_taken": 1.0,
        "sweep_blocked": 0.0,
        "unreachable": 0.0,
        "credentials": 0.0,
        "damaged": 1.0,
        "other": 0.0,
    }
    assert types[OFFSITE_FAILING.name] == "gauge" and OFFSITE_FAILING.labels == ("reason",)
    values, _ = parse(render([], offsite=figures))
    assert [values[k(failing, reason=r)] for r in REASONS] == [0.0] * len(REASONS)
    assert OFFSITE_FAILING.name not in render([], offsite_failing={"other"})


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (0.5, "0.5"), (1764160074.25, "1764160074.25"), (float("nan"), "NaN"),
     (float("inf"), "+Inf"), (float("-inf"), "-Inf")],
)  # fmt: skip
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_write_textfile_is_complete_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "influx_backupd.prom"
    target.write_text("stale\n")
    text = render(catalog())
    write_textfile(target, text)
    assert target.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    values, _ = parse(target.read_text())
    assert values[k("runs_total", backup_job="cold", result="ok")] == 2.0


def test_write_textfile_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_textfile(tmp_path / "m.prom", "")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.prom").stat().st_mode) == 0o644


def test_write_textfile_failure_cleans_its_temp(tmp_path: Path) -> None:
    target = tmp_path / "occupied.prom"
    target.mkdir()  # os.replace of a file onto a directory fails
    with pytest.raises(OSError):
        write_textfile(target, "x 1\n")
    assert [p.name for p in tmp_path.iterdir()] == ["occupied.prom"]


def test_write_textfile_writes_through_a_symlink(tmp_path: Path) -> None:
    """The config check follows a link for metrics_file; the write replaced the link itself
    with a file, and node_exporter, reading the link's target, saw that one stale for good."""
    real = tmp_path / "textfile" / "influx_backupd.prom"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.prom"
    link.symlink_to(real)
    write_textfile(link, "new 1\n")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new 1\n"
    assert sorted(p.name for p in real.parent.iterdir()) == ["influx_backupd.prom"]


def test_a_run_dated_ahead_of_the_clock_is_no_last_run_or_success() -> None:
    """One run recorded while the clock was a year ahead held last_success (and the downtime
    and phases) there: every later failure stayed hidden from InfluxBackupFailed and
    InfluxBackupTooOld for that year (the time audit). It is still kept and counted."""
    now = 1_800_000_000.0
    records = [
        rec("day-before", "j", "ok", now - 86_400, bytes=1, downtime_s=1.0),
        rec("next-year", "j", "ok", now + 365 * 86_400, bytes=2, downtime_s=9.0),
        rec("now", "j", "failed", now - 160, downtime_s=2.0),
    ]
    counters = {("j", "ok"): (2, now + 365 * 86_400 + 100), ("j", "failed"): (1, now - 60)}
    values, _ = parse(render(records, counters=counters, now=now))
    assert values[k("last_success_timestamp_seconds", backup_job="j")] == now - 86_300
    assert values[k("last_run_timestamp_seconds", backup_job="j", result="ok")] == now - 86_300
    assert values[k("last_run_timestamp_seconds", backup_job="j", result="failed")] == now - 60
    assert values[k("downtime_seconds", backup_job="j")] == 2.0
    assert values[k("backups_kept", backup_job="j")] == 2.0
    assert values[k("runs_total", backup_job="j", result="ok")] == 2.0
