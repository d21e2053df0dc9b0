"""JSON read back from outside (records, state files, manifests, markers, answers): nested
deeply enough, json.loads raises RecursionError, which is no ValueError and slipped past every
reader's `except ValueError` as a traceback (a crash marker nested 100,000 deep stopped every
command, and with them influxd's restart)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from influx_backupd.core import log


def loads_json(text: str | bytes) -> Any:
    """json.loads, with nesting too deep for the parser raised as the ValueError it is."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# The largest Unix time a state file may hold: the end of year 9999, datetime's limit (a larger
# one made every `status` and metrics write raise OverflowError).
MAX_TIME = 253402300799.0
MAX_COUNT = 2**63 - 1  # a counter beyond int64 is damage, not data


def number(value: object, *, low: float = 0.0, high: float = MAX_TIME) -> float | None:
    """A JSON number within [low, high], or None for anything else (a string, a bool, NaN, an
    integer too large for a float): what a reader of a state file drops as absent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) and low <= result <= high else None


def count(value: object) -> int | None:
    """A JSON integer in [0, MAX_COUNT], or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


_TOLD: set[tuple[str, tuple[str, ...]]] = set()


def tell_ignored(path: Path, fields: list[str]) -> None:
    """One warning per process for each damaged state file (and set of bad fields): a reader
    that runs every 30 s in the daemon must not say it every 30 s."""
    key = (str(path), tuple(fields))
    if not fields or key in _TOLD:
        return
    _TOLD.add(key)
    log.get().warning(
        "state.damaged",
        path=str(path),
        ignored=fields,
        detail="not of the type or range allowed: treated as absent",
    )
