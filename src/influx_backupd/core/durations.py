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
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN, "examples": ["90s", "5m", "7d"]},
                {"type": "number", "minimum": 0},
            ]
        }
    ),
]
