"""Kills around an off-site send that yields the backup lock (tests/offsite/test_lock_yield.py):
a waiting command killed leaves a request naming a dead process, which no send yields to; a
send killed while a backup waits lets the lock go at once (flock), and the next sync completes
the upload it left."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, log_events, wait_until
from tests.faults.conftest import Ledger
from tests.offsite import conftest as offsite_fixtures
from tests.offsite.conftest import Endpoint
from tests.offsite.test_lock_yield import holding_lock, plain_config, slow_and_fast

# moto's server and a bucket of it, as tests/offsite has them
moto_url = offsite_fixtures.moto_url
moto = offsite_fixtures.moto


def _wanted(tmp_path: Path) -> list[Path]:
    found = tmp_path / "state" / "lock-wanted"
    return sorted(found.glob("*.json")) if found.is_dir() else []


@pytest.fixture
def configs(tmp_path: Path, sandbox: Sandbox, moto: Endpoint) -> tuple[Path, Path]:
    """(slow, fast): one state_dir; slow sends 20 MiB of filler at 512 KiB/s in 5 MiB parts."""
    return slow_and_fast(tmp_path, sandbox, moto, filler_mib=20)


@pytest.mark.fault("kill", "a backup killed while it waits for an off-site send's lock")
def test_a_killed_waiters_request_is_not_yielded_to(
    tmp_path: Path, sandbox: Sandbox, configs: tuple[Path, Path], ledger: Ledger
) -> None:
    slow, fast = configs
    made = Cli(fast).json("backup")
    assert made["status"] == "ok"
    ledger.take()
    # a send that will not let go holds the lock; a backup waits for it, and is killed
    holder = holding_lock(tmp_path, "offsite")
    try:
        waiter = Cli(fast).popen("backup")
        wait_until(lambda: _wanted(tmp_path), 60, "the backup's request to yield")
        waiter.send_signal(signal.SIGKILL)
        waiter.wait()
    finally:
        holder.kill()
        holder.wait()
    assert _wanted(tmp_path), "the killed backup's request is left"
    # the next send yields to no one: its waiter is dead (the request is removed)
    sandbox.write_points("metrics", 50, start=10_000)
    again = Cli(fast).json("backup")
    synced = Cli(slow)("offsite", "sync", "--json", timeout=300)
    ledger.settle()
    assert again["status"] == "ok"
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert json.loads(synced.stdout)["yielded"] is False
    assert json.loads(synced.stdout)["pending"] == []
    assert _wanted(tmp_path) == []
    assert sandbox.ping()


@pytest.mark.fault("kill", "an off-site send killed while a backup waits for it to yield")
def test_a_send_killed_while_a_backup_waits_lets_it_run_and_the_next_sync_completes(
    tmp_path: Path,
    sandbox: Sandbox,
    moto: Endpoint,
    configs: tuple[Path, Path],
    ledger: Ledger,
) -> None:
    slow, fast = configs
    plain = plain_config(fast)
    made = Cli(plain).json("backup")  # not sent yet
    assert made["status"] == "ok"
    ledger.take()
    sync = Cli(slow).popen("offsite", "sync")
    try:
        client = moto.client()
        wait_until(
            lambda: client.list_multipart_uploads(Bucket=moto.bucket).get("Uploads"),
            120,
            "the sync sending",
        )
        waiter = Cli(plain).popen("backup", "--json")
        wait_until(lambda: _wanted(tmp_path), 60, "the backup's request to yield")
        sync.send_signal(signal.SIGKILL)
        sync.wait()
        out, err = waiter.communicate(timeout=300)
    finally:
        if sync.poll() is None:
            sync.kill()
    assert waiter.returncode == 0, err[-3000:]
    assert json.loads(out)["status"] == "ok"
    assert log_events(err, "lock.offsite_yielded")
    synced = Cli(fast)("offsite", "sync", "--json", timeout=300)
    ledger.settle()
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert json.loads(synced.stdout)["pending"] == []
    checked = Cli(fast)("verify", "--offsite", "--all", "--read-data", "100", timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]
    assert _wanted(tmp_path) == []
    assert sandbox.ping()
