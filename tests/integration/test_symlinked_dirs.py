"""A server whose data and wal dirs (and influxdb.conf) are symlinks to elsewhere, a common
layout (`/var/lib/influxdb/data -> /mnt/big/data`): cold backups archive what the links point
to under the configured names, and every restore form accepts what the backup said was ok."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.integration.test_restore_target import _counts, serving


@pytest.mark.parametrize("copy", ["direct", "staged"])
def test_a_cold_backup_of_symlinked_dirs_holds_their_contents_and_restores(
    tmp_path: Path, influxd_path: str, copy: str
) -> None:
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    server.write_config()
    big = tmp_path / "big"
    for name in ("data", "wal"):
        (big / name).mkdir(parents=True)
        getattr(server, name).symlink_to(big / name)
    # influxdb.conf too (/etc/influxdb/influxdb.conf -> a managed copy), named by the link
    (big / "influxdb.conf").write_text(server.conf.read_text())
    server.conf.unlink()
    server.conf.symlink_to(big / "influxdb.conf")
    server.start()
    try:
        server.create_db("metrics")
        server.write_points("metrics", 1000)
        # a link inside a dir stays a link (restore accepts relative ones)
        (server.data / "note").symlink_to("metrics")
        job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": copy}
        cli = Cli(write_config(tmp_path, server, jobs=[job]))
        rec = cli.json("backup")
        assert rec["status"] == "ok", rec["error"]
        with tarfile.open(rec["archive"]) as tar:
            kinds = {m.name: m.type for m in tar.getmembers()}
        assert kinds["data"] == tarfile.DIRTYPE and kinds["wal"] == tarfile.DIRTYPE
        assert kinds["influxdb.conf"] == tarfile.REGTYPE
        assert kinds["data/note"] == tarfile.SYMTYPE
        assert any(name.startswith("data/metrics/") for name in kinds)
        v = cli("verify", rec["id"])
        assert v.returncode == 0, v.stderr
        target = tmp_path / "look"
        r = cli("restore", rec["id"], "--target", str(target))
        assert r.returncode == 0, r.stderr
        assert not (target / "data").is_symlink() and (target / "data" / "metrics").is_dir()
        with serving(target / "influxdb.conf") as url:
            assert _counts(url) == {"metrics": 1000}
    finally:
        server.stop()


def test_a_cold_backup_holding_a_member_restore_refuses_is_not_recorded_ok(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A link to an absolute path inside the data dir would be archived as it is, and restore
    refuses such a member: the run fails, before influxd is stopped (the check after writing,
    which applies restore's rules too, would fail it after; tests/unit/store/test_archive.py)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 100)
    (sandbox.data / "elsewhere").symlink_to("/etc")
    cli = Cli(write_config(tmp_path, sandbox))
    pids = sandbox.pids()
    rec = cli.json("backup")
    assert rec["status"] == "failed"
    assert rec["error"] == (
        f"{sandbox.data / 'elsewhere'}: unsafe member 'data/elsewhere': symlink to '/etc' "
        "leaves the archive (restore takes only links that stay inside the dir); "
        "influxd not stopped"
    )
    assert sandbox.pids() == pids, "influxd was never stopped"
    assert sandbox.count("metrics") == 100
