"""influxd takes INFLUXDB_DATA_DIR, INFLUXDB_META_DIR and INFLUXDB_DATA_WAL_DIR from its
environment over influxdb.conf (Debian's unit reads /etc/default/influxdb). A running influxd
with one naming another dir serves that dir: a backup copied the dirs influxdb.conf names, which
influxd does not use, and called it ok. Refused before anything is stopped, in one line naming
the variable (and only it: other INFLUXDB_* variables carry secrets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config


def test_a_running_influxd_whose_environment_moves_its_data_dir_is_not_backed_up(
    tmp_path: Path, influxd_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "elsewhere" / "data"
    other.mkdir(parents=True)
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    with monkeypatch.context() as env:
        env.setenv("INFLUXDB_DATA_DIR", str(other))
        env.setenv("INFLUXDB_HTTP_SHARED_SECRET", "s3cr3t-never-shown")
        server.start()
    try:
        server.create_db("metrics")
        server.write_points("metrics", 100)
        assert list(other.iterdir()), "influxd writes where its environment says"
        cli = Cli(write_config(tmp_path, server))
        pids = server.pids()
        for args in (("check-config",), ("backup",)):
            done = cli(*args)
            assert done.returncode == 78, (args, done.stdout, done.stderr)
            line = done.stderr.strip().splitlines()[-1]
            assert f"runs with INFLUXDB_DATA_DIR='{other}'" in line, line
            assert "s3cr3t" not in done.stdout + done.stderr
        assert server.pids() == pids, "influxd was never stopped"
        assert not list((tmp_path / "archives").glob("*.tar"))
    finally:
        server.stop()
