"""Several instances on one host (influx-backupd@NAME) write their metrics files into one
node_exporter textfile dir: the real node_exporter exports every instance's series.

Before each file carried its instance's name (the backup_instance label), equal series from two
files (build_info, heartbeat, left_down, a job both call `nightly`) were dropped by node_exporter
but for one, with a 200 scrape and node_textfile_scrape_error 0: an instance's left_down 1 could
be the one dropped.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from influx_backupd import __version__
from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox, free_port
from influx_backupd.report.metrics import DaemonFacts, mark_left_down
from influx_backupd.run.followup import write_metrics
from influx_backupd.store.catalog import Catalog
from tests.conftest import Cli, write_config

NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")


def scrape(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                text: str = answer.read().decode()
                return text
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.influxd
def test_two_instances_files_are_all_exported_by_node_exporter(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    if not NODE_EXPORTER.exists():
        pytest.fail("prometheus-node-exporter is missing: scripts/setup.sh installs it")
    textfiles = tmp_path / "node-exporter"
    textfiles.mkdir()
    # the plain unit's file and instance db2's, as the README names them; both jobs `nightly`
    files = {"default": "influx_backupd.prom", "db2": "influx_backupd_db2.prom"}
    for name, file in files.items():
        (tmp_path / name).mkdir()
        config = write_config(
            tmp_path / name, sandbox, daemon={"metrics_file": str(textfiles / file)}
        )
        Cli(config)("backup", check=True, timeout=300)
        # what each instance's daemon writes every 30 s: its heartbeat and next run
        loaded = load(config)
        now = time.time()
        write_metrics(loaded, Catalog(loaded.state_dir), DaemonFacts(now, {"nightly": now + 60}))
    # db2's influxd left down (what its cold job writes before the stop), the plain one's not
    mark_left_down(textfiles / files["db2"])

    port = free_port()
    log = (tmp_path / "node_exporter.log").open("w")
    exporter = subprocess.Popen(
        [
            str(NODE_EXPORTER),
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfiles}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        text = scrape(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 30)
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
        log.close()
    said = (tmp_path / "node_exporter.log").read_text()

    def samples(family: str) -> dict[str, str]:
        found = re.findall(rf"^influx_backupd_{family}\{{(.*)\}} (\S+)$", text, re.M)
        return {labels: value for labels, value in found}

    left_down = samples("influxd_left_down")
    assert left_down == {
        'backup_instance="db2"': "1",
        'backup_instance="default"': "0",
    }, text
    assert set(samples("build_info")) == {
        f'backup_instance="{name}",version="{__version__}"' for name in files
    }
    assert set(samples("heartbeat_timestamp_seconds")) == {
        f'backup_instance="{name}"' for name in files
    }
    runs = samples("runs_total")
    for name in files:
        assert f'backup_instance="{name}",backup_job="nightly"' in samples(
            "next_run_timestamp_seconds"
        )
        assert runs[f'backup_instance="{name}",backup_job="nightly",result="ok"'] == "1", text
        assert f'backup_instance="{name}",backup_job="nightly"' in samples("backups_kept")
    assert "node_textfile_scrape_error 0" in text
    assert "was collected before with the same name and label values" not in said + text, said
