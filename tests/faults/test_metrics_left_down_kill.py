"""A foreground `backup` (cron, no daemon) SIGKILLed in the stop window: the metrics file says
influx_backupd_influxd_left_down 1, so the InfluxdLeftDown alert fires; the next command's
rewrite sets it back to 0 (real influxd, real CLI, a real kill)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import Watched, hold_port, run_cli

FILLER = 1_000_000_000  # sparse: its copy keeps the stop window open long enough to aim at


def _sample(path: Path, name: str) -> str:
    [line] = [line for line in path.read_text().splitlines() if line.startswith(name + "{")]
    return line.split()[1]


def _left_down(path: Path) -> str:
    return _sample(path, "influx_backupd_influxd_left_down")


def _down_expected_until(path: Path) -> float:
    return float(_sample(path, "influx_backupd_influxd_down_expected_until_timestamp_seconds"))


def _killed_in_its_stop_window(config: Path, sandbox: Sandbox, metrics: Path) -> None:
    """A cold backup SIGKILLed once influxd stopped (a sparse filler keeps the copy long enough);
    left_down 1 in the file; the filler stays for the caller to remove."""
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(FILLER)
    backup = Watched(config, "backup", "--json")
    backup.wait_event("influxd.stopped", phase="stop")
    # the window's expected end, written with it: InfluxdLeftDown waits for it while the run
    # copies (stop and start timeouts, 90 s and 120 s here, and the margin at least)
    assert _down_expected_until(metrics) > time.time() + 300
    backup.kill()
    assert _left_down(metrics) == "1"


@pytest.mark.fault("kill", "SIGKILL of backup", "in the stop window, with metrics_file")
def test_a_backup_killed_in_the_stop_window_leaves_left_down_1(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    metrics = tmp_path / "metrics" / "influx_backupd.prom"
    metrics.parent.mkdir()
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    config = write_config(
        tmp_path, sandbox, jobs=[job], daemon={"metrics_file": str(metrics)}, holes="fill"
    )
    first = run_cli(config, "backup", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    assert _left_down(metrics) == "0"
    _killed_in_its_stop_window(config, sandbox, metrics)
    assert "influx_backupd_runs_total" in metrics.read_text(), "the rest is kept"

    (sandbox.data / "filler.bin").unlink()
    done = run_cli(config, "backup", "--json")  # recovers: starts influxd, rewrites the file
    assert done.returncode == 0, done.stderr[-3000:]
    assert _left_down(metrics) == "0"


@pytest.mark.fault("kill", "SIGKILL of restore", "in the swap's stop, with metrics_file")
def test_a_restore_killed_at_its_stop_leaves_left_down_1_and_a_whole_one_0(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A whole-server restore stops influxd as a cold run does: the same sample, the same
    rewrite after it (the restore wrote no metrics before)."""
    metrics = tmp_path / "metrics" / "influx_backupd.prom"
    metrics.parent.mkdir()
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    config = write_config(tmp_path, sandbox, jobs=[job], daemon={"metrics_file": str(metrics)})
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 200)
    first = run_cli(config, "backup", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = first.stdout.split('"id": "', 1)[1].split('"', 1)[0]

    restore = Watched(config, "restore", run_id, "--yes")
    restore.wait_event("influxd.stopping", phase="stop")
    restore.kill()
    assert _left_down(metrics) == "1"

    done = run_cli(config, "prune")  # recovers: rolls the swap back, starts influxd, rewrites
    assert done.returncode == 0, done.stderr[-3000:]
    assert _left_down(metrics) == "0"
    whole = run_cli(config, "restore", run_id, "--yes")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert _left_down(metrics) == "0", "rewritten after the restore: influxd runs"
    assert sandbox.count("metrics") == 200


@pytest.mark.fault(
    "kill", "SIGKILL of backup", "in the stop window, then recover or prune --dry-run"
)
def test_a_recovery_that_starts_influxd_sets_left_down_back_to_0(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Any command's recovery that starts influxd again (or finds it running) clears the crash
    marker; the metrics file says so too, even when no dead run's follow-up rewrites it (a
    killed restore has no record): else InfluxdLeftDown (critical) fires while influxd serves.
    Before, `prune --dry-run` (the README's way to start influxd again) left the 1."""
    metrics = tmp_path / "metrics" / "influx_backupd.prom"
    metrics.parent.mkdir()
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    config = write_config(
        tmp_path, sandbox, jobs=[job], daemon={"metrics_file": str(metrics)}, holes="fill"
    )
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 200)
    first = run_cli(config, "backup", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = first.stdout.split('"id": "', 1)[1].split('"', 1)[0]
    _killed_in_its_stop_window(config, sandbox, metrics)
    (sandbox.data / "filler.bin").unlink()
    done = run_cli(config, "recover")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sandbox.count("metrics") == 200, "influxd serves"
    assert _left_down(metrics) == "0"
    assert 'result="interrupted"} 1' in metrics.read_text(), "the rest of the file is there"

    restore = Watched(config, "restore", run_id, "--yes")
    restore.wait_event("influxd.stopping", phase="stop")
    restore.kill()
    assert _left_down(metrics) == "1"
    done = run_cli(config, "prune", "--dry-run")  # recovers: rolls back, starts influxd
    assert done.returncode == 0, done.stderr[-3000:]
    assert sandbox.count("metrics") == 200, "influxd serves"
    assert _left_down(metrics) == "0"
    assert 'result="interrupted"} 1' in metrics.read_text(), "the rest of the file is there"


@pytest.mark.fault("kill", "SIGKILL of backup", "in the stop window, then a start that fails")
def test_a_dead_runs_window_is_no_longer_expected_once_a_start_fails(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The window's expected end keeps InfluxdLeftDown quiet only while the run that stopped
    influxd lives: the next writer (a recovery whose starts fail, here `recover` with influxd's
    port held) writes 0, and the alert fires 2 minutes on, not at the dead run's window end."""
    metrics = tmp_path / "metrics" / "influx_backupd.prom"
    metrics.parent.mkdir()
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    config = write_config(
        tmp_path, sandbox, jobs=[job], daemon={"metrics_file": str(metrics)}, holes="fill"
    )
    _killed_in_its_stop_window(config, sandbox, metrics)
    assert _down_expected_until(metrics) > time.time(), "as the dead run left it"
    (sandbox.data / "filler.bin").unlink()
    holder = hold_port(sandbox.http_port)
    try:
        failed = run_cli(config, "recover")
        assert failed.returncode == 1, failed.stderr[-3000:]
        assert _left_down(metrics) == "1"
        assert _down_expected_until(metrics) == 0
    finally:
        holder.close()
    done = run_cli(config, "recover")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sandbox.ping()
    assert (_left_down(metrics), _down_expected_until(metrics)) == ("0", 0)
