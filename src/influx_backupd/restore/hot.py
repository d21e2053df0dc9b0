"""Restore of hot backups, and `influx-backupd restore`'s choice between cold and hot.

Both hot flavours restore the whole server: every link is checked first (manifest, sizes,
sha256 against the catalog) before anything is touched; the live meta, data, wal (and hh) dirs are
moved aside into rollback dirs, never deleted; on failure they are put back and the old server is
started again. Restored files are chowned to [influxd] user/group.

- 1.x (-portable): built beside the live server, which serves meanwhile, as the cold restore
  extracts beside it. Staging dirs `.{dir}.restore-{rid}` are made next to each live dir (same
  filesystem: the swap is a rename; refused up front when the links' unpacked sizes, increments
  twice, do not fit there). A throwaway influxd on free 127.0.0.1 ports, with its own
  influxdb.conf (no auth; the live [data] and [coordinator] settings) and those staging dirs as
  its meta, data and wal, starts on a copy of the live meta.db, whose users it keeps and whose
  databases it drops (the tool restores no users). A chain is first merged at file speed
  (restore/merge.py): its links' shard files combined, shard by shard, into one synthetic
  portable backup in the scratch dir (the newest link's meta; shards the newest link does not
  list left out), restored once with `influxd restore -portable` like a full. Only where that
  cannot be exact (an increment without the live shards' listing the hot job records, a
  compaction after a snapshot, a tombstone whose TSM file is in no link, too little space) does
  it fall back, saying
  why (event restore.chain_merge, the result's merge and merge_reason), to the SQL merge, held
  to the newest link's meta by shard id (restore/sql_chain.py): the full's shards it lists,
  under it, then each link's shards to copy, which the tool refuses to restore over existing
  databases ("DB metadata not changed. database may already exist"), under a temporary name,
  copied in with `SELECT * INTO ... GROUP BY *` (InfluxData's documented way to restore into an
  existing database) shard by shard, and dropped. Non-admin users get their grants back and the
  newest link's continuous queries are created again (the tool restores none; restore/cqs.py);
  the throwaway is stopped cleanly and the staged trees chowned. Only then is the live influxd
  stopped, the dirs swapped by rename and influxd started: downtime = stop + rename + start; build_s is the time spent
  beside. Every consumer of a chain (this, --target, --database, verify's restore test) goes
  through restore_portable_links, so all of them merge the same way, and each backup dir the
  tool reads first has its tombstones applied (apply_deletes, restore/deletes.py).
  The live server is queried only once it serves the build: its point counts must reach the
  build's (restore/served.py; [influxd] credentials where auth is on, not compared when
  refused), or the swap is undone. A failure or signal while
  building stops the throwaway, removes the staging dirs and leaves the live server as it was
  (RestoreFailed). The throwaway's conf and owner.json (naming the staging dirs) live in a
  verify scratch dir: a restore killed outright is cleaned up by the next lock-taking command
  (guard.recover stops the throwaway, removes the staging dirs; prune removes the scratch dir).
- 0.9: with influxd stopped, `influxd restore -config CONF PATH`; the tool reads PATH and every
  PATH.N beside it, so the chain up to the chosen link is hard-linked (or copied) into a verify
  scratch dir before the stop (prune removes one a killed restore left).

The restore goes into the local server of [influxd] config (its own bind-address), whatever
backup_host the backups came from.

A 1.x dir given by a path the catalog does not know (a new host: the state_dir was lost, the
storage dir kept) is restored with its chain from the records hot.py writes beside each dir
(`<job>-<runid>.json`, sidecar_chain); a dir without one is restored alone, with a warning.

Why one module of this size: the two flavours' restores share the link checks, the chown and
the grants handling, and the 1.x build beside the live server is one sequence (throwaway, links
merged or copied in, WAL flush, stop) that reads best in one place.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from influx_backupd.core import log
from influx_backupd.core.atomic import read_ours_text, read_small
from influx_backupd.core.config import Config, read_influx_conf
from influx_backupd.core.errors import (
    BackupdError,
    HotFailed,
    RestoreFailed,
    RestoreMisconfigured,
    RestoreRefused,
)
from influx_backupd.core.interrupt import Interrupted, signals_blocked
from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.log import Logger
from influx_backupd.influxd import counts, influxql, logfile
from influx_backupd.influxd import tombstones as influxd_tombstones
from influx_backupd.influxd.influxql import ident, values
from influx_backupd.influxd.sandbox import RESTORE_TEST_SECTIONS, Sandbox, server_settings
from influx_backupd.influxd.server import Influxd
from influx_backupd.influxd.tool import run_tool, tool_version
from influx_backupd.report import progress
from influx_backupd.restore import deletes
from influx_backupd.restore.cold import owner_ids, restore_cold
from influx_backupd.restore.cqs import (
    ContinuousQuery,
    CqsRestored,
    bring_back,
    meta_file,
    server_cqs,
)
from influx_backupd.restore.deletes import DeletesApplied
from influx_backupd.restore.merge import (
    ChainMerge,
    merged_bytes,
    plan_merge,
    view_of,
    write_merged,
)
from influx_backupd.restore.refusals import binary_usable, scratch_made, storage_writable
from influx_backupd.restore.served import NOT_ACCEPTED, count_built
from influx_backupd.restore.source import ColdSource, choose
from influx_backupd.restore.sql_chain import CAVEAT, ShardCopy, plan_sql, write_filtered
from influx_backupd.restore.swap import (
    RestoreResult,
    SwapPlan,
    check_served_after_start,
    live_dirs_swapped,
    refuse_source_inside,
    refuse_stranger,
)
from influx_backupd.store.archive import short_of_room
from influx_backupd.store.catalog import Catalog, CatalogError
from influx_backupd.store.chain import (
    Link,
    check_links,
)
from influx_backupd.store.record import Flavour, RunRecord
from influx_backupd.store.scanners import (
    Scan,
    listed_size,
    portable_meta_store,
)

QUERY_TIMEOUT = 3600.0
SHARD_WAIT = 120.0  # how long a freshly restored shard may stay disabled


class StepFailed(BackupdError):
    """A restore step failed (in restore_backup, after the swap: roll back)."""

    code = "restore.step"


@dataclass
class HotRestoreResult(RestoreResult):
    flavour: str = ""
    links: list[str] = field(default_factory=list)  # oldest first: the full, then increments
    restore_s: float | None = None  # restoring the links (1.x: inside the build)
    build_s: float | None = None  # 1.x: building the restored server beside the live one
    merge: str | None = None  # 1.x: how the increments went in: "files" or "sql"
    merge_reason: str | None = None  # why not "files"
    # 1.x: the backup's tombstones, applied before the tool restored it (restore/deletes.py)
    deletes: dict[str, Any] | None = None
    # 1.x: the continuous queries re-created, and those not and why (restore/cqs.py)
    continuous_queries: dict[str, Any] | None = None


# -- choosing ---------------------------------------------------------------------------------------


def restore_backup(
    config: Config, catalog: Catalog, backup: str, *, accept_fewer_points: bool = False
) -> RestoreResult:
    """Restore BACKUP (a catalog id or a path): cold archives by restore_cold, hot ones here.
    accept_fewer_points: a cold archive's server may serve fewer points than counted before
    its stop (restore/served.py); a hot chain is held to its build's count regardless."""
    source = choose(catalog, backup)
    # found before a cold archive is read or a build begins, the same for either flavour
    storage_writable(config)
    # every hot chain of the server ends here: restored files keep their old times, which an
    # increment's -since leaves out. Marked before the swap (a kill after it must not leave a
    # chain extendable; a restore that fails costs only a full), said as done after it.
    ended = f"the server was restored from {backup}"
    catalog.end_chains("restore", f"a restore of the server from {backup} began at {_utc()}")
    if isinstance(source, ColdSource):
        result: RestoreResult = restore_cold(
            config, catalog, backup, accept_fewer_points=accept_fewer_points
        )
    else:
        result = _restore_hot(config, source.flavour, source.links, source.record)
        result.warnings += [source.unchecked] if source.unchecked else []
        result.warnings += [NOT_ACCEPTED] if accept_fewer_points else []
    with contextlib.suppress(CatalogError):  # the mark above ends the chains already
        catalog.end_chains("restore", f"{ended} at {_utc()}")
    return result


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- the swap -----------------------------------------------------------------------------------


def _restore_hot(
    config: Config, flavour: Flavour, links: list[Link], record: RunRecord | None
) -> HotRestoreResult:
    logger = log.get(action="restore", mode="hot", flavour=flavour)
    logger.info("restore.checking", links=[str(link.path) for link in links])
    scans = check_links(flavour, links)
    uid, gid = owner_ids(config)
    check_tool_restores(config, flavour, links[-1].path)
    # 1.x: the restored server is built in plan.staging; 0.9: never created (roll_back removes them)
    plan = SwapPlan.for_server(config)
    # before the build: a server the config does not name serves the live dirs (asked again
    # right before the stop: live_dirs_swapped)
    refuse_stranger(Influxd(config), plan)
    targets = plan.targets
    if flavour == "0.9":
        for top in ("meta", "data"):
            given = config.server.dirs().get(top)
            if given is not None and given.is_symlink():
                # os.RemoveAll removes the link itself: the restored dir would be a plain dir in
                # its place, on the link's filesystem, and a rollback would lose the link
                raise RestoreMisconfigured(
                    f"{config.server.conf}: {top} dir {given} is a symlink, which 0.9's "
                    "`influxd restore` replaces by a plain dir; influxd not stopped (point "
                    f"the config at {targets[top]} itself)"
                )
    refuse_source_inside(plan, [link.path for link in links])
    if flavour == "portable":
        if "wal" not in targets:
            raise RestoreMisconfigured(
                f"{config.server.conf} sets no [data] wal-dir: the restored server's WAL "
                "needs a dir to be swapped into"
            )
        check_build_space(plan.staging, links, scans)
    result = HotRestoreResult(
        archive=str(links[-1].path),
        run_id=record.id if record else None,
        flavour=flavour,
        links=[str(link.path) for link in links],
        files=sum(s.files for s in scans),
    )
    server = Influxd(config)
    if flavour == "portable":
        _restore_portable_beside(config, links, plan, uid, gid, result)
    else:
        scratch = scratch_made(config, "restore09-")
        try:
            # staged while influxd serves: a copy (links from another filesystem) is no downtime
            staged = stage_snapshot09_links(links, scratch / "stage")
            # with influxd stopped, the tool writes into the live config's (emptied) dirs
            with live_dirs_swapped(config, server, plan, result, logger, move_staging_in=False):
                _snapshot09(config, staged, scans, targets, uid, gid, result, server, logger)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    logger.info(
        "restore.done",
        **{k: v for k, v in result.__dict__.items() if k not in ("rollback_dirs", "links")},
    )
    return result


FLAVOUR_NAMES = {"0.9": "an InfluxDB 0.9 snapshot", "portable": "a 1.x -portable backup"}


def check_tool_restores(config: Config, flavour: Flavour, path: Path) -> None:
    """The configured influxd's own restore reads this flavour: found before anything is
    stopped (a 0.9 snapshot given to a 1.x tool, or the other way round, cannot be restored).
    A binary that is not there or not executable is a config error (78) in every form."""
    binary_usable(config)
    binary = config.settings.influxd.binary
    try:
        version = tool_version(binary)
    except HotFailed as exc:
        raise RestoreRefused(str(exc).removeprefix("hot.tool: ")) from None
    if version.flavour != flavour:
        raise RestoreRefused(
            f"{path} is {FLAVOUR_NAMES[flavour]}, but [influxd] binary {binary} is InfluxDB "
            f"{version.text}, whose restore cannot read it"
        )


# Room the throwaway influxd needs beyond the shard bytes: its series files and indexes, WAL
# segments, a compaction's new files written before the old are removed. Without it a build on a
# nearly full disk stalls inside `influxd restore` (the server's write fails, the tool waits)
# until backup_timeout, holding the backup lock. Half the shard bytes, at least 4 MiB, at most
# 64 MiB: a fixed 64 MiB refused a restore of a small backup that fitted a small volume.
BUILD_HEADROOM_MIN, BUILD_HEADROOM_MAX = 4 << 20, 64 << 20


def build_headroom(shard_bytes: int) -> int:
    return min(BUILD_HEADROOM_MAX, max(BUILD_HEADROOM_MIN, shard_bytes // 2))


def check_build_space(
    staging: dict[str, Path],
    links: list[Link],
    scans: list[Scan],
    *,
    what: str = "the restored server built beside the live one",
    then: str = "influxd not stopped",
) -> None:
    """Refuse, before anything starts, a build that cannot fit beside the live dirs (or in
    restore --target's dir: there a full disk made the throwaway's restore wait for its whole
    backup_timeout, an hour by default).

    The estimate is the links' unpacked sizes from their manifests, increments twice: restored
    under a temporary name, then copied in by SELECT INTO before the temporary copy is dropped;
    plus build_headroom. Shards go to the data dir's filesystem, the meta to the meta dir's
    (staging: beside each real live dir, symlinks resolved).
    """
    shards = meta = 0
    for link, scan in zip(links, scans, strict=True):
        link_shards = sum(int(f.get("size", 0)) for f in scan.manifest.get("files", []))
        meta += int(scan.manifest.get("meta", {}).get("size", 0))
        shards += link_shards * (2 if link is not links[0] else 1)
    short = short_of_room(
        (staging[top].parent, size)
        for top, size in (("data", shards + build_headroom(shards)), ("meta", meta))
        if top in staging
    )
    if short is not None:
        parent, size, free = short
        raise RestoreRefused(
            f"not enough space in {parent}: {what} needs about {size} bytes there, {free} "
            f"free; {then}"
        )


NO_SPACE = "no space left on device"


def _out_of_space(what: str, logs: list[str]) -> StepFailed | None:
    """The failure named as the full disk it is, when the tool's or a server's output says so
    (ENOSPC: the tool then often reports only a timeout or a broken connection)."""
    for text in logs:
        for line in reversed(re.split(r"\n| \| ", text)):
            if NO_SPACE in line.lower():
                return StepFailed(f"{what} ran out of disk space ({line.strip()[-200:]})")
    return None


def _restore_portable_beside(
    config: Config,
    links: list[Link],
    plan: SwapPlan,
    uid: int,
    gid: int,
    result: HotRestoreResult,
) -> None:
    """Build the restored server in the staging dirs while the live one serves, then swap.

    The throwaway influxd's conf and owner.json live in a scratch dir (scratch.py):
    a restore killed outright leaves it serving and the staging dirs full; the next lock-taking
    command stops it and removes the staging dirs named there (guard.recover), prune the rest.
    """
    logger = log.get(action="restore", mode="hot", flavour="portable")
    scratch: Path | None = None
    built: dict[str, int] | None = None  # the build's point counts, once it is done
    try:
        scratch = scratch_made(config, "restore-", list(plan.staging.values()))
        t_build = time.monotonic()
        logger.info("restore.building", staging=[str(p) for p in plan.staging.values()])
        built = _build(config, links, plan, scratch, uid, gid, result, logger)
        result.build_s = time.monotonic() - t_build
        logger.info("restore.built", build_s=round(result.build_s, 3))
        server = Influxd(config)
        with live_dirs_swapped(config, server, plan, result, logger, move_staging_in=True):
            t_start = time.monotonic()
            server.start(log_path=config.state_dir / logfile.NAME)
            result.start_s = time.monotonic() - t_start
            # ok only once it serves what the build held (else undone by the swap)
            check_served_after_start(
                result, config, built, logger, what="in the build before the swap"
            )
    except (Exception, Interrupted) as exc:
        with signals_blocked():
            # A staging dir still there was never swapped in (live_dirs_swapped renames them
            # into place or removes them when it rolls back): never live data.
            plan.remove_staging()
        if isinstance(exc, RestoreFailed | RestoreRefused):
            # from the swap: the previous dirs and server were put back (RestoreFailed), or
            # refused before its stop (a unit masked, renames blocked meanwhile: exit 78 as
            # for a cold restore; the build is removed, the live server untouched)
            raise
        logger.error("restore.build_failed", error=str(exc) or type(exc).__name__)
        what = "while building beside" if built is None else "before swapping in for"
        raise RestoreFailed(
            f"restore failed {what} the live server ({exc}); "
            "the live server and its data were not touched"
        ) from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _build(
    config: Config,
    links: list[Link],
    plan: SwapPlan,
    scratch: Path,
    uid: int,
    gid: int,
    result: HotRestoreResult,
    logger: Logger,
) -> dict[str, int]:
    """Restore the links into a throwaway influxd (free 127.0.0.1 ports, no auth) whose meta,
    data and wal dirs are the staging dirs; stop it cleanly; chown what it wrote. Returns its
    point counts per database (restore/served.py: the live server is held to them)."""
    targets, staging = plan.targets, plan.staging

    section = config.settings.influxd
    for path in staging.values():
        path.mkdir()
        path.chmod(0o755)  # influxd's dir, as influxd makes it: not our umask's 0700
    # `influxd restore -portable` restores databases, not users: the throwaway starts on a copy
    # of the live meta (its accounts), whose databases are dropped before the links go in.
    # influxd replaces meta.db by rename, so a copy taken while it runs is a whole one.
    live_meta = targets["meta"] / "meta.db"
    kept_accounts = live_meta.is_file()
    if kept_accounts:
        shutil.copy2(live_meta, staging["meta"] / "meta.db")
    data_extra, sections = live_settings(config.server.conf)
    # Flush its cache to TSM a second after the last write: otherwise the live server replays
    # what SELECT INTO left in the WAL at its start, inside the downtime.
    data_extra["cache-snapshot-write-cold-duration"] = '"1s"'
    throwaway = Sandbox(
        scratch,
        binary=str(section.binary),
        extra_data=data_extra,
        extra_sections=RESTORE_TEST_SECTIONS + sections,
        dirs={top: staging[top] for top in ("meta", "data", "wal")},
        beside_live=True,
    )
    throwaway.write_config()

    def start() -> None:
        start_throwaway(throwaway, section.start_timeout, "an influxd on the staging dirs")

    try:
        try:
            start()
        except StepFailed as exc:
            if not kept_accounts or throwaway.killed_by() is not None:
                raise
            # A broken live server is when a restore is needed most: its meta.db may be what
            # broke. Start from an empty meta instead; only the accounts are lost.
            throwaway.stop(timeout=section.stop_timeout)
            logger.warning(
                "restore.live_meta_unusable",
                detail="the live meta.db cannot be opened: restoring without its users "
                "(create them again after the restore)",
                error=str(exc),
            )
            shutil.rmtree(staging["meta"])
            staging["meta"].mkdir()
            staging["meta"].chmod(0o755)
            kept_accounts = False
            start()
        t_restore = time.monotonic()
        applied = DeletesApplied()
        grants, live_cqs = _clear_databases(throwaway.url, logger) if kept_accounts else ([], [])
        with growth_reported(staging["data"], links):
            merge = restore_portable_links(
                str(section.binary),
                throwaway.backup_host,
                throwaway.url,
                links,
                timeout=section.backup_timeout,
                tag=plan.rid,
                logger=logger,
                work=scratch,
                deletes_applied=applied,
            )
        if merge is not None:
            result.merge, result.merge_reason = merge.path, merge.reason
            result.warnings += merge_warnings(merge)
        result.deletes = applied.summary()
        _grant_again(throwaway.url, grants, logger)
        # nor continuous queries: the newest link's meta holds those of the restored state
        cqs = bring_back(
            links[-1].path, partial(_query, throwaway.url, db=None), logger, live=live_cqs
        )
        result.continuous_queries = cqs.summary()
        result.warnings += cqs.warnings
        result.restore_s = time.monotonic() - t_restore
        built, not_counted = count_built(throwaway.url, logger)
        if not_counted:
            result.warnings.append(
                f"the build was not counted in full ({not_counted}): the restored server is "
                "not held to a point count for what was not counted"
            )
        wait_wal_flushed(staging["wal"], logger)
        if throwaway.killed_by() is not None:  # died after its last answer: not a whole build
            raise StepFailed("the build's influxd died")  # reported as its death, below
    except Exception as exc:
        # Whatever step noticed it first (a refused query, a failed tool), the cause to report
        # is the server's death, or the disk it filled.
        note = throwaway.killed_note()
        if note is not None:
            raise StepFailed(note) from exc
        full = _out_of_space(
            "the build beside the live server", [str(exc), throwaway.log_tail(20_000)]
        )
        if full is not None:
            raise full from exc
        raise
    finally:
        with signals_blocked():  # a second signal must not leave it serving
            throwaway.stop(timeout=section.stop_timeout)
    _chown_tree(list(staging.values()), uid, gid)
    return built


def _tree_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):  # compacted away meanwhile
            if path.is_file():
                total += path.stat().st_size
    return total


def link_bytes(link: Link) -> int:
    """A 1.x link's shard bytes, as its manifest lists them."""
    found = sorted(link.path.glob("*.manifest"))
    if not found:
        return 0
    manifest = loads_json(read_ours_text(found[0]))
    return sum(int(f.get("size", 0)) for f in manifest.get("files", []))


@contextmanager
def growth_reported(data: Path, links: list[Link], every: float = 1.0) -> Iterator[None]:
    """While links are restored into a server whose data dir is data: its size against the
    links' shard bytes, to whoever listens (report.progress), every `every` seconds."""
    total = max(sum(link_bytes(link) for link in links), 1)
    with progress.repeating(every, lambda: progress.notify(min(_tree_bytes(data), total), total)):
        yield
    progress.notify(total, total)
    progress.ended()


def start_throwaway(server: Sandbox, timeout: float, what: str) -> None:
    """Start a throwaway influxd; StepFailed with the end of its log when it does not come up.
    Neither a signal while it starts nor a start that timed out leaves it running."""
    log.get().info("throwaway.starting", conf=str(server.conf), what=what)
    try:
        server.start(timeout=timeout)
    except RuntimeError:
        why = server.killed_note() or server.log_tail()
        if server.proc is not None and server.proc.poll() is None:
            with signals_blocked():  # not up in time, still starting: no one else stops it
                server.stop()
        raise StepFailed(f"{what} did not start: {why}") from None
    except BaseException:
        with signals_blocked():
            server.stop()
        raise


@contextmanager
def chain_server(
    config: Config,
    links: list[Link],
    root: Path,
    *,
    tag: str,
    logger: Logger,
    dirs: dict[str, Path] | None = None,
    extra_data: dict[str, str] | None = None,
    extra_sections: str = "",
    databases: set[str] | None = None,
    merges: list[ChainMerge] | None = None,
    deletes_applied: DeletesApplied | None = None,
    meta_kept: CqsRestored | None = None,
) -> Iterator[Sandbox]:
    """An empty throwaway influxd (its conf in root: recovery finds a scratch dir's) with 1.x
    links restored into it, full first (only `databases`, if given); stopped cleanly on exit.
    How the chain went in (restore_portable_links; its merged backup written in root) is
    appended to merges, what it did with the backup's tombstones counted into deletes_applied.

    dirs: its meta, data and wal elsewhere than under root. meta_kept (--target): it starts on
    the newest link's meta store instead, whose users (their password hashes too) it keeps, as
    the whole-server build keeps the live ones: its databases are dropped before the links go
    in, its grants given and continuous queries created again after (said into meta_kept).
    Raises StepFailed, naming the server's death by a signal when that is what went wrong.
    """
    section = config.settings.influxd
    server = Sandbox(
        root,
        binary=str(section.binary),
        extra_data=extra_data or {},
        extra_sections=RESTORE_TEST_SECTIONS + extra_sections,
        dirs=dirs or {},
        beside_live=True,
    )
    if meta_kept is not None:
        try:
            store = portable_meta_store(read_small(meta_file(links[-1].path)))
        except (OSError, ValueError) as exc:
            raise StepFailed(f"{links[-1].path}: its meta cannot be read ({exc})") from None
        server.meta.mkdir(parents=True, exist_ok=True)
        (server.meta / "meta.db").write_bytes(store)
    server.write_config()
    start_throwaway(server, section.start_timeout, "an empty influxd")
    try:
        try:
            grants = _clear_databases(server.url, logger)[0] if meta_kept is not None else []
            with growth_reported(server.data, links):
                merge = restore_portable_links(
                    str(section.binary),
                    server.backup_host,
                    server.url,
                    links,
                    timeout=section.backup_timeout,
                    tag=tag,
                    logger=logger,
                    databases=databases,
                    work=root,
                    deletes_applied=deletes_applied,
                )
            if merges is not None and merge is not None:
                merges.append(merge)
            if meta_kept is not None:
                _grant_again(server.url, grants, logger)
                run = partial(_query, server.url, db=None)
                bring_back(links[-1].path, run, logger, into=meta_kept)
        except Exception as exc:
            note = server.killed_note()
            if note is None:
                raise
            raise StepFailed(note) from exc
        yield server
    finally:
        with signals_blocked():  # a second signal must not leave it serving
            server.stop(timeout=section.stop_timeout)


WAL_FLUSH_WAIT = 30.0  # seconds; past it the live server replays the rest at its start
WAL_FLUSHED = 64 << 10  # bytes of WAL segments left that count as flushed


def _wal_bytes(wal: Path) -> int:
    total = 0
    for path in wal.rglob("*.wal"):
        with contextlib.suppress(FileNotFoundError):  # removed by the snapshot meanwhile
            total += path.stat().st_size
    return total


def wait_wal_flushed(wal: Path, logger: Logger) -> None:
    """Wait (outside the downtime) until the throwaway has snapshotted its WAL into TSM."""
    started = time.monotonic()
    left = _wal_bytes(wal)
    while left > WAL_FLUSHED and time.monotonic() - started < WAL_FLUSH_WAIT:
        time.sleep(0.2)
        left = _wal_bytes(wal)
    logger.info(
        "restore.wal_flushed",
        wal_bytes=left,
        waited_s=round(time.monotonic() - started, 3),
        flushed=left <= WAL_FLUSHED,
    )


def live_settings(conf: Path) -> tuple[dict[str, str], str]:
    """The live influxdb.conf's [data] and [coordinator] settings for the throwaway: the
    restored shards must be what the live server expects, SELECT INTO meet its limits."""
    return server_settings(read_influx_conf(conf))


def _chown_tree(roots: list[Path], uid: int, gid: int) -> None:
    for root in roots:
        if not root.exists():
            continue
        os.chown(root, uid, gid, follow_symlinks=False)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def apply_deletes(
    binary: str,
    directory: Path,
    work: Path | None,
    *,
    timeout: float,
    logger: Logger,
    report: DeletesApplied | None = None,
) -> Path:
    """The portable backup dir to restore: directory itself when none of its shard tars holds
    a tombstone, else a copy under work with their deletes applied by a throwaway influxd
    (restore/deletes.py). Counts into report; raises StepFailed."""
    found, counted = deletes.find(directory)
    out = directory
    if found and work is None:
        counted.not_applied[directory.name] = "no scratch dir to apply them in"
        found = []
    if found:
        assert work is not None
        started = time.monotonic()
        root = Path(tempfile.mkdtemp(prefix="deletes-", dir=work))
        server = Sandbox(
            root,
            binary=binary,
            extra_sections=RESTORE_TEST_SECTIONS,
            dirs={"meta": root / "meta", "data": root / "data", "wal": root / "wal"},
            beside_live=True,
        )
        deletes.lay_out(directory, found, server.meta, server.data)
        server.write_config()
        logger.info("restore.applying_deletes", backup=str(directory), shards=len(found))
        start_throwaway(server, timeout, "an influxd applying the backup's deletes")
        try:
            influxd_tombstones.wait_gone(server.data)
        finally:
            with signals_blocked():
                server.stop(timeout=timeout)
        if server.killed_by() is not None:
            raise StepFailed(server.killed_note() or "the influxd applying deletes died")
        out = root / "backup"
        still = deletes.pack(directory, found, server.data, out)  # left in its files: not applied
        counted.applied = sum(len(s.tombstones) for s in found) - still
        counted.shards = len(found)
        counted.seconds = round(time.monotonic() - started, 3)
        if still:
            counted.not_applied[directory.name] = (
                f"{still} not compacted in within {influxd_tombstones.WAIT:g}s"
            )
    if counted.tombstones:
        event = logger.warning if counted.left else logger.info
        event(
            "restore.deletes",
            backup=str(directory),
            tombstones=counted.tombstones,
            applied=counted.applied,
            shards=counted.shards,
            seconds=counted.seconds,
            not_applied=counted.not_applied or None,
            why=None
            if not counted.left
            else "influxd restore takes no .tombstone file: the points these delete may be back",
        )
    if report is not None:
        report.add(counted)
    return out


def restore_portable_links(
    binary: str,
    host: str,
    url: str,
    links: list[Link],
    *,
    timeout: float,
    tag: str,
    logger: Logger,
    databases: set[str] | None = None,
    work: Path | None = None,
    deletes_applied: DeletesApplied | None = None,
) -> ChainMerge | None:
    """Restore 1.x links, the full first, into a running influxd without databases (only
    `databases` of them, if given).

    host is its snapshot service, url its HTTP API: a throwaway influxd without auth (restore's
    build beside the live server, verify's restore test). A chain is merged at file speed into
    one portable backup written in `work` (restore/merge.py) and restored once, like a full;
    where that cannot be exact (or no work dir is given), each increment's databases are
    restored under a temporary name (tag makes it unique) and copied in with SELECT INTO.
    Each backup dir the tool reads first has the deletes its tombstones hold applied
    (apply_deletes, in work; counted into deletes_applied). Returns once every restored
    database answers, saying which way the chain went (None: a lone link); raises StepFailed.
    """

    def q(statement: str, db: str | None = None) -> list[dict[str, Any]]:
        return _query(url, statement, db)

    def tool(*args: str) -> None:
        argv = [binary, "restore", "-portable", "-host", host, *args]
        logger.info("restore.running", argv=argv)
        run = run_tool(argv, timeout, logger, phase="restore")
        if run.returncode != 0:
            full = _out_of_space("influxd restore", ["\n".join(run.output)])
            if full is not None:
                raise full
            tail = " | ".join(run.output[-3:]) or "no output"
            state = "timed out" if run.returncode is None else f"exited {run.returncode}"
            raise StepFailed(f"influxd restore {state}: {tail}")

    written: list[Path] = []  # backups with their deletes applied, removed once restored

    def applied(directory: Path) -> Path:
        out = apply_deletes(
            binary, directory, work, timeout=timeout, logger=logger, report=deletes_applied
        )
        if out != directory:
            written.append(out.parent)
        return out

    outcome: ChainMerge | None = None
    merged: Path | None = None
    if len(links) > 1:
        if work is None:
            outcome = ChainMerge("sql", "no scratch dir to write a merged backup in")
        else:
            merged, outcome = merge_chain(links, work, logger)
    try:
        if merged is not None or len(links) == 1:
            whole = applied(merged or links[0].path)
            if databases is None:
                tool(str(whole))
            else:
                for db in sorted(portable_databases(whole) & databases):
                    tool("-db", db, str(whole))
        else:
            with _work_dir(work) as where:
                _restore_each_link(links, tool, q, tag, logger, databases, applied, where)
    finally:
        for path in [*written, *([merged] if merged is not None else [])]:
            shutil.rmtree(path, ignore_errors=True)
    for db in _databases(url):  # every restored shard open before we call it done
        q("SHOW MEASUREMENTS", db)
    return outcome


def merge_warnings(merge: ChainMerge) -> list[str]:
    """What a restore's result says of how its chain went in: the SQL merge's caveat."""
    return [CAVEAT] if merge.path == "sql" else []


@contextmanager
def _work_dir(work: Path | None) -> Iterator[Path]:
    """work, or a temporary dir for a caller that gave none."""
    if work is not None:
        yield work
        return
    with tempfile.TemporaryDirectory(prefix="influx-backupd-") as made:
        yield Path(made)


def merge_chain(links: list[Link], work: Path, logger: Logger) -> tuple[Path | None, ChainMerge]:
    """The chain merged into one portable backup under work, or None and why not (logged)."""

    def fallback(reason: str) -> tuple[None, ChainMerge]:
        logger.warning("restore.chain_merge", path="sql", reason=reason)
        return None, ChainMerge("sql", reason)

    started = time.monotonic()
    try:
        views = [
            view_of(link.path, link.record, full=number == 0) for number, link in enumerate(links)
        ]
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError) as exc:
        return fallback(f"the links could not be read for a file merge ({exc})")
    plan = plan_merge(views)
    if not plan.exact:
        return fallback(plan.reason or "not exact")
    needed = merged_bytes(views, plan)
    free = shutil.disk_usage(work).free
    if free < needed:
        return fallback(
            f"not enough space in {work} for the merged backup: about {needed} bytes, {free} free"
        )
    out = work / "merged"
    try:
        reused, packed = write_merged(views, plan, links[-1].path, out)
    except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
        shutil.rmtree(out, ignore_errors=True)
        return fallback(f"writing the merged backup failed ({exc})")
    seconds = round(time.monotonic() - started, 3)
    logger.info(
        "restore.chain_merge",
        path="files",
        links=len(links),
        shards=len(plan.shards),
        shards_reused=reused,  # a link's tar as it is
        shards_packed=packed,  # files of several links packed again
        seconds=seconds,
    )
    return out, ChainMerge("files", None, seconds)


def _restore_each_link(
    links: list[Link],
    tool: Callable[..., None],
    q: Callable[..., list[dict[str, Any]]],
    tag: str,
    logger: Logger,
    databases: set[str] | None,
    applied: Callable[[Path], Path],
    work: Path,
) -> None:
    """The SQL merge, held to the newest link's meta (restore/sql_chain.py): the full's shards
    that meta still lists, under that meta, restored like a full (so databases, retention
    policies, their durations and defaults are the newest link's); then each link's shards to
    copy, restored under a temporary name and copied in with SELECT INTO, shard by shard."""
    directories = [applied(link.path) for link in links]
    try:
        plan = plan_sql(directories)
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError) as exc:
        raise StepFailed(f"the chain's links cannot be read for the SQL merge ({exc})") from None
    if databases is None:  # named as before: what the newest meta leaves out of earlier links
        earlier = set().union(*(portable_databases(d) for d in directories[:-1]))
        if gone := sorted(earlier - plan.shape.databases):
            logger.info("restore.dropped_since_full", databases=gone)
    if plan.superseded:
        # a field's type changed in a shard: every point of it there was deleted in between
        logger.info("restore.superseded_by_type", measurements=plan.superseded)
    out = Path(tempfile.mkdtemp(prefix="sql-", dir=work))
    try:
        base = write_filtered(directories[0], directories[-1], plan.base, out / "base")
        kept = sorted(plan.shape.databases - {counts.INTERNAL})
        if databases is None:
            tool(str(base))
        else:
            for db in sorted(set(kept) & databases):
                tool("-db", db, str(base))
        for number, copies in enumerate(plan.copies):
            by_db: dict[str, list[ShardCopy]] = {}
            for copy in copies:
                if databases is None or copy.span.database in databases:
                    by_db.setdefault(copy.span.database, []).append(copy)
            if not by_db:
                continue
            sids = [c.sid for c in copies]
            part = write_filtered(directories[number], directories[number], sids, out / str(number))
            for db, shards in sorted(by_db.items()):
                temp = f"{db}.restore-{tag}-{number}"
                tool("-db", db, "-newdb", temp, str(part))
                _copy_into(q, temp, db, shards, logger)
                q(f"DROP DATABASE {ident(temp)}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    logger.warning("restore.sql_merge_caveat", links=len(links), caveat=CAVEAT)


def portable_databases(directory: Path) -> set[str]:
    """The databases a 1.x portable backup dir holds shards of, from its manifest."""
    found = sorted(directory.glob("*.manifest"))
    if not found:
        raise StepFailed(f"{directory}: no *.manifest")
    manifest = loads_json(read_ours_text(found[0]))
    return {str(f["database"]) for f in manifest.get("files", [])}


def _snapshot09(
    config: Config,
    staged: Path,
    scans: list[Scan],
    targets: dict[str, Path],
    uid: int,
    gid: int,
    result: HotRestoreResult,
    server: Influxd,
    logger: Logger,
) -> None:
    t_restore = time.monotonic()
    run_snapshot09_restore(
        str(config.settings.influxd.binary),
        config.server.conf,
        staged,
        timeout=config.settings.influxd.backup_timeout,
        logger=logger,
    )
    check_restored09_dirs(targets["meta"], targets["data"])
    _check_restored09(scans, targets["data"])
    result.restore_s = time.monotonic() - t_restore
    _chown_tree(list(targets.values()), uid, gid)
    t_start = time.monotonic()
    server.start(log_path=config.state_dir / logfile.NAME)
    result.start_s = time.monotonic() - t_start


def _check_restored09(scans: list[Scan], data: Path) -> None:
    """The tool's exit status is not the check (invariant 3): every shard file the links'
    manifests list is in data with its listed size (the newest link's copy wins, as the tool
    restores them; the meta store the tool rewrites). A 0.9 server's counts are never recorded,
    so this is what its restore is held to. StepFailed (rolled back) naming the first wrong."""
    wanted: dict[str, int] = {}
    for scan in scans:
        for entry in scan.manifest.get("files", []):
            if isinstance(entry, dict) and entry.get("name") != "meta":
                wanted[str(entry["name"])] = listed_size(entry, "manifest")
    for name, size in sorted(wanted.items()):
        path = data / name
        if not path.is_file():
            raise StepFailed(f"influxd restore exited 0 but did not restore {name} into {data}")
        if path.stat().st_size != size:
            raise StepFailed(
                f"influxd restore exited 0 but restored {path} with {path.stat().st_size} "
                f"bytes, its manifest says {size}"
            )


def check_restored09_dirs(meta: Path, data: Path) -> None:
    """What 0.9's tool must have written, whatever its exit status (invariant 3): a meta dir
    with the meta store in it (a server started on an empty one serves no database) and a data
    dir. StepFailed naming the first missing."""
    if not data.is_dir():
        raise StepFailed(f"influxd restore exited 0 but wrote no data dir {data}")
    if not meta.is_dir() or not any(meta.iterdir()):
        raise StepFailed(f"influxd restore exited 0 but left the meta dir {meta} missing or empty")


def restore_snapshot09_links(
    binary: str, conf: Path, links: list[Link], stage: Path, *, timeout: float, logger: Logger
) -> None:
    """`influxd restore -config CONF` of 0.9 links (full first) into CONF's meta and data dirs.
    influxd must not be running on CONF. stage: as stage_snapshot09_links. Raises StepFailed."""
    base = stage_snapshot09_links(links, stage)
    run_snapshot09_restore(binary, conf, base, timeout=timeout, logger=logger)


def stage_snapshot09_links(links: list[Link], stage: Path) -> Path:
    """The links (full first) hard-linked, or copied, into stage (created here, removed by the
    caller's scratch dir) as PATH, PATH.0, …: the tool restores PATH and every PATH.N beside it,
    so it is given exactly the chosen links. Returns PATH."""
    stage.mkdir(mode=0o700)
    base = stage / "snapshot"
    for number, link in enumerate(links):
        staged = base if number == 0 else Path(f"{base}.{number - 1}")
        try:
            os.link(link.path, staged)
        except OSError:
            shutil.copyfile(link.path, staged)
    return base


def run_snapshot09_restore(
    binary: str, conf: Path, base: Path, *, timeout: float, logger: Logger
) -> None:
    """0.9's `influxd restore -config CONF PATH` of staged links; StepFailed unless it exits 0."""
    argv = [binary, "restore", "-config", str(conf), str(base)]
    logger.info("restore.running", argv=argv)
    run = run_tool(argv, timeout, logger, phase="restore")
    if run.returncode != 0:
        full = _out_of_space("influxd restore", ["\n".join(run.output)])
        if full is not None:
            raise full
        tail = " | ".join(run.output[-3:]) or "no output"
        state = "timed out" if run.returncode is None else f"exited {run.returncode}"
        raise StepFailed(f"influxd restore {state}: {tail}")


# -- InfluxQL over HTTP -------------------------------------------------------------------------


def _query(url: str, q: str, db: str | None) -> list[dict[str, Any]]:
    """One statement; waits out shards the server is still importing.

    `influxd restore -portable` returns once a shard is uploaded, while the server may still be
    opening it: queries touching it fail with "shard is disabled" or "engine is closed" for a
    moment.
    """
    try:
        return influxql.query(
            url,
            q,
            db,
            timeout=QUERY_TIMEOUT,
            post=True,
            shard_wait=SHARD_WAIT,
        )
    except influxql.QueryError as exc:
        raise StepFailed(str(exc)) from None


def _databases(url: str) -> list[str]:
    return [str(row[0]) for row in values(_query(url, "SHOW DATABASES", None))]


def _clear_databases(
    url: str, logger: Logger
) -> tuple[list[tuple[str, str, str]], list[ContinuousQuery]]:
    """Drop the databases of a server started on the live meta; keep its users.

    Returns what the drops remove with them: the non-admin users' grants (user, database,
    privilege) and the continuous queries (those the backup does not bring back are named).
    """
    cqs = server_cqs(_query(url, "SHOW CONTINUOUS QUERIES", None))
    grants: list[tuple[str, str, str]] = []
    users = values(_query(url, "SHOW USERS", None))
    for user, admin in ((str(row[0]), bool(row[1])) for row in users):
        if not admin:
            for db, privilege in values(_query(url, f"SHOW GRANTS FOR {ident(user)}", None)):
                grants.append((user, str(db), str(privilege)))
    dropped = [db for db in _databases(url) if db != counts.INTERNAL]
    for db in dropped:  # their files are in the rollback dirs, not here
        _query(url, f"DROP DATABASE {ident(db)}", None)
    logger.info("restore.accounts_kept", users=len(users), grants=len(grants), dropped=dropped)
    return grants, cqs


GRANTABLE = {"READ": "READ", "WRITE": "WRITE", "ALL PRIVILEGES": "ALL"}


def _grant_again(url: str, grants: list[tuple[str, str, str]], logger: Logger) -> None:
    """Grants on databases that the restore brought back, as the live server had them."""
    restored = set(_databases(url))
    for user, db, privilege in grants:
        if db in restored and privilege in GRANTABLE:
            q = f"GRANT {GRANTABLE[privilege]} ON {ident(db)} TO {ident(user)}"
            _query(url, q, None)
            logger.info("restore.granted", user=user, db=db, privilege=privilege)


def _copy_into(
    q: Callable[..., list[dict[str, Any]]],
    source: str,
    dest: str,
    shards: list[ShardCopy],
    logger: Logger,
) -> None:
    """The chosen measurements of each shard of source into dest, tags kept: one SELECT INTO a
    measurement a shard, bounded by the shard group's time range (field types are per shard,
    and only that shard's points are wanted), into the retention policy the newest meta names
    for the shard (which the restored meta defines).

    The shard's TSM index holds the measurement, so a copy of nothing means the server has not
    opened the shard yet (the tool returns first; seen under load): tried again for up to
    SHARD_WAIT, then StepFailed, never a restore short of those points."""
    for copy in shards:
        rp, span = ident(copy.span.policy), copy.span
        for m in copy.measurements:
            statement = (
                f"SELECT * INTO {ident(dest)}.{rp}.{ident(m)} "
                f"FROM {ident(source)}.{rp}.{ident(m)} "
                f"WHERE time >= {span.start} AND time < {span.end} GROUP BY *"
            )
            deadline = time.monotonic() + SHARD_WAIT
            while not (points := _written(q(statement, source))):
                if time.monotonic() >= deadline:
                    raise StepFailed(
                        f"{source}: shard {copy.sid} of retention policy {copy.span.policy} "
                        f"holds {m} in the backup, but SELECT INTO copied none of it within "
                        f"{SHARD_WAIT:g}s"
                    )
                time.sleep(0.2)
            logger.info(
                "restore.copied",
                db=dest,
                rp=copy.span.policy,
                shard=copy.sid,
                measurement=m,
                points=points,
            )


def _written(answer: list[dict[str, Any]]) -> int:
    """The points a SELECT INTO wrote (its one row: time, written)."""
    rows = values(answer)
    return int(rows[0][1]) if rows else 0
