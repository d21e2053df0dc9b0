"""Prometheus metrics from run records, for node_exporter's textfile collector.

Everything is derived from the catalog's records on each write, so the file is
a pure function of the records and a restart loses nothing. Exposition format
0.0.4: https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from influx_backupd import __version__
from influx_backupd.core.atomic import read_small, replace_file
from influx_backupd.core.log import Logger
from influx_backupd.offsite.errors import REASONS
from influx_backupd.report.progress import read_published
from influx_backupd.store.record import FUTURE_SLACK_S, RunRecord, dated_ahead, served_less

# The backup job's name. Not `job`: Prometheus sets its own `job` (and `instance`) target labels
# on every scrape, and would rename ours to exported_job unless the scrape had honor_labels.
JOB_LABEL = "backup_job"
# The instance (influx-backupd@NAME) that wrote the file, on every sample: several instances write
# their files into one node_exporter textfile dir, and node_exporter drops all but one of equal
# series (logging it, with no scrape error). Named from the file's name, unique in that dir by
# construction: influx_backupd_NAME.prom (the README's name for instance NAME) -> NAME,
# influx_backupd.prom (the plain unit's) -> DEFAULT_INSTANCE, any other NAME.prom -> NAME.
INSTANCE_LABEL = "backup_instance"
DEFAULT_INSTANCE = "default"
_FILE_PREFIX = "influx_backupd"
# The most of the metrics file read back (its daemon samples, its left_down line): ours is a few
# KiB; past this it is not ours, or is /dev/zero's endless zeros
MAX_METRICS_FILE = 1 << 20
RESULTS: tuple[str, ...] = ("ok", "failed", "interrupted")  # finished statuses
# (phase label value, RunRecord field)
PHASES: tuple[tuple[str, str], ...] = (
    ("stop", "stop_s"),
    ("checks", "checks_s"),  # the window's rest: stop, checks, copy and start add up to downtime
    ("copy", "copy_s"),
    ("start", "start_s"),
    ("prestage", "prestage_s"),
    ("archive", "archive_s"),
)


@dataclass(frozen=True)
class Family:
    name: str  # as written in the exposition, counters with their _total
    type: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...]


LAST_SUCCESS = Family(
    "influx_backupd_last_success_timestamp_seconds",
    "gauge",
    "Unix time the newest successful backup run finished.",
    (JOB_LABEL,),
)
LAST_RUN = Family(
    "influx_backupd_last_run_timestamp_seconds",
    "gauge",
    "Unix time the newest finished backup run with this result finished.",
    (JOB_LABEL, "result"),
)
DOWNTIME = Family(
    "influx_backupd_downtime_seconds",
    "gauge",
    "Seconds influxd was unavailable during the last finished run that stopped it.",
    (JOB_LABEL,),
)
PHASE = Family(
    "influx_backupd_phase_seconds",
    "gauge",
    "Seconds each phase of the last finished backup run took: stop, checks, copy and start add "
    "up to its downtime; prestage and archive are taken while influxd serves.",
    (JOB_LABEL, "phase"),
)
ARCHIVE_BYTES = Family(
    "influx_backupd_archive_bytes",
    "gauge",
    "Size in bytes of the archive of the newest successful backup run.",
    (JOB_LABEL,),
)
RUNS = Family(
    "influx_backupd_runs_total",
    "counter",
    "Finished backup runs, by result.",
    (JOB_LABEL, "result"),
)
VERIFY_FAILURES = Family(
    "influx_backupd_verify_failures_total",
    "counter",
    "Backup verifications that failed.",
    (JOB_LABEL,),
)
FAILING_VERIFY = Family(
    "influx_backupd_backups_failing_verify",
    "gauge",
    "Backups kept as good whose last verification failed (0 when none).",
    (JOB_LABEL,),
)
OLDEST_CHECK = Family(
    "influx_backupd_oldest_check_timestamp_seconds",
    "gauge",
    "Unix time of the oldest check among the successful backups: when the least recently "
    "checked one was last verified (or taken, if never verified since).",
    (JOB_LABEL,),
)

KEPT = Family(
    "influx_backupd_backups_kept",
    "gauge",
    "Successful backups in the catalog (those retention keeps), including any failing verify.",
    (JOB_LABEL,),
)
NEXT_RUN = Family(
    "influx_backupd_next_run_timestamp_seconds",
    "gauge",
    "Unix time of the job's next scheduled run (only while the daemon schedules it).",
    (JOB_LABEL,),
)
NOT_STARTED = Family(
    "influx_backupd_runs_not_started_total",
    "counter",
    "Scheduled backup runs the daemon could not begin, so that no run record tells of them "
    "(the state dir or catalog unusable, the lock held past catch_up), since it started.",
    (JOB_LABEL,),
)
LAST_NOT_STARTED = Family(
    "influx_backupd_last_not_started_timestamp_seconds",
    "gauge",
    "Unix time the job's last scheduled run could not begin (0: none since the daemon started).",
    (JOB_LABEL,),
)
HEARTBEAT = Family(
    "influx_backupd_heartbeat_timestamp_seconds",
    "gauge",
    "Unix time the daemon last wrote this file; it does so at least every minute while it runs.",
    (),
)
LEFT_DOWN = Family(
    "influx_backupd_influxd_left_down",
    "gauge",
    "1 while influxd stopped by influx-backupd has not been started again (crash marker), "
    "else 0. Also 1 for the seconds of a cold backup's stop window.",
    (),
)
DOWN_EXPECTED = Family(
    "influx_backupd_influxd_down_expected_until_timestamp_seconds",
    "gauge",
    "Unix time until which influxd is stopped on purpose: the end, with margin, of the stop "
    "window of a cold backup or restore whose process still runs; 0 when there is none. "
    "InfluxdLeftDown waits until then, so a long healthy window is no outage, while a run "
    "killed in its window or a failed start is one at once.",
    (),
)
SERVED_LESS = Family(
    "influx_backupd_served_less_points",
    "gauge",
    "Points a database served fewer after the restart of the job's newest cold run than just "
    "before its stop: the live server lost them at the restart (the archive holds them). "
    "Only databases that lost points have a sample.",
    (JOB_LABEL, "database"),
)
BUILD_INFO = Family(
    "influx_backupd_build_info",
    "gauge",
    "Always 1; the version label is influx-backupd's version.",
    ("version",),
)

# [offsite]: written only when off-site copies are configured
OFFSITE_LAST_SUCCESS = Family(
    "influx_backupd_offsite_last_success_timestamp_seconds",
    "gauge",
    "Unix time the newest backup of this job was complete in the off-site bucket.",
    (JOB_LABEL,),
)
OFFSITE_UPLOADED = Family(
    "influx_backupd_offsite_uploaded_bytes_total",
    "counter",
    "Bytes sent to the off-site bucket (ciphertext when encrypting).",
    (JOB_LABEL,),
)
OFFSITE_SKIPPED = Family(
    "influx_backupd_offsite_skipped_bytes_total",
    "counter",
    "Bytes of files not sent because an object of the same content was there to refer to: in "
    "the bucket already, or sent earlier in the same upload (identical files).",
    (JOB_LABEL,),
)
OFFSITE_PENDING = Family(
    "influx_backupd_offsite_pending_backups",
    "gauge",
    "Good local backups not yet complete in the off-site bucket.",
    (JOB_LABEL,),
)
OFFSITE_DAMAGED = Family(
    "influx_backupd_offsite_damaged_objects",
    "gauge",
    "Objects in the bucket a check found missing or damaged and no sync has sent again yet.",
    (JOB_LABEL,),
)
# A state set (OpenMetrics' StateSet, as kube-state-metrics writes a pod's phase): every reason
# has a sample, 1 for what fails now and 0 for the others. Not a sample only while failing: a
# series that vanishes reads as "no data" (a file not written, not scraped) as much as "ok", and
# Prometheus marks it stale rather than 0; with all of them written, `== 1` alerts, a panel shows
# the 0s of a healthy host, and `changes()` sees each transition. It is per host (one sync sends
# for every job), so it has no backup_job label.
OFFSITE_FAILING = Family(
    "influx_backupd_offsite_failing",
    "gauge",
    "1 for each reason the off-site copy fails on now, 0 for the others (every reason has a "
    "sample): prefix_taken (another writer holds the prefix: offsite sync --adopt takes it "
    "over), sweep_blocked (retention deleted no object: a manifest does not read), unreachable "
    "(the endpoint does not answer, or stalls), credentials (refused), damaged (objects found "
    "damaged in the bucket, not sent again yet), other. All 0 after a sync that completed.",
    ("reason",),
)
OFFSITE_FAMILIES = (
    OFFSITE_LAST_SUCCESS,
    OFFSITE_UPLOADED,
    OFFSITE_SKIPPED,
    OFFSITE_PENDING,
    OFFSITE_DAMAGED,
    OFFSITE_FAILING,
)


@dataclass(frozen=True)
class OffsiteFigures:
    last_success: float | None
    uploaded_bytes: int
    skipped_bytes: int
    pending: int
    damaged: int = 0


FAMILIES: tuple[Family, ...] = (
    BUILD_INFO,
    HEARTBEAT,
    LEFT_DOWN,
    DOWN_EXPECTED,
    NEXT_RUN,
    NOT_STARTED,
    LAST_NOT_STARTED,
    KEPT,
    LAST_SUCCESS,
    LAST_RUN,
    DOWNTIME,
    PHASE,
    ARCHIVE_BYTES,
    RUNS,
    VERIFY_FAILURES,
    FAILING_VERIFY,
    OLDEST_CHECK,
    SERVED_LESS,
)
# the families every file has; OFFSITE_FAMILIES are added with [offsite]
METRIC_NAMES: frozenset[str] = frozenset(f.name for f in FAMILIES)
# the labels each family's samples carry: INSTANCE_LABEL first on every one
METRIC_LABELS: Mapping[str, tuple[str, ...]] = {
    f.name: (INSTANCE_LABEL, *f.labels) for f in FAMILIES
}

Labels = tuple[tuple[str, str], ...]
# Written only by the daemon; other writers (a backup by hand, prune, verify) carry them over.
DAEMON_FAMILIES: tuple[Family, ...] = (HEARTBEAT, NEXT_RUN, NOT_STARTED, LAST_NOT_STARTED)


@dataclass(frozen=True)
class DaemonFacts:
    """What only the running daemon knows: that it is alive now, when each job runs next, and
    which scheduled runs it could not begin (job -> (count, last time)): those have no record."""

    heartbeat: float
    next_runs: Mapping[str, float]
    not_started: Mapping[str, tuple[int, float]] = field(default_factory=dict)


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def previous_daemon_facts(text: str) -> DaemonFacts | None:
    """The daemon's heartbeat and next runs as an earlier write of the file has them."""
    heartbeat: float | None = None
    next_runs: dict[str, float] = {}
    counts: dict[str, int] = {}
    lasts: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if match["name"] == HEARTBEAT.name:
            heartbeat = value
            continue
        labels = {k: _unescape(v) for k, v in _LABEL.findall(match["labels"] or "")}
        job = labels.get(JOB_LABEL)
        if job is None or not math.isfinite(value):
            continue
        if match["name"] == NEXT_RUN.name:
            next_runs[job] = value
        elif match["name"] == NOT_STARTED.name and value >= 0:
            counts[job] = int(value)
        elif match["name"] == LAST_NOT_STARTED.name:
            lasts[job] = value
    not_started = {job: (n, lasts.get(job, 0.0)) for job, n in counts.items() if n}
    return DaemonFacts(heartbeat, next_runs, not_started) if heartbeat is not None else None


# Where the running daemon publishes its pid and start time (daemon.loop writes it, removes it
# on a clean exit; `status` reads it): a killed daemon's is left, naming a process that is gone.
DAEMON_STATE = "daemon.json"


def carried_over(path: Path, state_dir: Path) -> DaemonFacts | None:
    """What a writer other than the daemon (a backup by hand, verify, prune) keeps of the daemon's
    samples in the file at path: its last heartbeat, so that it neither hides a dead daemon nor
    invents a live one; its next runs only while the daemon runs (a killed one's would show a run
    that never comes; one that stopped cleanly wrote none)."""
    try:
        text = read_small(path, MAX_METRICS_FILE).decode("utf-8", errors="replace")
        facts = previous_daemon_facts(text)
    except OSError:
        return None
    if facts is None or not facts.next_runs or read_published(state_dir / DAEMON_STATE) is not None:
        return facts
    return DaemonFacts(facts.heartbeat, {}, facts.not_started)


def instance_of(path: Path) -> str:
    """The INSTANCE_LABEL value of the metrics file at `path` (see INSTANCE_LABEL)."""
    stem = path.name.removesuffix(".prom")
    if stem == _FILE_PREFIX:
        return DEFAULT_INSTANCE
    return stem.removeprefix(_FILE_PREFIX + "_") or DEFAULT_INSTANCE


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _finished_at(record: RunRecord) -> float:
    # A finished record should carry finished_at; fall back so a crash-written
    # record still orders by when it ran.
    return record.finished_at if record.finished_at is not None else record.started_at


def _order(record: RunRecord) -> tuple[float, float, str]:
    return (_finished_at(record), record.started_at, record.id)


VERIFY_FAILED = "verify_failed"  # counter name for verify failures, beside the RESULTS


def render(
    records: Iterable[RunRecord],
    verify_failures: Mapping[str, int] | None = None,
    *,
    counters: Mapping[tuple[str, str], tuple[int, float]] | None = None,
    daemon: DaemonFacts | None = None,
    left_down: bool = False,
    down_expected_until: float = 0.0,
    version: str = __version__,
    offsite: Mapping[str, OffsiteFigures] | None = None,
    offsite_failing: Collection[str] = (),
    instance: str = DEFAULT_INSTANCE,
    jobs: Collection[str] | None = None,
    now: float | None = None,
) -> str:
    """The textfile for all jobs in `records`, every sample labelled INSTANCE_LABEL=`instance`.

    `verify_failures` adds failures the records no longer show (job -> count),
    e.g. of runs already pruned. Running records are ignored: they have no
    result yet.

    `counters` ((job, result or VERIFY_FAILED) -> (count, last time), the catalog's
    monotonic counters) makes runs_total and verify_failures_total survive
    retention: with it they come from the counters, not from counting records,
    and last_run takes the counter's last time when the record is gone.

    `offsite` (per job) and `offsite_failing` (the reasons of offsite.errors.REASONS the
    off-site copy fails on now) add the off-site families; written only with [offsite].

    `jobs` (the config's job names): per-job samples only for these. A job renamed or removed
    from the config keeps its backups (never pruned) and its records, but its series would stay
    frozen in the file for ever: its last success ageing (InfluxBackupTooOld), a last failed run
    or a served_less that no later run clears (InfluxBackupFailed, InfluxdServedLess). `status`
    names such backups (`not in the config: N backups kept`); the metrics leave them out.

    A run dated ahead of `now` (default: the clock's; store.record.dated_ahead) is no job's
    last run or success: dated in 2027, it held last_success there and kept every later
    failure from InfluxBackupFailed and InfluxBackupTooOld for a year. It is kept and counted.
    """
    now = time.time() if now is None else now
    extra_failures = verify_failures or {}
    counted = counters
    by_job: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_job[record.job].append(record)
    samples: dict[str, list[tuple[Labels, float]]] = {f.name: [] for f in FAMILIES}
    samples[BUILD_INFO.name].append(((("version", version),), 1))
    samples[LEFT_DOWN.name].append(((), 1 if left_down else 0))
    samples[DOWN_EXPECTED.name].append(((), down_expected_until if left_down else 0))
    if daemon is not None:
        samples[HEARTBEAT.name].append(((), daemon.heartbeat))
        for name, when in sorted(daemon.next_runs.items()):
            samples[NEXT_RUN.name].append((((JOB_LABEL, name),), when))
        # every job's, 0 included: an alert on increase() sees the first one
        for name in sorted(daemon.not_started if jobs is None else jobs):
            count, at = daemon.not_started.get(name, (0, 0.0))
            samples[NOT_STARTED.name].append((((JOB_LABEL, name),), count))
            samples[LAST_NOT_STARTED.name].append((((JOB_LABEL, name),), at))

    shown = set(by_job) | set(extra_failures) | {j for j, _ in counted or {}}
    if jobs is not None:
        shown &= set(jobs)
    for job in sorted(shown):
        runs = by_job.get(job, [])
        finished = sorted(
            (r for r in runs if r.status in RESULTS and not dated_ahead(r, now)), key=_order
        )
        oks = [r for r in finished if r.ok]
        kept = [r for r in runs if r.ok]
        j = ((JOB_LABEL, job),)

        if oks:
            samples[LAST_SUCCESS.name].append((j, _finished_at(oks[-1])))
            samples[ARCHIVE_BYTES.name].append((j, oks[-1].bytes))
            checks = [r.verified_at or _finished_at(r) for r in kept]
            samples[OLDEST_CHECK.name].append((j, min(checks)))
        failing = sum(1 for r in kept if r.failed_check)
        samples[KEPT.name].append((j, len(kept)))
        samples[FAILING_VERIFY.name].append((j, failing))
        for result in RESULTS:
            times = [_finished_at(r) for r in finished if r.status == result]
            if counted is not None and (job, result) in counted:
                at = counted[job, result][1]
                if at <= now + FUTURE_SLACK_S:  # counted by a run dated ahead: as above
                    times.append(at)
            if times:
                samples[LAST_RUN.name].append(((*j, ("result", result)), max(times)))
        downtimes = [r.downtime_s for r in finished if r.downtime_s is not None]
        if downtimes:
            samples[DOWNTIME.name].append((j, downtimes[-1]))
        for db, points in served_less(finished)[1].items():
            samples[SERVED_LESS.name].append(((*j, ("database", db)), points))
        if finished:
            last = finished[-1]
            for phase, attr in PHASES:
                seconds: float | None = getattr(last, attr)
                if seconds is not None:
                    samples[PHASE.name].append(((*j, ("phase", phase)), seconds))
        # Every result from the first write, so increase() sees the first failure.
        for result in RESULTS:
            if counted is not None:
                count = counted.get((job, result), (0, 0.0))[0]
            else:
                count = sum(1 for r in runs if r.status == result)
            samples[RUNS.name].append(((*j, ("result", result)), count))
        if counted is not None:
            failed_verifies = counted.get((job, VERIFY_FAILED), (0, 0.0))[0]
        else:
            failed_verifies = sum(1 for r in runs if r.verify_status == "failed")
        samples[VERIFY_FAILURES.name].append((j, failed_verifies + extra_failures.get(job, 0)))

    families = FAMILIES
    if offsite is not None:
        families += OFFSITE_FAMILIES
        for f in OFFSITE_FAMILIES:
            samples[f.name] = []
        for job, figures in sorted(offsite.items()):
            j = ((JOB_LABEL, job),)
            if figures.last_success is not None:
                samples[OFFSITE_LAST_SUCCESS.name].append((j, figures.last_success))
            samples[OFFSITE_UPLOADED.name].append((j, figures.uploaded_bytes))
            samples[OFFSITE_SKIPPED.name].append((j, figures.skipped_bytes))
            samples[OFFSITE_PENDING.name].append((j, figures.pending))
            samples[OFFSITE_DAMAGED.name].append((j, figures.damaged))
        for reason in REASONS:
            samples[OFFSITE_FAILING.name].append(
                ((("reason", reason),), 1 if reason in offsite_failing else 0)
            )

    lines: list[str] = []
    first = ((INSTANCE_LABEL, instance),)
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for labels, value in samples[family.name]:
            rendered = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in first + labels)
            lines.append(f"{family.name}{{{rendered}}} {format_value(value)}")
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Replace `path` atomically so node_exporter never reads half a file: the temp file is
    hidden and does not end in .prom (the collector reads only *.prom); 0644, as
    node_exporter often runs as another user. A symlink is written through (the config check
    follows it too): replaced, the link would become a file and its target go stale."""
    replace_file(Path(os.path.realpath(path)), text.encode(), mode=0o644)


def mark_left_down(path: Path, down_expected_until: float = 0.0) -> None:
    """The metrics file as it is, with left_down 1: written by a cold job just before it asks
    influxd to stop, so a run killed in the window (no daemon to rewrite the file) still shows.
    No catalog read: only that one sample changes (the whole file from nothing if none yet),
    and DOWN_EXPECTED's, the end of the window the run expects (see CrashMarker)."""
    set_left_down(path, True, down_expected_until)


def set_left_down(path: Path, down: bool, down_expected_until: float = 0.0) -> None:
    """The metrics file as it is, with only its left_down and DOWN_EXPECTED samples set (the
    whole file from nothing if it has no left_down yet): what mark_left_down writes, and what a
    recovery that brought influxd back writes, without the catalog."""
    wanted = _left_down_lines(instance_of(path), down, down_expected_until)
    try:
        lines = read_small(path, MAX_METRICS_FILE).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    at: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        if (name := _sample_name(line)) in wanted:
            at.setdefault(name, []).append(i)
    if LEFT_DOWN.name not in at:
        write_textfile(
            path,
            render(
                [],
                left_down=down,
                down_expected_until=down_expected_until,
                instance=instance_of(path),
            ),
        )
        return
    for name, indexes in at.items():  # a file from before the instance label has the bare name
        for i in indexes:
            lines[i] = wanted[name]
    if DOWN_EXPECTED.name not in at:  # a file an older version wrote: its family added after
        after = at[LEFT_DOWN.name][-1] + 1
        lines[after:after] = [
            f"# HELP {DOWN_EXPECTED.name} {_escape_help(DOWN_EXPECTED.help)}",
            f"# TYPE {DOWN_EXPECTED.name} {DOWN_EXPECTED.type}",
            wanted[DOWN_EXPECTED.name],
        ]
    write_textfile(path, "\n".join(lines) + "\n")


def left_down_in(path: Path) -> tuple[bool, float] | None:
    """What the metrics file at `path` says of left_down and DOWN_EXPECTED now (None: no file,
    or no left_down sample; a missing DOWN_EXPECTED reads 0)."""
    try:
        text = read_small(path, MAX_METRICS_FILE).decode("utf-8", errors="replace")
    except OSError:
        return None
    down: bool | None = None
    until = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        if match["name"] == LEFT_DOWN.name:
            down = match["value"] != "0"
        elif match["name"] == DOWN_EXPECTED.name:
            with contextlib.suppress(ValueError):
                until = float(match["value"])
    return None if down is None else (down, until)


def _left_down_lines(instance: str, down: bool, down_expected_until: float) -> dict[str, str]:
    """The left_down and DOWN_EXPECTED lines of an instance's file, as render writes them."""
    label = f'{INSTANCE_LABEL}="{escape_label_value(instance)}"'
    until = down_expected_until if down else 0
    return {
        LEFT_DOWN.name: f"{LEFT_DOWN.name}{{{label}}} {1 if down else 0}",
        DOWN_EXPECTED.name: f"{DOWN_EXPECTED.name}{{{label}}} {format_value(until)}",
    }


def _sample_name(line: str) -> str | None:
    match = _SAMPLE.match(line)
    return match["name"] if match else None


def mark_left_down_before_stop(
    path: Path | None, logger: Logger, down_expected_until: float, phase: str = "stop"
) -> None:
    """mark_left_down just before influxd is asked to stop (a cold run's, a restore's swap);
    never after it (that would lengthen the downtime). A failure is said, and the caller
    goes on: the rewrite after the start says so again if it persists."""
    if path is None:
        return
    try:
        mark_left_down(path, down_expected_until)
    except OSError as exc:
        logger.warning(
            "metrics.not_written", phase=phase, path=str(path), error=exc.strerror or str(exc)
        )
