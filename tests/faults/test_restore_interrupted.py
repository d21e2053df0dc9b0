"""A whole-server restore signalled or killed at the edges of its swap, real influxd, real CLI.

- While extracting (influxd untouched): the staging dirs beside the live ones (a full copy of
  the data) are removed by the restore itself on SIGTERM, by the next lock-taking command after
  a SIGKILL (the restore's owner record names them), saying so in one line.
- After its restored server answered, before its crash marker was cleared: the swap is done.
  `status` does not call a serving server down, and recovery keeps the restored server and the
  writes it took since (no second outage), naming where the previous data is.
- After the swap, before the restored server answered: rolled back, and the restored dirs moved
  aside (*.failed-restore-*) are named, by the error line or by recovery's line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import log_events
from tests.faults.conftest import Ledger, run_cli
from tests.faults.test_restore_swap_kill import _backed_up

MARKER = "influxd-stopped.json"

# Loaded into the restore (sitecustomize): the first call of <MODULE>.<FN> on a path holding
# <AT> writes the pid to <PAUSED> and sleeps, so a signal lands at a known point.
HOOK = """
import importlib, os, time
_mod = importlib.import_module(os.environ["AR_MODULE"])
_fn = os.environ["AR_FN"]
_orig = getattr(_mod, _fn)
def _paused(p, *a, **k):
    if os.environ["AR_AT"] in str(p) and not os.path.exists(os.environ["AR_PAUSED"]):
        with open(os.environ["AR_PAUSED"], "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(120)
    return _orig(p, *a, **k)
setattr(_mod, _fn, _paused)
"""


def _restore_paused(tmp_path: Path, config: Path, backup_id: str, fn: str, at: str) -> Any:
    """`restore BACKUP --yes`, paused at the first call of fn (module.name) on a path
    holding <at>."""
    return paused_at(tmp_path, config, ["restore", backup_id, "--yes"], fn, at)


def paused_at(tmp_path: Path, config: Path, args: list[str], fn: str, at: str) -> Any:
    """The command `args`, paused at the first call of fn (module.name) on a path holding
    <at>: returned once it is."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    paused = tmp_path / "paused"
    paused.unlink(missing_ok=True)
    module, _, fn = fn.rpartition(".")
    env = {
        **os.environ,
        "AR_MODULE": module,
        "AR_FN": fn,
        "AR_AT": at,
        "AR_PAUSED": str(paused),
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "influx_backupd", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not paused.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def _beside(sandbox: Sandbox, pattern: str) -> list[str]:
    parents = {top.parent for top in (sandbox.meta, sandbox.data, sandbox.wal)}
    return sorted(str(p) for parent in parents for p in parent.glob(pattern))


@pytest.mark.fault("kill", "whole-server restore signalled while extracting")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_restore_signalled_while_extracting_leaves_no_staging_dirs(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, sig: str
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox)
    ledger.take()
    pids = sandbox.pids()
    # paused at the first file written into the data dir's staging copy: meta's is written,
    # all three staging dirs are there
    proc = _restore_paused(tmp_path, config, backup_id, "os.utime", "/.data.restore-")
    staged = _beside(sandbox, ".*.restore-*")
    assert len(staged) == 3, staged
    proc.send_signal(getattr(signal, sig))
    _, stderr = proc.communicate(timeout=60)
    if sig == "SIGTERM":
        assert proc.returncode == 1 and "interrupted by SIGTERM" in stderr, stderr[-3000:]
        [removed] = log_events(stderr, "restore.staging_removed")
        assert sorted(removed["paths"]) == staged
    else:
        assert _beside(sandbox, ".*.restore-*") == staged, "left by the kill"
        after = run_cli(config, "prune", "--dry-run")  # the next lock-taking command
        assert after.returncode == 0, after.stderr[-3000:]
        [removed] = log_events(after.stderr, "recovery.restore_staging_removed")
        assert sorted(removed["paths"]) == staged
    assert _beside(sandbox, ".*.restore-*") == []
    assert _beside(sandbox, "*.rollback-*") == [] and _beside(sandbox, "*.failed-restore-*") == []
    assert sandbox.pids() == pids and sandbox.ping(), "influxd was never touched"
    assert not (tmp_path / "state" / MARKER).exists()
    pruned = run_cli(config, "prune")  # and the restore's owner record goes with the rest
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert list((tmp_path / "archives").glob(".verify-*")) == []
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("kill", "whole-server restore killed after its restored influxd answered")
def test_a_restore_killed_after_its_server_answered_is_kept_with_writes_made_since(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox)
    sandbox.create_db("written_after_backup")
    # paused at the crash marker's removal: the restored server answers
    proc = _restore_paused(tmp_path, config, backup_id, "os.unlink", MARKER)
    proc.kill()
    proc.communicate(timeout=30)
    assert sandbox.ping() and "written_after_backup" not in sandbox.databases()
    sandbox.create_db("written_to_restored_server")  # a user resumes work on it
    pids = sandbox.pids()
    previous = _beside(sandbox, "*.rollback-*")
    assert len(previous) == 3, previous

    status = run_cli(config, "status")
    assert status.returncode == 0, status.stderr[-3000:]
    assert "influxd down" not in status.stdout, status.stdout
    assert "answers on the restored data" in status.stdout, status.stdout
    report = json.loads(run_cli(config, "status", "--json").stdout)
    assert report["influxd_down"]["answers"] is True

    after = run_cli(config, "prune", "--dry-run")
    assert after.returncode == 0, after.stderr[-3000:]
    [kept] = log_events(after.stderr, "recovery.restore_kept")
    assert sorted(kept["previous_data"]) == previous
    assert all(p in kept["detail"] for p in previous), kept["detail"]
    assert not log_events(after.stderr, "recovery.restore_rolled_back")
    assert sandbox.pids() == pids, "the restored server was not stopped"
    assert "written_to_restored_server" in sandbox.databases()
    assert "written_after_backup" not in sandbox.databases()
    assert _beside(sandbox, "*.rollback-*") == previous, "the previous data is still there"
    assert _beside(sandbox, "*.failed-restore-*") == []
    assert not (tmp_path / "state" / MARKER).exists()
    assert "crash marker" not in run_cli(config, "status").stdout


def _swapped_in(sandbox: Sandbox) -> bool:
    """Every live dir moved aside and its staging copy renamed into place."""
    return len(_beside(sandbox, "*.rollback-*")) == 3 and _beside(sandbox, ".*.restore-*") == []


@pytest.mark.fault("kill", "whole-server restore signalled before its restored influxd answered")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_restore_rolled_back_names_the_restored_dirs_it_moved_aside(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, sig: str
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox)
    sandbox.write_points("metrics", 500, start=100_000)  # newer than the backup
    ledger.take()
    # paused as the restored influxd is asked to start: the swap is done, nothing answers
    proc = _restore_paused(tmp_path, config, backup_id, "builtins.open", "influxd.log")
    assert _swapped_in(sandbox)
    if sig == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, stderr[-3000:]
        said = stderr.strip().splitlines()[-1]
    else:
        proc.kill()
        proc.communicate(timeout=30)
        status = run_cli(config, "status")
        assert "rolls the restore back" in status.stdout, status.stdout
        after = run_cli(config, "prune", "--dry-run")
        assert after.returncode == 0, after.stderr[-3000:]
        [event] = log_events(after.stderr, "recovery.restore_rolled_back")
        said = event["detail"]
        assert sorted(event["failed_restore"]) == _beside(sandbox, "*.failed-restore-*")
    failed = _beside(sandbox, "*.failed-restore-*")
    assert len(failed) == 3, failed
    assert "the previous data was put back" in said, said
    assert all(p in said for p in failed), said
    assert "rm -rf" in said, said
    assert sandbox.ping() and sandbox.count("metrics") == 2_500
    assert _beside(sandbox, "*.rollback-*") == [] and _beside(sandbox, ".*.restore-*") == []
    assert not (tmp_path / "state" / MARKER).exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
