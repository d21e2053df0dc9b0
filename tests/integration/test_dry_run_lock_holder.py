"""`backup --dry-run` says what holds the backup lock and what a run would do about it: wait
for an off-site send to yield (it said "would exit 75", which a send no longer makes it),
exit 75 behind anything else (naming it: it said "another backup" of a restore too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config

HOLD = """
import sys, time
from pathlib import Path
from influx_backupd.store.state import lock_for
lock = lock_for(Path(sys.argv[1]), sys.argv[2])
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize(
    "doing,said",
    [
        ("offsite", "`backup` would ask it to yield and wait for it"),
        ("restore", "a restore is running (pid "),
        ("import", "an import is running (pid "),
        ("fetch", "a fetch from the bucket for a restore is running (pid "),
    ],
)
def test_dry_run_names_the_lock_holder_and_what_a_run_would_do(
    tmp_path: Path, sandbox: Sandbox, doing: str, said: str
) -> None:
    cli = Cli(write_config(tmp_path, sandbox))
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state), doing], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        plan = cli.json("backup", "--dry-run")
        plan = plan[0] if isinstance(plan, list) else plan
        (reason,) = [r for r in plan["reasons"] if r.startswith("but now ")]
        assert said in reason and f"pid {holder.pid}" in reason, reason
        assert ("exit 75" in reason) == (doing != "offsite"), reason
    finally:
        holder.kill()
        holder.wait()
