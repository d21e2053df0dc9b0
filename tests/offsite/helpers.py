"""Backups to send: a tar written like the cold job's (pax, dirs and files), and hot-like dirs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from influx_backupd.offsite.files import Source, scan_dir, scan_tar
from influx_backupd.offsite.repo import Backup
from tests.offsite.conftest import Endpoint


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1_700_000_000, 1_700_000_000 + len(data) % 1000))
    return root


def make_tar(dest: Path, root: Path) -> Path:
    """A pax tar of root's children, as the cold job names them (meta/…, data/…, wal/…)."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name)
    return dest


def cold_backup(path: Path, id: str, job: str = "nightly") -> Backup:
    source: Source = scan_tar(path, sha256(path))
    record = {
        "id": id,
        "job": job,
        "mode": "cold",
        "status": "ok",
        "started_at": 1.7e9,
        "archive": str(path),
        "sha256": source.sha256,
        "bytes": source.size,
    }
    return Backup(id, job, "full", None, record, source)


def hot_backup(path: Path, id: str, *, parent: str | None = None, job: str = "hot") -> Backup:
    source = scan_dir(path)
    record = {
        "id": id,
        "job": job,
        "mode": "hot",
        "status": "ok",
        "started_at": 1.7e9,
        "archive": str(path),
        "sha256": source.sha256,
        "kind": "incremental" if parent else "full",
        "parent_id": parent,
    }
    return Backup(id, job, "incremental" if parent else "full", parent, record, source)


def age_identity(tmp_path: Path) -> tuple[Path, str]:
    """A new age identity file (age-keygen) and its recipient."""
    key = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return key, public


_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from influx_backupd.offsite.repo import Offsite
from tests.offsite.helpers import cold_backup
from influx_backupd.offsite.settings import OffsiteSettings
settings = OffsiteSettings.model_validate_json({settings!r})
key = Path({key!r}) if {key!r} else None
Offsite(settings, key_file=key).send(cold_backup(Path({archive!r}), {id!r}))
print("finished")
"""


def send_in_child(
    settings: Any, archive: Path, id: str, key_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """A process that sends a cold backup of archive (for tests that kill it midway)."""
    code = _CHILD.format(
        root=str(Path(__file__).parents[2]),
        settings=settings.model_dump_json(),
        key=str(key_file or ""),
        archive=str(archive),
        id=id,
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def offsite_section(endpoint: Endpoint, **extra: object) -> str:
    """An [offsite] section for a config file, pointing at a test endpoint."""
    values: dict[str, object] = {
        "bucket": endpoint.bucket,
        "prefix": "host-a",
        "endpoint_url": endpoint.url,
        "credentials_file": str(endpoint.credentials),
        "part_size": "5MiB",
        "retries": 2,
    }
    values.update(extra)
    return "\n[offsite]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
