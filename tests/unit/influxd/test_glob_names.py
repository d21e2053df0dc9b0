"""influxd/names.py on dirs made here: which database and retention-policy names are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from influx_backupd.influxd.names import unloadable


def _tree(root: Path, *paths: str) -> dict[str, Path]:
    for path in paths:
        (root / path).mkdir(parents=True)
    return {"data": root / "data", "wal": root / "wal"}


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("data/br[ack]/autogen/1", "database 'br[ack]'"),
        ("wal/b\\s/autogen/1", "database 'b\\\\s'"),  # Go glob's escape; not creatable in 1.6
        ("wal/db/r[p]/1", "retention policy 'r[p]' of 'db'"),
    ],
)
def test_a_name_with_a_bracket_or_backslash_is_named(tmp_path: Path, path: str, named: str) -> None:
    found = unloadable(_tree(tmp_path, "data/ok/autogen/1", path))
    assert found is not None and named in found and "glob patterns" in found


def test_names_that_match_themselves_and_influxds_own_dirs_pass(tmp_path: Path) -> None:
    dirs = _tree(tmp_path, "data/b]r/a*b/1", "data/q?m/_series/00", "wal/c{u},r/autogen/2")
    assert unloadable({**dirs, "meta": tmp_path / "absent"}) is None
    assert unloadable({"data": tmp_path / "absent"}) is None
