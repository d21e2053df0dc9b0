"""What a BACKUP argument is to restore: a cold archive, or a hot backup with the links of its
chain. Every form of restore (the whole server, one database, into a directory) starts here,
so each takes the same ids and paths (a backup fetched from elsewhere is a path too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from influx_backupd.core import log
from influx_backupd.core.errors import OnlyInBucket, RestoreRefused
from influx_backupd.restore.cold import refuse_unusable, resolve_backup
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import Link, increments_beside_09, links_up_to, lookup, sniff
from influx_backupd.store.record import Flavour, RunRecord, only_in_bucket
from influx_backupd.store.sidecar import sidecar_of


@dataclass(frozen=True)
class ColdSource:
    path: Path
    record: RunRecord | None


@dataclass(frozen=True)
class HotSource:
    flavour: Flavour
    links: list[Link]  # the full first, this backup last
    record: RunRecord | None  # None: restored alone (no record in the catalog or beside it)
    unchecked: str | None = None  # restored alone: what the operator is told (a warning)


def choose(catalog: Catalog, backup: str) -> ColdSource | HotSource:
    """BACKUP (a catalog id or a path) as a cold archive or a hot chain; RestoreRefused when it
    is neither or is not usable. Reads records only; the archives are checked by the caller."""
    path, record = lookup(catalog, backup)
    if record is not None and only_in_bucket(record):
        raise OnlyInBucket(record.id)
    if path is None and record is None:
        raise RestoreRefused(f"{backup}: neither a catalog id nor an existing archive path")
    if record is not None and record.mode != "hot":
        return ColdSource(*resolve_backup(catalog, backup))
    if record is not None and (record.status != "ok" or path is None):
        raise RestoreRefused(f"backup {record.id} is {record.status}, not a usable backup")
    assert path is not None
    if record is not None:
        refuse_unusable(record, path)
    flavour = (record.flavour if record else None) or sniff(path)
    if flavour is None and record is None:
        return ColdSource(*resolve_backup(catalog, backup))
    if flavour not in ("0.9", "portable"):
        raise RestoreRefused(f"backup {backup}: cannot tell whether it is a 0.9 or 1.x backup")
    links, source = links_up_to(catalog, flavour, path, record)
    if source != "alone":
        return HotSource(flavour, links, links[-1].record)
    # no recorded sha256: only its manifest says what it should hold
    detail = (
        f"{path} has no record beside it ({sidecar_of(path).name}) and is not in the catalog: "
        "no recorded sha256, its bytes are checked against its manifest only"
    )
    if flavour == "portable":
        detail += (
            "; restored as a full: if it is an increment (-since), the data of the links "
            "before it will be missing"
        )
    later = increments_beside_09(path) if flavour == "0.9" and len(links) == 1 else []
    if later:
        # 0.9's own `influxd restore PATH` would take them all; this restores the backup named
        detail += (
            f"; restored as it was taken: the increments beside it ({later[0].name} to "
            f"{later[-1].name}) are not restored (give {later[-1].name} to restore the latest)"
        )
    log.get(action="restore", mode="hot", flavour=flavour).warning(
        "restore.no_sidecar", path=str(path), detail=detail
    )
    return HotSource(flavour, links, None, detail)
