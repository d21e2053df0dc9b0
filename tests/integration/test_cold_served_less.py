"""A cold run compares what the restarted server serves with what it counted before the stop
(influxd/counts.after_start): a live server that lost points at the restart is said, on an ok
run (the archive holds them)."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, log_events, write_config


def test_a_restart_that_loses_a_databases_points_is_a_warning_on_the_ok_run(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The [influxd] command moves the WAL of database lost aside just before influxd starts
    (as a damaged index or an unloadable dir would), once: the restarted server serves none of
    its points, and the run said ok with nothing else."""
    sandbox.create_db("lost")
    sandbox.write_points("lost", 300)
    sandbox.create_db("kept")
    sandbox.write_points("kept", 200)
    aside = tmp_path / "wal-aside"
    wrapper = tmp_path / "influxd-losing"
    wrapper.write_text(
        f"#!/bin/sh\ntest -e '{aside}' || mv '{sandbox.wal / 'lost'}' '{aside}' 2>/dev/null\n"
        f'exec {sandbox.command()[0]} "$@"\n'
    )
    wrapper.chmod(0o755)
    metrics = tmp_path / "backupd.prom"
    cli = Cli(
        write_config(
            tmp_path,
            sandbox,
            influxd={"command": [str(wrapper), *sandbox.command()[1:]]},
            daemon={"metrics_file": str(metrics)},
            jobs=[{"name": "nightly", "schedule": "@daily", "copy": "direct", "keep_last": 1}],
        )
    )

    done = cli("backup", "--json")

    assert done.returncode == 0, done.stderr
    assert aside.is_dir(), "the wrapper ran at the run's start"
    assert sandbox.count("lost") == 0 and sandbox.count("kept") == 200
    (listed,) = cli.json("list")
    assert listed["status"] == "ok" and listed["db_counts"] == {"lost": 300, "kept": 200}
    assert listed["extra"]["served_less"] == {"lost": {"before": 300, "after": 0}}
    (event,) = log_events(done.stderr, "influxd.served_less")
    assert (event["db"], event["before"], event["after"]) == ("lost", 300, 0)
    assert "retention enforcement" in event["detail"]
    assert event["message_id"] == "9dedff1fc615431190a7c1a960ee317e"
    # where an operator looks next: the metric an alert rule fires on, and status
    samples = [line for line in metrics.read_text().splitlines() if line.startswith("influx_")]
    lost = [line for line in samples if line.startswith("influx_backupd_served_less_points")]
    assert lost == [
        'influx_backupd_served_less_points{backup_instance="backupd",backup_job="nightly",database="lost"} 300'
    ]
    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert (
        f"SERVED LESS after the restart of run {listed['id']}: lost (300 points)" in status.stdout
    )

    # a later cold run whose restart serves everything clears the metric and the line
    sandbox.write_points("lost", 10)
    again = cli("backup")
    assert again.returncode == 0, again.stderr
    assert "influx_backupd_served_less_points{" not in metrics.read_text()
    assert "SERVED LESS" not in cli("status").stdout
    # keep_last = 1, and the prune after that run still keeps the only copy of the lost points
    assert [r["id"] for r in cli.json("list")] == [listed["id"], cli.json("list")[-1]["id"]]
    assert Path(listed["archive"]).is_file()


def test_a_restart_that_serves_everything_again_says_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100_000)
    cli = Cli(write_config(tmp_path, sandbox))

    done = cli("backup", "--json")

    assert done.returncode == 0, done.stderr
    (listed,) = cli.json("list")
    assert listed["status"] == "ok" and listed["db_counts"] == {"metrics": 100_000}
    assert "served_less" not in listed["extra"]
    assert listed["extra"]["served_after_start_s"] >= 0
    assert not log_events(done.stderr, "influxd.served_less")
