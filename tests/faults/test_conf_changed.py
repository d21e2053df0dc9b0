"""influxdb.conf moved, broken or edited between a command's own check and the stop.

A cold backup and a whole-server restore check influxdb.conf when they load their config, then
prepare (measure space, stage a copy, extract an archive, build a hot chain: minutes, or hours
for a large one) and only then stop influxd. Before, the check right before the stop looked at
the start command alone: with influxdb.conf moved away meanwhile, the stop went ahead and every
start after it failed (`parse config: open …influxdb.conf: no such file`), influxd down until
someone put the file back. Edited to name other dirs, the start would bring up a server on dirs
other than those copied or restored. Now each is refused before the stop, in one line, influxd
never stopped: the backup fails (exit 1, its record says why), the restore exits 78 as for any
configuration it refuses.

The pause between the two checks is a sitecustomize hook in the command's process (as in
tests/faults/test_restore_refusals.py): it waits once the preparation is done, the test changes
the file, then lets it go on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import wait_until, write_config
from tests.faults.conftest import Ledger, Watched, one_line, run_cli
from tests.faults.test_restore_refusals import HOOK as RESTORE_PAUSE

# the restore refusals' pause (after the extraction or the build), and the cold job's after its
# space is measured
HOOK = (
    RESTORE_PAUSE
    + "import influx_backupd.jobs.cold as cold_job\n"
    + "cold_job.space_needed = _then_wait(cold_job.space_needed)\n"
)


def _moved(conf: Path) -> str:
    conf.rename(conf.with_name("influxdb.conf.moved"))
    return "not found"


def _broken(conf: Path) -> str:
    with conf.open("a") as f:
        f.write("\n[half-edited\n")
    return "not valid TOML"


def _other_dirs(conf: Path) -> str:
    text = conf.read_text()
    data = f'"{conf.parent / "data"}"'
    assert data in text, text
    conf.write_text(text.replace(data, f'"{conf.parent / "data-elsewhere"}"'))
    return "names other dirs"


CHANGES: dict[str, Callable[[Path], str]] = {
    "moved away": _moved,
    "not TOML any more": _broken,
    "naming another data dir": _other_dirs,
}
JOBS = {
    "cold": {"name": "nightly", "mode": "cold", "copy": "direct"},
    "hot": {"name": "hotjob", "mode": "hot"},
}


def _paused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    monkeypatch.setenv("UR_PAUSED", str(tmp_path / "paused"))
    monkeypatch.setenv("UR_GO", str(tmp_path / "go"))
    tail = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "hook"), tail]))


def _changed_while_paused(
    tmp_path: Path, sandbox: Sandbox, proc: Watched, change: str, status: int
) -> tuple[str, str]:
    """The command's (stdout, stderr) once it ended with status; the words the change's
    refusal names are asserted in them."""
    wait_until((tmp_path / "paused").exists, 180, "the command is ready to stop influxd")
    text = sandbox.conf.read_text()
    words = CHANGES[change](sandbox.conf)
    (tmp_path / "go").touch()
    code, stdout, stderr = proc.finish()
    if not sandbox.conf.exists():
        sandbox.conf.with_name("influxdb.conf.moved").rename(sandbox.conf)
    sandbox.conf.write_text(text)  # as it was: the fixture's own stop reads nothing else
    assert code == status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    said = stdout + stderr
    assert words in said and "influxd not stopped" in said, said[-3000:]
    return stdout, stderr


@pytest.mark.fault("refusal", "influxdb.conf changed before the stop", "cold backup")
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_cold_backup_refuses_to_stop_influxd_on_a_conf_changed_since_its_check(
    tmp_path: Path,
    sandbox: Sandbox,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    config = write_config(tmp_path, sandbox, jobs=[JOBS["cold"]])
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    pids = sandbox.pids()
    ledger.take()
    _paused(tmp_path, monkeypatch)
    backup = Watched(config, "backup", "--json")
    stdout, _ = _changed_while_paused(tmp_path, sandbox, backup, change, 1)
    record = json.loads(stdout)  # the run's record, written although it failed
    assert record["status"] == "failed" and "influxd not stopped" in record["error"], record
    assert sandbox.pids() == pids, "influxd was never stopped"
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    assert sandbox.count("metrics") == 2_000
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("refusal", "influxdb.conf changed before the stop", "whole-server restore")
@pytest.mark.parametrize(
    ("mode", "change"),
    [("cold", change) for change in CHANGES] + [("hot", "moved away")],
)
def test_a_whole_server_restore_refuses_to_stop_influxd_on_a_conf_changed_since_its_check(
    tmp_path: Path,
    sandbox: Sandbox,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    change: str,
) -> None:
    config = write_config(tmp_path, sandbox, jobs=[JOBS[mode]])
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    done = run_cli(config, "backup", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    backup_id = str(json.loads(done.stdout)["id"])
    sandbox.write_points("metrics", 300, start=100_000)  # newer than the backup
    pids = sandbox.pids()
    ledger.take()
    _paused(tmp_path, monkeypatch)
    restore = Watched(config, "restore", backup_id, "--yes")
    _, stderr = _changed_while_paused(tmp_path, sandbox, restore, change, 78)
    assert "nothing restored" in one_line(stderr)
    assert sandbox.pids() == pids, "influxd was never stopped"
    assert sandbox.count("metrics") == 2_300, "the live data as it was"
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    left = [p for p in tmp_path.rglob("*") if ".restore-" in p.name or ".rollback-" in p.name]
    assert left == [], left
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
