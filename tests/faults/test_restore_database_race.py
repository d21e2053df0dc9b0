"""`restore BACKUP --database NAME --as NEW` while another client of the live server creates NEW
(and writes into it) after the command's first look found NEW free: during the prepare (the
throwaway's export of a cold archive), or right before `influxd restore` takes the database in.
A stand-in wrapper around the real influxd (tests/stand_ins/influxd_client_creates_db) plays
that client at that exact moment: no timing of a test can land between two of our steps.

What a user depends on: the client's database and its points are never dropped or written into;
the restore says what happened in one line, with its exit status (2: refused before anything
was touched; 1: the take failed, and the undo says it left the client's database alone).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, write_config
from tests.faults.conftest import FaultResult, one_line, points, run_cli
from tests.faults.test_restore_database_kill import backed_up

CLIENT = STAND_INS / "influxd_client_creates_db"
# variant → (the influxd command the client's create comes just before, exit status, line)
MOMENTS = {
    "during the prepare": (
        "backup",
        2,
        "restore refused, nothing touched: database race was created on the live server meanwhile",
    ),
    "right before the take": (
        "restore",
        1,
        "database race, created meanwhile by another client, was left as it is",
    ),
}


@pytest.mark.fault("refusal", "restore --database --as NEW: a client creates NEW meanwhile")
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_database_a_client_created_meanwhile_is_never_dropped(
    tmp_path: Path,
    sandbox: Sandbox,
    fault_result: FaultResult,
    monkeypatch: pytest.MonkeyPatch,
    moment: str,
) -> None:
    at, status, words = MOMENTS[moment]
    _, record = backed_up(tmp_path, sandbox, 2_000)
    live_pids = sandbox.pids()

    monkeypatch.setenv("CLIENT_AT", at)
    monkeypatch.setenv("CLIENT_URL", sandbox.url)
    monkeypatch.setenv("CLIENT_DB", "race")
    monkeypatch.setenv("CLIENT_MARK", str(tmp_path / "client-done"))
    racing = write_config(tmp_path, sandbox, influxd={"binary": str(CLIENT)})
    done = run_cli(racing, "restore", record["id"], "--database", "metrics", "--as", "race")
    assert (tmp_path / "client-done").exists(), "the client created its database"
    after = points(sandbox)
    fault_result.lost(points=1 - after.get("race", 0), archives=0)
    assert after == {"metrics": 2_000, "race": 1}, "the client's database and point are kept"
    assert done.returncode == status, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert words in line, line
    assert "as they were" not in line
    assert not (tmp_path / "state" / "restore-database.json").exists()
    assert sandbox.pids() == live_pids


@pytest.mark.fault(
    "refusal",
    "restore --database --as NEW: a client creates NEW meanwhile",
    "--replace, after the drop",
)
def test_a_replace_whose_name_a_client_takes_after_the_drop_keeps_both(
    tmp_path: Path, sandbox: Sandbox, fault_result: FaultResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, record = backed_up(tmp_path, sandbox, 2_000)
    sandbox.create_db("race")
    sandbox.write_points("race", 30)  # the database the restore replaces

    monkeypatch.setenv("CLIENT_AT", "restore")  # after our drop, right before the take
    monkeypatch.setenv("CLIENT_URL", sandbox.url)
    monkeypatch.setenv("CLIENT_DB", "race")
    monkeypatch.setenv("CLIENT_MARK", str(tmp_path / "client-done"))
    racing = write_config(tmp_path, sandbox, influxd={"binary": str(CLIENT)})
    done = run_cli(
        racing, "restore", record["id"], "--database", "metrics", "--as", "race", "--replace",
        "--yes",
    )  # fmt: skip
    after = points(sandbox)
    [kept] = (tmp_path / "archives").glob("race.replaced-*")
    fault_result.lost(points=1 - after.get("race", 0), archives=0)
    assert after == {"metrics": 2_000, "race": 1}, "the client's database is left as it is"
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert "created meanwhile by another client, was left as it is" in line, line
    assert f"the replaced race is kept in {kept}: put it back by hand" in line, line
    assert not (tmp_path / "state" / "restore-database.json").exists()
    # the copy holds the replaced database's 30 points
    done = run_cli(config, "restore", str(kept), "--database", "race", "--as", "race_before")
    assert done.returncode == 0, done.stderr[-3000:]
    assert points(sandbox)["race_before"] == 30
