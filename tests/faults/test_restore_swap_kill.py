"""Kills around the stop of a whole-server restore (and of a cold backup), real influxd, real
CLI, real signals.

- Killed the moment the crash marker appears, before influxd was asked to stop: the server the
  marker names still runs untouched. No command may say influxd was stopped, and the next
  lock-taking command must not stop and start it again (a needless outage).
- A restore through a symlinked data dir (data -> big/data) killed or signalled mid-swap: rolled
  back through the link, which stays a link.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import Ledger, Watched, run_cli

MARKER = "influxd-stopped.json"
COLD = [{"name": "c", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}]


def _kill_when_marker_appears(watched: Watched, marker: Path) -> dict[str, object]:
    """Freeze the process the moment the marker exists, read it, SIGKILL; the marker's body."""
    pid = watched.proc.pid
    while not marker.exists():
        assert watched.proc.poll() is None, f"exited before writing {marker}: {watched.tail()}"
    os.kill(pid, signal.SIGSTOP)
    body = json.loads(marker.read_text())
    watched.kill()
    return dict(body)


def _backed_up(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, str]:
    """A config and one cold backup of 2,000 points."""
    config = write_config(tmp_path, sandbox, jobs=COLD)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    first = run_cli(config, "backup", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    return config, str(json.loads(first.stdout)["id"])


@pytest.mark.fault("kill", "SIGKILL before influxd is stopped")
@pytest.mark.parametrize("command", ["restore", "backup"])
def test_a_run_killed_before_it_stopped_influxd_is_no_outage_and_no_false_alarm(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, command: str
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox)
    ledger.take()
    marker = tmp_path / "state" / MARKER
    args = ["restore", backup_id, "--yes"] if command == "restore" else ["backup"]

    # The kill must land between the marker's write and the stop's request (a few ms): a
    # kill that landed after ("stopping" in the marker) is the other case, recovered by a
    # restart as before; that attempt is recovered and the kill tried again.
    for attempt in range(5):
        pids = sandbox.pids()
        # runs of earlier attempts (killed after the stop, recovered) are not this one
        earlier = {r["id"] for r in json.loads(run_cli(config, "list", "--json").stdout)}
        body = _kill_when_marker_appears(Watched(config, *args), marker)
        if body.get("stopping") is not True:
            print(f"the kill landed before the stop at attempt {attempt + 1}")
            break
        again = run_cli(config, "prune", "--dry-run")
        assert again.returncode == 0, again.stderr[-3000:]
    else:
        pytest.fail("no kill landed before the stop in 5 attempts")
    assert sandbox.pids() == pids and sandbox.ping(), "nothing was stopped"

    listed = run_cli(config, "list")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "influxd was stopped" not in listed.stderr, listed.stderr

    after = run_cli(config, "prune", "--dry-run")  # the next lock-taking command
    assert after.returncode == 0, after.stderr[-3000:]
    events = [json.loads(ln) for ln in after.stderr.splitlines() if ln.startswith("{")]
    names = {e.get("event") for e in events}
    assert "recovery.influxd_never_stopped" in names, names
    assert not names & {
        "recovery.stopping_unfinished_restore",
        "recovery.starting_influxd",
        "recovery.influxd_already_running",
    }, names
    assert sandbox.pids() == pids, "influxd was not stopped and started again"
    assert not marker.exists()
    assert not list(sandbox.root.glob(".*.restore-*")), "a killed restore's staging is removed"
    assert not list(sandbox.root.glob("*.rollback-*"))
    if command == "backup":
        runs = json.loads(run_cli(config, "list", "--json").stdout)
        killed = [r for r in runs if r["id"] not in earlier]
        assert [r["status"] for r in killed] == ["interrupted"], killed
        assert "started again" not in killed[0]["error"], killed[0]["error"]
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("kill", "restore through a symlinked data dir, signalled mid-swap")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_restore_through_a_symlinked_data_dir_signalled_mid_swap_is_rolled_back_through_it(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, sig: str
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox)
    sandbox.stop()
    big = tmp_path / "big"
    big.mkdir()
    sandbox.data.rename(big / "data")
    sandbox.data.symlink_to(big / "data")
    sandbox.start()
    sandbox.write_points("metrics", 500, start=100_000)  # newer than the backup
    ledger.take()

    restore = Watched(config, "restore", backup_id, "--yes")
    deadline = time.monotonic() + 120
    while not list(big.glob("data.rollback-*")):  # the live data dir moved aside
        assert restore.proc.poll() is None, restore.tail()
        assert time.monotonic() < deadline
    if sig == "SIGKILL":
        restore.kill()
        after = run_cli(config, "prune", "--dry-run")  # recovery rolls back
        assert after.returncode == 0, after.stderr[-3000:]
    else:
        restore.proc.send_signal(signal.SIGTERM)
        code, _, stderr = restore.finish()
        assert code != 0 and "the previous data was put back" in stderr, stderr[-3000:]

    assert sandbox.data.is_symlink() and sandbox.data.readlink() == big / "data"
    assert sandbox.ping()
    assert sandbox.count("metrics") == 2_500, "the data from before the restore is back"
    assert not list(big.glob("data.rollback-*")) and not list(big.glob(".data.restore-*"))
    assert not (tmp_path / "state" / MARKER).exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
