"""Readers that check InfluxDB's on-disk formats (Bolt, TSM, WAL) inside a backup archive.

Each checker takes a seekable binary stream plus its size and returns a list of
``Finding``s instead of raising: ``verify`` wants every problem in an archive, not the
first one. ``check_archive`` streams the members of an uncompressed tar straight from the
archive to the checkers, so nothing is extracted to disk.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, cast

from influx_backupd.store.formats.bolt import check_bolt
from influx_backupd.store.formats.findings import Finding, read_at
from influx_backupd.store.formats.tsm import check_tsm
from influx_backupd.store.formats.wal import check_wal

__all__ = ["ArchiveReport", "Finding", "check_archive", "classify_member", "read_at"]

ARCHIVE_MEMBER = "<archive>"
BOLT_MAGIC_LE = (0xED0CDAED).to_bytes(4, "little")

Format = Literal["tsm", "wal", "bolt"]


@dataclass
class ArchiveReport:
    findings: list[Finding] = field(default_factory=list)
    members: int = 0
    top_dirs: set[str] = field(default_factory=set)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        """Warnings (e.g. a WAL torn tail) do not make an archive bad; errors do."""
        return not self.errors


def _normalise(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name


def classify_member(name: str) -> Format | Literal["bolt?"] | None:
    """Which checker a member name calls for; "bolt?" means: bolt if its bytes say so."""
    name = _normalise(name)
    parts = name.split("/")
    base = parts[-1]
    if base.endswith(".tsm"):
        return "tsm"
    if parts[0] == "wal" and base.startswith("_") and base.endswith(".wal"):
        return "wal"
    # 1.x meta/meta.db is protobuf, not bolt; only 0.9's raft log is a bolt file.
    if name == "meta/raft.db":
        return "bolt"
    # 0.9 shards: data/<db>/<rp>/<shard-id>, a bolt file with no extension. 1.x has
    # directories there, so the magic check decides.
    if len(parts) == 4 and parts[0] == "data" and "." not in base and base:
        return "bolt?"
    return None


def _check_member(
    kind: Format, stream: BinaryIO, size: int, member: str, deep: bool
) -> list[Finding]:
    if kind == "tsm":
        return check_tsm(stream, size, member, deep=deep)
    if kind == "wal":
        return check_wal(stream, size, member)
    return check_bolt(stream, size, member)


def check_archive(path: Path, *, deep: bool = False) -> ArchiveReport:
    """Check every recognised member of an uncompressed tar archive, in one pass."""
    report = ArchiveReport()

    try:
        with open(path, "rb") as raw:
            _scan(raw, deep, report)
    except OSError as exc:
        report.findings.append(
            Finding("error", ARCHIVE_MEMBER, f"cannot read {path}: {exc.strerror or exc}")
        )
    return report


class _Truncated(Exception):
    pass


def _scan(raw: BinaryIO, deep: bool, report: ArchiveReport) -> None:
    def archive_error(message: str) -> None:
        report.findings.append(Finding("error", ARCHIVE_MEMBER, message))

    archive_size = os.fstat(raw.fileno()).st_size
    opened = False
    try:
        with tarfile.open(fileobj=raw, mode="r:") as tar:
            opened = True
            for info in tar:
                _check_one(tar, info, archive_size, deep, report)
            end = tar.offset
    except _Truncated as exc:
        return archive_error(str(exc))
    except (tarfile.TarError, OSError, EOFError) as exc:
        if not opened:
            return archive_error(f"not a readable uncompressed tar archive: {exc}")
        return archive_error(
            f"archive unreadable after {report.members} members (truncated or corrupt): {exc}"
        )
    # tarfile stops quietly at a missing or garbled header, so a tar cut at a member
    # boundary would look complete. Tar writers always end an archive with two zero
    # blocks: insist on them.
    marker = read_at(raw, end, 2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or marker.count(0) != len(marker):
        archive_error(
            f"no end-of-archive marker at offset {end} after {report.members} members: "
            "the archive is truncated or corrupt"
        )
    return None


def _check_one(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    archive_size: int,
    deep: bool,
    report: ArchiveReport,
) -> None:
    name = _normalise(info.name)
    report.members += 1
    if name:
        report.top_dirs.add(name.split("/", 1)[0])
    if not info.isreg():
        return
    if info.offset_data + info.size > archive_size:
        raise _Truncated(
            f"member {name} needs {info.size} bytes at offset {info.offset_data} but the "
            f"archive is only {archive_size} bytes: the archive is truncated"
        )
    kind = classify_member(name)
    if kind is None:
        return
    extracted = tar.extractfile(info)
    if extracted is None:
        return
    stream = cast(BinaryIO, extracted)
    if kind == "bolt?":
        if read_at(stream, 16, 4) != BOLT_MAGIC_LE:
            return
        kind = "bolt"
    report.findings.extend(_check_member(kind, stream, info.size, name, deep))
    report.checked[kind] = report.checked.get(kind, 0) + 1
