"""A job's `schedule` / `every` as an APScheduler 3 trigger, with crontab's standard meaning.

APScheduler 3 numbers weekdays from Monday (0 = Monday) and ANDs day-of-month with day-of-week;
crontab numbers them from Sunday (0 and 7 = Sunday) and, when both day fields are restricted,
fires when either matches. Both differences are translated here, so "0 3 * * 0" is Sunday.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Protocol
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

# crontab weekday numbers: 0 and 7 are Sunday
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAY_NUMBERS = {name: i for i, name in enumerate(_DAY_NAMES)}
_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
# walking a trigger's fire times backwards is done forwards from a lower bound; this caps it
_MAX_STEPS = 200_000
_TICK = timedelta(microseconds=1)


class ScheduleError(ValueError):
    """A crontab string that cron would not accept (the message names the field)."""


class Schedulable(Protocol):
    """The job keys a trigger is built from (config.JobSection has them)."""

    @property
    def schedule(self) -> str | None: ...
    @property
    def every(self) -> float | None: ...
    @property
    def jitter(self) -> float: ...
    @property
    def timezone(self) -> str: ...


def _weekday(token: str) -> int:
    """0-7 as written (7 stays 7 so "5-7" is a range), or a three-letter name (sun = 0)."""
    low = token.strip().lower()
    if low in _DAY_NUMBERS:
        return _DAY_NUMBERS[low]
    if not low.isdigit() or not 0 <= int(low) <= 7:
        raise ScheduleError(
            f"day of week {token!r} must be 0-7 (0 and 7 are Sunday) or sun, mon, … sat"
        )
    return int(low)


def weekdays(field: str) -> set[int] | None:
    """The crontab day-of-week field as a set of days (0 = Sunday … 6 = Saturday).

    None for "*" (every day). Supports names, numbers 0-7, lists, ranges and steps
    ("mon-fri", "1-5", "0,6", "5-7", "fri-sun", "*/2", "1-5/2", "1/2").
    """
    if field == "*":
        return None
    days: set[int] = set()
    for part in field.split(","):
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ScheduleError(f"day of week step {step_text!r} must be a positive number")
            step = int(step_text)
        if not span:
            raise ScheduleError(f"day of week {field!r} has an empty item")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            low, _, high = span.partition("-")
            first, last = _weekday(low), _weekday(high)
            if last == 0 and first > 0:
                last = 7  # "fri-sun": Sunday at the end of the week
            if last < first:
                raise ScheduleError(
                    f"day of week range {span!r} runs backwards (write it as two ranges)"
                )
        else:
            first = last = _weekday(span)
            if slash:
                last = 7  # cron: "1/2" means 1-7/2
        days.update(d % 7 for d in range(first, last + 1, step))
    return days


def _apscheduler_day_of_week(days: set[int]) -> str:
    # Names are unambiguous whatever APScheduler's numbering is.
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


# cron's (vixie, cronie) nicknames; @reboot has no meaning for a schedule.
ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def cron_trigger(expr: str, tz: ZoneInfo, jitter: float | None = None) -> BaseTrigger:
    """A trigger that fires when the 5-field crontab `expr` (or a nickname such as @daily)
    does, in time zone `tz`."""
    if not expr.isascii() or not expr.isprintable():
        # int() reads "٣" as 3; a newline would split every line that shows the schedule
        raise ScheduleError(
            f"{expr!r}: only ASCII digits, letters, spaces and * , - / in a crontab string"
        )
    expr = expr.strip()
    if expr.startswith("@"):
        if expr.lower() not in ALIASES:
            raise ScheduleError(
                f"unknown nickname {expr!r}: use one of {', '.join(ALIASES)} or 5 fields"
            )
        expr = ALIASES[expr.strip().lower()]
    fields = expr.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"must be a 5-field crontab string like '0 3 * * *', not {expr!r} ({len(fields)} fields)"
        )
    minute, hour, dom, month, dow = fields
    # One field at a time, in order, so the message names the field that is wrong.
    for key, label, value, top in zip(
        ("minute", "hour", "day", "month"), _FIELDS, fields, (59, 23, 31, 12), strict=False
    ):
        # "60/5": APScheduler reads it as a range that ends before it starts and says "the
        # total range of the expression (-1)"; said here as the value it is
        start = next(
            (
                int(p[0])
                for p in (part.split("/") for part in value.split(","))
                if len(p) == 2 and p[0].isdigit() and int(p[0]) > top
            ),
            None,
        )
        if start is not None:
            raise ScheduleError(
                f"{label} field {value!r} of {expr!r}: the first value ({start}) is higher than "
                f"the maximum value ({top})"
            )
        try:
            CronTrigger(**{key: value}, timezone=tz)
        except ValueError as exc:
            raise ScheduleError(f"{label} field {value!r} of {expr!r}: {_reason(exc)}") from None
    days = weekdays(dow)
    dow_arg = "*" if days is None else _apscheduler_day_of_week(days)

    def make(day: str, day_of_week: str, jitter: float | None) -> CronTrigger:
        try:
            return CronTrigger(
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=day_of_week,
                timezone=tz,
                jitter=jitter,
            )
        except ValueError as exc:
            raise ScheduleError(f"{expr!r}: {_reason(exc)}") from None

    # cron (vixie, cronie): a field starting with "*" counts as unrestricted; when both day
    # fields are restricted, either may match.
    if not dom.startswith("*") and not dow.startswith("*"):
        return OrTrigger([make(dom, "*", None), make("*", dow_arg, None)], jitter=jitter or None)
    return make(dom, dow_arg, jitter or None)


_UNRECOGNIZED = re.compile(r'Unrecognized expression "(.*)" for field "(\w+)"\Z')
_FIELD_NAMES = {"day": "day of month", "day_of_week": "day of week"}


def _reason(exc: ValueError) -> str:
    # APScheduler says "Error validating expression '61': the last value (61) is higher …"
    text = str(exc)
    unrecognized = _UNRECOGNIZED.match(text)
    if unrecognized is not None:  # cron's L, W, # and ? are not ours either
        value, field = unrecognized.groups()
        return (
            f"{value!r} is not a {_FIELD_NAMES.get(field, field)} value we take: numbers, "
            "ranges (1-5), lists (1,15), steps (*/2) and names (mon, jan)"
        )
    return text.split("': ", 1)[1] if text.startswith("Error validating expression") else text


def validate(expr: str) -> None:
    """Raise ScheduleError if `expr` is not a crontab string this daemon can run."""
    trigger = cron_trigger(expr, ZoneInfo("UTC"))
    # Fields that are valid one by one but never meet ("0 0 31 2 *") never fire.
    if trigger.get_next_fire_time(None, datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC"))) is None:
        raise ScheduleError(f"{expr!r} never fires")


def build_trigger(
    job: Schedulable, *, anchor: datetime | None = None, with_jitter: bool = True
) -> BaseTrigger | None:
    """The job's trigger, or None for a job that only runs by hand.

    `anchor` starts an `every` job's grid at a known run (its last start), so a restart keeps
    the rhythm; without one the first run is one interval from now.
    """
    tz = ZoneInfo(job.timezone)
    jitter = job.jitter if with_jitter and job.jitter > 0 else None
    if job.schedule is not None:
        return cron_trigger(job.schedule, tz, jitter)
    if job.every is not None:
        return _GridInterval(seconds=job.every, start_date=anchor, timezone=tz, jitter=jitter)
    return None


class _GridInterval(IntervalTrigger):  # type: ignore[misc]  # APScheduler 3 is untyped
    """An interval whose every run is its grid time plus a fresh jitter. APScheduler's adds the
    jitter to the previous fire, itself jittered, so the runs walked off the grid: 4 h after
    48 hourly runs with a 10 min jitter, and a daily cold job out of its cold window."""

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        if previous_fire_time is not None:
            # the jitter is under the interval (config): the grid's next time after the
            # previous fire is the one after that fire's own grid time
            now = just_after(previous_fire_time)
        fire: datetime | None = super().get_next_fire_time(None, now)
        return fire


def fire_after(trigger: BaseTrigger, moment: datetime) -> datetime | None:
    """trigger's first fire strictly after moment (None: it never fires again)."""
    fire: datetime | None = trigger.get_next_fire_time(None, just_after(moment))
    return fire


def just_after(moment: datetime) -> datetime:
    """A microsecond after moment, as an instant. Adding to a local time is wall-clock
    arithmetic that resets `fold`: from the second 02:30 of a repeated hour it went an hour
    back (and a trigger stepped so returned fires from before the window it was asked for)."""
    return moment.astimezone(UTC) + _TICK


def shortest_gap(job: Schedulable) -> float | None:
    """The shortest time in seconds between two runs of the job's schedule, from its first 50
    fire times after 2000-01-01 (every pattern repeats within them, leap days included), or
    None for a job run only by hand. A jitter must stay under it."""
    if job.every is not None:
        return job.every
    trigger = build_trigger(job, with_jitter=False)
    if trigger is None:
        return None
    gaps: list[float] = []
    previous: datetime | None = None
    now = datetime(2000, 1, 1, tzinfo=ZoneInfo(job.timezone))
    for _ in range(50):
        fire = trigger.get_next_fire_time(previous, now)
        if fire is None:
            break
        if previous is not None and fire > previous:
            gaps.append((fire - previous).total_seconds())
        previous, now = fire, just_after(fire) + timedelta(seconds=1)
    return min(gaps, default=None)


@dataclass(frozen=True)
class Missed:
    """The latest fire time that has no run, and whether it is recent enough to catch up."""

    fire_time: datetime
    catch_up: bool


def missed_run(
    trigger: BaseTrigger, last_started: datetime | None, now: datetime, catch_up: float
) -> Missed | None:
    """The fire time missed since the job last started (build `trigger` without jitter).

    A fire time in (last_started, now] had no run. Returns the latest one within `catch_up`
    seconds of now (catch_up=True: run it once, however many were missed), else the first
    missed one (catch_up=False: too old, only logged). None when nothing was missed, or when
    the job has never run (nothing to catch up: it runs at its next fire time).
    """
    if last_started is None:
        return None
    window_start = max(last_started, now - timedelta(seconds=max(catch_up, 0.0)))
    latest = latest_fire(trigger, window_start, now)
    if latest is not None:
        return Missed(latest, True)
    first = fire_after(trigger, last_started)
    if first is not None and first <= now:
        return Missed(first, False)
    return None


def latest_fire(trigger: BaseTrigger, after: datetime, until: datetime) -> datetime | None:
    """The latest fire time in (after, until] (build `trigger` without jitter)."""
    latest = None
    fire = fire_after(trigger, after)
    for _ in range(_MAX_STEPS):
        if fire is None or fire > until:
            break
        latest = fire
        fire = fire_after(trigger, fire)
    return latest


def describe(job: Schedulable) -> str:
    """One phrase for logs and status: "cron '0 3 * * *' UTC", "every 6h", "manual only"."""
    if job.schedule is not None:
        return f"cron '{job.schedule}' {job.timezone}"
    if job.every is not None:
        return f"every {human_duration(job.every)}"
    return "manual only"


def human_duration(seconds: float) -> str:
    """ "6h", "90s", "1.5s": how a duration reads in the config."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def in_window(window: str, local: dtime) -> bool:
    """Whether `local` falls in "HH:MM-HH:MM" (start inclusive, end exclusive).

    A window whose end is before its start wraps midnight ("22:00-02:00"); equal ends mean the
    whole day.
    """
    start_text, end_text = window.split("-")
    start, end = _minutes(start_text), _minutes(end_text)
    now = local.hour * 60 + local.minute
    if start == end:
        return True
    if start < end:
        return start <= now < end
    return now >= start or now < end


# How far ahead a schedule's fires are looked at for one inside a cold window: a year and a bit
# covers a yearly schedule. A crontab's times of day are the same on every day it fires, so the
# count (a dense schedule's bound) needs to cover only its first day: 1440 a day at most
_WINDOW_LOOKAHEAD = timedelta(days=400)
_WINDOW_FIRES = 2000
_DAY_S = 86400


def window_missed(
    schedule: str | None,
    every: float | None,
    timezone: str,
    window: str,
    *,
    now: datetime | None = None,
) -> str | None:
    """Why a job's scheduled runs may never come inside its cold window `window` (so that every
    scheduled cold run is skipped), or None. A crontab schedule: none of its fires in the next
    400 days (or 2000 fires) is inside. An interval: its runs keep to the times of day one
    interval apart from its first, every gcd(interval, 1 day) seconds apart, and a window shorter
    than that step may hold none of them."""
    start, end = (_minutes(t) for t in window.split("-"))
    if start == end:
        return None  # the whole day
    if schedule is not None:
        tz = ZoneInfo(timezone)
        trigger = cron_trigger(schedule, tz)
        now = datetime.now(tz) if now is None else now
        fire = trigger.get_next_fire_time(None, now)
        for _ in range(_WINDOW_FIRES):
            if fire is None or fire > now + _WINDOW_LOOKAHEAD:
                break
            if in_window(window, fire.astimezone(tz).time()):
                return None
            fire = fire_after(trigger, fire)
        return (
            f"schedule {schedule!r} never fires inside cold_window {window} ({timezone}): "
            "every scheduled cold run is skipped"
        )
    if every is None or every != int(every):
        return None
    step = math.gcd(int(every), _DAY_S)
    if step <= ((end - start) % 1440) * 60:
        return None
    return (
        f"every = {human_duration(every)} runs at the same few times of day "
        f"({human_duration(step)} apart, from one interval after the daemon starts), which may "
        f"all fall outside cold_window {window}: its scheduled cold runs may all be skipped; "
        "a crontab schedule inside the window does not drift"
    )
