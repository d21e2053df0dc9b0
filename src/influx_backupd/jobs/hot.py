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

import email.utils
import hashlib
import itertools
import os
import queue
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from influx_backupd.core import log
from influx_backupd.core.cancel import NEVER, CancelToken
from influx_backupd.core.config import Config, Credentials, JobSection
from influx_backupd.core.errors import CheckFailed, HotFailed
from influx_backupd.core.interrupt import Interrupted
from influx_backupd.core.log import Logger
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
from influx_backupd.store import layout
from influx_backupd.store.archive import CHUNK, fsync_dir
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import Flavour, RunRecord, new_run_id
from influx_backupd.store.scanners import (
    FileDigest,
    file_signature,
    scan_portable,
    scan_snapshot09,
)
from influx_backupd.store.sidecar import write_sidecar

# Date has whole seconds and the request takes a moment: beyond this, the clocks really differ.
CLOCK_SKEW_WARN_S = 5.0
# Increments smaller than this together never force a new full (about 5 s of SELECT INTO).
OUTGROWN_FLOOR = 256 << 20
_THIS_HOST = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


# -- the snapshot service -------------------------------------------------------------------------


# -- flavour ----------------------------------------------------------------------------------------


# -- checking the output ----------------------------------------------------------------------------


# -- chains -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkPlan:
    kind: Literal["full", "incremental"]
    chain_id: str | None  # None for a full: its own run id, set once known
    parent: RunRecord | None
    since: str | None  # RFC3339, 1.x increments only
    why: str


def rfc3339(ts: float) -> str:
    """Whole seconds, rounded down: an earlier -since only ever includes more."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def chain_links(records: list[RunRecord], chain_id: str) -> list[RunRecord]:
    """The ok links of one chain, oldest first."""
    links = [r for r in records if r.mode == "hot" and r.chain_id == chain_id and r.ok]
    return sorted(links, key=lambda r: (r.started_at, r.id))


def plan_link(
    history: list[RunRecord],
    *,
    full_every: float,
    now: float,
    flavour: Flavour,
    host: str,
    exists: Callable[[Path], bool] = os.path.exists,
) -> LinkPlan:
    """Full or incremental, from this job's earlier runs (any order)."""
    hot = sorted((r for r in history if r.mode == "hot"), key=lambda r: (r.started_at, r.id))
    if not hot:
        return LinkPlan("full", None, None, None, "first hot run of this job")
    last = hot[-1]
    if not last.ok:
        return LinkPlan("full", None, None, None, f"the last hot run {last.id} is {last.status}")
    if last.flavour != flavour:
        return LinkPlan("full", None, None, None, "the influxd version changed")
    if last.backup_host != host:
        return LinkPlan("full", None, None, None, f"backup_host changed to {host}")
    if not last.chain_id:
        return LinkPlan("full", None, None, None, f"run {last.id} belongs to no chain")
    links = chain_links(hot, last.chain_id)
    if not links or links[0].kind != "full" or links[0].id != last.chain_id:
        return LinkPlan("full", None, None, None, f"chain {last.chain_id} has no ok full")
    for earlier, later in itertools.pairwise(links):
        if later.parent_id != earlier.id:
            return LinkPlan("full", None, None, None, f"chain {last.chain_id} has a gap")
    for link in links:
        if not link.archive or not exists(Path(link.archive)):
            return LinkPlan("full", None, None, None, f"link {link.id} is missing on disk")
    if now - links[0].started_at >= full_every:
        return LinkPlan("full", None, None, None, "full_every has passed since the chain's full")
    added = sum(link.bytes for link in links[1:])
    if flavour == "portable" and added >= max(links[0].bytes, OUTGROWN_FLOOR):
        # -since takes whole TSM files, and compactions rewrite them: increments can outgrow
        # the full. Each is restored through SELECT * INTO (slow, memory-hungry; see
        # docs/performance.md), while a full restores by file copy: start again. Small
        # increments restore in seconds whatever their ratio, hence the floor.
        return LinkPlan(
            "full",
            None,
            None,
            None,
            f"the increments of chain {last.chain_id} ({added} bytes) have outgrown its full "
            f"({links[0].bytes} bytes)",
        )
    since = rfc3339(since_anchor(last)) if flavour == "portable" else None
    return LinkPlan("incremental", last.chain_id, last, since, f"extends chain {last.chain_id}")


def since_anchor(link: RunRecord) -> float:
    """When the link's snapshot began, on the server's clock (influxd compares -since with its
    own file times); our start time for records from before the server's clock was read."""
    anchor = link.since_anchor
    return float(anchor) if isinstance(anchor, int | float) else link.started_at


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


class _Followed:
    """One output file as the follower reads it: bytes hashed so far, front to back."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()
        self.hashed = 0
        self.unsynced = 0
        self.stat: tuple[int, int, int, int, int] | None = None  # describes the bytes hashed
        # Seen once with a new mtime but no new bytes: a write may be under way (write() sets
        # the mtime before it extends the size), or the file was rewritten in place.
        self.suspect = False


class _Follower:
    """Hashes (and starts writing back) the tool's output files while the tool writes them.

    After `influxd backup -portable` exits, reading 1.9 GB back for sha256 cost about 1.7 s, the
    fsync of that much fresh page cache about 1 s more, against 3.5 s for the tool itself. Both
    run here instead, on the second core, a few milliseconds behind the tool.

    Why a file being written can be hashed: influxd writes each output file once, front to back,
    and never seeks back (Go's gzip.Writer over an os.File opened in a brand-new directory;
    strace shows plain sequential writes, no truncate, no rename onto a final name). So the bytes
    before the end of a file do not change again, and hashing up to the current end, then
    continuing from there, gives the digest of the finished file. Each file is read through one
    descriptor, up to the size of a stat taken just before; that stat is kept with the digest,
    and scan_portable uses a digest only when the file's device, inode, size, mtime_ns and
    ctime_ns are still exactly that after the tool has exited. A file replaced, truncated or written without growing (mtime
    moved, size did not) is dropped here and read again in full by scan_portable. Hashing only
    files the tool has finished would have been simpler, but influxd 1.6 writes the shards one at
    a time, and a server often holds one or two large shards: the last file is most of the bytes.

    Only final names are followed (*.tar.gz, *.meta): the tool's .pending files and the plain
    shard tar it gzips from are deleted before it exits, and hashing them would be wasted work.
    """

    POLL_S = 0.02
    # fdatasync after this many new bytes, on a thread of its own: the final fsync finds little
    # left, and hashing never waits for the disk (it fell behind the tool when it did).
    SYNC_EVERY = 64 << 20

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[str, _Followed] = {}
        self.dropped: set[str] = set()
        self.failed: str | None = None  # why the follower gave up; scan_portable then reads all
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hot-follow", daemon=True)
        self._syncs: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # dup'd fds, None: done
        self._syncer = threading.Thread(target=self._sync_loop, name="hot-sync", daemon=True)

    def __enter__(self) -> _Follower:
        self._thread.start()
        self._syncer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._syncs.put(None)
        self._syncer.join()
        for followed in self.files.values():
            os.close(followed.fd)
        self.files.clear()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._pass():
                    self._stop.wait(self.POLL_S)
        except OSError as exc:
            self.failed = str(exc)

    def _sync_loop(self) -> None:
        while (fd := self._syncs.get()) is not None:
            try:
                os.fdatasync(fd)
            except OSError:
                pass  # only a head start: the run's own fsync of every file reports errors
            finally:
                os.close(fd)

    def finish(self) -> dict[str, FileDigest]:
        """Once the tool has exited: the rest of every file, and the digests taken."""
        self._stop.set()
        self._thread.join()
        if self.failed is not None:
            return {}
        try:
            self._pass(final=True)
        except OSError as exc:
            self.failed = str(exc)
            return {}
        return {
            name: FileDigest(f.hashed, f.digest.hexdigest(), f.stat)
            for name, f in self.files.items()
            if f.stat is not None and f.stat[2] == f.hashed
        }

    def _pass(self, final: bool = False) -> bool:
        """Read whatever was appended since the last pass; True when anything was.

        final: the tool has exited, so no write is under way any more."""
        progressed = False
        for entry in os.scandir(self.directory):
            name = entry.name
            if name in self.dropped or not name.endswith((".tar.gz", ".meta")):
                continue
            followed = self.files.get(name)
            if followed is None:
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue
                followed = self.files[name] = _Followed(fd)
            now = self._appended_only(name, followed, entry.path, final)
            if now is None:
                continue
            # Up to the size seen before reading: the stat kept describes exactly these bytes,
            # so any later write shows as another size or mtime.
            while followed.hashed < now.st_size:
                data = os.pread(
                    followed.fd, min(CHUNK, now.st_size - followed.hashed), followed.hashed
                )
                if not data:
                    break  # truncated meanwhile: the next pass drops the file
                followed.digest.update(data)
                followed.hashed += len(data)
                followed.unsynced += len(data)
                progressed = True
                if followed.unsynced >= self.SYNC_EVERY:
                    self._syncs.put(os.dup(followed.fd))
                    followed.unsynced = 0
            followed.stat = file_signature(now)
        return progressed

    def _appended_only(
        self, name: str, followed: _Followed, path: str, final: bool
    ) -> os.stat_result | None:
        """The file's stat now, when it only grew at its end since the last pass; None when it
        is to be skipped this pass: dropped (replaced, shrunk, rewritten in place), or seen
        with a new mtime and no new bytes while the tool may be half-way through a write
        (write() sets the mtime before it extends the size): looked at again next pass."""
        now = os.fstat(followed.fd)
        try:
            named = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        replaced = named is None or (named.st_dev, named.st_ino) != (now.st_dev, now.st_ino)
        before = followed.stat
        touched = before is not None and now.st_size == before[2] and file_signature(now) != before
        if touched and not replaced and not final and not followed.suspect:
            followed.suspect = True
            return None
        if replaced or now.st_size < followed.hashed or touched:
            os.close(followed.fd)
            del self.files[name]
            self.dropped.add(name)
            return None
        followed.suspect = False
        return now


def _tail(lines: list[str], n: int = 3) -> str:
    return " | ".join(lines[-n:]) if lines else "no output"


# -- the job ----------------------------------------------------------------------------------------


def run_hot(
    config: Config, job: JobSection, catalog: Catalog, cancel: CancelToken = NEVER
) -> RunRecord:
    """One hot backup; always returns its record (saved in the catalog), ok or not. Cancelled,
    its tool is stopped (it owns the tool's process group) and the run fails."""
    record = RunRecord(id=new_run_id(), job=job.name, mode="hot", started_at=time.time())
    logger = log.get(run_id=record.id, job=job.name, mode="hot")
    history = catalog.list(job=job.name)
    catalog.save(record)
    logger.info("run.started", phase="preflight", backup_host=config.backup_host)
    try:
        _hot(config, job, record, history, logger, cancel)
    except HotFailed as exc:
        record.status = "failed"
        record.error = str(exc)
    except OSError as exc:
        record.status = "failed"
        record.error = f"hot.io: {exc}"
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

    plan = plan_link(
        history, full_every=job.full_every, now=record.started_at, flavour=flavour, host=host
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
    # backup_timeout bounds the whole run: what the version call and the probe took counts too.
    deadline_left = max(1.0, timeout - (time.monotonic() - began))
    if flavour == "0.9":
        _run_09(section.binary, host, storage, record, plan, deadline_left, logger, cancel)
    else:
        _anchor_since(clock_url(config), config.credentials, record, logger)
        _run_portable(section.binary, host, storage, record, deadline_left, logger, cancel)
    record.status = "ok"


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
    url: str, credentials: Credentials | None, record: RunRecord, logger: Logger
) -> None:
    """Record when this snapshot begins on the server's clock: the next increment's -since.

    influxd picks an increment's files by comparing their times with -since on its own clock.
    Ours would do on the same host, but a remote backup_host whose clock is behind ours would
    see files written just after this snapshot as older than -since, and the next increment
    would miss them. Read just before the tool starts, and rounded down, the anchor is never
    later than the snapshot: an increment may hold a little more, never less.
    """
    clock = server_clock(url, credentials=credentials)
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
) -> None:
    final = storage / f"{record.job}-{record.id}"
    work = layout.incomplete_of(final)
    work.mkdir(mode=0o700)
    record.archive = str(work)  # until checked: a failed run's leftovers stay findable
    argv = [str(binary), "backup", "-portable", "-host", host]
    if record.since:
        argv += ["-since", record.since]
    argv.append(str(work))
    logger.info("hot.running", phase="backup", argv=argv)
    with _Follower(work) as follower:
        run = run_tool(argv, timeout, logger, cancel=cancel)
        run_ended = time.monotonic()
        if run.returncode != 0:
            raise _tool_failed(run, host, timeout)
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
        base = storage / f"{record.job}-{record.id}.snapshot"
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
