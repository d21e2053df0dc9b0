"""`recover` clears what a killed run left even when influxd was never stopped (no crash marker):
a hot backup SIGKILLed just before it renames its checked output into place leaves the
unfinished dir and a record still `running`. Before, `recover` said "nothing to recover" and
left them for the next lock-taking command (real influxd, real `influxd backup`, real CLI, a
real kill)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import held_env, run_cli
from tests.faults.test_restore_interrupted import paused_at


@pytest.mark.fault("kill", "SIGKILL of backup", "hot, before its output is renamed, then recover")
def test_recover_clears_a_killed_hot_runs_unfinished_dir_and_record(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    job = {"name": "hourly", "schedule": "0 * * * *", "mode": "hot"}
    config = write_config(tmp_path, sandbox, jobs=[job])
    storage = tmp_path / "archives"
    backup = paused_at(tmp_path, config, ["backup"], "os.rename", ".incomplete")
    backup.kill()
    backup.communicate()
    [unfinished] = storage.glob("*.incomplete")
    pids = sandbox.pids()

    done = run_cli(config, "recover")
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout.splitlines()
    assert f"cleared: unfinished backup {unfinished}" in said, said
    assert any(line.startswith("cleared: run ") and "(hourly)" in line for line in said), said
    assert "nothing to recover" not in done.stdout
    assert not unfinished.exists()
    [record] = json.loads(run_cli(config, "list", "--json").stdout)
    assert record["status"] == "interrupted", record
    assert sandbox.pids() == pids and sandbox.ping(), "influxd was never touched"

    again = run_cli(config, "recover", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["cleared"] == []
    assert run_cli(config, "recover").stdout.startswith("nothing to recover")
    assert sorted(p.name for p in storage.iterdir() if p.name.startswith("hourly")) == []


@pytest.mark.fault(
    "term", "SIGTERM of the daemon mid-run", "then recover (the unit's ExecStopPost)"
)
def test_recover_sends_the_follow_up_a_run_the_daemons_stop_cut_short_owes(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Soak audit: `systemctl stop` mid-run records it interrupted and owes its follow-up (the
    failure notification, on_failure, metrics); `recover`, which the unit runs after every
    stop, said "nothing to recover" and left it owed until the daemon's next start."""
    import signal
    import sys

    from influx_backupd.store.catalog import Catalog
    from tests.system.test_daemon import daemon, ran_an_hour_ago

    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    told = tmp_path / "on_failure.txt"
    hook = [sys.executable, "-c", f"open({str(told)!r}, 'a').write('told\\n')"]
    job = {"name": "nightly", "every": "1h", "mode": "cold", "on_failure": hook}
    config = write_config(tmp_path, sandbox, jobs=[job])
    ran_an_hour_ago(tmp_path / "state", "nightly")
    # the point counts before the stop held 5 s: a window for the daemon's SIGTERM to land in
    slow = held_env(tmp_path, "influx_backupd.influxd.counts:before_stop", 5.0)
    with daemon(tmp_path, config, **slow) as d:
        d.wait_event("run.started", 120)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(60) == 0, d.tail()
    catalog = Catalog(tmp_path / "state")
    [owed] = catalog.owed()
    assert owed.status == "interrupted", owed
    assert not told.exists(), "the daemon's stop sends nothing: the follow-up is owed"

    done = run_cli(config, "recover")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nothing to recover" not in done.stdout, done.stdout
    assert f"cleared: run {owed.id} (nightly) owed its follow-up" in done.stdout, done.stdout
    assert told.read_text() == "told\n", "on_failure ran"
    assert catalog.owed() == []
    assert sandbox.ping()
