"""`restore BACKUP --database NAME [--as NEWNAME] [--replace]`: one database (every retention
policy and shard of it; users and grants as they are) brought back into the live server while it
keeps serving. Other databases are not touched: nothing is stopped, no dir is swapped.

The live server takes the database through its own snapshot service, as `influxd restore
-portable -db NAME -newdb NEWNAME` against its bind-address (read from its influxdb.conf; the
restore goes into the local server whatever backup_host the backups came from). That needs a
portable backup holding the database as it was:

- a single 1.x hot full: the backup dir itself (the tool takes only NAME's shards from it);
- a 1.x hot chain: its links restored, NAME only, into a throwaway influxd (chain_server), then
  `influxd backup -portable -database NAME` from it;
- a cold archive: a throwaway influxd with the archived settings replays NAME's WAL (its meta,
  NAME's WAL and data less the TSM files extracted into a scratch dir), `influxd backup
  -portable -database NAME` from it, then each shard's tar written with the archive's TSM files
  as they are and the export's on top (restore/cold_files.py; a shard whose files cannot be
  taken as they are, a delete in its WAL say, is exported whole by the throwaway).

The throwaways run from scratch dirs in the storage dir (recovery stops them after a kill).

NEWNAME existing on the live server is refused, unless --replace: then it is first backed up
(`influxd backup -portable -database NEWNAME` from the live server) into the storage dir as
`NEWNAME.replaced-<id>`, kept and printed, never deleted by us; only then dropped and restored.
If the restore fails after the drop, that copy is restored back under NEWNAME, with the
continuous queries and grants the drop took along (Dropped). NEWNAME is looked at again right
before the take: one a client created during the prepare is refused then (RestoreMistake). A
failed restore drops only what it made: a NEWNAME that did not exist right before the take and
that the tool did not find existing (influxd's "DB metadata not changed": a client created it in
between) is the take's; any other is the client's and left as it is.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import psutil

from influx_backupd.core import log
from influx_backupd.core.atomic import read_ours_text, replace_json
from influx_backupd.core.config import Config, Credentials, read_influx_conf
from influx_backupd.core.errors import (
    RestoreFailed,
    RestoreMisconfigured,
    RestoreMistake,
    RestoreRefused,
    UsageError,
)
from influx_backupd.core.interrupt import Interrupted, signals_blocked
from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.log import Logger
from influx_backupd.core.removal import remove_gently
from influx_backupd.influxd import counts, influxql, names
from influx_backupd.influxd import tombstones as influxd_tombstones
from influx_backupd.influxd.influxql import ident, values
from influx_backupd.influxd.sandbox import BESIDE_LIVE_NICE
from influx_backupd.influxd.throttle import Forwarder
from influx_backupd.influxd.tool import run_tool
from influx_backupd.influxd.writeback import FlushBehind
from influx_backupd.restore import cold_files
from influx_backupd.restore.cold import (
    archived_settings,
    extract_progress,
    scan_cold,
    throwaway,
)
from influx_backupd.restore.cqs import ContinuousQuery, bring_back, server_cqs
from influx_backupd.restore.deletes import DeletesApplied
from influx_backupd.restore.hot import (
    GRANTABLE,
    SHARD_WAIT,
    StepFailed,
    apply_deletes,
    chain_server,
    live_settings,
    merge_warnings,
    portable_databases,
    start_throwaway,
)
from influx_backupd.restore.merge import ChainMerge
from influx_backupd.restore.refusals import binary_usable, scratch_made, storage_writable
from influx_backupd.restore.served import NOT_ACCEPTED, check_served
from influx_backupd.restore.source import ColdSource, HotSource, choose
from influx_backupd.store.archive import extract_safely
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import check_links
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.scanners import members_seen, scan_portable
from influx_backupd.store.state import PENDING_DATABASE_RESTORE, recovery_is_dry


@dataclass
class DatabaseResult:
    archive: str
    run_id: str | None
    database: str
    restored_as: str
    links: list[str] = field(default_factory=list)
    replaced_copy: str | None = None  # --replace: the previous NEWNAME, as a portable backup
    prepare_s: float = 0.0  # building the portable backup of NAME (throwaway), if needed
    restore_s: float = 0.0  # the live server taking it in
    seconds: float = 0.0
    merge: str | None = None  # a 1.x chain: how its increments went in, "files" or "sql"
    merge_reason: str | None = None  # why not "files"
    # a cold archive: its shards taken by files, those replayed whole and why (cold_files.py)
    cold_shards: dict[str, Any] | None = None
    # a hot backup: its tombstones, applied before the tool restored it (restore/deletes.py)
    deletes: dict[str, Any] | None = None
    # a hot chain: the points its build (a throwaway) served of the database before the export
    built_count: int | None = None
    # the restored database's points against those the backup counted (restore/served.py)
    served_check: str | None = None
    # its continuous queries re-created, and those not and why (restore/cqs.py)
    continuous_queries: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)  # for the operator, besides the log


def live_snapshot_host(config: Config) -> str:
    """The live server's snapshot service, from its own influxdb.conf's bind-address."""
    bind = str(read_influx_conf(config.server.conf).get("bind-address", "127.0.0.1:8088"))
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:  # an IPv6 address, bracketed again for host:port
        host = f"[{host}]"
    return f"{host}:{port if port.isdigit() else 8088}"


def valid_database_name(name: str) -> bool:
    """What influxd 1.x's meta.ValidName accepts: a name that is no path element of its own
    and has only printable characters (it is a directory name under data/ and wal/)."""
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and name.isprintable()  # as Go's unicode.IsPrint: the space only of the spaces
    )


# A database is a directory under data/ and wal/, and `influxd restore -portable` sends each of
# its shards' files to the live server in a USTAR tar as "NAME/RP/SHARD/FILE": a header splits
# such a path into a prefix of at most 155 bytes and a name of at most 100 only at a '/', so
# NAME (the first element) may be at most 155 bytes; a longer one fails the upload (seen with
# 1.6: "USTAR cannot encode Name=...") after the whole prepare.
MAX_NAME_BYTES = 155


def database_name_problem(name: str, *, target: bool) -> str | None:
    """Why a database name cannot be restored (target: the name it is restored as), or None."""
    if not name:
        return "empty: name a database of the backup"
    if name == counts.INTERNAL:
        return "influxd's own statistics database is not restored"
    if not valid_database_name(name):
        return "not a name influxd accepts (no '/', '\\', control characters, '.' or '..')"
    if target and any(c in name for c in names.BREAKING):
        return (
            f"influxd cannot load the files of a database whose name holds {names.NAMED} (it "
            "finds them by glob patterns); restore it --as another name"
        )
    if target and not name.isascii():
        # influxd restore -newdb writes the name into a USTAR header, which holds ASCII only
        return "influxd restore takes ASCII names only; restore it --as an ASCII name"
    if target and len(name.encode()) > MAX_NAME_BYTES:
        return (
            f"{len(name.encode())} bytes long; at most {MAX_NAME_BYTES} bytes: influxd restore "
            "sends its files in USTAR tar headers, whose path prefix holds no more"
        )
    return None


def _cold_databases(archive: Path) -> set[str]:
    """The databases a cold archive holds data of (data/DB/...)."""
    with tarfile.open(archive, "r:", tarinfo=CheckedTarInfo) as tar:
        return {
            parts[1]
            for parts in (PurePosixPath(name).parts for name in tar.getnames())
            if len(parts) > 2 and parts[0] == "data"
        }


def restore_database(
    config: Config,
    catalog: Catalog,
    backup: str,
    name: str,
    *,
    new_name: str | None = None,
    replace: bool = False,
    rate: float = 0.0,
    accept_fewer_points: bool = False,
) -> DatabaseResult:
    """Restore database `name` of BACKUP into the live server as new_name (default: name),
    its upload to the live server at most `rate` bytes a second (0: as fast as it goes).
    RestoreRefused: nothing touched; RestoreFailed: the live server as it was (see above)."""
    new = name if new_name is None else new_name
    for which, value in (("--database", name), ("--as", new)):
        problem = database_name_problem(value, target=which == "--as" or new_name is None)
        if problem is not None:
            raise UsageError(f"restore {which} {value[:80]!r}: {problem}")
    logger = log.get(action="restore", database=name, restored_as=new)
    _yield_to_live()  # the checks below read the whole backup: they yield too
    source = choose(catalog, backup)
    if isinstance(source, HotSource) and source.flavour == "0.9":
        raise RestoreMistake(
            "--database: a 0.9 snapshot restores only as a whole server (influxd restore -config)"
        )
    url, creds = config.url, config.credentials
    _needs_admin(url, creds)
    binary_usable(config)  # its tools and throwaways: before anything is read or written
    storage_writable(config)
    try:
        existing = set(counts.databases(url, credentials=creds))
    except counts.FiguresError as exc:
        raise RestoreRefused(f"the live server does not answer at {url}: {exc}") from None
    if new in existing and not replace:
        raise RestoreMistake(
            f"database {new} exists on the live server; name another with --as NEWNAME, or "
            "pass --replace (its data is first kept aside as a portable backup)"
        )
    # Check everything before anything is touched.
    unchecked = source.unchecked if isinstance(source, HotSource) else None
    if isinstance(source, HotSource):
        scans = check_links(source.flavour, source.links)
        # the newest link's manifest lists every shard the server had then (unchanged ones
        # with an empty tar): a database dropped between links is not in the backup
        held = portable_databases(source.links[-1].path)
        archive, run_id = source.links[-1].path, source.record.id if source.record else None
        links = [str(link.path) for link in source.links]
        logger.info("restore.checked", links=links, files=sum(s.files for s in scans))
    else:
        unchecked = scan_cold(source.path, source.record).unchecked
        held = _cold_databases(source.path)
        archive, run_id = source.path, source.record.id if source.record else None
        links = [str(source.path)]
    if name not in held:
        raise RestoreMistake(
            f"--database {name}: not in {archive} (it holds: {', '.join(sorted(held)) or 'none'})"
        )
    result = DatabaseResult(str(archive), run_id, name, new, links=links)
    result.warnings += [unchecked] if unchecked else []
    started = time.monotonic()
    scratch = scratch_made(config, "restore-")
    try:
        _restore(
            config,
            source,
            result,
            scratch,
            new in existing,
            logger,
            rate,
            accept_fewer_points=accept_fewer_points,
        )
    finally:
        remove_gently(scratch, ignore_errors=True)  # the live server's disk, likely
    result.seconds = round(time.monotonic() - started, 3)
    logger.info("restore.database_done", **{k: v for k, v in result.__dict__.items()})
    return result


def _needs_admin(url: str, creds: Credentials | None) -> None:
    """Refuse before anything is touched unless our user may administer the live server.

    The restore lists, creates and drops databases there. A user without admin rights sees only
    the databases it may read: it would take an existing one for absent, and could not drop what
    a failed restore had made (which the undo then said was as it was)."""
    try:
        refused = influxql.not_admin(url, creds)
    except influxql.QueryError as exc:
        raise RestoreRefused(f"the live server does not answer at {url}: {exc}") from None
    if refused is not None:  # credentials missing, wrong or not an admin's: the config's
        raise RestoreMisconfigured(
            "restore --database needs an admin user on the live server (it lists, creates and "
            f"drops databases there; set [influxd] username and password_file): {refused}"
        )


# The manifest gives each shard's tar size before gzip: a tar holding no file is its 1,024-byte
# end marker (or nothing); one holding a file has a 512-byte header and data besides.
EMPTY_SHARD_TAR = 1024


def _shards_with_data(portable: Path, db: str) -> tuple[Counter[str], Counter[str]]:
    """Per retention policy, how many shards of db a portable backup's manifest lists with
    files in them, and how many of those are known to hold a TSM file (their members seen by a
    deep check in this process: the links checked before a restore, a replaced database's copy;
    unknown for the rest, which count only in the first)."""
    with_files: Counter[str] = Counter()
    with_tsm: Counter[str] = Counter()
    for manifest in portable.glob("*.manifest"):
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, KeyError):
            for f in loads_json(read_ours_text(manifest))["files"]:
                if f.get("database") == db and int(f.get("size", 0)) > EMPTY_SHARD_TAR:
                    policy = str(f.get("policy"))
                    with_files[policy] += 1
                    members = members_seen(portable / str(f["fileName"]))
                    if members and any(n.endswith(".tsm") and size for n, size in members):
                        with_tsm[policy] += 1
    return with_files, with_tsm


def _behind(with_points: Counter[str], wanted: Counter[str]) -> dict[str, str]:
    """Each retention policy with fewer shards counting points than wanted: "N of M"."""
    return {
        rp: f"{with_points[rp]} of {want}" for rp, want in wanted.items() if with_points[rp] < want
    }


def _yield_to_live() -> None:
    """The rest of this command (extraction, tools, throwaways: children inherit it) at nice
    BESIDE_LIVE_NICE and the lowest best-effort I/O priority: the live server, which keeps
    taking writes, gets the CPU and the disk first."""
    with contextlib.suppress(Exception):  # a priority that cannot be set is no reason to stop
        me = psutil.Process()
        me.nice(max(me.nice(), BESIDE_LIVE_NICE))
        me.ionice(psutil.IOPRIO_CLASS_BE, 7)


def _tool(config: Config, logger: Logger, *args: str) -> None:
    binary = str(config.settings.influxd.binary)
    argv = [binary, *args]
    logger.info("restore.running", argv=argv)
    run = run_tool(argv, config.settings.influxd.backup_timeout, logger, phase="restore")
    if run.returncode != 0:
        tail = " | ".join(run.output[-3:]) or "no output"
        state = "timed out" if run.returncode is None else f"exited {run.returncode}"
        raise StepFailed(f"influxd {args[0]} {state}: {tail}")


class _Live:
    """The live server as this restore uses it: InfluxQL over HTTP (its credentials), the
    snapshot service for the tools."""

    def __init__(self, config: Config, logger: Logger, rate: float) -> None:
        self.config, self.logger, self.rate = config, logger, rate
        self.snapshot = live_snapshot_host(config)

    def q(self, statement: str, db: str | None = None) -> None:
        self.rows(statement, db)

    def rows(self, statement: str, db: str | None = None) -> list[dict[str, Any]]:
        """The answer's series; StepFailed when the server refuses or does not answer."""
        try:
            return influxql.query(
                self.config.url,
                statement,
                db,
                credentials=self.config.credentials,
                post=True,
                shard_wait=SHARD_WAIT,
            )
        except influxql.QueryError as exc:
            raise StepFailed(str(exc)) from None

    def has(self, db: str) -> bool:
        try:
            return db in counts.databases(self.config.url, credentials=self.config.credentials)
        except counts.FiguresError as exc:
            raise StepFailed(str(exc)) from None

    def take(
        self, portable: Path, db: str, as_name: str, on_in: Callable[[], None] | None = None
    ) -> None:
        """Database db of a portable backup into the live server as as_name; returns once
        every shard of it is open. The upload is paced at self.rate bytes a second (0: not),
        and the files the server writes are flushed behind as they grow. on_in: called once
        it is in, before that is logged."""
        behind = FlushBehind(self.config.server.data / as_name)
        with behind, Forwarder(self.snapshot, self.rate) as paced:
            _tool(
                self.config,
                self.logger,
                "restore",
                "-portable",
                "-host",
                paced.address,
                "-db",
                db,
                "-newdb",
                as_name,
                str(portable),
            )
        self.q("SHOW MEASUREMENTS", as_name)
        self.settled(as_name, *_shards_with_data(portable, db))
        if on_in is not None:
            on_in()
        self.logger.info(
            "restore.taken_in",
            database=as_name,
            uploaded_bytes=paced.sent,
            flushed_behind_bytes=behind.pushed,
            server_done=paced.answered,  # False: it had not closed every connection in time
        )

    def settled(self, db: str, expected: Counter[str], certain: Counter[str] | None = None) -> None:
        """Return once db's shards, looked at every second, have held still three times and as
        many of them hold points, per retention policy, as the backup has shards with files:
        the tool returns, and SHOW MEASUREMENTS answers, while the server may still be opening
        shards (seen with 1.6: a restored retention policy held nothing for several seconds
        on a loaded machine, while the others held still). A shard holds points once the
        server's statistics show TSM files loaded in it; only the others are counted, which
        costs nothing for a shard without TSM files (a count reads every block of a shard, on
        the live server: its writes' p99 went up several times while a 1 GB database was
        recounted every second). A shard holding no TSM file (only a tsi1 index, say) may
        hold nothing for good: past SHARD_WAIT, a state that holds still is taken, with a
        warning, unless fewer shards hold points than `certain` knows hold TSM files: then the
        server lost what it was sent (as when our forwarder dropped a connection it had not
        accepted yet), and StepFailed."""
        deadline = time.monotonic() + SHARD_WAIT
        seen: list[tuple[frozenset[tuple[str, int]], int]] = []
        short: dict[str, str] = {}
        statistics = True
        while True:
            try:
                files = self._tsm_files(db) if statistics else None
                statistics = files is not None
                loaded = {shard for shard, n in (files or {}).items() if n > 0}
                counted = counts.shard_points(
                    self.config.url,
                    db,
                    timeout=SHARD_WAIT,
                    credentials=self.config.credentials,
                    skip=loaded,
                )
            except counts.FiguresError as exc:
                raise StepFailed(str(exc)) from None
            holding = loaded | {shard for shard, n in counted.items() if n > 0}
            seen.append((frozenset(holding), sum(counted.values())))
            with_points = Counter(rp for rp, _ in holding)
            short = _behind(with_points, expected)
            still = len(seen) >= 3 and len(set(seen[-3:])) == 1
            if still and not short:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        if not still:
            raise StepFailed(
                f"database {db}: its shards did not settle in {SHARD_WAIT:g}s (shards holding "
                f"points, last three looks: {[len(holding) for holding, _ in seen[-3:]]})"
            )
        lost = _behind(with_points, certain or Counter())
        if lost:
            rp, figure = sorted(lost.items())[0]
            raise StepFailed(
                f"database {db}: {figure} shards of retention policy {rp} that hold TSM files "
                f"in the backup count points after {SHARD_WAIT:g}s: the live server did not "
                "take them in"
            )
        self.logger.warning(
            "restore.shards_without_points",
            database=db,
            shards_with_points=short,
            waited_s=SHARD_WAIT,
        )

    def _tsm_files(self, db: str) -> dict[tuple[str, int], int] | None:
        """counts.shard_tsm_files, or None where the server will not say (SHOW STATS needs an
        admin: with other credentials every shard is counted, as before)."""
        try:
            return counts.shard_tsm_files(
                self.config.url, db, timeout=SHARD_WAIT, credentials=self.config.credentials
            )
        except counts.FiguresError as exc:
            self.logger.info("restore.counting_every_shard", reason=str(exc))
            return None

    def export(self, db: str, dest: Path) -> None:
        _export(self.config, self.logger, self.snapshot, db, dest)


def _export(config: Config, logger: Logger, host: str, db: str, dest: Path) -> None:
    """`influxd backup -portable -database db` from the server whose snapshot service is host."""
    _tool(config, logger, "backup", "-portable", "-host", host, "-database", db, str(dest))


PENDING = PENDING_DATABASE_RESTORE  # in state_dir while the live server is being changed


class _Pending:
    """What a database restore has done to the live server so far, in state_dir: a restore
    killed outright (SIGKILL, power loss) is undone from it by the next lock-taking command
    (recover_database_restore); once its database is in ("in": taken in, every shard settled),
    it is finished instead, never undone: clients may have written into it since."""

    def __init__(self, config: Config) -> None:
        self.path = config.state_dir / PENDING

    def write(self, **state: object) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_json(self.path, state)

    def read(self) -> dict[str, Any] | None:
        try:
            data = loads_json(read_ours_text(self.path))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# What recovery did with a killed database restore in this process, one line each (`recover`).
RECOVERED: list[str] = []


def recover_database_restore(config: Config) -> None:
    """Called under the lock (its writer is dead): a killed database restore whose database was
    not in yet is undone on the live server, as a failed one undoes it itself; one whose
    database was in (the point of no return: clients may have written into it since) is
    finished: the database kept, the replaced one's grants given again, what is left undone
    said in one warning. Kept for the next command if the live server does not answer now; a
    dry run (state.dry_recovery) says what it would do and changes nothing."""
    pending = _Pending(config)
    state = pending.read()
    if state is None:
        if pending.path.exists() and not recovery_is_dry():
            pending.clear()  # unreadable: written half-way, before anything was changed
        return
    logger = log.get(action="recovery", database=state.get("new"))
    aside = state.get("aside")
    if state.get("in"):
        _finish(config, pending, state, logger)
        return
    made = bool(state.get("taking", state.get("dropped") or not state.get("existed")))
    if recovery_is_dry():
        would = (f"drop the half-restored {state.get('new')}" if made else "drop nothing") + (
            f", put the replaced one back from {aside}"
            if state.get("dropped")
            else f", remove the copy begun in {aside}"
            if isinstance(aside, str)
            else ""
        )
        logger.warning(
            "recovery.database_restore_pending", would=would, path=str(pending.path), dry_run=True
        )
        return
    try:
        undone = _undo(
            _Live(config, logger, 0.0),
            str(state["new"]),
            # killed while the tool ran: NEW did not exist right before it (looked at), so
            # what exists now is taken as the take's (a file of an older version: as it did)
            made,
            bool(state.get("dropped")),
            Path(aside) if isinstance(aside, str) else None,
            Dropped.of(state.get("lost")),
            strict=True,
            existed=bool(state.get("existed")),
        )
    except (StepFailed, KeyError) as exc:
        logger.error("recovery.database_restore_pending", error=str(exc), path=str(pending.path))
        return
    logger.warning("recovery.database_restore_undone", undone=undone)
    RECOVERED.append(f"undid the killed restore of database {state['new']}: {undone}")
    pending.clear()


def _finish(config: Config, pending: _Pending, state: dict[str, Any], logger: Logger) -> None:
    """A killed database restore past its point of no return: finished forward (see above)."""
    new, aside = str(state.get("new")), state.get("aside")
    left = [
        f"its points were not compared with the backup's count, and the backup's continuous "
        f"queries on {state.get('database', new)} were not re-created: check both by hand"
    ]
    if isinstance(aside, str):
        left.append(f"the replaced {new} is kept in {aside}")
    if recovery_is_dry():
        logger.warning(
            "recovery.database_restore_pending",
            would=f"keep the restored database {new} and finish its restore",
            path=str(pending.path),
            dry_run=True,
        )
        return
    live = _Live(config, logger, 0.0)
    try:
        if live.has(new):
            left = Dropped.of(state.get("lost")).grant_again(live) + left
            done = f"kept the restored database {new} (it was in when the restore was killed)"
        else:
            done = f"the restored database {new} is gone from the live server (dropped since)"
    except StepFailed as exc:
        logger.error("recovery.database_restore_pending", error=str(exc), path=str(pending.path))
        return
    logger.warning("recovery.database_restore_finished", done=done, left_undone=left)
    RECOVERED.append(f"finished the killed restore of database {new}: {done}; " + "; ".join(left))
    pending.clear()


# `influxd restore -portable`'s words when the live server's meta refused the database (it
# exists there): the tool made nothing, changed nothing
META_NOT_CHANGED = "DB metadata not changed"


def _created_meanwhile(new: str, dropped: bool) -> str:
    return (
        f"database {new} was created on the live server meanwhile (by another client, after "
        + (
            "this restore dropped the one it replaces"
            if dropped
            else "the check before the prepare"
        )
        + "); nothing of it was touched: restore --as another name, or --replace it"
    )


def _restore(
    config: Config,
    source: ColdSource | HotSource,
    result: DatabaseResult,
    scratch: Path,
    exists: bool,
    logger: Logger,
    rate: float,
    *,
    accept_fewer_points: bool,
) -> None:
    name, new = result.database, result.restored_as
    live = _Live(config, logger, rate)
    pending = _Pending(config)
    aside: Path | None = None
    dropped = False
    made = False  # NEW is this run's: the take began on a server without it, and created it
    lost = Dropped()  # what DROP DATABASE takes with it that the tool does not bring back

    def note(**more: Any) -> None:
        """The pending state as this run stands now, with `more` (what it is about to do)."""
        pending.write(
            new=new,
            existed=exists,
            dropped=dropped,
            aside=str(aside) if aside else None,
            lost=lost.as_json(),
            **more,
        )

    try:
        t_prepare = time.monotonic()
        # what we write there (an archive's files, a throwaway's, its export) shares the
        # live server's disk as often as not: flushed behind too, it comes in no bursts
        with FlushBehind(scratch):
            portable = _portable_of(config, source, name, scratch, logger, result)
        result.prepare_s = round(time.monotonic() - t_prepare, 3)
        if exists:  # --replace: keep the present one aside first, whole
            aside = config.storage_dir / f"{new}.replaced-{scratch.name[-8:]}"
        # names the copy before it is begun: a kill while it is made leaves it for recovery
        # to remove (the live database was not touched yet)
        pending.write(new=new, existed=exists, dropped=False, aside=str(aside) if aside else None)
        if aside is not None:
            logger.info("restore.keeping_replaced", database=new, path=str(aside))
            live.export(new, aside)
            scan_portable(aside, deep=True)
            result.replaced_copy = str(aside)
            lost = Dropped.read(live, new)
            # written before the drop: a kill right after it still finds the copy, and what
            # the drop takes along (its continuous queries, the users' grants on it)
            pending.write(
                new=new, existed=exists, dropped=True, aside=str(aside), lost=lost.as_json()
            )
            live.q(f"DROP DATABASE {ident(new)}")
            dropped = True
        # The check that NEW is free was made before the prepare, which may have taken long:
        # a client may have created it since. Looked at again right before the take; what
        # exists now is not ours to fill, nor to drop.
        if live.has(new):
            raise RestoreMistake(_created_meanwhile(new, dropped))
        note(taking=True)
        t_restore = time.monotonic()
        made = True  # unless the tool says the server refused it (below)

        def taken_in() -> None:
            # the point of no return: a kill from here on is finished, not undone (clients
            # may write into it from now on); a failure in this process is still undone
            note(database=name, taking=True, **{"in": True})

        try:
            live.take(portable, name, new, on_in=taken_in)
        except StepFailed as exc:
            # a client created it between the look above and the tool's meta update: the
            # live server refused the tool's database, and NEW is the client's
            made = META_NOT_CHANGED not in str(exc)
            raise
        result.restore_s = round(time.monotonic() - t_restore, 3)
        # ok only once it serves what the backup counted of it (else undone below)
        recorded = (source.record.db_counts if source.record else None) or {}
        counted_before_stop = name in recorded
        if counted_before_stop:
            floor, what = {new: recorded[name]}, f"of {name} counted at backup time"
        elif result.built_count is not None:  # a hot chain: what its build served of it
            floor, what = {new: result.built_count}, f"of {name} in the chain's build"
        else:
            floor, what = None, ""
        served = check_served(
            config,
            floor,
            logger,
            what=what,
            before_a_stop=counted_before_stop,
            accept_fewer=accept_fewer_points and counted_before_stop,
        )
        result.served_check = served.summary()
        result.warnings += served.fewer_warning()
        if accept_fewer_points and not counted_before_stop:
            result.warnings.append(NOT_ACCEPTED)
        # `influxd restore` takes no continuous query: those ON name, from the meta of the
        # backup (a hot chain's newest link; a cold archive's, which the export carries)
        meta = source.links[-1].path if isinstance(source, HotSource) else portable
        cqs = bring_back(meta, live.q, logger, databases={name: new})
        result.continuous_queries = cqs.summary()
        result.warnings += cqs.warnings
        # --replace: users keep their grants on the name (the drop took them); the replaced
        # database's continuous queries the backup does not bring back are named
        result.warnings += lost.grant_again(live) + lost.not_recreated(cqs.recreated, logger)
        pending.clear()
    except RestoreMistake as exc:  # created meanwhile, before this run changed anything
        if not dropped:
            pending.clear()
            logger.error("restore.database_refused", error=str(exc))
            raise
        with signals_blocked():
            undone = _undo(live, new, False, dropped, aside, lost, existed=exists)
            pending.clear()
        logger.error("restore.database_failed", error=str(exc), undone=undone)
        raise RestoreFailed(
            f"restore of database {name} as {new} failed: {exc}; {undone}"
        ) from None
    except (Exception, Interrupted) as exc:
        with signals_blocked():
            if made or dropped:
                # undone in this process, even past the point of no return: a kill during the
                # undo leaves it to recovery to undo (never to finish a half-undone restore)
                note(taking=made)
            undone = _undo(live, new, made, dropped, aside, lost, existed=exists)
            pending.clear()
        logger.error("restore.database_failed", error=str(exc), undone=undone)
        if isinstance(exc, Interrupted):  # what was put back said, as a failure says it
            raise RestoreFailed(
                f"restore of database {name} as {new} interrupted by {exc}; {undone}"
            ) from None
        raise RestoreFailed(
            f"restore of database {name} as {new} failed ({exc or type(exc).__name__}); {undone}"
        ) from None


def _undo(
    live: _Live,
    new: str,
    made: bool,
    dropped: bool,
    aside: Path | None,
    lost: Dropped,
    *,
    strict: bool = False,
    existed: bool = False,
) -> str:
    """Put the live server back as it was (a replaced database with its continuous queries and
    the users' grants on it, which the drop took and the tool does not restore); says what it
    did, for the error line. made: NEW is this run's (its take created it), the one database
    dropped here; one a client created meanwhile is left as it is. existed: NEW was there
    before the run (--replace), its own until dropped. strict (recovery): a live server that
    does not answer raises StepFailed, to be tried again."""
    if dropped and aside is not None and not aside.is_dir():
        return f"database {new} was dropped and its copy {aside} is gone: restore it by hand"
    if strict:
        live.has(new)  # StepFailed while the live server does not answer
    done: list[str] = []
    try:
        there = live.has(new)
        if there and made:
            live.q(f"DROP DATABASE {ident(new)}")  # what the failed restore made of it
            done.append(f"the half-restored {new} this restore made was dropped")
            there = False
        elif there and existed and not dropped:  # --replace that failed before its drop
            done.append(f"database {new} was not touched")
            if aside is not None and aside.exists():
                # our own copy of a database that was never dropped: no use, its size of disk
                shutil.rmtree(aside, ignore_errors=True)
                done.append(f"the copy of it begun in {aside} was removed")
        elif there:
            done.append(f"database {new}, created meanwhile by another client, was left as it is")
        if dropped and aside is not None and there:
            return "; ".join(
                [
                    *done,
                    f"the replaced {new} is kept in {aside}: put it back by hand (as another "
                    "name, or once that one is dropped) with " + _by_hand(live, new, aside),
                ]
            )
        if dropped and aside is not None:
            live.take(aside, new, new)
            problems = lost.create_again(live) + lost.grant_again(live)
            return "; ".join(
                [
                    *done,
                    f"database {new} was put back from the copy kept in {aside}"
                    + (f" ({lost.described()})" if lost else "")
                    + "".join(f"; but {problem}" for problem in problems),
                ]
            )
    except Exception as exc:
        if dropped and aside is not None:
            return (
                f"putting {new} back failed too ({exc}): its data is in {aside}; restore it with "
                + _by_hand(live, new, aside)
            )
        return f"dropping the half-restored {new} failed ({exc}): drop it by hand"
    if aside is not None:
        remove_gently(aside, ignore_errors=True)  # a copy of a database that was never dropped
    if not done:
        return "nothing on the live server was changed"
    return "; ".join([*done, "no other database was touched"])


@dataclass
class Dropped:
    """What DROP DATABASE takes with the database that `influxd restore -portable` does not
    bring back from a portable backup of it (its retention policies, their durations, shard
    group durations and default it does: measured with 1.6): the database's continuous
    queries and the non-admin users' grants on it. Read before a --replace drops it."""

    database: str = ""
    cqs: list[ContinuousQuery] = field(default_factory=list)
    grants: list[tuple[str, str]] = field(default_factory=list)  # (user, privilege)

    def __bool__(self) -> bool:
        return bool(self.cqs or self.grants)

    @classmethod
    def read(cls, live: _Live, db: str) -> Dropped:
        cqs = [cq for cq in server_cqs(live.rows("SHOW CONTINUOUS QUERIES")) if cq.database == db]
        grants = []
        for user, admin in ((str(row[0]), bool(row[1])) for row in values(live.rows("SHOW USERS"))):
            if admin:
                continue  # an admin's rights are not per database: the drop leaves them
            for on, privilege in values(live.rows(f"SHOW GRANTS FOR {ident(user)}")):
                if on == db and str(privilege) in GRANTABLE:
                    grants.append((user, str(privilege)))
        return cls(db, cqs, grants)

    def as_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "cqs": [[cq.database, cq.name, cq.statement] for cq in self.cqs],
            "grants": [list(grant) for grant in self.grants],
        }

    @classmethod
    def of(cls, state: object) -> Dropped:
        """From as_json's (a pending record: anything unreadable in it is left out)."""
        if not isinstance(state, dict):
            return cls()
        cqs = [
            ContinuousQuery(*map(str, cq))
            for cq in state.get("cqs") or []
            if isinstance(cq, list) and len(cq) == 3
        ]
        grants = [
            (str(g[0]), str(g[1]))
            for g in state.get("grants") or []
            if isinstance(g, list) and len(g) == 2 and str(g[1]) in GRANTABLE
        ]
        return cls(str(state.get("database") or ""), cqs, grants)

    def described(self) -> str:
        parts = []
        if self.cqs:
            parts.append("continuous queries " + ", ".join(cq.name for cq in self.cqs))
        if self.grants:
            parts.append("grants to " + ", ".join(sorted({user for user, _ in self.grants})))
        return "with its " + " and ".join(parts)

    def create_again(self, live: _Live) -> list[str]:
        """The continuous queries as the live server had them; what failed, in words."""
        problems = []
        for cq in self.cqs:
            try:
                live.q(cq.statement)
            except StepFailed as exc:
                problems.append(
                    f"its continuous query {cq.label} could not be created again ({exc}): "
                    f"{cq.statement}"
                )
        return problems

    def grant_again(self, live: _Live) -> list[str]:
        """The grants as the live server had them; what failed, in words."""
        problems = []
        for user, privilege in self.grants:
            statement = f"GRANT {GRANTABLE[privilege]} ON {ident(self.database)} TO {ident(user)}"
            try:
                live.q(statement)
            except StepFailed as exc:
                problems.append(f"{statement} failed ({exc}): give it by hand")
        return problems

    def not_recreated(self, recreated: list[str], logger: Logger) -> list[str]:
        """The replaced database's continuous queries that the backup's did not replace."""
        lines = []
        for cq in self.cqs:
            if cq.label in recreated:
                continue
            lines.append(
                f"the replaced database's continuous query {cq.label} is not in the backup: "
                f"the restored database runs none by that name (it was: {cq.statement})"
            )
            logger.warning("restore.replaced_cq_not_kept", cq=cq.label, statement=cq.statement)
        return lines


BUILD_COUNT_S = counts.BUDGET_S  # a chain's build, counted before its export


def _count_built(url: str, db: str, logger: Logger) -> int | None:
    """db's points on a chain's build (no auth), or None if they could not be counted in time."""
    try:
        return counts.point_count(url, db, timeout=BUILD_COUNT_S)
    except counts.FiguresError as exc:
        logger.warning("restore.build_not_counted", database=db, error=str(exc))
        return None


def _portable_of(
    config: Config,
    source: ColdSource | HotSource,
    name: str,
    scratch: Path,
    logger: Logger,
    result: DatabaseResult,
) -> Path:
    """A portable backup holding database name as the backup has it (see the module doc)."""
    export = scratch / "export"
    if isinstance(source, HotSource):
        applied = DeletesApplied()
        if len(source.links) == 1:
            section = config.settings.influxd
            path = apply_deletes(
                str(section.binary),
                source.links[0].path,
                scratch,
                timeout=section.backup_timeout,
                logger=logger,
                report=applied,
            )
            result.deletes = applied.summary()
            return path
        data, sections = live_settings(config.server.conf)
        merges: list[ChainMerge] = []
        with chain_server(
            config,
            source.links,
            scratch,
            tag=scratch.name[-8:],
            logger=logger,
            extra_data=data,
            extra_sections=sections,
            databases={name},
            merges=merges,
            deletes_applied=applied,
        ) as server:
            result.built_count = _count_built(server.url, name, logger)
            _export(config, logger, server.backup_host, name, export)
        result.deletes = applied.summary()
        if merges:
            result.merge, result.merge_reason = merges[0].path, merges[0].reason
            result.warnings += merge_warnings(merges[0])
        return export
    shards = cold_files.plan(source.path, name)
    dirs = {top: scratch / top for top in ("meta", "data", "wal")}
    extract_safely(
        source.path, dirs, uid=None, gid=None, keep=shards.keep, on_progress=extract_progress
    )
    server = throwaway(config, scratch, archived_settings(source.path))
    start_throwaway(server, config.settings.influxd.start_timeout, "influxd on the archive")
    try:
        tombstones = influxd_tombstones.wait_gone(server.data, database=name)
        _export(config, logger, server.backup_host, name, export)
    finally:
        with signals_blocked():
            server.stop(timeout=config.settings.influxd.stop_timeout)
    portable = scratch / "portable"
    built = cold_files.write_portable(source.path, shards, export, portable)
    logger.info("restore.cold_files", shards_whole=built.shards_whole, **built.__dict__)
    result.cold_shards = {
        "by_files": built.shards_by_files,
        "whole": {str(sid): why for sid, why in sorted(built.whole_because.items())},
        "from_wal": built.shards_from_wal,
        "tombstones_not_restored": tombstones,
    }
    if tombstones:
        logger.warning(
            "restore.tombstones_not_restored",
            database=name,
            tombstones=tombstones,
            waited_s=influxd_tombstones.WAIT,
            why="influxd restore takes only .tsm files: points deleted since the shard's last "
            "compaction may be back",
        )
    return portable


def _by_hand(live: _Live, new: str, aside: Path) -> str:
    """The command that puts a replaced database's kept copy back, for an error line."""
    return shlex.join(
        ["influxd", "restore", "-portable", "-host", live.snapshot, "-db", new, str(aside)]
    )
