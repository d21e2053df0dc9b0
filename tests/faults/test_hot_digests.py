"""Class 8: a changed byte in a hot backup is named: the record and the record beside the backup
keep a sha256 per file, and verify names the file (real influxd, real `influxd backup`, real CLI).

The byte changed is one in a shard's gzip header (its MTIME): the file still unpacks to the same
data with a valid CRC, so only the sha256 can tell, and it must say which file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import FaultResult, run_cli


def _flip_gzip_mtime(path: Path) -> None:
    data = bytearray(path.read_bytes())
    assert data[:3] == b"\x1f\x8b\x08"
    data[4] ^= 0x01  # MTIME's low byte: not covered by the gzip CRC
    path.write_bytes(bytes(data))


@pytest.mark.fault("8", "a changed byte in a hot backup", "gzip header byte of one shard")
def test_verify_names_the_changed_file_of_a_hot_backup(
    tmp_path: Path, sandbox: Sandbox, fault_result: FaultResult
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 20_000)
    job = {"name": "hourly", "schedule": "0 * * * *", "mode": "hot"}
    config = write_config(tmp_path, sandbox, jobs=[job])
    done = run_cli(config, "backup", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    backup = Path(record["archive"])
    sidecar = backup.with_name(backup.name + ".json")
    files = sorted(p.name for p in backup.iterdir())
    expected = {name: hashlib.sha256((backup / name).read_bytes()).hexdigest() for name in files}
    # kept in the catalog's record and in the record beside the backup
    assert record["extra"]["file_sha256"] == expected
    assert json.loads(sidecar.read_text())["extra"]["file_sha256"] == expected

    # Another host: no catalog, only the storage dir (the record beside the backup).
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(config.read_text().replace(str(tmp_path / "state"), str(tmp_path / "s2")))

    # A record written before per-file sha256s were kept is still read.
    full = json.loads(sidecar.read_text())
    old = json.loads(sidecar.read_text())
    del old["extra"]["file_sha256"]
    sidecar.write_text(json.dumps(old))
    ok = run_cli(elsewhere, "verify", str(backup))
    assert ok.returncode == 0, ok.stdout + ok.stderr[-3000:]

    shard = next(name for name in files if name.endswith(".tar.gz"))
    _flip_gzip_mtime(backup / shard)
    vague = run_cli(elsewhere, "verify", str(backup))
    assert vague.returncode == 1, vague.stdout
    assert "Traceback" not in vague.stderr
    assert "changed" in vague.stdout

    sidecar.write_text(json.dumps(full))
    for cfg, target in ((config, record["id"]), (elsewhere, str(backup))):
        failed = run_cli(cfg, "verify", target)
        assert failed.returncode == 1, failed.stdout + failed.stderr[-2000:]
        assert "Traceback" not in failed.stderr
        errors = [ln for ln in failed.stdout.splitlines() if "error" in ln]
        assert any(shard in ln for ln in errors), failed.stdout
        others = [n for n in files if n != shard]
        assert not any(n in ln for ln in errors for n in others), "only the changed file is named"
    # restore refuses it before anything is stopped, naming the file too
    pid = sandbox.pids()
    refused = run_cli(config, "restore", record["id"], "--yes")
    assert refused.returncode == 1, refused.stdout + refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert shard in refused.stderr and "changed since the backup" in refused.stderr
    assert sandbox.pids() == pid, "influxd was not stopped"
    # nothing lost: verify only reads (the damage is the test's own)
    fault_result.lost(points=20_000 - sandbox.count("metrics"), archives=0)
    assert sandbox.count("metrics") == 20_000
