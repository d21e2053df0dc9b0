"""Processes killed at their worst moment, and what the next one does about it (real influxd)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil

from influx_backupd.core.log import MESSAGE_IDS
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from tests.conftest import (
    Cli,
    failure_hooked,
    log_events,
    throwaway_influxds,
    wait_until,
    write_config,
)
from tests.faults.conftest import Watched
from tests.system.test_daemon import daemon, ran_an_hour_ago, runs, wait_runs

FILLER = 1_500_000_000  # sparse: makes the copy (and so the stop window) long enough to aim at


def test_a_daemon_killed_with_influxd_stopped_recovers_at_start_and_schedules_again(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(FILLER)
    job = {"name": "often", "every": "2s", "mode": "cold", "copy": "direct"}
    config = write_config(tmp_path, sandbox, jobs=[job], holes="fill")
    marker = tmp_path / "state" / "influxd-stopped.json"

    with daemon(tmp_path, config) as first:
        wait_until(
            lambda: (
                marker.exists()
                and not sandbox.pids()
                and list((tmp_path / "archives").glob("*.partial"))
            ),
            60,
            "a scheduled cold run with influxd stopped and the archive being written",
        )
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    assert not sandbox.ping(), "the daemon died inside the stop window: influxd is down"
    [killed] = runs(tmp_path)
    assert killed.status == "running"
    (sandbox.data / "filler.bin").unlink()

    with daemon(tmp_path, config) as second:
        ready = second.wait_event("daemon.ready", 60)
        # Recovery ran before the daemon called itself ready, not on the next scheduled run.
        names = [e.get("event") for e in second.events()]
        assert names.index("recovery.influxd_started") < names.index("daemon.ready"), names
        assert ready
        # influxd answers once the restarted daemon is ready, unless the job (every 2 s) has
        # already begun its next run, which stops it again (seen under load: recovery took
        # longer than the interval, and the run was due as the daemon became ready)
        answers = sandbox.ping()
        since_ready = [e.get("event") for e in second.events()][names.index("daemon.ready") :]
        assert answers or "run.started" in since_ready, since_ready
        assert not marker.exists()
        assert not list((tmp_path / "archives").glob("*.partial"))
        [record] = [r for r in runs(tmp_path) if r.id == killed.id]
        assert record.status == "interrupted"
        assert record.error is not None and "influxd was started again" in record.error
        # …and it carries on scheduling: a new run of the job completes ok.
        wait_runs(tmp_path, lambda rs: any(r.status == "ok" for r in rs), 60)
        assert second.stop() == 0
    assert sandbox.ping()
    assert sandbox.count("metrics") == 2_000


def test_a_restore_test_killed_leaves_no_throwaway_influxd_behind(
    tmp_path: Path, sandbox: Sandbox, cli: Cli
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    storage = tmp_path / "archives"

    # SIGKILL: nothing of ours runs any more; the next lock-taking command stops the server.
    verify = cli.popen("verify", record["id"], "--restore-test")
    wait_until(lambda: throwaway_influxds(storage), 60, "the restore test's throwaway influxd")
    verify.kill()
    verify.wait()
    assert throwaway_influxds(storage), "SIGKILL leaves the throwaway influxd running"
    done = cli("verify", "--all")
    assert done.returncode == 0, done.stderr
    assert throwaway_influxds(storage) == []
    assert cli("prune").returncode == 0  # prune reports and removes the dead run's scratch dir
    assert not list(storage.glob(".verify-*"))

    # SIGTERM: the command stops its own throwaway influxd before it exits.
    verify = cli.popen("verify", record["id"], "--restore-test")
    wait_until(lambda: throwaway_influxds(storage), 60, "the restore test's throwaway influxd")
    verify.send_signal(signal.SIGTERM)
    _, err = verify.communicate(timeout=60)
    assert verify.returncode == 1
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert throwaway_influxds(storage) == []
    assert not list(storage.glob(".verify-*"))
    assert sandbox.ping()


def test_a_hot_run_killed_is_recorded_interrupted_and_its_leftovers_go(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    job, hook = failure_hooked(tmp_path)
    metrics = tmp_path / "metrics.prom"
    config = write_config(tmp_path, sandbox, jobs=[job], daemon={"metrics_file": str(metrics)})
    cli = Cli(config)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 20_000)
    catalog = Catalog(tmp_path / "state")
    storage = tmp_path / "archives"
    backup = Watched(config, "backup", "--mode", "hot")
    # Frozen the moment its `influxd backup` starts: polling the catalog for `running` could
    # miss the whole run (20,000 points take well under a second) when this worker is
    # descheduled, and a run that ends first fails here with its own stderr.
    backup.wait_event("hot.running", timeout=60)
    backup.proc.send_signal(signal.SIGSTOP)
    backup.kill()
    for child in psutil.process_iter(["cmdline"]):  # its `influxd backup` dies with it or soon
        argv = child.info["cmdline"] or []
        if len(argv) > 1 and argv[1] == "backup" and str(storage) in " ".join(argv):
            child.kill()
    [killed] = catalog.list()
    assert killed.status == "running", "killed mid-run, the record says running until recovery"

    done = cli("backup", "--json")  # cold: the next lock-taking command
    second = json.loads(done.stdout)
    assert second["status"] == "ok", second["error"]
    # found by the alert on run_failed's MESSAGE_ID, with its record, as a failed run.finished
    [said] = [e for e in log_events(done.stderr) if e.get("event") == "recovery.run_interrupted"]
    assert said["message_id"] == MESSAGE_IDS["run_failed"], said
    assert said["record"]["id"] == killed.id and said["record"]["status"] == "interrupted"
    record = catalog.get(killed.id)
    assert record is not None and record.status == "interrupted"
    assert record.finished_at is not None
    assert "influxd was started again" not in (record.error or ""), "a hot run never stops it"
    assert not list(storage.glob("*.incomplete")) and not list(storage.glob("*.partial"))
    assert sandbox.ping()
    # Its follow-up ran late, at recovery: counted, and the operator's on_failure told.
    prom = metrics.read_text()
    assert (
        'influx_backupd_runs_total{backup_instance="metrics",backup_job="nightly",result="interrupted"} 1'
        in prom
    )
    assert (
        'influx_backupd_runs_total{backup_instance="metrics",backup_job="nightly",result="ok"} 1'
        in prom
    )
    told = hook.told()
    assert told["INFLUX_BACKUPD_RUN_ID"] == killed.id
    assert told["INFLUX_BACKUPD_STATUS"] == "interrupted"


def test_a_run_killed_during_its_follow_up_is_followed_up_once_by_the_next_command(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The run is finished and recorded ok; the process dies in its verify, before its hooks.
    The operator's on_success must still run, once, and the verify be done."""
    hook_out = tmp_path / "on_success.ids"
    job = {
        "name": "nightly",
        "schedule": "0 3 * * *",
        "mode": "cold",
        "copy": "direct",
        "verify_after_backup": True,
        "verify_restore_test": True,
        "on_success": ["sh", "-c", f'echo "$INFLUX_BACKUPD_RUN_ID" >> {hook_out}'],
    }
    cli = Cli(write_config(tmp_path, sandbox, jobs=[job]))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    storage = tmp_path / "archives"
    catalog = Catalog(tmp_path / "state")

    backup = cli.popen("backup")
    wait_until(lambda: throwaway_influxds(storage), 60, "the verify's throwaway influxd")
    backup.kill()
    backup.wait()
    [record] = catalog.list()
    assert record.status == "ok" and record.verify_status is None, "killed in its follow-up"
    assert not hook_out.exists()

    done = cli("prune")  # the next lock-taking command
    assert done.returncode == 0, done.stderr[-2000:]
    assert "recovery.follow_up_owed" in done.stderr
    assert hook_out.read_text().split() == [record.id]
    followed = catalog.get(record.id)
    assert followed is not None and followed.verify_status == "ok", followed
    assert throwaway_influxds(storage) == []
    assert cli("prune").returncode == 0
    assert hook_out.read_text().split() == [record.id], "followed up once, not at every command"


def test_sighup_during_a_run_keeps_the_lock_and_the_run_finishes_ok(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(FILLER)
    job = {"name": "often", "every": "1h", "mode": "cold", "copy": "direct"}
    config = write_config(tmp_path, sandbox, jobs=[job], holes="fill")
    ran_an_hour_ago(tmp_path / "state", "often")  # caught up at start
    marker = tmp_path / "state" / "influxd-stopped.json"
    with daemon(tmp_path, config) as d:
        wait_until(lambda: marker.exists(), 60, "the caught-up run stopping influxd")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_event("config.reloaded", 30)
        busy = Cli(config)("backup")
        assert busy.returncode == 75, busy.stderr
        assert "another backup is running" in busy.stderr
        wait_runs(tmp_path, lambda rs: len(rs) == 2 and rs[-1].status == "ok", 60)
        assert d.stop() == 0
    assert sandbox.ping()
