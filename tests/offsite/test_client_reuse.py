"""One S3 client per process and settings: the daemon's syncs share one (each new one parsed the
S3 service model again: some 14 MiB and 0.06-0.2 s of CPU per sync), and a reload that changes
the [offsite] settings, or new keys in credentials_file, gets a new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite import bucket
from influx_backupd.run.offsite import sync
from influx_backupd.store.catalog import Catalog
from tests.conftest import Cli, write_config
from tests.offsite.conftest import ACCESS_KEY, Endpoint
from tests.offsite.helpers import offsite_section


def test_syncs_share_one_client_and_changed_settings_or_keys_get_a_new_one(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    clients = bucket.Clients()
    monkeypatch.setattr(bucket, "CLIENTS", clients)  # this test's count: not other tests' clients
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    config = write_config(tmp_path, sandbox, extra=offsite_section(moto))
    local = tmp_path / "local.toml"  # backups taken by the command, sent by the syncs here
    local.write_text(config.read_text().split("\n[offsite]\n")[0])

    def synced(path: Path) -> list[str]:
        loaded = load(path)  # as the daemon's reload loads it
        return [sent.id for sent in sync(loaded, Catalog(loaded.state_dir)).sent]

    first = Cli(local).json("backup")["id"]
    assert synced(config) == [first]
    sandbox.write_points("metrics", 10, start=50_000)
    second = Cli(local).json("backup")["id"]
    assert synced(config) == [second]
    assert clients.built == 1

    # a reload that changes a connection setting
    changed = tmp_path / "changed.toml"
    changed.write_text(config.read_text().replace("retries = 2", "retries = 3"))
    assert synced(changed) == []
    assert clients.built == 2
    assert synced(config) == []  # back as it was: that client is still kept
    assert clients.built == 2

    # credentials_file given new keys: read again at each sync, a new client signs with them
    moto.credentials.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = rotated-0000\n"
    )
    assert synced(config) == []
    assert clients.built == 3
