"""A record read back from outside (a sidecar carried from another host, a catalog row edited,
a bucket's manifest) is held to the form of the records we write."""

from __future__ import annotations

from typing import Any

import pytest

from influx_backupd.store.record import RunRecord

GOOD: dict[str, Any] = {"id": "20261201T030000Z-abcd", "job": "nightly", "mode": "cold"}


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"id": "20261201T000000Z-aaaa/../../../../tmp/victim"}, "id is "),
        ({"id": "../x"}, "id is "),
        ({"id": ""}, "id is "),
        ({"parent_id": "a/b"}, "parent_id is "),
        ({"db_counts": {"metrics": -1}}, "db_counts['metrics'] is -1, not a count of points"),
        ({"db_counts": {"metrics": 4999.5}}, "db_counts['metrics'] is 4999.5"),
        ({"bytes": -5}, "bytes is -5, not a count"),
        ({"files": 1.5}, "files is 1.5, not a count"),
        ({"downtime_s": -1.0}, "downtime_s is -1.0, not a duration"),
        # past any float: an OverflowError out of the catalog's read, not a line
        ({"started_at": 10**400}, "started_at is 1000"),
    ],
)
def test_what_we_never_write_is_refused_with_the_field_named(
    change: dict[str, Any], said: str
) -> None:
    wrong = RunRecord.problem({**GOOD, **change})
    assert wrong is not None and wrong.startswith(said), wrong


def test_records_as_we_write_them_pass() -> None:
    full = {**GOOD, "parent_id": "20261130T030000Z-0001", "db_counts": {"m": 10, "n": 3.0}}
    assert RunRecord.problem({**full, "bytes": 0, "downtime_s": 0.5}) is None
