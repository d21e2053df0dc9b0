"""Restore of a cold archive: check everything first, swap directories by rename, roll back on failure.

The archive is extracted next to each live dir while influxd still runs, so the stop window holds
only renames. The live dirs are moved aside into rollback dirs, never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import shutil
import tarfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from influx_backupd.core import log
from influx_backupd.core.config import MAX_READ, Config, influx_conf_of
from influx_backupd.core.errors import OnlyInBucket, RestoreMisconfigured, RestoreRefused
from influx_backupd.core.interrupt import Interrupted, signals_blocked
from influx_backupd.influxd import logfile, names
from influx_backupd.influxd import scratch as scratch_dir
from influx_backupd.influxd.sandbox import RESTORE_TEST_SECTIONS, Sandbox, server_settings
from influx_backupd.influxd.server import Influxd
from influx_backupd.report import progress
from influx_backupd.restore.swap import (
    RestoreResult,
    SwapPlan,
    check_served_after_start,
    live_dirs_swapped,
    refuse_source_inside,
    refuse_stranger,
)
from influx_backupd.store import layout
from influx_backupd.store.archive import (
    COLD_TOPS,
    ArchiveError,
    NoSpace,
    extract_safely,
    scan_archive,
)
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import Link, LinkDamaged, lookup
from influx_backupd.store.formats import check_archive as check_formats
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.record import RunRecord, only_in_bucket
from influx_backupd.store.sidecar import SidecarError, record_beside, sidecar_of

ALLOWED_TOPS = COLD_TOPS


def resolve_backup(catalog: Catalog, backup: str) -> tuple[Path, RunRecord | None]:
    path, record = lookup(catalog, backup)
    if record is not None and only_in_bucket(record):
        raise OnlyInBucket(record.id)
    if record is not None and record.id == backup:
        if record.status != "ok" or path is None:
            raise RestoreRefused(f"backup {backup} is {record.status}, not a usable backup")
        refuse_unusable(record, path)
        return path, record
    if path is None:
        raise RestoreRefused(f"{backup}: neither a catalog id nor an existing archive path")
    odd = layout.not_a_backup(path, record)
    if odd is not None:
        raise RestoreRefused(f"{path}: it is {odd}, not a backup (an archive or a backup dir)")
    if record is not None:
        return path, record
    try:  # not in this catalog (a new host?): the record written beside the archive
        return path, record_beside(path.absolute())
    except SidecarError as exc:
        raise RestoreRefused(str(exc)) from None


def refuse_unusable(record: RunRecord, path: Path) -> None:
    """A catalogued backup whose archive is no longer where the catalog says, is a link that
    leads nowhere (archives moved to a disk since unmounted), or is something put in its place
    (layout.not_a_backup): one line naming it (before, a bare "No such file or directory: PATH"
    from the first open, or a wait for ever on a FIFO)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # gone: said below
    except OSError:
        return  # there, but not ours to look at: the open says why, with its path
    else:
        odd = layout.not_a_backup(path, record)
        if odd is not None:
            raise RestoreRefused(
                f"backup {record.id}'s archive {path} is {odd}, not a backup: something was "
                "put in its place; `influx-backupd list` shows what is kept"
            )
        return
    why = "moved or deleted since it was written"
    if os.path.islink(path):
        with contextlib.suppress(OSError):
            why = f"a link to {path.parent / os.readlink(path)}, which is not there"
    raise RestoreRefused(
        f"backup {record.id}'s archive {path} is gone ({why}): `influx-backupd list` shows "
        f"what is kept; if it was sent off-site, `influx-backupd restore {record.id} --from "
        "offsite`"
    )


def named_owner(config: Config) -> tuple[int, int]:
    """[influxd] user's and group's ids; a config error when either does not exist."""
    section = config.settings.influxd
    try:
        uid = pwd.getpwnam(section.user).pw_uid
    except KeyError:
        raise RestoreMisconfigured(
            f"{config.path}: [influxd] user: no such user {section.user!r}"
        ) from None
    try:
        gid = grp.getgrnam(section.group).gr_gid
    except KeyError:
        raise RestoreMisconfigured(
            f"{config.path}: [influxd] group: no such group {section.group!r}"
        ) from None
    return uid, gid


def owner_ids(config: Config) -> tuple[int, int]:
    """[influxd] user's and group's ids, which restored files are given. Refused (a config
    error, before anything is stopped) when the running influxd runs as another user or group:
    the server started on the restored files would fail on them (permission denied on
    meta.db) only once the old one was stopped. An influxd running as root passes (any
    owner's files are its own); with none running there is nothing to compare."""
    section = config.settings.influxd
    uid, gid = named_owner(config)
    other = Influxd(config).runs_as_other(uid)
    if other is not None:
        raise RestoreMisconfigured(
            f"{config.path}: [influxd] user = {section.user!r}, group = {section.group!r} "
            f"(uid {uid}, gid {gid}), but {other}: restored files must belong to the user "
            "influxd runs as; set [influxd] user to its user (and group to its group)"
        )
    return uid, gid


@dataclass(frozen=True)
class ColdScan:
    tops: set[str]  # the archive's top-level names
    unchecked: str | None  # no recorded sha256: what the operator is told (a warning)


# What the WAL checker says of a segment whose first entry is cut short or ends in zeros: influxd
# truncates it there, replaying none of it (verify tolerates it as a torn tail: a crash's work;
# an entry of garbage is an error already: store/formats/wal.py). Unchecked, it is refused.
NOTHING_DECODED = "torn tail at offset 0 "


def scan_cold(path: Path, record: RunRecord | None) -> ColdScan:
    """Read the whole archive: sha256 against the record, safe headers, data present, meta/ and
    data/ there.

    Without a recorded sha256 (a path with no record beside it, an old record) nothing says
    its bytes are the ones written: said (event restore.no_sidecar, ColdScan.unchecked), and
    the formats of its files are checked deeply instead, as verify --deep does; an error, or a
    WAL segment of which nothing decodes, refuses it."""
    # Bytes that differ from the record's sha256 are LinkDamaged: the catalog records it found
    # bad as verify would (before, `list` and status went on calling such an archive ok)
    link = Link(path, record, incremental=False) if record is not None else None
    try:
        scan = scan_archive(path, ALLOWED_TOPS)
    except ArchiveError as exc:  # unreadable, or a member refused: not always the bytes' fault
        raise RestoreRefused(str(exc)) from None
    if link is not None and record is not None and record.sha256 and record.sha256 != scan.sha256:
        raise LinkDamaged(
            f"{path}: sha256 {scan.sha256} does not match the recorded {record.sha256} "
            f"(run {record.id})",
            link,
        )
    for needed in ("meta", "data"):
        if needed not in scan.tops:
            raise RestoreRefused(
                f"{path}: no {needed}/ in the archive; not a cold backup of influxd"
            )
    if record is not None and record.sha256:
        return ColdScan(scan.tops, None)
    unchecked = (
        f"{path} has no recorded sha256 (no record beside it, {sidecar_of(path).name}, and "
        "none in the catalog): its bytes are not checked against anything; only the formats "
        "of its files are"
    )
    log.get(action="restore").warning("restore.no_sidecar", path=str(path), detail=unchecked)
    _check_formats(path)
    return ColdScan(scan.tops, unchecked)


def _check_formats(path: Path) -> None:
    """RestoreRefused naming the first file whose format is wrong (verify --deep's checks), or
    a WAL segment nothing of which decodes."""
    report = check_formats(path, deep=True)
    bad = [f"{f.member}: {f.message}" for f in report.errors] + [
        f"{f.member}: no entry of this WAL segment decodes, influxd would replay none of it "
        f"({f.message.partition('): ')[2] or f.message})"
        for f in report.findings
        if f.severity == "warning" and f.message.startswith(NOTHING_DECODED)
    ]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RestoreRefused(
            f"{path}: {bad[0]}{more}; no recorded sha256 to tell a damaged copy from the one "
            "written"
        )


def check_archive(config: Config, path: Path, record: RunRecord | None) -> ColdScan:
    """scan_cold, and every dir of the archive has a live dir to go to."""
    scan = scan_cold(path, record)
    tops = scan.tops
    dirs = config.server.dirs()
    missing = sorted(tops - set(dirs) - {"influxdb.conf"})
    if missing:
        raise RestoreMisconfigured(
            f"{path}: archive holds {', '.join(m + '/' for m in missing)} but {config.server.conf} "
            "sets no directory for it"
        )
    return ColdScan({top for top in tops if top in dirs}, scan.unchecked)


def _extraction_error(exc: OSError, plan: SwapPlan) -> str:
    """An OSError of the extraction, with where: a write that fails says no path of its own
    ("[Errno 28] No space left on device"), and the disk may have filled after the space check
    (another writer beside the live dirs)."""
    why = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return f"{why}{where}"
    free = []
    for staging in plan.staging.values():
        try:
            free.append(f"{staging.parent}: {shutil.disk_usage(staging.parent).free} bytes free")
        except OSError:
            continue
    now = f"; now {', '.join(free)}" if free else ""
    return (
        f"{why} while extracting beside the live dirs{where}{now} (filled since the space check?)"
    )


def restore_cold(
    config: Config, catalog: Catalog, backup: str, *, accept_fewer_points: bool = False
) -> RestoreResult:
    logger = log.get(action="restore")
    path, record = resolve_backup(catalog, backup)
    logger.info("restore.checking", archive=str(path))
    checked = check_archive(config, path, record)
    uid, gid = owner_ids(config)
    plan = SwapPlan.for_server(config)
    refuse_source_inside(plan, [path])
    # before hours of extraction: a server the config does not name serves the live dirs
    # (asked again right before the stop: live_dirs_swapped)
    refuse_stranger(Influxd(config), plan)
    result = RestoreResult(archive=str(path), run_id=record.id if record else None)
    if checked.unchecked:
        result.warnings.append(checked.unchecked)

    # The staging dirs are named in an owner record (influxd/scratch.py) before the first is
    # made: a restore killed outright leaves them to the next lock-taking command, which removes
    # those of a dead owner (guard.recover); a failure or a signal removes them here.
    try:
        owned = scratch_dir.make(config.storage_dir, "restore-", list(plan.staging.values()))
    except OSError as exc:
        raise RestoreRefused(
            f"cannot record the restore's staging dirs in {config.storage_dir}: "
            f"{exc.strerror or exc}; influxd not stopped"
        ) from None
    try:
        # Extract while influxd still serves: a failure here leaves the live dirs untouched.
        # The space next to each live dir is checked first, for the bytes the members unpack
        # to there.
        logger.info("restore.extracting", staging=[str(p) for p in plan.staging.values()])
        try:
            result.files = extract_safely(
                path, plan.staging, uid=uid, gid=gid, on_progress=extract_progress
            )
        except NoSpace as exc:
            raise RestoreRefused(f"{exc}; influxd not stopped") from None
        except OSError as exc:
            raise RestoreRefused(
                f"extraction failed, live data untouched: {_extraction_error(exc, plan)}; "
                "influxd not stopped"
            ) from None
        except ArchiveError as exc:
            raise RestoreRefused(f"extraction failed, live data untouched: {exc}") from None
        # influxd is started on these files: one it would not load is refused while it serves
        problem = names.unloadable(plan.staging)
        if problem is not None:
            raise RestoreRefused(f"{path}: {problem}; influxd not stopped")

        server = Influxd(config)
        with live_dirs_swapped(config, server, plan, result, logger):
            t_start = time.monotonic()
            server.start(log_path=config.state_dir / logfile.NAME)
            result.start_s = time.monotonic() - t_start
            # ok only once it serves what was counted before the backup's stop (else undone)
            check_served_after_start(
                result,
                config,
                record.db_counts if record else None,
                logger,
                what="counted at backup time",
                before_a_stop=True,
                accept_fewer=accept_fewer_points,
            )
    except (Exception, Interrupted) as exc:
        with signals_blocked():
            # A staging dir still there was never swapped in (the swap renames each into place
            # or, rolling back, removes it): never live data.
            left = [str(p) for p in plan.staging.values() if p.exists()]
            plan.remove_staging()
            if left:
                logger.warning(
                    "restore.staging_removed", paths=left, error=str(exc) or type(exc).__name__
                )
        raise
    finally:
        shutil.rmtree(owned, ignore_errors=True)
    logger.info(
        "restore.done", **{k: v for k, v in result.__dict__.items() if k != "rollback_dirs"}
    )
    return result


def archived_settings(path: Path) -> tuple[dict[str, str], str]:
    """The archived influxdb.conf's [data] and [coordinator] settings, as TOML for a throwaway
    serving the archive's files (index-version: a TSI shard served as inmem is rebuilt, slowly);
    nothing when the archive holds no readable influxdb.conf."""
    try:
        with tarfile.open(path, "r:", tarinfo=CheckedTarInfo) as tar:
            member = tar.extractfile("influxdb.conf")
            if member is None:
                return {}, ""
            # read whole: one larger than any conf (a hostile header's size) is none to serve
            data = member.read(MAX_READ + 1)
            if len(data) > MAX_READ:
                return {}, ""
            raw = influx_conf_of(data)
    except (KeyError, OSError, tarfile.TarError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}, ""
    return server_settings(raw)


def throwaway(config: Config, root: Path, settings: tuple[dict[str, str], str]) -> Sandbox:
    """A throwaway influxd (its config written, not started) serving root's meta, data and wal
    with a server's [data] and [coordinator] settings (archived_settings, live_settings), its
    retention and subscriber services off, beside the live server (the OOM killer's first
    choice)."""
    data, sections = settings
    server = Sandbox(
        root,
        binary=str(config.settings.influxd.binary),
        extra_data=data,
        extra_sections=RESTORE_TEST_SECTIONS + sections,
        beside_live=True,
    )
    server.write_config()
    return server


def extract_progress(done: int, total: int, files: int, files_total: int) -> None:
    """extract_safely's progress to whoever listens (the terminal bar, a unit's status)."""
    progress.notify(done, total, files=(files, files_total))
    if files >= files_total:
        progress.ended()
