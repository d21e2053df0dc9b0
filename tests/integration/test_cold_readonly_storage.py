"""A cold run whose storage dir exists but is read-only (not in the unit's ReadWritePaths=, or a
symlink into such a place) is refused before influxd is stopped. Before, copy = "direct" stopped
influxd and only then failed writing the .tar.partial, every run: downtime for nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A real read-only filesystem (a tmpfs remounted ro; mounting needs root, as CI runs)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m,mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        (mount / "archives").mkdir(mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount / "archives"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("via", ["dir", "symlink"])
@pytest.mark.parametrize("copy", ["direct", "staged"])
def test_a_read_only_storage_dir_is_refused_before_the_stop(
    tmp_path: Path, sandbox: Sandbox, read_only: Path, via: str, copy: str
) -> None:
    storage = read_only
    if via == "symlink":
        storage = tmp_path / "link"
        storage.symlink_to(read_only)
    config = write_config(
        tmp_path, sandbox, jobs=[{"name": "nightly", "every": "1d", "mode": "cold", "copy": copy}]
    )
    text = config.read_text().replace(f'dir = "{tmp_path / "archives"}"', f'dir = "{storage}"')
    config.write_text(text)
    pids = sandbox.pids()
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(config), "backup", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        # as inside the unit: the line says how to open the dir up
        env={**os.environ, "INVOCATION_ID": "0" * 32},
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "failed"
    assert record["stop_s"] is None and record["downtime_s"] is None
    assert sandbox.pids() == pids, "influxd was never stopped: same process"
    error = record["error"]
    assert error.startswith(f"storage.dir {storage}: Read-only file system"), error
    assert "ReadWritePaths=" in error and error.endswith("influxd not stopped"), error
    assert sandbox.ping()
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
