"""Crontab strings in their standard meaning, intervals, DST, and catch-up after a gap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from influx_backupd.core.schedule import (
    ScheduleError,
    build_trigger,
    cron_trigger,
    describe,
    latest_fire,
    missed_run,
    shortest_gap,
    validate,
    weekdays,
    window_missed,
)

MONDAY = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Job:
    schedule: str | None = None
    every: float | None = None
    jitter: float = 0.0
    timezone: str = "UTC"


def fires(expr: str, start: datetime = MONDAY, n: int = 14, tz: str = "UTC") -> list[datetime]:
    trigger = cron_trigger(expr, ZoneInfo(tz))
    out: list[datetime] = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and len(out) < n:
        out.append(fire)
        fire = trigger.get_next_fire_time(fire, fire + TICK)
    return out


def weekday_names(expr: str) -> set[str]:
    return {f.strftime("%a") for f in fires(expr)}


@pytest.mark.parametrize(
    ("expr", "days"),
    [
        ("0 3 * * 0", {"Sun"}),
        ("0 3 * * 7", {"Sun"}),
        ("0 3 * * sun", {"Sun"}),
        ("0 3 * * 1", {"Mon"}),
        ("0 3 * * 6", {"Sat"}),
        ("0 3 * * 1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0 3 * * mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0 3 * * 0,6", {"Sat", "Sun"}),
        ("0 3 * * 5-7", {"Fri", "Sat", "Sun"}),
        ("0 3 * * fri-sun", {"Fri", "Sat", "Sun"}),
        ("0 3 * * 0-7", {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}),
        ("0 3 * * */2", {"Sun", "Tue", "Thu", "Sat"}),
        ("0 3 * * 1-5/2", {"Mon", "Wed", "Fri"}),
        ("0 3 * * 1/2", {"Mon", "Wed", "Fri", "Sun"}),
        ("0 3 * * SAT,sun", {"Sat", "Sun"}),
    ],
)
def test_day_of_week_means_what_crontab_means(expr: str, days: set[str]) -> None:
    assert weekday_names(expr) == days
    assert all(f.hour == 3 and f.minute == 0 for f in fires(expr))


def test_sunday_is_zero_and_seven_and_the_first_run_is_the_coming_sunday() -> None:
    assert fires("0 3 * * 0", n=1) == [datetime(2026, 3, 8, 3, 0, tzinfo=UTC)]
    assert fires("0 3 * * 7", n=3) == fires("0 3 * * 0", n=3)


def test_both_day_fields_restricted_fire_when_either_matches() -> None:
    # crontab(5): "30 4 1,15 * 5" runs on the 1st, the 15th, and every Friday
    dates = {f.date() for f in fires("30 4 1,15 * 5", n=12)}
    assert datetime(2026, 3, 6).date() in dates  # a Friday
    assert datetime(2026, 3, 15).date() in dates  # a Sunday, but the 15th
    assert all(d.day in (1, 15) or d.weekday() == 4 for d in dates)
    # a "*"-led field is unrestricted: then only the other one counts
    assert {f.day for f in fires("0 3 */1 * 1", n=4)} == {9, 16, 23, 30}


def test_other_fields_keep_their_meaning() -> None:
    assert [f.minute for f in fires("*/15 * * * *", n=5)] == [0, 15, 30, 45, 0]
    assert {f.month for f in fires("0 0 1 jan,jul *", n=2)} == {1, 7}


@given(st.sets(st.integers(0, 7), min_size=1))
def test_any_list_of_day_numbers_is_the_same_days_with_7_as_0(days: set[int]) -> None:
    field = ",".join(str(d) for d in sorted(days))
    assert weekdays(field) == {d % 7 for d in days}


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 3 * *", "5-field"),
        ("0 3 * * 8", "day of week '8' must be 0-7"),
        ("0 3 * * 5-1", "runs backwards"),
        ("61 * * * *", "minute field '61'"),
        ("0 24 * * *", "hour field '24'"),
        ("0 3 0 * *", "day of month field '0'"),
        ("0 3 * 13 *", "month field '13'"),
        ("0 3 * * mon/0", "step '0'"),
        ("0 0 31 2 *", "never fires"),
        # was "the total range of the expression (-1)"
        ("60/5 * * * *", r"minute field '60/5'.*first value \(60\) is higher than .*\(59\)"),
        ("0 0,25/2 * * *", r"hour field '0,25/2'.*first value \(25\)"),
    ],
)
def test_a_bad_crontab_names_the_field(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        validate(expr)


def test_local_time_zone_follows_dst_and_utc_does_not() -> None:
    berlin = fires("0 3 * * *", start=datetime(2026, 3, 27, tzinfo=UTC), n=4, tz="Europe/Berlin")
    # 03:00 local each day: 02:00 UTC in winter, 01:00 UTC from 29 March (CEST)
    assert [f.astimezone(UTC).hour for f in berlin] == [2, 2, 1, 1]
    utc = fires("0 3 * * *", start=datetime(2026, 3, 27, tzinfo=UTC), n=4)
    assert {f.astimezone(UTC).hour for f in utc} == {3}


def test_local_times_in_the_dst_gap_move_and_in_the_repeated_hour_run_twice() -> None:
    # What example config warns about: 02:30 does not exist on 29 March in Berlin ...
    spring = fires(
        "30 2 * * *", start=datetime(2026, 3, 28, 12, tzinfo=UTC), n=2, tz="Europe/Berlin"
    )
    assert spring[0].astimezone(UTC) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST
    # ... and happens twice on 25 October
    autumn = fires(
        "30 2 * * *", start=datetime(2026, 10, 24, 12, tzinfo=UTC), n=3, tz="Europe/Berlin"
    )
    assert [f.astimezone(UTC) for f in autumn[:2]] == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
    ]


def test_every_builds_an_interval_anchored_at_the_last_run() -> None:
    anchor = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    trigger = build_trigger(Job(every=3600.0), anchor=anchor)
    assert trigger is not None
    assert trigger.get_next_fire_time(None, MONDAY) == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, MONDAY + TICK) == datetime(
        2026, 3, 2, 13, 0, tzinfo=UTC
    )
    assert build_trigger(Job()) is None
    assert describe(Job(every=21600.0)) == "every 6h"
    assert describe(Job(schedule="0 3 * * 0")) == "cron '0 3 * * 0' UTC"


@given(st.floats(min_value=1.0, max_value=3600.0))
def test_jitter_only_delays_and_never_by_more_than_jitter(jitter: float) -> None:
    trigger = build_trigger(Job(schedule="0 3 * * *", jitter=jitter))
    assert trigger is not None
    fire = trigger.get_next_fire_time(None, MONDAY)
    exact = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)
    assert exact <= fire <= exact + timedelta(seconds=jitter)


def test_catch_up_runs_the_latest_missed_time_once_within_the_window() -> None:
    trigger = cron_trigger("0 * * * *", ZoneInfo("UTC"))  # hourly
    last = datetime(2026, 3, 2, 7, 0, 5, tzinfo=UTC)
    now = datetime(2026, 3, 2, 12, 20, tzinfo=UTC)  # down since 07:00: 08:00 … 12:00 missed
    missed = missed_run(trigger, last, now, catch_up=3600)
    assert missed is not None
    assert missed.catch_up and missed.fire_time == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_a_miss_older_than_catch_up_is_reported_not_run() -> None:
    trigger = cron_trigger("0 3 * * *", ZoneInfo("UTC"))
    last = datetime(2026, 3, 1, 3, 0, 2, tzinfo=UTC)
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # 03:00 today was missed 6 hours ago
    missed = missed_run(trigger, last, now, catch_up=3600)
    assert missed is not None
    assert not missed.catch_up and missed.fire_time == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def test_nothing_is_missed_after_an_on_time_run_or_without_history() -> None:
    trigger = cron_trigger("0 3 * * *", ZoneInfo("UTC"))
    ran = datetime(2026, 3, 2, 3, 0, 1, tzinfo=UTC)
    assert missed_run(trigger, ran, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), 3600) is None
    assert missed_run(trigger, None, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), 3600) is None


def test_an_interval_job_catches_up_after_a_gap() -> None:
    last = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    trigger = build_trigger(Job(every=600.0), anchor=last, with_jitter=False)
    assert trigger is not None
    missed = missed_run(trigger, last, last + timedelta(minutes=25), catch_up=3600)
    assert missed is not None and missed.catch_up
    assert missed.fire_time == last + timedelta(minutes=20)
    assert missed_run(trigger, last, last + timedelta(minutes=9), catch_up=3600) is None


def test_latest_fire_is_exclusive_of_the_start_and_inclusive_of_the_end() -> None:
    trigger = cron_trigger("0 * * * *", ZoneInfo("UTC"))
    at = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert latest_fire(trigger, at, at) is None
    assert latest_fire(trigger, at - TICK, at) == at


@pytest.mark.parametrize(
    ("schedule", "gap"),
    [
        ("*/5 * * * *", 300),
        ("0 * * * *", 3600),
        ("@daily", 86400),
        ("0 3 * * 1-5", 86400),  # Friday to Monday is longer: the shortest counts
        ("0 3 1,15 * *", 14 * 86400),  # 1st to 15th; 15th to the next 1st: 14 to 17 days
        ("0 0 29 2 *", 4 * 365 * 86400 + 86400),  # leap days only
        ("0 0 1 1 1", 86400),  # cron's OR: 1 January or any Monday
    ],
)
def test_the_shortest_gap_between_runs_of_a_schedule(schedule: str, gap: float) -> None:
    assert shortest_gap(Job(schedule=schedule)) == gap
    assert shortest_gap(Job(every=5.0)) == 5.0
    assert shortest_gap(Job()) is None


def test_a_jitter_as_long_as_the_gap_between_runs_is_refused_at_load() -> None:
    from pydantic import ValidationError

    from influx_backupd.core.config import JobSection, VerifySection

    JobSection(name="hourly", schedule="0 * * * *", jitter=3599)
    JobSection(name="manual", jitter=86400 * 30)  # by hand only: no runs to push past
    for section in (
        lambda: JobSection(name="hourly", schedule="0 * * * *", jitter=30 * 86400),
        lambda: JobSection(name="often", every=600, jitter=600),
        lambda: VerifySection(schedule="@weekly", jitter=8 * 86400),
    ):
        with pytest.raises(ValidationError, match="must be shorter than the shortest time"):
            section()


@pytest.mark.parametrize(
    ("schedule", "every", "window", "missed"),
    [
        ("0 12 * * *", None, "02:00-04:00", True),  # noon, every day: never at night
        ("0 3 * * *", None, "02:00-04:00", False),
        ("30 23 * * *", None, "23:00-01:00", False),  # a window over midnight
        ("0 1 * * *", None, "23:00-01:00", True),  # its end is exclusive
        ("0 12 * * *", None, "12:00-12:00", False),  # equal ends: the whole day
        ("*/20 10-11 * * *", None, "02:00-04:00", True),  # dense, still never inside
        ("0 3 1 1 *", None, "02:00-04:00", False),  # once a year, inside
        ("0 13 1 1 *", None, "02:00-04:00", True),  # once a year, outside
        ("@weekly", None, "23:00-01:00", False),  # Sunday 00:00
        (None, 86400.0, "02:00-04:00", True),  # the time of day of the daemon's start
        (None, 6 * 3600.0, "02:00-04:00", True),  # four times a day, 6 h apart: may all miss
        (None, 7 * 3600.0, "02:00-04:00", False),  # 7 h: drifts over every hour of the day
        (None, 3600.0, "02:00-04:00", False),
        (None, 86400.5, "02:00-04:00", False),  # not whole seconds: drifts
        (None, None, "02:00-04:00", False),  # by hand only
    ],
)
def test_a_schedule_that_never_meets_its_cold_window_is_named(
    schedule: str | None, every: float | None, window: str, missed: bool
) -> None:
    said = window_missed(schedule, every, "Europe/Berlin", window)
    assert (said is not None) == missed, said
    if said is not None:
        assert window in said and "skipped" in said


def test_the_latest_fire_in_the_repeated_hour_is_found_and_never_one_outside_the_window() -> None:
    """Stepping from a fire in the repeated hour (fold=1) by adding to the local time went an
    hour back: the loop spun 200,000 steps (6 s before the daemon was ready) and returned a
    fire from before its own window, which the daemon then skipped as too late (time audit)."""
    trigger = cron_trigger("*/30 * * * *", ZoneInfo("Europe/Berlin"))
    now = datetime(2026, 10, 25, 1, 59, 50, tzinfo=UTC)  # 02:59:50 CET, the second time round
    latest = latest_fire(trigger, now - timedelta(hours=1), now)
    assert latest is not None
    assert latest.astimezone(UTC) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    missed = missed_run(trigger, datetime(2026, 10, 25, 0, 10, tzinfo=UTC), now, catch_up=3600)
    assert missed is not None and missed.catch_up
    assert missed.fire_time.astimezone(UTC) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


def test_a_schedule_inside_its_window_is_not_named_in_the_week_of_a_dst_change() -> None:
    """window_missed stepped the same way: on the Saturday before the October change it said
    an hourly schedule never fires inside 04:00-05:00."""
    now = datetime(2026, 10, 24, 3, 30, tzinfo=UTC)
    assert window_missed("0 * * * *", None, "Europe/Berlin", "04:00-05:00", now=now) is None


@pytest.mark.parametrize(("every", "jitter"), [(3600.0, 600.0), (86400.0, 3600.0)])
def test_every_with_jitter_keeps_to_its_grid_run_after_run(every: float, jitter: float) -> None:
    """APScheduler adds the jitter to the previous fire, itself jittered: the runs walked off
    the grid (4 h after 48 hourly runs with 10 min; 55 of 60 daily runs outside a 2 h cold
    window). Stepped here as the scheduler steps it: each fire within jitter of its grid time."""
    anchor = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    trigger = build_trigger(Job(every=every, jitter=jitter), anchor=anchor)
    assert trigger is not None
    fire = trigger.get_next_fire_time(None, anchor + TICK)
    for n in range(1, 61):
        assert fire is not None
        grid = anchor + timedelta(seconds=every * n)
        assert grid <= fire <= grid + timedelta(seconds=jitter), (n, fire, grid)
        fire = trigger.get_next_fire_time(fire, fire)
