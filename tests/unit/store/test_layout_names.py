"""The names a backup has in the storage dir, as a manifest from a bucket may state them: only
the one the tool gives that backup is taken (another would point a fetch or a prune at a file
that is not that backup's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from influx_backupd.store import layout

ID = "20261204T010203Z-ab12"


@pytest.mark.parametrize(
    ("name", "mode", "snapshot", "kind"),
    [
        (f"nightly-{ID}.tar", "cold", False, "full"),
        (f"nightly-{ID}", "hot", False, "full"),
        (f"nightly-{ID}", "hot", False, "incremental"),
        (f"nightly-{ID}.snapshot", "hot", True, "full"),
        # a 0.9 increment is PATH.N beside its chain's full, named by the full's id
        ("nightly-20261201T000000Z-0000.snapshot.3", "hot", True, "incremental"),
    ],
)
def test_the_tools_own_names_are_taken(name: str, mode: str, snapshot: bool, kind: str) -> None:
    assert (
        layout.backup_name_problem(name, "nightly", ID, mode=mode, snapshot=snapshot, kind=kind)
        is None
    )


@pytest.mark.parametrize(
    ("name", "mode", "snapshot", "kind"),
    [
        ("keepme", "cold", False, "full"),
        (f"nightly-{ID}", "cold", False, "full"),  # a cold backup is its .tar
        ("nightly-20261130T000000Z-ffff.tar", "cold", False, "full"),  # another backup's
        (f"other-{ID}.tar", "cold", False, "full"),  # another job's
        (f"nightly-{ID}.tar", "hot", False, "full"),
        (f"nightly-{ID}.json", "hot", False, "full"),
        (f"nightly-{ID}.snapshot.1", "hot", True, "full"),
        (f"nightly-{ID}.snapshot", "hot", True, "incremental"),
        ("nightly-.snapshot.1", "hot", True, "incremental"),
        (f"nightly-{ID}.snapshot.x", "hot", True, "incremental"),
        (f"other-{ID}.snapshot.1", "hot", True, "incremental"),
    ],
)
def test_any_other_name_is_said(name: str, mode: str, snapshot: bool, kind: str) -> None:
    wrong = layout.backup_name_problem(name, "nightly", ID, mode=mode, snapshot=snapshot, kind=kind)
    assert wrong is not None and wrong.startswith(f"name {name!r} is not")


def test_the_writers_names_are_the_ones_taken(tmp_path: Path) -> None:
    cold, hot = layout.run_archives(tmp_path, "nightly", ID)
    base = layout.snapshot_base(tmp_path, "nightly", ID)
    for path, mode, snapshot in ((cold, "cold", False), (hot, "hot", False), (base, "hot", True)):
        assert path.parent == tmp_path
        assert (
            layout.backup_name_problem(
                path.name, "nightly", ID, mode=mode, snapshot=snapshot, kind="full"
            )
            is None
        )
    increment = base.with_name(base.name + ".2")
    assert (
        layout.backup_name_problem(
            increment.name,
            "nightly",
            "20261205T000000Z-cd34",
            mode="hot",
            snapshot=True,
            kind="incremental",
        )
        is None
    )
