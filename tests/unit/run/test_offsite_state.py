"""offsite.json read back: a field of the wrong type or range is absent, never an exception
(it feeds the metrics the daemon writes every 30 s, and `status`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from influx_backupd.core.jsontext import MAX_TIME, count, number
from influx_backupd.influxd.server import BACKOFF_CAP_S, backoff
from influx_backupd.offsite.errors import (
    BadManifest,
    NoBucket,
    OffsiteError,
    PrefixTaken,
    Refused,
    Stalled,
    Unreachable,
    reason_of,
)
from influx_backupd.run.offsite import STATE_FILE, JobFigures, State

HUGE = "9" * 400  # parses as an int no float holds


@pytest.mark.parametrize(
    "text",
    [
        '{"jobs": {"j": {"last_success": "yesterday"}}}',
        f'{{"jobs": {{"j": {{"uploaded_bytes": {HUGE}}}}}}}',
        '{"jobs": {"j": {"skipped_bytes": -5, "last_success": true}}}',
        '{"jobs": {"j": {"last_success": NaN}}}',
        '{"jobs": {"j": {"last_success": 1e300}}}',
        '{"jobs": {"j": {"unknown": 1}}}',
        '{"jobs": {"j": []}}',
        '{"jobs": []}',
        f'{{"sent": {{"b": {HUGE}}}}}',
        '{"sent": {"b": "x"}, "retired": {"c": Infinity}}',
        '{"last_error": 5, "last_error_at": "now", "last_check": -1}',
        '{"last_error": 5, "last_error_reason": "unreachable"}',
        '{"last_error_reason": "on fire"}',
        "[]",
        "not json",
        "\xff",
    ],
)
def test_a_damaged_field_is_absent(tmp_path: Path, text: str) -> None:
    (tmp_path / STATE_FILE).write_text(text, errors="surrogateescape")
    state = State.load(tmp_path)
    for figures in state.jobs.values():
        assert figures.last_success is None or math.isfinite(figures.last_success)
        assert isinstance(figures.uploaded_bytes, int) and figures.uploaded_bytes >= 0
        assert isinstance(figures.skipped_bytes, int) and figures.skipped_bytes >= 0
    assert all(0 <= t <= MAX_TIME for t in [*state.sent.values(), *state.retired.values()])
    assert state.last_error is None or isinstance(state.last_error, str)
    assert state.last_error_at is None and state.last_check is None
    assert state.last_error_reason is None and state.failing is None


def test_good_fields_beside_a_bad_one_are_kept(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(
        json.dumps(
            {
                "jobs": {"j": {"last_success": 1.5, "uploaded_bytes": 7, "skipped_bytes": "x"}},
                "sent": {"a": 2, "b": "x"},
                "last_error": "boom",
            }
        )
    )
    state = State.load(tmp_path)
    assert state.jobs == {"j": JobFigures(last_success=1.5, uploaded_bytes=7)}
    assert state.sent == {"a": 2.0} and state.last_error == "boom"


def test_checked_values() -> None:
    assert number(True) is None and number(10**400) is None and number(float("nan")) is None
    assert number(5) == 5.0 and count(-1) is None and count(2**64) is None and count(3) == 3
    assert backoff(10**400) == BACKOFF_CAP_S  # a count from a damaged marker must not hang


def test_the_last_failure_keeps_its_reason_until_a_sync_completes(tmp_path: Path) -> None:
    State().failed("s3://b/p: written by another host", "prefix_taken").save(tmp_path)
    state = State.load(tmp_path)
    assert state.failing == "prefix_taken" and state.last_error_reason == "prefix_taken"
    assert json.loads((tmp_path / STATE_FILE).read_text())["last_error_reason"] == "prefix_taken"
    state.cleared()
    state.save(tmp_path)
    again = State.load(tmp_path)
    assert again.failing is None and again.last_error is None and again.last_error_at is None


def test_a_failure_recorded_before_reasons_were_kept_is_other(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(json.dumps({"last_error": "boom", "last_error_at": 5}))
    assert State.load(tmp_path).failing == "other"
    (tmp_path / STATE_FILE).write_text(
        json.dumps({"last_error": "boom", "last_error_reason": "on fire"})
    )
    assert State.load(tmp_path).failing == "other", "a reason not known is dropped as absent"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (PrefixTaken("taken"), "prefix_taken"),
        (Unreachable("cannot connect"), "unreachable"),
        (Stalled("no progress"), "unreachable"),
        (Refused("refused (AccessDenied)"), "credentials"),
        (BadManifest("damaged"), "damaged"),
        (NoBucket("no bucket"), "other"),
        (OffsiteError("the listing is not complete"), "other"),
        (OSError("disk"), "other"),
    ],
)
def test_reason_of_an_error(exc: BaseException, reason: str) -> None:
    assert reason_of(exc) == reason
