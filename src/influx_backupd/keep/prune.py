"""Prune: apply each job's keep_* policy (retention.plan) and clean what dead runs left behind.

Order matters for crash safety: a run's catalog entry goes first, then its files. A crash in
between leaves an unreferenced file, never an entry pointing at a missing archive: the files are
named in prune-pending.json before the entry goes, and the next prune removes them first of all
(`_finish_pending`), before it deletes anything of its own; entries are added to that list and
taken off it one by one, never overwritten, so what a killed prune left is never lost. The caller holds the backup lock (guard.exclusive), so no
run is writing while we look, and every staging or scratch dir we find belongs to a dead run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influx_backupd.core import log
from influx_backupd.core.atomic import read_ours_text, replace_json
from influx_backupd.core.config import Config, JobSection
from influx_backupd.core.errors import BackupdError
from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.log import Logger
from influx_backupd.core.paths import real
from influx_backupd.core.removal import remove_gently
from influx_backupd.influxd import scratch
from influx_backupd.keep.retention import RetentionPlan, RetentionPolicy, plan
from influx_backupd.store import layout
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import ChainCut, parents
from influx_backupd.store.record import RunRecord, dated_ahead, missing_on_disk, only_in_bucket
from influx_backupd.store.sidecar import SidecarError, note_verdict, read_sidecar_data, sidecar_of


class PruneRefused(BackupdError):
    """The plan would delete the newest good backup: a bug, so nothing of the job is deleted."""

    code = "prune.refused"


@dataclass
class Deletion:
    run_id: str
    job: str
    status: str
    started_at: float
    paths: list[str] = field(default_factory=list)  # what was (or would be) removed


@dataclass
class PruneReport:
    dry_run: bool
    kept: list[dict[str, Any]] = field(default_factory=list)  # {id, job, reasons}
    deleted: list[Deletion] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)  # leftovers of dead runs
    errors: list[str] = field(default_factory=list)
    # jobs the catalog holds backups of and the config no longer names (renamed, removed): no
    # rules apply to them, so they are kept: {job, backups, bytes}
    not_in_config: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def policy_of(job: JobSection) -> RetentionPolicy:
    return RetentionPolicy(
        keep_last=job.keep_last,
        keep_hourly=job.keep_hourly,
        keep_daily=job.keep_daily,
        keep_weekly=job.keep_weekly,
        keep_monthly=job.keep_monthly,
    )


def _files_of(config: Config, record: RunRecord) -> list[Path]:
    """The archive, and for a run that died before recording it, the names it would have used."""
    paths: list[Path] = []
    if record.archive:
        paths.append(Path(record.archive))
    if record.status != "ok":
        paths += layout.run_archives(config.storage_dir, record.job, record.id)
    # The record beside an archive goes with it (after it: a sidecar is never left naming an
    # archive that is half gone without the prune-pending list covering it).
    paths += [sidecar_of(p) for p in paths]  # only those that exist are kept below
    found: list[Path] = []
    for path in paths:
        for candidate in (path, layout.partial_of(path)):
            if candidate not in found and (candidate.exists() or candidate.is_symlink()):
                if _dir_where_a_file_belongs(record, candidate):
                    log.get(action="prune").warning(
                        "prune.not_ours",
                        path=str(candidate),
                        reason="a directory where this backup's file belongs: left as it is",
                    )
                    continue
                found.append(candidate)
    return found


def _dir_where_a_file_belongs(record: RunRecord, path: Path) -> bool:
    """A cold archive and a record beside a backup (or either's partial) are files: a directory
    at such a name (a person's, since) is not what the backup wrote. A hot backup's dir, and
    its fetch's partial, are directories."""
    if path.is_symlink() or not path.is_dir():
        return False
    return record.mode == "cold" or path.name.removesuffix(layout.PARTIAL).endswith(
        (".tar", ".json")
    )


def _named_paths(records: Iterable[RunRecord]) -> set[Path]:
    """The archives these records name, and the records beside them."""
    archives = {Path(r.archive) for r in records if r.archive}
    return archives | {sidecar_of(p) for p in archives}


def _named_by(records: Iterable[RunRecord]) -> dict[Path, set[str]]:
    """Each path the records name (archive, sidecar) → the ids naming it: read once per job
    (read again per deletion, a prune of N backups parsed the catalog N times: 160 s at 400)."""
    named: dict[Path, set[str]] = {}
    for r in records:
        for path in _named_paths([r]):
            named.setdefault(path, set()).add(r.id)
    return named


def _inside(storage: Path, path: Path) -> bool:
    """path lies strictly inside storage (real: links followed). The last element itself is
    what would go: ".." (`DIR/..` is the storage dir itself, which lies below itself by name)
    and "." name no file of a backup."""
    where = Path(os.path.normpath(real(path.parent) / path.name))
    return path.name not in ("", ".", "..") and ".." not in path.parts and storage in where.parents


def _ours_alone(
    config: Config,
    named: Mapping[Path, set[str]],
    record: RunRecord,
    paths: list[Path],
    report: PruneReport,
    logger: Any,
) -> list[Path]:
    """The paths prune may remove with record: strictly inside the storage dir, and no other
    backup's. A record may come from outside (a sidecar, a bucket's manifest): the path it
    names is not trusted to be its own. The others stay where they are, said in an error."""
    storage = real(config.storage_dir)
    kept: list[Path] = []
    for path in paths:
        if not _inside(storage, path):
            why = f"{path}: not inside storage.dir {config.storage_dir}; left where it is"
        elif named.get(path, set()) - {record.id}:
            why = f"{path}: named by another backup's record too; left where it is"
        else:
            kept.append(path)
            continue
        report.errors.append(why)
        logger.error("prune.not_removed", run_id=record.id, path=str(path), error=why)
    return kept


def prune(
    config: Config,
    catalog: Catalog,
    *,
    job: str | None = None,
    dry_run: bool = False,
    now: float | None = None,
    hold: Mapping[str, str] | None = None,
) -> PruneReport:
    """Prune every configured job (or one). The caller holds the backup lock. hold: backups
    kept whatever the rules say (id → why; e.g. not off-site yet), with their chains."""
    logger = log.get(action="prune", dry_run=dry_run)
    report = PruneReport(dry_run=dry_run)
    jobs = [config.job(job)] if job is not None else list(config.settings.job)
    when = time.time() if now is None else now
    # What a killed prune left half done comes first: the list must not be lost under a
    # deletion of this prune's own (and a later import would bring that backup back).
    _finish_pending(config, catalog, report, dry_run)
    for section in jobs:
        try:
            _prune_job(config, catalog, section, report, dry_run, when, hold or {})
        except PruneRefused as exc:
            report.errors.append(str(exc))
            logger.error("prune.refused", job=section.name, error=str(exc))
    if job is None:
        _not_in_config(config, catalog, report)
    _leftovers(config, catalog, report, dry_run)
    logger.info(
        "prune.finished",
        kept=len(report.kept),
        deleted=len(report.deleted),
        cleaned=len(report.cleaned),
        errors=len(report.errors),
    )
    return report


def _not_in_config(config: Config, catalog: Catalog, report: PruneReport) -> None:
    """Backups of a job the config no longer names are never pruned (no keep_* rules apply):
    said each time, or a renamed job's backups fill the disk without a word."""
    named = {job.name for job in config.settings.job} or {config.job(None).name}
    orphans: dict[str, list[RunRecord]] = {}
    for record in catalog.list():
        if record.job not in named and record.ok and not only_in_bucket(record):
            orphans.setdefault(record.job, []).append(record)
    for name, records in orphans.items():
        size = sum(r.bytes for r in records)
        report.not_in_config.append({"job": name, "backups": len(records), "bytes": size})
        log.get(action="prune").warning(
            "prune.job_not_in_config",
            job=name,
            backups=len(records),
            bytes=size,
            detail="no keep_* rules apply to a job the config does not name: its backups are "
            "kept, never pruned (name the job in the config again to prune them by its rules)",
        )


def _verdicts_beside(records: list[RunRecord], logger: Logger) -> None:
    """A failed check the catalog holds, into the record beside its backup where that one does
    not say it yet: releases before the verdict was kept there (upgrades) left them in the
    catalog alone, and import after a lost catalog counted those backups good, so retention
    removed good ones in their place (the upgrade audit). Each prune mends what it finds."""
    for record in records:
        if record.failed_check:
            problem = note_verdict(record)
            if problem is not None:
                logger.warning("prune.record_beside_not_updated", run_id=record.id, error=problem)


def _prune_job(
    config: Config,
    catalog: Catalog,
    job: JobSection,
    report: PruneReport,
    dry_run: bool,
    now: float,
    hold: Mapping[str, str],
) -> None:
    logger = log.get(action="prune", job=job.name, dry_run=dry_run)
    records = catalog.list(job=job.name)
    by_id = {r.id: r for r in records}
    if not dry_run:
        _verdicts_beside(records, logger)
    # A backup whose files are gone restores nothing (plan's `missing`)
    gone = {r.id for r in records if missing_on_disk(r)}
    if gone:
        logger.warning("prune.missing_on_disk", run_ids=sorted(gone))
    # taken while the clock was ahead: kept, counted by no rule until their date (retention.plan)
    ahead = sorted(r.id for r in records if r.ok and dated_ahead(r, now))
    if ahead:
        logger.warning("prune.dated_in_the_future", run_ids=ahead)
    # A backup outside storage.dir (storage.dir changed since, or a state_dir another config
    # shares) is not this config's to judge: counted by a rule it took a place of its own
    # backups, which went (and prune, refusing its files, dropped its entry)
    storage = real(config.storage_dir)
    elsewhere = {
        r.id: f"lies outside storage.dir {config.storage_dir}: never pruned by this config"
        for r in records
        if r.archive and r.status != "running" and not _inside(storage, Path(r.archive))
    }
    if elsewhere:
        logger.warning(
            "prune.outside_storage",
            run_ids=sorted(elsewhere),
            detail="kept, counted by no rule: move them into storage.dir and import them, or "
            "remove them by hand",
        )
    retention = plan(records, policy_of(job), now=now, missing=gone, aside=elsewhere)
    result = _holding(retention, by_id, hold)

    # Belt and braces: whatever retention.plan says, the newest good backup stays.
    goods = sorted((r for r in records if r.good), key=lambda r: (r.started_at, r.id))
    doomed = {r.id for r in result.delete}
    if goods and goods[-1].id in doomed:
        raise PruneRefused(
            f"job {job.name}: the retention plan would delete the newest good backup "
            f"{goods[-1].id}; nothing of this job was deleted"
        )
    if any(by_id[i].status == "running" for i in doomed):
        raise PruneRefused(f"job {job.name}: the plan would delete a running backup")

    for kept in result.keep:
        report.kept.append({"id": kept.id, "job": job.name, "reasons": result.reasons[kept.id]})
    pending = _Pending(config.state_dir)
    policy = policy_of(job)
    kept_starts = [r.started_at for r in result.keep if r.status == "ok"]
    oldest_kept = min(kept_starts) if kept_starts else None
    named = _named_by(catalog.list())
    for planned in result.delete:
        record = by_id[planned.id]
        paths = _ours_alone(config, named, record, _files_of(config, record), report, logger)
        if record.status in ("failed", "interrupted") and (
            not policy.has_rules or (oldest_kept is not None and record.started_at > oldest_kept)
        ):
            # History inside the retention window (all of it when no keep_* rule is set):
            # the entry stays so `list` and the operator see the failure; its files go.
            _clean_failed(catalog, record, paths, report, dry_run, logger)
            continue
        deletion = Deletion(
            record.id, job.name, planned.status, record.started_at, [str(p) for p in paths]
        )
        report.deleted.append(deletion)
        if dry_run:
            logger.info(
                "prune.would_delete", run_id=record.id, status=planned.status, paths=deletion.paths
            )
            continue
        # The catalog first: a crash now leaves an unreferenced file (noted in the pending
        # list for the next prune), never an entry pointing at a missing archive.
        pending.add(record.id, deletion.paths)
        catalog.delete(record.id)
        failed: list[str] = []
        for path in paths:
            try:
                remove_gently(path)
            except OSError as exc:
                failed.append(str(path))
                report.errors.append(f"{path}: {exc}")
                logger.error(
                    "prune.remove_failed", run_id=record.id, path=str(path), error=str(exc)
                )
        logger.info(
            "prune.deleted",
            run_id=record.id,
            status=planned.status,
            started_at=record.started_at,
            paths=deletion.paths,
        )
        pending.done(record.id, still=failed)  # what could not be removed: tried again next time


def _holding(
    result: RetentionPlan, by_id: Mapping[str, RunRecord], hold: Mapping[str, str]
) -> RetentionPlan:
    """The plan with the held backups, and every earlier link of their chains, moved to keep."""
    held: dict[str, str] = {}
    for run_id, why in hold.items():
        record = by_id.get(run_id)
        if record is None:
            continue
        held.setdefault(run_id, why)
        with contextlib.suppress(ChainCut):  # a chain cut short or looping: held as far as it goes
            for parent in parents(record, by_id):
                held.setdefault(parent.id, f"an earlier link of {run_id}: {why}")
    moved = [r for r in result.delete if r.id in held]
    if not moved:
        return result
    reasons = dict(result.reasons)
    for record in moved:
        reasons[record.id] = [held[record.id]]
        log.get().warning("prune.held", run_id=record.id, reason=held[record.id])
    return RetentionPlan(
        keep=sorted([*result.keep, *moved], key=lambda r: (r.started_at, r.id), reverse=True),
        delete=[r for r in result.delete if r.id not in held],
        reasons=reasons,
    )


def _clean_failed(
    catalog: Catalog,
    record: RunRecord,
    paths: list[Path],
    report: PruneReport,
    dry_run: bool,
    logger: Any,
) -> None:
    if not paths:
        return
    report.cleaned.extend(str(p) for p in paths)
    if dry_run:
        logger.info("prune.would_clean", run_id=record.id, paths=[str(p) for p in paths])
        return
    # The entry first: it must not name an archive that is about to go.
    record.archive = None
    record.extra["leftovers_removed"] = [str(p) for p in paths]
    catalog.save(record)
    for path in paths:
        try:
            remove_gently(path)
        except OSError as exc:
            report.errors.append(f"{path}: {exc}")
    logger.info("prune.leftovers_removed", run_id=record.id, paths=[str(p) for p in paths])


def _finish_pending(config: Config, catalog: Catalog, report: PruneReport, dry_run: bool) -> None:
    """The files of runs an earlier prune took out of the catalog and died before removing.

    An entry whose run the catalog still has is dropped (that prune died before the delete:
    the run is planned again like any other), as is a path another record names now. A path
    that cannot be removed stays on the list for the next prune."""
    logger = log.get(action="prune", dry_run=dry_run)
    pending = _Pending(config.state_dir)
    entries = pending.read()
    if not entries:
        return
    records = catalog.list()
    run_ids = {r.id for r in records}
    named = _named_paths(records)
    still: list[tuple[str, str]] = []
    for run_id, name in entries:
        path = Path(name)
        if run_id in run_ids or path in named or not (path.exists() or path.is_symlink()):
            continue
        report.cleaned.append(str(path))
        if dry_run:
            logger.info("prune.would_clean", path=str(path), reason=_PENDING_WHY, run_id=run_id)
            continue
        try:
            remove_gently(path)
            logger.warning("prune.cleaned", path=str(path), reason=_PENDING_WHY, run_id=run_id)
        except OSError as exc:
            still.append((run_id, name))
            report.errors.append(f"{path}: {exc}")
            logger.error("prune.clean_failed", path=str(path), error=str(exc))
    if not dry_run:
        pending.replace(still)


_PENDING_WHY = "file of a deleted run (an earlier prune died halfway)"


def _leftovers(config: Config, catalog: Catalog, report: PruneReport, dry_run: bool) -> None:
    """Partial archives, restore-test scratch dirs, records of removed backups, staging trees."""
    logger = log.get(action="prune", dry_run=dry_run)
    run_ids = {r.id for r in catalog.list()}
    left: list[tuple[Path, str]] = []
    storage = config.storage_dir
    if storage.is_dir():
        for path in sorted(storage.iterdir()):
            if layout.is_partial(path):
                left.append((path, "partial archive of a dead run"))
            elif layout.is_incomplete(path) and path.is_dir():
                left.append((path, "hot backup dir of a dead run"))
            elif layout.is_scratch(path) and scratch.ours_and_dead(path):
                left.append((path, "scratch dir of a dead restore test or restore"))
            elif _orphan_sidecar(path, run_ids):
                left.append((path, "record of a removed backup"))
        left += _unused_staging_trees(config)
    for path, why in left:
        if not (path.exists() or path.is_symlink()):
            continue
        report.cleaned.append(str(path))
        if dry_run:
            logger.info("prune.would_clean", path=str(path), reason=why)
            continue
        try:
            if layout.is_scratch(path):
                scratch.stop_server(path)
            remove_gently(path)
            logger.warning("prune.cleaned", path=str(path), reason=why)
        except OSError as exc:
            report.errors.append(f"{path}: {exc}")
            logger.error("prune.clean_failed", path=str(path), error=str(exc))


def _orphan_sidecar(path: Path, run_ids: set[str]) -> bool:
    """A backup's record (sidecar.py) whose archive is gone and whose run the catalog does not
    know. Only a file that reads as such a record: nothing else is guessed at."""
    if not path.name.endswith(".json") or not path.is_file():
        return False
    archive = path.with_name(path.name.removesuffix(".json"))
    if archive.exists():
        return False
    try:
        data = read_sidecar_data(archive)
    except SidecarError:
        return False
    return data is not None and data.get("mode") in ("cold", "hot") and data["id"] not in run_ids


def _unused_staging_trees(config: Config) -> list[tuple[Path, str]]:
    """Staging trees no job will sync into again: each is a full copy of influxd's dirs.

    Only a job with copy = "staged" and keep_staging = true keeps its tree between runs. A tree
    of a job removed from the config, switched to direct, or told not to keep it (then left by
    a run that died) would otherwise hold that disk forever. It is a cache, not a backup: a job
    that uses it again refills it in phase 1, while influxd serves.
    """
    trees = layout.staging_trees(config.storage_dir)
    if not trees.is_dir():
        return []
    jobs = {j.name: j for j in config.settings.job}
    left: list[tuple[Path, str]] = []
    for tree in sorted(trees.iterdir()):
        if not layout.is_staging_tree(tree):
            log.get(action="prune").warning(
                "prune.not_ours", path=str(tree), reason="not a job's staging tree: left as it is"
            )
            continue
        job = jobs.get(tree.name)
        if job is None:
            left.append((tree, "staging tree of a job no longer in the config"))
        elif job.copy_mode != "staged":
            left.append((tree, "staging tree of a job that now copies direct"))
        elif not job.keep_staging:
            left.append((tree, "staging tree of a job with keep_staging = false"))
    return left


class _Pending:
    """What a prune is about to remove, written before the catalog entry goes.

    A prune that dies between deleting the entry and removing the files leaves this
    behind; the next prune removes those files (only there can it know which they are —
    guessing from file names could take an archive whose catalog was lost). Runs are added to
    the list and taken off it; nothing already on it is ever overwritten.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "prune-pending.json"

    def add(self, run_id: str, paths: list[str]) -> None:
        entries = self.read()
        entries += [(run_id, p) for p in paths if (run_id, p) not in entries]
        self.replace(entries)

    def done(self, run_id: str, still: list[str]) -> None:
        """run_id's files are removed, but for those in still (kept on the list)."""
        self.replace([(r, p) for r, p in self.read() if r != run_id or p in still])

    def replace(self, entries: list[tuple[str, str]]) -> None:
        if not entries:
            self.clear()
            return
        replace_json(self.path, [[r, p] for r, p in entries])

    def read(self) -> list[tuple[str, str]]:
        try:
            data = loads_json(read_ours_text(self.path))
            if isinstance(data, list) and all(
                isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
                for e in data
            ):
                return [(r, p) for r, p in data]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        # Damaged: which files it named cannot be known. Set aside for the operator (never
        # written over, which would lose them silently), said once; the list starts again.
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        with contextlib.suppress(OSError):
            self.path.rename(aside)
            log.get(action="prune").warning(
                "prune.pending_list_damaged",
                moved_to=str(aside),
                detail="files a killed prune meant to remove may be left; see the list by hand",
            )
        return []

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
