"""A live dir that did not exist before a restore: its rollback moves what the restore put
there aside and leaves it absent (real dirs). And the rollback's message quotes the paths of
the command it prints for pasting."""

from __future__ import annotations

import shlex
from pathlib import Path

from influx_backupd.restore.swap import failed_kept, note_absent, roll_back
from tests.unit.restore.test_roll_back_names import STAMP, _swap


def _swapped(root: Path, *, absent: str) -> list[list[str]]:
    """The dirs as live_dirs_swapped leaves them once every staging dir went in; `absent`
    had no live dir before."""
    swaps = [_swap(root, name) for name in ("meta", "data", "wal")]
    for target, rollback, _staging in swaps:
        if Path(target).name == absent:
            note_absent(Path(rollback))
        else:
            Path(rollback).mkdir()
            (Path(rollback) / "previous").write_text("old")
        Path(target).mkdir()
        (Path(target) / "restored").write_text("new")
    return swaps


def test_a_live_dir_absent_before_is_moved_aside_and_named(tmp_path: Path) -> None:
    """The audit's case: no wal/ before the restore, a start that failed; meta and data came
    back, the restored wal/ stayed live (influxd replayed the backup's WAL over the old data)
    and the message named only data's and meta's aside dirs."""
    swaps = _swapped(tmp_path, absent="wal")

    failed = roll_back(swaps)

    assert not (tmp_path / "wal").exists(), "the restored wal/ must not stay live"
    assert (tmp_path / f"wal.failed-restore-{STAMP}" / "restored").read_text() == "new"
    assert str(tmp_path / f"wal.failed-restore-{STAMP}") in failed
    assert not (tmp_path / f"wal.rollback-{STAMP}").exists(), "its note is gone"
    for name in ("meta", "data"):
        assert (tmp_path / name / "previous").read_text() == "old"
    message = failed_kept(failed)
    assert f"{tmp_path / 'wal'} did not exist before the restore: left absent" in message
    assert roll_back(swaps) == failed, "done again (recovery after a kill): nothing moved"
    assert not (tmp_path / "wal").exists()


def test_killed_after_the_aside_move_the_second_rollback_finishes(tmp_path: Path) -> None:
    swaps = _swapped(tmp_path, absent="data")
    (tmp_path / "data").rename(tmp_path / f"data.failed-restore-{STAMP}")

    failed = roll_back(swaps)

    assert str(tmp_path / f"data.failed-restore-{STAMP}") in failed
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / f"data.rollback-{STAMP}").exists()


def test_the_rm_command_printed_for_pasting_is_shell_quoted(tmp_path: Path) -> None:
    """Dirs under "my influx/" printed as `rm -rf /…/my influx/data.failed-…`: pasted, that
    removes ./my and whatever `influx/data.failed-…` names."""
    root = tmp_path / "my influx; $(true)"
    root.mkdir()
    failed = roll_back(_swapped(root, absent=""))

    command = failed_kept(failed).rpartition("once not needed, ")[2].removesuffix(")")

    assert shlex.split(command) == ["rm", "-rf", *failed]
