"""One manifest per backup: what it is (id, job, kind, chain parent, run record) and its files.

Stored as gzip'd JSON at manifests/<job>/<id>.json.gz, or age-encrypted at …json.gz.age.
It is written after every object it names is in the bucket: a manifest there means the backup
is complete off-site.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from influx_backupd.offsite.errors import OffsiteError
from influx_backupd.offsite.files import FileEntry, Layout, Source

FORMAT = 1  # a manifest without chunked files: what every version reads
CHUNKED = 2  # a manifest with chunked files (chunks, chunk_size): older versions refuse it
_NAME = re.compile(r"^manifests/([^/]+)/([^/]+)\.json\.gz(\.age)?\Z")


@dataclass
class ManifestFile:
    path: str
    type: str
    size: int
    mode: int
    mtime: float
    sha256: str
    object: str = ""  # object name under objects/ ("" for dirs and symlinks)
    link: str = ""
    lead: str = ""  # base64 of the tar bytes before this member's data (byte-for-byte rebuild)
    # a large encrypted file: its objects in order, each an age file of chunk_size bytes of it
    # (the last one shorter); object is "" then
    chunks: list[str] = field(default_factory=list)
    chunk_size: int = 0

    def objects(self) -> list[str]:
        return self.chunks or ([self.object] if self.object else [])


@dataclass
class Manifest:
    id: str
    job: str
    kind: str  # full | incremental
    parent: str | None  # the chain parent's backup id
    layout: Layout  # tar (cold archive) or dir (hot backup dir)
    name: str  # the archive's file name or the dir's name in the storage dir
    sha256: str  # of the archive, or the dir's listing digest (as in the run record)
    size: int  # of the archive, or of the dir's files together
    rebuild: Literal["bytes", "tree"]
    record: dict[str, Any]
    files: list[ManifestFile]
    trailer: str = ""  # base64, tar only
    key_id: str | None = None  # the name key the object names were made with
    encrypted: bool = False
    format: int = FORMAT
    sent_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def started_at(self) -> float:
        return float(self.record.get("started_at") or 0.0)

    def objects(self) -> set[str]:
        return {name for f in self.files for name in f.objects()}

    def entries(self) -> list[FileEntry]:
        return [
            FileEntry(
                f.path,
                f.size,
                f.mode,
                f.mtime,
                f.sha256,
                f.type,  # type: ignore[arg-type]
                f.link,
                0,
                base64.b64decode(f.lead),
            )
            for f in self.files
        ]

    def encode(self) -> bytes:
        raw = asdict(self)
        for f in raw["files"]:
            if not f["chunks"]:  # so that a manifest without chunks reads as format 1 did
                del f["chunks"], f["chunk_size"]
        raw["format"] = CHUNKED if any(f.chunks for f in self.files) else FORMAT
        text = json.dumps(raw, separators=(",", ":"), sort_keys=True)
        return gzip.compress(text.encode(), compresslevel=6, mtime=0)

    @classmethod
    def decode(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(gzip.decompress(data))
            if raw.get("format") not in (FORMAT, CHUNKED):
                raise OffsiteError(f"{where}: manifest format {raw.get('format')!r} is unknown")
            raw["files"] = [ManifestFile(**f) for f in raw["files"]]
            return cls(**raw)
        except OffsiteError:
            raise
        except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise OffsiteError(f"{where}: not a readable manifest ({type(exc).__name__})") from None


def build(
    *,
    id: str,
    job: str,
    kind: str,
    parent: str | None,
    record: dict[str, Any],
    source: Source,
    names: dict[str, str],
    key_id: str | None,
    sent_at: float,
    chunks: dict[str, tuple[int, list[str]]] | None = None,
) -> Manifest:
    """names: sha256 → object name; chunks: sha256 → (chunk_size, chunk object names) of the
    files sent as chunks."""
    chunks = chunks or {}
    files = [
        ManifestFile(
            path=e.path,
            type=e.type,
            size=e.size,
            mode=e.mode,
            mtime=e.mtime,
            sha256=e.sha256,
            object=names.get(e.sha256, "") if e.type == "file" else "",
            link=e.link,
            lead=base64.b64encode(e.lead).decode() if e.lead else "",
            chunks=list(chunks[e.sha256][1]) if e.type == "file" and e.sha256 in chunks else [],
            chunk_size=chunks[e.sha256][0] if e.type == "file" and e.sha256 in chunks else 0,
        )
        for e in source.entries
    ]
    return Manifest(
        id=id,
        job=job,
        kind=kind,
        parent=parent,
        layout=source.layout,
        name=source.path.name,
        sha256=source.sha256,
        size=source.size,
        rebuild=source.rebuild,
        record=record,
        files=files,
        trailer=base64.b64encode(source.trailer).decode(),
        key_id=key_id,
        encrypted=key_id is not None,
        sent_at=sent_at,
    )


def manifest_name(job: str, id: str, encrypted: bool) -> str:
    return f"manifests/{job}/{id}.json.gz" + (".age" if encrypted else "")


def parse_name(rel: str) -> tuple[str, str, bool] | None:
    """(job, id, encrypted) from a key relative to the prefix, or None."""
    match = _NAME.match(rel)
    if not match:
        return None
    return match.group(1), match.group(2), bool(match.group(3))


def object_name(name: str) -> str:
    return f"objects/{name[:2]}/{name}"
