"""A hot restore is most needed when the live server is broken: it must not depend on it.

Real influxd 1.6. The live server's meta.db is destroyed while it is stopped, as a disk error or
an interrupted write would leave it; the restore builds beside it from a copy of that meta.db to
keep its users, and must fall back to an empty meta when the copy cannot be opened.
"""

from __future__ import annotations

import json
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, hot_chain, write_config

HOT = [{"name": "hotjob", "mode": "hot"}]


def test_a_chain_restores_over_a_server_whose_meta_db_is_destroyed(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT))
    _, increment = hot_chain(cli, sandbox, [[("metrics", 2_000)], [("metrics", 500)]])

    sandbox.stop()
    (sandbox.meta / "meta.db").write_bytes(b"not a bolt file " * 512)

    done = cli("restore", increment["id"], "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sandbox.ping(), "the restored server runs"
    assert sandbox.count("metrics") == 2_500
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    [unusable] = [e for e in events if e["event"] == "restore.live_meta_unusable"]
    assert "users" in unusable["detail"]
    # the destroyed meta.db is kept aside with the rest of the previous data, not deleted
    result = json.loads(done.stdout)
    old_meta = next(Path(p) for p in result["rollback_dirs"] if "meta.rollback-" in p)
    assert (old_meta / "meta.db").read_bytes().startswith(b"not a bolt file")
