"""Class 7: what influx-backupd creates is private whatever the caller's umask, and the influxd
it starts runs with the umask of its own service (022). Real influxd, real CLI under umask 000."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import Ledger, run_cli


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask in /proc/PID/status")


@pytest.mark.fault("7", "permissions under the caller's umask", "umask 000: cold, hot, metrics")
def test_under_umask_000_everything_is_private_and_influxd_gets_022(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    jobs = [
        {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "staged"},
        {
            "name": "direct",
            "schedule": "0 4 * * *",
            "mode": "cold",
            "copy": "direct",
            # the operator's hooks run with the operator's umask, not ours
            "on_success": ["sh", "-c", f"umask > {tmp_path / 'hook.umask'}"],
        },
        {"name": "hourly", "schedule": "0 * * * *", "mode": "hot"},
    ]
    config = write_config(tmp_path, sandbox, jobs=jobs)
    metrics = tmp_path / "metrics" / "influx_backupd.prom"
    metrics.parent.mkdir()
    config.write_text(
        config.read_text().replace("[daemon]\n", f'[daemon]\nmetrics_file = "{metrics}"\n', 1)
    )
    ledger.take()
    for job in ("nightly", "direct", "hourly"):
        done = run_cli(config, "backup", "--job", job, "--json", umask=0)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["status"] == "ok"

    state, storage = tmp_path / "state", tmp_path / "archives"
    private_dirs = [state, storage, storage / ".staging", storage / ".staging" / "nightly"]
    private_dirs += [p for p in storage.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for path in private_dirs:
        assert _mode(path) == 0o700, f"{path}: {oct(_mode(path))}"
    files = [p for p in state.iterdir() if p.is_file()]
    files += [p for p in storage.iterdir() if p.is_file()]  # archives and their records
    files += [
        p
        for d in storage.iterdir()
        if d.is_dir() and not d.name.startswith(".")
        for p in d.iterdir()
    ]
    names = {p.name for p in files}
    assert "catalog.db" in names and "influxd.log" in names, names
    assert any(n.endswith(".tar") for n in names) and any(n.endswith(".tar.json") for n in names)
    for path in files:
        assert _mode(path) == 0o600, f"{path}: {oct(_mode(path))}"
    assert (tmp_path / "hook.umask").read_text().strip() == "0000"
    # node_exporter (another user) reads the metrics: readable, never writable by others
    assert _mode(metrics) == 0o644, oct(_mode(metrics))
    # nothing anywhere below them is writable by group or others (staged copies included)
    for root in (state, storage):
        for path in [root, *root.rglob("*")]:
            assert _mode(path) & 0o022 == 0, f"{path}: {oct(_mode(path))}"

    # the influxd we started again runs with its service's umask, and its new files show it
    [pid] = sandbox.pids()
    assert _umask_of(pid) == 0o022
    sandbox.create_db("fresh")
    sandbox.write_points("fresh", 100)
    made = [p for p in (sandbox.data / "fresh").rglob("*")] + [
        p for p in (sandbox.wal / "fresh").rglob("*")
    ]
    assert made
    for path in made:
        assert _mode(path) & 0o002 == 0, f"{path} is world-writable: {oct(_mode(path))}"
    # A restore under the same umask: influxd's dirs come back as influxd made them, the
    # server started again with 022.
    [cold] = [
        r for r in json.loads(run_cli(config, "list", "--json").stdout) if r["job"] == "direct"
    ]
    live = (sandbox.meta, sandbox.data, sandbox.wal)
    modes = {path: _mode(path) for path in live}
    done = run_cli(config, "restore", cold["id"], "--yes", umask=0)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {path: _mode(path) for path in live} == modes, "as influxd made them"
    [pid] = sandbox.pids()
    assert _umask_of(pid) == 0o022
    for root in (state, storage):
        for path in [root, *root.rglob("*")]:
            assert _mode(path) & 0o022 == 0, f"{path}: {oct(_mode(path))}"
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
