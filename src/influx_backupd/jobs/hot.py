"""The hot job: `influxd backup` while influxd keeps serving, as chains of a full and increments.

Two flavours, told apart by `influxd version`:

- 0.9.x: `influxd backup [-host H] PATH` writes one snapshot file, a tar whose first member is a
  JSON manifest, then `meta`, then shard files. Run again with the same PATH, the tool writes the
  increments PATH.0, PATH.1, ... (only what changed since the snapshots already there).
- 1.5+ (`-portable`): a full into a new directory; an increment with `-since` set to the start of
  the chain's last ok backup, into its own new directory. Beside each dir, its record as
  `<dir>.json` (sidecar.py): the chain must be restorable from the storage dir alone.

A chain is a full and its increments: every link records kind, chain_id (the full's run id, set on
the full too) and parent_id. A new chain starts after `full_every`, after any failed or missing
link, or when the flavour or host changed. The exit code is never trusted: the output is read
back against its manifest before a run is recorded ok.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import shutil
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from influx_backupd.core import log, unit_paths
from influx_backupd.core.atomic import fsync_dir
from influx_backupd.core.cancel import NEVER, CancelToken
from influx_backupd.core.config import Config, Credentials, JobSection, read_influx_conf
from influx_backupd.core.errors import CheckFailed, HotFailed
from influx_backupd.core.interrupt import Interrupted
from influx_backupd.core.log import Logger
from influx_backupd.influxd import tombstones
from influx_backupd.influxd.influxql import ping_headers
from influx_backupd.influxd.tool import (
    PROBE_TIMEOUT,
    UNREACHABLE_OUTPUT,
    ToolRun,
    run_tool,
    split_host,
    tool_version,
    unreachable_reason,
)

# Date has whole seconds and the request takes a moment: beyond this, the clocks really differ.
from influx_backupd.jobs.follower import Follower
from influx_backupd.jobs.plan import Clocks, LinkPlan, plan_link
from influx_backupd.store import layout
from influx_backupd.store.catalog import Catalog, ChainEnd
from influx_backupd.store.chain import parse_listing
from influx_backupd.store.record import RunRecord, new_run_id
from influx_backupd.store.scanners import (
    scan_portable,
    scan_snapshot09,
)
from influx_backupd.store.sidecar import write_sidecar
from influx_backupd.store.state import ClockSteps

CLOCK_SKEW_WARN_S = 5.0
_THIS_HOST = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


# -- the snapshot service -------------------------------------------------------------------------


# -- flavour ----------------------------------------------------------------------------------------


# -- checking the output ----------------------------------------------------------------------------


# -- chains -----------------------------------------------------------------------------------------


def server_clock(
    url: str, timeout: float = PROBE_TIMEOUT, credentials: Credentials | None = None
) -> tuple[float, float] | None:
    """(the server's time, ours) from the Date header of its /ping; None when unavailable.

    Date has whole seconds, truncated: the server's time was somewhere in [Date, Date + 1).
    """
    answer = ping_headers(url, timeout, credentials)
    if answer is None:
        return None
    headers, ours = answer
    date = headers.get("Date")
    try:
        server = email.utils.parsedate_to_datetime(date).timestamp() if date else None
    except (TypeError, ValueError):
        server = None
    return None if server is None else (server, ours)


# -- running the tool -------------------------------------------------------------------------------


def _tail(lines: list[str], n: int = 3) -> str:
    return " | ".join(lines[-n:]) if lines else "no output"


# -- the job ----------------------------------------------------------------------------------------


def run_hot(
    config: Config, job: JobSection, catalog: Catalog, cancel: CancelToken = NEVER
) -> RunRecord:
    """One hot backup; always returns its record (saved in the catalog), ok or not. Cancelled,
    its tool is stopped (it owns the tool's process group) and the run fails."""
    record = RunRecord(id=new_run_id(), job=job.name, mode="hot", started_at=time.time())
    # the job's off-site choice, kept with the backup: `offsite = false` must still hold for it
    # once the job is renamed or removed from the config (run/offsite.py wanted)
    record.extra["offsite"] = job.offsite
    history = catalog.list(job=job.name)
    ends = catalog.chain_ends()  # a whole-server restore since a chain's full ends it
    catalog.start_run(record, lambda rid: layout.id_in_use(config.storage_dir, job.name, rid))
    logger = log.get(run_id=record.id, job=job.name, mode="hot")
    with log.run_context(run_id=record.id, job=job.name, mode="hot"):
        logger.info("run.started", phase="preflight", backup_host=config.backup_host)
        try:
            _hot(config, job, record, history, logger, cancel, ends)
        except HotFailed as exc:
            record.status = "failed"
            record.error = str(exc)
        except OSError as exc:
            record.status = "failed"
            record.error = f"hot.io: {unit_paths.explain(config, exc)}"
        except Interrupted as exc:
            record.status = "interrupted"
            record.error = f"interrupted by {exc}"
        finally:
            if record.status == "failed":
                _free_space_of_failed(record, logger)
            catalog.finish(record, logger)
    return record


def _free_space_of_failed(record: RunRecord, logger: Logger) -> None:
    """A run that failed for want of space removes its incomplete output: the room is what the
    next run needs (output that failed otherwise stays for inspection until prune)."""
    error = (record.error or "").lower()
    if "no space left" not in error and "disk quota" not in error:
        return
    if not record.archive or not record.archive.endswith(layout.INCOMPLETE):
        return
    shutil.rmtree(record.archive, ignore_errors=True)
    logger.warning("hot.incomplete_removed", path=record.archive, reason="no space left")
    record.error = f"{record.error} (its incomplete output {record.archive} was removed)"
    record.archive = None


def _hot(
    config: Config,
    job: JobSection,
    record: RunRecord,
    history: list[RunRecord],
    logger: Logger,
    cancel: CancelToken,
    ends: tuple[ChainEnd, ...] = (),
) -> None:
    section = config.settings.influxd
    host = config.backup_host
    began = time.monotonic()
    version = tool_version(section.binary)
    flavour = version.flavour
    record.extra["influxd_version"] = version.text
    record.backup_host = host
    if flavour is None:
        raise HotFailed(
            f"hot.unsupported: influxd {version.text} has neither 0.9 snapshots nor "
            "`backup -portable` (InfluxDB 1.5+); use mode cold"
        )
    record.flavour = flavour
    timeout = section.backup_timeout
    reason = unreachable_reason(host, min(PROBE_TIMEOUT, timeout))
    if reason is not None:
        raise HotFailed(f"hot.unavailable: snapshot service at {host}: {reason}")

    clock = None
    clocks = None
    live = None
    if flavour == "portable":
        # read once, before the plan: it decides whether a clock went back since the last
        # link, and is this link's anchor (read before the snapshot, it is never later)
        clock = server_clock(clock_url(config), credentials=config.credentials)
        steps_back = ClockSteps(config.state_dir).count()
        record.extra["clock_steps_back"] = steps_back
        clocks = Clocks(time.time(), None if clock is None else clock[0], steps_back)
        source = _listing_source(config)
        # the live files now: one dated before -since that the chain never saw ends it
        try:
            live = None if source is None else parse_listing(shard_listing(source))
        except OSError as exc:
            logger.warning("hot.listing_failed", path=str(source), error=str(exc))
    plan = plan_link(
        history,
        full_every=job.full_every,
        now=record.started_at,
        flavour=flavour,
        host=host,
        storage_dir=config.storage_dir,
        clocks=clocks,
        ends=ends,
        live=live,
    )
    record.kind = plan.kind
    record.chain_id = plan.chain_id or record.id
    record.parent_id = plan.parent.id if plan.parent else None
    record.since = plan.since
    logger.info(
        "hot.plan", phase="preflight", kind=plan.kind, chain_id=record.chain_id, why=plan.why
    )

    storage = config.storage_dir
    storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    if flavour == "0.9":
        deadline_left = max(1.0, timeout - (time.monotonic() - began))
        _run_09(section.binary, host, storage, record, plan, deadline_left, logger, cancel)
    else:
        _anchor_since(clock, clock_url(config), record, logger)
        listing = _listing_source(config)
        if listing is not None:
            _await_deletes(listing, timeout / 4, record, logger, cancel)
        # backup_timeout bounds the whole run: the version call, the probe, the wait count too
        deadline_left = max(1.0, timeout - (time.monotonic() - began))
        _run_portable(section.binary, host, storage, record, deadline_left, logger, cancel, listing)
    record.status = "ok"


def _await_deletes(
    data: Path, most: float, record: RunRecord, logger: Logger, cancel: CancelToken
) -> None:
    """Before the snapshot, let the local server compact in the deletes it holds as .tombstone
    files (influxd/tombstones.py): a tombstone in the backup would be lost on restore, and the
    points it deletes with it back. Usually a second; at most `most` seconds, then the backup
    goes ahead and the record says how many it may hold (extra["tombstones_at_snapshot"])."""
    pending = tombstones.count(data)
    if not pending:
        return
    started = time.monotonic()
    logger.info("hot.awaiting_deletes", phase="preflight", tombstones=pending)
    left = tombstones.wait_gone(data, min(tombstones.WAIT, most), stop=lambda: cancel.cancelled)
    logger.info(
        "hot.deletes_compacted" if not left else "hot.deletes_pending",
        phase="preflight",
        waited_s=round(time.monotonic() - started, 2),
        tombstones_left=left,
    )
    if left:
        record.extra["tombstones_at_snapshot"] = left


SHARD_LISTING = "shard_listing"  # record.extra key: the live shards' files after the backup


def _listing_source(config: Config) -> Path | None:
    """The data dir whose shard files are listed after a 1.x backup: the local server's, when
    it is the backed-up one; None otherwise (a remote backup_host's files cannot be seen)."""
    host, port = split_host(config.backup_host)
    if host not in _THIS_HOST:
        return None
    # and the one whose influxdb.conf we read: another local instance's files are not these
    try:
        bind = str(read_influx_conf(config.server.conf).get("bind-address", "127.0.0.1:8088"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    if split_host(bind)[1] != port:
        return None
    data = config.server.data
    return data if data.is_dir() else None


def shard_listing(data: Path) -> dict[str, Any]:
    """Each shard's *.tsm and *.tombstone files (name: [size, mtime]) under data/DB/RP/ID.

    Taken right after `influxd backup` returns: what the restore's file merge needs to tell
    which files of earlier links a compaction or a delete removed (restore/merge.py). Files
    that vanish while listed (compacted away meanwhile) are left out, as they are gone.
    """
    shards: dict[str, dict[str, list[float]]] = {}
    for shard in sorted(data.glob("*/*/*")):
        # data/DB/_series/00 matches the pattern too: a shard's name is a plain number
        if not shard.name.isdigit() or shard.parent.name == "_series" or not shard.is_dir():
            continue
        files: dict[str, list[float]] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(shard):
                if entry.name.endswith((".tsm", ".tombstone")):
                    with contextlib.suppress(OSError):
                        st = entry.stat()
                        files[entry.name] = [st.st_size, st.st_mtime]
        shards.setdefault(shard.name, {}).update(files)
    return {"taken_at": time.time(), "data_dir": str(data), "shards": shards}


def clock_url(config: Config) -> str:
    """The HTTP API of the server behind backup_host, whose clock dates the increments:
    [influxd] backup_url; else url when backup_host is on url's host; else port 8086 there."""
    explicit = config.settings.influxd.backup_url
    if explicit:
        return explicit.rstrip("/")
    host = split_host(config.backup_host)[0]
    url_host = urllib.parse.urlsplit(config.url).hostname or ""
    if host == url_host or (host in _THIS_HOST and url_host in _THIS_HOST):
        return config.url
    return f"http://{'[' + host + ']' if ':' in host else host}:8086"


def _anchor_since(
    clock: tuple[float, float] | None, url: str, record: RunRecord, logger: Logger
) -> None:
    """Record when this snapshot begins on the server's clock: the next increment's -since.

    influxd picks an increment's files by comparing their times with -since on its own clock.
    Ours would do on the same host, but a remote backup_host whose clock is behind ours would
    see files written just after this snapshot as older than -since, and the next increment
    would miss them. Read before the plan (and the tool), and rounded down, the anchor is never
    later than the snapshot: an increment may hold a little more, never less.
    """
    if clock is None:
        record.since_anchor = record.started_at
        logger.warning(
            "hot.server_clock_unknown",
            phase="preflight",
            url=url,
            detail="no Date from /ping; the next increment's -since uses our clock",
        )
        return
    server, ours = clock
    record.since_anchor = server  # Date's whole second: at or before the server's now
    offset = server - ours
    record.extra["server_clock_offset_s"] = round(offset, 1)
    if abs(offset) > CLOCK_SKEW_WARN_S:
        logger.warning(
            "hot.clock_skew",
            phase="preflight",
            url=url,
            offset_s=round(offset, 1),
            detail="the server's clock differs from ours; -since follows the server's",
        )


def _tool_failed(run: ToolRun, host: str, timeout: float) -> HotFailed:
    text = "\n".join(run.output)
    if UNREACHABLE_OUTPUT.search(text):
        return HotFailed(f"hot.unavailable: snapshot service at {host}: {_tail(run.output, 1)}")
    if run.returncode is None:
        return HotFailed(
            f"hot.timeout: influxd backup did not finish within backup_timeout={timeout:g}s "
            f"and was killed; last output: {_tail(run.output)}"
        )
    return HotFailed(f"hot.tool: influxd backup exited {run.returncode}: {_tail(run.output)}")


def _run_portable(
    binary: Path,
    host: str,
    storage: Path,
    record: RunRecord,
    timeout: float,
    logger: Logger,
    cancel: CancelToken,
    listing: Path | None = None,
) -> None:
    final = layout.hot_backup_dir(storage, record.job, record.id)
    work = layout.incomplete_of(final)
    work.mkdir(mode=0o700)
    record.archive = str(work)  # until checked: a failed run's leftovers stay findable
    argv = [str(binary), "backup", "-portable", "-host", host]
    if record.since:
        argv += ["-since", record.since]
    argv.append(str(work))
    logger.info("hot.running", phase="backup", argv=argv)
    with Follower(work) as follower:
        run = run_tool(argv, timeout, logger, cancel=cancel)
        run_ended = time.monotonic()
        if run.returncode != 0:
            raise _tool_failed(run, host, timeout)
        if listing is not None:  # first: every moment after the snapshot lets compactions run
            try:
                record.extra[SHARD_LISTING] = shard_listing(listing)
            except OSError as exc:
                logger.warning("hot.listing_failed", path=str(listing), error=str(exc))
        digests = follower.finish()
    logger.info(
        "hot.checking",
        phase="check",
        path=str(work),
        tool_s=round(run.seconds, 3),
        hashed_during_run=sorted(digests),
        follower_failed=follower.failed,
    )
    checking = time.monotonic()
    scan = scan_portable(work, digests=digests)
    for path in work.iterdir():
        _fsync_file(path)
    fsync_dir(work)
    os.rename(work, final)
    fsync_dir(storage)
    # What the run adds to the tool's own time (issue 6): the follower's catch-up, check, fsync.
    record.extra["tool_s"] = round(run.seconds, 3)
    record.extra["check_s"] = round(time.monotonic() - run_ended, 3)
    record.extra["catchup_s"] = round(checking - run_ended, 3)  # the follower's last pass
    record.archive, record.bytes, record.files, record.sha256 = (
        str(final),
        scan.bytes,
        scan.files,
        scan.sha256,
    )
    record.extra["databases"] = sorted({f["database"] for f in scan.manifest.get("files", [])})
    # one sha256 a file (the record's sha256 is over this listing): verify names what changed
    record.extra["file_sha256"] = scan.file_sha256
    # The chain (kind, parent) is otherwise only in the catalog, lost with the host's state_dir:
    # the storage dir alone must say which links an increment needs (hot_restore reads it).
    write_sidecar(final, record)


def _run_09(
    binary: Path,
    host: str,
    storage: Path,
    record: RunRecord,
    plan: LinkPlan,
    timeout: float,
    logger: Logger,
    cancel: CancelToken,
) -> None:
    if plan.parent is None:
        base = layout.snapshot_base(storage, record.job, record.id)
    else:
        base = Path(str(plan.parent.snapshot_base or plan.parent.archive))
    record.snapshot_base = str(base)
    before = _snapshot_files(base)
    argv = [str(binary), "backup", "-host", host, str(base)]
    logger.info("hot.running", phase="backup", argv=argv)
    run = run_tool(argv, timeout, logger, cancel=cancel)
    written = sorted(_snapshot_files(base) - before, key=_increment_number)
    if written:
        record.archive = str(written[-1])
    if run.returncode != 0:
        raise _tool_failed(run, host, timeout)
    if len(written) != 1:
        raise CheckFailed(
            f"hot.check: influxd backup exited 0 but wrote {len(written)} new snapshot files "
            f"next to {base} (expected one)"
        )
    out = written[0]
    expected = base if plan.parent is None else None
    if expected is not None and out != expected:
        raise CheckFailed(f"hot.check: expected a new full at {base}, the tool wrote {out}")
    logger.info("hot.checking", phase="check", path=str(out), tool_s=round(run.seconds, 3))
    scan = scan_snapshot09(out, incremental=plan.parent is not None)
    _fsync_file(out)
    fsync_dir(storage)
    record.bytes, record.files, record.sha256 = scan.bytes, scan.files, scan.sha256


def _snapshot_files(base: Path) -> set[Path]:
    """base and its increments base.N that exist now."""
    found = {base} if base.exists() else set()
    if base.parent.is_dir():
        found |= {
            p for p in base.parent.glob(base.name + ".*") if p.name[len(base.name) + 1 :].isdigit()
        }
    return found


def _increment_number(path: Path) -> int:
    suffix = path.suffix[1:]
    return int(suffix) if suffix.isdigit() else -1


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
