"""The policy: cold, hot or skip for one run — a pure function of the job, the time, what the
server can do, and the job's recent runs. It reads nothing and logs nothing itself; the runner
gathers the inputs and logs the decision (`policy.decided`, `policy.skipped`).

Rules:
- cold only inside `cold_window` (in the job's time zone) when one is set;
- cold refused when the predicted downtime exceeds `max_downtime`;
- hot: hot (a failed run may fall back to cold when `fallback = "cold"`);
- auto: hot when the snapshot service answers, else cold when the cold rules allow, else skip.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from influx_backupd.core.schedule import in_window
from influx_backupd.store.record import RunRecord

Chosen = Literal["cold", "hot", "skip"]
RECENT = 5  # cold runs the downtime prediction looks at


class PolicyJob(Protocol):
    """The job keys the policy reads (config.JobSection has them)."""

    @property
    def mode(self) -> str: ...
    @property
    def timezone(self) -> str: ...
    @property
    def cold_window(self) -> str | None: ...
    @property
    def max_downtime(self) -> float | None: ...
    @property
    def fallback(self) -> str: ...
    @property
    def copy_mode(self) -> str: ...


@dataclass(frozen=True)
class Capability:
    """What the instance can do right now, measured by the caller."""

    snapshot_service: bool  # the snapshot (RPC) service at backup_host answers
    influxd_version: str | None = None
    data_bytes: int | None = None  # live size of what a cold run copies, when measured


@dataclass(frozen=True)
class Decision:
    mode: Chosen
    reasons: list[str]
    fallback: Literal["cold"] | None = None
    predicted_downtime_s: float | None = None


@dataclass(frozen=True)
class Prediction:
    seconds: float | None
    basis: str
    samples: list[float] = field(default_factory=list)


def predict_downtime(
    history: Sequence[RunRecord], data_bytes: int | None = None, copy: str | None = None
) -> Prediction:
    """Downtime of the next cold run, from the job's recent ok cold runs.

    The median downtime of the last few (of the job's copy method, `copy`, where it has
    runs of it); when the data has grown beyond what those runs copied in their stop window,
    the larger of that and stop+start overhead + bytes ÷ the copy rate they achieved. Only a
    direct copy's window holds all the data: a staged run copies there only what changed since
    its pre-copy, so its downtime follows the changes (the median), not the data's size.
    """
    cold = [
        r for r in history if r.mode == "cold" and r.status == "ok" and r.downtime_s is not None
    ]
    if copy is not None and any(_copy_of(r) == copy for r in cold):
        cold = [r for r in cold if _copy_of(r) == copy]
    cold.sort(key=lambda r: r.started_at)
    recent = cold[-RECENT:]
    if not recent:
        return Prediction(None, "no successful cold run yet")
    downtimes = [float(r.downtime_s or 0.0) for r in recent]
    median = statistics.median(downtimes)
    prediction = Prediction(median, f"median of the last {len(recent)} cold runs", downtimes)
    sized = [
        r
        for r in recent
        if _copy_of(r) != "staged" and r.window_bytes and r.copy_s and r.copy_s > 0
    ]
    if data_bytes is None or not sized:
        return prediction
    copied = statistics.median(float(r.window_bytes or 0) for r in sized)
    if data_bytes <= copied:
        return prediction
    rate = statistics.median(float(r.window_bytes or 0) / float(r.copy_s or 1.0) for r in sized)
    overhead = statistics.median(float((r.stop_s or 0.0) + (r.start_s or 0.0)) for r in sized)
    by_size = overhead + data_bytes / rate
    if by_size <= median:
        return prediction
    return Prediction(
        by_size,
        f"{data_bytes} bytes at {rate:.0f} B/s plus {overhead:.1f}s stop/start (data grew)",
        downtimes,
    )


def _copy_of(record: RunRecord) -> str:
    """How a cold run copied: records from before staged copies existed were direct."""
    return str(record.extra.get("copy") or "direct")


def _local(now: datetime, tz: str) -> datetime:
    aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return aware.astimezone(ZoneInfo(tz))


def cold_check(
    job: PolicyJob, now: datetime, capability: Capability, history: Sequence[RunRecord]
) -> tuple[bool, list[str], float | None]:
    """Whether a cold run is allowed now, with the reasons either way."""
    reasons: list[str] = []
    allowed = True
    if job.cold_window is not None:
        local = _local(now, job.timezone)
        clock = local.strftime("%H:%M")
        if in_window(job.cold_window, local.time()):
            reasons.append(f"{clock} {job.timezone} is inside cold_window {job.cold_window}")
        else:
            allowed = False
            reasons.append(f"{clock} {job.timezone} is outside cold_window {job.cold_window}")
    prediction = predict_downtime(history, capability.data_bytes, job.copy_mode)
    if job.max_downtime is not None:
        if prediction.seconds is None:
            reasons.append(f"{prediction.basis}: max_downtime cannot be checked, allowed")
        elif prediction.seconds > job.max_downtime:
            allowed = False
            reasons.append(
                f"predicted downtime {prediction.seconds:.1f}s ({prediction.basis}) "
                f"exceeds max_downtime {job.max_downtime:g}s"
            )
        else:
            reasons.append(
                f"predicted downtime {prediction.seconds:.1f}s ({prediction.basis}) "
                f"is within max_downtime {job.max_downtime:g}s"
            )
    return allowed, reasons, prediction.seconds


def decide(
    job: PolicyJob,
    now: datetime,
    capability: Capability,
    history: Sequence[RunRecord],
    mode: str | None = None,
) -> Decision:
    """Cold, hot or skip for one run of `job` at `now`.

    `mode` overrides the job's mode: the runner asks for "cold" when a failed hot run falls back.
    """
    requested = mode or job.mode
    fallback: Literal["cold"] | None = "cold" if job.fallback == "cold" else None
    version = f"influxd {capability.influxd_version}" if capability.influxd_version else "influxd"

    if requested == "hot":
        reasons = ["mode = hot"]
        if fallback:
            reasons.append("a failed hot run falls back to cold (fallback = cold)")
        return Decision("hot", reasons, fallback)

    if requested == "auto" and capability.snapshot_service:
        reasons = [f"mode = auto: the snapshot service of {version} answers"]
        if fallback:
            reasons.append("a failed hot run falls back to cold (fallback = cold)")
        return Decision("hot", reasons, fallback)

    if requested == "auto":
        head = [f"mode = auto: the snapshot service of {version} does not answer"]
    elif requested == "cold":
        head = ["mode = cold"]
    else:
        raise ValueError(f"unknown mode {requested!r}")
    allowed, reasons, predicted = cold_check(job, now, capability, history)
    if allowed:
        return Decision("cold", head + reasons, None, predicted)
    return Decision("skip", [*head, *reasons, "cold is not allowed now: skipped"], None, predicted)
