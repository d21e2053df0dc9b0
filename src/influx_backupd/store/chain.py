"""The chain model of hot backups, shared by verify and restore: what a link is, a backup's
flavour from its shape, its chain from the catalog or from the records beside each link, and
every link checked against its manifest and recorded sha256 before anything is touched."""

from __future__ import annotations

import itertools
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from influx_backupd.core.errors import CheckFailed, RestoreRefused
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.record import Flavour, RunRecord, missing_on_disk, only_in_bucket
from influx_backupd.store.scanners import (
    Scan,
    changed_files,
    is_increment_09,
    scan_portable,
    scan_snapshot09,
)
from influx_backupd.store.sidecar import SidecarError, read_sidecar_data, sidecar_of

# A 1.x link's record.extra key (jobs/hot.py): the live shards' files right after its snapshot.
LISTING = "shard_listing"
# shard id -> file name -> (size, mtime)
ShardListing = dict[int, dict[str, tuple[int, float]]]


def parse_listing(raw: object) -> ShardListing | None:
    """A shard listing as jobs/hot.py writes it ({"shards": {id: {name: [size, mtime]}}}), or
    None when it is not one."""
    if not isinstance(raw, dict) or not isinstance(raw.get("shards"), dict):
        return None
    found: ShardListing = {}
    try:
        for sid, files in raw["shards"].items():
            found[int(sid)] = {
                str(name): (int(stat[0]), float(stat[1])) for name, stat in dict(files).items()
            }
    except (TypeError, ValueError, IndexError):
        return None
    return found


def listing_of(record: RunRecord | None) -> ShardListing | None:
    """The shard listing a link's record carries, None when it has none."""
    return parse_listing(record.extra.get(LISTING)) if record is not None else None


class LinkDamaged(RestoreRefused):
    """A link whose own bytes failed restore's check (its manifest or its recorded sha256):
    which one, so that the catalog can record it as found bad (before: a restore refused for a
    changed byte, and `list` kept showing the link ok)."""

    def __init__(self, message: str, link: Link) -> None:
        super().__init__(message)
        self.link = link


@dataclass(frozen=True)
class Link:
    path: Path
    record: RunRecord | None
    incremental: bool
    source: str = "catalog"  # where record came from: "catalog" or "sidecar"


def sniff(path: Path) -> Flavour | None:
    """A hot backup's flavour from its shape; None for anything else (a cold archive)."""
    if path.is_dir():
        return "portable" if any(path.glob("*.manifest")) else None
    try:
        with tarfile.open(path, tarinfo=CheckedTarInfo) as tar:
            first = tar.next()
    except (tarfile.TarError, OSError):
        return None
    return "0.9" if first is not None and first.name == "manifest" else None


def chain_for(
    catalog: Catalog, record: RunRecord, runs: Sequence[RunRecord] | None = None
) -> list[RunRecord]:
    """The chain's links from its full up to record, oldest first; refuses a broken chain.
    runs: the catalog's records as the caller already read them (verify --all: one read for
    every link it checks, where reading the catalog again for each made it quadratic)."""
    if not record.chain_id:
        raise RestoreRefused(f"backup {record.id} is a hot backup without a chain id")
    members = sorted(
        (
            r
            for r in (catalog.list(job=record.job) if runs is None else runs)
            if r.job == record.job and r.chain_id == record.chain_id and r.mode == "hot"
        ),
        key=lambda r: (r.started_at, r.id),
    )
    by_id = {r.id: r for r in members}
    links: list[RunRecord] = []
    try:
        for current in itertools.chain([record], parents(record, by_id)):
            if only_in_bucket(current):
                raise RestoreRefused(
                    f"chain {record.chain_id}: link {current.id} is only in the bucket: "
                    f"restore {record.id} --from offsite fetches the chain"
                )
            if not current.ok or not current.archive:
                raise RestoreRefused(
                    f"chain {record.chain_id}: link {current.id} is {current.status}, not usable"
                )
            links.append(current)
    except ChainCut as cut:
        if cut.parent is not None:
            # a record written by hand or a forged manifest: following it would never end
            raise RestoreRefused(chain_loop(record.id, cut.parent.id)) from None
        raise RestoreRefused(
            f"chain {record.chain_id}: link {cut.child.id}'s parent {cut.child.parent_id} "
            "is not in the catalog"
        ) from None
    links.reverse()
    if links[0].id != record.chain_id:
        raise RestoreRefused(f"chain {record.chain_id} does not start with its full")
    return links


def chain_loop(backup_id: str, again: str) -> str:
    """The one line for a chain whose parents come round again (whoever follows them)."""
    return (
        f"chain of {backup_id} loops back to {again}: its records name each other as parents; "
        "an increment cannot be restored without a full below it"
    )


class ChainCut(Exception):
    """A walk down a chain's parents that cannot go on: child's parent is not among the records
    walked (parent None), or is parent, a link the walk has passed already (a loop)."""

    def __init__(self, child: RunRecord, parent: RunRecord | None) -> None:
        super().__init__(child.id)
        self.child = child
        self.parent = parent

    def as_break(self) -> Break:
        if self.parent is None:
            return Break(self.child.parent_id or "?", "not in the catalog")
        return Break(self.parent.id, "a loop of parents")


def parents(record: RunRecord, members: Mapping[str, RunRecord]) -> Iterator[RunRecord]:
    """record's earlier links, nearest first, down to its full: each increment's parent_id looked
    up in members (the one walk of a chain's parents: restore's chain_for, `list`'s chain_breaks,
    prune's holds). Raises ChainCut where a parent is not in members or comes round again."""
    seen = {record.id}
    current = record
    while current.kind == "incremental":
        parent = members.get(current.parent_id or "")
        if parent is None or parent.id in seen:
            raise ChainCut(current, parent)
        seen.add(parent.id)
        yield parent
        current = parent


@dataclass(frozen=True)
class Break:
    """Why a backup that is fine itself cannot be restored here: a link before it is."""

    link: str  # the nearest link below it that is unusable
    why: str  # "missing", "check-fail", "failed", "not in the catalog", "a loop of parents"

    def __str__(self) -> str:
        return f"needs link {self.link}, which is {self.why}"


def chain_breaks(records: list[RunRecord]) -> dict[str, Break]:
    """The ok hot increments whose chain below them is broken, from
    the catalog's records alone: a link before them gone from disk, found bad by a check, not
    ok, or not in the catalog, each a link that chain_for refuses or check_links would (before:
    `list` showed them ok, and their restore was refused). A link only in the bucket breaks
    nothing (restore --from offsite fetches the chain)."""
    chains: dict[tuple[str, str | None], dict[str, RunRecord]] = {}
    for r in records:
        if r.mode == "hot":
            chains.setdefault((r.job, r.chain_id), {})[r.id] = r

    def below(record: RunRecord) -> Break | None:
        try:
            for parent in parents(record, chains.get((record.job, record.chain_id), {})):
                if not parent.ok:
                    return Break(parent.id, parent.status)
                if missing_on_disk(parent):
                    return Break(parent.id, "missing")
                if parent.failed_check:
                    return Break(parent.id, "check-fail")
        except ChainCut as cut:
            return cut.as_break()
        return None

    breaks: dict[str, Break] = {}
    for r in records:
        if r.ok and r.mode == "hot" and r.kind == "incremental":
            verdict = below(r)
            if verdict is not None:
                breaks[r.id] = verdict
    return breaks


def link_problem(record: RunRecord) -> str | None:
    """What is wrong on disk with a chain link, found by stat alone (an increment is planned or
    verified on it, so this stays cheap): gone, a file of it gone, or not the size recorded (a
    cut or a truncated shard). A changed byte of the same size needs its sha256: verify's."""
    path = Path(str(record.archive or ""))
    try:
        if not record.archive or not path.exists():
            return f"link {record.id}: {record.archive or 'no archive'} is missing"
        if path.is_file():
            size = path.stat().st_size
        else:
            names = record.extra.get("file_sha256")
            if not isinstance(names, dict):
                return None  # a record from before per-file digests: nothing to compare
            missing = [n for n in names if not (path / str(n)).is_file()]
            if missing:
                return f"link {record.id}: {path / str(missing[0])} is missing"
            size = sum((path / str(n)).stat().st_size for n in names)
    except OSError as exc:
        return f"link {record.id}: {path}: {exc.strerror or exc}"
    if record.bytes is not None and size != record.bytes:
        return f"link {record.id}: {path} holds {size} bytes, {record.bytes} when it was taken"
    return None


def read_sidecar(directory: Path) -> RunRecord | None:
    """The record hot.py wrote beside a 1.x backup dir; None when there is none.

    Refuses one that cannot be read or does not describe an ok 1.x link: without it, whether
    the dir is an increment (useless alone) is unknown.
    """
    try:
        data = read_sidecar_data(directory)
    except SidecarError as exc:
        raise RestoreRefused(str(exc)) from None
    if data is None:
        return None
    problem = None
    if data.get("kind") not in ("full", "incremental"):
        problem = f"kind {data.get('kind')!r}"
    elif not isinstance(data.get("chain_id"), str):
        problem = "chain_id missing"
    elif data["kind"] == "incremental" and not isinstance(data.get("parent_id"), str):
        problem = "an increment without parent_id"
    if problem is not None:
        raise RestoreRefused(f"{sidecar_of(directory)}: not a usable backup record ({problem})")
    record = RunRecord.from_dict(data)
    # Where the dir is now, whatever path the backup host gave it.
    record.archive = str(directory)
    return record


def sidecar_chain(directory: Path) -> list[Link]:
    """The chain up to a 1.x dir from the sidecar records alone, full first.

    Each parent is the sibling dir <job>-<parent_id> (as hot.py names them) with its own record;
    a missing or unusable one refuses the restore: an increment holds only what was written
    since its parent.
    """
    record = read_sidecar(directory)
    if record is None:
        raise RestoreRefused(
            f"{directory}: no backup record {sidecar_of(directory).name} beside it"
        )
    links: list[Link] = []
    path, current = directory, record
    while True:
        links.append(Link(path, current, current.kind == "incremental", source="sidecar"))
        if current.kind == "full":
            break
        parent_path = directory.parent / f"{current.job}-{current.parent_id}"
        why = None
        parent: RunRecord | None = None
        if not parent_path.is_dir():
            why = "is missing"
        else:
            try:
                parent = read_sidecar(parent_path)
            except RestoreRefused as exc:
                why = f"is unusable: {exc}"
            else:
                if parent is None:
                    why = f"has no backup record {sidecar_of(parent_path).name}"
                elif parent.id != current.parent_id or parent.chain_id != record.chain_id:
                    why = f"has a record of another run ({parent.id}, chain {parent.chain_id})"
                elif len(links) > 10_000 or any(link.path == parent_path for link in links):
                    why = "closes a loop of parents"
        if why is not None or parent is None:
            raise RestoreRefused(
                f"link {current.parent_id} ({parent_path}), the parent of {path.name}, {why}; "
                "an increment cannot be restored without the links before it"
            )
        path, current = parent_path, parent
    links.reverse()
    if links[0].record is None or links[0].record.id != record.chain_id:
        raise RestoreRefused(f"{directory}: chain {record.chain_id} does not start with its full")
    return links


def check_links(flavour: Flavour, links: list[Link], *, deep: bool = True) -> list[Scan]:
    """Every link against its manifest and the catalog's sha256; deep: every 1.x shard gunzipped
    (restore, before touching anything), else its gzip ends (the sha256 already reads it all)."""
    scans = []
    for link in links:
        try:
            if flavour == "portable":
                scan = scan_portable(link.path, deep=deep)
            else:
                scan = scan_snapshot09(link.path, incremental=link.incremental)
        except CheckFailed as exc:
            raise LinkDamaged(str(exc).removeprefix("hot.check: "), link) from None
        record = link.record
        if record is not None and record.sha256 and record.sha256 != scan.sha256:
            whose = "the catalog's" if link.source == "catalog" else "its backup record's"
            changed = changed_files(scan, record.extra.get("file_sha256"))
            raise LinkDamaged(
                f"{link.path}: sha256 {scan.sha256} does not match {whose} "
                f"{record.sha256} (run {record.id})"
                + (f": changed since the backup: {'; '.join(changed)}" if changed else ""),
                link,
            )
        scans.append(scan)
    return scans


# -- what a BACKUP argument names -------------------------------------------------------------------


def lookup(catalog: Catalog, backup: str) -> tuple[Path | None, RunRecord | None]:
    """BACKUP as a catalog id, else as an existing path with the catalog's record of it, if any.

    (None, record): an id whose run left no archive; (None, None): BACKUP names nothing. What a
    caller does with a record that is not ok is its own rule (verify checks it, restore refuses).
    """
    record = catalog.get(backup)
    if record is not None:
        return (Path(record.archive) if record.archive else None), record
    path = Path(backup)
    if not path.exists():
        return None, None
    return path, catalog.find_by_archive(path)


ChainSource = Literal["catalog", "sidecar", "alone"]


def links_up_to(
    catalog: Catalog, flavour: Flavour, path: Path, record: RunRecord | None
) -> tuple[list[Link], ChainSource]:
    """The links a hot backup needs restored before it, full first, and where they were found:
    the catalog, the records beside 1.x dirs (a new host), or nowhere (this backup alone)."""
    if record is not None and record.kind == "full":
        return [Link(path, record, False)], "catalog"  # a full is a chain of its own
    if record is not None:
        links = [
            Link(Path(str(r.archive)), r, r.kind == "incremental")
            for r in chain_for(catalog, record)
        ]
        links[-1] = Link(path, record, record.kind == "incremental")
        return links, "catalog"
    if flavour == "portable" and sidecar_of(path.absolute()).exists():
        return sidecar_chain(path.absolute()), "sidecar"
    if flavour == "0.9":
        return chain_beside_09(path), "alone"
    return [Link(path, None, False)], "alone"


def chain_beside_09(path: Path) -> list[Link]:
    """A 0.9 snapshot given without a record, with the links 0.9's own restore reads with it:
    PATH.N (an increment, by its name) on top of PATH and PATH.0 … PATH.N-1 beside it, and no
    later one (the state when PATH.N was taken). Without PATH beside it, PATH.N is taken as a
    full whose name ends in digits: an increment alone holds no meta, which a full's check
    refuses (restored as a full, it left the server an empty meta dir).
    RestoreRefused when a link between PATH and PATH.N is missing."""
    base = path.with_suffix("")
    if not is_increment_09(path) or not base.is_file():
        return [Link(path, None, False)]
    links = [Link(base, None, False)]
    number = int(path.suffix[1:])
    for before in range(number):
        link = Path(f"{base}.{before}")
        if not link.is_file():
            raise RestoreRefused(
                f"{link}, the increment before {path.name} beside its full {base.name}, is "
                "missing: a 0.9 increment restores only on top of its full and every increment "
                "before it"
            )
        links.append(Link(link, None, True))
    return [*links, Link(path, None, True)]


def increments_beside_09(path: Path) -> list[Path]:
    """The increments PATH.0, PATH.1, … lying beside the 0.9 full PATH, in order."""
    found: list[Path] = []
    while (link := Path(f"{path}.{len(found)}")).is_file():
        found.append(link)
    return found
