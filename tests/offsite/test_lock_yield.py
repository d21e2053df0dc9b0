"""An off-site send holds the backup lock only as a send: a command that needs the lock (cron's
next `backup`) asks it to yield and waits, instead of exiting busy (75) and taking no backup.

Before: `backup`'s own off-site step (cron users have no daemon) held the lock for the whole
upload; the next hourly `backup` exited 75 "another backup is running" while it lasted (hours
for a first upload at max_rate, for ever on a hanging endpoint): invariant 8 broken."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.run.guard import exclusive
from influx_backupd.store.state import Busy, lock_held, lock_wanted
from tests.conftest import Cli, log_events, wait_until, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import offsite_section
from tests.system.test_daemon import daemon, runs

MiB = 1024 * 1024


def slow_and_fast(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, filler_mib: int, **slow: object
) -> tuple[Path, Path]:
    """Two configs of one state_dir: `slow` sends at max_rate part by part (5 MiB parts, one at
    a time); `fast` is the same without max_rate, for the commands that come after it. The
    cold archive holds filler_mib MiB of filler (one object, sent as 5 MiB parts)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    (sandbox.data / "filler.bin").write_bytes(bytes(range(256)) * (filler_mib * MiB // 256))
    common = {"part_size": "5MiB", "concurrency": 1}
    fast = write_config(tmp_path, sandbox, extra=offsite_section(moto, **common))
    slow_config = tmp_path / "slow.toml"
    section = offsite_section(moto, **common, **{"max_rate": "512KiB", **slow})
    slow_config.write_text(plain_config(fast).read_text() + section)
    return slow_config, fast


def plain_config(config: Path) -> Path:
    """config without its [offsite] section: a backup it makes is not sent (plain.toml)."""
    plain = config.parent / "plain.toml"
    plain.write_text(config.read_text().split("\n[offsite]\n")[0])
    return plain


def _uploading(moto: Endpoint) -> bool:
    """A multipart upload is under way in the bucket: the filler is being sent."""
    return bool(moto.client().list_multipart_uploads(Bucket=moto.bucket).get("Uploads"))


def _backup_while(
    sender: subprocess.Popen[str], moto: Endpoint, config: Path
) -> tuple[subprocess.Popen[str], str, str, subprocess.CompletedProcess[str]]:
    """`backup --json` of config once sender uploads; then sender's end: (sender, its stdout,
    its stderr, that backup)."""
    try:
        wait_until(lambda: _uploading(moto), 120, "the upload under way")
        second = Cli(config)("backup", "--json", timeout=300)
        out, err = sender.communicate(timeout=300)
    finally:
        if sender.poll() is None:
            sender.kill()
    return sender, out, err, second


def _bucket_whole(fast: Cli, ids: list[str]) -> None:
    """The next sync completes what was left, and every backup in the bucket verifies."""
    synced = fast("offsite", "sync", "--json", timeout=300)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert json.loads(synced.stdout)["pending"] == []
    assert sorted(r["id"] for r in fast.json("list", "--offsite")) == sorted(ids)
    checked = fast("verify", "--offsite", "--all", "--read-data", "100", timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]


def test_the_next_cron_backup_waits_for_the_send_which_yields_between_parts(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    slow, fast = slow_and_fast(tmp_path, sandbox, moto, filler_mib=40)
    # the first backup is done and its send holds the lock (40 MiB at 512 KiB/s)
    first, out, err, second = _backup_while(Cli(slow).popen("backup", "--json"), moto, fast)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["status"] == "ok"
    assert log_events(second.stderr, "lock.waiting_for_offsite")
    assert log_events(second.stderr, "lock.offsite_yielded")
    assert first.returncode == 0, err[-3000:]
    assert "offsite: stopped for a command waiting for the backup lock" in err, err[-3000:]
    assert "Traceback" not in err + second.stderr
    _bucket_whole(Cli(fast), [json.loads(out)["id"], json.loads(second.stdout)["id"]])
    assert sandbox.ping()


def test_a_send_that_cannot_stop_within_yield_within_gives_its_upload_up(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """One 5 MiB part takes 40 s at 128 KiB/s: the send cannot reach a part's end within
    yield_within (1 s); it gives the upload up (the next sync resumes it) and the lock goes."""
    slow, fast = slow_and_fast(tmp_path, sandbox, moto, filler_mib=12, max_rate="128KiB")
    slow.write_text(slow.read_text() + 'yield_within = "1s"\n')
    # a backup made with no [offsite] step of its own, for the sync to send
    plain = plain_config(fast)
    made = Cli(plain).json("backup")
    assert made["status"] == "ok"
    sync, _, err, second = _backup_while(Cli(slow).popen("offsite", "sync"), moto, fast)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["status"] == "ok"
    # the sync gave way: "try again later", one line saying why
    assert sync.returncode == 75, err[-3000:]
    line = [x for x in err.splitlines() if x.startswith("influx-backupd:")][-1]
    assert "waits for the backup lock" in line and "yield_within (1s)" in line, line
    assert "Traceback" not in err
    _bucket_whole(Cli(fast), [made["id"], json.loads(second.stdout)["id"]])
    assert sandbox.ping()


_HOLD = """
import sys, time
from pathlib import Path

import psutil
from influx_backupd.store.state import BackupLock
BackupLock(Path(sys.argv[1]), doing=sys.argv[2] if sys.argv[2] != "-" else None).acquire()
print("held", flush=True)
time.sleep(600)
"""


def holding_lock(tmp_path: Path, doing: str) -> subprocess.Popen[str]:
    """A process that holds the backup lock saying it does `doing` ("-": says nothing, as an
    older version's lock file), and never lets it go."""
    (tmp_path / "state").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "state" / "backup.lock"), doing],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@contextmanager
def stand_in_waiting(tmp_path: Path, doing: str) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A live process standing in for a command that waits for the backup lock to do `doing`
    (its request file in lock-wanted/, as LockWanted writes it) and never takes it: a command
    suspended with Ctrl-Z. Yields the process and its request file; killed on the way out."""
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], text=True)
    try:
        wanted = tmp_path / "state" / "lock-wanted" / f"{stand_in.pid}.json"
        wanted.parent.mkdir(parents=True, exist_ok=True)
        created = psutil.Process(stand_in.pid).create_time()
        body = {"pid": stand_in.pid, "create_time": created, "doing": doing}
        wanted.write_text(json.dumps(body))
        yield stand_in, wanted
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_lock_held_for_anything_but_a_send_is_busy_at_once_saying_what_holds_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    for doing, says in [
        ("backup", "another backup is running"),
        ("restore", "a restore is running"),
        ("-", "another backup is running"),
    ]:
        holder = holding_lock(tmp_path, doing)
        try:
            busy = cli("backup")
        finally:
            holder.kill()
            holder.wait()
        assert busy.returncode == 75, busy.stderr[-2000:]
        assert f"busy: {says} (lock " in busy.stderr and f"pid {holder.pid})" in busy.stderr
        assert not log_events(busy.stderr, "lock.waiting_for_offsite"), doing
    assert not (tmp_path / "state" / "lock-wanted").exists() or not list(
        (tmp_path / "state" / "lock-wanted").iterdir()
    )


def test_a_send_that_never_yields_is_waited_for_only_yield_within_and_a_margin(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """A holder that says it sends but never lets go (hung in a way nothing can end): the
    waiting backup gives up after [offsite] yield_within and 30 s, busy, saying so; its
    request is gone with it."""
    extra = offsite_section(moto, yield_within="1s")
    cli = Cli(write_config(tmp_path, sandbox, extra=extra))
    holder = holding_lock(tmp_path, "offsite")
    try:
        busy = cli("backup", timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert busy.returncode == 75, busy.stderr[-2000:]
    line = [x for x in busy.stderr.splitlines() if x.startswith("influx-backupd:")][-1]
    assert "an off-site send is running" in line and "asked to yield" in line, line
    assert f"pid {holder.pid}" in line, line
    assert list((tmp_path / "state" / "lock-wanted").iterdir()) == []


def test_the_daemons_send_yields_to_a_cron_backup(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    slow, fast = slow_and_fast(tmp_path, sandbox, moto, filler_mib=40)
    for config in (slow, fast):  # no job of the daemon's falls due during the test
        config.write_text(config.read_text().replace("0 3 * * *", "0 3 1 1 *"))
    plain = plain_config(fast)
    made = Cli(plain).json("backup")  # for the daemon to send at start-up
    assert made["status"] == "ok"
    with daemon(tmp_path, slow) as d:
        wait_until(lambda: _uploading(moto), 120, "the daemon sending")
        second = Cli(fast)("backup", "--json", timeout=300)
        yielded = d.wait_event("offsite.yielded", timeout=60)
        assert d.stop() == 0
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["status"] == "ok"
    assert "a backup (pid " in yielded["reason"] and "waits for the lock" in yielded["reason"]
    _bucket_whole(Cli(fast), [made["id"], json.loads(second.stdout)["id"]])
    assert sandbox.ping()


def test_no_send_takes_the_lock_while_a_command_waits_for_it_and_the_backup_stays_ok(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """A live request (a command waiting for the lock, here a process standing in for one):
    `backup` runs, its send leaves the lock to that command with one line, exit 0 (before: a
    send that met a lock it could not take raised busy out of `backup`, exit 75 after an ok
    backup), and `offsite sync` exits 75; once the request is gone, the sync sends."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    with stand_in_waiting(tmp_path, "restore") as (stand_in, wanted):
        backup = cli("backup", "--json")
        sync = cli("offsite", "sync")
    assert backup.returncode == 0, backup.stderr[-3000:]
    assert json.loads(backup.stdout)["status"] == "ok"
    said = f"offsite: not sent now: a restore (pid {stand_in.pid}) waits for the backup lock"
    assert said in backup.stderr, backup.stderr[-3000:]
    assert sync.returncode == 75, sync.stderr[-3000:]
    assert f"busy: a restore (pid {stand_in.pid}) waits for the backup lock" in sync.stderr
    synced = cli("offsite", "sync", "--json")  # the stand-in is dead: its request is ignored
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert json.loads(synced.stdout)["pending"] == []
    assert not wanted.exists()


def test_the_daemons_send_waiting_for_the_lock_does_not_hold_up_its_backups(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """The audit's repro: a command waits for the lock (suspended with Ctrl-Z, here a process
    standing in for one), so the daemon's send after a backup cannot take it. Before: that send
    waited at the head of the queue, and every backup due behind it waited too, for as long as
    the command did (the lock itself free all along)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    jobs = [{"name": "often", "every": "5s", "mode": "cold", "copy": "direct"}]
    config = write_config(tmp_path, sandbox, jobs=jobs, extra=offsite_section(moto))
    with stand_in_waiting(tmp_path, "restore") as (stand_in, _), daemon(tmp_path, config) as d:
        d.wait_event("run.deferred", timeout=60, job="[offsite]")
        wait_until(lambda: len([r for r in runs(tmp_path) if r.ok]) >= 3, 90, "3 backups")
        assert Cli(config).json("list", "--offsite") == []  # the command still waits
        stand_in.kill()
        stand_in.wait()
        d.wait_event("offsite.sent", timeout=60)
        assert d.stop() == 0
    assert sandbox.ping()


def test_a_command_waiting_for_the_lock_takes_it_before_a_taker_that_came_later(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Audit L: a cron `backup` asked the daemon's send to yield; the send let go, and the
    daemon's own backup, fallen due meanwhile, took the free lock first (it asks at once, the
    waiter polls): the cron backup exited 75 after its wait. Now whoever comes later leaves a
    free lock to the command that waited first; here the later taker is this test, taking it
    in process the moment the send's stand-in lets go."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    path = write_config(tmp_path, sandbox)
    holder = holding_lock(tmp_path, "offsite")
    waiter = Cli(path).popen("backup", "--json")
    try:
        wait_until(lambda: lock_wanted(tmp_path / "state") is not None, 60, "the backup waiting")
        holder.kill()
        holder.wait()
        with (
            pytest.raises(Busy, match="another backup is running"),
            exclusive(load(path), doing="backup"),
        ):
            pass
        out, err = waiter.communicate(timeout=300)
    finally:
        holder.kill()
        waiter.kill()
    assert waiter.returncode == 0, err[-3000:]
    assert json.loads(out)["status"] == "ok"
    assert sandbox.ping()


def test_a_waiter_that_does_not_take_the_free_lock_holds_a_later_taker_up_only_briefly(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A waiting command suspended with Ctrl-Z never takes the lock: a backup that comes later
    leaves it a few seconds (FIRST_WAITER_GRACE_S), then runs."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    cli = Cli(write_config(tmp_path, sandbox))
    with stand_in_waiting(tmp_path, "backup") as (stand_in, _):
        done = cli("backup", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "ok"
    (left,) = log_events(done.stderr, "lock.after_first_waiter")
    assert f"a backup (pid {stand_in.pid})" in left["waiting"]


def test_a_scheduled_backup_that_waited_for_a_send_to_yield_says_how_late_it_started(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """run.due's late_s counts the wait for an off-site send (here another process's, standing
    in) to let the lock go; it was measured before that wait, and said ~0 for a run that
    started seconds after it was due."""
    jobs = [{"name": "often", "every": "10s", "mode": "cold", "copy": "direct"}]
    config = write_config(tmp_path, sandbox, jobs=jobs)
    state = tmp_path / "state"
    holder: subprocess.Popen[str] | None = None
    try:
        with daemon(tmp_path, config) as d:
            wait_until(lambda: runs(tmp_path) and not lock_held(state), 90, "a first run over")
            holder = holding_lock(tmp_path, "offsite")
            wait_until(lambda: lock_wanted(state) is not None, 60, "the next run waiting")
            time.sleep(3)
            holder.kill()
            holder.wait()
            wait_until(lambda: len(_events(d, "run.due")) >= 2, 60, "the waiting run started")
            assert d.stop() == 0
    finally:
        if holder is not None:
            holder.kill()
    assert _events(d, "run.due")[1]["late_s"] >= 3
    assert sandbox.ping()


def _events(d: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("event") == name]
