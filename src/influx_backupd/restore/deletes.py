"""Deletes a 1.x portable backup holds as tombstones, applied before `influxd restore` sees it.

A DELETE or DROP SERIES is first a `GEN-SEQ.tombstone` file beside the TSM file it applies to;
about a second later (or when it next opens the file) influxd's tsm1 engine rewrites that TSM
file without the deleted points. `influxd backup -portable` packs a shard's tombstones with its
TSM files, but `influxd restore` takes only the .tsm files of a shard's tar: a backup taken
inside that second restores the deleted points (seen with 1.6). The hot job waits for them
before its snapshot where it can (jobs/hot.py); a remote server, a delete during the snapshot,
or a backup from elsewhere can still hold some.

So before a restore, the shards whose tars hold tombstones are laid out, TSM and tombstone
files as they are, in a throwaway influxd's data dir, on the backup's own meta store (a
portable .meta file carries influxd's meta.db bytes); the throwaway opens them and compacts
the tombstones in, as the server would have; its TSM files are packed into those shards' tars
again. Every other file of the backup is linked as it is. A tombstone whose TSM file is not in
the same tar (an increment's, for a file of an earlier link) cannot be applied here, and is
counted as not applied.

This module lays out and packs files; restore/hot.py runs the throwaway (apply_deletes).
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from influx_backupd.core.atomic import read_small
from influx_backupd.core.names import influx_name_ok
from influx_backupd.restore.merge import TSM_NAME, link_or_symlink, manifest_of, shard_tar_writer
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.scanners import portable_meta_store, remember_members, shard_members

TOMBSTONE_NAME = re.compile(r"^([0-9]+)-([0-9]+)\.tombstone\Z")


@dataclass
class DeletesApplied:
    """What a restore did with the tombstones in its backup (summed over the links)."""

    tombstones: int = 0  # .tombstone files in the backup's shard tars
    applied: int = 0  # of them, compacted in by a throwaway influxd
    shards: int = 0  # shards packed again with their deletes applied
    seconds: float = 0.0
    # why a tombstone was not applied, by shard tar (its points may be back after the restore)
    not_applied: dict[str, str] = field(default_factory=dict)

    def add(self, other: DeletesApplied) -> None:
        self.tombstones += other.tombstones
        self.applied += other.applied
        self.shards += other.shards
        self.seconds = round(self.seconds + other.seconds, 3)
        self.not_applied.update(other.not_applied)

    @property
    def left(self) -> int:
        return self.tombstones - self.applied

    def summary(self) -> dict[str, Any] | None:
        """For a restore's result: None when the backup held no tombstone."""
        return {**self.__dict__, "left": self.left} if self.tombstones else None


@dataclass(frozen=True)
class Tombstoned:
    """A shard whose tar holds tombstones: what goes into the throwaway, and what cannot."""

    entry: dict[str, Any]  # its manifest entry
    tar: Path
    tsm: frozenset[str]
    tombstones: frozenset[str]  # those with their TSM file in the same tar
    orphans: frozenset[str]  # those without

    @property
    def sid(self) -> int:
        return int(self.entry["shardID"])

    def shard_dir(self, data: Path) -> Path:
        return data / str(self.entry["database"]) / str(self.entry["policy"]) / str(self.sid)


def _members(tar: Path) -> list[str]:
    """The base names of a shard tar's regular files."""
    return [PurePosixPath(name).name for name, _ in shard_members(tar)]


def find(directory: Path) -> tuple[list[Tombstoned], DeletesApplied]:
    """The shards of a portable backup dir that hold tombstones; and the count so far (every
    tombstone, with those that cannot be applied named)."""
    _, manifest = manifest_of(directory)
    found: list[Tombstoned] = []
    report = DeletesApplied()
    for entry in manifest.get("files", []):
        tar = directory / str(entry["fileName"])
        names = _members(tar)
        tombstones = {n for n in names if TOMBSTONE_NAME.match(n)}
        if not tombstones:
            continue
        report.tombstones += len(tombstones)
        tsm = frozenset(n for n in names if TSM_NAME.match(n))
        with_file = frozenset(t for t in tombstones if t.removesuffix(".tombstone") + ".tsm" in tsm)
        orphans = frozenset(tombstones - with_file)
        if not (influx_name_ok(entry.get("database")) and influx_name_ok(entry.get("policy"))):
            report.not_applied[tar.name] = "its manifest entry names no valid database and policy"
            continue
        if len(set(names)) != len(names):  # not a tar influxd wrote: restored as it is
            report.not_applied[tar.name] = "a file name is in its tar twice"
            continue
        if orphans:
            report.not_applied[tar.name] = (
                f"{len(orphans)} tombstone(s) for TSM files not in this tar ({min(orphans)}, ...)"
            )
        if with_file:
            found.append(Tombstoned(dict(entry), tar, tsm, with_file, orphans))
    return found, report


def lay_out(directory: Path, shards: list[Tombstoned], meta: Path, data: Path) -> None:
    """The throwaway's meta.db (the backup's meta store) and the shards' TSM and tombstone
    files, each in its DB/RP/ID dir, as the server had them."""
    _, manifest = manifest_of(directory)
    meta.mkdir(parents=True, exist_ok=True)
    meta_file = directory / str(manifest["meta"]["fileName"])
    (meta / "meta.db").write_bytes(portable_meta_store(read_small(meta_file)))
    for shard in shards:
        dest = shard.shard_dir(data)
        dest.mkdir(parents=True)
        wanted = set(shard.tsm | shard.tombstones)
        with tarfile.open(shard.tar, "r|gz", bufsize=1 << 20, tarinfo=CheckedTarInfo) as tf:
            for member in tf:
                name = PurePosixPath(member.name).name
                if not member.isfile() or name not in wanted:
                    continue
                source = tf.extractfile(member)
                assert source is not None  # a regular file
                with open(dest / name, "xb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                wanted.discard(name)


def pack(directory: Path, shards: list[Tombstoned], data: Path, out: Path) -> int:
    """The backup again in out (made here), each tombstoned shard's tar packed from the
    throwaway's TSM files; every other file linked. Returns the tombstones still there."""
    out.mkdir(mode=0o700)
    manifest_path, manifest = manifest_of(directory)
    packed = {shard.sid: shard for shard in shards}
    left = 0
    entries: list[dict[str, Any]] = []
    for entry in manifest.get("files", []):
        name = str(entry["fileName"])
        shard = packed.get(int(entry["shardID"]))
        if shard is None or shard.tar.name != name:
            link_or_symlink(directory / name, out / name)
            entries.append(entry)
            continue
        source = shard.shard_dir(data)
        left += sum(1 for p in source.iterdir() if TOMBSTONE_NAME.match(p.name))
        files = sorted(
            (p for p in source.iterdir() if TSM_NAME.match(p.name) and p.is_file()),
            key=lambda p: tuple(int(x) for x in p.name.removesuffix(".tsm").split("-")),
        )
        prefix = f"{entry['database']}/{entry['policy']}/{shard.sid}"
        members: list[tuple[str, int]] = []
        with shard_tar_writer(out / name) as (tw, counted):
            for path in files:
                info = tw.gettarinfo(str(path), arcname=f"{prefix}/{path.name}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with path.open("rb") as f:
                    tw.addfile(info, f)
                members.append((info.name, info.size))
        remember_members(out / name, members)
        entries.append({**entry, "size": counted.written})
    meta_name = str(manifest["meta"]["fileName"])
    link_or_symlink(directory / meta_name, out / meta_name)
    (out / manifest_path.name).write_text(json.dumps({**manifest, "files": entries}, indent=2))
    return left
