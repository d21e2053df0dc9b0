"""A check that fails for a reason outside the backup: the storage dir away while verify ran
(an NFS or USB mount down), influxd unable to start a restore test at all (a binary mid-upgrade).
Before: every backup was marked failed and the next prune deleted them all, the newest good one
included, or a good backup was marked failed by a restore test that never ran."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from tests.conftest import Cli, hot_chain, write_config
from tests.faults.conftest import Ledger

JOBS = [{"name": "hot", "mode": "hot"}, {"name": "cold", "mode": "cold", "copy": "direct"}]


def _statuses(cli: Cli) -> dict[str, str]:
    return {r["id"]: r.get("verify_status") or "" for r in cli.json("list")}


@pytest.mark.fault("check", "the storage dir away while verify ran, then prune")
@pytest.mark.parametrize("rules", [{}, {"keep_last": 1}], ids=["no keep rule", "keep_last 1"])
def test_a_verify_while_the_storage_dir_was_away_makes_prune_delete_nothing(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, rules: dict[str, int]
) -> None:
    config = write_config(tmp_path, sandbox, jobs=[{**job, **rules} for job in JOBS])
    cli = Cli(config)
    links = hot_chain(cli, sandbox, [[("metrics", 800)], [("metrics", 200)]], job="hot")
    cold = cli.json("backup", "--job", "cold")
    assert cold["status"] == "ok"
    ledger.take()
    storage = tmp_path / "archives"
    away = tmp_path / "archives.away"
    os.rename(storage, away)
    storage.mkdir()
    down = cli("verify", "--all")
    os.rmdir(storage)
    os.rename(away, storage)
    assert down.returncode == 1, down.stderr[-2000:]
    assert set(_statuses(cli).values()) == {"failed"}, _statuses(cli)
    table = cli("list").stdout.splitlines()[1:]
    assert len(table) == 3 and all(" check-fail " in row for row in table), table

    pruned = cli("prune", "--json")
    _, lost = ledger.settle()
    assert pruned.returncode == 0, pruned.stderr[-2000:]
    assert json.loads(pruned.stdout)["deleted"] == [], pruned.stdout
    assert lost == []
    assert {r["id"] for r in cli.json("list")} == {r["id"] for r in [*links, cold]}
    # the next check, with the dir back, finds them good again
    again = cli("verify", "--all")
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert set(_statuses(cli).values()) == {"ok"}
    assert sandbox.ping()


@pytest.mark.fault(
    "check", "influxd cannot start a restore test at all", "a binary mid-upgrade, then prune"
)
def test_a_restore_test_influxd_cannot_make_is_no_verdict_on_the_backup(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    config = write_config(tmp_path, sandbox, jobs=[{**JOBS[1], "keep_last": 1}])
    cli = Cli(config)
    good = cli.json("backup")
    assert good["status"] == "ok"
    ledger.take()
    broken = tmp_path / "influxd-mid-upgrade"
    broken.write_text(f'#!/bin/sh\n[ "$1" = version ] && exec {influxd_binary()} "$@"\nexit 1\n')
    broken.chmod(0o755)
    plain = config.read_text()
    config.write_text(plain.replace("[influxd]\n", f'[influxd]\nbinary = "{broken}"\n', 1))
    done = cli("verify", good["id"], "--restore-test", "--json")
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    [result] = json.loads(done.stdout)
    assert result["status"] == "error" and result["checks"]["restore_test"] == "not run", result
    assert "does not start even on an empty dir" in result["errors"][0], result
    [listed] = cli.json("list")
    assert listed["verify_status"] == good["verify_status"], "no verdict: the last one stays"
    assert " check-fail " not in cli("list").stdout
    config.write_text(plain)
    pruned = cli("prune", "--json")
    _, lost = ledger.settle()
    assert json.loads(pruned.stdout)["deleted"] == [] and lost == []
    # with influxd whole again, the same backup passes its restore test
    again = cli("verify", good["id"], "--restore-test", "--json")
    assert again.returncode == 0, again.stdout
    assert sandbox.ping()
