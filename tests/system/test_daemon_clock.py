"""The daemon's schedule against wall clock steps, its queue, its reload and what its status
says after a run. The loop's functions are driven directly with a stopped (never started)
sandbox influxd: no server is needed to schedule; one real daemon under libfaketime has the
clock stepped back for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from influx_backupd.core.config import load
from influx_backupd.daemon.loop import Daemon, Due
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord
from influx_backupd.store.state import ClockSteps
from tests.conftest import write_config
from tests.system.test_daemon import daemon

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
HOUR = 3600.0
DAY = 86400.0
TEN_MIN = timedelta(minutes=10)


@pytest.fixture
def server(tmp_path: Path, influxd_path: str) -> Sandbox:
    """Its influxdb.conf written, influxd not started: enough to load a config."""
    sandbox = Sandbox(tmp_path / "server", binary=influxd_path)
    sandbox.write_config()
    return sandbox


@contextmanager
def scheduling(config: Path, **kwargs: Any) -> Iterator[Daemon]:
    """A Daemon with its scheduler started (triggers only queue: no worker takes them)."""
    d = Daemon(load(config), **kwargs)
    d._start_scheduler()
    try:
        yield d
    finally:
        d._scheduler.shutdown(wait=False)


def next_run(d: Daemon, name: str) -> float:
    return float(d._scheduler.get_job(name).next_run_time.timestamp())


def test_a_clock_stepped_back_recomputes_every_next_run_from_the_new_clock(
    tmp_path: Path, server: Sandbox
) -> None:
    """Before: `clock.jumped by_s=-600` and only a wakeup: the next runs computed under the
    old clock stayed 10 minutes ahead, and no run happened for that long."""
    config = write_config(
        tmp_path,
        server,
        jobs=[
            {"name": "m", "schedule": "* * * * *", "mode": "hot"},
            {"name": "e", "every": "2m", "mode": "hot"},
        ],
        extra='[verify]\nevery = "1h"\n',
    )
    with scheduling(config) as d:
        # as computed while the clock read 10 minutes later than it now does
        for name in ("m", "e", "[verify]"):
            job = d._scheduler.get_job(name)
            d._scheduler.modify_job(name, next_run_time=job.next_run_time + TEN_MIN)
        d._clock_offset += 600
        with capture_logs() as logs:
            d._check_clock()
        now = time.time()
        assert next_run(d, "m") <= now + 60
        assert next_run(d, "e") <= now + 120
        assert next_run(d, "[verify]") <= now + HOUR
    [jumped] = [e for e in logs if e["event"] == "clock.jumped"]
    assert jumped["by_s"] <= -600 and "computed again" in jumped["then"], jumped
    # counted for the hot jobs: their next link is a new full (jobs/plan.py)
    assert ClockSteps(tmp_path / "state").count() == 1


def test_a_forward_step_keeps_the_next_runs(tmp_path: Path, server: Sandbox) -> None:
    config = write_config(tmp_path, server, jobs=[{"name": "e", "every": "1h", "mode": "hot"}])
    with scheduling(config) as d:
        before = next_run(d, "e")
        d._clock_offset -= 600
        d._check_clock()
        assert next_run(d, "e") == before
    assert ClockSteps(tmp_path / "state").count() == 0, "a step forward dates no file too early"


def test_a_run_recorded_while_the_clock_was_ahead_is_no_anchor(
    tmp_path: Path, server: Sandbox
) -> None:
    """Before: a run recorded with the clock a day ahead gave an `every = "2m"` job (and
    [verify], anchored at its oldest check) a next run a day away."""
    config = write_config(
        tmp_path,
        server,
        jobs=[{"name": "e", "every": "2m", "mode": "hot"}],
        extra='[verify]\nevery = "1h"\n',
    )
    ahead = time.time() + DAY
    catalog = Catalog(tmp_path / "state")
    catalog.save(
        RunRecord(
            "r-ahead",
            "e",
            "hot",
            status="ok",
            started_at=ahead,
            finished_at=ahead + 5,
            archive=str(tmp_path / "archives" / "x"),
        )
    )
    with capture_logs() as logs, scheduling(config) as d:
        now = time.time()
        assert next_run(d, "e") <= now + 120
        assert next_run(d, "[verify]") <= now + HOUR
    told = [e for e in logs if e["event"] == "schedule.record_in_the_future"]
    assert {e["job"] for e in told} == {"e", "[verify]"}, logs
    assert all(e["run_ids"] == ["r-ahead"] for e in told)


def test_a_newer_fire_moves_the_waiting_runs_due_time(tmp_path: Path, server: Sandbox) -> None:
    """Before: the newer fire was dropped ("already waiting"), then the waiting one was
    skipped as later than catch_up after its own, older, due time: the job lost its run."""
    config = write_config(
        tmp_path,
        server,
        jobs=[
            {"name": "a", "every": "5s", "mode": "hot"},
            {"name": "b", "every": "3s", "catch_up": "4s", "mode": "hot"},
        ],
    )
    d = Daemon(load(config))
    now = time.time()
    d._running = "a"
    d._pending = [Due("b", now - 11, "schedule"), Due("[verify]", now - 1, "resume")]
    d._fire("b", "schedule", now)
    assert d._pending == [Due("b", now, "schedule"), Due("[verify]", now - 1, "resume")]
    d._fire("b", "catch-up", now - 30)  # an older one changes nothing
    assert d._pending[0] == Due("b", now, "schedule")


def test_a_reload_says_a_changed_log_level_needs_a_restart(tmp_path: Path, server: Sandbox) -> None:
    config = write_config(tmp_path, server, jobs=[{"name": "e", "every": "1h", "mode": "hot"}])
    with scheduling(config) as d:  # logging at the default level, info
        write_config(
            tmp_path,
            server,
            jobs=[{"name": "e", "every": "1h", "mode": "hot"}],
            daemon={"log_level": "debug"},
        )
        with capture_logs() as logs:
            d.reload()
    said = [e["detail"] for e in logs if e["event"] == "config.warning"]
    assert any("daemon.log_level" in s and "restart" in s for s in said), logs
    assert any(e["event"] == "config.reloaded" for e in logs)


def test_a_reload_with_an_unchanged_log_level_says_nothing_of_it(
    tmp_path: Path, server: Sandbox
) -> None:
    """`run --log-level debug`: the config's level, unchanged, is no news at each reload."""
    config = write_config(tmp_path, server, jobs=[{"name": "e", "every": "1h", "mode": "hot"}])
    with scheduling(config, log_level="debug") as d, capture_logs() as logs:
        d.reload()
    assert not [e for e in logs if "log_level" in str(e.get("detail"))], logs


def test_run_and_a_reload_refuse_what_check_config_refuses(tmp_path: Path, server: Sandbox) -> None:
    """Before: `run` started with an influxd command that does not exist, and a SIGHUP
    loaded one (config.reloaded); every scheduled run then failed."""
    jobs = [{"name": "e", "every": "1h", "mode": "hot"}]
    config = write_config(tmp_path, server, jobs=jobs)
    d = Daemon(load(config))
    d._start_scheduler()
    try:
        good = d.config
        nope = ["/usr/bin/influxd-nope", "run", "-config", str(server.conf)]
        write_config(tmp_path, server, jobs=jobs, influxd={"command": nope})
        with capture_logs() as logs:
            d.reload()
        assert d.config is good
    finally:
        d._scheduler.shutdown(wait=False)
    [failed] = [e for e in logs if e["event"] == "config.reload_failed"]
    assert not any(e["event"] == "config.reloaded" for e in logs)

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}

    def command(name: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "influx_backupd", "--config", str(config), name]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)

    check = command("check-config")
    assert check.returncode == 78, check
    assert check.stderr == f"influx-backupd: {failed['error']}\n"
    assert "influxd.command: /usr/bin/influxd-nope does not exist" in check.stderr
    try:
        run = command("run")
    except subprocess.TimeoutExpired:
        pytest.fail("run started the daemon with an influxd it cannot start")
    assert (run.returncode, run.stderr) == (78, check.stderr), run
    assert not (tmp_path / "state" / "daemon.json").exists()


def test_status_shows_the_follow_up_step_not_done(tmp_path: Path, server: Sandbox) -> None:
    """Before: "phase done" for the whole follow-up (verify, prune, hook waits)."""
    config = write_config(
        tmp_path,
        server,
        jobs=[
            {
                "name": "j",
                "every": "1h",
                "mode": "hot",
                "verify_after_backup": True,
                "on_success": ["true"],
            }
        ],
    )
    d = Daemon(load(config))
    d._worker = __import__("threading").current_thread()  # observe() follows the worker's events
    d._running = "j"

    def phase_after(**event: Any) -> str:
        d.observe(None, "info", event)
        return str(d._job_status_text({}))

    assert "phase preflight" in phase_after(
        event="run.started", run_id="r1", job="j", mode="hot", phase="preflight"
    )
    text = phase_after(event="run.finished", run_id="r1", phase="done", record={"status": "ok"})
    assert "phase after run: verify, prune, hooks, run r1" in text, text
    assert "phase after run: verify," in phase_after(event="verify.started", run_id="r1")
    assert "phase after run: prune, hooks," in phase_after(event="verify.finished", run_id="r1")
    # prune names the run it removes: still r1's follow-up
    text = phase_after(event="prune.deleted", run_id="r0", action="prune", job="j")
    assert "phase after run: prune, hooks, run r1" in text, text
    # its end shows it over (before, its action kept prune shown while the hooks ran)
    text = phase_after(event="prune.finished", action="prune", deleted=1)
    assert "phase after run: hooks, run r1" in text, text
    assert "phase after run, run r1" in phase_after(event="hook.finished", hook="on_success")
    json.dumps(d._current)  # published in daemon.json as it is

    # a failed hot run, then its cold fallback: a run of its own
    d._current = {}
    phase_after(event="run.finished", run_id="h1", phase="done", record={"status": "failed"})
    text = phase_after(event="run.started", run_id="c1", mode="cold", phase="preflight")
    assert "phase preflight, run c1" in text, text


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime (apt package faketime) missing")
def test_a_real_daemon_keeps_running_jobs_after_the_clock_steps_back(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The audit's repro: a daemon under libfaketime, its clock stepped back 10 minutes after
    runs were recorded. Before: no run for the size of the step."""
    config = write_config(
        tmp_path, sandbox, jobs=[{"name": "e", "every": "4s", "mode": "hot", "keep_last": 2}]
    )
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    with daemon(tmp_path, config, **env) as d:
        d.wait_event("run.finished", timeout=40, job="e")
        offset.write_text("-10m\n")
        d.wait_event("clock.jumped", timeout=10)
        jumped = len(d.events())
        deadline = time.monotonic() + 30
        while not any(e.get("event") == "run.due" for e in d.events()[jumped:]):
            assert time.monotonic() < deadline, f"no run after the step back: {d.tail()}"
            time.sleep(0.2)
        assert any(e.get("event") == "schedule.record_in_the_future" for e in d.events())
        assert d.stop() == 0


def test_a_clock_stepped_back_moves_the_influxd_start_and_offsite_retry_waits(
    tmp_path: Path, server: Sandbox
) -> None:
    """Waits set as wall clock + delay (influxd left down: the next start attempt; the
    off-site retry) would wait the step on top of their delay."""
    config = write_config(tmp_path, server, jobs=[{"name": "e", "every": "1h", "mode": "hot"}])
    with scheduling(config) as d:
        now = time.time()
        d._next_start = now + 30 + 600  # set while the clock read 10 minutes later
        d._scheduler.add_job(
            d._fire,
            "date",
            run_date=datetime.fromtimestamp(now + 60 + 600, UTC),
            args=["[offsite]", "retry"],
            id="[offsite] retry",
        )
        d._clock_offset += 600
        d._check_clock()
        assert d._next_start <= now + 31
        assert next_run(d, "[offsite] retry") <= time.time() + 61
