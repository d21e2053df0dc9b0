"""A run that waits for the backup lock (a manual backup holds it) while a reload removes or
renames its job: dropped once the lock frees, not run on the config it was queued with (before,
it stopped influxd once more and wrote an archive under a job name no config prunes)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from structlog.testing import capture_logs

from influx_backupd.core.config import load
from influx_backupd.daemon.loop import Daemon, Due
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.state import lock_for
from tests.conftest import write_config
from tests.system.test_daemon_clock import scheduling, server

__all__ = ["server"]  # the fixture, shared


def test_a_run_waiting_for_the_lock_is_dropped_when_a_reload_removed_its_job(
    tmp_path: Path, server: Sandbox
) -> None:
    config = write_config(tmp_path, server, jobs=[{"name": "fast", "every": "1h"}])
    d = Daemon(load(config))
    lock = lock_for(d.config.state_dir, doing="backup")
    lock.__enter__()  # a manual backup holds it
    with capture_logs() as events:
        worker = threading.Thread(target=d._run, args=(Due("fast", time.time(), "schedule"),))
        worker.start()
        deadline = time.monotonic() + 30
        while not any(e["event"] == "run.waiting_for_lock" for e in events):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the reload: the job renamed
        d.config = load(write_config(tmp_path, server, jobs=[{"name": "renamed", "every": "1h"}]))
        lock.release()
        worker.join(60)
        assert not worker.is_alive()
    dropped = [e for e in events if e["event"] == "run.dropped"]
    assert dropped and "no longer configured" in dropped[0]["reason"], events
    assert not any(e["event"] in ("run.due", "run.started") for e in events), events
    assert Catalog(d.config.state_dir).list() == []


def test_a_burst_of_sighups_is_one_reload_and_a_stop_among_them_comes_first(
    tmp_path: Path, server: Sandbox
) -> None:
    """Each SIGHUP was a reload of its own (0.3 s each with [notify]: 30 of them took 10 s, and
    a SIGTERM sent meanwhile waited behind them)."""
    config = write_config(tmp_path, server, jobs=[{"name": "fast", "every": "1h"}])
    with scheduling(config) as d:
        for _ in range(30):
            d._signals.put(signal.SIGHUP)
        with capture_logs() as events:
            loop = threading.Thread(target=lambda: done.append(d._main_loop()))
            done: list[int] = []
            loop.start()
            deadline = time.monotonic() + 30
            while not any(e["event"] == "config.reloaded" for e in events):
                assert time.monotonic() < deadline, events
                time.sleep(0.05)
            d._signals.put(signal.SIGTERM)
            loop.join(30)
        assert done == [signal.SIGTERM]
        assert sum(e["event"] == "config.reloaded" for e in events) == 1, events

        # a stop queued behind SIGHUPs: no reload first
        for sig in (signal.SIGHUP, signal.SIGHUP, signal.SIGTERM, signal.SIGHUP):
            d._signals.put(sig)
        with capture_logs() as events:
            assert d._main_loop() == signal.SIGTERM
        assert not any(e["event"] == "config.reloaded" for e in events), events
