"""A stdout that cannot hold our text (PYTHONIOENCODING=ascii; the C locale with Python's UTF-8
mode and locale coercion off): the backup prints "…" after its sha256. What cannot be encoded is
written escaped; the run that succeeded exits 0, no traceback (it exited 78 "configuration
error" after recording the run ok)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli

pytestmark = pytest.mark.influxd

ASCII_STDOUT = {
    "PYTHONIOENCODING=ascii": {"PYTHONIOENCODING": "ascii"},
    "LC_ALL=C": {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
}


@pytest.mark.parametrize("env", ASCII_STDOUT.values(), ids=ASCII_STDOUT.keys())
def test_a_backup_to_an_ascii_stdout_exits_0(
    cli: Cli, sandbox: Sandbox, config_path: Path, env: dict[str, str]
) -> None:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONIO"))}
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(config_path), "backup", "-q"],
        capture_output=True,
        env={**keep, **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr, done.stderr
    out = done.stdout.decode("ascii")  # nothing but ASCII was written
    [sha] = [line for line in out.splitlines() if "sha256" in line]
    assert sha.endswith("\\u2026"), sha  # the "…" shortening the hash, escaped
    [record] = json.loads(cli("list", "--json").stdout)
    assert record["status"] == "ok"
