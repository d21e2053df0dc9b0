"""`backup > /dev/full`: the backup is done and recorded ok; the one line says it is stdout
that could not be written, not "No space left on device" alone (read as the backup disk full)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli

pytestmark = pytest.mark.influxd


@pytest.mark.parametrize("args", [["backup"], ["backup", "--json"]])
def test_a_backup_to_a_full_stdout_says_it_is_stdout(
    cli: Cli, sandbox: Sandbox, config_path: Path, args: list[str]
) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "influx_backupd", "--config", str(config_path), *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    [line] = [x for x in done.stderr.splitlines() if not x.startswith("{")]
    assert line.startswith("influx-backupd: cannot write the output to stdout: No space"), line
    [record] = json.loads(cli("list", "--json").stdout)
    assert record["status"] == "ok"
