"""Two configs with their own state_dirs naming one influxd: one backup at a time per server.

Each state_dir has its own backup lock, so before the server's lock (ServerLock, a flock on
its influxdb.conf) both stopped the same influxd at once: doubled downtime, one run's start
seen by the other as "started by something else", a false left-down alarm."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import psutil

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config


def _config(root: Path, sandbox: Sandbox, hook: list[str] | None = None) -> Cli:
    root.mkdir()
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    if hook:
        job["on_success"] = hook
    return Cli(write_config(root, sandbox, jobs=[job]))


def _server_pid(sandbox: Sandbox) -> int:
    pids = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(sandbox.conf) in (p.info["cmdline"] or [])
    ]
    assert len(pids) == 1, pids
    return pids[0]


def test_a_second_config_on_the_same_influxd_waits_its_turn(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 50)
    in_hook = tmp_path / "in-hook"
    # A's run is still under its locks while its on_success hook runs
    first = _config(tmp_path / "a", sandbox, ["/bin/sh", "-c", f"touch {in_hook}; sleep 6"])
    second = _config(tmp_path / "b", sandbox)
    assert second.json("backup")["status"] == "ok"  # B's own catalog has a backup to prune
    running = first.popen("backup", "--json")
    try:
        deadline = time.monotonic() + 60
        while not in_hook.exists():
            assert running.poll() is None, running.communicate()
            assert time.monotonic() < deadline, "A's hook never ran"
            time.sleep(0.1)
        pid_before = _server_pid(sandbox)
        busy = second("backup", "--json")
        # prune and verify only read B's own backups: not the server's business
        assert second("prune").returncode == 0
        assert second("verify", "--all").returncode == 0
    finally:
        out, err = running.communicate(timeout=120)
    assert busy.returncode == 75, busy.stderr
    line = busy.stderr.strip().splitlines()[-1]
    assert str(sandbox.conf) in line and f"pid {running.pid}" in line, line
    assert "Traceback" not in busy.stderr
    assert _server_pid(sandbox) == pid_before, "B stopped nothing"
    assert json.loads(out)["status"] == "ok", err
    assert [r["status"] for r in second.json("list")] == ["ok"], "B's refused run left no record"
    # A done, B's turn
    assert second.json("backup")["status"] == "ok"
    assert sandbox.ping()


def test_recovery_waits_while_another_config_has_the_server(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """B's crash marker says influxd is down because of B; while A holds the server (it may
    have stopped it on purpose), B's recovery must not start it mid-copy: busy, nothing done."""
    second = _config(tmp_path / "b", sandbox)
    marker = tmp_path / "b" / "state" / "influxd-stopped.json"
    with open(sandbox.conf, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # A, between its stop and its start
        assert second("prune").returncode == 0, "no marker: prune needs no server"
        plan = second.json("backup", "--dry-run")
        plan = plan[0] if isinstance(plan, list) else plan
        assert any(f"(pid {os.getpid()}) holds influxd" in r for r in plan["reasons"]), plan
        marker.write_text(json.dumps({"run_id": "20261202T000000Z-dead", "pid": 999999}))
        busy = second("prune")
        assert busy.returncode == 75, busy.stderr
        assert f"pid {os.getpid()}" in busy.stderr
        assert marker.exists(), "recovery left for later, marker kept"
    done = second("prune")  # A done: B's recovery runs (influxd answers: marker cleared)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
