"""A whole-server restore whose [influxd] user/group is not what influxd runs as.

influxd runs as a system user made for the test (`useradd --system`, removed afterwards), through
`runuser -u USER -- influxd run -config …`, its dirs that user's; the config says root. Restored
files would belong to root, and the restarted influxd (that user again) would fail on them
(`open …/meta/meta.db: permission denied`) only once the old one was stopped.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import FaultResult, Ledger, one_line, run_cli

POINTS = 2_000


@pytest.fixture
def system_user() -> Iterator[str]:
    name = f"ibt{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/false", name],
        check=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", name], check=False, stderr=subprocess.DEVNULL)


@pytest.fixture
def as_user(system_user: str, influxd_path: str) -> Iterator[tuple[Sandbox, list[str]]]:
    """A real influxd running as system_user through runuser, and its command."""
    # not under tmp_path: pytest makes its base dir 0700, which the user could not enter
    root = Path(tempfile.mkdtemp(prefix="ib-owner-", dir="/tmp"))
    os.chmod(root, 0o755)
    server = Sandbox(root / "server", binary=influxd_path)
    server.write_config()
    shutil.chown(server.root, system_user, system_user)
    for path in server.root.rglob("*"):
        shutil.chown(path, system_user, system_user)
    command = ["/usr/sbin/runuser", "-u", system_user, "--", *server.command()]
    try:
        with open(server.root / "influxd.log", "ab") as log:
            subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        server.wait_ready(60)
        yield server, command
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _tree(server: Sandbox) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(server.root)): (p.stat().st_uid, p.stat().st_size, p.stat().st_mtime_ns)
        for d in (server.meta, server.data, server.wal)
        for p in [d, *d.rglob("*")]
    }


@pytest.mark.fault("refusal", "[influxd] user/group not what influxd runs as")
@pytest.mark.parametrize("mode", ["cold", "hot"])
def test_a_restore_as_another_user_than_influxd_runs_as_is_refused_before_the_stop(
    tmp_path: Path,
    system_user: str,
    as_user: tuple[Sandbox, list[str]],
    fault_result: FaultResult,
    mode: str,
) -> None:
    """Before: the restore chowned the files to root, stopped influxd, the new one failed on
    meta.db (seen only in state_dir/influxd.log) and the line said "influxd exited with
    status 1 before answering"; the rollback put the old data back."""
    server, command = as_user
    server.create_db("metrics")
    server.write_points("metrics", POINTS)
    job = {"name": "nightly", "mode": mode, **({"copy": "direct"} if mode == "cold" else {})}

    def config(user: str, group: str | None = None) -> Path:
        influxd: dict[str, Any] = {"command": command, "user": user, "group": group or user}
        return write_config(tmp_path, server, influxd=influxd, jobs=[job])

    backup = run_cli(config("root"), "backup", "--json")
    assert backup.returncode == 0, backup.stderr[-3000:]
    backup_id = json.loads(backup.stdout)["id"]
    ledger = Ledger(server, tmp_path / "archives", fault_result)
    ledger.take()
    pids, tree = server.pids(), _tree(server)

    done = run_cli(config("root"), "restore", backup_id, "--yes")
    line = one_line(done.stderr)
    assert done.returncode == 78, (done.returncode, line)
    assert "user = 'root', group = 'root'" in line, line
    assert f"runs as user '{system_user}', group '{system_user}'" in line, line
    assert "nothing touched" in line, line
    assert server.pids() == pids, "influxd was stopped"
    assert _tree(server) == tree, "the live files were touched"
    assert sorted(p.name for p in server.root.iterdir() if "." in p.name) == [
        "influxd.log",
        "influxdb.conf",
    ]
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []

    # the config set right: the same restore goes through, the files the user's. The group
    # alone may differ (the owner writes its files; the audit saw that refused): cold tries it
    group = "root" if mode == "cold" else system_user
    done = run_cli(config(system_user, group), "restore", backup_id, "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert server.ping()
    assert (server.meta / "meta.db").stat().st_uid == pwd.getpwnam(system_user).pw_uid
    server.write_points("metrics", 10, start=990_000)  # influxd writes to the restored files
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
