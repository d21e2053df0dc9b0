"""A 1.x hot chain merged at file speed: its links' shard files combined into one synthetic
portable backup, restored once like a full, instead of each increment copied in by SELECT INTO.
Exact or not at all: where the chain does not say which files make up each shard at its newest
link, plan_merge says why and the caller takes the SQL merge.

What a real influxd 1.6 showed (docs/performance.md): a `-since` link's shard tar holds the TSM
files of the shard's snapshot modified after -since (the tool flushes the cache into a new TSM
file first). TSM files are immutable, named GEN-SEQ.tsm: SEQ 1 is a cache snapshot, SEQ > 1 a
compaction or a delete rewrite, which replaced files of an earlier link, and which ones is not
in the backup. Worse, a delete that empties a file (DROP SERIES of every series in it) removes
it with no output at all, and the increment then holds nothing for that shard. So an increment
can be merged into a shard that already has files only with the listing the hot job records
right after the tool returns (jobs/hot.py, shard_listing: each live shard's files with size and
mtime; only when the backed-up server is the local one). With P the shard's files after the
earlier links, T the increment's and L the listing:

    P' = (P ∩ L) ∪ T, exact when every file of L outside T ∪ P is a SEQ-1 TSM file (or a
    tombstone) modified after -since: written after the snapshot, so not part of this link.

A compaction after the snapshot that removed files of P leaves its SEQ > 1 output in L outside
T ∪ P (an output compacted again leaves another), and a file of L modified before -since that
no link holds was renamed into place after the previous snapshot: both refuse the merge. So
does such a file in a shard new to the chain (P empty): there it is a file no link holds at
all, brought back with its old time by a restore of the server (tar keeps mtimes), whose points
no merge can restore (MergePlan.unheld: verify's restore test fails on it). Points
in two files overlap harmlessly (influxd keeps the newest on read); only deletions are at risk.
`influxd restore` takes only *.tsm files from a shard tar: a tombstone in the merged set is
packed beside its TSM file, and restore/deletes.py applies it before the tool runs; one whose
TSM file is in no link refuses (nothing could apply it; the SQL merge loses it too, and the
fallback says so).

Shards: each link's manifest lists every shard of its meta (an unchanged one with an empty
tar), so a shard absent from the newest link's manifest was dropped (DROP DATABASE, DROP SHARD,
retention) and is left out; the newest link's .meta is the synthetic backup's meta.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, cast

from influx_backupd.core.atomic import read_ours_text
from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.paths import real
from influx_backupd.store.chain import listing_of
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.record import RunRecord
from influx_backupd.store.scanners import shard_members

TSM_NAME = re.compile(r"^([0-9]+)-([0-9]+)\.tsm\Z")


@dataclass(frozen=True)
class ShardPart:
    """One shard's tar in one link."""

    database: str
    policy: str
    tar: Path
    files: frozenset[str]  # base names of the files in it
    sizes: dict[str, int] = field(default_factory=dict, compare=False)  # of those files
    listed: int = 0  # its unpacked size, as the link's manifest lists it


@dataclass(frozen=True)
class LinkView:
    """What the merge needs of one link: its shards and, for an increment, its -since and the
    live shards' files listed after it (None: none recorded)."""

    label: str
    since: float | None
    shards: dict[int, ShardPart]
    listing: dict[int, dict[str, tuple[int, float]]] | None = None


@dataclass
class MergePlan:
    exact: bool
    reason: str | None = None  # why not exact
    # shard id -> file name -> index of the link whose tar holds it
    shards: dict[int, dict[str, int]] = field(default_factory=dict)
    # not exact because a live file is in no link at all: its points are in no merge either
    unheld: bool = False


def _seq(name: str) -> int | None:
    match = TSM_NAME.match(name)
    return int(match.group(2)) if match else None


def plan_merge(views: list[LinkView]) -> MergePlan:
    """The merged file set of each shard at the newest link, or why there is none (a pure
    function of the links' contents and listings; see the module doc)."""
    merged: dict[int, dict[str, int]] = {}
    for number, view in enumerate(views):
        now: dict[int, dict[str, int]] = {}
        for sid, part in sorted(view.shards.items()):
            before = merged.get(sid, {})
            files: dict[str, int] = {}
            if number > 0 and before:
                why = _unexplained(view, sid, part.files, before)
                if why is not None:
                    return MergePlan(False, f"{view.label}: shard {sid}: {why}")
                listed = (view.listing or {})[sid]
                files = {name: link for name, link in before.items() if name in listed}
            elif number > 0:
                why = _older_in_no_link(view, sid, part.files)
                if why is not None:
                    return MergePlan(False, f"{view.label}: shard {sid}: {why}", unheld=True)
            for name in part.files:
                files[name] = number  # the same name in a newer link: the same bytes
            now[sid] = files
        merged = now  # shards the newer link does not list were dropped
    for sid, files in sorted(merged.items()):
        for name in sorted(files):
            if name.endswith(".tsm"):
                continue
            if name.endswith(".tombstone") and name.removesuffix(".tombstone") + ".tsm" in files:
                continue  # packed beside its file, applied before the restore (deletes.py)
            return MergePlan(
                False,
                f"{views[files[name]].label}: shard {sid}: {name}: influxd restore takes only "
                ".tsm files, and the file this tombstone deletes from is in no link, so what "
                "it deletes would come back",
            )
    return MergePlan(True, None, merged)


def _unexplained(
    view: LinkView, sid: int, taken: frozenset[str], before: dict[str, int]
) -> str | None:
    """Why an increment's shard cannot be merged onto the files before it (None: it can)."""
    if view.listing is None:
        return (
            "no listing of the live shard files was recorded with this increment (taken only "
            "when the backed-up server is the local one): a compaction or delete may have "
            "removed files of the earlier links, and the backup does not say which"
        )
    listed = view.listing.get(sid)
    if listed is None:
        return "the listing recorded with this increment has no such shard"
    if view.since is None:
        return "the increment records no -since"
    for name in sorted(taken & set(listed)):
        size = view.shards[sid].sizes.get(name)
        if size is not None and size != listed[name][0]:
            return f"{name} is {size} bytes in the backup, {listed[name][0]} in the listing"
    for name in sorted(set(listed) - taken - set(before)):
        mtime = listed[name][1]
        later = mtime > view.since
        if name.endswith(".tombstone") and later:
            continue  # a delete after the snapshot
        if _seq(name) == 1 and later:
            continue  # a cache snapshot after the backup's: not part of this link
        if _seq(name) is None and not name.endswith(".tombstone"):
            return f"{name} is not a TSM file name"
        what = "written" if later else "modified before -since yet in no link"
        return (
            f"{name} is live but in no link ({what}): a compaction or delete after the "
            "snapshot may have replaced files of the earlier links"
        )
    return None


def _older_in_no_link(view: LinkView, sid: int, taken: frozenset[str]) -> str | None:
    """Why a shard new to the chain cannot be taken from this increment's files alone (None:
    it can). A live file of its listing modified before -since that the increment does not
    hold was in place before the snapshot yet is in no link: a restore of the server, or a
    file moved in, with its old time kept (tar keeps mtimes), which -since leaves out. Without
    a listing nothing can be told (as before: the increment's files)."""
    listed = (view.listing or {}).get(sid)
    if listed is None or view.since is None:
        return None
    for name in sorted(set(listed) - taken):
        if listed[name][1] <= view.since:
            return (
                f"{name} is live but in no link (modified before -since yet not in the "
                "increment, and the shard is in no earlier link): its points are not in this "
                "chain (a restore of the server or a file moved into place since the chain "
                "began)"
            )
    return None


# -- reading the links -------------------------------------------------------------------------


def parse_since(since: str | None) -> float | None:
    if not since:
        return None
    try:
        return datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def manifest_of(directory: Path) -> tuple[Path, dict[str, Any]]:
    found = sorted(directory.glob("*.manifest"))
    if len(found) != 1:
        raise ValueError(f"{directory}: {len(found)} *.manifest files, expected 1")
    return found[0], loads_json(read_ours_text(found[0]))


def view_of(directory: Path, record: RunRecord | None, *, full: bool) -> LinkView:
    """A link as plan_merge sees it: its manifest's shards, each tar's member names."""
    _, manifest = manifest_of(directory)
    shards: dict[int, ShardPart] = {}
    for entry in manifest.get("files", []):
        tar = directory / str(entry["fileName"])
        members = shard_members(tar)  # from restore's deep check: no second gunzip
        sizes = {PurePosixPath(name).name: size for name, size in members}
        shards[int(entry["shardID"])] = ShardPart(
            str(entry["database"]),
            str(entry["policy"]),
            tar,
            frozenset(sizes),
            sizes,
            int(entry.get("size", 0)),
        )
    return LinkView(
        label=directory.name,
        since=None if full else parse_since(record.since if record else None),
        shards=shards,
        listing=None if full else listing_of(record),
    )


def merged_bytes(views: list[LinkView], plan: MergePlan) -> int:
    """An upper bound of the synthetic backup's size: the chosen links' shard tars."""
    total = 0
    for sid, files in plan.shards.items():
        for link in set(files.values()):
            total += views[link].shards[sid].tar.stat().st_size * 2  # gzip stored: ≤ unpacked
    return total


def write_merged(
    views: list[LinkView], plan: MergePlan, newest: Path, out: Path
) -> tuple[int, int]:
    """The synthetic portable backup in out (made here): the newest link's .meta, a manifest in
    the tool's format, one tar.gz a shard: a link's own tar, by hard link, where it holds
    exactly the shard's merged files (no gunzip, no copy); else the files packed again from
    the links' tars (gzip level 0: only a valid gzip is needed). One tar a shard: influxd 1.6's
    restore takes only one upload of a shard (a manifest listing a shard twice, each with some
    of its files, restored the first tar's files only). Returns the tars reused and packed."""
    out.mkdir(mode=0o700)
    manifest_path, manifest = manifest_of(newest)
    prefix = manifest_path.name.removesuffix(".manifest")
    meta_name = str(manifest["meta"]["fileName"])
    shutil.copyfile(newest / meta_name, out / meta_name)
    entries: list[dict[str, Any]] = []
    reused = 0
    last = views[-1]
    for sid, files in sorted(plan.shards.items()):
        part = last.shards[sid]
        name = f"{prefix}.s{sid}.tar.gz"
        links = set(files.values())
        source = views[links.pop()].shards[sid] if len(links) == 1 else None
        if source is not None and source.files == frozenset(files) and source.listed > 0:
            link_or_symlink(source.tar, out / name)
            entries.append(_entry(part, sid, name, source.listed))
            reused += 1
            continue
        wanted: dict[int, set[str]] = {}
        for file, link in files.items():
            wanted.setdefault(link, set()).add(file)
        entries.append(_entry(part, sid, name, _pack(views, sid, wanted, out / name)))
    merged = {"meta": manifest["meta"], "limited": False, "files": entries}
    (out / f"{prefix}.manifest").write_text(json.dumps(merged, indent=2))
    return reused, len(entries) - reused


@contextmanager
def shard_tar_writer(dest: Path) -> Iterator[tuple[tarfile.TarFile, CountingWriter]]:
    """A shard's tar.gz for influxd restore, written as a stream (gzip level 0: only a valid
    gzip is needed); the writer counts the tar's unpacked size, which the manifest lists."""
    with gzip.GzipFile(dest, "wb", compresslevel=0) as gz:
        counted = CountingWriter(gz)
        tw = tarfile.open(  # noqa: SIM115
            fileobj=cast(Any, counted),
            mode="w|",
            format=tarfile.PAX_FORMAT,
            bufsize=1 << 20,
        )
        # its default, 16 KiB a read and a write, packs 1.7x slower (not in typeshed)
        tw.copybufsize = 1 << 20  # type: ignore[attr-defined]
        yield tw, counted
        tw.close()


def _pack(views: list[LinkView], sid: int, wanted: dict[int, set[str]], dest: Path) -> int:
    """The wanted files of each link's tar of shard sid into one tar.gz; its unpacked size."""
    with shard_tar_writer(dest) as (tw, counted):
        for link, names in sorted(wanted.items()):
            left = set(names)
            tar = views[link].shards[sid].tar
            with tarfile.open(tar, "r|gz", bufsize=1 << 20, tarinfo=CheckedTarInfo) as tf:
                for member in tf:
                    base = PurePosixPath(member.name).name
                    if member.isfile() and base in left:
                        tw.addfile(member, tf.extractfile(member))
                        left.discard(base)
            if left:
                raise ValueError(f"{tar}: {sorted(left)} missing")
    return counted.written


def link_or_symlink(source: Path, dest: Path) -> None:
    """A file of a backup as it is, in a backup written beside it for influxd restore: a hard
    link, else (another filesystem, links not allowed) a symlink; never a copy, which for a
    backup on another disk meant copying hundreds of GB to change a few shards."""
    try:
        os.link(source, dest)
    except OSError:
        os.symlink(real(source), dest)


def _entry(part: ShardPart, sid: int, name: str, size: int) -> dict[str, Any]:
    """A shard's entry in the tool's manifest (size: the tar's unpacked size)."""
    return {
        "database": part.database,
        "policy": part.policy,
        "shardID": sid,
        "fileName": name,
        "size": size,
        "lastModified": 0,
    }


class CountingWriter:
    """A write-only file that counts what goes through: the tar's unpacked size, which the
    tool's manifest lists as a shard's size."""

    def __init__(self, inner: gzip.GzipFile) -> None:
        self.inner, self.written = inner, 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        return self.inner.write(data)


@dataclass
class ChainMerge:
    """How a 1.x chain's increments went in: "files" (merged here, restored once) or "sql"
    (each increment restored under a temporary name and copied in with SELECT INTO), and why
    not by files."""

    path: str
    reason: str | None = None
    seconds: float | None = None  # writing the merged backup
