"""Restore tests: the backup restored into scratch dirs and a throwaway influxd on free ports
(never beside the live server's data), every database queried and its points compared with the
counts taken at backup time; a hot backup's whole chain restored by the restore's own steps; a
0.9 chain restored by `influxd restore -config` and its files compared with the manifests."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path
from typing import Any

from influx_backupd.core import log
from influx_backupd.core.config import Config
from influx_backupd.core.errors import RestoreRefused
from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.log import Logger
from influx_backupd.core.removal import remove_gently
from influx_backupd.influxd import counts
from influx_backupd.influxd import scratch as scratch_dir
from influx_backupd.influxd.sandbox import Sandbox, toml_value
from influx_backupd.restore.cold import archived_settings, throwaway
from influx_backupd.restore.hot import (
    StepFailed,
    chain_server,
    portable_databases,
    restore_snapshot09_links,
    start_throwaway,
)
from influx_backupd.restore.merge import plan_merge, view_of
from influx_backupd.store.archive import (
    ArchiveError,
    extract_safely,
)
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import (
    Link,
    LinkDamaged,
    check_links,
    links_up_to,
)
from influx_backupd.store.formats import ArchiveReport
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.record import Flavour, RunRecord
from influx_backupd.store.scanners import listed_size
from influx_backupd.verify.result import NOT_QUERIED_09, VerifyResult

SERVER_DIRS = ("meta", "data", "wal", "hh")
COUNT_BUDGET_S = 300.0  # counting a restored server; its data is cold on disk


def restore_test_cold(
    config: Config,
    archive: Path,
    record: RunRecord | None,
    report: ArchiveReport,
    result: VerifyResult,
) -> None:
    """Restore into a scratch dir and serve it from a throwaway influxd on free ports."""
    check = "restore_test"
    tops = sorted(set(SERVER_DIRS) & report.top_dirs)
    if "meta" not in tops or "data" not in tops:
        result.fail(check, "restore test: the archive has no meta/ and data/ to restore")
        return
    scratch = scratch_dir.make(config.storage_dir)
    try:
        try:
            extract_safely(archive, {t: scratch / t for t in tops}, uid=None, gid=None)
        except (ArchiveError, OSError, tarfile.TarError) as exc:
            result.fail(check, f"restore test: extraction failed: {exc}")
            return
        # the archived server's settings (index-version: a TSI shard served as inmem is rebuilt)
        server = throwaway(config, scratch, archived_settings(archive))
        try:
            start_throwaway(server, config.settings.influxd.start_timeout, "influxd")
        except StepFailed as exc:
            _note_killed(server, result)
            server.stop()
            _judge_start(config, result, check, f"{exc} on the restored files")
            return
        try:
            _check_restored(server, record, result)
        finally:
            _note_killed(server, result)
            server.stop()
    finally:
        remove_gently(scratch, ignore_errors=True)  # beside the live server


def _check_restored(server: Sandbox, record: RunRecord | None, result: VerifyResult) -> None:
    check = "restore_test"
    try:
        dbs = counts.databases(server.url)
    except counts.FiguresError as exc:
        result.fail(check, f"restore test: SHOW DATABASES failed: {exc}")
        return
    expected = (record.db_counts if record else None) or {}
    errors: list[str] = []
    missing = sorted(set(expected) - set(dbs))
    if missing:
        errors.append(f"databases missing after restore: {', '.join(missing)}")
    deadline = time.monotonic() + COUNT_BUDGET_S
    more: list[str] = []
    result.restored_counts = {}
    for db in dbs:
        try:
            got = counts.point_count(server.url, db, timeout=max(deadline - time.monotonic(), 1))
        except counts.FiguresError as exc:
            errors.append(f"database {db} does not answer: {exc}")
            continue
        result.restored_counts[db] = got
        want = expected.get(db)
        if want is None:
            continue
        # Points counted before the stop are a floor: writes may land until the stop itself.
        if got < want:
            errors.append(_fewer(db, got, want, record))
        elif got > want:
            more.append(f"{db} +{got - want}")
    if errors:
        for message in errors:
            result.fail(check, "restore test: " + message)
        return
    compared = len(set(expected) & set(dbs))
    note = f"; written between count and stop: {', '.join(more)}" if more else ""
    result.checks[check] = f"ok ({len(dbs)} databases answer, {compared} point counts match{note})"


def restore_test_hot(
    config: Config,
    flavour: Flavour,
    archive: Path,
    record: RunRecord | None,
    result: VerifyResult,
    catalog: Catalog | None,
) -> None:
    """The chain up to this link, restored by hot_restore's own steps into scratch, then checked.

    The link itself was read back above (manifest, sha256); the links before it are checked here
    against their manifests and the catalog's sha256s (the gzip ends, not gunzipped: the sha256
    already shows they are the bytes checked when they were written).
    """

    check = "restore_test"
    try:
        links, source = links_up_to(catalog or Catalog(config.state_dir), flavour, archive, record)
    except RestoreRefused as exc:
        result.fail(check, f"restore test: {exc}")
        return
    alone = {
        "catalog": "",
        "sidecar": "; chain from the backup records beside the dirs, not the catalog",
        "alone": "; this backup alone: not in the catalog, so its chain is unknown",
    }[source]
    try:
        check_links(flavour, links[:-1], deep=False)
    except RestoreRefused as exc:
        if isinstance(exc, LinkDamaged) and source == "catalog" and exc.link.record is not None:
            result.links_failed[exc.link.record.id] = str(exc)  # that link's own verdict too
        result.fail(check, f"restore test: an earlier link of the chain is unusable: {exc}")
        return
    scratch = scratch_dir.make(config.storage_dir)
    logger = log.get(action="verify", run_id=result.run_id, scratch=str(scratch))
    logger.info("verify.restore_test", flavour=flavour, links=[str(link.path) for link in links])
    try:
        if flavour == "portable":
            _restore_test_portable(config, links, record, scratch, result, alone, logger)
        else:
            restore_test_09(config, links, scratch, result, alone, logger)
    finally:
        remove_gently(scratch, ignore_errors=True)


def _restore_test_portable(
    config: Config,
    links: list[Link],
    record: RunRecord | None,
    scratch: Path,
    result: VerifyResult,
    alone: str,
    logger: Logger,
) -> None:
    """An empty throwaway influxd (free ports, conf in scratch: prune and recovery find it)."""

    check = "restore_test"
    unheld = _unheld(links)
    if unheld is not None:
        # restored either way (file or SQL merge), the chain serves less than the server had
        result.fail(check, f"restore test: the chain does not hold every point: {unheld}")
    started = time.monotonic()
    try:
        # both merges restore the newest link's databases: one dropped between links is gone
        expected = portable_databases(links[-1].path)
        with chain_server(config, links, scratch, tag="verify", logger=logger) as server:
            took = time.monotonic() - started
            _check_restored_hot(server, sorted(expected), record, result, len(links), took, alone)
            _note_killed(server, result)
    except StepFailed as exc:
        _judge_start(config, result, check, f"restoring the chain failed: {exc}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        result.fail(check, f"restore test: restoring the chain failed: {exc}")


def _unheld(links: list[Link]) -> str | None:
    """Why a 1.x chain leaves out live files of the server it was taken of (restore/merge.py:
    a shard new to an increment with a file of its listing dated before -since), or None.
    Unreadable links: None here, the restore says what is wrong with them."""
    if len(links) < 2:
        return None
    try:
        views = [view_of(link.path, link.record, full=n == 0) for n, link in enumerate(links)]
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError):
        return None
    plan = plan_merge(views)
    return plan.reason if plan.unheld else None


def _judge_start(config: Config, result: VerifyResult, check: str, failure: str) -> None:
    """influxd did not come up on the restored files: the backup's fault only if it comes up
    on an empty dir. If it does not (its binary gone mid-upgrade, no memory, a broken
    [influxd] setting), the test could not be made: said as an error, not as a failed backup
    (which a failed check would be: never extended, counted for no retention rule)."""
    scratch = scratch_dir.make(config.storage_dir)
    try:
        control = throwaway(config, scratch, ({}, ""))
        try:
            start_throwaway(control, config.settings.influxd.start_timeout, "influxd")
        except StepFailed as exc:
            result.cannot(
                check,
                f"restore test not run: influxd does not start even on an empty dir ({exc}); "
                "the backup was not judged",
            )
            return
        control.stop()
    finally:
        remove_gently(scratch, ignore_errors=True)
    result.fail(check, f"restore test: {failure}")


def _note_killed(server: Sandbox, result: VerifyResult) -> None:
    """A failed restore test whose server died by a signal says so: the failures it caused
    (refused queries) are not what went wrong."""
    note = server.killed_note()
    if note is not None and result.checks.get("restore_test") == "failed":
        result.fail("restore_test", "restore test: " + note)


def _check_restored_hot(
    server: Sandbox,
    expected: list[str],
    record: RunRecord | None,
    result: VerifyResult,
    links: int,
    took: float,
    alone: str,
) -> None:
    check = "restore_test"
    try:
        dbs = counts.databases(server.url)
    except counts.FiguresError as exc:
        result.fail(check, f"restore test: SHOW DATABASES failed: {exc}")
        return
    floor = (record.db_counts if record else None) or {}
    errors: list[str] = []
    missing = sorted((set(expected) | set(floor)) - set(dbs) - {counts.INTERNAL})
    if missing:
        errors.append(f"databases missing after restore: {', '.join(missing)}")
    deadline = time.monotonic() + COUNT_BUDGET_S
    restored: dict[str, int] = {}
    for db in dbs:
        try:
            restored[db] = counts.point_count(
                server.url, db, timeout=max(deadline - time.monotonic(), 1)
            )
        except counts.FiguresError as exc:
            errors.append(f"database {db} does not answer: {exc}")
            continue
        want = floor.get(db)
        if want is not None and restored[db] < want:
            errors.append(_fewer(db, restored[db], want, record))
    result.restored_counts = restored
    if errors:
        for message in errors:
            result.fail(check, "restore test: " + message)
        return
    shown = ", ".join(f"{db} {n}" for db, n in sorted(restored.items())) or "none"
    compared = f", {len(set(floor) & set(dbs))} point counts match" if floor else ""
    answer = "1 database answers" if len(dbs) == 1 else f"{len(dbs)} databases answer"
    result.checks[check] = (
        f"ok ({links} link{'s' if links != 1 else ''} restored in {took:.1f}s, {answer}"
        f"{compared}; points: {shown}{alone})"
    )


def restore_test_09(
    config: Config,
    links: list[Link],
    scratch: Path,
    result: VerifyResult,
    alone: str,
    logger: Logger,
) -> None:
    """`influxd restore -config` into scratch dirs; every manifest file restored with its size.

    No 0.9 server can run here (tests use a stand-in that stores no series), so the restored
    files are not served and queried: the result says so, and counts as partial.
    """

    check = "restore_test"
    meta, data = scratch / "meta", scratch / "data"
    conf = scratch / "influxdb.conf"
    conf.write_text(
        "# influx-backupd verify: restore-test target, never served\n"
        f"[meta]\n  dir = {toml_value(meta)}\n[data]\n  dir = {toml_value(data)}\n"
        f"[hinted-handoff]\n  dir = {toml_value(scratch / 'hh')}\n"
    )
    wanted: dict[str, int] = {}  # the newest copy of each file wins, as the tool restores
    try:
        for link in links:
            for entry in _snapshot_manifest(link.path):
                wanted[str(entry["name"])] = listed_size(entry, link.path)
        restore_snapshot09_links(
            str(config.settings.influxd.binary),
            conf,
            links,
            scratch / "stage",
            timeout=config.settings.influxd.backup_timeout,
            logger=logger,
        )
    except (StepFailed, OSError, ValueError, KeyError, TypeError, tarfile.TarError) as exc:
        result.fail(check, f"restore test: restoring the chain failed: {exc}")
        return
    errors = [
        f"the restored {d.name} dir is missing or empty"
        for d in (meta, data)
        if not d.is_dir() or not any(d.iterdir())
    ]
    for name, size in sorted(wanted.items()):
        if name == "meta":
            continue  # the tool rewrites the meta store; its dir is checked above
        path = data / name
        if not path.is_file():
            errors.append(f"{name} was not restored")
        elif path.stat().st_size != size:
            errors.append(f"{name} restored with {path.stat().st_size} bytes, manifest says {size}")
    if errors:
        for message in errors:
            result.fail(check, "restore test: " + message)
        return
    result.checks[check] = (
        f"files restored; {NOT_QUERIED_09}: {len(wanted)} files of {len(links)} "
        f"link{'s' if len(links) != 1 else ''} match their manifests{alone}"
    )


def _snapshot_manifest(path: Path) -> list[dict[str, Any]]:
    """The files list of a 0.9 snapshot's manifest (its first member)."""
    with tarfile.open(path, "r:", tarinfo=CheckedTarInfo) as tar:
        first = tar.next()
        stream = tar.extractfile(first) if first is not None and first.name == "manifest" else None
        if stream is None:
            raise ValueError(f"{path}: no manifest")
        files = loads_json(stream.read()).get("files")
    if not isinstance(files, list):
        raise ValueError(f"{path}: manifest has no files list")
    return [f for f in files if isinstance(f, dict)]


def _fewer(db: str, got: int, want: int, record: RunRecord | None) -> str:
    """A database restored below its count before the stop; when the live server, restarted on
    the same files, served fewer too (the run's served_less), the likelier cause is named."""
    line = f"database {db}: {got} points restored, {want} counted at backup time"
    fewer = record.lost_at_restart.get(db) if record is not None else None
    if fewer is not None:
        line += (
            f"; the live server served {fewer} fewer after the backup's restart too: a "
            "delete acknowledged between the count and the stop, or points influxd dropped at "
            "that restart (`restore --accept-fewer-points` restores it all the same)"
        )
    return line
