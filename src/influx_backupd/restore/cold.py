"""Restore of a cold archive: check everything first, swap directories by rename, roll back on failure.

The archive is extracted next to each live dir while influxd still runs, so the stop window holds
only renames. The live dirs are moved aside into rollback dirs, never deleted.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from influx_backupd.core import log
from influx_backupd.core.config import Config
from influx_backupd.core.errors import RestoreFailed, RestoreRefused
from influx_backupd.core.interrupt import Interrupted, signals_blocked
from influx_backupd.core.log import Logger
from influx_backupd.influxd.server import Influxd
from influx_backupd.store import layout
from influx_backupd.store.archive import ArchiveError, extract_safely, scan_archive
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord
from influx_backupd.store.sidecar import SidecarError, record_beside
from influx_backupd.store.state import CrashMarker

ALLOWED_TOPS = {"meta", "data", "wal", "hh", "influxdb.conf"}


@dataclass
class RestoreResult:
    archive: str
    run_id: str | None
    rollback_dirs: list[str] = field(default_factory=list)
    stop_s: float | None = None
    swap_s: float | None = None
    start_s: float | None = None
    downtime_s: float | None = None
    files: int = 0


def resolve_backup(catalog: Catalog, backup: str) -> tuple[Path, RunRecord | None]:
    record = catalog.get(backup)
    if record is not None:
        if record.status != "ok" or not record.archive:
            raise RestoreRefused(f"backup {backup} is {record.status}, not a usable backup")
        return Path(record.archive), record
    path = Path(backup)
    if not path.exists():
        raise RestoreRefused(f"{backup}: neither a catalog id nor an existing archive path")
    known = catalog.find_by_archive(path)
    if known is not None:
        return path, known
    try:  # not in this catalog (a new host?): the record written beside the archive
        return path, record_beside(path.absolute())
    except SidecarError as exc:
        raise RestoreRefused(str(exc)) from None


def owner_ids(config: Config) -> tuple[int, int]:
    section = config.settings.influxd
    try:
        uid = pwd.getpwnam(section.user).pw_uid
    except KeyError:
        raise RestoreRefused(f"[influxd] user: no such user {section.user!r}") from None
    try:
        gid = grp.getgrnam(section.group).gr_gid
    except KeyError:
        raise RestoreRefused(f"[influxd] group: no such group {section.group!r}") from None
    return uid, gid


def check_archive(config: Config, path: Path, record: RunRecord | None) -> set[str]:
    """Read the whole archive: sha256 against the catalog, safe headers, data present, dirs expected."""
    try:
        scan = scan_archive(path, ALLOWED_TOPS)
    except ArchiveError as exc:
        raise RestoreRefused(str(exc)) from None
    if record is not None and record.sha256 and record.sha256 != scan.sha256:
        raise RestoreRefused(
            f"{path}: sha256 {scan.sha256} does not match the recorded {record.sha256} "
            f"(run {record.id})"
        )
    for needed in ("meta", "data"):
        if needed not in scan.tops:
            raise RestoreRefused(
                f"{path}: no {needed}/ in the archive; not a cold backup of influxd"
            )
    dirs = config.server.dirs()
    missing = sorted(scan.tops - set(dirs) - {"influxdb.conf"})
    if missing:
        raise RestoreRefused(
            f"{path}: archive holds {', '.join(m + '/' for m in missing)} but {config.server.conf} "
            "sets no directory for it"
        )
    return {top for top in scan.tops if top in dirs}


def restore_cold(config: Config, catalog: Catalog, backup: str) -> RestoreResult:
    logger = log.get(action="restore")
    path, record = resolve_backup(catalog, backup)
    logger.info("restore.checking", archive=str(path))
    check_archive(config, path, record)
    uid, gid = owner_ids(config)
    rid = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # Every configured dir is replaced, even one the archive lacks (it becomes empty): a live
    # wal/ left beside restored data would replay newer writes into it.
    targets = dict(sorted(config.server.dirs().items()))
    staging = {top: layout.restore_staging(t, rid) for top, t in targets.items()}
    rollback = {top: layout.rollback_of(t, rid) for top, t in targets.items()}
    result = RestoreResult(archive=str(path), run_id=record.id if record else None)

    size = path.stat().st_size
    for top, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
        if free < size:
            raise RestoreRefused(
                f"not enough space next to {target}: the archive is {size} bytes, {free} free"
            )
        if staging[top].exists() or rollback[top].exists():
            raise RestoreRefused(
                f"{staging[top]} or {rollback[top]} already exists; try again in a second"
            )

    # Extract while influxd still serves: a failure here leaves the live dirs untouched.
    logger.info("restore.extracting", staging=[str(p) for p in staging.values()])
    try:
        result.files = extract_safely(path, staging, uid=uid, gid=gid)
    except (ArchiveError, OSError) as exc:
        for p in staging.values():
            shutil.rmtree(p, ignore_errors=True)
        raise RestoreRefused(f"extraction failed, live data untouched: {exc}") from None

    server = Influxd(config)
    with live_dirs_swapped(config, server, targets, rollback, staging, rid, result, logger):
        t_start = time.monotonic()
        server.start(log_path=config.state_dir / "influxd.log")
        result.start_s = time.monotonic() - t_start
    logger.info(
        "restore.done", **{k: v for k, v in result.__dict__.items() if k != "rollback_dirs"}
    )
    return result


@contextmanager
def live_dirs_swapped(
    config: Config,
    server: Influxd,
    targets: dict[str, Path],
    rollback: dict[str, Path],
    staging: dict[str, Path],
    rid: str,
    result: RestoreResult,
    logger: Logger,
    *,
    move_staging_in: bool = True,
) -> Iterator[None]:
    """Stop influxd, move each live dir aside (and, if asked, each staged dir into its place);
    the body brings a server up on the new dirs.

    Whatever fails or signals in between, the previous dirs are put back and the previous
    server started again (signals held meanwhile), then RestoreFailed. The crash marker is
    written first and cleared only once a server runs, so a SIGKILL is undone by the next
    command (guard.recover).
    """
    marker = CrashMarker(config.state_dir)
    swaps = [[str(targets[t]), str(rollback[t]), str(staging[t])] for t in targets]
    marker.write(f"restore-{rid}", kind="restore", swaps=swaps)
    was_running = server.locate() is not None
    t_stop = time.monotonic()
    try:
        if was_running:
            logger.info("influxd.stopping", phase="stop")
            server.stop()
        result.stop_s = time.monotonic() - t_stop
        t_swap = time.monotonic()
        for top, target in targets.items():
            if target.exists():
                os.rename(target, rollback[top])
                result.rollback_dirs.append(str(rollback[top]))
            if move_staging_in:
                os.rename(staging[top], target)
        result.swap_s = time.monotonic() - t_swap
        yield
        result.downtime_s = time.monotonic() - t_stop
    except (Exception, Interrupted) as exc:
        # any failure at all once the swap began: the previous data must come back
        with signals_blocked():
            logger.error("restore.rolling_back", error=str(exc))
            if result.stop_s is not None and server.locate() is not None:
                server.stop()  # past the stop, a running influxd is the (half-)restored one
            roll_back(swaps)
            if was_running and server.locate() is None:
                server.start(log_path=config.state_dir / "influxd.log")
            marker.clear()  # only once the old server runs again: else the next command retries
        raise RestoreFailed(f"restore failed ({exc}); the previous data was put back") from None
    marker.clear()


def roll_back(swaps: list[list[str]]) -> None:
    """Put each live dir back from its rollback dir; what was restored is kept aside, not deleted."""
    for target_s, rollback_s, staging_s in swaps:
        target, rollback_dir, staging = Path(target_s), Path(rollback_s), Path(staging_s)
        if rollback_dir.exists():
            if target.exists():
                os.rename(
                    target,
                    target.with_name(
                        target.name + ".failed-restore-" + rollback_dir.name.rsplit("-", 1)[-1]
                    ),
                )
            os.rename(rollback_dir, target)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
