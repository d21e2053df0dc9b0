"""Where `restore --database` sends the database: the live server's own bind-address."""

from __future__ import annotations

from pathlib import Path

import pytest

from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.restore.database import live_snapshot_host, valid_database_name
from tests.conftest import write_config


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        (":8088", "127.0.0.1:8088"),
        ("0.0.0.0:9999", "127.0.0.1:9999"),
        ("10.1.2.3:8088", "10.1.2.3:8088"),
        ("[::1]:8089", "[::1]:8089"),
        ("[::]:8088", "127.0.0.1:8088"),
    ],
)
def test_the_snapshot_service_from_influxdb_conf(tmp_path: Path, bind: str, expected: str) -> None:
    server = Sandbox(tmp_path / "server")
    conf = server.write_config()
    conf.write_text(conf.read_text().replace(f'"127.0.0.1:{server.rpc_port}"', f'"{bind}"'))
    # backup_host names another server: the restore still goes into the local one
    config = load(write_config(tmp_path, server, influxd={"backup_host": "elsewhere:8088"}))
    assert live_snapshot_host(config) == expected


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("metrics", True),
        ("metrics then", True),
        ("métriques", True),
        ("", False),
        (".", False),
        ("..", False),
        ("a/b", False),
        ("a\\b", False),
        ("a\nb", False),
        ("a\u00a0b", False),  # a space other than the space, as Go's unicode.IsPrint
    ],
)
def test_database_names_as_influxd_accepts_them(name: str, valid: bool) -> None:
    assert valid_database_name(name) is valid
