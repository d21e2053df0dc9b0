"""core/atomic: whole-file replacement, exact modes, and what a killed writer left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from influx_backupd.core.atomic import replace_file, replace_json


def test_the_mode_is_exact_whatever_the_umask_and_a_dead_writers_temp_is_swept(
    tmp_path: Path,
) -> None:
    """Before the sweep: a writer SIGKILLed between its temp file and the rename left a hidden
    copy (of a key, a record, the metrics) that nothing removed."""
    target = tmp_path / "state.json"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / f".state.json.{dead}.1.tmp"
    stale.write_text("{half")
    mine = tmp_path / f".state.json.{os.getpid()}.99.tmp"  # a live writer's: left alone
    mine.write_text("{in progress")
    other = tmp_path / f".other.json.{dead}.1.tmp"  # another file's: not ours to judge here
    other.write_text("x")
    old = os.umask(0)
    try:
        replace_json(target, {"a": 1})
        replace_file(tmp_path / "metrics.prom", b"m 1\n", mode=0o644)
    finally:
        os.umask(old)
    assert target.read_text() == '{"a":1}' and target.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "metrics.prom").stat().st_mode & 0o777 == 0o644
    assert not stale.exists() and mine.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".other.json." + dead + ".1.tmp", mine.name, "metrics.prom", "state.json"]
    )


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep")
    (tmp_path / "state.json").symlink_to(elsewhere)
    replace_json(tmp_path / "state.json", [1])
    assert elsewhere.read_text() == "keep"
    assert not (tmp_path / "state.json").is_symlink()
