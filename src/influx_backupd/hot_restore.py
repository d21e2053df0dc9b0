"""Restore of hot backups, and `influx-backupd restore`'s choice between cold and hot.

Both hot flavours restore the whole server the way the cold restore does: every link is checked
first (manifest, sizes, sha256 against the catalog) before anything is touched; the live meta,
data, wal (and hh) dirs are moved aside into rollback dirs, never deleted; on failure they are put
back and the old server is started again. Restored files are chowned to [influxd] user/group.

- 1.x (-portable): an influxd is started on empty dirs (but for a copy of the live meta.db, whose
  users it keeps and whose databases it drops: the tool restores no users) and each link is
  restored into it with `influxd restore -portable`, full first. `influxd restore -portable`
  refuses a database that already exists ("DB metadata not changed. database may already
  exist"), so an increment's databases that the full created are restored under a temporary
  name and copied in with `SELECT * INTO ... GROUP BY *` (InfluxData's documented way to restore
  into an existing database), then the temporary database is dropped. Queries go over HTTP with
  [influxd] username/password_file; `influxd restore` uses the snapshot port, which has no auth.
- 0.9: with influxd stopped, `influxd restore -config CONF PATH`; the tool reads PATH and every
  PATH.N beside it, so the chain up to the chosen link is hard-linked into a scratch dir first.

The restore goes into the local server of [influxd] config (its own bind-address), whatever
backup_host the backups came from.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influx_backupd import influxql, log
from influx_backupd.catalog import Catalog
from influx_backupd.config import Config
from influx_backupd.hot import (
    CheckFailed,
    Flavour,
    Scan,
    run_tool,
    scan_portable,
    scan_snapshot09,
    split_host,
)
from influx_backupd.influxd import Influxd
from influx_backupd.influxql import Credentials, ident, values
from influx_backupd.log import Logger
from influx_backupd.record import RunRecord
from influx_backupd.restore import (
    RestoreRefused,
    RestoreResult,
    live_dirs_swapped,
    owner_ids,
    restore_cold,
)

QUERY_TIMEOUT = 3600.0
SHARD_WAIT = 120.0  # how long a freshly restored shard may stay disabled


class StepFailed(Exception):
    """A restore step failed (in restore_backup, after the swap: roll back)."""


@dataclass
class HotRestoreResult(RestoreResult):
    flavour: str = ""
    links: list[str] = field(default_factory=list)  # oldest first: the full, then increments
    restore_s: float | None = None  # restoring the links into the empty server (1.x)


@dataclass(frozen=True)
class Link:
    path: Path
    record: RunRecord | None
    incremental: bool


# -- choosing ---------------------------------------------------------------------------------------


def restore_backup(config: Config, catalog: Catalog, backup: str) -> RestoreResult:
    """Restore BACKUP (a catalog id or a path): cold archives by restore_cold, hot ones here."""
    record = catalog.get(backup)
    if record is None:
        path = Path(backup)
        if not path.exists():
            raise RestoreRefused(f"{backup}: neither a catalog id nor an existing archive path")
        record = catalog.find_by_archive(path)
        if record is None:
            flavour = sniff(path)
            if flavour is None:
                return restore_cold(config, catalog, backup)
            # Not in the catalog: this one link alone, nothing to compare its sha256 with.
            incremental = flavour == "0.9" and path.suffix[1:].isdigit()
            return _restore_hot(config, flavour, [Link(path, None, incremental)], None)
    if record.mode != "hot":
        return restore_cold(config, catalog, backup)
    if record.status != "ok" or not record.archive:
        raise RestoreRefused(f"backup {record.id} is {record.status}, not a usable backup")
    flavour = record.extra.get("flavour") or sniff(Path(record.archive))
    if flavour not in ("0.9", "portable"):
        raise RestoreRefused(f"backup {record.id}: cannot tell whether it is a 0.9 or 1.x backup")
    links = chain_for(catalog, record)
    return _restore_hot(
        config,
        flavour,
        [Link(Path(str(r.archive)), r, r.kind == "incremental") for r in links],
        record,
    )


def sniff(path: Path) -> Flavour | None:
    """A hot backup's flavour from its shape; None for anything else (a cold archive)."""
    if path.is_dir():
        return "portable" if any(path.glob("*.manifest")) else None
    try:
        with tarfile.open(path) as tar:
            first = tar.next()
    except (tarfile.TarError, OSError):
        return None
    return "0.9" if first is not None and first.name == "manifest" else None


def chain_for(catalog: Catalog, record: RunRecord) -> list[RunRecord]:
    """The chain's links from its full up to record, oldest first; refuses a broken chain."""
    if not record.chain_id:
        raise RestoreRefused(f"backup {record.id} is a hot backup without a chain id")
    members = sorted(
        (
            r
            for r in catalog.list(job=record.job)
            if r.chain_id == record.chain_id and r.mode == "hot"
        ),
        key=lambda r: (r.started_at, r.id),
    )
    by_id = {r.id: r for r in members}
    links: list[RunRecord] = []
    current: RunRecord | None = record
    while current is not None:
        if not current.ok or not current.archive:
            raise RestoreRefused(
                f"chain {record.chain_id}: link {current.id} is {current.status}, not usable"
            )
        links.append(current)
        if current.kind == "full":
            break
        parent = by_id.get(current.parent_id or "")
        if parent is None:
            raise RestoreRefused(
                f"chain {record.chain_id}: link {current.id}'s parent {current.parent_id} "
                "is not in the catalog"
            )
        current = parent
    links.reverse()
    if links[0].id != record.chain_id:
        raise RestoreRefused(f"chain {record.chain_id} does not start with its full")
    return links


# -- checking ---------------------------------------------------------------------------------------


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
            raise RestoreRefused(str(exc).removeprefix("hot.check: ")) from None
        record = link.record
        if record is not None and record.sha256 and record.sha256 != scan.sha256:
            raise RestoreRefused(
                f"{link.path}: sha256 {scan.sha256} does not match the catalog's "
                f"{record.sha256} (run {record.id})"
            )
        scans.append(scan)
    return scans


def local_snapshot_host(config: Config) -> str:
    """The local server's snapshot service, from its influxdb.conf (never a remote backup_host)."""
    with open(config.server.conf, "rb") as fh:
        raw = tomllib.load(fh)
    host, port = split_host(str(raw.get("bind-address", "127.0.0.1:8088")))
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


# -- the swap -----------------------------------------------------------------------------------


def _restore_hot(
    config: Config, flavour: Flavour, links: list[Link], record: RunRecord | None
) -> HotRestoreResult:
    logger = log.get(action="restore", mode="hot", flavour=flavour)
    logger.info("restore.checking", links=[str(link.path) for link in links])
    scans = check_links(flavour, links)
    uid, gid = owner_ids(config)
    if not config.settings.influxd.binary.exists():
        raise RestoreRefused(f"[influxd] binary {config.settings.influxd.binary} does not exist")
    if flavour == "portable":
        check_credentials(config)
    rid = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    targets = dict(sorted(config.server.dirs().items()))
    rollback = {top: t.parent / f"{t.name}.rollback-{rid}" for top, t in targets.items()}
    # restore.roll_back removes a staging dir per target; ours is never created.
    unused = {top: t.parent / f".{t.name}.restore-{rid}" for top, t in targets.items()}
    for top, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        if rollback[top].exists():
            raise RestoreRefused(f"{rollback[top]} already exists; try again in a second")
    result = HotRestoreResult(
        archive=str(links[-1].path),
        run_id=record.id if record else None,
        flavour=flavour,
        links=[str(link.path) for link in links],
        files=sum(s.files for s in scans),
    )
    server = Influxd(config)
    scratch = config.storage_dir / f".restore-{rid}"
    try:
        # the live dirs go aside; the links are restored into an empty server in their place
        with live_dirs_swapped(
            config, server, targets, rollback, unused, rid, result, logger, move_staging_in=False
        ):
            if flavour == "portable":
                _portable(
                    config, links, targets, rollback["meta"], uid, gid, result, server, rid, logger
                )
            else:
                _snapshot09(config, links, targets, uid, gid, result, server, scratch, logger)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info(
        "restore.done",
        **{k: v for k, v in result.__dict__.items() if k not in ("rollback_dirs", "links")},
    )
    return result


def check_credentials(config: Config) -> None:
    """Refuse, before anything is stopped, a 1.x restore that could not query the server."""
    if not config.auth_enabled:
        return
    creds = config.credentials
    if creds is None:
        raise RestoreRefused(
            "influxd requires authentication: set [influxd] username and password_file "
            f"([http] auth-enabled = true in {config.server.conf})"
        )
    try:  # an admin-only statement: the restore creates and drops databases
        influxql.query(config.url, "SHOW USERS", credentials=creds, timeout=10.0)
    except influxql.AuthError as exc:
        raise RestoreRefused(str(exc)) from None
    except influxql.QueryError:
        pass  # not running (or not answering): nothing to ask now; the restore will tell


def _chown_tree(roots: list[Path], uid: int, gid: int) -> None:
    for root in roots:
        if not root.exists():
            continue
        os.chown(root, uid, gid, follow_symlinks=False)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _portable(
    config: Config,
    links: list[Link],
    targets: dict[str, Path],
    live_meta_dir: Path,
    uid: int,
    gid: int,
    result: HotRestoreResult,
    server: Influxd,
    rid: str,
    logger: Logger,
) -> None:
    for target in targets.values():
        target.mkdir(mode=0o755)
        os.chown(target, uid, gid)
    # `influxd restore -portable` restores databases, not users: the server starts on a copy of
    # the live meta (its accounts), whose databases are dropped before the links go in.
    live_meta = live_meta_dir / "meta.db"
    if live_meta.is_file():
        shutil.copy2(live_meta, targets["meta"] / "meta.db")
        os.chown(targets["meta"] / "meta.db", uid, gid)
    t_start = time.monotonic()
    server.start(log_path=config.state_dir / "influxd.log")
    result.start_s = time.monotonic() - t_start
    t_restore = time.monotonic()
    creds = config.credentials
    grants = _clear_databases(config.url, creds, logger) if live_meta.is_file() else []
    restore_portable_links(
        str(config.settings.influxd.binary),
        local_snapshot_host(config),
        config.url,
        links,
        timeout=config.settings.influxd.backup_timeout,
        tag=rid,
        logger=logger,
        credentials=creds,
    )
    _grant_again(config.url, grants, creds, logger)
    result.restore_s = time.monotonic() - t_restore
    _chown_tree(list(targets.values()), uid, gid)


def restore_portable_links(
    binary: str,
    host: str,
    url: str,
    links: list[Link],
    *,
    timeout: float,
    tag: str,
    logger: Logger,
    credentials: Credentials | None = None,
) -> None:
    """Restore 1.x links, the full first, into a running influxd without databases.

    host is its snapshot service (no auth there), url its HTTP API (restore: the local server,
    with [influxd] credentials; verify's restore test: a throwaway one without auth). tag makes
    the temporary database names unique. Returns once every restored database answers; raises
    StepFailed.
    """

    def q(statement: str, db: str | None = None) -> list[dict[str, Any]]:
        return _query(url, statement, db, credentials)

    def tool(*args: str) -> None:
        argv = [binary, "restore", "-portable", "-host", host, *args]
        logger.info("restore.running", argv=argv)
        run = run_tool(argv, timeout, logger, phase="restore")
        if run.returncode != 0:
            tail = " | ".join(run.output[-3:]) or "no output"
            state = "timed out" if run.returncode is None else f"exited {run.returncode}"
            raise StepFailed(f"influxd restore {state}: {tail}")

    for number, link in enumerate(links):
        if number == 0:
            tool(str(link.path))
            continue
        wanted = sorted(portable_databases(link.path))
        existing = set(_databases(url, credentials))
        for db in wanted:
            if db not in existing:
                tool("-db", db, str(link.path))
                continue
            temp = f"{db}.restore-{tag}-{number}"
            tool("-db", db, "-newdb", temp, str(link.path))
            _copy_into(url, temp, db, logger, credentials)
            q(f"DROP DATABASE {ident(temp)}")
    for db in _databases(url, credentials):  # every restored shard open before we call it done
        q("SHOW MEASUREMENTS", db)


def portable_databases(directory: Path) -> set[str]:
    """The databases a 1.x portable backup dir holds shards of, from its manifest."""
    found = sorted(directory.glob("*.manifest"))
    if not found:
        raise StepFailed(f"{directory}: no *.manifest")
    manifest = json.loads(found[0].read_text())
    return {str(f["database"]) for f in manifest.get("files", [])}


def _snapshot09(
    config: Config,
    links: list[Link],
    targets: dict[str, Path],
    uid: int,
    gid: int,
    result: HotRestoreResult,
    server: Influxd,
    scratch: Path,
    logger: Logger,
) -> None:
    t_restore = time.monotonic()
    restore_snapshot09_links(
        str(config.settings.influxd.binary),
        config.server.conf,
        links,
        scratch,
        timeout=config.settings.influxd.backup_timeout,
        logger=logger,
    )
    for top in ("meta", "data"):
        if not targets[top].is_dir():
            raise StepFailed(f"influxd restore exited 0 but wrote no {top} dir {targets[top]}")
    result.restore_s = time.monotonic() - t_restore
    _chown_tree(list(targets.values()), uid, gid)
    t_start = time.monotonic()
    server.start(log_path=config.state_dir / "influxd.log")
    result.start_s = time.monotonic() - t_start


def restore_snapshot09_links(
    binary: str, conf: Path, links: list[Link], scratch: Path, *, timeout: float, logger: Logger
) -> None:
    """`influxd restore -config CONF` of 0.9 links (full first) into CONF's meta and data dirs.

    influxd must not be running on CONF. scratch (created here, removed by the caller) holds the
    links hard-linked as PATH, PATH.0, ...: the tool restores PATH and every PATH.N beside it, so
    it is given exactly the chosen links. Raises StepFailed.
    """
    scratch.mkdir(mode=0o700)
    base = scratch / "snapshot"
    for number, link in enumerate(links):
        staged = base if number == 0 else Path(f"{base}.{number - 1}")
        try:
            os.link(link.path, staged)
        except OSError:
            shutil.copyfile(link.path, staged)
    argv = [binary, "restore", "-config", str(conf), str(base)]
    logger.info("restore.running", argv=argv)
    run = run_tool(argv, timeout, logger, phase="restore")
    if run.returncode != 0:
        tail = " | ".join(run.output[-3:]) or "no output"
        state = "timed out" if run.returncode is None else f"exited {run.returncode}"
        raise StepFailed(f"influxd restore {state}: {tail}")


# -- InfluxQL over HTTP -------------------------------------------------------------------------


def _query(
    url: str, q: str, db: str | None, credentials: Credentials | None
) -> list[dict[str, Any]]:
    """One statement; waits out shards the server is still importing.

    `influxd restore -portable` returns once a shard is uploaded, while the server may still be
    opening it: queries touching it fail with "shard is disabled" for a moment.
    """
    try:
        return influxql.query(
            url,
            q,
            db,
            credentials=credentials,
            timeout=QUERY_TIMEOUT,
            post=True,
            shard_wait=SHARD_WAIT,
        )
    except influxql.QueryError as exc:  # AuthError too: its line says what to set
        raise StepFailed(str(exc)) from None


def _databases(url: str, credentials: Credentials | None) -> list[str]:
    return [str(row[0]) for row in values(_query(url, "SHOW DATABASES", None, credentials))]


def _clear_databases(
    url: str, credentials: Credentials | None, logger: Logger
) -> list[tuple[str, str, str]]:
    """Drop the databases of a server started on the live meta; keep its users.

    Returns the non-admin users' grants (user, database, privilege), which the drops revoke.
    """
    grants: list[tuple[str, str, str]] = []
    users = values(_query(url, "SHOW USERS", None, credentials))
    for user, admin in ((str(row[0]), bool(row[1])) for row in users):
        if not admin:
            for db, privilege in values(
                _query(url, f"SHOW GRANTS FOR {ident(user)}", None, credentials)
            ):
                grants.append((user, str(db), str(privilege)))
    dropped = [db for db in _databases(url, credentials) if db != "_internal"]
    for db in dropped:  # their files are in the rollback dirs, not here
        _query(url, f"DROP DATABASE {ident(db)}", None, credentials)
    logger.info("restore.accounts_kept", users=len(users), grants=len(grants), dropped=dropped)
    return grants


_GRANTABLE = {"READ": "READ", "WRITE": "WRITE", "ALL PRIVILEGES": "ALL"}


def _grant_again(
    url: str, grants: list[tuple[str, str, str]], credentials: Credentials | None, logger: Logger
) -> None:
    """Grants on databases that the restore brought back, as the live server had them."""
    restored = set(_databases(url, credentials))
    for user, db, privilege in grants:
        if db in restored and privilege in _GRANTABLE:
            q = f"GRANT {_GRANTABLE[privilege]} ON {ident(db)} TO {ident(user)}"
            _query(url, q, None, credentials)
            logger.info("restore.granted", user=user, db=db, privilege=privilege)


def _copy_into(
    url: str, source: str, dest: str, logger: Logger, credentials: Credentials | None
) -> None:
    """Every point of every retention policy and measurement of source into dest, tags kept."""

    def q(statement: str, db: str | None = None) -> list[dict[str, Any]]:
        return _query(url, statement, db, credentials)

    dest_rps = {str(row[0]) for row in values(q(f"SHOW RETENTION POLICIES ON {ident(dest)}"))}
    measurements = [str(row[0]) for row in values(q("SHOW MEASUREMENTS", source))]
    for row in values(q(f"SHOW RETENTION POLICIES ON {ident(source)}")):
        rp, duration, shard_duration = str(row[0]), str(row[1]), str(row[2])
        if rp not in dest_rps:
            q(
                f"CREATE RETENTION POLICY {ident(rp)} ON {ident(dest)} DURATION {duration} "
                f"REPLICATION 1 SHARD DURATION {shard_duration}"
            )
        for m in measurements:
            written = values(
                q(
                    f"SELECT * INTO {ident(dest)}.{ident(rp)}.{ident(m)} "
                    f"FROM {ident(source)}.{ident(rp)}.{ident(m)} GROUP BY *",
                    source,
                )
            )
            logger.info(
                "restore.copied",
                db=dest,
                rp=rp,
                measurement=m,
                points=written[0][1] if written else 0,
            )
