"""Verify a backup: sha256 against the catalog, structure, file formats, and optionally a restore test.

    archive ──► sha256 (catalog) ──► formats.check_archive (tar read in place: structure + Bolt/TSM/WAL)
            └─► --restore-test: extract to a scratch dir, throwaway influxd, every db answers,
                point counts ≥ those taken before the stop (record.db_counts)

    hot 1.x dir ──► manifest + sha256 (hot.scan_portable) ──► TSM in every shard .tar.gz (streamed)
            └─► --restore-test: the chain up to this link restored (hot_restore's own steps) into
                an empty throwaway influxd; every database of the chain's manifests answers
    hot 0.9 snapshot ──► manifest + sha256 (hot.scan_snapshot09) ──► formats.check_archive
            └─► --restore-test: `influxd restore -config` of the chain into scratch dirs; every file
                of the manifests restored with its size. No 0.9 server runs here to query it.

Every problem is collected (not just the first) and the result goes into the catalog.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from influx_backupd.core import log
from influx_backupd.core.config import Config
from influx_backupd.core.errors import EXIT_USAGE, BackupdError, HotFailed, RestoreRefused
from influx_backupd.core.log import Logger
from influx_backupd.influxd import counts
from influx_backupd.influxd import scratch as scratch_dir
from influx_backupd.influxd.sandbox import Sandbox, toml_value
from influx_backupd.report.metrics import VERIFY_FAILED
from influx_backupd.restore.cold import archived_settings, throwaway
from influx_backupd.restore.hot import (
    StepFailed,
    chain_server,
    portable_databases,
    restore_snapshot09_links,
    start_throwaway,
)
from influx_backupd.store.archive import (
    COLD_TOPS,
    ArchiveError,
    UnsafeArchive,
    check_headers,
    extract_safely,
    sha256_file,
)
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import (
    Link,
    check_links,
    is_increment_09,
    links_up_to,
    lookup,
    read_sidecar,
    sniff,
)
from influx_backupd.store.formats import ArchiveReport, Finding, check_archive, classify_member
from influx_backupd.store.formats.tsm import check_tsm
from influx_backupd.store.record import Flavour, RunRecord
from influx_backupd.store.scanners import Scan, listed_size, scan_portable, scan_snapshot09
from influx_backupd.store.sidecar import SidecarError, record_beside

COLD_REQUIRED = ("meta", "data", "influxdb.conf")
SERVER_DIRS = ("meta", "data", "wal", "hh")
COUNT_BUDGET_S = 300.0  # counting a restored server; its data is cold on disk
# A TSM file from a 1.x shard .tar.gz is checked from a copy (gzip streams cannot seek): in memory
# up to this size, a larger one in an unlinked temp file in the storage dir. In memory, BytesIO's
# growth holds it about twice (measured: a 60 MB member raised peak RSS by 90 MB).
SPOOL_MAX = 16 << 20
NOT_QUERIED_09 = "not queried (0.9 server not available here)"


class BackupNotFound(BackupdError):
    """BACKUP names neither a catalog id nor an existing archive (a usage error)."""

    code = "usage"
    exit_status = EXIT_USAGE


@dataclass
class VerifyResult:
    archive: str
    run_id: str | None = None
    job: str | None = None
    status: Literal["ok", "failed"] = "ok"
    # check name → "ok …" | "failed …" | "skipped …" | "not supported yet …"
    checks: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    restored_counts: dict[str, int] | None = None  # per database, from a restore test's server

    def fail(self, check: str, message: str) -> None:
        self.errors.append(message)
        self.checks[check] = "failed"
        self.status = "failed"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def partial(self) -> bool:
        return any(
            v.startswith("not supported") or NOT_QUERIED_09 in v for v in self.checks.values()
        )

    def detail(self) -> str:
        if self.errors:
            return "; ".join(self.errors)
        return ", ".join(f"{k}: {v}" for k, v in self.checks.items())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "partial": self.partial}


def resolve(catalog: Catalog, backup: str) -> tuple[Path, RunRecord | None]:
    path, record = lookup(catalog, backup)
    if path is None and record is not None:
        raise BackupNotFound(f"run {backup} is {record.status} and has no archive to verify")
    if path is None:
        raise BackupNotFound(f"{backup}: neither a catalog id nor an existing archive path")
    return path, record


def verify(
    config: Config,
    archive: Path,
    record: RunRecord | None,
    *,
    deep: bool = False,
    restore_test: bool = False,
    catalog: Catalog | None = None,
) -> VerifyResult:
    """catalog: where a hot record's chain is looked up (default: the one in state_dir).

    A tar the catalog does not know is checked against the record written beside it, if any."""
    started = time.monotonic()
    sidecar_problem = None
    if record is None and archive.is_file():
        try:
            record = record_beside(archive.absolute())
        except SidecarError as exc:
            sidecar_problem = str(exc)
    result = VerifyResult(
        archive=str(archive),
        run_id=record.id if record else None,
        job=record.job if record else None,
    )
    logger = log.get(action="verify", run_id=result.run_id, archive=str(archive))
    logger.info("verify.started", deep=deep, restore_test=restore_test)
    if sidecar_problem is not None:
        result.fail("record", sidecar_problem)
    if not archive.exists():
        result.fail("archive", f"{archive}: the archive is missing")
    elif archive.is_dir():
        _verify_directory(
            config, archive, record, result, deep=deep, restore_test=restore_test, catalog=catalog
        )
    else:
        _verify_tar(
            config, archive, record, result, deep=deep, restore_test=restore_test, catalog=catalog
        )
    result.seconds = round(time.monotonic() - started, 3)
    event = logger.info if result.ok else logger.error
    event(
        "verify.finished",
        status=result.status,
        checks=result.checks,
        errors=result.errors,
        warnings=result.warnings,
        seconds=result.seconds,
    )
    return result


def _verify_tar(
    config: Config,
    archive: Path,
    record: RunRecord | None,
    result: VerifyResult,
    *,
    deep: bool,
    restore_test: bool,
    catalog: Catalog | None,
) -> None:

    # A path outside the catalog: its first member tells a 0.9 snapshot.
    hot_snapshot = record.mode == "hot" if record is not None else sniff(archive) == "0.9"
    digest: Future[str] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-sha256") as pool:
        if hot_snapshot:
            _verify_hot_scan(archive, record, result, snapshot09=True)
        elif record is not None and record.sha256:
            # Hashing (OpenSSL, outside the GIL) beside the format checks: the two reads of
            # the archive overlap, and a check costs about the longer of them, not their sum.
            digest = pool.submit(sha256_file, archive)
        report = check_archive(archive, deep=deep)
        actual = digest.result() if digest is not None else None
    if digest is not None and record is not None:
        if actual == record.sha256:
            result.checks["sha256"] = "ok"
        else:
            result.fail(
                "sha256",
                f"sha256 {actual} does not match the recorded {record.sha256}: the archive changed",
            )
    elif not hot_snapshot:
        result.checks["sha256"] = (
            "skipped (no recorded sha256: not in the catalog, no record beside it)"
        )

    for finding in report.findings:
        (result.errors if finding.severity == "error" else result.warnings).append(str(finding))
    if report.errors:
        result.checks["formats"] = "failed"
        result.status = "failed"
    else:
        counted = ", ".join(f"{n} {kind}" for kind, n in sorted(report.checked.items()))
        result.checks["formats"] = (
            f"ok ({counted or 'no checkable files'}{', deep' if deep else ''})"
        )

    cold = not hot_snapshot
    unsafe = None
    if cold:
        # restore's own safety check (a 0.9 snapshot's is in its scan): what verify passes,
        # restore accepts
        try:
            check_headers(archive, COLD_TOPS)
        except UnsafeArchive as exc:
            unsafe = f"{archive}: {exc}"
        except ArchiveError:
            pass  # unreadable: the format checks said so already
    if unsafe is not None:
        result.fail("structure", unsafe)
    # A hot 0.9 snapshot's layout is influxd's: its manifest check above stands for structure.
    elif cold and report.members:
        expected = set(COLD_REQUIRED)
        if record is not None:
            expected |= set(record.dirs or [])
        missing = sorted(expected - report.top_dirs)
        if missing:
            result.fail("structure", f"{archive}: missing from the archive: {', '.join(missing)}")
        else:
            result.checks["structure"] = "ok"

    if restore_test:
        if not cold:
            _restore_test_hot(config, "0.9", archive, record, result, catalog)
        else:
            _restore_test(config, archive, record, report, result)


def _restore_test(
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
            result.fail(check, f"restore test: {exc} on the restored files")
            _note_killed(server, result)
            server.stop()
            return
        try:
            _check_restored(server, record, result)
        finally:
            _note_killed(server, result)
            server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
            errors.append(f"database {db}: {got} points restored, {want} counted at backup time")
        elif got > want:
            more.append(f"{db} +{got - want}")
    if errors:
        for message in errors:
            result.fail(check, "restore test: " + message)
        return
    compared = len(set(expected) & set(dbs))
    note = f"; written between count and stop: {', '.join(more)}" if more else ""
    result.checks[check] = f"ok ({len(dbs)} databases answer, {compared} point counts match{note})"


def _verify_hot_scan(
    archive: Path, record: RunRecord | None, result: VerifyResult, *, snapshot09: bool
) -> None:
    """Hot output, read back the way the hot job checked it (hot.py): manifest and sha256."""

    try:
        if snapshot09:
            incremental = record.kind == "incremental" if record else is_increment_09(archive)
            scan = scan_snapshot09(archive, incremental=incremental)
        else:
            scan = scan_portable(archive, deep=True)  # every shard gunzipped, CRC checked
    except (HotFailed, OSError, ValueError, tarfile.TarError) as exc:
        result.fail("manifest", str(exc))
        return
    result.checks["manifest"] = f"ok ({scan.files} files)"
    if record is not None and record.sha256:
        if scan.sha256 == record.sha256:
            result.checks["sha256"] = "ok"
        else:
            result.fail("sha256", _what_changed(scan, record))
    else:
        result.checks["sha256"] = (
            "skipped (no recorded sha256: not in the catalog, no record beside it)"
        )


def _what_changed(scan: Scan, record: RunRecord) -> str:
    """The files whose sha256 differs from the record's, by name; a record written before
    per-file sha256s were kept can only say that the backup changed."""
    recorded = record.extra.get("file_sha256")
    whole = f"sha256 {scan.sha256} does not match the recorded {record.sha256}"
    if not isinstance(recorded, dict) or not scan.file_sha256:
        return f"{whole}: the backup changed (its record has no sha256 per file)"
    changed = [
        f"{name} (sha256 {scan.file_sha256.get(name, 'missing')}, recorded "
        f"{recorded.get(name, 'none')})"
        for name in sorted(set(recorded) | set(scan.file_sha256))
        if recorded.get(name) != scan.file_sha256.get(name)
    ]
    if not changed:
        return f"{whole}: the backup changed (every file matches its own sha256: the sizes?)"
    return f"{whole}: changed since the backup: " + "; ".join(changed)


def _verify_directory(
    config: Config,
    archive: Path,
    record: RunRecord | None,
    result: VerifyResult,
    *,
    deep: bool,
    restore_test: bool,
    catalog: Catalog | None,
) -> None:
    """A 1.x hot backup (-portable): manifest, every file, sha256 of the listing; TSM formats.

    Not in the catalog: its sha256 is compared with the record the hot job wrote beside it."""

    recorded = record
    if recorded is None:
        try:
            recorded = read_sidecar(archive.absolute())
        except RestoreRefused as exc:
            result.warnings.append(str(exc))
    _verify_hot_scan(archive, recorded, result, snapshot09=False)
    config.storage_dir.mkdir(parents=True, exist_ok=True)
    report = check_portable_formats(archive, deep=deep, spool_dir=config.storage_dir)
    for finding in report.findings:
        (result.errors if finding.severity == "error" else result.warnings).append(str(finding))
    if report.errors:
        result.checks["formats"] = "failed"
        result.status = "failed"
    else:
        shards = report.checked.get("shard archives", 0)
        result.checks["formats"] = (
            f"ok ({report.checked.get('tsm', 0)} tsm in {shards} shard archives"
            f"{', deep' if deep else ''})"
        )
    if restore_test:
        _restore_test_hot(config, "portable", archive, record, result, catalog)


def check_portable_formats(directory: Path, *, deep: bool, spool_dir: Path) -> ArchiveReport:
    """The TSM files inside every shard .tar.gz of a 1.x portable backup, nothing written out.

    Each member is streamed through gzip and tar once into a copy the TSM checker can seek in:
    in memory when the tar header says it is at most SPOOL_MAX, else an unlinked file in
    spool_dir (chosen up front: a SpooledTemporaryFile's rollover briefly holds it twice). Peak
    memory stays about SPOOL_MAX whatever the shard size.
    """

    report = ArchiveReport()
    for shard in sorted(directory.glob("*.tar.gz")):
        report.checked["shard archives"] = report.checked.get("shard archives", 0) + 1
        try:
            with tarfile.open(shard, "r|gz") as tar:
                for info in tar:
                    report.members += 1
                    name = f"{shard.name}/{info.name}"
                    if not info.isreg() or classify_member(info.name) != "tsm":
                        continue
                    stream = tar.extractfile(info)
                    if stream is None:
                        continue
                    spooled: BinaryIO = (
                        io.BytesIO()
                        if info.size <= SPOOL_MAX
                        else tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115
                    )
                    with spooled as spool:
                        shutil.copyfileobj(stream, spool, 1 << 20)
                        size = spool.tell()
                        if size != info.size:
                            report.findings.append(
                                Finding("error", name, f"{size} of {info.size} bytes in the tar")
                            )
                            continue
                        report.findings.extend(check_tsm(spool, size, name, deep=deep))
                    report.checked["tsm"] = report.checked.get("tsm", 0) + 1
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            report.findings.append(Finding("error", shard.name, f"shard archive unreadable: {exc}"))
    return report


# -- restore test of a hot backup -------------------------------------------------------------------


def _restore_test_hot(
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
        result.fail(check, f"restore test: an earlier link of the chain is unusable: {exc}")
        return
    scratch = scratch_dir.make(config.storage_dir)
    logger = log.get(action="verify", run_id=result.run_id, scratch=str(scratch))
    logger.info("verify.restore_test", flavour=flavour, links=[str(link.path) for link in links])
    try:
        if flavour == "portable":
            _restore_test_portable(config, links, record, scratch, result, alone, logger)
        else:
            _restore_test_09(config, links, scratch, result, alone, logger)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
    started = time.monotonic()
    try:
        expected: set[str] = set()
        for link in links:
            expected |= portable_databases(link.path)
        with chain_server(config, links, scratch, tag="verify", logger=logger) as server:
            took = time.monotonic() - started
            _check_restored_hot(server, sorted(expected), record, result, len(links), took, alone)
            _note_killed(server, result)
    except (StepFailed, OSError, ValueError, KeyError, TypeError) as exc:
        result.fail(check, f"restore test: restoring the chain failed: {exc}")


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
    missing = sorted((set(expected) | set(floor)) - set(dbs))
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
            errors.append(
                f"database {db}: {restored[db]} points restored, {want} counted at backup"
            )
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


def _restore_test_09(
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
    with tarfile.open(path, "r:") as tar:
        first = tar.next()
        stream = tar.extractfile(first) if first is not None and first.name == "manifest" else None
        if stream is None:
            raise ValueError(f"{path}: no manifest")
        files = json.loads(stream.read()).get("files")
    if not isinstance(files, list):
        raise ValueError(f"{path}: manifest has no files list")
    return [f for f in files if isinstance(f, dict)]


def verify_all(
    config: Config,
    catalog: Catalog,
    *,
    job: str | None = None,
    deep: bool = False,
    restore_test: bool = False,
    stop: Callable[[], bool] = lambda: False,
) -> list[VerifyResult]:
    """Every good backup (of one job), the least recently checked first, each result saved in
    the catalog. The caller holds the lock: prune cannot delete an archive (or its entry) while
    it is read. `stop` is asked between backups (the daemon: stopping, or a backup is due); a
    check cut short and begun again later starts with the backups it did not reach."""
    good = [r for r in catalog.list(job=job) if r.ok and r.archive is not None]
    # imported from the bucket (import --offsite) and not fetched yet: nothing here to check
    good = [
        r for r in good if not (r.extra.get("offsite_only") and not Path(str(r.archive)).exists())
    ]
    good.sort(key=lambda r: (r.verified_at or r.finished_at or r.started_at, r.started_at))
    results = []
    for record in good:
        if stop():
            break
        assert record.archive is not None
        result = verify(config, Path(record.archive), record, deep=deep, restore_test=restore_test)
        save_result(catalog, record, result)
        results.append(result)
    return results


def save_result(catalog: Catalog, record: RunRecord, result: VerifyResult) -> None:
    """Into the catalog (the caller holds the lock, so prune cannot remove the record meanwhile)."""
    now = time.time()
    record.verify_status = result.status
    record.verified_at = now
    record.verify_detail = result.detail()
    catalog.save(record)
    if not result.ok:
        catalog.increment(record.job, VERIFY_FAILED, now)
