"""Off-site copies found damaged, and putting them right from the local copies.

`verify --offsite` notes the objects of a backup it found missing, of the wrong size or not
holding their content. Each note is a file of its own in `<state_dir>/offsite-damaged/` (verify
runs without the backup lock; a file per backup needs none). The next sync sends those objects
again from a local backup that holds their content: the damaged backup's own local copy, or any
other sent backup whose manifest names them (objects are shared between backups). Objects are
named by their content, so a good one is what is written over a bad one. A note is removed once
all of it is put right; what no local backup holds stays noted, and `status`, the metrics and
the log say so. A manifest that does not read is not written over (it may be one that another
key reads): verify says so, and deleting it makes the next sync send the backup again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influx_backupd.core import log
from influx_backupd.core.atomic import read_ours_text, replace_json
from influx_backupd.core.jsontext import loads_json, number
from influx_backupd.offsite.errors import BadManifest, Damaged, NotFound, NotOurs, OffsiteError
from influx_backupd.offsite.manifest import Manifest
from influx_backupd.offsite.repo import Backup, ManifestRef, Offsite, VerifyResult
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord

DAMAGED_DIR = "offsite-damaged"


@dataclass
class Damage:
    backup: str  # the backup id whose check found it
    job: str
    objects: dict[str, str]  # object name → what was wrong
    found_at: float


@dataclass
class RepairReport:
    repaired: list[str] = field(default_factory=list)  # backup ids whose note was cleared
    objects_sent: int = 0
    bytes_by_job: dict[str, int] = field(default_factory=dict)  # bytes sent again
    left: dict[str, str] = field(default_factory=dict)  # backup id → why not (yet)


@dataclass
class CheckReport:
    checked: int = 0  # backups
    damaged: list[str] = field(default_factory=list)  # backup ids with objects noted
    unreadable: dict[str, str] = field(default_factory=dict)  # backup id → why
    broken: dict[str, str] = field(default_factory=dict)  # backup id → why its chain fails
    complete: bool = False  # every backup checked (not stopped early)


def check(
    offsite: Offsite,
    state_dir: Path,
    *,
    read_percent: float = 0.0,
    stop: Callable[[], bool] = lambda: False,
) -> CheckReport:
    """Every backup in the bucket, as `verify --offsite --all`: what is wrong is noted."""
    report = CheckReport()
    logger = log.get()
    read: set[str] = set()  # objects shared by backups are downloaded once
    listed = offsite.objects_in_place()  # and the bucket listed once, not once per backup
    refs = {r.id: r for r in offsite.manifests()}
    done: dict[str, VerifyResult] = {}  # each backup checked once, its chain's links too
    try:
        for ref in refs.values():
            if stop():
                return report
            try:
                offsite.verify_chain(
                    ref, done, refs=refs, listed=listed, read_percent=read_percent, read=read
                )
            except (BadManifest, NotOurs) as exc:  # not ours to rewrite (see the top)
                report.unreadable[ref.id] = str(exc)
                logger.error("offsite.check_failed", run_id=ref.id, error=str(exc))
                continue
            except NotFound:
                if not gone(offsite, ref):  # listed, not there, yet still listed: an error
                    raise
                continue
            report.checked += 1
        report.complete = True
    finally:
        pruned = pruned_meanwhile(offsite, refs, done.values())
        # each backup checked (the links of its chain too), its note brought up to date; what
        # an earlier check found and this one did not read again stays noted
        for result in done.values():
            if result.id in pruned:
                continue
            left = note(state_dir, result.id, result.job, result.bad, result.reread)
            if left:
                report.damaged.append(result.id)
                logger.error(
                    "offsite.damaged",
                    run_id=result.id,
                    job=result.job,
                    objects=len(left),
                    errors=result.errors[:5] or ["noted by an earlier check, not read again"],
                )
            if result.chain is not None:
                report.broken[result.id] = result.chain
                logger.error(
                    "offsite.chain_broken", run_id=result.id, job=result.job, why=result.chain
                )
    return report


def pruned_meanwhile(
    offsite: Offsite, refs: Mapping[str, ManifestRef], results: Iterable[VerifyResult]
) -> set[str]:
    """The failing backups a prune removed from the bucket while they were checked (a sync
    beside the check: verify takes no backup lock): their objects went with them, which is no
    damage to note or fail on."""
    return {r.id for r in results if r.failed and r.id in refs and gone(offsite, refs[r.id])}


def gone(offsite: Offsite, ref: ManifestRef) -> bool:
    """ref's manifest, listed when the check began, is no longer in the bucket: neither its key
    nor a listing has it (pruned since). A bucket that cannot be asked: not gone (every failure
    stays as it is)."""
    logger = log.get()
    try:
        if offsite.bucket.exists(ref.key) or any(
            item.key == ref.key for item in offsite.bucket.ls("manifests")
        ):
            return False
    except OffsiteError as exc:
        logger.warning("offsite.pruned_unknown", run_id=ref.id, error=str(exc))
        return False
    logger.info("offsite.pruned_while_checked", run_id=ref.id, job=ref.job)
    return True


def _note_path(state_dir: Path, backup_id: str) -> Path:
    # ids come from the bucket's listing: the file name is a digest of one, never the id
    return state_dir / DAMAGED_DIR / (hashlib.sha256(backup_id.encode()).hexdigest()[:32] + ".json")


@contextlib.contextmanager
def _notes_held(notes: Path) -> Iterator[None]:
    """The notes' dir flocked while a note is read, decided on and written: verify (without
    the backup lock) and a sync's repair change notes at once, and a repair writing back what
    it read would drop what a check noted in between. A filesystem refusing flock: unheld."""
    fd = os.open(notes, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)  # brief: a read and a write of one small file
        yield
    finally:
        os.close(fd)  # drops the flock


def note(
    state_dir: Path,
    backup_id: str,
    job: str,
    objects: Mapping[str, str],
    reread: Iterable[str] = (),
) -> dict[str, str]:
    """What a check found wrong with one backup in the bucket, added to its note; returns what
    the note then holds. Only an object the check read back whole and found good (reread) is
    taken off it: a check that did not read an object (a listing of sizes, a sample) knows
    nothing of a changed byte in it, and must not erase the damage an earlier one found."""
    path = _note_path(state_dir, backup_id)
    if objects:
        path.parent.mkdir(mode=0o700, exist_ok=True)
    elif not path.parent.is_dir():
        return {}  # nothing found, nothing noted before
    with _notes_held(path.parent):
        was = _read_note(path)
        cleared = set(reread) - set(objects)
        left = {n: why for n, why in (was.objects if was else {}).items() if n not in cleared}
        left.update(objects)
        if not left:
            path.unlink(missing_ok=True)
            return left
        if was is not None and left == was.objects:
            return left  # nothing new: found_at stays (a repair under way matches on it)
        replace_json(
            path,
            {"backup": backup_id, "job": job, "objects": left, "found_at": time.time()},
            indent=1,
        )
        return left


def forget(state_dir: Path, names: Collection[str]) -> None:
    """Objects written again from a local copy's hashed content (a send that held them): off
    every note that names them."""
    if not names:
        return
    for damage in noted(state_dir):
        if any(n in names for n in damage.objects):
            _clear(state_dir, damage, {n: w for n, w in damage.objects.items() if n not in names})


def _read_note(path: Path) -> Damage | None:
    """One note as written, or None (none, or one that does not read: the check writes it
    again)."""
    try:
        raw = loads_json(read_ours_text(path))
        found_at = number(raw["found_at"])
        if found_at is None:  # NaN, 1e400, a string: no time `status` can print
            raise ValueError("found_at")
        return Damage(
            backup=str(raw["backup"]),
            job=str(raw.get("job") or ""),
            objects={str(k): str(v) for k, v in dict(raw.get("objects") or {}).items()},
            found_at=found_at,
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None


def noted(state_dir: Path) -> list[Damage]:
    """Every note, oldest first; one that does not read is passed over (the next check of its
    backup writes it again)."""
    try:
        paths = sorted((state_dir / DAMAGED_DIR).glob("*.json"))
    except OSError:
        return []
    found = [d for d in map(_read_note, paths) if d is not None]
    return sorted(found, key=lambda d: d.found_at)


def _clear(state_dir: Path, damage: Damage, left: dict[str, str]) -> None:
    """Write what is still wrong of a note, or remove it; a note a newer check wrote meanwhile
    is left as it is."""
    path = _note_path(state_dir, damage.backup)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError), _notes_held(path.parent):
        if float(loads_json(read_ours_text(path))["found_at"]) != damage.found_at:
            return
        if left:
            replace_json(path, {**damage.__dict__, "objects": left}, indent=1)
        else:
            path.unlink(missing_ok=True)


def repair(
    offsite: Offsite,
    catalog: Catalog,
    state_dir: Path,
    backup_of: Callable[[RunRecord], Backup],
    sent: Iterable[str],
    *,
    stop: Callable[[], bool] = lambda: False,
    damaged: Callable[[RunRecord, Damaged], None] = lambda _record, _exc: None,
) -> RepairReport:
    """Send again what the notes name, from the local backups (sent: the ids off-site).
    damaged: told of each local copy found not to be what its record says (passed over)."""
    report = RepairReport()
    notes = noted(state_dir)
    if not notes:
        return report
    logger = log.get()
    in_bucket = {r.id for r in offsite.manifests()}
    local = {r.id: r for r in catalog.list() if r.good and r.archive}
    holders = [local[i] for i in sent if i in local]
    for damage in notes:
        if stop():
            break
        if damage.backup not in in_bucket:
            # pruned off-site since (or never there): nothing left to put right
            _clear(state_dir, damage, {})
            continue
        needed = dict(damage.objects)
        own = local.get(damage.backup)
        problems = []  # local copies that could not be read
        stopped = False
        # the backup's own local copy first, then any other that names those objects
        for record in [own, *holders] if own is not None else holders:
            if not needed:
                break
            if stop():
                stopped = True
                break
            manifest = _manifest(offsite, record.id)
            if manifest is None or not any(
                n in needed for f in manifest.files for n in f.objects()
            ):
                continue
            # a local copy gone or damaged is passed over; the bucket's errors end the sync
            try:
                backup = backup_of(record)
            except OffsiteError as exc:
                if isinstance(exc, Damaged):
                    damaged(record, exc)
                problems.append(f"{record.id}: {exc}")
                continue
            try:
                result = offsite.send(
                    backup,
                    should_stop=stop,
                    resend=needed,
                    split={f.sha256: f.chunk_size if f.chunks else 0 for f in manifest.files},
                )
            except Damaged as exc:
                damaged(record, exc)
                problems.append(f"{record.id}: {exc}")
                continue
            report.objects_sent += result.objects_uploaded
            report.bytes_by_job[record.job] = (
                report.bytes_by_job.get(record.job, 0) + result.bytes_uploaded
            )
            needed = {n: why for n, why in needed.items() if n not in result.resent}
            if not result.complete:
                stopped = True
                break
        _clear(state_dir, damage, needed)
        if stopped:
            break
        if needed:
            why = f"{len(needed)} damaged objects are held by no local backup" + (
                f" that reads ({'; '.join(problems)})" if problems else ""
            )
            report.left[damage.backup] = why
            logger.error(
                "offsite.unrepairable",
                run_id=damage.backup,
                job=damage.job,
                objects=len(needed),
                why=why,
            )
        else:
            report.repaired.append(damage.backup)
            logger.info("offsite.repaired", run_id=damage.backup, job=damage.job)
    return report


def _manifest(offsite: Offsite, backup_id: str) -> Manifest | None:
    """The manifest of backup_id (from the local cache when it is there), if it reads."""
    try:
        return offsite.manifest(backup_id)
    except OffsiteError:
        return None


def summary(state_dir: Path) -> list[dict[str, Any]]:
    """For `status` and the metrics: per damaged backup, what is wrong (no network)."""
    return [
        {
            "backup": d.backup,
            "job": d.job,
            "objects": len(d.objects),
            "found_at": d.found_at,
        }
        for d in noted(state_dir)
    ]
