"""roll_back names every *.failed-restore-* dir of the swaps it undoes (real dirs)."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.restore.swap import roll_back

STAMP = "20261202T040000Z"


def _swap(root: Path, name: str) -> list[str]:
    return [
        str(root / name),
        str(root / f"{name}.rollback-{STAMP}"),
        str(root / f".{name}.restore-x"),
    ]


def test_a_rollback_killed_part_way_and_done_again_names_all_three(tmp_path: Path) -> None:
    """The audit's case: killed after `data` was moved aside, before its rollback dir was put
    back. The rollback done again by recovery named only meta's and wal's aside dirs; data's,
    a full copy, was named nowhere."""
    swaps = [_swap(tmp_path, name) for name in ("meta", "data", "wal")]
    for target, rollback, _staging in swaps:
        Path(rollback).mkdir()
        (Path(rollback) / "previous").write_text("old")
        Path(target).mkdir()
        (Path(target) / "restored").write_text("new")
    data = tmp_path / "data"
    data.rename(tmp_path / f"data.failed-restore-{STAMP}")  # the first rollback got this far

    failed = roll_back(swaps)

    assert sorted(failed) == sorted(
        str(tmp_path / f"{name}.failed-restore-{STAMP}") for name in ("meta", "data", "wal")
    )
    for name in ("meta", "data", "wal"):
        assert (tmp_path / name / "previous").read_text() == "old"
        assert (tmp_path / f"{name}.failed-restore-{STAMP}" / "restored").read_text() == "new"
    assert roll_back(swaps) == failed, "done again: the same dirs, nothing moved"
    assert (tmp_path / "data" / "previous").exists()
