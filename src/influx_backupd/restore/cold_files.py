"""One database of a cold archive as a portable backup, its TSM files taken from the archive as
they are: only what influxd must replay goes through the throwaway.

A cold archive's shard is its TSM files (immutable, complete) plus what the WAL held when
influxd stopped. Only the WAL needs an influxd to become TSM. So the throwaway serving the
archive gets the meta, the database's WAL and, under data/, everything but the TSM files of the
shards taken by files; its export (`influxd backup -portable -database NAME`) then holds the
meta in the tool's format and, for those shards, only the WAL's points, as a small new TSM file.
Each such shard's tar is written here: its archived TSM files in (generation, sequence) order,
then the export's files, renumbered above the archive's newest generation (each archived file's
header, index and footer checked on the way, as the throwaway's open of it did before). Whether
influxd restore keeps a file's name or numbers the files anew in the order of the tar, the
WAL's come last and highest, and on read a point of a newer generation wins: the WAL's points
win where a TSM file holds the same one, as they did on the server (tested against 1.6).

Before, the whole database was extracted for the throwaway, which exported every byte of it
gzipped: on the live server's disk and CPU, two writes of the database and a gzip of it before
the live server took it in, where its write p99 suffered most (docs/performance.md). Now the
TSM files are written once here (gzip level 0, no compression) and once by the live server.

Exact or not at all, shard by shard. A shard goes through the throwaway whole, as before, when
its TSM files cannot be taken as they are:
- a WAL segment holds a delete (DELETE, DROP SERIES): replayed without the TSM files, the delete
  would not reach the points in them;
- a .tombstone file beside its TSM files (a delete not yet compacted away);
- a TSM file whose name is not GEN-SEQ.tsm (its order among the others is unknown);
- a member of its data or WAL dir that is not a regular file (a symlink, which the archive
  allows inside itself): what it stands for is not read here.
`influxd restore` takes only .tsm files from a shard's tar: a tombstone sent along is lost and
the points it deletes come back. The throwaway's tsm1 engine compacts a file with a tombstone
into one without it within about a second of opening it (seen with 1.6, one file or several),
and its WAL replay writes the tombstones of the deletes it holds: the export waits until the
database's data dir holds no tombstone (influxd/tombstones.py); any left after its wait are
named in the result (restore.tombstones_not_restored).
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

from influx_backupd.restore.merge import TSM_NAME, link_or_symlink, manifest_of, shard_tar_writer
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.formats.tsm import check_tsm
from influx_backupd.store.formats.wal import DELETE, DELETE_RANGE, entry_types
from influx_backupd.store.scanners import remember_members

# INFLUX_BACKUPD_COLD_FILES=off: every shard replayed and exported whole by the throwaway, as
# before, for bench/restore_database.py's side-by-side comparison
SWITCH = "INFLUX_BACKUPD_COLD_FILES"


@dataclass
class ArchivedShard:
    """One shard of the database, as the archive holds it."""

    policy: str
    tsm: list[tarfile.TarInfo] = field(default_factory=list)
    whole_because: str | None = None  # why the throwaway takes it whole (None: by files)
    tombstones: int = 0


@dataclass
class ColdShards:
    database: str
    shards: dict[int, ArchivedShard]

    @property
    def by_files(self) -> set[int]:
        """The shards whose TSM files are taken from the archive as they are."""
        return {sid for sid, s in self.shards.items() if s.whole_because is None and s.tsm}

    def keep(self, member: str) -> bool:
        """What the throwaway gets: the meta, the database's WAL and data, less the TSM files
        of the shards taken by files (their other files, fields.idx or a TSI index, are kept:
        the throwaway rebuilds nothing it does not need to)."""
        if member.startswith(("meta/", f"wal/{self.database}/")):
            return True
        if not member.startswith(f"data/{self.database}/"):
            return False
        parts = PurePosixPath(member).parts
        if len(parts) == 5 and _shard_id(parts) in self.by_files:
            return not parts[4].endswith(".tsm")
        return True


def plan(archive: Path, database: str) -> ColdShards:
    """Which shards of database can be taken by files (reads the tar headers and each WAL
    segment's entry headers)."""
    shards: dict[int, ArchivedShard] = {}
    with tarfile.open(archive, "r:", tarinfo=CheckedTarInfo) as tar:
        for info in tar.getmembers():
            parts = PurePosixPath(info.name).parts
            sid = _shard_id(parts)
            if sid is None or parts[1] != database or info.isdir():
                continue
            shard = shards.setdefault(sid, ArchivedShard(parts[2]))
            base = parts[-1]
            if not info.isfile():  # a symlink: what it stands for is the throwaway's to see
                shard.whole_because = shard.whole_because or f"{base} is not a regular file"
            elif parts[0] == "wal":
                if base.endswith(".wal") and shard.whole_because is None:
                    segment = cast(BinaryIO, tar.extractfile(info))
                    if entry_types(segment, info.size) & {DELETE, DELETE_RANGE}:
                        shard.whole_because = f"{base} holds a delete"
            elif len(parts) == 5 and base.endswith(".tombstone"):
                shard.tombstones += 1
                shard.whole_because = shard.whole_because or f"{base}: a delete not compacted yet"
            elif len(parts) == 5 and base.endswith(".tsm"):
                if TSM_NAME.match(base) is None:
                    shard.whole_because = f"{base} is not a GEN-SEQ.tsm name"
                shard.tsm.append(info)
    if os.environ.get(SWITCH) == "off":
        for shard in shards.values():
            shard.whole_because = f"{SWITCH}=off"
    return ColdShards(database, shards)


def _shard_id(parts: tuple[str, ...]) -> int | None:
    """The shard of an archive member data|wal/DB/RP/ID/..., None for any other member (the
    database's series file, DB/_series/NN/NNNN (1.5+), included)."""
    if len(parts) < 5 or parts[0] not in ("data", "wal") or parts[2] == "_series":
        return None
    return int(parts[3]) if parts[3].isdigit() else None


def _order(name: str) -> tuple[int, int]:
    match = TSM_NAME.match(PurePosixPath(name).name)
    assert match is not None  # plan() sent a shard with any other name whole
    return int(match.group(1)), int(match.group(2))


@dataclass
class Built:
    shards_by_files: int = 0
    tsm_files_from_archive: int = 0
    bytes_from_archive: int = 0
    files_from_throwaway: int = 0
    whole_because: dict[int, str] = field(default_factory=dict)  # the shards replayed whole
    # shards with no TSM file in the archive (their points in its WAL alone): as exported
    shards_from_wal: int = 0

    @property
    def shards_whole(self) -> int:
        return len(self.whole_because)


def write_portable(archive: Path, shards: ColdShards, export: Path, out: Path) -> Built:
    """The portable backup of shards.database in out (made here) from the throwaway's export
    of it and the archive's TSM files (see the module doc)."""
    out.mkdir(mode=0o700)
    manifest_path, manifest = manifest_of(export)
    meta_name = str(manifest["meta"]["fileName"])
    link_or_symlink(export / meta_name, out / meta_name)
    built = Built()
    by_files = shards.by_files
    entries: list[dict[str, Any]] = []
    with tarfile.open(archive, "r:", tarinfo=CheckedTarInfo) as tar:
        for entry in manifest.get("files", []):
            name, sid = str(entry["fileName"]), int(entry["shardID"])
            shard = shards.shards.get(sid)
            if entry.get("database") != shards.database or sid not in by_files or shard is None:
                link_or_symlink(export / name, out / name)
                entries.append(entry)
                if shard is not None and shard.whole_because is not None:
                    built.whole_because[sid] = shard.whole_because
                elif entry.get("database") == shards.database:
                    built.shards_from_wal += 1
                continue
            size, members = _pack_shard(tar, shard, export / name, out / name, built)
            remember_members(out / name, members)  # the lost-shard check knows it holds TSM
            entries.append({**entry, "size": size})
            built.shards_by_files += 1
    written = {**manifest, "files": entries}
    (out / manifest_path.name).write_text(json.dumps(written, indent=2))
    return built


def _pack_shard(
    tar: tarfile.TarFile,
    shard: ArchivedShard,
    exported: Path,
    dest: Path,
    built: Built,
) -> tuple[int, list[tuple[str, int]]]:
    """One shard's tar.gz (gzip level 0: only a valid gzip is needed): the archive's TSM files,
    then the export's (the WAL's points) renumbered above them. Returns its unpacked size and
    its members."""
    newest = max(_order(info.name)[0] for info in shard.tsm)
    prefix = "/".join(PurePosixPath(shard.tsm[0].name).parts[1:4])  # data/DB/RP/ID -> DB/RP/ID
    members: list[tuple[str, int]] = []
    with shard_tar_writer(dest) as (tw, counted):
        for info in sorted(shard.tsm, key=lambda i: _order(i.name)):
            source = cast(BinaryIO, tar.extractfile(info))
            # the throwaway refused a file it could not open; the live server is next here
            problems = [f for f in check_tsm(source, info.size, info.name) if f.severity == "error"]
            if problems:
                raise ValueError(f"{problems[0]}: not sent to the live server")
            source.seek(0)
            copy = tarfile.TarInfo(f"{prefix}/{PurePosixPath(info.name).name}")
            copy.size, copy.mode, copy.mtime = info.size, 0o644, int(info.mtime)
            tw.addfile(copy, source)
            members.append((copy.name, copy.size))
            built.tsm_files_from_archive += 1
            built.bytes_from_archive += info.size
        # the export holds only what the WAL replayed: small, read as it streams
        with tarfile.open(exported, "r|gz", bufsize=1 << 20, tarinfo=CheckedTarInfo) as tf:
            for member in tf:
                if not member.isfile() or TSM_NAME.match(PurePosixPath(member.name).name) is None:
                    continue  # influxd restore would take nothing else
                gen, seq = _order(member.name)
                member.name = f"{prefix}/{gen + newest:09d}-{seq:09d}.tsm"
                tw.addfile(member, tf.extractfile(member))
                members.append((member.name, member.size))
                built.files_from_throwaway += 1
    return counted.written, members
