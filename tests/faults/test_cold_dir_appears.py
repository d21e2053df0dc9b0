"""A wal dir influxd makes between the cold run's checks and its stop (real influxd 1.6, real CLI).

influxd makes wal/ at its first write. Before: the run chose its dirs in its checks, so a server
that had taken no write yet (or one just restored with `influxd restore -portable`, which leaves
no wal/) whose first writes came during the pre-copy, or right after the checks, had its backup
recorded ok without wal/: the acknowledged points counted, held in no file of the archive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config

# Loaded into the backup (sitecustomize): the first call of counts.before_stop (after the
# checks and any pre-copy, right before the stop) first writes WRITE_POINTS points over HTTP.
HOOK = """
import os, urllib.request
from influx_backupd.influxd import counts
_orig = counts.before_stop
_done = []
def _first_write_then(*a, **k):
    if not _done:
        _done.append(1)
        n = int(os.environ["WRITE_POINTS"])
        body = "\\n".join(f"m v={i} {1600000000000000000 + i}" for i in range(n)).encode()
        urllib.request.urlopen(os.environ["WRITE_URL"], body, timeout=10).read()
    return _orig(*a, **k)
counts.before_stop = _first_write_then
"""


def _members(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return {name.split("/")[0] for name in tar.getnames()}


@pytest.mark.fault("4", "influxd makes its wal dir after the cold run's checks")
@pytest.mark.parametrize("copy", ["staged", "direct"])
def test_a_wal_dir_made_after_the_checks_is_archived(
    tmp_path: Path, sandbox: Sandbox, copy: str
) -> None:
    sandbox.create_db("x")
    assert not sandbox.wal.exists(), "no write yet: influxd has made no wal dir"
    config = write_config(
        tmp_path, sandbox, jobs=[{"name": "nightly", "mode": "cold", "copy": copy}]
    )
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
        "WRITE_URL": f"http://127.0.0.1:{sandbox.http_port}/write?db=x",
        "WRITE_POINTS": "500",
    }
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(config), "backup", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    assert record["status"] == "ok" and record["db_counts"] == {"x": 500}, record
    assert "wal" in _members(Path(record["archive"]))
    assert "archive.dir_appeared" in done.stderr
    checked = Cli(config)("verify", record["id"], "--restore-test")
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
