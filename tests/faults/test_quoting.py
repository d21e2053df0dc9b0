"""Class 6: paths with characters that need quoting, end to end against a real influxd.

A backslash, *, ? or [ in a dir influxd serves is refused instead (the last test): influxd 1.x
finds its own TSM and WAL files with Go's filepath.Glob, which reads them as pattern syntax, so
such a server starts again without its data, silently (seen here: a restore test of such a
backup counted 0 points).

influxd's own dirs, the storage dir and the state dir all live under a directory whose name holds
the characters: a cold backup, `verify --restore-test` (a throwaway influxd with a generated
influxdb.conf), a hot backup and its restore (built in a throwaway influxd beside the live one)
must all work, and the live data must be whole afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, started
from tests.faults.conftest import FaultResult, Ledger, one_line
from tests.faults.test_config_values import config_text

NAMES = {
    "spaces and non-ASCII": "influx data ünïcødé €",
    "double quotes": 'the "live" server',
    "TOML's own syntax": "a' = ''' # b {x}, \"c\" = 1",
    "control characters": "tab\there del\x7f",
}
JOBS = {"[job]": {"name": '"nightly"', "copy": '"direct"'}}


@pytest.fixture(params=list(NAMES))
def odd_root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    root = tmp_path / NAMES[request.param]
    root.mkdir()
    return root


@pytest.fixture
def odd_server(odd_root: Path, influxd_path: str) -> Iterator[Sandbox]:
    with started(Sandbox(odd_root / "server", binary=influxd_path)) as server:
        yield server


@pytest.mark.fault("6", "paths that need quoting")
def test_backup_verify_restore_test_and_hot_restore_work_under_odd_paths(
    odd_root: Path, odd_server: Sandbox, fault_result: FaultResult
) -> None:
    odd_server.create_db("metrics")
    odd_server.write_points("metrics", 1_500)
    overrides = {
        "influxd": {
            "command": json.dumps(odd_server.command()),
            "stop_timeout": '"40s"',
            "start_timeout": '"30s"',
        },
        "[job]": {"name": '"nightly"', "copy": '"direct"', "schedule": None},
    }
    config = odd_root / "config.toml"
    config.write_text(config_text(odd_root, odd_server.conf, overrides))  # type: ignore[arg-type]
    cli = Cli(config)
    ledger = Ledger(odd_server, odd_root / "archives", fault_result)

    checked = cli("check-config", "--json")
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert json.loads(checked.stdout)["dirs"]["data"] == str(odd_server.data)

    cold = cli.json("backup", "--mode", "cold")
    assert cold["status"] == "ok", cold
    assert Path(cold["archive"]).parent == odd_root / "archives"
    tested = cli("verify", cold["id"], "--restore-test", "--json")
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    assert json.loads(tested.stdout)[0]["restored_counts"] == {"metrics": 1_500}

    hot = cli.json("backup", "--mode", "hot")
    assert hot["status"] == "ok", hot
    tested = cli("verify", hot["id"], "--restore-test", "--json")
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]

    ledger.take()
    odd_server.write_points("metrics", 500, start=50_000)  # written after: the restore drops them
    restored = cli("restore", hot["id"], "--yes", "--json")
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert odd_server.count("metrics") == 1_500
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and not lost


GLOB_NAMES = {
    "a backslash in the storage dir": ("storage", "back\\slash"),
    "brackets in the storage dir": ("storage", "shard [x]"),
    "a backslash in influxd's data dir": ("data", "da\\ta"),
    "a star in influxd's meta dir": ("meta", "me*ta"),
}


@pytest.mark.fault("6", "paths influxd itself cannot serve")
@pytest.mark.parametrize("case", list(GLOB_NAMES))
def test_a_dir_influxd_would_serve_with_glob_characters_is_refused_before_anything(
    tmp_path: Path, case: str
) -> None:
    where, name = GLOB_NAMES[case]
    odd = tmp_path / name
    conf = tmp_path / "influxdb.conf"
    dirs = {d: tmp_path / "server" / d for d in ("meta", "data", "wal")}
    if where in dirs:
        dirs[where] = odd
    conf.write_text(
        'bind-address = "127.0.0.1:1"\n'
        f"[meta]\n  dir = {json.dumps(str(dirs['meta']))}\n"
        f"[data]\n  dir = {json.dumps(str(dirs['data']))}\n"
        f"  wal-dir = {json.dumps(str(dirs['wal']))}\n"
    )
    overrides = {"[job]": {"name": '"nightly"'}}
    if where == "storage":
        overrides["storage"] = {"dir": json.dumps(str(odd))}
    config = tmp_path / "config.toml"
    config.write_text(config_text(tmp_path, conf, overrides))  # type: ignore[arg-type]
    cli = Cli(config)
    for argv in [("check-config",), ("backup",)]:
        done = cli(*argv)
        line = one_line(done.stderr)
        assert done.returncode == 78 and str(odd) in line and "glob" in line, (argv, line)
    assert not odd.exists() and not (tmp_path / "state").exists()
