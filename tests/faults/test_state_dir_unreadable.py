"""Class 7: a state_dir this user cannot look into (the service's 0700 dir, read without sudo): every
command says so in one line, not "No backups yet" and a crash marker that is not there. The
user here is root without its DAC capabilities (setpriv), which the kernel treats alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.faults.conftest import Ledger

NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner,-chown"]


@pytest.mark.fault(
    "7", "a state dir this user cannot read", "list, status, backup, verify --all as another uid"
)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the state dir to nobody")
def test_a_state_dir_this_user_cannot_read_is_said_so_and_nothing_else(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    config = write_config(tmp_path, sandbox)
    assert Cli(config)("backup").returncode == 0
    ledger.take()
    state = tmp_path / "state"
    for path in (state, *state.rglob("*")):
        os.lchown(path, 65534, 65534)  # nobody's now; 0700 as we made it
    cli = [*NO_DAC, sys.executable, "-m", "influx_backupd", "--config", str(config)]
    try:
        for command in (["list"], ["status"], ["backup"], ["verify", "--all"]):
            done = subprocess.run(
                [*cli, *command],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 1, (command, done.stdout, done.stderr)
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1, (command, lines)
            assert f"state_dir {state}: Permission denied" in lines[0], lines
            assert "cannot read it" in lines[0] and "crash marker" not in lines[0]
            assert done.stdout == "", (command, done.stdout)
    finally:
        for path in (state, *state.rglob("*")):
            os.lchown(path, 0, 0)
    assert ledger.settle() == (0, [])
    assert sandbox.ping()
