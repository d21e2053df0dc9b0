"""A 1.x hot restore builds the restored server beside the live one, which serves meanwhile.

Real influxd 1.6: the live server is the sandbox fixture; the throwaway influxd the restore
builds in runs from a scratch dir in the storage dir (".verify-restore-*").
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from influx_backupd.core.errors import RestoreRefused
from influx_backupd.influxd.sandbox import BESIDE_LIVE_GOGC, Sandbox
from influx_backupd.restore.hot import (
    BUILD_HEADROOM_MAX,
    BUILD_HEADROOM_MIN,
    _out_of_space,
    build_headroom,
    check_build_space,
)
from influx_backupd.store.chain import Link
from influx_backupd.store.scanners import Scan
from tests.conftest import (
    STAND_INS,
    Cli,
    hot_chain,
    log_events,
    throwaway_influxds,
    wait_until,
    write_config,
)

HOT = [{"name": "hotjob", "mode": "hot"}]
SLOW_RESTORE = STAND_INS / "influxd_restore_slow"


def _chain(cli: Cli, sandbox: Sandbox) -> tuple[dict[str, Any], dict[str, int]]:
    """A full and an increment (one db the full saw, one it did not); returns the increment and
    the counts it holds. Then the live server takes writes newer than the backup."""
    _, increment = hot_chain(
        cli, sandbox, [[("metrics", 5_000)], [("metrics", 1_500), ("later", 600)]]
    )
    sandbox.write_points("metrics", 300, start=200_000)  # newer than the backup
    return increment, {"metrics": 6_500, "later": 600}


def _staging(sandbox: Sandbox) -> list[Path]:
    return sorted(sandbox.root.glob(".*.restore-*"))


@contextmanager
def _pinging(sandbox: Sandbox) -> Iterator[list[tuple[float, bool]]]:
    """(time, answered) of a /ping every 20 ms to the live server, in a thread."""
    seen: list[tuple[float, bool]] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(sandbox.url + "/ping", timeout=5) as resp:
                    ok = int(resp.status) == 204
            except OSError:
                ok = False
            seen.append((time.time(), ok))
            stop.wait(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_the_chain_is_built_while_the_live_server_serves_then_swapped_in(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    increment, expected = _chain(cli, sandbox)

    with _pinging(sandbox) as pings:
        done = cli("restore", increment["id"], "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert {db: sandbox.count(db) for db in expected} == expected
    assert sorted(sandbox.databases()) == ["later", "metrics"], "temporary databases dropped"

    events = log_events(done.stderr)
    names = [e["event"] for e in events]
    building, built = names.index("restore.building"), names.index("restore.built")
    assert building < built < names.index("influxd.stopping"), names
    # only new points between the links: merged by files inside the build, no SELECT INTO
    [merge] = [e for e in events[building:built] if e["event"] == "restore.chain_merge"]
    assert merge["path"] == "files" and result["merge"] == "files", merge
    assert "restore.copied" not in names
    # and what it wrote went from the throwaway's WAL into TSM before the swap, so the live
    # server's start did not have to replay it
    [flushed] = [e for e in events[building:built] if e["event"] == "restore.wal_flushed"]
    assert flushed["flushed"] is True and flushed["wal_bytes"] <= 64 << 10, flushed
    # The live server answered every ping until the stop, the whole build included.
    begin, end = _ts(events[building]), _ts(events[names.index("influxd.stopping")])
    during = [ok for at, ok in pings if begin <= at <= end]
    assert during and all(during), pings
    assert result["build_s"] > 0 and result["restore_s"] > 0
    assert result["start_s"] is not None and result["downtime_s"] >= result["start_s"]

    # The previous data (newer than the backup) is kept in the rollback dirs.
    assert sorted(Path(p).name.split(".rollback-")[0] for p in result["rollback_dirs"]) == [
        "data",
        "meta",
        "wal",
    ]
    old_data = next(Path(p) for p in result["rollback_dirs"] if "data.rollback-" in p)
    assert (old_data / "metrics").is_dir() and (old_data / "later").is_dir()
    assert _staging(sandbox) == []
    storage = tmp_path / "archives"
    assert throwaway_influxds(storage) == []
    assert not list(storage.glob(".verify-*")), "the build's scratch dir is removed"


def test_a_failure_while_building_leaves_the_live_server_serving_untouched(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    increment, _ = _chain(cli, sandbox)
    live = {"metrics": 6_800, "later": 600}
    pid_before = sandbox.pids()
    before = sorted(p.name for p in sandbox.root.iterdir())

    # `influxd restore` fails in the tool (as when the snapshot service goes away mid-restore)
    failing = STAND_INS / "influxd_hot_restore_fails"
    cli = Cli(write_config(tmp_path, sandbox, influxd={"binary": str(failing)}, jobs=HOT))
    done = cli("restore", increment["id"], "--yes")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("influx-backupd: restore failed while building"), line
    assert "stand-in failure" in line and "live server and its data were not touched" in line
    assert sandbox.pids() == pid_before, "the live influxd was never stopped"
    assert {db: sandbox.count(db) for db in live} == live
    assert sorted(p.name for p in sandbox.root.iterdir()) == before, "no staging or rollback dir"
    storage = tmp_path / "archives"
    assert throwaway_influxds(storage) == []
    assert not list(storage.glob(".verify-*"))
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()


def test_a_restore_killed_while_building_never_stopped_the_live_server_and_is_cleaned_up(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    increment, _ = _chain(cli, sandbox)
    live = {"metrics": 6_800, "later": 600}
    pid_before = sandbox.pids()
    storage = tmp_path / "archives"

    # SIGKILL: the throwaway influxd keeps running and the staging dirs stay, until the next
    # lock-taking command, or `recover` (which said "nothing to recover" before)
    restore = cli.popen("restore", increment["id"], "--yes")
    wait_until(lambda: throwaway_influxds(storage), 60, "the restore's throwaway influxd")
    restore.kill()
    restore.communicate()
    assert throwaway_influxds(storage), "SIGKILL leaves the throwaway influxd running"
    staged = _staging(sandbox)
    assert staged, "…and the staging dirs"
    assert sandbox.pids() == pid_before, "the live influxd was never stopped"
    done = cli("recover")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "recovery.restore_staging_removed" in done.stderr
    said = done.stdout.splitlines()
    assert any(line.startswith("cleared: a throwaway influxd (pid ") for line in said), said
    for path in staged:
        assert f"cleared: restore staging dir {path} " in done.stdout, said
    assert "nothing to recover" not in done.stdout
    assert throwaway_influxds(storage) == []
    assert _staging(sandbox) == []
    again = cli("recover")
    assert again.returncode == 0 and again.stdout.startswith("nothing to recover"), again.stdout
    done = cli("backup")
    assert done.returncode == 0, done.stderr[-2000:]
    assert cli("prune").returncode == 0  # reports and removes the dead run's scratch dir
    assert not list(storage.glob(".verify-*"))
    assert sandbox.pids() == pid_before
    assert {db: sandbox.count(db) for db in live} == live

    # SIGTERM: the command stops its own throwaway and removes the staging dirs itself.
    restore = cli.popen("restore", increment["id"], "--yes")
    wait_until(lambda: throwaway_influxds(storage), 60, "the restore's throwaway influxd")
    restore.send_signal(signal.SIGTERM)
    _, err = restore.communicate(timeout=60)
    assert restore.returncode == 1
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "restore failed while building" in line and "SIGTERM" in line, line
    assert throwaway_influxds(storage) == []
    assert _staging(sandbox) == []
    assert not list(storage.glob(".verify-*"))
    assert sandbox.pids() == pid_before
    assert {db: sandbox.count(db) for db in live} == live


def test_a_build_that_cannot_fit_beside_the_live_dirs_is_refused_with_both_numbers(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    huge = 1 << 60  # more than any test machine has free
    full = Scan(1, 2, "x", {"meta": {"size": 10}, "files": [{"size": huge}]})
    increment = Scan(1, 2, "y", {"meta": {"size": 10}, "files": [{"size": 100}]})
    links = [Link(tmp_path / "full", None, False), Link(tmp_path / "inc", None, True)]
    with pytest.raises(RestoreRefused) as refused:
        check_build_space(
            {"meta": tmp_path / ".meta.r", "data": tmp_path / ".data.r"}, links, [full, increment]
        )
    message = str(refused.value)
    # the increment counts twice: restored under a temporary name, then copied in; the meta
    # and the build's headroom on the same filesystem count there too
    needed = huge + 200 + BUILD_HEADROOM_MAX + 20
    assert f"needs about {needed} bytes there" in message, message
    assert "free; influxd not stopped" in message and str(tmp_path) in message

    small = Scan(1, 2, "x", {"meta": {"size": 10}, "files": [{"size": 1000}]})
    check_build_space({"data": data}, links[:1], [small])  # fits: no refusal
    # the room grows with the build, within its bounds (a small backup on a small volume fits)
    assert build_headroom(1000) == BUILD_HEADROOM_MIN
    assert build_headroom(40 << 20) == 20 << 20
    assert build_headroom(1 << 40) == BUILD_HEADROOM_MAX


def _oom_score_adj(pid: int) -> str:
    return Path(f"/proc/{pid}/oom_score_adj").read_text().strip()


def _restore_tool_running(cli_pid: int) -> bool:
    try:
        children = psutil.Process(cli_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        with contextlib.suppress(psutil.Error):
            if "restore" in child.cmdline()[1:3]:  # influxd restore, or the slow stand-in
                return True
    return False


@pytest.mark.parametrize("moment", ["starting", "restoring"])
def test_the_throwaway_is_the_oom_killers_first_choice_and_its_death_fails_the_build_alone(
    tmp_path: Path, sandbox: Sandbox, moment: str
) -> None:
    """Two influxd run during the build; when memory runs out, the kernel must kill the
    throwaway (oom_score_adj 1000), not the live server, and the restore must say why it failed.
    The test plays the OOM killer: SIGKILL to the process it would pick."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    increment, _ = _chain(cli, sandbox)
    live = {"metrics": 6_800, "later": 600}
    pid_before = sandbox.pids()
    live_adj = _oom_score_adj(pid_before[0])
    storage = tmp_path / "archives"

    if moment == "restoring":  # a chain merged by files takes one short `influxd restore`
        write_config(tmp_path, sandbox, jobs=HOT, influxd={"binary": str(SLOW_RESTORE)})
    restore = cli.popen("restore", increment["id"], "--yes")
    try:
        wait_until(lambda: throwaway_influxds(storage), 60, "the restore's throwaway influxd")
        throwaway = throwaway_influxds(storage)[0]
        wait_until(
            lambda: _oom_score_adj(throwaway.pid) == "1000",
            5,
            "the throwaway marked for the OOM killer",
        )
        assert _oom_score_adj(pid_before[0]) == live_adj, "the live server's score is left alone"
        environ = throwaway.environ()
        assert environ.get("GOGC") == str(BESIDE_LIVE_GOGC), "…and it holds less heap"
        assert "GOGC" not in psutil.Process(pid_before[0]).environ()
        if moment == "restoring":  # where memory peaks: `influxd restore`
            wait_until(lambda: _restore_tool_running(restore.pid), 60, "`influxd restore` running")
        throwaway.kill()
        _, err = restore.communicate(timeout=120)
    finally:
        if restore.poll() is None:  # the test failed first: the restore must not outlive it
            restore.terminate()
            restore.communicate(timeout=120)

    assert restore.returncode == 1
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("influx-backupd: restore failed while building"), line
    assert "its influxd was killed by SIGKILL" in line and "OOM killer" in line, line
    assert "live server and its data were not touched" in line, line
    assert sandbox.pids() == pid_before, "the live influxd was never stopped"
    assert {db: sandbox.count(db) for db in live} == live
    assert _staging(sandbox) == []
    assert throwaway_influxds(storage) == []
    assert not list(storage.glob(".verify-*"))


def test_a_build_that_ran_out_of_disk_says_so() -> None:
    """The tool often reports only a timeout or a broken connection: the server's log (lines
    joined by " | ", as log_tail gives them) or the tool's output names the full disk."""
    log_tail = 'lvl=info msg="x" | lvl=error msg="write failed" error="write /d/1: no space left on device" | lvl=info msg="y"'
    found = _out_of_space("the build", ["influxd restore timed out: no output", log_tail])
    assert found is not None and "ran out of disk space" in str(found)
    assert "no space left on device" in str(found)
    assert _out_of_space("the build", ["exited 1: shard is disabled"]) is None
