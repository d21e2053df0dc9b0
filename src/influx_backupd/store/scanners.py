"""Reading a hot backup back: the 0.9 snapshot tar and the 1.x -portable dir, each against its own
manifest (sizes, gzip ends, sha256 of every file). Used by the hot job, verify and restore alike."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tarfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from influx_backupd.core.atomic import OURS_LIMIT, read_small
from influx_backupd.core.errors import CheckFailed
from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.names import INFLUX_NAME_RULE, influx_name_ok
from influx_backupd.store.archive import CHUNK, MemberCheck, UnsafeArchive
from influx_backupd.store.formats.meta import meta_problem
from influx_backupd.store.formats.tarinfo import CheckedTarInfo

MAX_SIZE = 2**63 - 1  # no file is larger; a manifest that says so lies


def is_increment_09(path: Path) -> bool:
    """0.9's tool names its increments PATH.0, PATH.1, …: without a record, the numeric suffix
    is the only sign that a snapshot file is one."""
    return path.suffix[1:].isdigit()


def listed_size(entry: dict[str, Any], where: object) -> int:
    """A manifest entry's size: a whole number of bytes, else CheckFailed naming the manifest
    (never int()'s ValueError, TypeError or OverflowError)."""
    size = entry.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        name = entry.get("fileName", entry.get("name"))
        raise CheckFailed(
            f"hot.check: {where}: the size of {name!r:.80} is {size!r:.40}, not a whole "
            "number of bytes"
        )
    return size


@dataclass
class Scan:
    """What a read-back of one hot backup found."""

    bytes: int
    files: int  # files on disk (1.x dir) or files in the snapshot's manifest (0.9)
    sha256: str
    manifest: dict[str, Any] = field(default_factory=dict)
    # 1.x dir: sha256 of each file by name (kept in the record, so verify names a changed file)
    file_sha256: dict[str, str] = field(default_factory=dict)


def changed_files(scan: Scan, recorded: object) -> list[str] | None:
    """The files of a 1.x hot backup whose sha256 differs from the recorded one (each with both
    sha256s), named; None when the record keeps no sha256 per file (written before they were)."""
    if not isinstance(recorded, dict) or not scan.file_sha256:
        return None
    return [
        f"{name} (sha256 {scan.file_sha256.get(name, 'missing')}, recorded "
        f"{recorded.get(name, 'none')})"
        for name in sorted(set(recorded) | set(scan.file_sha256))
        if recorded.get(name) != scan.file_sha256.get(name)
    ]


class _Hashing:
    """Read-through that hashes and counts every byte read."""

    def __init__(self, fh: BinaryIO, digest: Any | None) -> None:
        self.fh = fh
        self.digest = digest
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        if self.digest is not None:
            self.digest.update(data)
        self.bytes += len(data)
        return data


def _read_exactly(stream: Any, size: int, what: str) -> None:
    left = size
    while left > 0:
        chunk = stream.read(min(CHUNK, left))
        if not chunk:
            raise CheckFailed(f"hot.check: {what} is truncated")
        left -= len(chunk)


def scan_snapshot09(path: Path, *, incremental: bool) -> Scan:
    """Read a 0.9 snapshot once: sha256 of the file, manifest first, every listed file present.

    The manifest (the first member, JSON {"files": [{"name", "size", ...}]}) must list exactly the
    other members, with their sizes; a full must hold `meta`. An increment may list nothing (no
    change since the snapshots before it).
    """
    digest = hashlib.sha256()
    seen: dict[str, int] = {}
    manifest: dict[str, Any] = {}
    try:
        with open(path, "rb") as raw:
            reader = _Hashing(raw, digest)
            with tarfile.open(fileobj=reader, mode="r|", tarinfo=CheckedTarInfo) as tar:  # type: ignore[call-overload]
                check = MemberCheck(None)  # the same check as restore's
                for index, info in enumerate(tar):
                    try:
                        check(info)
                    except UnsafeArchive as exc:
                        raise CheckFailed(f"hot.check: {path}: {exc}") from None
                    if info.issparse():  # influxd 0.9 writes none; its holes would be read
                        raise CheckFailed(
                            f"hot.check: {path}: member {info.name!r} is a sparse file, "
                            "which a 0.9 snapshot never holds"
                        )
                    if index == 0:
                        if info.name != "manifest" or not info.isreg():
                            raise CheckFailed(
                                f"hot.check: {path}: first member is {info.name!r}, not the manifest"
                            )
                        if info.size > OURS_LIMIT:  # read whole: memory, not a check
                            raise CheckFailed(
                                f"hot.check: {path}: its manifest is {info.size} bytes, more "
                                "than a manifest may be"
                            )
                        stream = tar.extractfile(info)
                        assert stream is not None
                        manifest = _manifest_json(stream.read(), f"{path}: manifest")
                        continue
                    if not info.isreg():
                        continue
                    stream = tar.extractfile(info)
                    assert stream is not None
                    _read_exactly(stream, info.size, f"{path}: member {info.name!r}")
                    seen[info.name] = info.size
            while reader.read(CHUNK):
                pass
    except FileNotFoundError:
        raise CheckFailed(f"hot.check: {path} does not exist") from None
    except tarfile.TarError as exc:
        raise CheckFailed(f"hot.check: {path}: not a readable snapshot ({exc})") from None
    files = manifest.get("files")
    if not isinstance(files, list):
        raise CheckFailed(f"hot.check: {path}: manifest has no files list")
    listed: dict[str, int] = {}
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise CheckFailed(f"hot.check: {path}: manifest entry without a name: {entry!r}")
        listed[entry["name"]] = listed_size(entry, f"{path}: manifest")
    for name, size in listed.items():
        if name not in seen:
            raise CheckFailed(f"hot.check: {path}: manifest lists {name!r}, not in the snapshot")
        if seen[name] != size:
            raise CheckFailed(
                f"hot.check: {path}: {name!r} is {seen[name]} bytes, manifest says {size}"
            )
    extra = sorted(set(seen) - set(listed))
    if extra:
        raise CheckFailed(
            f"hot.check: {path}: {extra[0]!r} is in the snapshot, not in its manifest"
        )
    if not incremental and "meta" not in listed:
        # 0.9 names its increments PATH.N: one given without its full beside it
        hint = (
            f" (by its name an increment of {path.stem}, which is not beside it: an increment "
            "restores only on top of its full)"
            if is_increment_09(path)
            else ""
        )
        raise CheckFailed(f"hot.check: {path}: a full snapshot without meta{hint}")
    return Scan(bytes=reader.bytes, files=len(listed), sha256=digest.hexdigest(), manifest=manifest)


def _manifest_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = loads_json(data)
    except ValueError as exc:
        raise CheckFailed(f"hot.check: {what} is not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise CheckFailed(f"hot.check: {what} is not a JSON object")
    return parsed


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of one protobuf message: an int for a varint or a
    fixed-width field, bytes for a length-delimited one. Raises ValueError."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(data):
                raise ValueError("field runs past the end of the file")
            yield number, int.from_bytes(data[pos : pos + width], "little")
            pos += width
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("field runs past the end of the file")
            yield number, data[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


def portable_meta_store(data: bytes) -> bytes:
    """The meta store inside a 1.x portable .meta file: protobuf PortableData {1: bytes Data,
    2: uint64 MaxNodeID}. Raises ValueError."""
    stores = [v for number, v in _fields(data) if number == 1 and isinstance(v, bytes)]
    if not stores:
        raise ValueError("no meta store data")
    return stores[-1]


def portable_meta_size(data: bytes) -> int:
    """Length of the meta store inside a 1.x portable .meta file (the manifest's meta.size)."""
    return len(portable_meta_store(data))


def portable_meta_databases(data: bytes) -> set[str]:
    """The databases a 1.x portable .meta file's meta store defines, with or without shards:
    Data (influxdb's meta.proto) {5: repeated DatabaseInfo}; DatabaseInfo {1: string Name}.
    Raises ValueError."""
    names: set[str] = set()
    for number, database in _fields(portable_meta_store(data)):
        if number == 5 and isinstance(database, bytes):
            for field, name in _fields(database):
                if field == 1 and isinstance(name, bytes):
                    names.add(name.decode("utf-8", "replace"))
    return names


def portable_meta_cqs(data: bytes) -> list[tuple[str, str, str]]:
    """The continuous queries a 1.x portable .meta file's meta store defines, as (database,
    name, statement): DatabaseInfo {1: Name, 4: repeated ContinuousQueryInfo {1: Name,
    2: Query}}, Query the whole CREATE CONTINUOUS QUERY statement as influxd normalized it.
    `influxd restore -portable` restores none of them. Raises ValueError."""
    found: list[tuple[str, str, str]] = []
    for number, database in _fields(portable_meta_store(data)):
        if number != 5 or not isinstance(database, bytes):
            continue
        name, queries = "", []
        for number_in, value in _fields(database):
            if number_in == 1 and isinstance(value, bytes):
                name = value.decode("utf-8", "replace")
            elif number_in == 4 and isinstance(value, bytes):
                cq = {f: v for f, v in _fields(value) if isinstance(v, bytes)}
                queries.append(
                    (cq.get(1, b"").decode("utf-8", "replace"), cq.get(2, b"").decode("utf-8"))
                )
        found += [(name, cq_name, statement) for cq_name, statement in queries]
    return found


@dataclass(frozen=True)
class ShardSpan:
    """A shard of a portable meta: its database, retention policy and group time range
    (nanoseconds, end exclusive)."""

    database: str
    policy: str
    start: int
    end: int


@dataclass(frozen=True)
class MetaShape:
    databases: frozenset[str]
    shards: dict[int, ShardSpan]


def _signed(value: int) -> int:
    """A protobuf int64 varint (two's complement in 64 bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: int | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def meta_shape(data: bytes, *, deleted: bool = False) -> MetaShape:
    """The databases and live shards a 1.x portable .meta file defines (influxdb's meta.proto:
    Data {5: DatabaseInfo}; DatabaseInfo {1: Name, 3: RetentionPolicyInfo}; RetentionPolicyInfo
    {1: Name, 5: ShardGroupInfo}; ShardGroupInfo {2: StartTime, 3: EndTime, 4: DeletedAt,
    5: ShardInfo}; ShardInfo {1: ID}). A group with DeletedAt set is gone, unless `deleted`
    (a backup may hold a shard its server was deleting). Raises ValueError."""
    databases: set[str] = set()
    shards: dict[int, ShardSpan] = {}
    for number, db in _fields(portable_meta_store(data)):
        if number != 5 or not isinstance(db, bytes):
            continue
        db_fields = list(_fields(db))
        name = next((_text(v) for n, v in db_fields if n == 1), "")
        databases.add(name)
        for rp in (v for n, v in db_fields if n == 3 and isinstance(v, bytes)):
            rp_fields = list(_fields(rp))
            policy = next((_text(v) for n, v in rp_fields if n == 1), "")
            for group in (v for n, v in rp_fields if n == 5 and isinstance(v, bytes)):
                ints = {n: _signed(v) for n, v in _fields(group) if isinstance(v, int)}
                if ints.get(4, 0) != 0 and not deleted:
                    continue
                span = ShardSpan(name, policy, ints.get(2, 0), ints.get(3, 0))
                for shard in (v for n, v in _fields(group) if n == 5):
                    if isinstance(shard, bytes):
                        sid = next((v for n, v in _fields(shard) if n == 1), None)
                        if isinstance(sid, int):
                            shards[sid] = span
    return MetaShape(frozenset(databases), shards)


def shard_entry_problem(entry: dict[str, Any], shape: MetaShape | None) -> str | None:
    """What is wrong with a portable manifest's shard entry (None: nothing): its database or
    retention policy not a name influxd takes (one path element), its shardID not a shard id,
    or a shard the backup's meta (`shape`, deleted groups included) does not place where the
    entry says. `influxd restore -portable` uploads a shard only into the meta's shard of that
    id: one the meta does not hold is silently not restored (its database served empty)."""
    database, policy, sid = entry.get("database"), entry.get("policy"), entry.get("shardID")
    if not influx_name_ok(database) or not influx_name_ok(policy):
        return (
            f"shard entry names database {database!r:.100} / retention policy {policy!r:.100}: "
            + INFLUX_NAME_RULE
        )
    if not isinstance(sid, int) or isinstance(sid, bool) or sid < 1:
        return f"shard entry of {database}.{policy} has shardID {sid!r:.50}, not a shard id"
    if shape is None:
        return None
    span = shape.shards.get(sid)
    if span is None:
        return (
            f"shard {sid} ({database}.{policy}) is in no shard group of the backup's meta: "
            "influxd restore would not restore it"
        )
    if (span.database, span.policy) != (database, policy):
        return (
            f"the manifest puts shard {sid} in {database}.{policy}, the backup's meta in "
            f"{span.database}.{span.policy}"
        )
    return None


GZIP_MAGIC = b"\x1f\x8b\x08"  # gzip id bytes and CM=8 (deflate), the only method gzip defines


@dataclass(frozen=True)
class FileDigest:
    """sha256 of one file, taken while the tool wrote it (Follower), and the file's stat then."""

    size: int
    sha256: str
    stat: tuple[
        int, int, int, int, int
    ]  # file_signature() taken just before the last bytes were read


def file_signature(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def scan_portable(
    directory: Path, *, deep: bool = False, digests: dict[str, FileDigest] | None = None
) -> Scan:
    """Read a 1.x portable backup dir back against its manifest; sha256 of every file.

    The one *.manifest must name a .meta file whose meta store is meta.size bytes, and shard files
    (.tar.gz) that unpack to exactly their listed size; no other file may be there.

    How a shard's unpacked size is known (issue 6 measured both, docs/performance.md):
    - deep=False (the hot job, restore's pre-check): from the gzip trailer. Its last 4 bytes are
      ISIZE, the unpacked size mod 2^32, so reading 18 bytes (header magic + trailer) checks the
      size without decompressing. influxd writes each shard as one gzip member; if the trailer
      disagrees we gunzip after all before failing, so a multi-member file is never refused on a
      trailer alone. Gunzipping 2 GB took about as long as the tool's whole run.
    - deep=True (`influx-backupd verify`): every shard gunzipped, its CRC32 and length checked.
    The catalog's sha256 (below) is what shows later that a backup is still the bytes checked here.

    sha256 of the directory = sha256 over the lines "NAME\\0SIZE\\0SHA256HEX\\n" of every
    file, sorted by name (SIZE in decimal, SHA256HEX of the file's bytes). digests (from
    Follower) gives sha256s already taken; one is used only when the file's device, inode, size,
    mtime_ns and ctime_ns are still those the follower saw when it read the file's last bytes; any
    other file is read and hashed here. Either way the result is the same digest.
    """
    if not directory.is_dir():
        raise CheckFailed(f"hot.check: {directory} is not a directory")
    names = sorted(p.name for p in directory.iterdir())
    manifests = [n for n in names if n.endswith(".manifest")]
    if len(manifests) != 1:
        raise CheckFailed(
            f"hot.check: {directory}: {len(manifests)} *.manifest files, expected exactly 1"
        )
    where = directory / manifests[0]
    try:
        text = read_small(where)
    except OSError as exc:  # a FIFO or a device put there: never waited on nor read for ever
        raise CheckFailed(f"hot.check: {where}: cannot be read ({exc.strerror or exc})") from None
    manifest = _manifest_json(text, str(where))
    meta = manifest.get("meta")
    files = manifest.get("files")
    if not isinstance(meta, dict) or not isinstance(files, list):
        raise CheckFailed(f"hot.check: {where}: no meta entry or files list")
    expected: dict[str, tuple[str, int]] = {}  # file name → (kind, listed size)
    sids: set[int] = set()
    for kind, entry in [("meta", meta)] + [("shard", f) for f in files]:
        if not isinstance(entry, dict) or not isinstance(entry.get("fileName"), str):
            raise CheckFailed(f"hot.check: {where}: an entry without fileName: {entry!r:.200}")
        name = entry["fileName"]
        if "/" in name or "\0" in name or name in ("", ".", ".."):
            raise CheckFailed(f"hot.check: {where}: names unsafe file {name!r:.200}")
        if name in expected:
            raise CheckFailed(f"hot.check: {where}: lists {name!r:.200} twice")
        if kind == "shard":
            problem = shard_entry_problem(entry, None)
            if problem is None and entry["shardID"] in sids:
                problem = f"lists shard {entry['shardID']} twice"
            if problem is not None:
                raise CheckFailed(f"hot.check: {where}: {problem}")
            sids.add(entry["shardID"])
        expected[name] = (kind, listed_size(entry, where))
    for name in expected:
        if name not in names:
            raise CheckFailed(
                f"hot.check: {directory}: manifest lists {name}, which does not exist"
            )
    for name in names:
        if name not in expected and name != manifests[0]:
            raise CheckFailed(f"hot.check: {directory}: {name} is not in the manifest")

    listing = hashlib.sha256()
    per_file: dict[str, str] = {}
    total = 0
    shape = MetaShape(frozenset(), {})
    for name in names:
        path = directory / name
        if not path.is_file() or path.is_symlink():
            raise CheckFailed(f"hot.check: {path} is not a regular file")
        kind, listed = expected.get(name, ("manifest", -1))
        with open(path, "rb") as raw:
            st = os.fstat(raw.fileno())
            known = (digests or {}).get(name)
            if known is not None and known.stat != file_signature(st):
                known = None
            digest = hashlib.sha256()
            reader = _Hashing(raw, None if known else digest)
            if kind == "shard":
                if deep:
                    members = _check_gunzipped(reader, path, listed)
                    if members is not None:
                        _remember(file_signature(st), members)
                else:
                    _check_gzip_ends(raw, st.st_size, path, listed)
            elif kind == "meta":
                if st.st_size > OURS_LIMIT:  # read whole: memory, not a check
                    raise CheckFailed(
                        f"hot.check: {path}: {st.st_size} bytes, more than a meta file may be"
                    )
                try:
                    meta_bytes = reader.read()
                    inner = portable_meta_size(meta_bytes)
                    shape = meta_shape(meta_bytes, deleted=True)
                    problem = meta_problem(portable_meta_store(meta_bytes))
                except ValueError as exc:
                    raise CheckFailed(
                        f"hot.check: {path}: not a portable meta file ({exc})"
                    ) from None
                if problem is not None:
                    raise CheckFailed(f"hot.check: {path}: meta store: {problem}")
                if inner != listed:
                    raise CheckFailed(
                        f"hot.check: {path}: meta store is {inner} bytes, manifest says {listed}"
                    )
            if known is None:
                while reader.read(CHUNK):
                    pass
        size, hexdigest = (
            (known.size, known.sha256) if known else (reader.bytes, digest.hexdigest())
        )
        total += size
        per_file[name] = hexdigest
        listing.update(f"{name}\0{size}\0{hexdigest}\n".encode())
    for entry in files:  # the meta was read above: every listed file exists, meta included
        problem = shard_entry_problem(entry, shape)
        if problem is not None:
            raise CheckFailed(f"hot.check: {where}: {problem}")
    return Scan(
        bytes=total,
        files=len(names),
        sha256=listing.hexdigest(),
        manifest=manifest,
        file_sha256=per_file,
    )


def _check_gzip_ends(raw: BinaryIO, size: int, path: Path, listed: int) -> None:
    """Header magic and trailer ISIZE against the manifest, without moving raw's position."""
    fd = raw.fileno()
    if size < 18 or os.pread(fd, 3, 0) != GZIP_MAGIC:
        raise CheckFailed(f"hot.check: {path}: not a gzip file ({size} bytes, no gzip header)")
    isize = int.from_bytes(os.pread(fd, 4, size - 4), "little")
    if isize == listed % 2**32:
        return
    # Several gzip members would carry only the last one's size: gunzip decides.
    try:
        with open(path, "rb") as again:
            _check_gunzipped(_Hashing(again, None), path, listed)
    except CheckFailed as exc:
        raise CheckFailed(
            f"hot.check: {path}: gzip trailer says {isize} bytes unpacked (mod 2^32), manifest "
            f"says {listed}; gunzip: {str(exc).removeprefix(f'hot.check: {path}: ')}"
        ) from None


class _Counted:
    """A reader that counts the bytes read through it."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner, self.count = inner, 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.count += len(data)
        return data


# What deep checks saw in shard tars: file signature -> [(member name, size)], regular files.
# The restore's chain merge (restore/merge.py) plans from these instead of gunzipping every
# link a second time; keyed by device, inode, size, mtime and ctime, so never stale.
# At most _MEMBERS_MAX shard files, the oldest remembered dropped first: a daemon lives for
# months, its deep checks read every new link's shards, and pruned links never come back.
_MEMBERS: OrderedDict[tuple[int, int, int, int, int], list[tuple[str, int]]] = OrderedDict()
_MEMBERS_MAX = 4096


def _remember(signature: tuple[int, int, int, int, int], members: list[tuple[str, int]]) -> None:
    _MEMBERS[signature] = members
    _MEMBERS.move_to_end(signature)
    while len(_MEMBERS) > _MEMBERS_MAX:
        _MEMBERS.popitem(last=False)


def members_seen(path: Path) -> list[tuple[str, int]] | None:
    """The regular files of a shard tar.gz as a deep check in this process read them, if it
    did and the file has not changed since; else None."""
    try:
        return _MEMBERS.get(file_signature(path.stat()))
    except OSError:
        return None


def shard_members(path: Path) -> list[tuple[str, int]]:
    """The regular files of a shard tar.gz: as a deep check in this process saw them, else
    read once (and remembered). Raises OSError, tarfile.TarError."""
    seen = members_seen(path)
    if seen is None:
        with tarfile.open(path, "r|gz", bufsize=CHUNK, tarinfo=CheckedTarInfo) as tf:
            seen = [(m.name, m.size) for m in tf if m.isfile()]
        remember_members(path, seen)
    return seen


def remember_members(path: Path, members: list[tuple[str, int]]) -> None:
    """What a shard tar.gz this process has just written holds, as a deep check would have
    seen it (valid while the file is not changed)."""
    with contextlib.suppress(OSError):
        _remember(file_signature(path.stat()), list(members))


def _check_gunzipped(reader: _Hashing, path: Path, listed: int) -> list[tuple[str, int]] | None:
    """Gunzip a shard file whole against its listed size; returns its tar's regular files
    (name, size), read from the headers on the way, or None when the tar cannot be parsed
    (the check is of the gzip: a tar problem is the restore tool's to report)."""
    members: list[tuple[str, int]] | None = None
    try:
        with gzip.GzipFile(fileobj=reader, mode="rb") as gz:  # type: ignore[call-overload]
            counted = _Counted(gz)
            try:
                with tarfile.open(
                    fileobj=counted, mode="r|", bufsize=CHUNK, tarinfo=CheckedTarInfo
                ) as tf:  # type: ignore[call-overload]
                    members = [(m.name, m.size) for m in tf if m.isfile()]
            except tarfile.TarError:
                members = None
            while counted.read(CHUNK):
                pass
            size = counted.count
    except (OSError, EOFError, zlib.error) as exc:
        raise CheckFailed(f"hot.check: {path}: damaged gzip ({exc})") from None
    if size != listed:
        raise CheckFailed(f"hot.check: {path}: {size} bytes unpacked, manifest says {listed}")
    return members
