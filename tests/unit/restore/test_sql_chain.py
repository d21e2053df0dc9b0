"""The SQL merge's plan (restore/sql_chain.py): pure parts."""

from __future__ import annotations

from influx_backupd.restore.sql_chain import _measurement, _superseded


def test_a_measurement_is_read_up_to_its_first_unescaped_comma() -> None:
    assert _measurement(b"cpu,host=a") == "cpu"
    assert _measurement(b"my\\,m\\ x,host=a") == "my,m x"
    assert _measurement(b"plain") == "plain"


def test_only_a_field_type_changed_later_supersedes_a_links_measurement_in_a_shard() -> None:
    integer, floating = 1, 0
    fields = {
        0: {"m": {"value": integer}, "n": {"value": integer}},
        1: {"m": {"value": floating}},  # m dropped and written again as float
        2: {"m": {"value": floating}, "n": {"value": integer}},
    }
    assert _superseded(fields) == {0: {"m": "field value integer, later float"}}
    assert _superseded({0: {"m": {"a": integer}}, 1: {"m": {"b": floating}}}) == {}
