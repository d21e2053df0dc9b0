"""What every command says about a restore's crash marker: a serving server is never called
down, and the line says what the next lock-taking command will do with the restored data."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.core.config import load
from influx_backupd.run.guard import left_stopped_line
from influx_backupd.store.state import CrashMarker
from tests.system.test_cli_surface import serverless_config


def _line(tmp_path: Path, *, swap_done: bool, answering: bool) -> str:
    config = load(serverless_config(tmp_path))
    marker = CrashMarker(config.state_dir)
    swaps = [[str(tmp_path / "data"), str(tmp_path / "data.rollback-1"), str(tmp_path / ".s")]]
    marker.write("restore-1", kind="restore", swaps=swaps, influxd=(1, 1.0))
    marker.stopping()
    if swap_done:
        marker.swap_done((2, 2.0))
    body = marker.read()
    assert body is not None and CrashMarker.restore_swap_done(body) is swap_done
    return left_stopped_line(
        config, body, daemon_pid=None, this_command_starts=False, answering=answering
    )


def test_a_restore_killed_after_its_server_answered_is_kept(tmp_path: Path) -> None:
    line = _line(tmp_path, swap_done=True, answering=True)
    assert "answers on the restored data" in line and "stopped by" not in line, line
    assert "keeps the restored data and clears the marker" in line, line


def test_an_unfinished_restore_is_said_to_be_rolled_back(tmp_path: Path) -> None:
    line = _line(tmp_path, swap_done=False, answering=True)
    assert "rolls the restore back" in line and "deletes nothing" not in line, line
