"""The cold/hot policy: table-driven cases and rules that must hold for every input."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as dtime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from influx_backupd.core.config import JobSection
from influx_backupd.core.schedule import in_window
from influx_backupd.run.policy import Capability, decide, predict_downtime
from influx_backupd.store.record import RunRecord

NIGHT = datetime(2026, 3, 2, 2, 30, tzinfo=UTC)  # 02:30 UTC
NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
UP = Capability(snapshot_service=True, influxd_version="1.6.7")
DOWN = Capability(snapshot_service=False, influxd_version="1.6.7")


def cold_run(
    downtime: float, *, n: int = 0, bytes_: int = 100_000_000, copy: float = 0.0
) -> RunRecord:
    return RunRecord(
        id=f"r{n}",
        job="j",
        mode="cold",
        status="ok",
        started_at=1_700_000_000.0 + n * 86400,
        stop_s=1.0,
        copy_s=copy or downtime - 2.0,
        start_s=1.0,
        downtime_s=downtime,
        window_bytes=bytes_,
    )


def job(**keys: object) -> JobSection:
    return JobSection.model_validate({"name": "j", **keys})


FAST = [cold_run(10.0, n=i) for i in range(3)]  # 10 s downtime
SLOW = [cold_run(600.0, n=i) for i in range(3)]  # 10 min downtime


@dataclass(frozen=True)
class Case:
    name: str
    keys: dict[str, object]
    now: datetime
    capability: Capability
    history: list[RunRecord]
    mode: str
    fallback: str | None = None
    reason: str = ""


CASES = [
    Case("cold, no window", {"mode": "cold"}, NOON, DOWN, [], "cold", reason="mode = cold"),
    Case(
        "cold inside window",
        {"mode": "cold", "cold_window": "01:00-05:00"},
        NIGHT,
        DOWN,
        [],
        "cold",
        reason="inside cold_window",
    ),
    Case(
        "cold outside window",
        {"mode": "cold", "cold_window": "01:00-05:00"},
        NOON,
        UP,
        [],
        "skip",
        reason="outside cold_window 01:00-05:00",
    ),
    Case(
        "window in the job's time zone",
        {"mode": "cold", "cold_window": "01:00-05:00", "timezone": "Asia/Tokyo"},
        datetime(2026, 3, 1, 17, 0, tzinfo=UTC),
        DOWN,
        [],
        "cold",
        reason="02:00 Asia/Tokyo is inside",
    ),
    Case(
        "window wraps midnight",
        {"mode": "cold", "cold_window": "22:00-02:00"},
        datetime(2026, 3, 2, 23, 0, tzinfo=UTC),
        DOWN,
        [],
        "cold",
    ),
    Case(
        "cold within max_downtime",
        {"mode": "cold", "max_downtime": "5m"},
        NOON,
        DOWN,
        FAST,
        "cold",
        reason="predicted downtime 10.0s",
    ),
    Case(
        "cold over max_downtime",
        {"mode": "cold", "max_downtime": "5m"},
        NOON,
        DOWN,
        SLOW,
        "skip",
        reason="exceeds max_downtime 300s",
    ),
    Case(
        "first cold run cannot be predicted",
        {"mode": "cold", "max_downtime": "5m"},
        NOON,
        DOWN,
        [],
        "cold",
        reason="no successful cold run yet",
    ),
    Case("hot", {"mode": "hot"}, NOON, DOWN, [], "hot", reason="mode = hot"),
    Case(
        "hot with fallback",
        {"mode": "hot", "fallback": "cold"},
        NOON,
        UP,
        [],
        "hot",
        fallback="cold",
    ),
    Case(
        "auto, snapshot answers",
        {"mode": "auto"},
        NOON,
        UP,
        SLOW,
        "hot",
        reason="snapshot service of influxd 1.6.7 answers",
    ),
    Case(
        "auto, no snapshot, in window",
        {"mode": "auto", "cold_window": "01:00-05:00"},
        NIGHT,
        DOWN,
        FAST,
        "cold",
        reason="does not answer",
    ),
    Case("auto, no snapshot, no window set", {"mode": "auto"}, NOON, DOWN, [], "cold"),
    Case(
        "auto, no snapshot, outside window",
        {"mode": "auto", "cold_window": "01:00-05:00"},
        NOON,
        DOWN,
        [],
        "skip",
        reason="cold is not allowed now",
    ),
    Case(
        "auto, no snapshot, too slow",
        {"mode": "auto", "max_downtime": "1m"},
        NIGHT,
        DOWN,
        SLOW,
        "skip",
        reason="exceeds max_downtime 60s",
    ),
    Case(
        "auto with fallback",
        {"mode": "auto", "fallback": "cold"},
        NOON,
        UP,
        [],
        "hot",
        fallback="cold",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_table(case: Case) -> None:
    decision = decide(job(**case.keys), case.now, case.capability, case.history)
    assert decision.mode == case.mode, decision.reasons
    assert decision.fallback == case.fallback
    assert decision.reasons
    if case.reason:
        assert any(case.reason in r for r in decision.reasons), decision.reasons


def test_fallback_after_a_failed_hot_run_is_still_subject_to_the_cold_rules() -> None:
    j = job(mode="hot", fallback="cold", cold_window="01:00-05:00", max_downtime="5m")
    assert decide(j, NIGHT, DOWN, FAST, mode="cold").mode == "cold"
    assert decide(j, NOON, DOWN, FAST, mode="cold").mode == "skip"
    assert decide(j, NIGHT, DOWN, SLOW, mode="cold").mode == "skip"


def test_prediction_is_the_median_of_recent_ok_cold_runs() -> None:
    runs = [cold_run(d, n=i) for i, d in enumerate([5.0, 100.0, 7.0, 6.0, 8.0, 9.0])]
    failed = RunRecord(
        id="f", job="j", mode="cold", status="failed", started_at=2e9, downtime_s=999.0
    )
    hot = RunRecord(id="h", job="j", mode="hot", status="ok", started_at=2e9, downtime_s=None)
    prediction = predict_downtime([*runs, failed, hot])
    assert prediction.seconds == 8.0  # the last five: 100, 7, 6, 8, 9
    assert predict_downtime([]).seconds is None


def test_prediction_grows_with_the_data_beyond_what_recent_runs_copied() -> None:
    # 100 MB copied in 8 s (12.5 MB/s) plus 2 s stop/start; now 1 GB to copy
    runs = [cold_run(10.0, n=i, bytes_=100_000_000, copy=8.0) for i in range(3)]
    grown = predict_downtime(runs, data_bytes=1_000_000_000)
    assert grown.seconds == pytest.approx(2.0 + 80.0)
    assert "data grew" in grown.basis
    assert predict_downtime(runs, data_bytes=50_000_000).seconds == 10.0


def test_a_staged_run_s_downtime_follows_its_changes_not_the_data_size() -> None:
    """A staged run copies in its stop window only what changed since its pre-copy (44 bytes in
    0.002 s here): scaling the whole data by that rate predicted 18451 s, and a job with
    max_downtime = "5m" was skipped at every fire, for ever (no cold run ever came to correct
    it). Its downtime is the median of its own runs."""
    staged = []
    for i, downtime in enumerate([0.3, 0.9, 0.15]):
        run = cold_run(downtime, n=i, bytes_=44, copy=0.002)
        run.extra["copy"] = "staged"
        staged.append(run)
    prediction = predict_downtime(staged, data_bytes=67_136_270, copy="staged")
    assert prediction.seconds == 0.3 and "data grew" not in prediction.basis
    j = job(mode="cold", max_downtime="5m")
    sized = Capability(snapshot_service=False, influxd_version="1.6.7", data_bytes=67_136_270)
    assert decide(j, NOON, sized, staged, mode="cold").mode == "cold"
    # runs of the job's own copy method, where it has some: a switch to direct is not
    # predicted from the staged runs' short windows, nor staged from direct ones
    direct = [cold_run(600.0, n=10 + i) for i in range(3)]
    assert predict_downtime([*direct, *staged], copy="staged").seconds == 0.3
    assert predict_downtime([*direct, *staged], copy="direct").seconds == 600.0


@pytest.mark.parametrize(
    ("window", "clock", "inside"),
    [
        ("01:00-05:00", dtime(1, 0), True),
        ("01:00-05:00", dtime(4, 59), True),
        ("01:00-05:00", dtime(5, 0), False),
        ("01:00-05:00", dtime(0, 59), False),
        ("22:00-02:00", dtime(23, 30), True),
        ("22:00-02:00", dtime(1, 59), True),
        ("22:00-02:00", dtime(2, 0), False),
        ("22:00-02:00", dtime(12, 0), False),
        ("00:00-00:00", dtime(12, 0), True),
    ],
)
def test_window(window: str, clock: dtime, inside: bool) -> None:
    assert in_window(window, clock) is inside


windows = st.tuples(
    st.integers(0, 23), st.integers(0, 59), st.integers(0, 23), st.integers(0, 59)
).map(lambda t: f"{t[0]:02d}:{t[1]:02d}-{t[2]:02d}:{t[3]:02d}")
instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)
histories = st.lists(st.floats(min_value=0.5, max_value=3600.0), max_size=8).map(
    lambda ds: [cold_run(d, n=i) for i, d in enumerate(ds)]
)


@given(
    mode=st.sampled_from(["cold", "hot", "auto"]),
    window=st.none() | windows,
    max_downtime=st.none() | st.floats(min_value=1.0, max_value=7200.0),
    fallback=st.sampled_from(["none", "cold"]),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    now=instants,
    snapshot=st.booleans(),
    history=histories,
)
def test_rules_that_always_hold(
    mode: str,
    window: str | None,
    max_downtime: float | None,
    fallback: str,
    tz: str,
    now: datetime,
    snapshot: bool,
    history: list[RunRecord],
) -> None:
    j = job(
        mode=mode, cold_window=window, max_downtime=max_downtime, fallback=fallback, timezone=tz
    )
    d = decide(j, now, Capability(snapshot_service=snapshot), history)
    assert d.reasons
    if d.mode == "cold":
        if window is not None:
            assert in_window(window, now.astimezone(ZoneInfo(tz)).time())
        if max_downtime is not None and d.predicted_downtime_s is not None:
            assert d.predicted_downtime_s <= max_downtime
    if mode == "hot" or (mode == "auto" and snapshot):
        assert d.mode == "hot"
    if mode == "cold":
        assert d.mode in ("cold", "skip")
    assert d.fallback == ("cold" if fallback == "cold" and d.mode == "hot" else None)


@given(now=instants)
def test_a_cold_window_of_four_hours_allows_cold_a_sixth_of_the_day(now: datetime) -> None:
    j = job(mode="cold", cold_window="01:00-05:00")
    d = decide(j, now, DOWN, [])
    assert (d.mode == "cold") == (1 <= now.hour < 5)
