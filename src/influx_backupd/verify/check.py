"""Verify a backup: sha256 against the catalog, structure, file formats, and optionally a restore test.

    archive ──► formats.check_archive: one read, sha256 (catalog) + structure + Bolt/TSM/WAL
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
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from influx_backupd.core import log
from influx_backupd.core.config import Config
from influx_backupd.core.errors import (
    EXIT_USAGE,
    BackupdError,
    HotFailed,
    OnlyInBucket,
    RestoreRefused,
)
from influx_backupd.report.metrics import VERIFY_FAILED
from influx_backupd.store import layout
from influx_backupd.store.archive import (
    COLD_TOPS,
    ArchiveError,
    UnsafeArchive,
    check_headers,
)
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import (
    LinkDamaged,
    chain_for,
    link_problem,
    lookup,
    read_sidecar,
    sidecar_chain,
    sniff,
)
from influx_backupd.store.formats import ArchiveReport, Finding, check_archive, classify_member
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.formats.tsm import check_tsm
from influx_backupd.store.record import RunRecord, only_in_bucket
from influx_backupd.store.scanners import (
    Scan,
    changed_files,
    is_increment_09,
    scan_portable,
    scan_snapshot09,
)
from influx_backupd.store.sidecar import (
    SidecarError,
    note_verdict,
    read_sidecar_data,
    record_beside,
    sidecar_of,
)
from influx_backupd.verify.restore_test import restore_test_cold, restore_test_hot
from influx_backupd.verify.result import RESTORE_TEST, VerifyResult

COLD_REQUIRED = ("meta", "data", "influxdb.conf")
# A TSM file from a 1.x shard .tar.gz is checked from a copy (gzip streams cannot seek): in memory
# up to this size, a larger one in an unlinked temp file in the storage dir. In memory, BytesIO's
# growth holds it about twice (measured: a 60 MB member raised peak RSS by 90 MB).
SPOOL_MAX = 16 << 20


class BackupNotFound(BackupdError):
    """BACKUP names neither a catalog id nor an existing archive (a usage error)."""

    code = "usage"
    exit_status = EXIT_USAGE


def resolve(catalog: Catalog, backup: str) -> tuple[Path, RunRecord | None]:
    path, record = lookup(catalog, backup)
    if record is not None and only_in_bucket(record):
        raise OnlyInBucket(record.id)  # no verdict: a missing archive here says nothing of it
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
    seen: dict[str, VerifyResult] | None = None,
    runs: Sequence[RunRecord] | None = None,
) -> VerifyResult:
    """catalog: where a hot record's chain is looked up (default: the one in state_dir).
    seen: the results of backups verified earlier in this run (verify --all), at this depth:
    an increment's earlier links among them are not read again. runs: the catalog's records
    as verify --all read them (chains are looked up there, not read again for each link).

    A tar the catalog does not know is checked against the record written beside it, if any;
    one it knows, its record beside it against the catalog's."""
    started = time.monotonic()
    from_catalog = record is not None
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
        result.checks["sha256"] = "skipped (the record beside it is unusable)"
    _verify_one(
        config,
        archive,
        record,
        result,
        deep=deep,
        restore_test=restore_test,
        catalog=catalog,
        from_catalog=from_catalog,
    )
    if record is not None and record.kind == "incremental" and archive.exists():
        _verify_chain(config, archive, record, result, catalog, deep=deep, seen=seen, runs=runs)
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


def _verify_one(
    config: Config,
    archive: Path,
    record: RunRecord | None,
    result: VerifyResult,
    *,
    deep: bool,
    restore_test: bool,
    catalog: Catalog | None,
    from_catalog: bool,
) -> None:
    """One backup on its own, without the links before it: what `verify ID` of it checks, and
    what `verify --deep` of a later link checks of each earlier one."""
    if not archive.exists():
        result.fail("archive", f"{archive}: the archive is missing")
        return
    odd = layout.not_a_backup(archive, record)
    if odd is not None:
        result.fail("archive", f"{archive}: it is {odd}, not an archive: something was put there")
        return
    if archive.is_dir():
        _verify_directory(
            config, archive, record, result, deep=deep, restore_test=restore_test, catalog=catalog
        )
    else:
        _verify_tar(
            config, archive, record, result, deep=deep, restore_test=restore_test, catalog=catalog
        )
    if from_catalog and record is not None:
        _compare_sidecar(archive, record, result)


# What restore and import act on: a record beside the backup that differs here misleads them.
SIDECAR_FIELDS = ("id", "job", "mode", "kind", "parent_id", "chain_id", "sha256")


def _compare_sidecar(archive: Path, record: RunRecord, result: VerifyResult) -> None:
    """The record beside a backup is all `import` has on a new host: it must say what the
    catalog says (before: one edited to another kind, parent or sha256 passed verify, and an
    import after a lost host restored on its word).

    A missing one is a warning: backups taken before records were written beside them have
    none, and this host restores the backup from the catalog; marking it failed would take an
    intact backup out of the good ones, with nothing to put back."""
    if record.mode == "hot" and archive.is_file():
        return  # a 0.9 snapshot: its chain is in its files' names, no record is written
    try:
        data = read_sidecar_data(archive.absolute())
    except SidecarError as exc:
        result.fail("record", f"{exc}; the catalog's record is intact (import would refuse it)")
        return
    where = sidecar_of(archive)
    if data is None:
        result.checks["record"] = "missing"
        result.warnings.append(
            f"{where}: no backup record beside it: the catalog here knows the backup, but "
            "import on a new host will not"
        )
        return
    wrong = [
        f"{name} {data.get(name)!r} here, {getattr(record, name)!r} in the catalog"
        for name in SIDECAR_FIELDS
        if data.get(name) != getattr(record, name)
    ]
    recorded = record.extra.get("file_sha256")
    beside = data.get("extra")
    beside_files = beside.get("file_sha256") if isinstance(beside, dict) else None
    if recorded is not None and beside_files != recorded:
        names = recorded if isinstance(recorded, dict) else {}
        other = beside_files if isinstance(beside_files, dict) else {}
        differ = sorted(n for n in set(names) | set(other) if names.get(n) != other.get(n))
        wrong.append(
            f"file_sha256 of {len(differ)} file(s) differs from the catalog's"
            + (
                f" (first: {differ[0]}: {other.get(differ[0])!r} here, "
                f"{names.get(differ[0])!r} in the catalog)"
                if differ
                else ""
            )
        )
    if wrong:
        result.fail(
            "record",
            f"{where}: the backup record beside it disagrees with the catalog (import on a new "
            f"host reads it): {'; '.join(wrong)}",
        )
    else:
        result.checks["record"] = "ok (the record beside it matches the catalog)"


def _verify_chain(
    config: Config,
    archive: Path,
    record: RunRecord,
    result: VerifyResult,
    catalog: Catalog | None,
    *,
    deep: bool,
    seen: dict[str, VerifyResult] | None,
    runs: Sequence[RunRecord] | None = None,
) -> None:
    """An increment restores only on top of its earlier links: each one in the catalog, ok,
    its archive there, and not failed its own last check (before: `verify TIP` said ok with a
    link gone, and a restore of it was then refused). Deep: each one also verified in full.
    Each one's record beside it too: what a restore on a new host follows instead."""
    if catalog is None:
        if not config.state_dir.is_dir():
            return  # no catalog here (a backup verified by path on another host)
        catalog = Catalog(config.state_dir)
    try:
        links = chain_for(catalog, record, runs)
    except RestoreRefused as exc:
        result.fail("chain", str(exc))
        return
    _check_earlier_links(
        config, links[:-1], result, catalog, deep=deep, seen=seen, new_host=archive
    )


def _verify_sidecar_chain(
    config: Config, archive: Path, result: VerifyResult, *, deep: bool
) -> None:
    """A 1.x increment verified by path (no catalog entry): the links before it, as a restore
    on a new host finds them, from the records beside the dirs (before: ok, with no word that
    it restores only on top of them)."""
    try:
        links = sidecar_chain(archive.absolute())
    except RestoreRefused as exc:
        result.fail("chain", str(exc))
        return
    earlier = [link.record for link in links[:-1] if link.record]
    _check_earlier_links(
        config, earlier, result, None, deep=deep, seen=None, whence=", from the records beside them"
    )


def _check_earlier_links(
    config: Config,
    links: list[RunRecord],
    result: VerifyResult,
    catalog: Catalog | None,
    *,
    deep: bool,
    seen: dict[str, VerifyResult] | None,
    whence: str = "",
    new_host: Path | None = None,
) -> None:
    """What keeps an increment from restoring on these links: one gone or not its recorded
    size (stat only), or one whose own last check failed. Deep, or verified earlier in this
    run: its contents too, as `verify` of that link alone checks them. Otherwise the line says
    that its contents were not read (before: "chain ok" over a link with a changed byte).
    From the catalog: each link's record beside it is checked against the catalog's, and
    new_host (this increment) is followed as a new host's restore would (a warning)."""
    unread = 0
    for link in links:
        wrong = link_problem(link)
        if wrong is None and link.failed_check:
            wrong = (
                f"link {link.id} failed its last check "
                f"({link.verify_detail or 'see verify ' + link.id})"
            )
            if deep and RESTORE_TEST not in (link.verify_detail or ""):
                # read again, as verify of it alone would (its dir may be back and intact):
                # not a stale verdict; one of a restore test stands (none is run of it here)
                wrong = None
        if wrong is None:
            own = (seen or {}).get(link.id)
            if own is not None and own.status == "error":
                own = None  # no verdict (its restore test could not run): read it as if unseen
            if own is None and deep:
                own = VerifyResult(archive=str(link.archive), run_id=link.id, job=link.job)
                _verify_one(
                    config,
                    Path(str(link.archive)),
                    link,
                    own,
                    deep=True,
                    restore_test=False,
                    catalog=catalog,
                    from_catalog=False,  # its record beside it: _record_beside_link, for every link
                )
                if own.status == "failed" and catalog is not None:
                    # checked and found bad itself: its own verdict too, not only this one's
                    result.links_failed[link.id] = "; ".join(own.errors)
            if own is None:
                unread += 1
            elif own.status == "failed":
                wrong = f"link {link.id}: {'; '.join(own.errors)}"
            elif not own.ok:
                result.cannot("chain", f"link {link.id} could not be checked: {own.detail()}")
                return
            elif link.failed_check and catalog is not None:
                result.links_passed[link.id] = own.detail()  # its record says so too
        if wrong is None and catalog is not None:
            wrong = _record_beside_link(link)
        if wrong is not None:
            prefix = f"chain {links[0].chain_id}: " if catalog is not None else ""
            result.fail("chain", prefix + wrong)
            return
    total = len(links) + 1
    # verify --all reads each link on its own line; links known only by their records beside
    # them (by path) are not in it
    how = "verify --deep, or verify --all" if catalog is not None else "verify --deep"
    if unread:
        result.checks["chain"] = (
            f"{total} links present, sizes match{whence}; contents of {unread} earlier "
            f"link{'s' if unread > 1 else ''} not read ({how})"
        )
    else:
        result.checks["chain"] = f"ok ({total} links, each one's contents verified{whence})"
    if catalog is not None and new_host is not None:
        refused = _new_host_refusal(new_host)
        if refused is not None:
            result.checks["chain"] += "; a new host cannot restore it (see the warning)"
            result.warnings.append(refused)


def _record_beside_link(link: RunRecord) -> str | None:
    """An earlier link's record beside it, which a restore on a new host reads instead of the
    catalog: one that is unusable or disagrees with the catalog fails the chain, as it fails
    `verify` of that link (a missing one: _new_host_refusal says what that costs)."""
    path = Path(str(link.archive))
    if not path.is_dir():
        return None  # a 0.9 snapshot: no record is written beside it
    own = VerifyResult(archive=str(path))
    _compare_sidecar(path, link, own)
    return f"link {link.id}: {'; '.join(own.errors)}" if own.errors else None


def _new_host_refusal(archive: Path) -> str | None:
    """What `restore PATH` on a new host (the catalog lost, or another state_dir) says of this
    1.x increment: it follows the records beside the dirs, and refuses when one of the links
    before it has none, or is not where its name says (before: verify said "chain ok" and that
    restore refused). None when it would restore; not asked when the backup has no record
    beside it itself (the record check's warning says so)."""
    directory = archive.absolute()
    if not directory.is_dir() or not sidecar_of(directory).is_file():
        return None
    try:
        sidecar_chain(directory)
    except RestoreRefused as exc:
        return (
            f"a restore on a new host (restore {archive}, from the records beside the links) "
            f"refuses it: {exc}"
        )
    return None


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
    if hot_snapshot:
        _verify_hot_scan(archive, record, result, snapshot09=True)
    else:
        # restore's own safety check, from the headers alone, before anything reads the data
        # (a 0.9 snapshot's is in its scan): what verify passes, restore accepts. An unsafe
        # archive is refused for that one reason: what else it holds does not matter then.
        try:
            check_headers(archive, COLD_TOPS)
        except UnsafeArchive as exc:
            result.fail("structure", f"{archive}: {exc}")
            return
        except ArchiveError:
            pass  # unreadable: the format checks say so
    digest = not hot_snapshot and record is not None and bool(record.sha256)
    # One read of the archive: every byte feeds the sha256 and the format checks alike.
    report = check_archive(archive, deep=deep, sha256=digest)
    if digest and record is not None:
        if report.sha256 == record.sha256:
            result.checks["sha256"] = "ok"
        elif report.sha256 is None:
            result.fail("sha256", f"{archive}: unreadable, its sha256 could not be computed")
        else:
            result.fail(
                "sha256",
                f"sha256 {report.sha256} does not match the recorded {record.sha256}: "
                "the archive changed",
            )
    elif not hot_snapshot and record is not None and record.ok:
        result.fail("sha256", f"the record of run {record.id} has no sha256 to check against")
    elif not hot_snapshot and "sha256" not in result.checks:  # set: the record is unusable
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
        result.checks["formats"] = _formats_ok(counted or "no checkable files", report, deep)

    cold = not hot_snapshot
    # A hot 0.9 snapshot's layout is influxd's: its manifest check above stands for structure.
    # An archive read only in part says so above; what it lacks past that point is not known.
    if cold and report.members and report.read_whole:
        expected = set(COLD_REQUIRED)
        if record is not None:
            expected |= set(record.dirs or [])
        missing = sorted(expected - report.top_dirs)
        if missing:
            result.fail("structure", f"{archive}: missing from the archive: {', '.join(missing)}")
        else:
            result.checks["structure"] = "ok"
    elif cold and report.members:
        result.checks["structure"] = "not checked (the archive could not be read to its end)"

    if restore_test:
        if not cold:
            restore_test_hot(config, "0.9", archive, record, result, catalog)
        else:
            restore_test_cold(config, archive, record, report, result)


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
    elif record is not None and record.ok:
        # every ok run records one: without it a changed backup would pass as ok
        result.fail("sha256", f"the record of run {record.id} has no sha256 to check against")
    else:
        result.checks["sha256"] = (
            "skipped (no recorded sha256: not in the catalog, no record beside it)"
        )


def _what_changed(scan: Scan, record: RunRecord) -> str:
    """The files whose sha256 differs from the record's, by name; a record written before
    per-file sha256s were kept can only say that the backup changed."""
    whole = f"sha256 {scan.sha256} does not match the recorded {record.sha256}"
    changed = changed_files(scan, record.extra.get("file_sha256"))
    if changed is None:
        return f"{whole}: the backup changed (its record has no sha256 per file)"
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
    unusable = None
    if recorded is None:
        try:
            recorded = read_sidecar(archive.absolute())
        except RestoreRefused as exc:
            # as for a tar: a record is there, and without it nothing proves what the backup
            # held (before: a warning, exit 0, whatever had changed)
            unusable = str(exc)
    _verify_hot_scan(archive, recorded, result, snapshot09=False)
    if unusable is not None:
        result.fail("record", unusable)
        result.checks["sha256"] = "skipped (the record beside it is unusable)"
    elif record is None and recorded is not None and recorded.kind == "incremental":
        _verify_sidecar_chain(config, archive, result, deep=deep)
    config.storage_dir.mkdir(parents=True, exist_ok=True)
    report = check_portable_formats(archive, deep=deep, spool_dir=config.storage_dir)
    for finding in report.findings:
        (result.errors if finding.severity == "error" else result.warnings).append(str(finding))
    if report.errors:
        result.checks["formats"] = "failed"
        result.status = "failed"
    else:
        shards = report.checked.get("shard archives", 0)
        counted = f"{report.checked.get('tsm', 0)} tsm in {shards} shard archives"
        result.checks["formats"] = _formats_ok(counted, report, deep)
    if restore_test:
        restore_test_hot(config, "portable", archive, record, result, catalog)


def _formats_ok(counted: str, report: ArchiveReport, deep: bool) -> str:
    """What was read, and what was not: a summary that does not imply more than it checked."""
    unread = ", ".join(f"{n} {label}" for label, n in sorted(report.unread.items()))
    return f"ok ({counted}{', deep' if deep else ''}{f'; not read: {unread}' if unread else ''})"


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
            with tarfile.open(shard, "r|gz", tarinfo=CheckedTarInfo) as tar:
                for info in tar:
                    report.members += 1
                    name = f"{shard.name}/{info.name}"
                    if not info.isreg():
                        continue
                    if classify_member(info.name) != "tsm":
                        report.not_read(info.name)
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
    runs = catalog.list(job=job)  # once: passed over, the backups, every increment's chain
    passed = {r.id for r in runs if _passed_over(r)}
    if passed:
        log.get().info("verify.passed_over", reason="only in the bucket", backups=sorted(passed))
    good = [r for r in runs if r.ok and r.archive is not None and r.id not in passed]
    good.sort(key=lambda r: (r.verified_at or r.finished_at or r.started_at, r.started_at))
    results = []
    seen: dict[str, VerifyResult] = {}
    for record in good:
        if stop():
            break
        assert record.archive is not None
        result = verify(
            config,
            Path(record.archive),
            record,
            deep=deep,
            restore_test=restore_test,
            catalog=catalog,  # the increments' chains are read from it, not opened again each
            seen=seen,  # an increment's earlier links checked before it are not read again
            runs=runs,
        )
        save_result(catalog, record, result)
        results.append(result)
        seen[record.id] = result
    return results


def passed_over(catalog: Catalog, job: str | None = None) -> list[str]:
    """The backups verify_all leaves alone: imported from the bucket (import --offsite) and not
    fetched yet. Nothing here to check, and no verdict: a "failed" would show FAILING in status
    and make prune keep them (verify --offsite checks them in the bucket)."""
    return [r.id for r in catalog.list(job=job) if _passed_over(r)]


def _passed_over(record: RunRecord) -> bool:
    return record.ok and only_in_bucket(record)


def save_result(catalog: Catalog, record: RunRecord, result: VerifyResult) -> None:
    """Into the catalog (the caller holds the lock, so prune cannot remove the record meanwhile).
    A check that could not be made (status error) is no verdict: the record keeps the last one
    (before: it overwrote a "failed", and the bad backup counted as good again). Earlier links
    found bad on the way are verdicts of their own, saved on them too."""
    now = time.time()
    for run_id, detail in result.links_failed.items():
        link = catalog.get(run_id)
        if link is not None and link.ok and link.archive:
            _found_bad(catalog, link, detail, now)
    for run_id, detail in result.links_passed.items():
        link = catalog.get(run_id)
        if link is not None and link.failed_check:
            link.verify_status, link.verified_at, link.verify_detail = "ok", now, detail
            catalog.save(link)
            _note_beside(link)
            log.get().info("verify.link_passed", run_id=link.id, job=link.job, detail=detail)
    if result.status == "error":
        log.get().warning(
            "verify.not_judged", run_id=record.id, job=record.job, error=result.detail()
        )
        return
    record.verify_status = result.status
    record.verified_at = now
    record.verify_detail = result.detail()
    catalog.save(record)
    _note_beside(record)
    if not result.ok:
        catalog.increment(record.job, VERIFY_FAILED, now)


def _note_beside(record: RunRecord) -> None:
    problem = note_verdict(record)
    if problem is not None:  # the catalog has it: only an import would miss it
        log.get().warning("verify.record_beside_not_updated", run_id=record.id, error=problem)


def save_refused_link(catalog: Catalog, refused: LinkDamaged) -> None:
    """A restore (or a restore test) that refused a link for its own bytes found it bad as
    verify would: the catalog's record of that link says so (before: nothing was recorded, and
    `list` kept showing it ok). Only the record the link was checked against: a record beside a
    dir on a new host is not this catalog's word."""
    link = refused.link
    known = catalog.get(link.record.id) if link.record is not None else None
    if (
        link.source == "catalog"
        and known is not None
        and known.ok
        and known.archive is not None
        and Path(known.archive) == link.path
    ):
        _found_bad(catalog, known, str(refused), time.time())


def _found_bad(catalog: Catalog, record: RunRecord, detail: str, now: float) -> None:
    record.verify_status = "failed"
    record.verified_at = now
    record.verify_detail = detail
    catalog.save(record)
    _note_beside(record)
    catalog.increment(record.job, VERIFY_FAILED, now)
    log.get().error("verify.link_failed", run_id=record.id, job=record.job, error=detail)
