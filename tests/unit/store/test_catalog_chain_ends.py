"""The catalog's chain ends: a whole-server restore's mark, read by every later hot run."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from influx_backupd.store.catalog import Catalog, ChainEnd
from influx_backupd.store.record import RunRecord


def test_a_mark_is_kept_and_a_later_one_of_its_kind_replaces_it(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    assert catalog.chain_ends() == ()  # no catalog yet: nothing ended
    catalog.end_chains("restore", "a restore of the server from C began", at=10.0)
    assert catalog.chain_ends() == (ChainEnd(10.0, "a restore of the server from C began"),)
    catalog.end_chains("restore", "the server was restored from C", at=20.0)
    assert Catalog(tmp_path).chain_ends() == (ChainEnd(20.0, "the server was restored from C"),)


def test_a_catalog_from_before_the_marks_is_read_as_it_is(tmp_path: Path) -> None:
    """A catalog without the table reads as no mark, and reading it writes nothing (a reader
    that cannot write the catalog is not refused for it): the first mark makes the table."""
    catalog = Catalog(tmp_path)
    catalog.save(RunRecord(id="r1", job="j", mode="hot", started_at=1.0))

    def tables() -> set[str]:
        with closing(sqlite3.connect(catalog.path)) as conn:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}

    assert "chain_ends" not in tables()
    assert Catalog(tmp_path).chain_ends() == ()
    assert [r.id for r in Catalog(tmp_path).list()] == ["r1"]
    assert "chain_ends" not in tables(), "read, not made"
    catalog.end_chains("restore", "x", at=5.0)
    assert catalog.chain_ends() == (ChainEnd(5.0, "x"),)
    catalog.check(write=True)  # the whole catalog is still usable with the table in it
