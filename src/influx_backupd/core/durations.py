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
DURATION_PATTERNS = (DURATION_PATTERN, POSITIVE_DURATION_PATTERN, INTERVAL_DURATION_PATTERN)


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
