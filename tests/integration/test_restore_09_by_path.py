"""Restores of InfluxDB 0.9 snapshot chains given by path, as on a new host (no catalog; 0.9
snapshots have no record beside them), and where the backup lies. Through tests/stand_ins/
influxd09, a STAND-IN for 0.9's influxd (0.9 cannot be installed here): it writes PATH, then
PATH.0, PATH.1 … holding only the files changed since, and restores PATH with every PATH.N beside
it, as 0.9's documentation describes."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import STAND_INS, Cli, write_config

INFLUXD09 = STAND_INS / "influxd09"
HOT = [{"name": "hotjob", "mode": "hot"}]
INFLUXD = {"binary": str(INFLUXD09), "user": "root", "group": "root"}


def _set(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    # the stand-in sends files whose mtime is newer than the last snapshot's
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))


def files_of(server: Sandbox) -> dict[str, bytes]:
    return {
        str(p.relative_to(server.root)): p.read_bytes()
        for top in (server.meta, server.data)
        for p in sorted(top.rglob("*"))
        if p.is_file()
    }


@dataclass
class Chain:
    server: Sandbox
    cli: Cli
    backups: list[dict[str, Any]]  # the full, PATH.0, PATH.1
    states: list[dict[str, bytes]]  # the server's files when each was taken
    tmp: Path

    def new_host(self) -> Cli:
        """A config with an empty state dir (no catalog) and the same server and storage."""
        home = self.tmp / "newhost"
        home.mkdir(exist_ok=True)
        return Cli(write_config(home, self.server, influxd=INFLUXD, jobs=HOT))

    def path(self, n: int) -> Path:
        return Path(self.backups[n]["archive"])


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    server = Sandbox(tmp_path / "server09", binary=str(INFLUXD09))
    server.write_config()
    server.meta.mkdir(parents=True)
    (server.meta / "meta").write_bytes(b"meta v1")
    _set(server.data / "db" / "default" / "1", b"shard one")
    server.start()
    try:
        cli = Cli(write_config(tmp_path, server, influxd=INFLUXD, jobs=HOT))
        backups, states = [cli.json("backup")], [files_of(server)]
        _set(server.data / "db" / "default" / "2", b"second shard")
        backups.append(cli.json("backup"))
        states.append(files_of(server))
        _set(server.data / "db" / "default" / "1", b"shard one, rewritten")
        backups.append(cli.json("backup"))
        states.append(files_of(server))
        assert [b["status"] for b in backups] == ["ok"] * 3, [b["error"] for b in backups]
        names = [Path(b["archive"]).name for b in backups]
        assert names == [names[0], names[0] + ".0", names[0] + ".1"], names
        # the server moves on: each restore below must put back what it names
        _set(server.data / "db" / "default" / "3", b"written after the backups")
        yield Chain(server, cli, backups, states, tmp_path)
    finally:
        server.stop()


@pytest.mark.parametrize("n", [1, 2])
def test_an_increment_given_by_path_is_restored_on_its_full_and_the_increments_before_it(
    chain: Chain, n: int
) -> None:
    """Before: without a record, PATH.N was restored alone as if it were a full: the live
    server replaced by one with an empty meta dir and only the shards changed since PATH.N-1,
    exit 0 (`verify --restore-test` of the same file failed). Now the chain beside it, as 0.9's
    own restore reads it, up to PATH.N and no further."""
    new = chain.new_host()
    done = new("restore", str(chain.path(n)), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["links"] == [str(chain.path(i)) for i in range(n + 1)]
    assert files_of(chain.server) == chain.states[n]
    assert chain.server.ping()
    verified = new("verify", str(chain.path(n)), "--restore-test")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_increment_whose_earlier_increment_is_missing_is_refused_before_the_stop(
    chain: Chain,
) -> None:
    chain.path(1).unlink()
    before, pids = files_of(chain.server), chain.server.pids()
    done = chain.new_host()("restore", str(chain.path(2)), "--yes")
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert f"{chain.path(1)}" in line and "is missing" in line, line
    assert "Traceback" not in done.stderr
    assert chain.server.pids() == pids and files_of(chain.server) == before


def test_an_increment_without_its_full_beside_it_is_refused_before_the_stop(
    chain: Chain,
) -> None:
    """PATH.N alone (its full not beside it) holds no meta and only the changed shards: taken as
    a full (a full's name may end in digits), its check finds no meta and refuses it."""
    lone = chain.tmp / "elsewhere" / chain.path(2).name
    lone.parent.mkdir()
    shutil.copyfile(chain.path(2), lone)
    before, pids = files_of(chain.server), chain.server.pids()
    done = chain.new_host()("restore", str(lone), "--yes")
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert "without meta" in line and chain.path(0).name in line, line
    assert chain.server.pids() == pids and files_of(chain.server) == before


def test_a_full_given_by_path_is_restored_as_taken_and_the_increments_beside_it_are_named(
    chain: Chain,
) -> None:
    """0.9's own `influxd restore PATH` restores every PATH.N beside PATH; ours restores the
    backup named, as by id, and says which increments beside it were not restored."""
    done = chain.new_host()("restore", str(chain.path(0)), "--yes")
    assert done.returncode == 0, done.stderr
    assert files_of(chain.server) == chain.states[0]
    warning = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert any(chain.path(2).name in line and "not restored" in line for line in warning), (
        done.stderr
    )


@pytest.mark.parametrize("form", ["by id", "by path"])
def test_a_backup_inside_a_live_dir_is_refused_before_the_stop(chain: Chain, form: str) -> None:
    """Before: a snapshot copied into the live data dir was restored by stopping influxd and
    moving the data dir aside, snapshot and all; the tool then found no file to restore, the
    restore rolled back, influxd had been down for nothing. And had it worked, the backup would
    have ended in a rollback dir an operator removes."""
    inside = chain.server.data / "snap"
    shutil.copyfile(chain.path(0), inside)
    before, pids = files_of(chain.server), chain.server.pids()
    done = chain.cli("restore", str(inside), "--yes")
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert f"{inside}" in line and "inside the live data dir" in line, line
    assert chain.server.pids() == pids and files_of(chain.server) == before


def test_a_restore_into_a_target_with_a_long_name_works(chain: Chain) -> None:
    """Before: the 0.9 restore's scratch dir was named after DIR (.restore-DIR-PID): a DIR name
    of 240 bytes or more, itself valid, failed with [Errno 36] File name too long."""
    target = chain.tmp / ("t" * 250)
    done = chain.cli("restore", chain.backups[2]["id"], "--target", str(target))
    assert done.returncode == 0, done.stderr
    restored = {
        str(p.relative_to(target)): p.read_bytes()
        for p in sorted((target / "meta").rglob("*")) + sorted((target / "data").rglob("*"))
        if p.is_file()
    }
    assert restored == {
        name.removeprefix("server09/"): data for name, data in chain.states[2].items()
    }
