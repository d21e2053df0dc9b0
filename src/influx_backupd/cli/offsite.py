"""The off-site commands: `offsite sync`, `list --offsite`, `verify ID --offsite`,
`import --offsite`, and the fetch before `restore ID --from offsite`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Collection
from typing import Any

from influx_backupd.cli.output import fmt_bytes, fmt_time, print_json
from influx_backupd.cli.quote import quoted, say
from influx_backupd.core.config import Config, ConfigError
from influx_backupd.core.errors import EXIT_BUSY, EXIT_FAILED, EXIT_OK, UsageError
from influx_backupd.core.interrupt import Interrupted, interrupt_on_signals
from influx_backupd.offsite.bucket import where_of
from influx_backupd.offsite.errors import (
    BadManifest,
    IntegrityError,
    NoSuchBackup,
    NotFound,
    NotOurs,
    OffsiteError,
    OffsiteMisconfigured,
)
from influx_backupd.offsite.manifest import Manifest
from influx_backupd.offsite.repo import ManifestRef, VerifyResult, chain_gap, identity_wrong
from influx_backupd.run import offsite, offsite_repair
from influx_backupd.run.followup import MetricsNotWritten, write_metrics
from influx_backupd.run.guard import exclusive
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.state import OFFSITE, Busy, Yielded


def _configured(config: Config) -> None:
    """[offsite] is set; and a signal ends the command with one line, not silently (the
    request in flight is left: see run/offsite.watched)."""
    if not offsite.enabled(config):
        raise ConfigError(f"{config.path}: offsite: no [offsite] section (bucket, …) in the config")
    interrupt_on_signals()


def cmd_sync(config: Config, args: argparse.Namespace) -> int:
    """Send now what the bucket lacks, then off-site retention."""
    _configured(config)
    with exclusive(config, influxd=False, doing=OFFSITE) as catalog:
        try:
            report = offsite.watched(
                config, lambda: offsite.sync(config, catalog, adopt=args.adopt), yields=True
            )
        except OffsiteError as exc:
            offsite.tell_failed(config, catalog, str(exc))
            _metrics(config, catalog)
            raise
        except Interrupted as exc:
            _interrupted(config, catalog, exc)
            raise
        _metrics(config, catalog)
    if report.yielded:  # a command waiting for the lock went first: try again later (75)
        say("offsite: stopped for a command waiting for the backup lock; the next sync resumes")
    if args.json:
        print_json(report.to_dict())
        return _sync_status(report)
    for sent in report.sent:
        what = "already there" if sent.already else f"sent {fmt_bytes(sent.bytes_uploaded)}"
        print(f"{sent.id:<22} {what}, {fmt_bytes(sent.bytes_skipped)} skipped (in the bucket)")
    for line in report.skipped:
        say(f"offsite: not sent: {line}")
    if report.pruned is not None:
        p = report.pruned
        print(
            f"pruned {len(p.manifests_deleted)} backups, {p.objects_deleted} objects "
            f"({fmt_bytes(p.bytes_freed)}); {p.objects_in_grace} unreferenced objects in grace"
        )
    if report.checked or report.check_failed:
        print(f"checked {report.checked} backups in the bucket (check_every)")
    for backup_id, why in report.check_failed.items():
        say(f"offsite: check: {backup_id}: {why}")
    for backup_id in report.repaired:
        print(f"{backup_id:<22} repaired: its damaged objects sent again")
    for backup_id, why in report.unrepaired.items():
        say(f"offsite: not repaired: {backup_id}: {why}")
    if report.sweep_blocked is not None:
        say(f"offsite: {report.sweep_blocked}")
    print(
        f"uploaded {fmt_bytes(report.bytes_uploaded)}, skipped {fmt_bytes(report.bytes_skipped)}; "
        f"{len(report.pending)} backups not off-site"
    )
    return _sync_status(report)


def _sync_status(report: offsite.SyncReport) -> int:
    """1 when something was left undone: a backup not sent, damage not repaired, a manifest
    the check or retention could not read (the bucket is never swept while one does not);
    else 75 when the send yielded the lock to a command waiting for it."""
    failed = report.skipped or report.unrepaired or report.check_failed or report.sweep_blocked
    if failed:
        return EXIT_FAILED
    return EXIT_BUSY if report.yielded else EXIT_OK


def _interrupted(config: Config, catalog: Catalog, signal: Interrupted) -> None:
    """A sync given up for a signal: its thread is left (the command leaves with os._exit, see
    run/offsite.watched), so its own record of how it ended never comes. Written here: status
    and the metrics show the interruption rather than nothing, or a failure of before."""
    section = config.settings.offsite
    where = where_of(section) if section is not None else "off-site"
    line = f"{where}: interrupted by {signal}; the next sync resumes it"
    try:
        offsite.State.note_failure(config.state_dir, line, "other")
    except OSError as exc:
        say(f"{exc}")
    _metrics(config, catalog)


def _metrics(config: Config, catalog: Catalog) -> None:
    try:
        write_metrics(config, catalog)
    except (OSError, MetricsNotWritten) as exc:
        say(f"{exc}")


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    """The backups in the bucket (under this host's prefix), from their manifests."""
    _configured(config)
    store = offsite.open_offsite(config)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}

    catalog = Catalog(config.state_dir)
    sent = offsite.State.load(config.state_dir) if catalog.exists() else offsite.State()

    def read() -> tuple[list[ManifestRef], list[tuple[ManifestRef, Manifest]]]:
        refs = store.manifests(job=args.job)
        # a listing that misses a manifest this host sent, and a HEAD finds: not the bucket's
        # word (the check sync makes before it decides anything on a listing)
        offsite.listing_checked(store, sent, catalog, {(r.job, r.id) for r in refs}, job=args.job)
        return refs, list(store.readable(refs, skipped))

    refs, found = offsite.watched(config, read)
    _identity_right(found, skipped, store.bucket.where)
    gaps = _chain_gaps(refs, found, skipped)
    # in the order they were made, as `list` does: ids sort by second, then a random suffix
    for _, manifest in sorted(found, key=lambda pair: (pair[1].started_at, pair[1].id)):
        rows.append(
            {
                "id": manifest.id,
                "job": manifest.job,
                "kind": manifest.kind,
                "parent": manifest.parent,
                "layout": manifest.layout,
                "name": manifest.name,
                "sha256": manifest.sha256,
                "bytes": manifest.size,
                "files": sum(1 for f in manifest.files if f.type == "file"),
                "started_at": manifest.started_at,
                "sent_at": manifest.sent_at,
                "encrypted": manifest.encrypted,
                "restorable": manifest.id not in gaps,
                "problem": gaps.get(manifest.id),
            }
        )
    status = _told_skipped(skipped)
    for backup_id, why in gaps.items():
        say(f"offsite: {backup_id}: {why}")
    if gaps:
        status = EXIT_FAILED
    if args.json:
        print_json(rows)
        return status
    if not rows:
        print(f"no backups in {store.bucket.where}")
        return status
    print(f"{'ID':<22} {'JOB':<10} {'KIND':<11} {'STARTED':<21} {'SIZE':>10}  NAME")
    for r in rows:
        print(
            f"{r['id']:<22} {r['job']:<10} {r['kind']:<11} {fmt_time(r['started_at']):<21} "
            f"{fmt_bytes(r['bytes']):>10}  {r['name']}"
        )
    return status


def _chain_gaps(
    refs: list[ManifestRef],
    found: list[tuple[ManifestRef, Manifest]],
    skipped: dict[str, str],
    *,
    whole: Collection[str] = (),
) -> dict[str, str]:
    """The backups of found an earlier link of whose chain is not in the bucket (or does not
    read): backup id → why (they restore nothing from there). whole: backups taken as there
    with their chains when listed (not read again)."""
    parents: dict[str, str | None] = {r.id: None for r in refs if r.id in whole}
    parents.update({m.id: m.parent for _, m in found})
    unreadable = {r.id for r in refs if r.key in skipped}
    gaps = {m.id: chain_gap(m.id, parents, unreadable) for _, m in found}
    return {i: why for i, why in gaps.items() if why is not None}


def _identity_right(found: list[Any], skipped: dict[str, str], where: str) -> None:
    """None of the manifests read, some for want of a key: the identity is wrong or missing,
    said once."""
    wrong = identity_wrong(len(found), skipped, where)
    if wrong is not None:
        raise wrong


def _told_skipped(skipped: dict[str, str]) -> int:
    """Exit 1 when a manifest was passed over (the rest were listed or imported), so that a
    script notices; and why, in one line on stderr: offsite.manifest_skipped is a warning, which
    -q (and --log-level error) hides, and an exit 1 must never go unexplained."""
    if not skipped:
        return EXIT_OK
    key = sorted(skipped)[0]
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    say(
        f"offsite: passed over {len(skipped)} manifest(s) that do not read: {key}: {skipped[key]}{more}"
    )
    return EXIT_FAILED


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    """Every object of a backup (or of --all) in the bucket; --read-data PERCENT of them
    downloaded and hashed. What is found wrong is noted, and the next sync sends it again
    from a local copy (run/offsite_repair)."""
    _configured(config)
    if args.backup is not None and args.all:
        raise UsageError(
            f"verify --offsite: BACKUP {quoted(args.backup)} and --all do not go together: "
            "name one backup, or pass --all for every one"
        )
    if args.backup is None and not args.all:
        raise UsageError("verify --offsite: name one BACKUP id (see list --offsite) or pass --all")
    if args.job is not None and not args.all:
        raise UsageError("verify --offsite: --job goes with --all (a BACKUP names its job already)")
    if args.deep or args.restore_test:
        raise UsageError(
            "verify --offsite: --deep and --restore-test check a local copy; fetch it with "
            "`restore BACKUP --from offsite --target DIR`, or verify the local backup"
        )
    store = offsite.open_offsite(config)
    percent = args.read_data or 0.0
    started = time.monotonic()

    # each earlier link of an increment's chain is checked with it (an increment restores only
    # as well as they do), each backup once; what is found wrong with any is noted
    done: dict[str, VerifyResult] = {}
    refs: dict[str, ManifestRef] = {}
    pruned: set[str] = set()  # removed from the bucket by a prune while checked

    def check() -> tuple[list[VerifyResult], dict[str, str]]:
        read: set[str] = set()  # objects shared by backups are downloaded once
        listed = store.objects_in_place()  # and the bucket listed once, not once per backup
        refs.update((r.id, r) for r in store.manifests())
        if args.backup is not None:
            ref = refs.get(args.backup) or store.find(args.backup)
            return [
                store.verify_chain(
                    ref, done, refs=refs, listed=listed, read_percent=percent, read=read
                )
            ], {}
        results, unreadable = [], {}
        for ref in [r for r in refs.values() if args.job in (None, r.job)]:
            try:
                results.append(
                    store.verify_chain(
                        ref, done, refs=refs, listed=listed, read_percent=percent, read=read
                    )
                )
            except (BadManifest, IntegrityError, NotOurs) as exc:  # one we cannot read
                unreadable[ref.id] = str(exc)
            except NotFound:  # its manifest, listed, is gone: pruned by a sync meanwhile?
                if not offsite_repair.gone(store, ref):
                    raise
                pruned.add(ref.id)
        return results, unreadable

    try:
        results, unreadable = offsite.watched(config, check)
    except NoSuchBackup as exc:  # BACKUP names nothing: a usage error, as for local backups
        raise UsageError(str(exc)) from None
    missing = identity_wrong(len(results), unreadable, store.bucket.where)
    if isinstance(missing, OffsiteMisconfigured):  # all encrypted, no identity_file: 78
        raise missing
    # removed by a sync's prune while checked: gone, not damaged (a named one fails: it is gone)
    gone = pruned | offsite_repair.pruned_meanwhile(store, refs, done.values())
    if args.all:
        results = [r for r in results if r.id not in gone]
    for result in results:
        if result.id in gone:
            result.errors = ["it was removed from the bucket (pruned) while it was checked"]
    repairable = 0
    for result in done.values():
        if result.id in gone:
            continue
        left = offsite_repair.note(
            config.state_dir, result.id, result.job, result.bad, result.reread
        )
        repairable += len(left)
        if len(left) > len(result.bad):
            # found by an earlier check and not read back now: still damaged, as far as anyone
            # knows (a listing of sizes, or a sample, cannot tell a changed byte)
            result.errors.append(
                f"{len(left) - len(result.bad)} objects noted damaged by an earlier check were "
                "not read back now (--read-data 100 reads them; the next sync repairs them)"
            )
    catalog = Catalog(config.state_dir)
    if catalog.exists():  # what is noted damaged (or found whole again) is in the metrics now
        _metrics(config, catalog)
    failed = unreadable or any(r.failed for r in results)
    if args.json:
        print_json(
            {
                "backups": [{**_shown(r), "ok": not r.failed} for r in results],
                "unreadable": unreadable,
                "pruned_while_checked": sorted(gone),
                "ok": not failed,
                "took_s": time.monotonic() - started,
            }
            if args.all
            else {
                **_shown(results[0]),
                "ok": not failed,
                "took_s": time.monotonic() - started,
            }
        )
        return EXIT_FAILED if failed else EXIT_OK
    for result in results:
        status = "ok" if not result.failed else "failed"
        print(
            f"{status:<8} {result.id}  {result.objects} objects in the bucket, {result.checked} "
            f"downloaded and hashed ({fmt_bytes(result.bytes_read)})"
        )
        for error in result.errors:
            print(f"  error  {error}")
        if result.chain is not None:
            print(f"  error  chain: {result.chain}")
    for backup_id, why in unreadable.items():
        print(f"{'failed':<8} {backup_id}  its manifest does not read: {why}")
    if args.all:
        for backup_id in sorted(gone):
            print(f"{'pruned':<8} {backup_id}  removed from the bucket by a prune while checked")
    if args.all and not results and not unreadable:
        print(f"no backups in {store.bucket.where}")
    if repairable:
        print(
            f"{repairable} damaged or missing objects noted: the next `offsite sync` (or the "
            "daemon's) sends them again from a local backup that holds them"
        )
    return EXIT_FAILED if failed else EXIT_OK


def _shown(result: VerifyResult) -> dict[str, Any]:
    """A check's result for --json (without the list of every object read back)."""
    return {k: v for k, v in result.__dict__.items() if k != "reread"}


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    """The catalog of a fresh host from the manifests in the bucket; archives stay there until
    `restore ID --from offsite` fetches them."""
    _configured(config)
    store = offsite.open_offsite(config)
    with exclusive(config, influxd=False, doing="import") as catalog:
        known = {r.id for r in catalog.list()}
        new = []
        skipped: dict[str, str] = {}

        def read() -> tuple[list[ManifestRef], list[tuple[ManifestRef, Manifest]]]:
            refs = store.manifests()
            return refs, list(store.readable([r for r in refs if r.id not in known], skipped))

        refs, found = offsite.watched(config, read)
        _identity_right(found, skipped, store.bucket.where)
        # an increment whose earlier links are not in the bucket restores nothing: not made an
        # ok backup of this host (a link in the bucket and known here already, not read
        # again, was imported or sent whole)
        orphans = _chain_gaps(refs, found, skipped, whole=known)
        for backup_id, why in orphans.items():
            say(f"offsite: not imported: {backup_id}: {why}")
        for _, manifest in found:
            if manifest.id in orphans:
                continue
            record = offsite.record_of(manifest, config.storage_dir)
            record.extra = {**record.extra, "offsite_only": True}
            new.append(record)
            if not args.dry_run:
                catalog.save(record)
        if new and not args.dry_run:
            state = offsite.State.load(config.state_dir)
            state.sent.update({r.id: time.time() for r in new})
            state.save(config.state_dir)
    told = _told_skipped(skipped)  # said whether or not orphans make it 1 anyway
    status = EXIT_FAILED if orphans else told
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "imported": [r.id for r in new],
                "skipped": skipped,
                "not_imported": orphans,
            }
        )
        return status
    verb = "would import" if args.dry_run else "imported"
    print(f"{verb} {len(new)} backups from {store.bucket.where}")
    for record in new:
        print(f"  {record.id}  job={record.job}  mode={record.mode}  kind={record.kind}")
    if new and not args.dry_run:
        print("restore one with: influx-backupd restore ID --from offsite")
    return status


def fetch_for_restore(config: Config, backup_id: str) -> None:
    """Before `restore ID --from offsite`: the backup (and its chain) into the storage dir."""
    _configured(config)
    with exclusive(config, influxd=False, doing="fetch") as catalog:
        try:
            fetched = offsite.watched(
                config, lambda: offsite.fetch_chain(config, catalog, backup_id)
            )
        except NoSuchBackup as exc:  # BACKUP names nothing in the bucket: a usage error
            raise UsageError(str(exc)) from None
        for record, now in fetched:
            said = (
                f"fetched {record.id} into {record.archive}"
                if now
                else f"{record.id} is here already, as the bucket has it: {record.archive}"
            )
            print(said, file=sys.stderr)


def after_backup(config: Config) -> None:
    """`backup` with [offsite]: the new backup off-site now (cron users have no daemon to do
    it). A failure is one line here, the hooks and the metrics; the backup stays ok. The send
    holds the lock only as an off-site send: it yields to a command that waits for the lock
    (the next cron backup), and the next sync resumes it."""
    try:
        with exclusive(config, influxd=False, doing=OFFSITE) as catalog:
            try:
                report = offsite.watched(
                    config, lambda: offsite.run_sync(config, catalog), yields=True
                )
            except OffsiteError as exc:  # a stalled request (run_sync tells every other failure)
                offsite.tell_failed(config, catalog, str(exc))
                report = None
            except Interrupted as exc:
                _interrupted(config, catalog, exc)
                raise
            _metrics(config, catalog)
    except Yielded as exc:  # given up for a command waiting for the lock: no failure
        say(f"offsite: {exc} (the local backup is kept)")
        return
    except Busy as exc:  # the lock is another's (the daemon's send, a backup waiting for it)
        say(f"offsite: not sent now: {exc}; the next sync sends it (the local backup is kept)")
        return
    if report is None:
        state = offsite.State.load(config.state_dir)
        say(f"offsite: {state.last_error} (the local backup is kept)")
    elif report.yielded:
        say(
            "offsite: stopped for a command waiting for the backup lock; the next sync resumes "
            "(the local backup is kept)"
        )
