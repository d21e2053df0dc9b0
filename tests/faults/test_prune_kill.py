"""SIGKILL of `prune` while it cuts a big archive down before unlinking it (it frees the disk a
few MiB at a time beside the live server), and the next command finishing the job: the archive
gone whole, no catalog entry naming it, the kept backup untouched (real CLI, real kill)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import Ledger, Watched, run_cli

# sparse in the data dir, whole in the archive: an archive big enough to be cut down in steps
FILLER = 400_000_000


@pytest.mark.fault("kill", "SIGKILL of prune mid-truncation")
def test_a_prune_killed_while_cutting_an_archive_down_is_finished_by_the_next_command(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold"}
    config = write_config(tmp_path, sandbox, jobs=[job])  # no rule: both backups kept
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(FILLER)
    first = json.loads(run_cli(config, "backup", "--json").stdout)
    (sandbox.data / "filler.bin").unlink()  # the next archive is small: the old one is cut
    second = run_cli(config, "backup", "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    kept = json.loads(second.stdout)
    old = Path(first["archive"])
    full = old.stat().st_size
    assert full > FILLER
    ledger.take()
    ledger.backups_before.pop(old.name)  # the one prune is told to delete
    assert write_config(tmp_path, sandbox, jobs=[{**job, "keep_last": 1}]) == config

    prune = Watched(config, "prune", "--json")
    deadline = time.monotonic() + 60
    while True:  # kill it the moment the archive is part cut down
        try:
            size = old.stat().st_size
        except FileNotFoundError:
            size = 0
        if 0 < size < full:
            break
        assert prune.proc.poll() is None, f"prune ended before cutting: {prune.tail()}"
        assert time.monotonic() < deadline, "prune never began cutting the archive down"
        time.sleep(0.005)
    prune.kill()
    assert 0 < old.stat().st_size < full, "killed half-way through the archive"

    again = run_cli(config, "prune", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not old.exists(), "the half-cut archive is removed by the next prune"
    listed = {r["id"] for r in json.loads(run_cli(config, "list", "--json").stdout)}
    assert first["id"] not in listed and kept["id"] in listed
    verified = run_cli(config, "verify", kept["id"], "--json")
    assert verified.returncode == 0, verified.stdout[-2000:]
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == [], lost
