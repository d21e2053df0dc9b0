"""Durations as the config writes them: "90s", "5m", "2h", "7d" (or a number of seconds)."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*\Z")  # ASCII digits only
MAX_SECONDS = 36500 * 86400.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object) -> float:
    """'90s', '5m', '2h', '7d' or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90s, 5m, 2h or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    else:
        raise ValueError(f"must be a duration like 90s, 5m, 2h or 7d, not {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"must be a finite duration like 90s, 5m, 2h or 7d, not {value!r}")
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > MAX_SECONDS:  # timers, sleeps and dates overflow long before anyone waits
        raise ValueError(f"must be at most 36500d (100 years), not {value!r}")
    return seconds


# A timeout ends up in poll(2) (subprocess's communicate, selectors), which takes a C int of
# milliseconds: past 2**31 ms (24.8 days) Python raises OverflowError mid-run. 3w is a whole
# number in every unit, so the schema's pattern can say exactly what load refuses.
MAX_TIMEOUT = 21 * 86400.0
_TIMEOUT_LIMITS = {"ms": 1_814_400_000, "s": 1_814_400, "m": 30_240, "h": 504, "d": 21, "w": 3}


def parse_timeout(value: object) -> float:
    """A duration that is waited on as one timeout: at most 21d (3w)."""
    seconds = parse_duration(value)
    if seconds > MAX_TIMEOUT:
        raise ValueError(
            f"must be at most 21d (3w; the system's timers take no longer wait), not {value!r}"
        )
    return seconds


def _at_most(limit: int) -> str:
    """A regex for a decimal number <= limit (leading zeros allowed): below it any fraction,
    the limit itself only with zeros after the point."""
    digits = str(limit)
    below = [f"[0-9]{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    for i, digit in enumerate(digits):
        if digit != "0":
            rest = len(digits) - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            below.append(f"{digits[:i]}[0-{int(digit) - 1}]{tail}")
    return f"0*(({'|'.join(below)})(\\.[0-9]+)?|{digits}(\\.0+)?)"


def _timeout_pattern(positive: bool) -> str:
    units = "|".join(
        f"{_at_most(limit)}\\s*{'s?' if unit == 's' else unit}"
        for unit, limit in _TIMEOUT_LIMITS.items()
    )
    ahead = "(?=[0-9.]*[1-9])" if positive else ""
    return f"^\\s*{ahead}({units})\\s*$"


# In the JSON Schema a duration is what people write: a string like "90s" (or seconds).
DURATION_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d|w)?\s*$"
# ... one longer than 0 (a timeout): some digit of the number is not 0
POSITIVE_DURATION_PATTERN = r"^\s*(?=[0-9.]*[1-9])[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d|w)?\s*$"
# ... an interval of at least 1s (`every`): seconds from 1, ms from 1000, any other unit above 0
# (the schema lets "0.01m" through, 0.6s: load refuses it)
INTERVAL_DURATION_PATTERN = (
    r"^\s*(0*[1-9][0-9]*(\.[0-9]+)?\s*s?|0*[1-9][0-9]{3,}(\.[0-9]+)?\s*ms"
    r"|(?=[0-9.]*[1-9])[0-9]+(\.[0-9]+)?\s*[mhdw])\s*$"
)
TIMEOUT_PATTERN = _timeout_pattern(positive=False)
POSITIVE_TIMEOUT_PATTERN = _timeout_pattern(positive=True)
DURATION_PATTERNS = (
    DURATION_PATTERN,
    POSITIVE_DURATION_PATTERN,
    INTERVAL_DURATION_PATTERN,
    TIMEOUT_PATTERN,
    POSITIVE_TIMEOUT_PATTERN,
)


def _schema(pattern: str, bound: dict[str, float]) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": pattern, "examples": ["90s", "5m", "7d"]},
                {"type": "number", **bound},
            ]
        }
    )


Duration = Annotated[
    float, BeforeValidator(parse_duration), _schema(DURATION_PATTERN, {"minimum": 0})
]
# The same values; the schema tells an editor what the key's own check (in its model) refuses.
PositiveDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    _schema(POSITIVE_DURATION_PATTERN, {"exclusiveMinimum": 0}),
]
IntervalDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    _schema(INTERVAL_DURATION_PATTERN, {"minimum": 1}),
]
# Waited on as one timeout (poll(2)): at most 21d, said by the schema too.
TimeoutDuration = Annotated[
    float,
    BeforeValidator(parse_timeout),
    _schema(TIMEOUT_PATTERN, {"minimum": 0, "maximum": MAX_TIMEOUT}),
]
PositiveTimeoutDuration = Annotated[
    float,
    BeforeValidator(parse_timeout),
    _schema(POSITIVE_TIMEOUT_PATTERN, {"exclusiveMinimum": 0, "maximum": MAX_TIMEOUT}),
]
