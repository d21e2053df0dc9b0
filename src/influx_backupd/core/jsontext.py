"""JSON read back from outside (records, state files, manifests, markers, answers): nested
deeply enough, json.loads raises RecursionError, which is no ValueError and slipped past every
reader's `except ValueError` as a traceback (a crash marker nested 100,000 deep stopped every
command, and with them influxd's restart)."""

from __future__ import annotations

import json
from typing import Any


def loads_json(text: str | bytes) -> Any:
    """json.loads, with nesting too deep for the parser raised as the ValueError it is."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
