"""SIGTERM to the daemon while its cold run has not asked influxd to stop yet.

Before: the run did not look at the daemon's cancel; once the slow step before the stop ended
(a notification whose target never answers, here) it stopped influxd anyway. Under systemd
that stop was queued behind the daemon's own stop job (the unit is ordered after
influxdb.service): both waited stop_timeout, the daemon exited 0, then the queued stop took
influxd down for good. Now the run is abandoned: influxd is never stopped, the record says why.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from influx_backupd.core.cancel import CancelToken
from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.jobs.cold import run_cold
from influx_backupd.jobs.staging import Stager, SyncStopped
from influx_backupd.store.catalog import Catalog
from tests.conftest import silent, wait_until, write_config
from tests.system.test_daemon import daemon, runs


def _identity(sandbox: Sandbox) -> list[tuple[int, float]]:
    return sorted((p, psutil.Process(p).create_time()) for p in sandbox.pids())


@pytest.mark.parametrize("copy", ["direct", "staged"])
def test_sigterm_while_the_start_notification_hangs_abandons_the_run_influxd_untouched(
    tmp_path: Path, sandbox: Sandbox, copy: str
) -> None:
    before = _identity(sandbox)
    with silent() as hook:
        config = write_config(
            tmp_path,
            sandbox,
            jobs=[{"name": "nightly", "every": "2s", "mode": "cold", "copy": copy}],
            # far longer than the test waits: only the cancel ends the notification's wait
            extra=f'\n[notify]\nstart = ["json://127.0.0.1:{hook.port}/"]\ntimeout = "1h"\n',
        )
        with daemon(tmp_path, config) as d:
            d.wait_event("policy.decided", 60, mode="cold")
            wait_until(lambda: hook.accepted, 60, "the start notification's connection")
            d.proc.send_signal(15)
            status = d.proc.wait(120)  # stop_timeout is 40 s; the notification would wait 1 h
            events = d.events()
    assert status == 0, d.tail()
    assert _identity(sandbox) == before, "influxd was stopped (or restarted)"
    assert sandbox.ping()
    names = [e["event"] for e in events]
    assert "influxd.stopping" not in names, d.tail()
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    (record,) = runs(tmp_path)
    assert record.status == "interrupted", record
    assert record.error is not None
    assert "daemon's shutdown" in record.error and "influxd was not stopped" in record.error
    assert record.archive is None and record.stop_s is None
    assert not list((tmp_path / "archives").glob("*.tar"))
    [failed] = [e for e in events if e["event"] == "notify.failed"]
    assert "stopping" in failed["error"], failed
    assert "Traceback" not in d.tail()


def test_a_cancelled_prestage_stops_between_files_and_the_next_pass_copies_only_the_rest(
    tmp_path: Path,
) -> None:
    source = tmp_path / "data"
    source.mkdir()
    for i in range(6):
        (source / f"f{i}").write_bytes(bytes([i]) * 4096)
        # older than the racy window: a copy of it is trusted by the next pass
        os.utime(source / f"f{i}", (time.time() - 3600,) * 2)
    stager = Stager(tmp_path / "staging", [("data", source)])
    looked = 0

    def stop() -> bool:
        nonlocal looked
        looked += 1
        return looked > 2  # two files copied, then the daemon is stopping

    with pytest.raises(SyncStopped):
        stager.sync(tolerant=True, stop=stop)
    staged = sorted(p.name for p in (tmp_path / "staging" / "data").iterdir())
    assert staged == ["f0", "f1"]
    manifest = json.loads((tmp_path / "staging" / ".manifest.json").read_text())
    assert sorted(manifest["entries"]) == ["data/f0", "data/f1"]
    again = Stager(tmp_path / "staging", [("data", source)]).sync(tolerant=False)
    assert again.copied == 4 and again.files == 6


def test_a_cold_run_cancelled_before_it_began_records_why_and_stops_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The job as the daemon's worker calls it, with the daemon's token already cancelled (a
    SIGTERM during the policy probe): the first look abandons it."""
    path = write_config(tmp_path, sandbox)
    config = load(path)
    before = _identity(sandbox)
    cancel = CancelToken()
    cancel.cancel()
    catalog = Catalog(config.state_dir)
    record = run_cold(config, config.settings.job[0], catalog, cancel)
    assert record.status == "interrupted" and record.error is not None
    assert "before the run began" in record.error, record.error
    assert _identity(sandbox) == before and sandbox.ping()
    assert [r.status for r in catalog.list()] == ["interrupted"]
