"""1.x's meta store (meta/meta.db; a portable backup's .meta), checked as influxd 1.6 needs it."""

from __future__ import annotations

import io

import pytest

from influx_backupd.store.formats.meta import check_meta_db
from tests.unit.store.test_formats import meta_store


def problems(data: bytes) -> list[str]:
    return [f.message for f in check_meta_db(io.BytesIO(data), len(data), "meta/meta.db")]


def test_a_sound_meta_store_passes() -> None:
    assert problems(meta_store((b"x", b"autogen", [b"autogen", b"week"]), (b"y", b"", []))) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # audit G: "autogen" with one bit flipped: every query without a policy failed
        (
            meta_store((b"x", b"Autogen", [b"autogen"])),
            "meta store: database b'x': its default retention policy b'Autogen' is none of "
            "its own (b'autogen')",
        ),
        (meta_store((b"x", b"", [b"a", b"a"])), "names a retention policy twice"),
        (meta_store((b"", b"", [])), "a database without a name"),
        (meta_store((b"x", b"", [b""])), "a retention policy without a name"),
        # audit G: influxd refused to start ("proto: illegal tag 0")
        (b"\x00" + meta_store((b"x", b"", [])), "meta store: field 0 of wire type 0"),
        (meta_store((b"x", b"autogen", [b"autogen"]))[:-1], "meta store: unreadable varint"),
        (b"", "meta store: empty"),
        # influxd: proto: required field "MaxShardID" not set, and refused to start
        (meta_store((b"x", b"", []), max_ids=False), "a Data at offset 0 lacks its field 7"),
    ],
)
def test_damage_influxd_would_not_load_or_serve_is_an_error(data: bytes, expected: str) -> None:
    [found] = problems(data)
    assert expected in found, found
