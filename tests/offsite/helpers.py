"""Backups to send: a tar written like the cold job's (pax, dirs and files), and hot-like dirs."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

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
