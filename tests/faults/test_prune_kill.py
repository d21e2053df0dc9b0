"""SIGKILL of `prune` while it cuts a big archive down before unlinking it (it frees the disk a
few MiB at a time beside the live server), and the next command finishing the job: the archive
gone whole, no catalog entry naming it, the kept backup untouched (real CLI, real kill)."""

from __future__ import annotations

import json
import sqlite3
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
    config = write_config(tmp_path, sandbox, jobs=[job], holes="fill")  # no rule: both backups kept
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
    assert write_config(tmp_path, sandbox, jobs=[{**job, "keep_last": 1}], holes="fill") == config

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


@pytest.mark.fault(
    "kill", "SIGKILL of prune mid-deletion", "the next prune deletes a backup of its own first"
)
def test_what_a_killed_prune_left_pending_is_removed_even_when_the_next_prune_deletes_too(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    """A prune killed after a run's catalog entry went and before its files did leaves
    prune-pending.json naming them. The next prune deletes a backup of its own as well: the
    list must not be overwritten by that deletion (the files would stay for good, and a later
    import would bring the deleted backup back)."""
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    config = write_config(tmp_path, sandbox, jobs=[job])  # no rule: every backup kept
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    runs = []
    for _ in range(3):
        done = run_cli(config, "backup", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout))
    dead, doomed, kept = runs
    ledger.take()
    gone = [Path(dead["archive"]), Path(dead["archive"] + ".json")]
    for name in [gone[0].name, Path(doomed["archive"]).name]:
        ledger.backups_before.pop(name)
    # as a prune SIGKILLed between the catalog delete and the unlinks leaves it (prune.py)
    state = tmp_path / "state"
    (state / "prune-pending.json").write_text(json.dumps([[dead["id"], str(p)] for p in gone]))
    with sqlite3.connect(state / "catalog.db") as conn:
        conn.execute("DELETE FROM runs WHERE id = ?", (dead["id"],))
    assert write_config(tmp_path, sandbox, jobs=[{**job, "keep_last": 1}]) == config

    again = run_cli(config, "prune", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    assert [d["run_id"] for d in report["deleted"]] == [doomed["id"]], report
    left = [p for p in gone if p.exists()]
    assert left == [], f"the killed prune's files stay: {left}"
    assert not Path(doomed["archive"]).exists()
    assert not (state / "prune-pending.json").exists()
    imported = run_cli(config, "import", "--json")
    assert imported.returncode == 0, imported.stderr[-3000:]
    listed = {r["id"] for r in json.loads(run_cli(config, "list", "--json").stdout)}
    assert listed == {kept["id"]}, "import brings no deleted backup back"
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == [], lost
