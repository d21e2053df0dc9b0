"""A whole-server restore is ok only once the restarted server serves what was restored: its
per-database point counts against those the backup recorded (db_counts). Real influxd 1.6 on a
small real tmpfs (mounting needs root) that fills up as the restored server starts, so its
shards fail to open: it answers /ping and serves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, log_events, started, write_config
from tests.faults.conftest import FaultResult, one_line, points
from tests.integration.test_restore_live_dirs import _mounted

JOBS = {
    "cold": {"name": "c", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"},
    "hot": {"name": "h", "mode": "hot"},
}
# where the count the restored server is held to comes from
COUNTED = {"cold": "counted at backup time", "hot": "in the build before the swap"}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (CI runs as root)")
    with _mounted(tmp_path / "fs", "-t", "tmpfs", "-o", "size=80m", "tmpfs") as mount:
        yield mount


def _filling_wrapper(tmp_path: Path, mount: Path, binary: str) -> tuple[Path, Path]:
    """An [influxd] command that fills the filesystem just before influxd starts when the
    trigger file exists (once), and frees it at the next start (the rollback's): the restored
    server starts on a full disk, the previous one on a disk with room again."""
    trigger, filler = tmp_path / "fill-next-start", mount / "filler"
    wrapper = tmp_path / "influxd-filling"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ -e '{trigger}' ]; then rm -f '{trigger}'\n"
        f"  dd if=/dev/zero of='{filler}' bs=1M 2>/dev/null\n"
        f"else rm -f '{filler}'; fi\n"
        f'exec {binary} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, trigger


@pytest.mark.fault("disk-full", "the live filesystem fills up as the restored server starts")
@pytest.mark.parametrize("mode", list(JOBS))
def test_a_restore_whose_server_serves_nothing_is_rolled_back(
    tmp_path: Path, influxd_path: str, small_fs: Path, fault_result: FaultResult, mode: str
) -> None:
    """It said "restored …; influxd is running" (exit 0) while count(value) answered 0: the
    shards had failed to open, and ping was all that was checked. Held to the backup's
    db_counts (cold) or to what the build beside the live server held (hot)."""
    server = Sandbox(small_fs / "server", binary=influxd_path)
    wrapper, trigger = _filling_wrapper(tmp_path, small_fs, influxd_path)
    with started(server):
        server.create_db("db1")
        server.write_points("db1", 20_000)
        config = write_config(
            tmp_path,
            server,
            jobs=[JOBS[mode]],
            influxd={"command": [str(wrapper), *server.command()[1:]]},
        )
        cli = Cli(config)
        rec = cli.json("backup")
        assert rec["status"] == "ok", rec["error"]
        assert rec["db_counts"] == ({"db1": 20_000} if mode == "cold" else None)
        server.write_points("db1", 300, start=1_000_000)
        before = points(server)
        trigger.touch()

        done = cli("restore", rec["id"], "--yes", timeout=300)

        after = points(server)
        fault_result.lost(points=sum(max(0, n - after.get(db, 0)) for db, n in before.items()))
        assert done.returncode == 1, (after, done.stdout, done.stderr[-3000:])
        line = one_line(done.stderr)
        assert f"database db1: the restored server serves 0 points, 20000 {COUNTED[mode]}" in line
        assert "the previous data was put back" in line, line
        assert after == {"db1": 20_300}, "influxd serves the previous data again"
        kept = sorted(p.name for p in server.root.glob("*.failed-restore-*"))
        assert kept and all(name in line for name in kept), (kept, line)
        assert not trigger.exists()
        assert log_events(done.stderr, "restore.rolled_back")


# Loaded into a backup (sitecustomize): right after the cold job's point counts, a client's
# DROP MEASUREMENT is acknowledged, before the stop; the archive holds the state at the stop.
DROP_AFTER_COUNT = """
import os, urllib.parse, urllib.request
from influx_backupd.influxd import counts
_counted = counts.before_stop
def _then_dropped(*a, **k):
    _counted(*a, **k)
    q = urllib.parse.urlencode({"q": "DROP MEASUREMENT gone", "db": "db1"})
    urllib.request.urlopen(os.environ["DROP_URL"] + "/query", q.encode(), timeout=30).read()
counts.before_stop = _then_dropped
"""

# the two restores held to a cold backup's counts, and how the restored data is read back
INTO_LIVE = {
    "whole server": (["--yes"], "db1"),
    "--database --as": (["--database", "db1", "--as", "db2"], "db2"),
}


@pytest.mark.fault("check", "a delete acknowledged between the point count and the cold stop")
@pytest.mark.parametrize("form", list(INTO_LIVE))
def test_a_delete_between_the_count_and_the_stop_is_restored_with_accept_fewer_points(
    tmp_path: Path, influxd_path: str, fault_result: FaultResult, form: str
) -> None:
    """The archive is right (the state at the stop) and its count is the state before: the
    restore refused it and rolled back, and the operator's only way in a disaster was to move
    dirs by hand. The refusal now names --accept-fewer-points, which keeps the restore and
    says what it kept."""
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    with started(server):
        server.create_db("db1")
        server.write_points("db1", 3000)
        server.write_points("db1", 1000, measurement="gone")
        config = write_config(tmp_path, server, jobs=[JOBS["cold"]])
        hook = tmp_path / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(DROP_AFTER_COUNT)
        done = subprocess.run(
            [sys.executable, "-m", "influx_backupd", "--config", str(config), "backup", "--json"],
            env={
                **os.environ,
                "DROP_URL": server.url,
                "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
        rec = json.loads(done.stdout)
        assert rec["status"] == "ok", rec["error"]
        assert rec["db_counts"] == {"db1": 4000}, "counted before the drop"
        assert rec["extra"]["served_less"] == {"db1": {"before": 4000, "after": 3000}}
        server.write_points("db1", 200, start=1_000_000)
        args, restored_as = INTO_LIVE[form]
        cli = Cli(config)
        if form == "whole server":  # the restore test fails it, and says the likelier cause
            tested = cli("verify", rec["id"], "--restore-test", timeout=300)
            assert tested.returncode == 1, tested.stderr[-3000:]
            said = (
                "3000 points restored, 4000 counted at backup time; the live server served "
                "1000 fewer after the backup's restart too"
            )
            assert said in tested.stdout + tested.stderr, tested.stdout + tested.stderr[-2000:]

        refused = cli("restore", rec["id"], *args, timeout=300)

        assert refused.returncode == 1, (refused.stdout, refused.stderr[-3000:])
        line = one_line(refused.stderr)
        assert "serves 3000 points, 4000 " in line and "--accept-fewer-points" in line, line
        assert points(server) == {"db1": 3200}, "the live server as it was"

        kept = cli("restore", rec["id"], *args, "--accept-fewer-points", timeout=300)

        served = points(server)
        fault_result.lost(points=max(0, 3000 - served.get(restored_as, 0)))
        assert kept.returncode == 0, (kept.stdout, kept.stderr[-3000:])
        assert served[restored_as] == 3000, served
        warning = f"warning: database {restored_as} serves 3000 points, 4000 counted before"
        assert warning in kept.stderr, kept.stderr[-3000:]
        assert "fewer than counted, accepted" in kept.stdout, kept.stdout
        assert log_events(kept.stderr, "restore.served_fewer_accepted")
