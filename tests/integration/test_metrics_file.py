"""The metrics file a real backup writes passes `promtool check metrics` (Prometheus's own lint)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Cli


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
