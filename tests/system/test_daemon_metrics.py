"""The daemon's metrics file: its heartbeat (rewritten at least every minute), the next runs,
kept by other writers, accepted by `promtool check metrics`. A real daemon; no influxd needed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.system.test_cli_surface import serverless_config

HEARTBEAT = re.compile(
    r'^influx_backupd_heartbeat_timestamp_seconds\{backup_instance="[^"]*"\} (\S+)$', re.M
)
NEXT_RUN = re.compile(
    r'^influx_backupd_next_run_timestamp_seconds\{backup_instance="default",backup_job="(\w+)"\} (\S+)$',
    re.M,
)


def heartbeat(path: Path) -> float | None:
    try:
        match = HEARTBEAT.search(path.read_text())
    except FileNotFoundError:
        return None
    return float(match.group(1)) if match else None


def wait_heartbeat(path: Path, after: float, proc: subprocess.Popen[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = heartbeat(path)
        if value is not None and value > after:
            return value
        assert proc.poll() is None, f"daemon exited {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"no heartbeat after {after} within {timeout}s")


def test_heartbeat_next_runs_and_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
    metrics = tmp_path / "influx_backupd.prom"
    config = serverless_config(tmp_path, daemon=f'metrics_file = "{metrics}"')
    out = open(tmp_path / "daemon.out", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "influx_backupd", "-c", str(config), "run"],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        started = time.time()
        first = wait_heartbeat(metrics, 0.0, proc, timeout=60)
        assert started - 1 <= first <= time.time()
        text = metrics.read_text()
        next_runs = {job: float(t) for job, t in NEXT_RUN.findall(text)}
        assert set(next_runs) == {"nightly", "hourly"}
        assert all(t > time.time() for t in next_runs.values()), "0 3 1 1 *: next 1 January"
        assert 'influx_backupd_build_info{backup_instance="default",version=' in text
        assert 'influx_backupd_influxd_left_down{backup_instance="default"} 0' in text
        lint = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert lint.returncode == 0 and lint.stdout + lint.stderr == "", lint.stdout + lint.stderr

        # A command by hand rewrites the file and keeps what only the daemon knows.
        done = subprocess.run(
            [sys.executable, "-m", "influx_backupd", "-c", str(config), "prune"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert heartbeat(metrics) == first
        assert {job: float(t) for job, t in NEXT_RUN.findall(metrics.read_text())} == next_runs

        # Unprompted, within a minute: the heartbeat moves on.
        second = wait_heartbeat(metrics, first, proc, timeout=75)
        assert second - first <= 60 + 5

        # A reload's schedule is in the file at the next tick, not the next heartbeat (30 s
        # of a removed job's next run before)
        text = config.read_text()
        config.write_text(text[: text.index('[[job]]\nname = "hourly"')])
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while {job for job, _ in NEXT_RUN.findall(metrics.read_text())} != {"nightly"}:
            assert time.monotonic() < deadline, metrics.read_text()
            time.sleep(0.1)
        second = heartbeat(metrics) or second

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    # Stopped: a last heartbeat, nothing scheduled any more; from here the heartbeat ages.
    assert heartbeat(metrics) is not None and heartbeat(metrics) >= second  # type: ignore[operator]
    assert NEXT_RUN.findall(metrics.read_text()) == []
