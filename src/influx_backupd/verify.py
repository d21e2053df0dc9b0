"""Verify a backup: sha256 against the catalog, structure, file formats, and optionally a restore test.

    archive ──► sha256 (catalog) ──► formats.check_archive (tar read in place: structure + Bolt/TSM/WAL)
            └─► --restore-test: extract to a scratch dir, throwaway influxd, every db answers,
                point counts ≥ those taken before the stop (record.db_counts)

Every problem is collected (not just the first) and the result goes into the catalog.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from influx_backupd import figures, log
from influx_backupd.archive import ArchiveError, extract_safely, sha256_file
from influx_backupd.catalog import Catalog
from influx_backupd.config import Config
from influx_backupd.formats import ArchiveReport, check_archive
from influx_backupd.metrics import VERIFY_FAILED
from influx_backupd.record import RunRecord
from influx_backupd.sandbox import Sandbox

SCRATCH_PREFIX = ".verify-"  # scratch dirs in the storage dir; prune removes those of dead runs
COLD_REQUIRED = ("meta", "data", "influxdb.conf")
SERVER_DIRS = ("meta", "data", "wal", "hh")
# The restored server must not change what it serves while we count it.
RESTORE_TEST_SECTIONS = """
[retention]
  enabled = false

[subscriber]
  enabled = false
"""
COUNT_BUDGET_S = 300.0  # counting a restored server; its data is cold on disk


class BackupNotFound(Exception):
    """BACKUP names neither a catalog id nor an existing archive (a usage error)."""


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

    def fail(self, check: str, message: str) -> None:
        self.errors.append(message)
        self.checks[check] = "failed"
        self.status = "failed"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def partial(self) -> bool:
        return any(v.startswith("not supported") for v in self.checks.values())

    def detail(self) -> str:
        if self.errors:
            return "; ".join(self.errors)
        return ", ".join(f"{k}: {v}" for k, v in self.checks.items())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "partial": self.partial}


def resolve(catalog: Catalog, backup: str) -> tuple[Path, RunRecord | None]:
    record = catalog.get(backup)
    if record is not None:
        if not record.archive:
            raise BackupNotFound(f"run {backup} is {record.status} and has no archive to verify")
        return Path(record.archive), record
    path = Path(backup)
    if not path.exists():
        raise BackupNotFound(f"{backup}: neither a catalog id nor an existing archive path")
    return path, catalog.find_by_archive(path)


def verify(
    config: Config,
    archive: Path,
    record: RunRecord | None,
    *,
    deep: bool = False,
    restore_test: bool = False,
) -> VerifyResult:
    started = time.monotonic()
    result = VerifyResult(
        archive=str(archive),
        run_id=record.id if record else None,
        job=record.job if record else None,
    )
    logger = log.get(action="verify", run_id=result.run_id, archive=str(archive))
    logger.info("verify.started", deep=deep, restore_test=restore_test)
    if not archive.exists():
        result.fail("archive", f"{archive}: the archive is missing")
    elif archive.is_dir():
        _verify_directory(archive, record, result)
    else:
        _verify_tar(config, archive, record, result, deep=deep, restore_test=restore_test)
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
) -> None:
    hot_snapshot = record is not None and record.mode == "hot"
    if hot_snapshot:
        _verify_hot_scan(archive, record, result, snapshot09=True)
    elif record is not None and record.sha256:
        actual = sha256_file(archive)
        if actual == record.sha256:
            result.checks["sha256"] = "ok"
        else:
            result.fail(
                "sha256",
                f"sha256 {actual} does not match the catalog's {record.sha256}: the archive changed",
            )
    else:
        result.checks["sha256"] = "skipped (no sha256 in the catalog)"

    report = check_archive(archive, deep=deep)
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

    cold = record is None or record.mode == "cold"
    # A hot 0.9 snapshot's layout is influxd's: its manifest check above stands for structure.
    if cold and report.members:
        expected = set(COLD_REQUIRED)
        if record is not None:
            expected |= set(record.extra.get("dirs") or [])
        missing = sorted(expected - report.top_dirs)
        if missing:
            result.fail("structure", f"{archive}: missing from the archive: {', '.join(missing)}")
        else:
            result.checks["structure"] = "ok"

    if restore_test:
        if not cold:
            result.checks["restore_test"] = "not supported yet for hot backups"
        else:
            _restore_test(config, archive, record, report, result)


def _index_version(archive: Path) -> str | None:
    """The archived influxdb.conf's [data] index-version, so the test server reads the same index."""
    try:
        with tarfile.open(archive, "r:") as tar:
            member = tar.extractfile("influxdb.conf")
            if member is None:
                return None
            raw = tomllib.loads(member.read().decode())
    except (KeyError, OSError, tarfile.TarError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    data = raw.get("data")
    value = data.get("index-version") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value.isidentifier() else None


def _log_tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
    except OSError:
        return ""


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
    config.storage_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=config.storage_dir))
    (scratch / "owner.json").write_text(json.dumps({"pid": os.getpid()}))
    try:
        try:
            extract_safely(archive, {t: scratch / t for t in tops}, uid=None, gid=None)
        except (ArchiveError, OSError, tarfile.TarError) as exc:
            result.fail(check, f"restore test: extraction failed: {exc}")
            return
        index = _index_version(archive)
        server = Sandbox(
            scratch,
            binary=str(config.settings.influxd.binary),
            extra_data={"index-version": json.dumps(index)} if index else {},
            extra_sections=RESTORE_TEST_SECTIONS,
        )
        server.write_config()
        try:
            server.start(timeout=config.settings.influxd.start_timeout)
        except RuntimeError:
            result.fail(
                check,
                "restore test: influxd did not start on the restored files: "
                + _log_tail(scratch / "influxd.log"),
            )
            server.stop()
            return
        except BaseException:  # a signal while it starts: it must not outlive us
            server.stop()
            raise
        try:
            _check_restored(server, record, result)
        finally:
            server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_restored(server: Sandbox, record: RunRecord | None, result: VerifyResult) -> None:
    check = "restore_test"
    try:
        dbs = figures.databases(server.url)
    except figures.FiguresError as exc:
        result.fail(check, f"restore test: SHOW DATABASES failed: {exc}")
        return
    expected = (record.db_counts if record else None) or {}
    errors: list[str] = []
    missing = sorted(set(expected) - set(dbs))
    if missing:
        errors.append(f"databases missing after restore: {', '.join(missing)}")
    deadline = time.monotonic() + COUNT_BUDGET_S
    more: list[str] = []
    for db in dbs:
        try:
            got = figures.point_count(server.url, db, timeout=max(deadline - time.monotonic(), 1))
        except figures.FiguresError as exc:
            errors.append(f"database {db} does not answer: {exc}")
            continue
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
    from influx_backupd.hot import HotFailed, scan_portable, scan_snapshot09

    try:
        if snapshot09:
            incremental = record is not None and record.kind == "incremental"
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
            result.fail(
                "sha256",
                f"sha256 {scan.sha256} does not match the catalog's {record.sha256}: "
                "the backup changed",
            )
    else:
        result.checks["sha256"] = "skipped (no sha256 in the catalog)"


def _verify_directory(archive: Path, record: RunRecord | None, result: VerifyResult) -> None:
    """A 1.x hot backup (-portable): manifest, every file, sha256 of the listing."""
    _verify_hot_scan(archive, record, result, snapshot09=False)
    result.checks["formats"] = "not supported yet for hot backup directories"
    result.checks["restore_test"] = "not supported yet for hot backups"


def save_result(catalog: Catalog, record: RunRecord, result: VerifyResult) -> None:
    """Into the catalog (the caller holds the lock, so prune cannot remove the record meanwhile)."""
    now = time.time()
    record.verify_status = result.status
    record.verified_at = now
    record.verify_detail = result.detail()
    catalog.save(record)
    if not result.ok:
        catalog.increment(record.job, VERIFY_FAILED, now)
