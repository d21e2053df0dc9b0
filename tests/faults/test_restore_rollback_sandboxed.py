"""A restore killed after its swap, its restored influxd started anyway (a unit's start queued
before the kill completes), recovered by a process that cannot do the rollback's renames: the
daemon under its unit, whose ProtectSystem=strict mounts influxd's dirs read-only when they lie
outside ReadWritePaths=. Played here by a private mount namespace (unshare -m, root) with the
dirs' parent bind-mounted read-only, as systemd mounts it; real influxd, real CLI and daemon.

Before: recovery stopped the serving influxd, then every rollback failed with EROFS, every
30 s for ever, influxd down; `status` said the daemon kept trying to start it. Now recovery
proves the renames first: the serving server is left alone, one line says what to do, the
crash marker stays, and a command that can (outside the namespace) rolls the restore back.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import wait_until
from tests.faults.conftest import Ledger, run_cli
from tests.faults.test_restore_interrupted import _restore_paused, _swapped_in
from tests.faults.test_restore_swap_kill import _backed_up

MARKER = "influxd-stopped.json"


def _read_only_at(parent: Path, config: Path, *args: str) -> list[str]:
    """argv of `influx-backupd ARGS` in a mount namespace of its own where parent is mounted
    read-only (for that process alone, as a unit's sandbox is)."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return [
        *("unshare", "-m", "--propagation", "private", "sh", "-c", script, str(parent)),
        *(sys.executable, "-m", "influx_backupd", "--config", str(config), *args),
    ]


def _events(stderr: str, name: str) -> list[dict[str, object]]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("{") and json.loads(line).get("event") == name:
            found.append(json.loads(line))
    return found


@pytest.mark.fault("kill", "restore killed after its swap, recovered inside a read-only sandbox")
def test_recovery_that_cannot_roll_back_leaves_the_serving_influxd_alone_and_says_so(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.fail("a read-only bind mount needs root (CI runs as root)")
    config, backup_id = _backed_up(tmp_path, sandbox)
    sandbox.write_points("metrics", 500, start=100_000)  # newer than the backup
    ledger.take()
    proc = _restore_paused(tmp_path, config, backup_id, "builtins.open", "influxd.log")
    assert _swapped_in(sandbox)
    proc.kill()
    proc.communicate(timeout=30)
    sandbox.start()  # the start asked for before the kill completes: the restored data serves
    assert sandbox.count("metrics") == 2_000
    pids = sandbox.pids()
    marker = tmp_path / "state" / MARKER
    parent = sandbox.root  # meta, data and wal lie in it

    # a command inside the sandbox: refused, nothing stopped, one line on what to do
    done = subprocess.run(
        _read_only_at(parent, config, "prune", "--dry-run"), capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    said = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("{")][-1]
    for words in ("its rollback cannot be done", "read-only", "ReadWritePaths=", str(parent)):
        assert words in said, said
    assert "is not stopped" in said and str(marker) in said, said
    assert not _events(done.stderr, "recovery.stopping_unfinished_restore")
    assert _events(done.stderr, "recovery.rollback_blocked")
    assert sandbox.pids() == pids and sandbox.count("metrics") == 2_000, "left serving"
    assert marker.exists()

    # the daemon inside the sandbox: the same, said once, and `status` tells the truth
    daemon = subprocess.Popen(
        _read_only_at(parent, config, "run"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        state = tmp_path / "state" / "daemon.json"

        def told() -> bool:
            try:
                return "not rolled back" in json.loads(state.read_text()).get("status", "")
            except (OSError, ValueError):
                return False

        wait_until(told, 120, "the daemon's status line says the rollback is not done")
        status = run_cli(config, "status")
        assert status.returncode == 0, status.stderr[-3000:]
        assert "its rollback was not done" in status.stdout, status.stdout
        assert "keeps trying to start" not in status.stdout + status.stderr, status.stdout
        assert sandbox.pids() == pids and sandbox.ping(), "the daemon stopped nothing"
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=120)
    assert len(_events(out, "daemon.rollback_blocked")) == 1, out[-3000:]
    assert not _events(out, "recovery.stopping_unfinished_restore"), out[-3000:]
    assert sandbox.pids() == pids

    # outside the sandbox any lock-taking command rolls it back, as the line said
    after = run_cli(config, "prune", "--dry-run")
    assert after.returncode == 0, after.stderr[-3000:]
    assert _events(after.stderr, "recovery.restore_rolled_back"), after.stderr[-3000:]
    wait_until(sandbox.ping, 60, "influxd answers again")
    assert sandbox.count("metrics") == 2_500, "the data from before the restore is back"
    assert not marker.exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
