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
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.names import BACKUP_ID, FILE_NAME, FILE_NAME_RULE, JOB_NAME
from influx_backupd.core.shapes import shape_problem
from influx_backupd.offsite.errors import BadManifest
from influx_backupd.offsite.files import FileEntry, Layout, Source
from influx_backupd.store import layout
from influx_backupd.store.record import LAST_TIME, RunRecord

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
        """A manifest read from a bucket: anyone with the bucket's credentials may have written
        it, so every field is checked before anything uses it (a name is a path in the storage
        dir, prune deletes it) and its size is bounded (gzip's ratio reaches 1000:1)."""
        if len(data) > MAX_STORED:
            raise BadManifest(f"{where}: {len(data)} bytes, more than a manifest may be")
        try:
            unpacker = zlib.decompressobj(16 + zlib.MAX_WBITS)
            text = unpacker.decompress(data, MAX_TEXT + 1)
            if len(text) > MAX_TEXT:
                raise BadManifest(
                    f"{where}: more than {MAX_TEXT >> 20} MiB unpacked; not read as a manifest"
                )
            if not unpacker.eof:
                raise BadManifest(f"{where}: not a readable manifest (cut short)")
            raw = loads_json(text)
        except zlib.error:
            raise BadManifest(f"{where}: not a readable manifest (not gzip)") from None
        except ValueError as exc:
            raise BadManifest(f"{where}: not a readable manifest ({type(exc).__name__})") from None
        wrong = manifest_problem(raw)
        if wrong is not None:
            raise BadManifest(f"{where}: not a manifest of ours: {wrong}")
        raw["files"] = [ManifestFile(**f) for f in raw["files"]]
        return cls(**raw)


# A manifest as stored (gzip'd, maybe encrypted) and unpacked: about 300 bytes of JSON per file,
# so 64 MiB is some 200,000 files, more than a server's dirs hold
MAX_STORED = 64 << 20
MAX_TEXT = 64 << 20
MAX_LEAD = 1 << 20  # a tar member's header (a long name's PAX records included)
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
KINDS = ("full", "incremental")
LAYOUTS = ("tar", "dir")
REBUILDS = ("bytes", "tree")
FILE_TYPES = ("file", "dir", "symlink")


def manifest_problem(raw: object) -> str | None:
    """Why raw (a manifest's JSON) is no manifest this tool wrote; None when it is one."""
    if isinstance(raw, dict) and raw.get("format") not in (FORMAT, CHUNKED):
        return f"format {raw.get('format')!r:.20} is unknown"
    wrong = shape_problem(Manifest, raw, skip=frozenset({"files"}), strict=True)
    if wrong is not None:
        return wrong
    assert isinstance(raw, dict)
    checks: list[tuple[bool, str]] = [
        (bool(BACKUP_ID.match(raw["id"])), f"id {raw['id']!r:.60} is no backup id"),
        (bool(JOB_NAME.match(raw["job"])), f"job {raw['job']!r:.60} is no job name"),
        (raw["kind"] in KINDS, f"kind {raw['kind']!r:.40} is not one of {', '.join(KINDS)}"),
        (
            raw["parent"] is None or bool(BACKUP_ID.match(raw["parent"])),
            f"parent {raw['parent']!r:.60} is no backup id",
        ),
        (
            raw["parent"] != raw["id"],
            f"backup {raw['id']} is its own parent (a chain that never reaches its full)",
        ),
        (raw["layout"] in LAYOUTS, f"layout {raw['layout']!r:.40} is not tar or dir"),
        (raw["rebuild"] in REBUILDS, f"rebuild {raw['rebuild']!r:.40} is not bytes or tree"),
        (
            bool(FILE_NAME.match(raw["name"])),
            f"name {raw['name']!r:.60} is no file name in the storage dir ({FILE_NAME_RULE})",
        ),
        (bool(_HEX64.match(raw["sha256"])), "sha256 is not 64 hex digits"),
        (_count(raw["size"]), f"size {raw['size']!r:.40} is no byte count"),
        (_base64(raw.get("trailer", ""), MAX_LEAD), "trailer is not base64 of a tar's end"),
        (isinstance(raw["files"], list), "files is not a list"),
    ]
    for ok, why in checks:
        if not ok:
            return why
    record = raw["record"]
    wrong = RunRecord.problem(record)
    if wrong is not None:
        return f"record: {wrong}"
    if record["id"] != raw["id"] or record["job"] != raw["job"]:
        return (
            f"its record is of backup {record['id']!r:.60} of job {record['job']!r:.60}, "
            f"not {raw['id']} of {raw['job']}"
        )
    wrong = _agreement_problem(raw, record) or layout.backup_name_problem(
        raw["name"],
        raw["job"],
        raw["id"],
        mode=record["mode"],
        snapshot=record["mode"] == "hot" and raw["layout"] == "tar",
        kind=raw["kind"],
    )
    if wrong is not None:
        return wrong
    for index, entry in enumerate(raw["files"]):
        wrong = file_problem(entry)
        if wrong is not None:
            return f"files[{index}]: {wrong}"
    return tree_problem((f["path"], f["type"]) for f in raw["files"])


def _agreement_problem(raw: dict[str, Any], record: dict[str, Any]) -> str | None:
    """The manifest and its record must tell one backup: a restore picks its path from the
    record's mode and flavour and rebuilds from the manifest's layout, so a disagreement ended
    in an error about the local disk ("Is a directory"), or a chain that cannot be."""
    kind, parent, layout = raw["kind"], raw["parent"], raw["layout"]
    mode = record["mode"]
    flavour = record.get("flavour") or (record.get("extra") or {}).get("flavour")
    checks: list[tuple[bool, str]] = [
        (
            record.get("kind", "full") == kind,
            f"its record is {record.get('kind', 'full')!s:.20}, the manifest {kind}",
        ),
        (
            record.get("parent_id") == parent,
            f"its record's parent is {record.get('parent_id')}, the manifest's {parent}",
        ),
        (kind != "full" or parent is None, f"a full with a parent ({parent})"),
        (kind != "incremental" or parent is not None, "an increment without a parent"),
        (mode in ("cold", "hot"), f"mode {mode!r:.40} is not cold or hot"),
        (mode != "cold" or kind == "full", "a cold backup that is an increment"),
        (
            mode != "cold" or layout == "tar",
            f"mode cold with layout {layout} (a cold backup is one tar archive)",
        ),
        (
            mode != "hot" or flavour != "portable" or layout == "dir",
            f"a 1.x (portable) hot backup with layout {layout} (it is a dir)",
        ),
        (
            mode != "hot" or flavour != "0.9" or layout == "tar",
            f"a 0.9 hot backup with layout {layout} (it is a snapshot file)",
        ),
    ]
    for ok, why in checks:
        if not ok:
            return why
    return None


def tree_problem(entries: Iterable[tuple[str, str]]) -> str | None:
    """Two entries (path, type) that cannot both be on disk: one path twice, or a path under a
    file or symlink. Our writers make neither; a manifest that has one is not ours."""
    types: dict[tuple[str, ...], tuple[str, str]] = {}
    for path, kind in entries:
        parts = PurePosixPath(path).parts
        if parts in types:
            return f"path {path!r:.80} is listed twice"
        types[parts] = (path, kind)
    for parts, (path, _) in types.items():
        for depth in range(1, len(parts)):
            above = types.get(parts[:depth])
            if above is not None and above[1] != "dir":
                return f"path {path!r:.80} lies under the {above[1]} {above[0]!r:.80}"
    return None


def file_problem(entry: object) -> str | None:
    wrong = shape_problem(ManifestFile, entry, strict=True)
    if wrong is not None:
        return wrong
    assert isinstance(entry, dict)
    path = PurePosixPath(entry["path"])
    kind = entry["type"]
    chunks = entry.get("chunks", [])
    checks: list[tuple[bool, str]] = [
        (
            bool(entry["path"])
            and bool(path.parts)
            and "\0" not in entry["path"]
            and not path.is_absolute()
            and ".." not in path.parts,
            f"path {entry['path']!r:.80} is not a relative path inside the backup",
        ),
        (kind in FILE_TYPES, f"type {kind!r:.40} is not file, dir or symlink"),
        (_count(entry["size"]), f"size {entry['size']!r:.40} is no byte count"),
        (
            isinstance(entry["mode"], int) and 0 <= entry["mode"] <= 0o7777,
            f"mode {entry['mode']!r:.40} is no permission mode",
        ),
        (0 <= entry["mtime"] < LAST_TIME, f"mtime {entry['mtime']!r:.40} is no time"),
        (
            bool(_HEX64.match(entry["sha256"])) or (kind != "file" and not entry["sha256"]),
            "sha256 is not 64 hex digits",
        ),
        (
            entry.get("object", "") == "" or bool(_HEX64.match(entry["object"])),
            "object is no object name (64 hex digits)",
        ),
        (all(_HEX64.match(c) for c in chunks), "chunks holds a name that is no object name"),
        (
            _count(entry.get("chunk_size", 0)) and (not chunks or entry["chunk_size"] > 0),
            "chunk_size is no byte count",
        ),
        (
            kind != "file" or bool(chunks) != bool(entry.get("object")),
            "a file names neither one object nor chunks, or both",
        ),
        ("\0" not in entry.get("link", ""), "link holds a NUL"),
        (_base64(entry.get("lead", ""), MAX_LEAD), "lead is not base64 of a tar header"),
    ]
    for ok, why in checks:
        if not ok:
            return why
    return None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _base64(value: object, limit: int) -> bool:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 4:
        return False
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True


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
