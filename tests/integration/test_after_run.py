"""What follows a backup against a real influxd: hooks, heartbeat, metrics, verify after backup."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config

# A hook that records its environment and whether influxd answered /ping while it ran.
HOOK = """
import json, os, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[2] + "/ping", timeout=2) as r:
        ping = r.status == 204
except OSError:
    ping = False
env = {k: v for k, v in os.environ.items() if k.startswith("INFLUX_BACKUPD_")}
with open(sys.argv[1], "a") as fh:
    fh.write(json.dumps({"env": env, "ping": ping}) + "\\n")
sys.exit(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
"""


class Heartbeats:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.bodies: list[str] = []
        seen, bodies = self.paths, self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                bodies.append(self.rfile.read(length).decode())
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            do_POST = do_GET  # success and fail pings carry the run's summary and log tail

            def log_message(self, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping/abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def heartbeats() -> Iterator[Heartbeats]:
    hb = Heartbeats()
    try:
        yield hb
    finally:
        hb.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ping/abc"  # nothing listens there any more


def hook_runs(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_hooks_and_heartbeats_follow_the_run_with_influxd_up(
    tmp_path: Path, sandbox: Sandbox, heartbeats: Heartbeats
) -> None:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    out = tmp_path / "hook.jsonl"
    job = {
        "name": "nightly",
        "mode": "cold",
        "on_success": [sys.executable, str(script), str(out), sandbox.url],
        "on_failure": [sys.executable, str(script), str(out), sandbox.url],
        "heartbeat_url": heartbeats.url,
        "verify_after_backup": True,
        "verify_restore_test": True,
    }
    cli = Cli(write_config(tmp_path, sandbox, jobs=[job]))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 3_000)

    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    [run] = hook_runs(out)
    env = run["env"]
    assert isinstance(env, dict)
    assert run["ping"] is True, "the hook runs after influxd is serving again"
    assert env["INFLUX_BACKUPD_STATUS"] == "ok"
    assert env["INFLUX_BACKUPD_JOB"] == "nightly"
    assert env["INFLUX_BACKUPD_RUN_ID"] == record["id"]
    assert env["INFLUX_BACKUPD_ARCHIVE"] == record["archive"]
    assert env["INFLUX_BACKUPD_BYTES"] == str(record["bytes"])
    assert env["INFLUX_BACKUPD_MODE"] == "cold"
    assert float(env["INFLUX_BACKUPD_DOWNTIME_S"]) > 0
    assert env["INFLUX_BACKUPD_VERIFY"] == "ok"
    assert heartbeats.paths == ["/ping/abc/start", "/ping/abc"]
    assert heartbeats.bodies[0] == "" and record["id"] in heartbeats.bodies[1]
    stored = cli.json("list")[0]
    assert stored["verify_status"] == "ok"
    assert "restore_test: ok" in stored["verify_detail"]

    # influxd gone: the run fails, the failure hook and /fail follow
    sandbox.stop()
    done = cli("backup", "--json")
    assert done.returncode == 1
    failed = json.loads(done.stdout)
    runs = hook_runs(out)
    assert len(runs) == 2
    env = runs[1]["env"]
    assert isinstance(env, dict)
    assert env["INFLUX_BACKUPD_STATUS"] == "failed"
    assert env["INFLUX_BACKUPD_ERROR"] == failed["error"]
    assert heartbeats.paths[-2:] == ["/ping/abc/start", "/ping/abc/fail"]


def test_a_failing_hook_a_hanging_hook_and_a_dead_heartbeat_do_not_fail_the_backup(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    pidfile = tmp_path / "sleeper.pid"
    broken = tmp_path / "notify"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    hanging = (
        "import os, subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pidfile)!r}, 'w').write(str(child.pid)); time.sleep(120)"
    )
    jobs = [
        {
            "name": "failing",
            "mode": "cold",
            "on_success": [sys.executable, "-c", "import sys; sys.exit(3)"],
            "heartbeat_url": closed_port_url(),
        },
        {
            "name": "hanging",
            "mode": "cold",
            "on_success": [sys.executable, "-c", hanging],
            "hook_timeout": "2s",
        },
        # there and executable (load checks that), but it cannot start: its interpreter is gone
        {"name": "missing", "mode": "cold", "on_success": [str(broken)]},
    ]
    cli = Cli(write_config(tmp_path, sandbox, jobs=jobs))

    done = cli("backup", "--job", "failing", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok"
    assert "heartbeat.failed" in done.stderr and "hook.finished" in done.stderr

    started = time.monotonic()
    done = cli("backup", "--job", "hanging", "--json")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60, "the hook's 120 s sleep did not hold up the run"
    assert "timed out after 2s" in done.stderr
    child = int(pidfile.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    # SIGKILLed before the run returned; on a loaded machine its exit can take a moment (CI)
    deadline = time.monotonic() + 10
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(), "the hook's whole process group is killed on timeout"

    done = cli("backup", "--job", "missing", "--json")
    assert done.returncode == 0, done.stderr
    assert f"cannot start {broken}" in done.stderr
    assert sandbox.ping()


def test_metrics_file_after_real_runs_parses_and_counts_survive_pruning(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    metrics = tmp_path / "metrics" / "influx_backupd.prom"
    metrics.parent.mkdir()
    config = write_config(tmp_path, sandbox, jobs=[{"name": "nightly", "keep_last": 1}])
    text = config.read_text().replace("[daemon]\n", f'[daemon]\nmetrics_file = "{metrics}"\n')
    config.write_text(text)
    cli = Cli(config)

    assert cli.json("backup")["status"] == "ok"
    sandbox.stop()
    assert cli.json("backup")["status"] == "failed"
    sandbox.start()
    assert cli.json("backup")["status"] == "ok"  # its prune removes the failed run's record
    assert [r["status"] for r in cli.json("list")] == ["ok"]

    samples = {}
    for family in text_string_to_metric_families(metrics.read_text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    job = ("backup_instance", "default"), ("backup_job", "nightly")
    assert samples[("influx_backupd_runs_total", (*job, ("result", "ok")))] == 2
    assert samples[("influx_backupd_runs_total", (*job, ("result", "failed")))] == 1
    assert ("influx_backupd_last_run_timestamp_seconds", (*job, ("result", "failed"))) in samples
    assert samples[("influx_backupd_downtime_seconds", job)] > 0
    assert samples[("influx_backupd_archive_bytes", job)] > 0
    assert samples[("influx_backupd_verify_failures_total", job)] == 0
    assert metrics.stat().st_mode & 0o777 == 0o644


def test_a_backup_says_what_its_retention_deleted(tmp_path: Path, sandbox: Sandbox) -> None:
    """README walkthrough: the only cold backup went to keep_last after hot runs by hand, and
    nothing but a JSON log line counted it; its id then looked unknown to `restore`."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 200)
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{**job, "keep_last": 1}]))
    first = cli.json("backup")
    done = cli("backup")
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stdout.splitlines() if line.startswith("pruned ")]
    assert said == [
        "pruned 1 older backup by the job's retention (keep_*, hot and cold runs alike): "
        + first["id"]
    ], done.stdout
    again = cli("backup", "--json")  # JSON: the record alone, as before
    assert json.loads(again.stdout)["status"] == "ok"
