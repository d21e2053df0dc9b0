"""The metrics file a real backup writes passes `promtool check metrics` (Prometheus's own lint)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, wait_until, write_config
from tests.system.test_daemon import daemon


def with_metrics_file(config: Path, metrics: Path) -> None:
    text = config.read_text()
    config.write_text(text.replace("[daemon]\n", f'[daemon]\nmetrics_file = "{metrics}"\n', 1))


@pytest.mark.influxd
def test_backup_writes_metrics_that_promtool_accepts(tmp_path: Path, config_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
    metrics = tmp_path / "influx_backupd.prom"
    with_metrics_file(config_path, metrics)
    Cli(config_path)("backup", check=True, timeout=300)
    text = metrics.read_text()
    assert 'result="ok"} 1' in text
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


NEXT_RUN = (
    'influx_backupd_next_run_timestamp_seconds{backup_instance="default",backup_job="nightly"}'
)


def _samples(text: str, family: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"influx_backupd_{family}")]


@pytest.mark.influxd
def test_a_backup_after_the_daemon_was_killed_drops_its_next_runs(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A daemon's next runs are what it will do: once it is killed, a backup by hand rewrites
    the file without them (else a dashboard shows a run that never comes); the heartbeat stays
    (when the daemon was last alive). While the daemon lives, such a backup keeps them."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
    metrics = tmp_path / "influx_backupd.prom"
    config = write_config(tmp_path, sandbox, daemon={"metrics_file": str(metrics)})
    with daemon(tmp_path, config) as d:
        wait_until(
            lambda: metrics.exists() and _samples(metrics.read_text(), "next_run"),
            60,
            "the daemon's next run in the metrics file",
        )
        Cli(config)("backup", check=True, timeout=300)
        kept = [s.split(" ")[0] for s in _samples(metrics.read_text(), "next_run")]
        assert kept == [NEXT_RUN], "a live daemon's next run is kept"
        d.proc.kill()
        d.proc.wait()
    heartbeat = _samples(metrics.read_text(), "heartbeat")
    assert len(heartbeat) == 1

    Cli(config)("backup", check=True, timeout=300)
    text = metrics.read_text()
    assert 'result="ok"} 2' in text
    assert _samples(text, "next_run") == [], text
    assert _samples(text, "heartbeat") == heartbeat, "the dead daemon's last heartbeat stays"
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


REFUSED_RESTORES = {
    "unknown id": ["20200101T000000Z-none", "--yes"],
    "bad --target": ["{id}", "--target", "{config}"],  # a file, not a dir
    "database not in it": ["{id}", "--database", "absent"],
}


@pytest.mark.influxd
def test_a_refused_restore_leaves_the_metrics_file_alone(tmp_path: Path, sandbox: Sandbox) -> None:
    """A restore refused before it touched anything (exit 2, "nothing touched") rewrote the
    metrics file all the same: a refused command writes no state."""
    metrics = tmp_path / "influx_backupd.prom"
    config = write_config(tmp_path, sandbox, daemon={"metrics_file": str(metrics)})
    cli = Cli(config)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    backup_id = cli.json("backup")["id"]
    before = metrics.read_bytes()
    metrics.write_bytes(before + b"# ours\n")  # what a rewrite would drop
    os.utime(metrics, ns=(1_000_000_000, 1_000_000_000))
    for name, args in REFUSED_RESTORES.items():
        argv = [a.format(id=backup_id, config=config) for a in args]
        done = cli("restore", *argv)
        assert done.returncode == 2, (name, done.returncode, done.stderr[-2000:])
        assert metrics.read_bytes() == before + b"# ours\n", name
        assert metrics.stat().st_mtime_ns == 1_000_000_000, name


@pytest.mark.influxd
def test_a_renamed_job_leaves_no_series_behind(tmp_path: Path, sandbox: Sandbox) -> None:
    """A job renamed in the config keeps its backups, but not its series: frozen in the file
    they would fire InfluxBackupTooOld (and Failed, ServedLess) for a job that is gone."""
    metrics = tmp_path / "influx_backupd.prom"
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    config = write_config(tmp_path, sandbox, jobs=[job], daemon={"metrics_file": str(metrics)})
    Cli(config)("backup", check=True, timeout=300)
    assert 'backup_job="nightly"' in metrics.read_text()

    write_config(
        tmp_path, sandbox, jobs=[job | {"name": "daily"}], daemon={"metrics_file": str(metrics)}
    )
    Cli(config)("backup", check=True, timeout=300)
    text = metrics.read_text()
    assert 'backup_job="nightly"' not in text, text
    assert (
        'influx_backupd_runs_total{backup_instance="default",backup_job="daily",result="ok"} 1'
        in text
    )
    listed = Cli(config).json("list")
    assert sorted(r["job"] for r in listed) == ["daily", "nightly"], "its backup is kept"
