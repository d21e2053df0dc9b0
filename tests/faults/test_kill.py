"""SIGKILL of `backup` at every phase, and the next command recovering: influxd up, the run
recorded interrupted, no archive lost, no partial left (real influxd, real CLI, real kills).

Each kill lands as the phase begins: the test reads the run's own log events and kills the
process the moment the phase's event is written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import Ledger, Watched, run_cli

MARKER = "influxd-stopped.json"
# sparse: a copy of it takes long enough to aim at (direct: the stop window; staged: the
# syncs and the tar written after the start)
FILLER = 1_000_000_000

# phase → (copy mode, the event that begins it, its fields)
PHASES: dict[str, tuple[str, str, dict[str, str]]] = {
    "before stop": ("staged", "staging.syncing", {"phase": "prestage"}),
    "during stop": ("direct", "influxd.stopping", {"phase": "stop"}),
    "during copy": ("direct", "archive.writing", {"phase": "copy"}),
    "during start": ("direct", "influxd.starting", {"phase": "start"}),
    "after start": ("staged", "archive.writing", {"phase": "archive"}),
}


@pytest.mark.fault("kill", "SIGKILL of backup")
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_backup_killed_at_any_phase_is_recovered_by_the_next_command(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, phase: str
) -> None:
    copy, event, fields = PHASES[phase]
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": copy}
    config = write_config(tmp_path, sandbox, jobs=[job], holes="fill")
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    first = run_cli(config, "backup", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    ledger.take()  # the good archive of that run must survive what follows
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(FILLER)

    backup = Watched(config, "backup", "--json")
    backup.wait_event(event, **fields)
    backup.kill()
    # where it was killed: influxd stopped by the run (the marker) from the stop to the start
    marker = (tmp_path / "state" / MARKER).exists()
    assert marker == (phase in ("during stop", "during copy", "during start")), phase
    if phase in ("before stop", "after start"):
        assert sandbox.ping(), "killed while influxd served: it still serves"
    killed = [
        r for r in json.loads(run_cli(config, "list", "--json").stdout) if r["status"] == "running"
    ]
    assert len(killed) == 1, killed
    (sandbox.data / "filler.bin").unlink()

    started = time.monotonic()
    done = run_cli(config, "backup", "--json")  # the next lock-taking command
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "ok"
    assert sandbox.ping(), "influxd answers after the next command"
    runs = {r["id"]: r for r in json.loads(run_cli(config, "list", "--json").stdout)}
    record = runs[killed[0]["id"]]
    assert record["status"] == "interrupted", record
    assert record["finished_at"] is not None
    if phase in ("during stop", "during copy"):
        assert "influxd was started again" in record["error"], record["error"]
    assert not (tmp_path / "state" / MARKER).exists()
    storage = tmp_path / "archives"
    assert not list(storage.glob("*.partial")) and not list(storage.glob("*.incomplete"))
    assert time.monotonic() - started < 600
    lost_points, lost = ledger.settle()
    assert lost_points == 0, "points lost"
    assert lost == [], f"archives lost or changed: {lost}"
