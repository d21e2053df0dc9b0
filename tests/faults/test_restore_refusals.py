"""A restore refused before it touches anything, for a config or a host the operator must change
first, exits 78 whatever the form (the whole server, --database, --target) and whatever the
backup (a cold archive, a 1.x hot backup): the same cause, the same status, one line, influxd
never stopped, its data as it was.

Before, a whole-server hot restore turned the swap's own refusals (a unit masked while it
built, renames blocked) into "restore failed …" with exit 1 where the cold restore said 78; a
live dir that is a mount point and a read-only live dir or storage dir were 1 for both (found
only once the extraction or the build failed on them); --target and --database said 1 (or a
bare OSError line) for a read-only storage dir or a missing [influxd] binary that the
whole-server restore called a configuration error.

Read-only mounts and mount points are those of a private mount namespace of the restore alone
(unshare -m, root), as a systemd unit's ProtectSystem=strict gives it; the masked unit is the
stand-in systemctl's (tests/faults/test_unit_unstartable.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import wait_until, write_config
from tests.faults.conftest import Ledger, Watched, one_line, run_cli
from tests.faults.test_unit_unstartable import REFUSED, _unit
from tests.integration.test_service import UNIT, service

__all__ = ["service"]  # the fixture, imported for its use here

JOBS = {
    "cold": {"name": "nightly", "mode": "cold", "copy": "direct"},
    "hot": {"name": "hotjob", "mode": "hot"},
}
MARKER = "influxd-stopped.json"


def _backed_up(tmp_path: Path, sandbox: Sandbox, mode: str, **influxd: Any) -> tuple[Path, str]:
    config = write_config(tmp_path, sandbox, jobs=[JOBS[mode]], influxd=influxd or None)
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    done = run_cli(config, "backup", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    sandbox.write_points("metrics", 300, start=100_000)  # newer than the backup
    return config, str(json.loads(done.stdout)["id"])


def _in_namespace(mounts: list[tuple[str, Path]], config: Path, *args: str) -> list[str]:
    """argv of `influx-backupd ARGS` in a mount namespace of its own where each path is bind
    mounted onto itself ("mount": a mount point there) or also remounted read-only ("ro")."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed")
    if os.geteuid() != 0:
        pytest.fail("a mount namespace needs root (CI runs as root)")
    steps = []
    for number, (how, _) in enumerate(mounts, start=1):
        steps.append(f'mount --bind "${number}" "${number}"')
        if how == "ro":
            steps.append(f'mount -o remount,bind,ro "${number}"')
    script = " && ".join(steps) + f' && shift {len(mounts)} && exec "$@"'
    return [
        *("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"),
        *(str(path) for _, path in mounts),
        *(sys.executable, "-m", "influx_backupd", "--config", str(config), *args),
    ]


def _refused(done: Any, *words: str) -> str:
    assert done.returncode == 78, (done.returncode, done.stderr[-3000:])
    line = one_line(done.stderr)
    for word in words:
        assert word in line, line
    return line


def _untouched(tmp_path: Path, sandbox: Sandbox, pids: list[int], ledger: Ledger) -> None:
    assert sandbox.pids() == pids, "influxd was never stopped"
    assert sandbox.count("metrics") == 2_300, "the live data as it was"
    assert not (tmp_path / "state" / MARKER).exists()
    left = [p for p in tmp_path.rglob("*") if ".restore-" in p.name or ".rollback-" in p.name]
    assert left == [], left
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


# cause -> (the namespace's mounts, given tmp_path and the sandbox; words the line names)
WHOLE_SERVER = {
    "live dirs on a read-only mount": (
        lambda tmp, box: [("ro", box.root)],
        ("read-only mount", "ReadWritePaths=", "influxd not stopped"),
    ),
    "storage dir on a read-only mount": (
        lambda tmp, box: [("ro", tmp / "archives")],
        ("storage.dir", "Read-only file system", "ReadWritePaths="),
    ),
    "live data dir a mount point": (
        lambda tmp, box: [("mount", box.data)],
        ("is a mount point", "influxd not stopped"),
    ),
}


@pytest.mark.fault("refusal", "whole-server restore on a host it cannot swap on")
@pytest.mark.parametrize("mode", list(JOBS))
@pytest.mark.parametrize("cause", list(WHOLE_SERVER))
def test_a_whole_server_restore_the_host_refuses_exits_78_cold_and_hot(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, cause: str, mode: str
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox, mode)
    mounts, words = WHOLE_SERVER[cause]
    pids = sandbox.pids()
    ledger.take()
    argv = _in_namespace(mounts(tmp_path, sandbox), config, "restore", backup_id, "--yes")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    _refused(done, "restore refused, nothing touched", *words)
    _untouched(tmp_path, sandbox, pids, ledger)


@pytest.mark.fault("refusal", "whole-server restore with an [influxd] user that does not exist")
@pytest.mark.parametrize("mode", list(JOBS))
def test_an_owner_that_does_not_exist_exits_78_cold_and_hot(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, mode: str
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox, mode)
    text = config.read_text().replace('user = "root"', 'user = "no-such-user-influx"')
    config.write_text(text)
    pids = sandbox.pids()
    ledger.take()
    done = run_cli(config, "restore", backup_id, "--yes")
    _refused(done, "no such user 'no-such-user-influx'")
    _untouched(tmp_path, sandbox, pids, ledger)


# Loaded into the restore (sitecustomize): once the cold archive is extracted, or the hot build
# is done, it waits until <GO> exists, so that the unit can be masked between the command's
# check and the swap's stop.
HOOK = """
import os, time
import influx_backupd.restore.cold as cold
import influx_backupd.restore.hot as hot
def _then_wait(original):
    def waits(*a, **k):
        out = original(*a, **k)
        open(os.environ["UR_PAUSED"], "w").close()
        while not os.path.exists(os.environ["UR_GO"]):
            time.sleep(0.01)
        return out
    return waits
cold.extract_safely = _then_wait(cold.extract_safely)
hot._build = _then_wait(hot._build)
"""


@pytest.mark.fault("refusal", "whole-server restore whose unit is masked before its swap")
@pytest.mark.parametrize("mode", list(JOBS))
def test_a_unit_masked_while_the_restore_prepares_exits_78_cold_and_hot(
    tmp_path: Path,
    sandbox: Sandbox,
    service: Path,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    config, backup_id = _backed_up(
        tmp_path, sandbox, mode, command=None, service=UNIT, binary=sandbox.binary
    )
    pids = sandbox.pids()
    ledger.take()
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    for name, value in (("UR_PAUSED", "paused"), ("UR_GO", "go"), ("PYTHONPATH", "hook")):
        tail = [os.environ.get("PYTHONPATH", "")] if name == "PYTHONPATH" else []
        monkeypatch.setenv(name, os.pathsep.join([str(tmp_path / value), *tail]))
    restore = Watched(config, "restore", backup_id, "--yes")
    wait_until((tmp_path / "paused").exists, 180, "the restore is ready to swap")
    _unit(service, sandbox, REFUSED["masked"][0])  # after the command's own check
    (tmp_path / "go").touch()
    code, _, stderr = restore.finish()
    assert code == 78, stderr[-3000:]
    said = one_line(stderr)
    for words in ("masked", "influxd not stopped, nothing restored"):
        assert words in said, said
    calls = (service / "calls.log").read_text().splitlines()
    assert f"stop {UNIT}" not in calls, "nothing stopped"
    _untouched(tmp_path, sandbox, pids, ledger)


@pytest.mark.fault("refusal", "restore --database / --target with a read-only storage dir")
@pytest.mark.parametrize("mode", list(JOBS))
@pytest.mark.parametrize("form", ["--database", "--target"])
def test_every_form_refuses_a_read_only_storage_dir_with_78(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, form: str, mode: str
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox, mode)
    args = ["--database", "metrics", "--as", "m2"] if form == "--database" else [form]
    if form == "--target":
        args.append(str(tmp_path / "look"))
    pids = sandbox.pids()
    ledger.take()
    argv = _in_namespace([("ro", tmp_path / "archives")], config, "restore", backup_id, *args)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    _refused(done, "storage.dir", "Read-only file system", "nothing touched")
    assert "m2" not in sandbox.databases() and not (tmp_path / "look").exists()
    _untouched(tmp_path, sandbox, pids, ledger)


@pytest.mark.fault("refusal", "restore whose [influxd] binary does not exist")
@pytest.mark.parametrize(
    "mode,form",
    [
        ("hot", ()),
        ("hot", ("--target",)),
        ("cold", ("--target", "--start")),
        ("hot", ("--database",)),
        ("cold", ("--database",)),
    ],
    ids=[
        "hot whole server",
        "hot --target",
        "cold --target --start",
        "hot --database",
        "cold --database",
    ],
)
def test_every_form_that_runs_the_binary_refuses_a_missing_one_with_78(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, mode: str, form: tuple[str, ...]
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox, mode)
    missing = tmp_path / "no" / "influxd"
    text = config.read_text().replace(
        "[influxd]", f"[influxd]\nbinary = {json.dumps(str(missing))}"
    )
    config.write_text(text)
    args: list[str] = ["--yes"]
    if "--target" in form:
        args = [*form[:1], str(tmp_path / "look"), *form[1:]]
    elif "--database" in form:
        args = ["--database", "metrics", "--as", "m2"]
    pids = sandbox.pids()
    ledger.take()
    done = run_cli(config, "restore", backup_id, *args)
    _refused(done, f"[influxd] binary {missing} does not exist")
    assert "m2" not in sandbox.databases() and not (tmp_path / "look").exists()
    _untouched(tmp_path, sandbox, pids, ledger)


@pytest.mark.fault(
    "refusal", "whole-server restore whose influxdb.conf sets no dir the backup needs"
)
@pytest.mark.parametrize("mode", list(JOBS))
def test_an_influxdb_conf_without_the_wal_dir_exits_78_cold_and_hot(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, mode: str
) -> None:
    """The backup holds a WAL; the live influxdb.conf (edited since) names no [data] wal-dir to
    put it in: the config must change first (it said 1, as a damaged backup does)."""
    config, backup_id = _backed_up(tmp_path, sandbox, mode)
    conf = sandbox.conf.read_text()
    lines = [line for line in conf.splitlines() if not line.strip().startswith("wal-dir")]
    assert len(lines) == len(conf.splitlines()) - 1
    sandbox.conf.write_text("\n".join(lines) + "\n")
    pids = sandbox.pids()
    ledger.take()
    try:
        done = run_cli(config, "restore", backup_id, "--yes")
    finally:
        sandbox.conf.write_text(conf)
    _refused(done, str(sandbox.conf), "wal")
    _untouched(tmp_path, sandbox, pids, ledger)
