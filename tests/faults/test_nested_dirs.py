"""Class 6: our dirs inside influxd's (or holding them), and influxd's dirs inside each other.

Found by an audit: a storage dir inside influxd's data dir was accepted; every cold backup then
held all the backups before it, and a whole-server restore moved every archive aside with the
live data, into a dir its own output said to `rm -rf`. A state dir there swapped the catalog for
the copy archived mid-run; a wal dir inside the data dir made a restore stop influxd and fail.
Each is now refused at load (exit 78, one line naming both dirs), before anything is touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.faults.conftest import one_line
from tests.faults.test_config_values import config_text

SERVER = ("meta", "data", "wal")

# case: (our key or influxd's dir moved, where it goes, relative to tmp_path; "~" = symlink)
CASES = {
    "storage dir inside the data dir": ("storage", "server/data/backups"),
    "storage dir is the meta dir": ("storage", "server/meta"),
    "state dir inside the wal dir": ("state", "server/wal/state"),
    "state dir holds the data dir": ("state", "server"),
    "metrics file inside the data dir": ("metrics", "server/data/influx_backupd.prom"),
    "storage dir reached through a symlink into the data dir": ("storage", "~/backups"),
    "wal dir inside the data dir": ("wal", "server/data/_wal"),
    "meta dir is the data dir": ("meta", "server/data"),
}


@pytest.mark.fault("6", "dirs inside one another")
@pytest.mark.parametrize("case", list(CASES))
def test_nested_dirs_are_refused_before_anything(tmp_path: Path, case: str) -> None:
    what, where = CASES[case]
    dirs = {d: tmp_path / "server" / d for d in SERVER}
    for path in dirs.values():
        path.mkdir(parents=True)
    (tmp_path / "~").symlink_to(dirs["data"])
    odd = tmp_path / where
    if what in dirs:
        dirs[what] = odd
    conf = tmp_path / "influxdb.conf"
    conf.write_text(
        'bind-address = "127.0.0.1:1"\n'
        f"[meta]\n  dir = {json.dumps(str(dirs['meta']))}\n"
        f"[data]\n  dir = {json.dumps(str(dirs['data']))}\n"
        f"  wal-dir = {json.dumps(str(dirs['wal']))}\n"
    )
    key = {"storage": ("storage", "dir"), "state": ("daemon", "state_dir")}
    overrides: dict[str, dict[str, str]] = {}
    if what in key:
        section, name = key[what]
        overrides[section] = {name: json.dumps(str(odd))}
    if what == "metrics":
        overrides["daemon"] = {
            "state_dir": json.dumps(str(tmp_path / "state")),
            "metrics_file": json.dumps(str(odd)),
        }
    config = tmp_path / "config.toml"
    config.write_text(config_text(tmp_path, conf, overrides))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cli = Cli(config)
    for argv in [("check-config",), ("backup",), ("status",)]:
        done = cli(*argv)
        line = one_line(done.stderr)
        assert done.returncode == 78, (argv, done.stderr[-2000:])
        assert str(odd) in line and ("inside" in line or "holds" in line), (argv, line)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, "nothing made or moved"


@pytest.mark.fault(
    "6", "dirs inside one another", "dirs beside each other, a common prefix: accepted"
)
def test_dirs_beside_each_other_with_a_common_prefix_are_fine(tmp_path: Path) -> None:
    """/x/server and /x/server-backups are apart: the check compares path parts, not text."""
    conf = tmp_path / "influxdb.conf"
    conf.write_text(
        'bind-address = "127.0.0.1:1"\n'
        f'[meta]\n  dir = "{tmp_path}/server/meta"\n'
        f'[data]\n  dir = "{tmp_path}/server/data"\n  wal-dir = "{tmp_path}/server/data-wal"\n'
    )
    overrides = {
        "storage": {"dir": json.dumps(str(tmp_path / "server" / "data-backups"))},
        "daemon": {"state_dir": json.dumps(str(tmp_path / "server" / "meta2"))},
    }
    config = tmp_path / "config.toml"
    config.write_text(config_text(tmp_path, conf, overrides))
    done = Cli(config)("check-config")
    assert "inside" not in done.stderr and "holds influxd" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), done.stderr  # 1: warnings about the absent server only


@pytest.mark.fault("6", "dirs inside one another", "a running server")
def test_a_storage_dir_inside_the_live_data_dir_stops_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    config = write_config(tmp_path, sandbox)
    config.write_text(
        config.read_text().replace(str(tmp_path / "archives"), str(sandbox.data / "bk"))
    )
    pids = sandbox.pids()
    done = Cli(config)("backup")
    assert done.returncode == 78, done.stderr[-2000:]
    assert "storage.dir" in one_line(done.stderr) and str(sandbox.data) in one_line(done.stderr)
    assert sandbox.pids() == pids and sandbox.ping(), "influxd was never stopped"
    assert not (sandbox.data / "bk").exists() and not (tmp_path / "state").exists()
