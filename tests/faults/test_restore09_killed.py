"""A 0.9 snapshot's restore (the stand-in of tests/stand_ins: InfluxDB 0.9 cannot be installed
here) killed while its tool runs, whole server or into --target: its scratch dir is not left for
good. Real CLI, real SIGKILL; the live server a real influxd 1.6."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.faults.test_restore_interrupted import paused_at
from tests.integration import test_restore_09_by_path as by_path
from tests.integration.test_restore_09_by_path import Chain

chain = by_path.chain  # the fixture: a stand-in 0.9 chain of three beside a real influxd 1.6


@pytest.mark.fault("kill", "a 0.9 restore killed while its tool runs")
@pytest.mark.parametrize("target", [False, True], ids=["whole server", "--target"])
def test_a_09_restore_killed_leaves_no_scratch_dir_once_pruned(chain: Chain, target: bool) -> None:
    """Before: a SIGKILL left <storage>/.restore-… with the snapshots hard-linked in for good
    (prune and recovery knew only the restore tests' scratch dirs): the bytes of archives
    pruned since stayed on disk."""
    args = ["restore", chain.backups[2]["id"]]
    args += ["--target", str(chain.tmp / "look")] if target else ["--yes"]
    proc = paused_at(chain.tmp, chain.cli.config, args, "influx_backupd.restore.hot.run_tool", "")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    storage = Path(chain.backups[0]["archive"]).parent
    assert [p.name for p in storage.iterdir() if p.name.startswith(".")], "a scratch dir was left"
    recovered = chain.cli("recover")
    assert recovered.returncode == 0, recovered.stderr
    pruned = chain.cli("prune")
    assert pruned.returncode == 0, pruned.stderr
    assert [p.name for p in storage.iterdir() if p.name.startswith(".")] == []
    assert chain.server.ping()
