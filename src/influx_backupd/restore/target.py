"""`restore BACKUP --target DIR`: a backup unpacked (cold) or rebuilt (a 1.x hot chain) into a
directory of its own, with a ready-to-run influxdb.conf pointing at it; `--start` serves it from
a throwaway influxd. The live server is never stopped, queried or written to: no crash marker,
no swap; only the lock is taken (prune must not delete a backup while it is read).

DIR must be absent or an empty directory that can be made, outside the live server's dirs; it
is made 0700 (a copy of the data is as private as the data). The layout: DIR/meta, DIR/data,
DIR/wal (and DIR/hh for a 0.9 cold archive), DIR/influxdb.conf, written last. DIR/RESTORE-INCOMPLETE
is written first and removed once the conf is in: a DIR with it (or without the conf) is
incomplete. On failure or a signal everything written into DIR is removed again.

Ownership: a scratch dir (influxd/scratch.py) names DIR while the command runs. A restore killed
outright leaves it; the next lock-taking command (guard.recover) then stops any influxd serving
from it or from DIR's conf (a hot chain's build server, or a `--start` server that was still
starting) and removes an incomplete DIR again (emptied, if it was there before). A `--start`
server that answered is handed over to the user (the scratch dir removed, then its pid logged and
printed with `kill PID`): from then on it is theirs, meant to outlive the command.

The conf: free 127.0.0.1 ports (free when written), every path quoted as TOML, the backed-up
server's [data] and [coordinator] settings (from the archived influxdb.conf of a cold archive,
from the live one for a hot chain, whose backups hold none), and the retention, subscriber and
continuous-query services off: an old backup's shards would otherwise be deleted by its
retention policies as soon as it is served.

A hot chain's build starts on the newest link's meta (chain_server's meta_kept): DIR keeps the
backup's users, with their password hashes, and grants, which `influxd restore -portable`
leaves out, and gets the link's continuous queries created again (restore/cqs.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influx_backupd.core import log
from influx_backupd.core.config import Config
from influx_backupd.core.errors import RestoreFailed, RestoreMistake, RestoreRefused, UsageError
from influx_backupd.core.interrupt import Interrupted, signals_blocked
from influx_backupd.core.paths import is_within, real
from influx_backupd.influxd.sandbox import Sandbox, toml_value
from influx_backupd.restore.cold import (
    archived_settings,
    extract_progress,
    scan_cold,
    throwaway,
)
from influx_backupd.restore.cqs import CqsRestored
from influx_backupd.restore.deletes import DeletesApplied
from influx_backupd.restore.hot import (
    StepFailed,
    chain_server,
    check_build_space,
    check_restored09_dirs,
    check_tool_restores,
    live_settings,
    merge_warnings,
    restore_snapshot09_links,
    start_throwaway,
    wait_wal_flushed,
)
from influx_backupd.restore.merge import ChainMerge
from influx_backupd.restore.refusals import binary_usable, scratch_made
from influx_backupd.restore.source import ColdSource, HotSource, choose
from influx_backupd.store.archive import extract_safely
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import check_links

SERVER_DIRS = ("meta", "data", "wal", "hh")
INCOMPLETE_MARK = "RESTORE-INCOMPLETE"
# influxd 1.x globs its shard and WAL file names: under a dir whose path holds one of these,
# it finds none of them and serves empty databases (measured with 1.6 and a backslash)
GLOB_CHARS = "*?[\\"


@dataclass
class TargetResult:
    archive: str
    run_id: str | None
    target: str
    conf: str
    mode: str  # "cold" or "hot"
    links: list[str] = field(default_factory=list)
    files: int = 0
    seconds: float = 0.0
    url: str | None = None  # --start: the throwaway serving DIR
    pid: int | None = None
    merge: str | None = None  # a 1.x chain: how its increments went in, "files" or "sql"
    merge_reason: str | None = None  # why not "files"
    # 1.x: the backup's tombstones, applied before the tool restored it (restore/deletes.py)
    deletes: dict[str, Any] | None = None
    # 1.x: the continuous queries re-created, and those not and why (restore/cqs.py)
    continuous_queries: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)  # for the operator, besides the log


# mkdir's answers that mean the path cannot hold a directory of ours, whatever we retry
DIR_REFUSALS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENOENT,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}


def target_problem(target: Path, config: Config) -> str | None:
    """Why DIR cannot take a restore (None: it can): it must be absent (and one that can be
    made) or an empty dir we may write, outside the live server's dirs and outside our own
    storage and state dirs (a hot backup's own dir among them: it would fail its check for
    good)."""
    try:
        return _target_problem(target, config)
    except OSError as exc:  # a name too long, a loop of links: the path's own fault
        return f"--target {target}: {exc.strerror or exc}"


def _target_problem(target: Path, config: Config) -> str | None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        return f"--target {target}: not a directory"
    resolved = real(target)
    for name, path in config.server.dirs().items():
        if is_within(resolved, real(path)):
            return (
                f"--target {target}: inside the live server's {name} dir {path}; "
                "give a directory outside its meta, data and wal dirs"
            )
    for name, path in (("storage", config.storage_dir), ("state", config.state_dir)):
        if is_within(resolved, real(path)):
            return f"--target {target}: inside influx-backupd's {name} dir {path}; give a directory outside it"
    if not target.exists():
        ancestor = target.parent
        while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            return f"--target {target}: cannot be made, {ancestor} is not a directory"
        if not os.access(ancestor, os.W_OK | os.X_OK):
            return f"--target {target}: cannot be made, {ancestor} is not writable"
    elif not os.access(target, os.W_OK | os.X_OK):  # a read-only mount, another user's dir
        return f"--target {target}: not writable; give a directory this user may write"
    odd = sorted(set(str(target)) & set(GLOB_CHARS))
    if odd:
        return (
            f"--target {target}: influxd cannot serve files under a path with "
            f"{' '.join(odd)} in it (it finds its files by glob patterns); choose another"
        )
    if target.is_dir():
        try:
            if any(target.iterdir()):
                return f"--target {target}: not empty; give an empty or absent directory"
        except OSError as exc:
            return f"--target {target}: cannot be read ({exc.strerror})"
    return None


def restore_into(
    config: Config, catalog: Catalog, backup: str, target: Path, *, start: bool = False
) -> TargetResult:
    """Restore BACKUP (a catalog id or a path) into target; RestoreRefused (nothing written)
    or RestoreFailed (what was written removed again)."""
    target = target.absolute()
    problem = target_problem(target, config)
    if problem is not None:
        raise RestoreMistake(problem)
    source = choose(catalog, backup)
    if isinstance(source, HotSource):  # a backup given by path, outside the storage dir
        for link in source.links:
            if is_within(real(target), real(link.path)):
                raise RestoreMistake(
                    f"--target {target}: inside the backup it restores, {link.path}; give a "
                    "directory outside it"
                )
    logger = log.get(action="restore", target=str(target))
    if isinstance(source, HotSource):
        if source.flavour == "0.9" and start:
            raise RestoreMistake("--start: a 0.9 snapshot cannot be served by influxd 1.x")
        # the configured influxd rebuilds it (its restore, or a throwaway of it): it must read
        # this flavour, found before anything is written (as for the whole-server restore)
        check_tool_restores(config, source.flavour, source.links[-1].path)
        logger.info("restore.checking", links=[str(link.path) for link in source.links])
        scans = check_links(source.flavour, source.links)
        result = TargetResult(
            archive=str(source.links[-1].path),
            run_id=source.record.id if source.record else None,
            target=str(target),
            conf=str(target / "influxdb.conf"),
            mode="hot",
            links=[str(link.path) for link in source.links],
            files=sum(s.files for s in scans),
        )
        result.warnings += [source.unchecked] if source.unchecked else []
    else:
        logger.info("restore.checking", archive=str(source.path))
        cold = scan_cold(source.path, source.record)
        tops = cold.tops
        result = TargetResult(
            archive=str(source.path),
            run_id=source.record.id if source.record else None,
            target=str(target),
            conf=str(target / "influxdb.conf"),
            mode="cold",
        )
        result.warnings += [cold.unchecked] if cold.unchecked else []
    if start and isinstance(source, ColdSource):
        binary_usable(config)  # the throwaway serving DIR: found before DIR is written
    started = time.monotonic()
    created = not target.exists()
    first_made = target  # the uppermost dir the mkdir below makes: a failure removes up to it
    while created and not first_made.parent.exists() and first_made.parent != first_made:
        first_made = first_made.parent
    # owned (by owner.json) before anything is made: recovery undoes what a kill leaves
    scratch = scratch_made(config, "target-", target=target, created=created)
    try:
        try:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            line = f"--target {target}: cannot be made ({exc.strerror})"
            # The path's fault, like those target_problem finds (where access(2) said yes but
            # the filesystem says no: /proc, a read-only mount): a usage error. The machine's
            # (a full disk, an I/O error): the restore failed.
            if exc.errno in DIR_REFUSALS:
                raise UsageError(line) from None
            raise RestoreRefused(line) from None
        try:
            os.chmod(target, 0o700)
            mark = target / INCOMPLETE_MARK
            mark.write_text(
                f"influx-backupd restore of {result.archive} into this directory (pid "
                f"{os.getpid()}) has not finished: if it is gone, the next command that takes "
                "the backup lock removes what it wrote\n"
            )
            if isinstance(source, ColdSource):
                server = _unpack_cold(config, source, tops, target, result)
            elif source.flavour == "portable":
                check_build_space(
                    {top: target / top for top in ("meta", "data")},
                    source.links,
                    scans,
                    what="the chain rebuilt there",
                    then="nothing written",
                )
                server = _rebuild_portable(config, source, target, result, scratch)
            else:
                server = None
                _rebuild_09(config, source, target)
            mark.unlink()  # the conf is in: complete
        except (Exception, Interrupted) as exc:
            with signals_blocked():
                _empty(target, created, first_made)
            what = "removed again" if created else "emptied again"
            why = (
                f"interrupted by {exc}"
                if isinstance(exc, Interrupted)
                else f"failed ({exc or type(exc).__name__})"
            )
            raise RestoreFailed(
                f"restore into {target} {why}; {target} {what}; the live server was not touched"
            ) from None
        result.seconds = round(time.monotonic() - started, 3)
        logger.info(
            "restore.unpacked", conf=result.conf, files=result.files, seconds=result.seconds
        )
        if start and server is not None:
            try:
                start_throwaway(server, config.settings.influxd.start_timeout, "influxd")
                with signals_blocked():  # the hand-over, whole or not at all
                    result.url = server.url
                    result.pid = server.proc.pid if server.proc is not None else None
                    shutil.rmtree(scratch, ignore_errors=True)  # the server is the user's now
                    logger.info("restore.serving", url=result.url, pid=result.pid)
            except StepFailed as exc:
                raise RestoreFailed(
                    f"the backup is in {target}, but {exc} (its log: {target / 'influxd.log'})"
                ) from None
            except Interrupted as exc:
                with signals_blocked():  # stopped already if it never answered
                    server.stop()
                raise RestoreFailed(
                    f"interrupted by {exc} while influxd started on {target}, which was stopped "
                    f"again; the backup is in {target} (serve it with: influxd run -config "
                    f"{shlex.quote(result.conf)}); the live server was not touched"
                ) from None
    finally:
        with signals_blocked():
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def _unpack_cold(
    config: Config, source: ColdSource, tops: set[str], target: Path, result: TargetResult
) -> Sandbox:
    dirs = {top: target / top for top in SERVER_DIRS if top in tops}
    result.files = extract_safely(
        source.path, dirs, uid=None, gid=None, on_progress=extract_progress
    )
    data, sections = archived_settings(source.path)
    if "hh" in dirs:
        sections += f"\n[hinted-handoff]\n  dir = {toml_value(dirs['hh'])}\n"
    return throwaway(config, target, (data, sections))  # its conf written last


def _rebuild_portable(
    config: Config, source: HotSource, target: Path, result: TargetResult, scratch: Path
) -> Sandbox:
    """The chain restored into a throwaway whose dirs are target's (its conf in the restore's
    scratch dir, so that recovery stops it after a kill), its WAL flushed into TSM, stopped."""
    logger = log.get(action="restore", mode="hot", target=str(target))
    data, sections = live_settings(config.server.conf)
    build_data = {**data, "cache-snapshot-write-cold-duration": '"1s"'}
    merges: list[ChainMerge] = []
    applied = DeletesApplied()
    # the backup's users, grants and continuous queries, which `influxd restore` leaves out
    kept = CqsRestored()
    with chain_server(
        config,
        source.links,
        scratch,
        tag=scratch.name[-8:],
        logger=logger,
        dirs={top: target / top for top in ("meta", "data", "wal")},
        extra_data=build_data,
        extra_sections=sections,
        merges=merges,
        deletes_applied=applied,
        meta_kept=kept,
    ):
        wait_wal_flushed(target / "wal", logger)
    if merges:
        result.merge, result.merge_reason = merges[0].path, merges[0].reason
        result.warnings += merge_warnings(merges[0])
    result.deletes = applied.summary()
    result.continuous_queries = kept.summary()
    result.warnings += kept.warnings
    return throwaway(config, target, (data, sections))  # its conf written last


def _rebuild_09(config: Config, source: HotSource, target: Path) -> None:
    """`influxd restore -config` of the 0.9 chain into target's meta and data dirs; the conf
    written for the tool stays as target's (a 0.9 server's, not runnable by influxd 1.x)."""
    logger = log.get(action="restore", mode="hot", target=str(target))
    conf = target / "influxdb.conf.partial"
    conf.write_text(
        "# influx-backupd restore --target: a 0.9 server's dirs\n"
        f"[meta]\n  dir = {toml_value(target / 'meta')}\n"
        f"[data]\n  dir = {toml_value(target / 'data')}\n"
        f"[hinted-handoff]\n  dir = {toml_value(target / 'hh')}\n"
    )
    # named apart from target (whose name may take the 255 bytes a name has)
    scratch = scratch_made(config, "restore09-")
    try:
        restore_snapshot09_links(
            str(config.settings.influxd.binary),
            conf,
            source.links,
            scratch / "stage",
            timeout=config.settings.influxd.backup_timeout,
            logger=logger,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    check_restored09_dirs(target / "meta", target / "data")
    conf.rename(target / "influxdb.conf")


def recover_target(target: Path, created: bool) -> bool:
    """After a restore into target was killed outright: remove what it wrote unless it
    finished (the conf in, the mark gone). True: removed (or emptied, if it was there before)."""
    if not target.is_dir() or target.is_symlink():
        return False
    if (target / "influxdb.conf").is_file() and not (target / INCOMPLETE_MARK).exists():
        return False
    _empty(target, created)
    return True


def _empty(target: Path, created: bool, first_made: Path | None = None) -> None:
    """Remove what a failed restore wrote into target (target itself too if it made it, and
    the parents it made for it, up to first_made, where they are empty)."""
    if created:
        shutil.rmtree(target, ignore_errors=True)
        for parent in target.parents if first_made not in (None, target) else ():
            if parent == first_made.parent:  # type: ignore[union-attr]
                break
            with contextlib.suppress(OSError):
                parent.rmdir()
        return
    with contextlib.suppress(OSError):
        for child in target.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
