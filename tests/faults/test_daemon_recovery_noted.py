"""The daemon's recovery of a crash marker fails with an OSError, not a failed start (here a
killed restore's rollback whose rename meets a non-empty dir in its way): every failed attempt
is noted all the same. Before: the worker's attempt swallowed it (no note, no metrics: the
status line kept "not started yet" and a stale retry time, left_down stayed 0), and at start-up
the error ended the daemon. Real daemon, real influxd (stopped: nothing may be started on
half-moved dirs), real files.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import wait_until, write_config


def _marker(tmp_path: Path) -> None:
    """A killed restore's crash marker whose rollback cannot rename the live dir aside."""
    rid = "20250101T000000Z-abcd"
    live = tmp_path / "fake" / "data"
    rollback = live.with_name(f"data.rollback-{rid}")
    for made in (live, rollback, live.with_name(f"data.failed-restore-{rid}") / "in-the-way"):
        made.mkdir(parents=True)
    body = {
        "run_id": f"restore-{rid}",
        "pid": 2**22 + 1,
        "written_at": time.time(),
        "kind": "restore",
        "swaps": [[str(live), str(rollback), str(live.with_name(f".data.restore-{rid}"))]],
        "stopping": True,
    }
    (tmp_path / "state" / "influxd-stopped.json").write_text(json.dumps(body))


def _status(tmp_path: Path) -> str:
    try:
        return str(json.loads((tmp_path / "state" / "daemon.json").read_text())["status"])
    except (OSError, ValueError, KeyError):
        return ""


@pytest.mark.fault("no-start", "the daemon's recovery fails with an OSError")
@pytest.mark.parametrize("when", ["at start-up", "while it runs"])
def test_a_recovery_that_fails_with_an_oserror_is_noted_in_status_and_metrics(
    tmp_path: Path, sandbox: Sandbox, when: str
) -> None:
    metrics = tmp_path / "metrics" / "influx_backupd.prom"
    metrics.parent.mkdir()
    config = write_config(tmp_path, sandbox, daemon={"metrics_file": str(metrics)})
    (tmp_path / "state").mkdir(exist_ok=True)
    sandbox.stop()
    if when == "at start-up":
        _marker(tmp_path)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "influx_backupd", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        if when == "while it runs":
            wait_until(lambda: "idle" in _status(tmp_path), 120, "the daemon is up")
            _marker(tmp_path)

        def noted() -> bool:
            assert daemon.poll() is None, daemon.communicate()[0][-3000:]
            return "Directory not empty" in _status(tmp_path)

        wait_until(noted, 120, "the status line names the error")
        status = _status(tmp_path)
        assert "influxd down since run restore-" in status and "retrying at" in status, status
        left_down = [
            line
            for line in metrics.read_text().splitlines()
            if line.startswith("influx_backupd_influxd_left_down{")
        ]
        assert left_down == ['influx_backupd_influxd_left_down{backup_instance="default"} 1'], (
            left_down
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=120)
    assert "Traceback" not in out, out[-3000:]
    assert not sandbox.ping(), "nothing started on the half-moved dirs"
