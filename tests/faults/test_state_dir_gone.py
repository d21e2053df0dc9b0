"""The state dir taken away while influxd is stopped: removed, made read-only, or its influxd.log
not a file. Before: influxd's start opened state_dir/influxd.log for its output, and a failed open
was no start failure: influxd stayed down, the crash marker gone with the dir, and the run said
"downtime none: influxd was not stopped". Starting influxd again must never depend on the state
dir."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.faults.conftest import Ledger, backup_frozen_in_window, run_cli


def _take_away(state: Path, how: str) -> None:
    if how == "removed":
        shutil.rmtree(state)
    elif how == "read-only":
        subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(state)], check=True)
    else:  # the log no file: a directory in its place
        (state / "influxd.log").unlink(missing_ok=True)
        (state / "influxd.log").mkdir()


@pytest.mark.fault("7", "the state dir taken away inside the stop window", "a foreground backup")
@pytest.mark.parametrize("how", ["removed", "read-only", "log a directory"])
def test_influxd_starts_again_whatever_became_of_the_state_dir(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, how: str
) -> None:
    state = tmp_path / "state"
    try:
        with backup_frozen_in_window(tmp_path, sandbox, ledger) as (config, backup):
            _take_away(state, how)
        code, out, err = backup.finish()
    finally:
        if how == "read-only":
            subprocess.run(["umount", str(state)], check=False)
    assert sandbox.ping(), f"influxd must answer once backup returns ({code}): {err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert "was not stopped" not in out, out
    assert "influxd.log_unavailable" in err, err[-3000:]
    lost_points, _ = ledger.settle()
    assert lost_points == 0
    if how == "log a directory":  # nothing else was wrong: the backup itself is good
        assert code == 0, err[-3000:]
    # and every command afterwards tells the truth: influxd is not down
    status = run_cli(config, "status")
    assert status.returncode == 0 and "influxd down" not in status.stdout, status.stdout
