"""Off-site copies as a step after the local runs: send what the bucket lacks, prune it, report.

Runs under the backup lock (local prune must not delete an archive while it is read, and no
cold run's stop window may share the disk with it), but yields: `stop()` is asked between
objects, and the daemon asks it to stop when a backup falls due; the next sync resumes.
A failure is logged (`offsite.failed`, one line), counted in the state file, and runs the
on_failure hooks of the jobs whose backups it left behind; local backups are never touched.

What is off-site is the bucket's business; `<state_dir>/offsite.json` keeps what `status` and
the metrics show without asking the bucket: per job the last success, the bytes sent and
skipped, and the backups sent.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from influx_backupd.core import log
from influx_backupd.core.atomic import read_ours_text, replace_file, replace_json
from influx_backupd.core.config import Config
from influx_backupd.core.jsontext import count, loads_json, number, tell_ignored
from influx_backupd.keep.retention import RetentionPolicy, plan
from influx_backupd.offsite.bucket import ACTIVITY, where_of
from influx_backupd.offsite.errors import (
    REASONS,
    Damaged,
    NoSuchBackup,
    OffsiteError,
    Reason,
    Stalled,
    reason_of,
)
from influx_backupd.offsite.files import Known, scan_dir, scan_tar
from influx_backupd.offsite.manifest import Manifest, manifest_name
from influx_backupd.offsite.repo import (
    Backup,
    Offsite,
    PruneResult,
    SendResult,
    drop_partial_fetches,
)
from influx_backupd.report.hooks import PREFIX, environment, run_hook
from influx_backupd.report.metrics import OffsiteFigures
from influx_backupd.run import offsite_repair
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import chain_loop
from influx_backupd.store.record import FUTURE_SLACK_S, RunRecord, only_in_bucket
from influx_backupd.store.sidecar import sidecar_of, write_sidecar
from influx_backupd.store.state import Yielded, lock_wanted
from influx_backupd.verify.result import VerifyResult

STATE_FILE = "offsite.json"
# an archive whose sha256 was proved less than this ago (the run that wrote it hashed what it
# wrote; a verify re-read it) is sent without hashing it whole again (each member still is)
RECHECK_AFTER = 24 * 3600.0
KEY_FILE = "offsite-name.key"
# this host's writer id (random, made by its first sync): the prefix's marker names the one
# writer of a prefix, and each manifest the writer that sent it (Offsite.claim)
WRITER_FILE = "offsite-writer.id"
CACHE_DIR = "offsite-manifests"  # manifests as read from the bucket, for list, import, prune
# where systemd (and, before it, D-Bus) keeps the id of this installation of the OS
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


T = TypeVar("T")
_LEFT: list[threading.Event] = []  # watched() work given up (its done flag, not set yet)


def watched(config: Config, work: Callable[[], T], *, yields: bool = False) -> T:
    """work() (requests to the bucket) in a thread of its own, given up with Stalled when a
    request has made no progress for [offsite] stall_after. Given up (a stall, or a signal in the
    caller's thread), the thread is left on its request and the command leaves with os._exit as
    it ends (left_behind()), before that thread can do more. For one-shot commands: the daemon
    has its own way (daemon/loop._sync_yielding). yields: work is a sync, which stops between
    objects for a command waiting for the lock (sync); one that has not stopped within
    [offsite] yield_within (a part, a hash, a request that takes longer) is given up with
    Yielded, and the next sync resumes it."""
    section = config.settings.offsite
    limit = section.stall_after if section is not None else 300.0
    outcome: list[tuple[bool, Any]] = []
    # its own flag, not Thread.is_alive(): a signal handler raising inside join() leaves the
    # thread marked stopped while it runs on (CPython's bpo-45274 handling)
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="offsite", daemon=True).start()
    try:
        _wait(done, config, limit, yields)
    except BaseException:
        # a signal (Interrupted, KeyboardInterrupt) or a stall: the work is not waited for;
        # the command ends now, and leaves with os._exit (left_behind)
        if not done.is_set():
            _LEFT.append(done)
            drop_partial_fetches()
        raise
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def _wait(done: threading.Event, config: Config, limit: float, yields: bool) -> None:
    section = config.settings.offsite
    within = section.yield_within if section is not None else 60.0
    asked: float | None = None  # since when a command waits for the lock
    while not done.wait(0.25):
        waiting = lock_wanted(config.state_dir) if yields else None
        asked = None if waiting is None else asked or time.monotonic()
        if waiting is not None and asked is not None and time.monotonic() - asked >= within:
            raise Yielded(
                f"{waiting} waits for the backup lock, and the upload did not stop between "
                f"objects within yield_within ({within:.0f}s): given up, the next sync resumes it"
            )
        stalled = stalled_for()
        if stalled >= limit:
            where = where_of(section) if section is not None else "the bucket"
            line = (
                f"{where}: a request has made no progress for {stalled:.0f}s (stall_after "
                f"{limit:.0f}s): the endpoint stalls; given up"
            )
            with contextlib.suppress(OSError):  # sync()'s own record of it waits in its thread
                State.note_failure(config.state_dir, line, "unreachable")
            raise Stalled(line)


def stalled_for() -> float:
    """How long the stillest request to the endpoint has moved nothing (0: none in flight)."""
    return ACTIVITY.stalled_for()


def left_behind() -> bool:
    """A watched() thread still waits on its request: Python would join the upload's pool
    threads at exit (waiting as long as that request does), so the process must leave with
    os._exit once everything of its own is written."""
    return any(not done.is_set() for done in _LEFT)


def enabled(config: Config) -> bool:
    return config.settings.offsite is not None


def open_offsite(config: Config, **kwargs: Any) -> Offsite:
    section = config.settings.offsite
    if section is None:
        raise OffsiteError(f"{config.path}: no [offsite] section: off-site copies are off")
    return Offsite(
        section,
        key_file=config.state_dir / KEY_FILE,
        cache_dir=config.state_dir / CACHE_DIR,
        **kwargs,
    )


def writer_id(state_dir: Path) -> str:
    """This host's writer id, made (0600) the first time; one that does not read is an error
    (made anew, this host would be refused its own prefix)."""
    path = state_dir / WRITER_FILE
    try:
        text = read_ours_text(path).strip()
    except FileNotFoundError:
        text = secrets.token_hex(16)
        replace_file(path, text.encode() + b"\n")
    except (OSError, ValueError) as exc:
        raise OffsiteError(f"{path}: cannot be read: {exc}") from None
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise OffsiteError(
            f"{path}: not a writer id (32 hex digits); move it away, then take this host's "
            "prefix back with: influx-backupd offsite sync --adopt"
        )
    return text


def machine_fingerprint(files: Iterable[Path] = MACHINE_ID_FILES) -> str:
    """This machine, as the prefix's marker names it (Offsite.claim): an id derived from
    /etc/machine-id and never the id itself, which systemd asks applications not to show
    (HMAC-SHA256 keyed by it, as sd_id128_get_machine_app_specific does). "" when the machine
    has none: then no machine is checked. A clone that kept the machine id is not told apart."""
    for path in files:
        try:
            text = read_ours_text(path).strip()
        except (OSError, ValueError):
            continue
        if re.fullmatch(r"[0-9a-f]{32}", text):
            return hmac.new(
                bytes.fromhex(text), b"influx-backupd offsite writer", "sha256"
            ).hexdigest()[:32]
    return ""


# -- what the host knows (offsite.json) ---------------------------------------------------------


@dataclass
class JobFigures:
    last_success: float | None = None
    uploaded_bytes: int = 0
    skipped_bytes: int = 0


@dataclass
class State:
    jobs: dict[str, JobFigures] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)  # backup id → when it was complete
    last_error: str | None = None
    last_error_at: float | None = None
    # what last_error is, as the metrics name it (offsite.errors.REASONS); None in a file
    # written before it was kept: "other"
    last_error_reason: Reason | None = None
    last_check: float | None = None  # every backup in the bucket checked (check_every)
    # backup id → when off-site retention deleted its manifest: not sent again (local
    # retention may keep it longer, and each sync would send it for the next prune to delete)
    retired: dict[str, float] = field(default_factory=dict)
    # backup id → why the last sync's repair could not send its damaged objects again (no
    # local backup holds them): what `status` says of its damage instead of "the next sync"
    unrepaired: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, state_dir: Path) -> State:
        """What offsite.json says; a field of the wrong type or range (a damaged or hand-edited
        file) is dropped as absent, said once: it feeds the metrics the daemon writes every
        30 s and `status`, which must not raise on it. The next sync rewrites the file."""
        path = state_dir / STATE_FILE
        try:
            raw = loads_json(read_ours_text(path))
        except FileNotFoundError:
            return cls()  # none yet: the next sync learns it from the bucket
        except (OSError, ValueError):
            tell_ignored(path, ["(the whole file: not JSON)"])
            return cls()
        bad: list[str] = []
        if not isinstance(raw, dict):
            tell_ignored(path, ["(the whole file: not an object)"])
            return cls()

        def table(key: str) -> dict[str, Any]:
            value = raw.get(key, {})
            if isinstance(value, dict):
                return value
            bad.append(key)
            return {}

        def stamps(key: str) -> dict[str, float]:
            out = {}
            for name, value in table(key).items():
                when = number(value)
                if when is None:
                    bad.append(f"{key}.{name}")
                else:
                    out[name] = when
            return out

        def stamp(key: str) -> float | None:
            value = raw.get(key)
            when = number(value)
            if value is not None and when is None:
                bad.append(key)
            return when

        jobs = {}
        for name, figures in table("jobs").items():
            if not isinstance(figures, dict):
                bad.append(f"jobs.{name}")
                continue
            job = JobFigures()
            for key, value in figures.items():
                if key == "last_success" and value is None:
                    continue
                checked = number(value) if key == "last_success" else count(value)
                if checked is None or key not in (
                    "last_success",
                    "uploaded_bytes",
                    "skipped_bytes",
                ):
                    bad.append(f"jobs.{name}.{key}")
                else:
                    setattr(job, key, checked)
            jobs[name] = job
        error = raw.get("last_error")
        if error is not None and not isinstance(error, str):
            bad.append("last_error")
            error = None
        unrepaired = {}
        for name, why in table("unrepaired").items():
            if isinstance(why, str):
                unrepaired[name] = why
            else:
                bad.append(f"unrepaired.{name}")
        reason = raw.get("last_error_reason")
        if reason is not None and reason not in REASONS:
            bad.append("last_error_reason")
            reason = None
        state = cls(
            jobs=jobs,
            sent=stamps("sent"),
            last_error=error,
            last_error_at=stamp("last_error_at"),
            last_error_reason=reason if error is not None else None,
            last_check=stamp("last_check"),
            retired=stamps("retired"),
            unrepaired=unrepaired,
        )
        tell_ignored(path, bad)
        return state

    def save(self, state_dir: Path) -> None:
        data = {
            "jobs": {k: v.__dict__ for k, v in self.jobs.items()},
            "sent": self.sent,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_error_reason": self.last_error_reason,
            "last_check": self.last_check,
            "retired": self.retired,
            "unrepaired": self.unrepaired,
        }
        _write_private(state_dir / STATE_FILE, data)

    def job(self, name: str) -> JobFigures:
        return self.jobs.setdefault(name, JobFigures())

    def failed(self, line: str, reason: Reason) -> State:
        """The last failure, as status and the metrics show it."""
        self.last_error, self.last_error_at = line, time.time()
        self.last_error_reason = reason
        return self

    @classmethod
    def note_failure(cls, state_dir: Path, line: str, reason: Reason) -> None:
        """A failure said by another thread than the sync's (a stall, a signal): the sync's own
        record of how it ended may never come. Raises OSError."""
        cls.load(state_dir).failed(line, reason).save(state_dir)

    def cleared(self) -> None:
        """A sync that completed: no failure stands."""
        self.last_error = self.last_error_at = self.last_error_reason = None

    @property
    def failing(self) -> Reason | None:
        """What the last failure is (None: the last sync completed)."""
        if self.last_error is None:
            return None
        return self.last_error_reason or "other"


def _write_private(final: Path, data: object) -> None:
    replace_json(final, data, indent=1)


def _known_file(state_dir: Path, job: str) -> Path:
    return state_dir / f"offsite-known-{job}.json"


def load_known(state_dir: Path, job: str) -> Known:
    """(path, size, mtime) → sha256 of the files of the job's last backup this host sent: what
    it held is not hashed again. Kept on the host, never read from the bucket (whoever can write
    there could make a lie spread into every later backup; an encrypting host cannot read its
    manifests back). None yet, or unreadable: everything is hashed once."""
    try:
        rows = loads_json(read_ours_text(_known_file(state_dir, job)))
        return {(str(p), int(n), float(t)): str(sha) for p, n, t, sha in rows}
    except (OSError, ValueError, TypeError):
        return {}


def save_known(state_dir: Path, job: str, backup: Backup) -> Known:
    known = {(e.path, e.size, e.mtime): e.sha256 for e in backup.source.files()}
    with contextlib.suppress(OSError):  # a shortcut: without it the next send hashes all
        _write_private(_known_file(state_dir, job), [[*k, v] for k, v in known.items()])
    return known


def wanted(config: Config, catalog: Catalog, state: State | None = None) -> list[RunRecord]:
    """The local backups that belong off-site: good, taken by a job that had not opted out then
    and has not since (its record keeps the choice: a job with `offsite = false` renamed or
    removed from the config still keeps its backups here), not imported from the bucket (only
    there), not retired by off-site retention; oldest first (a chain's parent before its
    increments)."""
    opted_out = {j.name for j in config.settings.job if not j.offsite}
    retired = (state or State.load(config.state_dir)).retired
    return sorted(
        (
            r
            for r in catalog.list()
            if r.good
            and r.archive
            and r.job not in opted_out
            and r.extra.get("offsite") is not False
            and not only_in_bucket(r)
            and r.id not in retired
        ),
        key=lambda r: (r.started_at, r.id),
    )


def not_offsite(config: Config, catalog: Catalog, state: State | None = None) -> list[RunRecord]:
    """What the last sync had not sent (from offsite.json: no request to the bucket)."""
    state = state or State.load(config.state_dir)
    return [r for r in wanted(config, catalog, state) if r.id not in state.sent]


def blocked(config: Config, catalog: Catalog, state: State | None = None) -> dict[str, str]:
    """The increments not off-site that no sync will send (backup id → why): an earlier link
    of their chain is not off-site and will not be (its check failed, it is gone, off-site
    retention pruned it). Sent alone, one would restore nothing from the bucket. From the
    catalog and offsite.json: no request to the bucket."""
    state = state or State.load(config.state_dir)
    by_id = {r.id: r for r in catalog.list()}
    found: dict[str, str] = {}
    for record in not_offsite(config, catalog, state):
        at, seen = record, {record.id}
        while at.parent_id is not None and at.parent_id not in state.sent:
            link = "its chain parent" if at is record else "the earlier link"
            parent = by_id.get(at.parent_id)
            why = (
                f"{link} {at.parent_id} is neither here nor off-site"
                if parent is None
                else chain_loop(record.id, parent.id)
                if parent.id in seen
                else _not_sendable(parent, state, link)
            )
            if why is not None:
                found[record.id] = f"{why}: not off-site, so it is not sent either"
                break
            assert parent is not None
            seen.add(parent.id)
            at = parent
    return found


def _not_sendable(link: RunRecord, state: State, name: str) -> str | None:
    """Why no sync will send this link of a chain (named `name` in the line), if none will."""
    if link.id in state.retired:
        return f"{name} {link.id} was pruned off-site"
    if link.failed_check:
        return f"{name} {link.id} failed its check ({link.verify_detail})"
    if not link.ok:
        return f"{name} {link.id} is {link.status}"
    return None


def unsent_holds(config: Config, catalog: Catalog) -> dict[str, str]:
    """What local retention must keep for the off-site copy ([offsite] hold_unsent): what is
    not sent yet, and what a repair of a damaged off-site copy needs."""
    section = config.settings.offsite
    if section is None or not section.hold_unsent:
        return {}
    # not what no sync will send (its chain is broken): local retention judges it as it does
    # its chain, or a dead chain would be held for ever
    never = blocked(config, catalog)
    holds = {r.id: "not off-site yet" for r in not_offsite(config, catalog) if r.id not in never}
    # the local copy a repair of its damaged off-site copy is sent from
    for note in offsite_repair.noted(config.state_dir):
        holds.setdefault(note.backup, "its off-site copy is damaged: kept to repair it")
    return holds


def status(config: Config, catalog: Catalog) -> dict[str, Any] | None:
    """For `status`: what is not off-site yet, the last success and error (no network)."""
    section = config.settings.offsite
    if section is None:
        return None
    state = State.load(config.state_dir)
    successes = [f.last_success for f in state.jobs.values() if f.last_success is not None]
    return {
        "where": f"s3://{section.bucket}/{section.prefix}",
        "not_offsite": [r.id for r in not_offsite(config, catalog, state)],
        "not_sent": blocked(config, catalog, state),  # of those, what no sync sends: why
        "last_success": max(successes) if successes else None,
        "last_error": state.last_error,
        "last_error_at": state.last_error_at,
        "last_error_reason": state.failing,
        "damaged": [
            {**damage, "repair": _repair_outlook(damage["backup"], catalog, state)}
            for damage in offsite_repair.summary(config.state_dir)
        ],
    }


def _repair_outlook(backup_id: str, catalog: Catalog, state: State) -> dict[str, Any]:
    """What the next sync can do for a backup's damaged objects, as far as this host knows
    without asking the bucket: "local_copy", sent again from its own local copy; "not_repairable",
    the last sync's repair found no local backup holding them (why); "unknown", its own copy
    is not here, and only another local backup whose manifest names them could repair it."""
    if backup_id in state.unrepaired:
        return {"can": "not_repairable", "why": state.unrepaired[backup_id]}
    record = catalog.get(backup_id)
    if _has_local_copy(record) and record is not None and record.good and record.archive:
        return {"can": "local_copy", "why": None}
    return {"can": "unknown", "why": "its own local copy is not here"}


def for_metrics(
    config: Config, catalog: Catalog | None
) -> tuple[dict[str, OffsiteFigures] | None, frozenset[Reason]]:
    """figures() (None without a catalog) and failing(), from one load of offsite.json and of
    the damage notes (the metrics are written every 30 s by the daemon)."""
    if config.settings.offsite is None:
        return None, frozenset()
    state = State.load(config.state_dir)
    notes = offsite_repair.noted(config.state_dir)
    shown = None if catalog is None else figures(config, catalog, state, notes)
    return shown, failing(config, state, notes)


def failing(
    config: Config, state: State | None = None, notes: list[offsite_repair.Damage] | None = None
) -> frozenset[Reason]:
    """What the off-site copy fails on now, for the metrics (no request to the bucket): the
    last failure offsite.json records (a sync, or a stall that gave one up), and "damaged" while
    objects a check or `verify --offsite` found damaged in the bucket are not sent again (what
    status lists as DAMAGED). None after a sync that completed with nothing left damaged.
    state, notes: as loaded already (else read here)."""
    if config.settings.offsite is None:
        return frozenset()
    reasons: set[Reason] = set()
    last = (state or State.load(config.state_dir)).failing
    if last is not None:
        reasons.add(last)
    if notes is None:
        notes = offsite_repair.noted(config.state_dir)
    if any(note.objects for note in notes):
        reasons.add("damaged")
    return frozenset(reasons)


def figures(
    config: Config,
    catalog: Catalog,
    state: State | None = None,
    notes: list[offsite_repair.Damage] | None = None,
) -> dict[str, OffsiteFigures] | None:
    """Per job, for the metrics. state, notes: as loaded already (else read here)."""
    if config.settings.offsite is None:
        return None
    state = state or State.load(config.state_dir)
    if notes is None:
        notes = offsite_repair.noted(config.state_dir)
    pending: dict[str, int] = {}
    for record in not_offsite(config, catalog, state):
        pending[record.job] = pending.get(record.job, 0) + 1
    damaged: dict[str, int] = {}
    for note in notes:
        damaged[note.job] = damaged.get(note.job, 0) + len(note.objects)
    jobs = {j.name for j in config.settings.job if j.offsite}
    return {
        job: OffsiteFigures(
            last_success=state.job(job).last_success,
            uploaded_bytes=state.job(job).uploaded_bytes,
            skipped_bytes=state.job(job).skipped_bytes,
            pending=pending.get(job, 0),
            damaged=damaged.get(job, 0),
        )
        for job in sorted(jobs | set(pending) | set(damaged))
    }


# -- one sync -----------------------------------------------------------------------------------


@dataclass
class SyncReport:
    sent: list[SendResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "id: why" for backups left locally
    pruned: PruneResult | None = None
    yielded: bool = False  # stopped early for a backup that fell due
    pending: list[str] = field(default_factory=list)  # not off-site after this sync
    checked: int = 0  # backups in the bucket checked (check_every)
    check_failed: dict[str, str] = field(default_factory=dict)  # manifests that do not read
    repaired: list[str] = field(default_factory=list)  # backups whose damaged objects were sent
    repaired_bytes: int = 0  # sent again by the repair
    unrepaired: dict[str, str] = field(default_factory=dict)  # backup id → why not yet
    # why off-site retention deleted no object (manifests it cannot read): the bucket grows
    sweep_blocked: str | None = None

    @property
    def bytes_uploaded(self) -> int:
        return sum(s.bytes_uploaded for s in self.sent) + self.repaired_bytes

    @property
    def bytes_skipped(self) -> int:
        return sum(s.bytes_skipped for s in self.sent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": [s.__dict__ for s in self.sent],
            "skipped": self.skipped,
            "pruned": None if self.pruned is None else self.pruned.__dict__,
            "yielded": self.yielded,
            "pending": self.pending,
            "checked": self.checked,
            "check_failed": self.check_failed,
            "repaired": self.repaired,
            "unrepaired": self.unrepaired,
            "sweep_blocked": self.sweep_blocked,
            "bytes_uploaded": self.bytes_uploaded,
            "bytes_skipped": self.bytes_skipped,
        }


def _check_due(config: Config, state: State) -> bool:
    """check_every has passed since the last whole check, and the manifests can be read."""
    section = config.settings.offsite
    if section is None or section.check_every <= 0:
        return False
    if section.encrypted and section.identity_file is None:
        return False  # the host holds only the recipients: `verify --offsite` where the key is
    now = time.time()
    if state.last_check is None or state.last_check > now + FUTURE_SLACK_S:
        return True  # never, or stamped while the clock was ahead: not a year without checks
    return now - state.last_check >= section.check_every


def backup_of(
    record: RunRecord, known: Known | None = None, *, recheck: bool | None = None
) -> Backup:
    """A catalog record as the off-site engine's plain input; its files checked on the way
    (those known from the job's previous backup in the bucket are not read again). An archive's
    members are hashed while the send uploads the ones before them; a damaged archive raises
    Damaged from the send, before its manifest is written. The whole archive is hashed again
    only when its sha256 was last proved more than RECHECK_AFTER ago."""
    assert record.archive is not None
    path = Path(record.archive)
    if path.is_dir():
        source = scan_dir(path, record.sha256, lazy=True)
    elif path.is_file():
        proved = record.finished_at or 0.0
        if record.verify_status == "ok" and record.verified_at:
            proved = max(proved, record.verified_at)
        if recheck is None:
            recheck = record.sha256 is None or time.time() - proved > RECHECK_AFTER
        source = scan_tar(path, record.sha256, known, lazy=True, recheck=recheck)
    else:
        raise OffsiteError(f"{path}: not there (backup {record.id})")
    return Backup(record.id, record.job, record.kind, record.parent_id, record.to_dict(), source)


def found_damaged(catalog: Catalog, record: RunRecord, exc: Damaged) -> None:
    """A local backup found not to be what its record says as it was read to be sent: its
    failed check, saved in the catalog as verify saves one, so that list and status say so,
    retention counts it as no good backup, and the next hot run starts a new chain rather than
    extend one that restores nothing."""
    from influx_backupd.verify.check import save_result  # verify's readers: only here

    current = catalog.get(record.id) or record
    result = VerifyResult(archive=current.archive or "", run_id=current.id, job=current.job)
    result.fail("sha256", f"found by the off-site sync: {exc}")
    save_result(catalog, current, result)
    log.get().error(
        "offsite.local_copy_damaged", run_id=current.id, job=current.job, error=str(exc)
    )


def _has_local_copy(record: RunRecord | None) -> bool:
    return record is not None and not only_in_bucket(record)


def _repair_source(record: RunRecord) -> Backup:
    """A local backup to repair from, every byte proved again (a damaged local copy must not
    stand in for a repair). One imported from the bucket and never fetched has none: said so
    in a few words, not as an archive path "not there"."""
    if not _has_local_copy(record):
        raise OffsiteError("no local copy (imported, never fetched)")
    return backup_of(record, recheck=True)


def sync(
    config: Config,
    catalog: Catalog,
    *,
    stop: Callable[[], bool] = lambda: False,
    prune: bool = True,
    adopt: bool = False,
) -> SyncReport:
    """Send every wanted backup the bucket lacks, oldest first; then off-site retention.
    The caller holds the backup lock. Raises OffsiteError (after saving what was done);
    PrefixTaken when another host writes the prefix (adopt: take it over).
    Stops (report.yielded) between objects and parts when stop() says so, or a command waits
    for the backup lock (store.state.LockWanted): the next sync resumes."""
    stop = _or_wanted(config.state_dir, stop)
    logger = log.get()
    state = State.load(config.state_dir)
    report = SyncReport()
    try:
        # inside: a writer id that does not read is this sync's failure too (status, metrics)
        offsite = open_offsite(config, writer=writer_id(config.state_dir))
        machine = machine_fingerprint()  # claimed now and again before retention
        offsite.claim(adopt=adopt, host=socket.gethostname(), machine=machine)
        listed = offsite.manifests()
        in_bucket = {r.id for r in listed}
        # whether a backup is there: its id under its own job's key (another job's manifest
        # naming that id is not this backup's)
        there = {(r.job, r.id) for r in listed}
        _sent_still_there(offsite, state, catalog, there)
        # a prune cut short after deleting manifests: what it retired is gone from the bucket
        _forget_imported([i for i in state.retired if i not in in_bucket], catalog)
        # an object a check found damaged lists with its size all the same: a backup holding
        # its content must write it again, not point at it (the repair below needs a copy)
        offsite.distrust(n for d in offsite_repair.noted(config.state_dir) for n in d.objects)
        known: dict[str, Known] = {}
        never = blocked(config, catalog, state)
        not_sent: dict[str, str] = {}  # backup id → why, in this sync

        def skip(record: RunRecord, why: str) -> None:
            not_sent[record.id] = why
            report.skipped.append(f"{record.id}: {why}")
            logger.error("offsite.not_sent", run_id=record.id, job=record.job, error=why)

        for record in wanted(config, catalog, state):
            if (record.job, record.id) in there:
                state.sent.setdefault(record.id, time.time())
                continue
            if record.parent_id is not None and (record.job, record.parent_id) not in there:
                # sent alone, an increment restores nothing from the bucket, and verify and
                # retention there would count it as a backup
                parent = record.parent_id
                skip(
                    record,
                    never.get(record.id)
                    or f"its chain parent {parent} is not off-site"
                    + (f" ({not_sent[parent]})" if parent in not_sent else "")
                    + ": not sent either",
                )
                continue
            if stop():
                report.yielded = True
                break
            if record.job not in known:
                known[record.job] = load_known(config.state_dir, record.job)
            try:
                backup = backup_of(record, known[record.job])
            except OffsiteError as exc:  # a damaged or vanished local backup: the others go
                if isinstance(exc, Damaged):
                    found_damaged(catalog, record, exc)
                skip(record, str(exc))
                continue
            try:
                result = offsite.send(backup, should_stop=stop)
            except Damaged as exc:  # found while sending: no manifest, so not off-site
                found_damaged(catalog, record, exc)
                skip(record, str(exc))
                continue
            report.sent.append(result)
            offsite_repair.forget(config.state_dir, result.resent)
            figures = state.job(record.job)
            figures.uploaded_bytes += result.bytes_uploaded
            figures.skipped_bytes += result.bytes_skipped
            if not result.complete:
                report.yielded = True
                break
            state.sent[record.id] = time.time()
            # its increments, later in this loop, go too (the chain is sent whole, oldest first)
            there.add((record.job, record.id))
            known[record.job] = save_known(config.state_dir, record.job, backup)
            figures.last_success = time.time()
            logger.info(
                "offsite.sent",
                run_id=record.id,
                job=record.job,
                bytes_uploaded=result.bytes_uploaded,
                bytes_skipped=result.bytes_skipped,
                objects_uploaded=result.objects_uploaded,
                objects_skipped=result.objects_skipped,
                took_s=round(result.seconds, 3),
            )
        if not report.yielded and _check_due(config, state):
            checked = offsite_repair.check(
                offsite,
                config.state_dir,
                read_percent=offsite.settings.check_read_data,
                stop=stop,
            )
            report.checked, report.check_failed = checked.checked, dict(checked.unreadable)
            if checked.complete:
                state.last_check = time.time()
            (logger.error if checked.damaged or checked.unreadable else logger.info)(
                "offsite.checked",
                backups=checked.checked,
                damaged=checked.damaged,
                unreadable=sorted(checked.unreadable),
                complete=checked.complete,
            )
            report.yielded = stop()
        if not report.yielded:
            # what a check found damaged in the bucket, sent again from the local copies
            repair = offsite_repair.repair(
                offsite,
                catalog,
                config.state_dir,
                _repair_source,
                # the other backups that may hold the objects: those with a local copy (one
                # imported and never fetched would only add a "not there" to every line)
                [i for i in state.sent if _has_local_copy(catalog.get(i))],
                stop=stop,
                damaged=lambda record, exc: found_damaged(catalog, record, exc),
            )
            report.repaired_bytes = sum(repair.bytes_by_job.values())
            report.repaired, report.unrepaired = repair.repaired, repair.left
            # what status says of each damaged backup: kept until a repair sends it (a note
            # gone, pruned or cleared, is not shown at all)
            state.unrepaired = {
                i: why for i, why in state.unrepaired.items() if i not in repair.repaired
            }
            state.unrepaired.update(repair.left)
            for job, sent in repair.bytes_by_job.items():
                state.job(job).uploaded_bytes += sent
            report.yielded = stop()
        if prune and not report.yielded:

            def retiring(ids: list[str]) -> None:
                # on disk before the manifests go: a prune cut short after deleting them (a
                # kill, an error in the mark or sweep) must not have the next sync send those
                # backups again as "deleted outside influx-backupd"
                _retire(ids, state)
                state.save(config.state_dir)

            # still ours (no host took it over since)
            offsite.claim(host=socket.gethostname(), machine=machine)
            report.pruned = prune_offsite(config, offsite, retiring=retiring)
            if report.pruned is not None:
                _retire(report.pruned.manifests_deleted, state)
                _forget_imported(report.pruned.manifests_deleted, catalog)
                if report.pruned.unreadable:
                    report.sweep_blocked = sweep_blocked(offsite, report.pruned.unreadable)
        state.cleared()
        if report.sweep_blocked is not None:
            # not a failed sync (everything was sent), but what status must show until mended
            state.failed(report.sweep_blocked, "sweep_blocked")
        elif report.skipped or report.check_failed:
            # a sync that ended but left a backup behind (exit 1) fails too, until one sends it
            state.failed(_left_behind(report), "other")
    except Exception as exc:
        line = str(exc) if isinstance(exc, OffsiteError) else f"{type(exc).__name__}: {exc}"
        state.failed(line, reason_of(exc))
        raise
    finally:
        ids = {r.id for r in catalog.list()}
        state.sent = {k: v for k, v in state.sent.items() if k in ids}
        state.retired = {k: v for k, v in state.retired.items() if k in ids}
        report.pending = [r.id for r in not_offsite(config, catalog, state)]
        state.save(config.state_dir)
    return report


def _left_behind(report: SyncReport) -> str:
    """The line for a sync that ended with backups not sent or manifests that do not read."""
    said = [f"not sent: {line}" for line in report.skipped]
    said += [f"check: {i}: {why}" for i, why in report.check_failed.items()]
    more = f" (and {len(said) - 1} more)" if len(said) > 1 else ""
    return f"{said[0]}{more}"


def _or_wanted(state_dir: Path, stop: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: stop() or lock_wanted(state_dir) is not None


def _sent_still_there(
    offsite: Offsite, state: State, catalog: Catalog, there: set[tuple[str, str]]
) -> None:
    """What offsite.json records as sent but the listing does not name: listing_checked; one
    not found by its HEAD was deleted outside this tool (by hand, a lifecycle rule): no longer
    sent, so a wanted backup is sent again."""
    for record in listing_checked(offsite, state, catalog, there):
        state.sent.pop(record.id)
        log.get().warning(
            "offsite.manifest_gone",
            run_id=record.id,
            job=record.job,
            reason="offsite.json says sent, but its manifest is not in the bucket (deleted "
            "outside influx-backupd?): taken as not off-site",
        )


def listing_checked(
    offsite: Offsite,
    state: State,
    catalog: Catalog,
    there: set[tuple[str, str]],
    job: str | None = None,
) -> list[RunRecord]:
    """A listing of the manifests (there: the (job, id) it names; of one job) against what
    offsite.json records as sent: each one it does not name is asked for by a HEAD (both names:
    encrypt_to may have been set since). Found: the listing is not complete, and this raises
    (sync decides nothing on it: retention, the sweep and a repair delete on the strength of
    what is not listed; list does not show it as the bucket's). Every sent backup listed is
    then expected in each later listing (Offsite.expect). Returns the records of those not
    found: deleted outside this tool."""
    gone = []
    for backup_id in sorted(state.sent):
        record = catalog.get(backup_id)
        if record is None or job not in (None, record.job):
            continue  # dropped from offsite.json as the sync ends
        if (record.job, backup_id) in there:
            offsite.expect(backup_id, record.job, "sent by this host, offsite.json says")
            continue
        keys = [offsite.bucket.key(manifest_name(record.job, backup_id, e)) for e in (False, True)]
        if any(offsite.bucket.exists(k) for k in keys):
            raise offsite.incomplete(
                {backup_id: "sent by this host, and a HEAD of its manifest finds it"}
            )
        gone.append(record)
    return gone


def sweep_blocked(offsite: Offsite, unreadable: dict[str, str]) -> str:
    """The line for a prune that deleted no object because manifests do not read: as long as
    one does not, which objects it names is unknown, and nothing is swept (the bucket grows)."""
    first = sorted(unreadable)[0]
    more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
    return (
        f"{offsite.bucket.where}: off-site retention deleted no object: the manifest {first} "
        f"({unreadable[first]}){more} does not read, and may name any object; after encrypt_to "
        "changed, identity_file must hold the identities of the recipients before too (one "
        "per line) until their backups are pruned; a manifest that is not ours: delete it"
    )


def _retire(deleted: list[str], state: State) -> None:
    """Backups whose manifest off-site retention deletes: never sent again (local retention
    may keep them longer, and each sync would send them for the next prune to delete)."""
    for backup_id in deleted:
        state.sent.pop(backup_id, None)
        state.retired.setdefault(backup_id, time.time())


def _forget_imported(deleted: Iterable[str], catalog: Catalog) -> None:
    """Of the backups whose manifest retention deleted, those imported from the bucket and never
    fetched had no copy but that one: their records go too (each would stay an ok backup with
    no archive anywhere, counted by local retention)."""
    for backup_id in deleted:
        record = catalog.get(backup_id)
        if record is not None and only_in_bucket(record):
            catalog.delete(backup_id)
            log.get().info(
                "offsite.forgotten",
                run_id=backup_id,
                reason="imported from the bucket, never fetched, and pruned there",
            )


def prune_offsite(
    config: Config,
    offsite: Offsite,
    *,
    dry_run: bool = False,
    retiring: Callable[[list[str]], None] = lambda _ids: None,
) -> PruneResult | None:
    """[offsite] keep_* per job over the manifests (chains kept whole, as locally), then the
    engine's mark and sweep. No keep_* rule: nothing off-site is deleted."""
    section = config.settings.offsite
    assert section is not None
    policy = RetentionPolicy(
        keep_last=section.keep_last,
        keep_daily=section.keep_daily,
        keep_weekly=section.keep_weekly,
        keep_monthly=section.keep_monthly,
    )
    if not policy.has_rules:
        return None
    refs = offsite.manifests()
    configured = {j.name for j in config.settings.job}
    keep = {r.id for r in refs if r.job not in configured}  # never prune what no job owns
    by_job: dict[str, list[RunRecord]] = {}
    unreadable: dict[str, str] = {}
    # a backup whose copy in the bucket is damaged (noted by a check, not repaired) is no good
    # backup there: as locally, it never takes a restorable one's place, nor do the later links
    # of its chain (plan() counts an increment whose earlier link is not in the bucket as none
    # either)
    damaged = {d.backup: d for d in offsite_repair.noted(config.state_dir)}
    for ref, manifest in offsite.readable([r for r in refs if r.job in configured], unreadable):
        if not offsite.owns(manifest):
            # sent by another writer of the prefix: never judged here (the newest backups of
            # another host would take this host's places under keep_last, and its own go)
            keep.add(ref.id)
            continue
        record = record_of(manifest)
        if record.id in damaged:
            record.verify_status = "failed"
            record.verify_detail = f"{len(damaged[record.id].objects)} objects damaged off-site"
        by_job.setdefault(ref.job, []).append(record)
    now = time.time()
    for records in by_job.values():
        keep |= {r.id for r in plan(records, policy, now=now).keep}
    # the manifests judged, not listed again: one listed only then would be deleted unjudged
    result = offsite.prune(
        keep, now=now, dry_run=dry_run, unreadable=unreadable, judged=refs, retiring=retiring
    )
    log.get().info(
        "offsite.pruned",
        manifests_deleted=result.manifests_deleted,
        objects_deleted=result.objects_deleted,
        bytes_freed=result.bytes_freed,
        objects_in_grace=result.objects_in_grace,
        uploads_aborted=result.uploads_aborted,
        unreadable=sorted(result.unreadable) or None,
        dry_run=dry_run,
    )
    return result


def record_of(manifest: Manifest, storage_dir: Path | None = None) -> RunRecord:
    """The run record a manifest carries; with storage_dir, pointing at where it is fetched."""
    record = RunRecord.from_dict(manifest.record)
    record.status = "ok"
    if storage_dir is not None:
        record.archive = str(storage_dir / manifest.name)
    return record


def tell_failed(config: Config, catalog: Catalog, error: str) -> None:
    """An off-site failure: each affected job's on_failure hook (the newest backup of that job
    not yet off-site as the record, INFLUX_BACKUPD_OFFSITE=failed, the line in _OFFSITE_DETAIL)."""
    log.get().error("offsite.failed", error=error)
    newest: dict[str, RunRecord] = {}
    for record in not_offsite(config, catalog):
        newest[record.job] = record
    for job in config.settings.job:
        behind = newest.get(job.name)
        if behind is None or not job.on_failure:
            continue
        env = environment(behind, "ok")
        env[PREFIX + "OFFSITE"] = "failed"
        env[PREFIX + "OFFSITE_DETAIL"] = error
        run_hook(job.on_failure, env, job.hook_timeout, name="on_failure")


def run_sync(
    config: Config, catalog: Catalog, *, stop: Callable[[], bool] = lambda: False
) -> SyncReport | None:
    """sync() as a follow-up step: a failure is told (log, hooks), never raised."""
    try:
        return sync(config, catalog, stop=stop)
    except OffsiteError as exc:
        tell_failed(config, catalog, str(exc))
    except Exception as exc:  # a bug or an OS error: still one line, and the hooks
        log.get().exception("offsite.crashed")
        tell_failed(config, catalog, f"{type(exc).__name__}: {exc}")
    return None


def fetch_chain(config: Config, catalog: Catalog, backup_id: str) -> list[tuple[RunRecord, bool]]:
    """Bring a backup (and, for an increment, every earlier link of its chain) from the bucket
    into the storage dir, each hashed on the way; its record beside it and in the catalog.
    A link already in the storage dir with its recorded sha256 is not fetched again; one that
    is damaged is moved aside (NAME.damaged-TIME) and fetched. Returns each link, oldest
    first, with whether it was fetched now (False: the local copy was intact)."""
    offsite = open_offsite(config)
    refs = {r.id: r for r in offsite.manifests()}
    chain: list[Manifest] = []
    at: str | None = backup_id
    while at is not None:
        if any(m.id == at for m in chain):
            # planted manifests naming each other: refused before anything is fetched (the
            # catalog's chain walk would follow them for ever)
            raise OffsiteError(f"{offsite.bucket.where}: {chain_loop(backup_id, at)}")
        ref = refs.get(at)
        if ref is None:
            if at == backup_id:
                raise NoSuchBackup(f"{offsite.bucket.where}: no backup {backup_id} in the bucket")
            raise OffsiteError(
                f"{offsite.bucket.where}: no chain parent {at} of {backup_id} in the bucket"
            )
        manifest = offsite.manifest(ref, fresh=True)  # a restore trusts only the bucket
        chain.append(manifest)
        at = manifest.parent
    storage = config.storage_dir
    storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    fetched: list[tuple[RunRecord, bool]] = []
    owners = {r.archive: r for r in catalog.list() if r.archive}
    for manifest in reversed(chain):
        record = record_of(manifest, storage)
        target = storage / manifest.name
        owner = owners.get(str(target))
        if owner is not None and owner.id != manifest.id:
            # a manifest naming another backup's archive (planted, or a name reused): that
            # archive is never moved aside for it
            raise OffsiteError(
                f"{offsite.bucket.where}: backup {manifest.id} would be fetched as {target}, "
                f"the archive of backup {owner.id}; not fetched"
            )
        if target.exists():
            if _intact(target, manifest.sha256):
                if not sidecar_of(target).exists():
                    # an earlier fetch that ran out of space between the two, or an archive
                    # copied in by hand: a new host's import needs the record beside it
                    write_sidecar(target, record)
                if catalog.get(manifest.id) is None:
                    catalog.save(record)
                fetched.append((record, False))
                continue
            # damaged (or another backup under that name): kept aside, never deleted
            aside = target.with_name(f"{target.name}.damaged-{int(time.time())}")
            target.rename(aside)
            log.get().warning("offsite.local_copy_damaged", run_id=manifest.id, moved_to=str(aside))
        got = offsite.fetch(manifest.id, storage)
        for note in got.notes:
            log.get().warning("offsite.rebuilt_as_tree", run_id=manifest.id, note=note)
        write_sidecar(target, record)
        catalog.save(record)
        log.get().info("offsite.fetched", run_id=manifest.id, path=str(target), bytes=got.bytes)
        fetched.append((record, True))
    return fetched


def _intact(path: Path, sha256: str) -> bool:
    """The local copy is the backup the manifest names (its whole sha256, as in its record)."""
    try:
        source = scan_dir(path) if path.is_dir() else scan_tar(path)
    except OffsiteError:
        return False
    return source.sha256 == sha256
