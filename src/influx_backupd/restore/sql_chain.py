"""What the SQL merge of a 1.x chain (restore/hot.py, _restore_each_link) takes from each link:
the newest link's meta is the truth for which databases, retention policies (with their
durations and defaults), shard groups and shards exist, and a shard is known by its id.

influxd never gives a shard id twice: a database or retention policy dropped and created again
has new shards, and a shard group dropped (DROP SHARD, retention) or one of a dropped database
or policy is in no live group of the newest meta. So only the shards the newest meta lists are
taken from any link, each into the policy the newest meta names: the full's by files (its tars
under the newest meta, restored like a full), the increments' copied in with SELECT INTO, shard
by shard (a WHERE on the shard group's time range), measurement by measurement.

Field types are per shard in influxd 1.x, and within one shard a field's type changes only when
every series of the measurement was deleted there (DROP MEASUREMENT, DROP SERIES): a later link
holding a measurement in a shard with another type for a field than an earlier link says the
earlier link's points of it in that shard are gone, so they are not taken (else the copy fails
with "field type conflict"). Read from the links' TSM indexes, not from a server.

What the meta cannot tell (a DELETE, DROP SERIES or DROP MEASUREMENT inside a shard that still
exists, with no type change) the SQL merge cannot undo: CAVEAT says so.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from influx_backupd.core.atomic import read_small
from influx_backupd.restore.merge import link_or_symlink, manifest_of
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.formats.tsm import FOOTER_SIZE, HEADER_SIZE, BadIndex, index_entries
from influx_backupd.store.scanners import MetaShape, ShardSpan, meta_shape

CAVEAT = (
    "the chain was copied in with SELECT INTO, which follows the newest link's meta (dropped "
    "databases, retention policies and shard groups stay gone) but cannot undo a DELETE, DROP "
    "SERIES or DROP MEASUREMENT between links inside a shard that still exists: such points "
    "may be back"
)

FIELD_SEPARATOR = b"#!~#"  # tsm1: series key + separator + field name
TYPE_NAMES = ("float", "integer", "boolean", "string", "unsigned")
# A TSM file's index sits at its end; a stream through the tar keeps at most this much of the
# file's tail, and reads a larger index again by seeking (gzip: from the start of the tar).
TAIL_KEPT = 64 << 20
# A shard's tar size before gzip, as the manifest lists it: one holding no file is its 1,024-byte
# end marker or nothing (an increment lists every shard, an unchanged one so).
EMPTY_TAR = 1024


def newest_shape(directory: Path) -> MetaShape:
    """meta_shape of a portable backup dir's meta (its manifest's meta file)."""
    _, manifest = manifest_of(directory)
    return meta_shape(read_small(directory / str(manifest["meta"]["fileName"])))


# -- field types from TSM indexes ------------------------------------------------------------------


def _measurement(series_key: bytes) -> str:
    """The measurement of a series key: up to its first unescaped comma (`\\,` and `\\ ` are
    the escapes a measurement name carries)."""
    out = bytearray()
    i = 0
    while i < len(series_key):
        byte = series_key[i]
        if byte == 0x5C and i + 1 < len(series_key) and series_key[i + 1] in b", ":
            out.append(series_key[i + 1])
            i += 2
            continue
        if byte == 0x2C:
            break
        out.append(byte)
        i += 1
    return out.decode("utf-8", "replace")


def _index_fields(index: bytes, into: dict[str, dict[str, int]], what: str) -> None:
    """measurement -> field -> block type of one TSM index. Raises ValueError."""
    try:
        for entry in index_entries(io.BytesIO(index), 0, len(index)):
            series, sep, name = entry.key.partition(FIELD_SEPARATOR)
            if sep:
                fields = into.setdefault(_measurement(series), {})
                fields.setdefault(name.decode("utf-8", "replace"), entry.block_type)
    except BadIndex as bad:
        raise ValueError(f"{what}: TSM {bad}") from None


def _index_of(tail: bytes, size: int, tar: Path, name: str) -> bytes:
    """A TSM file's index from its last len(tail) bytes, or read again by seeking."""
    if size < HEADER_SIZE + FOOTER_SIZE or len(tail) < FOOTER_SIZE:
        raise ValueError(f"{tar}: {name}: too small for a TSM file")
    offset = int.from_bytes(tail[-FOOTER_SIZE:], "big")
    if not HEADER_SIZE <= offset <= size - FOOTER_SIZE:
        raise ValueError(f"{tar}: {name}: index offset {offset} outside the file")
    kept_from = size - len(tail)
    if offset >= kept_from:
        return tail[offset - kept_from : -FOOTER_SIZE]
    with tarfile.open(
        tar, "r:gz", tarinfo=CheckedTarInfo
    ) as tf:  # an index larger than TAIL_KEPT: rare
        stream = tf.extractfile(name)
        if stream is None:
            raise ValueError(f"{tar}: {name} is not a file")
        stream.seek(offset)
        return stream.read(size - FOOTER_SIZE - offset)


def shard_fields(tar: Path) -> dict[str, dict[str, int]]:
    """measurement -> field -> TSM block type (0 float, 1 integer, 2 boolean, 3 string,
    4 unsigned) of every TSM file in one shard tar of a portable backup; one pass through it."""
    found: dict[str, dict[str, int]] = {}
    with tarfile.open(tar, "r|gz", bufsize=1 << 20, tarinfo=CheckedTarInfo) as tf:
        for member in tf:
            if not member.isfile() or not member.name.endswith(".tsm"):
                continue
            stream = tf.extractfile(member)
            assert stream is not None  # a regular file
            kept: deque[bytes] = deque()
            held = 0
            while chunk := stream.read(1 << 20):
                kept.append(chunk)
                held += len(chunk)
                while held - len(kept[0]) >= TAIL_KEPT:
                    held -= len(kept.popleft())
            what = f"{tar}: {PurePosixPath(member.name).name}"
            index = _index_of(b"".join(kept), member.size, tar, member.name)
            _index_fields(index, found, what)
    return found


# -- the plan --------------------------------------------------------------------------------------


@dataclass
class ShardCopy:
    """One shard of one link to copy with SELECT INTO: the measurements to take from it."""

    sid: int
    span: ShardSpan
    measurements: list[str]


@dataclass
class SqlPlan:
    shape: MetaShape
    base: list[int] = field(default_factory=list)  # shards of the full restored by files
    copies: list[list[ShardCopy]] = field(default_factory=list)  # per link
    superseded: list[str] = field(default_factory=list)  # "link: shard N: m (integer→float)"


def _parts(directory: Path) -> dict[int, dict[str, Any]]:
    _, manifest = manifest_of(directory)
    return {int(entry["shardID"]): entry for entry in manifest.get("files", [])}


def plan_sql(directories: list[Path]) -> SqlPlan:
    """Which shards of which link go in, and how (see the module doc). directories: the
    links' portable dirs as restored (their deletes applied), the full first."""
    shape = newest_shape(directories[-1])
    plan = SqlPlan(shape, copies=[[] for _ in directories])
    parts = [_parts(directory) for directory in directories]
    for sid, span in sorted(shape.shards.items()):
        holding = [
            number
            for number, link in enumerate(parts)
            if sid in link and int(link[sid].get("size", 0)) > EMPTY_TAR
        ]
        changed = [n for n in holding if n > 0]
        if not changed and 0 in holding:
            plan.base.append(sid)  # only the full holds it: by files, no TSM read
            continue
        fields = {n: shard_fields(directories[n] / str(parts[n][sid]["fileName"])) for n in holding}
        gone = _superseded(fields)
        if 0 in holding and not gone.get(0):
            plan.base.append(sid)
        for number in holding:
            if number == 0 and sid in plan.base:
                continue
            for m, why in sorted(gone.get(number, {}).items()):
                plan.superseded.append(f"{directories[number].name}: shard {sid}: {m} ({why})")
            taken = sorted(set(fields[number]) - set(gone.get(number, {})))
            if taken:
                plan.copies[number].append(ShardCopy(sid, span, taken))
    return plan


def _superseded(fields: dict[int, dict[str, dict[str, int]]]) -> dict[int, dict[str, str]]:
    """Per link, the measurements of one shard that a later link holds with another type for
    one of their fields (their points were deleted in between), with the change named."""
    gone: dict[int, dict[str, str]] = {}
    for number, measurements in fields.items():
        for m, types in measurements.items():
            for later in (n for n in fields if n > number):
                newer = fields[later].get(m, {})
                changed = [f for f, t in types.items() if f in newer and newer[f] != t]
                if changed:
                    f = changed[0]
                    gone.setdefault(number, {})[m] = (
                        f"field {f} {TYPE_NAMES[types[f]]}, later {TYPE_NAMES[newer[f]]}"
                    )
                    break
    return gone


def write_filtered(directory: Path, meta_from: Path, sids: list[int], out: Path) -> Path:
    """A portable backup in out (made here): meta_from's meta, and of directory's shard tars
    only sids (hard links, never copies), in the tool's manifest format."""
    out.mkdir(mode=0o700)
    manifest_path, manifest = manifest_of(directory)
    _, meta_manifest = manifest_of(meta_from)
    meta_name = str(meta_manifest["meta"]["fileName"])
    link_or_symlink(meta_from / meta_name, out / meta_name)
    wanted = set(sids)
    entries = [e for e in manifest.get("files", []) if int(e["shardID"]) in wanted]
    for entry in entries:
        link_or_symlink(directory / str(entry["fileName"]), out / str(entry["fileName"]))
    written = {"meta": meta_manifest["meta"], "limited": False, "files": entries}
    prefix = manifest_path.name.removesuffix(".manifest")
    (out / f"{prefix}.manifest").write_text(json.dumps(written, indent=2))
    os.chmod(out / f"{prefix}.manifest", 0o600)
    return out
