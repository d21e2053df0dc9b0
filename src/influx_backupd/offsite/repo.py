"""The off-site engine: send a backup, list, fetch back (hashing everything), verify, prune.

Bucket layout (docs/offsite.md), everything below the host's prefix:
    objects/<2 hex>/<name>         one per distinct file content; name = sha256 of the bytes,
                                   or HMAC-SHA256(name key, sha256) when encrypting
    manifests/<job>/<id>.json.gz   one per backup (…json.gz.age when encrypting)
    keys/<key id>.age              the name key, encrypted to encrypt_to (encrypting only)

Why one module of this size: send, fetch, verify and prune all walk the same layout (objects,
manifests, keys) and its invariants (manifest last, nothing swept that a kept manifest names);
the transport is bucket.py, the file lists files.py, the manifest format manifest.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import queue
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, NamedTuple

from influx_backupd.core import log
from influx_backupd.core.atomic import read_ours_text, read_small, replace_file
from influx_backupd.offsite import crypto
from influx_backupd.offsite.bucket import Bucket, Listed, Multipart
from influx_backupd.offsite.errors import (
    AlreadyThere,
    BadManifest,
    IntegrityError,
    NoBucket,
    NoIdentity,
    NoSuchBackup,
    NotFound,
    NotOurs,
    OffsiteError,
    OffsiteMisconfigured,
    PrefixTaken,
    Refused,
    Unreachable,
)
from influx_backupd.offsite.files import CHUNK, FileEntry, Source, listing_sha256
from influx_backupd.offsite.manifest import (
    MAX_STORED,
    Manifest,
    ManifestFile,
    build,
    manifest_name,
    object_name,
    parse_name,
    tree_problem,
)
from influx_backupd.offsite.settings import OffsiteSettings
from influx_backupd.store.archive import restored_mode
from influx_backupd.store.chain import chain_loop


@dataclass(frozen=True)
class Backup:
    """One local backup to send, in plain terms."""

    id: str
    job: str
    kind: str
    parent: str | None
    record: dict[str, Any]
    source: Source


@dataclass
class SendResult:
    id: str
    complete: bool = False  # False: stopped early (should_stop) — the next send resumes
    already: bool = False  # its manifest was in the bucket already
    bytes_uploaded: int = 0  # bytes sent now (ciphertext when encrypting)
    bytes_skipped: int = 0  # file bytes not sent: their object was in the bucket already
    objects_uploaded: int = 0
    objects_skipped: int = 0
    seconds: float = 0.0
    resent: list[str] = field(default_factory=list)  # objects sent again to repair them


@dataclass(frozen=True)
class ManifestRef:
    job: str
    id: str
    key: str
    modified: float
    etag: str = ""  # as listed: with size, what the local manifest cache is keyed by
    size: int = 0


@dataclass
class Fetched:
    path: Path  # the rebuilt archive, or the dir holding the files
    rebuilt: str  # "bytes": byte for byte, sha256 equal to the record's; "tree": files only
    bytes: int
    notes: list[str] = field(default_factory=list)


@dataclass
class VerifyResult:
    id: str
    objects: int
    checked: int  # objects downloaded and hashed
    bytes_read: int
    errors: list[str] = field(default_factory=list)
    # objects found missing, of the wrong size or not holding their content: name → why
    # (what a send from a local copy of that content puts right)
    bad: dict[str, str] = field(default_factory=dict)
    job: str = ""
    parent: str | None = None  # the chain parent's backup id
    # why an earlier link of its chain makes it restore nothing from the bucket (verify_chain):
    # not in the bucket, its manifest does not read, or its own check failed
    chain: str | None = None
    # objects downloaded, hashed and found good in this check: only these clear damage noted
    # by an earlier check (a listing of sizes cannot tell a changed byte)
    reread: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.errors) or self.chain is not None


@dataclass
class PruneResult:
    manifests_deleted: list[str] = field(default_factory=list)
    objects_deleted: int = 0
    bytes_freed: int = 0
    objects_in_grace: int = 0  # unreferenced, but too young to delete
    uploads_aborted: int = 0
    # manifests that are no manifest of ours (key → why): kept, and while there is one no
    # object is swept (which objects it would keep cannot be known)
    unreadable: dict[str, str] = field(default_factory=dict)


class _LocalWrite(Exception):
    """Writing what came from the bucket failed here (a full disk): the local path's fault,
    told as such, not as a failed request to the bucket."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class _HashingWriter:
    """Hashes what it is given and passes it on (a file, or nowhere)."""

    def __init__(self, out: BinaryIO | None) -> None:
        self.out, self.digest, self.bytes = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.bytes += len(data)
        if self.out is not None:
            try:
                self.out.write(data)
            except OSError as exc:
                raise _LocalWrite(exc) from None
        return len(data)

    def flush(self) -> None:
        pass


_FETCHING: set[Path] = set()  # partial copies being written by a fetch in this process


def drop_partial_fetches() -> None:
    """Remove the partial copies of fetches this process gives up on (a stall or a signal):
    their thread is left on its request and never reaches its own cleanup."""
    for copy in list(_FETCHING):
        if copy.is_dir() and not copy.is_symlink():
            shutil.rmtree(copy, ignore_errors=True)
        else:
            copy.unlink(missing_ok=True)


def chain_gap(
    backup_id: str, parents: Mapping[str, str | None], unreadable: Collection[str] = ()
) -> str | None:
    """Why backup_id restores nothing from the bucket for want of an earlier link, or None.
    parents: each backup whose manifest was read (id → its chain parent); unreadable: the ids
    of those listed whose manifest does not read."""
    at, seen = backup_id, {backup_id}
    while (parent := parents.get(at)) is not None:
        link = "its chain parent" if at == backup_id else "the earlier link"
        if parent in seen:
            return chain_loop(backup_id, parent)
        if parent in unreadable:
            return f"{link} {parent} does not read: it cannot be restored from there"
        if parent not in parents:
            return f"{link} {parent} is not in the bucket: it cannot be restored from there"
        seen.add(parent)
        at = parent
    return None


NO_IDENTITY_LINE = (
    "is encrypted, and no identity_file is set: set [offsite] identity_file to an age identity "
    "file of one of its recipients (keep it after turning encryption off, until the encrypted "
    "backups are pruned)"
)


def no_identity_line(where: str) -> str:
    return (
        f"{where}: the backups are encrypted: set [offsite] identity_file to an age identity "
        "file of one of the encrypt_to recipients"
    )


def identity_wrong(read: int, skipped: dict[str, str], where: str) -> OffsiteError | None:
    """The error to end a listing with when no manifest read and some were encrypted: then it
    is the config that is wrong, not those manifests. No identity_file at all: 78; one whose
    keys open none: the identity is wrong (1)."""
    if read:
        return None
    if any(why.endswith(NO_IDENTITY_LINE) for why in skipped.values()):
        return OffsiteMisconfigured(no_identity_line(where))
    wrong = next((why for why in skipped.values() if why.endswith(crypto.NOT_OURS_LINE)), None)
    return OffsiteError(wrong) if wrong is not None else None


def _local_failure(exc: BaseException, target: Path) -> OffsiteError:
    """A fetch that failed writing here: one line naming where (the partial copy is gone)."""
    error = exc.error if isinstance(exc, _LocalWrite) else exc
    assert isinstance(error, OSError)
    return OffsiteError(
        f"{target}: cannot be written here: {error.strerror or error}; the partial copy was "
        "removed (the backup in the bucket is untouched)"
    )


class _Piece(NamedTuple):
    """One object to send: a whole file, or one chunk of a large encrypted file."""

    name: str
    entry: FileEntry
    offset: int
    length: int
    chunk: bool


WRITER_MARKER = "writer.json"  # below the prefix: who writes it (Offsite.claim)
_WRITER = re.compile(r"[0-9a-f]{32}\Z")


# The writer marker, a name key and its recipients tag are a few hundred bytes: one read back
# longer than this is not ours (and does not parse), read no further.
SMALL_OBJECT = 1 << 20


_GZIP = b"\x1f\x8b"
_AGE = b"age-encryption.org/v1\n"
# a recipients tag as written: the recipients' fingerprint (crypto.recipients_fingerprint)
_RECIPIENTS = re.compile(rb"\s*[0-9a-f]{64}\s*")


def _what_came(data: bytes, kind: str, limit: int) -> str:
    """A few words on a body read back that is not what was asked for: its Content-Type, its
    size, and its first bytes (readable)."""
    size = f"more than {limit} bytes" if len(data) > limit else f"{len(data)} bytes"
    start = data[:24].decode("ascii", "backslashreplace")
    start = "".join(c if c.isprintable() else "?" for c in start)
    return f"got {kind or 'no Content-Type'}, {size}" + (f", starting {start!r}" if data else "")


def _marker_of(data: bytes) -> dict[str, Any] | None:
    """The writer marker's fields (writer, host, adopted, machine: "" in one written before
    machines were named), or None when it is not one."""
    try:
        raw = json.loads(data)
        writer, host, adopted = raw["writer"], raw.get("host") or "", raw.get("adopted") or []
        machine = raw.get("machine") or ""
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if (
        not isinstance(writer, str)
        or not _WRITER.match(writer)
        or not isinstance(host, str)
        or not isinstance(adopted, list)
        or not all(isinstance(a, str) and _WRITER.match(a) for a in adopted)
        or not isinstance(machine, str)
        or (machine and not _WRITER.match(machine))
    ):
        return None
    return {"writer": writer, "host": host, "adopted": adopted, "machine": machine}


_OBJECT = re.compile(r"[0-9a-f]{64}\Z")  # an object's name: a sha256 or an HMAC-SHA256, hex
AHEAD = 256 * 1024 * 1024  # bytes hashed ahead of the uploads, at most (page cache, not RSS)


def _read_ahead(source: Source) -> Generator[FileEntry, None, None]:
    """source.hashing() run in a thread of its own, up to AHEAD bytes ahead of the consumer:
    the next files are hashed (hashlib and pread release the GIL) while the last ones are
    uploaded. An error in the hashing (a damaged archive) is raised here, in order."""
    if source._hashing is None:
        yield from source.files()
        return
    cancel = threading.Event()
    ready: queue.Queue[FileEntry | BaseException | None] = queue.Queue()
    room = threading.Condition()
    ahead = [0]

    def hash_all() -> None:
        try:
            for entry in source.hashing(cancel):
                with room:
                    room.wait_for(lambda: ahead[0] < AHEAD or cancel.is_set())
                    ahead[0] += entry.size
                if cancel.is_set():
                    return
                ready.put(entry)
            ready.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(exc)

    worker = threading.Thread(target=hash_all, name="offsite-hash", daemon=True)
    worker.start()
    try:
        while (got := ready.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            with room:
                ahead[0] -= got.size
                room.notify()
            yield got
    finally:
        cancel.set()
        with room:
            room.notify()
        worker.join()


class Offsite:
    def __init__(
        self,
        settings: OffsiteSettings,
        *,
        key_file: Path | None = None,
        cache_dir: Path | None = None,
        on_sent: Callable[[int], None] | None = None,
        writer: str | None = None,
    ) -> None:
        """key_file: where this host keeps its name key (needed to send when encrypting);
        cache_dir: where manifests read from the bucket are kept (none: not kept); writer: this
        host's writer id (see claim), written into each manifest it sends."""
        self.settings = settings
        self.writer = writer
        # the writer ids whose manifests this host's retention judges: its own, and those of
        # the writers before it that it took the prefix over from (claim)
        self._owned: set[str] = {writer} if writer else set()
        self.cache_dir = cache_dir
        self.bucket = Bucket(settings, on_sent=on_sent)
        self.key_file = key_file
        self._namer: crypto.Namer | None = None
        self._recipients: list[Any] | None = None
        self._identities: list[Any] | None = None
        self._present: dict[str, int] | None = None  # object name → size
        # objects a check found damaged (listed, maybe of the right size): sent again by any
        # send that holds their content, never skipped as present (see distrust)
        self._distrusted: set[str] = set()
        self._lock = threading.Lock()
        # manifests known to be in the bucket (backup id → (job, how it is known)): listed
        # before, found by a HEAD or written by send() in this process, or told by the caller
        # (expect). A listing that misses one is not complete, and what deletes on the strength
        # of a listing (retention, the sweep, a repair clearing its notes) must not trust it.
        self._known: dict[str, tuple[str, str]] = {}

    # -- keys ------------------------------------------------------------------------------

    def recipients(self) -> list[Any]:
        if self._recipients is None:
            self._recipients = crypto.recipients(self.settings.encrypt_to)
        return self._recipients

    def identities(self) -> list[Any]:
        if self._identities is None:
            if self.settings.identity_file is None:
                raise OffsiteMisconfigured(no_identity_line(self.bucket.where))
            self._identities = crypto.identities(self.settings.identity_file)
        return self._identities

    def namer(self) -> crypto.Namer:
        if self._namer is not None:
            return self._namer
        if not self.settings.encrypted:
            self._namer = crypto.Namer(None)
            return self._namer
        if self.key_file is None:
            raise OffsiteError("encrypting needs a file for the name key (key_file)")
        now = crypto.recipients_fingerprint(self.settings.encrypt_to)
        found: bytes | None = None
        if not self.key_file.exists() and self.settings.identity_file is not None:
            # a fresh host that holds the identity: the same names, if the bucket's key was
            # made for these very recipients
            found = self._key_from_bucket(now)
        if found is not None:
            known = found
            key = crypto.local_key(self.key_file, make=lambda: known)
            replace_file(self._recipients_marker(), now.encode() + b"\n")
        else:
            key = self._key_for_recipients(crypto.local_key(self.key_file), now)
        namer = crypto.Namer(key)
        stored = self.bucket.key("keys", f"{namer.key_id}.age")
        if not self.bucket.exists(stored):
            self.bucket.put_bytes(stored, crypto.encrypt_bytes(key, self.recipients()))
        # which recipients the key names objects for, beside it (the fingerprint of public
        # keys: nothing secret), so that a fresh host reuses it only for those
        tag = self.bucket.key("keys", f"{namer.key_id}.recipients")
        if not self.bucket.exists(tag):
            self.bucket.put_bytes(tag, now.encode())
        self._namer = namer
        return namer

    def _recipients_marker(self) -> Path:
        assert self.key_file is not None
        return self.key_file.with_name(self.key_file.name + ".recipients")

    def _key_for_recipients(self, key: bytes, now: str) -> bytes:
        """The name key, made anew when encrypt_to changed since it was first used. An object
        is sent once and named by its content: under the same names, the next backup would be
        made of objects encrypted to the recipients of before, unreadable with the new identity
        alone. A new key gives new names: everything is sent again, to the new recipients (the
        backups before stay readable with the identity of before until pruned)."""
        assert self.key_file is not None
        marker = self._recipients_marker()
        try:
            was: str | None = read_ours_text(marker).strip()
        except FileNotFoundError:
            was = None  # a key from before this marker: taken as made for these recipients
        except OSError as exc:
            raise OffsiteError(f"{marker}: cannot be read: {exc.strerror or exc}") from None
        if was is not None and was != now:
            key = crypto.renew_key(self.key_file)
            log.get().warning(
                "offsite.name_key_renewed",
                reason="encrypt_to changed: every file is sent again, to the new recipients",
                key_id=crypto.key_id(key),
            )
        if was != now:
            replace_file(marker, now.encode() + b"\n")
        return key

    def _key_from_bucket(self, recipients: str) -> bytes | None:
        """The newest name key in the bucket made for these recipients (its tag says so; a key
        without one is from before tags, for recipients unknown: not taken)."""
        listed = [o for o in self.bucket.ls("keys") if o.key.endswith(".age")]
        for item in sorted(listed, key=lambda o: o.modified, reverse=True):
            tag = item.key[: -len(".age")] + ".recipients"
            try:
                said, kind = self.bucket.get_typed(tag, SMALL_OBJECT)
            except NotFound:
                continue
            if not _RECIPIENTS.fullmatch(said):
                raise self._not_read(tag, "a recipients tag of a name key", said, kind)
            if said.decode().strip() != recipients:
                continue
            stored, kind = self.bucket.get_typed(item.key, SMALL_OBJECT)
            if not stored.startswith(_AGE):
                raise self._not_read(item.key, "an age-encrypted name key", stored, kind)
            try:
                data = crypto.decrypt_bytes(stored, self.identities(), item.key)
            except (NotOurs, IntegrityError):
                continue  # a key of other recipients (encrypt_to changed since), or damaged
            if len(data) == 32:
                return data
        return None

    # -- who writes the prefix ---------------------------------------------------------------

    def claim(self, *, adopt: bool = False, host: str = "", machine: str = "") -> None:
        """Make sure this host (self.writer) is the one writing the prefix, before it writes or
        prunes there: the marker WRITER_MARKER below the prefix names the writer. None there
        yet (a new prefix, or one written before markers): this host's from now on, and the
        manifests without a writer id there are taken as its own. Another writer's: raises
        PrefixTaken, unless adopt (that host is gone for good: this one takes the prefix over,
        with the backups it wrote). Two hosts sharing a prefix (the same short host name, a
        cloned config) would otherwise prune each other's backups.

        machine: this machine's fingerprint (run.offsite.machine_fingerprint; "" when it has
        none), kept in the marker. Our own writer id claimed from another machine is a copy of
        this host's state dir (a cloned VM, a restored image): refused as another writer is,
        unless adopt (this machine replaces that one). A marker naming no machine yet is
        given ours."""
        assert self.writer is not None, "claim() needs the writer id"
        key = self.bucket.key(WRITER_MARKER)
        marker: dict[str, Any] | None
        try:
            marker = self._read_marker(key)
        except NotFound:
            marker = None
        ours = marker is not None and marker["writer"] == self.writer
        if marker is not None and ours and (not machine or marker["machine"] == machine):
            self._owned = {self.writer, *marker["adopted"]}
            return
        if marker is not None and not adopt and (not ours or marker["machine"]):
            raise self._taken(marker, copied=ours)
        before: list[str] = []
        if marker is not None:
            # our own writer id again (a machine taking it over, or named for the first time)
            # is not a writer adopted
            before = [*marker["adopted"]] + ([] if ours else [marker["writer"]])
        mine = {"writer": self.writer, "host": host, "since": time.time(), "adopted": before}
        if machine:
            mine["machine"] = machine
        body = json.dumps(mine, indent=1).encode()
        if marker is not None:
            self.bucket.put_bytes(key, body)
        else:
            self._put_if_absent(key, body)
        # an endpoint that ignores If-None-Match: two hosts claiming a new prefix at once both
        # write, the marker is the last one's; read back, the other one sees it is not its own
        again = self._read_marker(key)
        if again["writer"] != self.writer or (machine and again["machine"] != machine):
            raise self._taken(again, copied=again["writer"] == self.writer)
        self._owned = {self.writer, *before}
        log.get().warning(
            "offsite.prefix_named_machine"
            if ours and marker is not None and not marker["machine"]
            else "offsite.prefix_adopted"
            if marker is not None
            else "offsite.prefix_claimed",
            where=self.bucket.where,
            writer=self.writer,
            adopted=before,
        )

    def _put_if_absent(self, key: str, body: bytes) -> None:
        """The first marker of a prefix, written only if no other host's came first (two hosts
        claiming it in the same moment: each read none, each wrote, and a read-back can see
        its own marker before the other's overwrites it). An endpoint that refuses the
        condition itself (a request error other than 412) is written to plainly."""
        try:
            self.bucket.put_bytes(key, body, if_absent=True)
        except AlreadyThere:
            there = self._read_marker(key)
            if there["writer"] == self.writer:
                return  # our own put, stored, whose answer was lost (its retry then saw 412)
            raise self._taken(there) from None
        except (NoBucket, Refused, Unreachable):
            raise
        except OffsiteError:
            self.bucket.put_bytes(key, body)

    def _not_read(self, key: str, what: str, data: bytes, kind: str) -> OffsiteError:
        """An object read back that is not what this tool writes there: never passed over as
        one of other recipients (a new name key would be made, and every file sent again)."""
        return OffsiteError(
            f"{self.bucket.where}: {key} does not read as {what} "
            f"({_what_came(data, kind, SMALL_OBJECT)}): check endpoint_url and bucket (a "
            "proxy or captive portal answering for the endpoint?); nothing sent"
        )

    def _read_marker(self, key: str) -> dict[str, Any]:
        """The writer marker at key (NotFound: none). A body that is no marker of ours (a
        proxy's or captive portal's page answering for the endpoint, an object of someone
        else's, a damaged one) is an error of its own, never taken for another writer's: the
        line for that suggests --adopt, which would write over that object."""
        data, kind = self.bucket.get_typed(key, SMALL_OBJECT)
        marker = _marker_of(data)
        if marker is None:
            raise OffsiteError(
                f"{self.bucket.where}: {key} does not read as an influx-backupd writer marker "
                f"({_what_came(data, kind, SMALL_OBJECT)}): check endpoint_url and bucket (a "
                "proxy or captive portal answering for the endpoint?); nothing sent or pruned. "
                "If it is that bucket and the object is damaged, delete it by hand"
            )
        return marker

    def _taken(self, marker: dict[str, Any], *, copied: bool = False) -> PrefixTaken:
        if copied:
            return PrefixTaken(
                f"{self.bucket.where}: this prefix is written with this host's own writer id "
                f"({marker['writer'][:12]}…) from another machine"
                + (f" (host {marker['host']!r:.80})" if marker["host"] else "")
                + ": this host's state dir was copied from it (a cloned VM, a restored disk "
                "image), and each would prune the other's backups as its own; nothing sent or "
                "pruned there. Give this host a writer id and a prefix of its own (move "
                "offsite-writer.id out of the state dir, set [offsite] prefix), or, if that "
                "machine is gone for good and this one replaces it: influx-backupd offsite "
                "sync --adopt"
            )
        whose = (
            f"another host or config (writer {marker['writer'][:12]}…"
            + (f", host {marker['host']!r:.80}" if marker["host"] else "")
            + ")"
        )
        return PrefixTaken(
            f"{self.bucket.where}: this prefix is written by {whose}, not by this host (writer "
            f"{(self.writer or '')[:12]}…): nothing sent or pruned there; give this host a "
            "prefix of its own ([offsite] prefix), or, if that host is gone for good, take the "
            "prefix over: influx-backupd offsite sync --adopt"
        )

    def owns(self, manifest: Manifest) -> bool:
        """Whether this host's retention may judge (and delete) the manifest: written by it or
        by a writer it took the prefix over from, or by no writer id (before writer ids)."""
        writer = manifest.extra.get("writer")
        return writer is None or self.writer is None or writer in self._owned

    # -- listing ---------------------------------------------------------------------------

    def manifests(self, job: str | None = None) -> list[ManifestRef]:
        """The manifests listed (of one job). Raises OffsiteError when the listing misses one
        known to be there (see _known): nothing is decided on a listing not proved complete."""
        refs: list[ManifestRef] = []
        base = len(self.settings.prefix) + 1
        for item in self.bucket.ls("manifests"):
            parsed = parse_name(item.key[base:])
            if parsed is None or (job is not None and parsed[0] != job):
                continue
            refs.append(
                ManifestRef(parsed[0], parsed[1], item.key, item.modified, item.etag, item.size)
            )
        listed = {r.id for r in refs}
        missing = {
            i: how
            for i, (of, how) in self._known.items()
            if i not in listed and (job is None or of == job)
        }
        if missing:
            raise self.incomplete(missing)
        for ref in refs:
            self._known.setdefault(ref.id, (ref.job, "listed before"))
        if job is None and self.cache_dir is not None:
            self._forget(refs)
        return sorted(refs, key=lambda r: r.id)

    def expect(self, backup_id: str, job: str, how: str) -> None:
        """backup_id's manifest is known to be in the bucket (how: the proof): every later
        listing must name it, or it is an error."""
        self._known[backup_id] = (job, how)

    def incomplete(self, missing: Mapping[str, str]) -> OffsiteError:
        """The one line for a listing of the manifests that misses some known to be there
        (backup id → how it is known)."""
        first = sorted(missing)[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return OffsiteError(
            f"{self.bucket.where}: the listing of {self.bucket.key('manifests')}/ is not "
            f"complete: it misses backup {first} ({missing[first]}){more}; the endpoint (or a "
            "proxy before it) does not list what it holds: nothing deleted"
        )

    def find(self, backup_id: str) -> ManifestRef:
        for ref in self.manifests():
            if ref.id == backup_id:
                return ref
        raise NoSuchBackup(f"{self.bucket.where}: no backup {backup_id} in the bucket")

    def manifest(self, ref: ManifestRef | str, *, fresh: bool = False) -> Manifest:
        """A backup's manifest: from the local cache when it holds this key with the ETag and
        size just listed (list, import, prune, the next send's known files), else from the
        bucket (and kept). fresh: always from the bucket (fetch and verify: what a restore
        trusts is read from the bucket)."""
        if isinstance(ref, str):
            ref = self.find(ref)
        path = self._cache_path(ref)
        cached = None if fresh else path
        if cached is not None:
            try:
                return self._decode(ref, read_small(cached))
            except OSError:  # none, or not a file we wrote: a cache, read from the bucket
                pass
            except OffsiteError:  # damaged (gzip's CRC, age's MAC): read it again
                cached.unlink(missing_ok=True)
        if ref.size > MAX_STORED:  # not even downloaded
            raise BadManifest(f"{ref.key}: {ref.size} bytes, more than a manifest may be")
        data, kind = self.bucket.get_typed(ref.key, MAX_STORED)  # a longer one: BadManifest
        try:
            manifest = self._decode(ref, data)
        except BadManifest as exc:
            if data.startswith((_GZIP, _AGE)):
                raise
            # not even gzip or age: a proxy's page, someone's object: say what came
            raise BadManifest(f"{exc} ({_what_came(data, kind, MAX_STORED)})") from None
        if path is not None:
            self._keep(path, data)
        return manifest

    def _decode(self, ref: ManifestRef, data: bytes) -> Manifest:
        if ref.key.endswith(".age"):
            if self.settings.identity_file is None:
                raise NoIdentity(f"{ref.key}: {NO_IDENTITY_LINE}")
            try:
                data = crypto.decrypt_bytes(data, self.identities(), ref.key)
            except IntegrityError as exc:  # damaged: passed over like any unreadable manifest
                raise BadManifest(str(exc)) from None
        manifest = Manifest.decode(data, ref.key)
        if (manifest.job, manifest.id) != (ref.job, ref.id):
            # a manifest copied under another key would stand in for (and be imported over)
            # the backup whose name it took
            raise BadManifest(
                f"{ref.key}: holds backup {manifest.id} of job {manifest.job}, not the one its "
                "name says"
            )
        return manifest

    # -- the manifest cache (state_dir/offsite-manifests): manifests as stored in the bucket
    # (encrypted ones stay encrypted), one file each, named by a hash of where they are, their
    # key, ETag and size: a manifest written again under its key gets a new name

    def _cache_path(self, ref: ManifestRef) -> Path | None:
        if self.cache_dir is None or not ref.etag:
            return None
        ident = "\0".join((self.bucket.where, ref.key, ref.etag, str(ref.size)))
        return self.cache_dir / hashlib.sha256(ident.encode()).hexdigest()[:40]

    def _keep(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_file(path, data, durable=False)
        except OSError:
            pass  # a cache: the next listing fetches it again

    def _forget(self, refs: list[ManifestRef]) -> None:
        """Drop the cached manifests no longer in the bucket (pruned, or written again)."""
        assert self.cache_dir is not None
        keep = {p.name for p in map(self._cache_path, refs) if p is not None}
        try:
            names = os.listdir(self.cache_dir)
        except OSError:
            return
        for name in names:
            if name not in keep:
                (self.cache_dir / name).unlink(missing_ok=True)

    def readable(
        self, refs: Iterable[ManifestRef], skipped: dict[str, str]
    ) -> Iterator[tuple[ManifestRef, Manifest]]:
        """Each ref with its manifest; one that is no manifest of ours (BadManifest) is logged,
        put in skipped (key → why) and passed over, so that one damaged or planted object
        does not stop every listing, import and prune. Any other error (the endpoint, the
        identity) still ends the walk."""
        for ref in refs:
            try:
                manifest = self.manifest(ref)
            except (BadManifest, NotOurs) as exc:
                # one encrypted to other keys is planted, of backups before encrypt_to changed,
                # or the identity is wrong (see identity_wrong): passed over, never acted on
                skipped[ref.key] = str(exc)
                log.get().warning("offsite.manifest_skipped", key=ref.key, error=str(exc))
                continue
            yield ref, manifest

    def present(self) -> dict[str, int]:
        """Objects in the bucket (name → size), listed once and kept up to date by send()."""
        if self._present is None:
            self._present = self.objects_in_place()
            for name in self._distrusted:
                self._present.pop(name, None)
        return self._present

    def distrust(self, names: Iterable[str]) -> None:
        """Objects known damaged in the bucket (noted by a check, not repaired yet): a send
        whose backup holds their content writes them again (listed in its `resent`) rather
        than take them as there because the listing shows them, of the right size."""
        self._distrusted |= set(names)
        if self._present is not None:
            for name in self._distrusted:
                self._present.pop(name, None)

    def objects_in_place(self) -> dict[str, int]:
        """The objects listed (name → size) at the key a manifest's name resolves to: one
        copied or moved elsewhere below objects/ is not what a restore will find."""
        listed = {}
        for item in self.bucket.ls("objects"):
            name = self._object_at(item.key)
            if name is not None:
                listed[name] = item.size
        return listed

    def _object_at(self, key: str) -> str | None:
        """The object name whose key this is (objects/<2 hex>/<64 hex> below the prefix), or
        None: a key of another form is none of ours (another tool's, or a host's whose prefix
        lies below ours), and is never deleted or aborted here."""
        name = PurePosixPath(key).name
        if _OBJECT.match(name) and key == self.bucket.key(object_name(name)):
            return name
        return None

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        backup: Backup,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        resend: Iterable[str] = (),
        split: Mapping[str, int] | None = None,
    ) -> SendResult:
        """Send the objects the bucket lacks, then the manifest. Safe to repeat after a kill.
        A repair: the objects of this backup named in resend are sent again whether the bucket
        lists them or not (a check found them damaged); a manifest there already is kept.
        split: per content sha256, the chunk size its manifest sent it in (0: whole), for a
        repair after chunk_size changed: the objects to send again are named as sent."""
        started = time.monotonic()
        result = SendResult(backup.id)
        encrypted = self.settings.encrypted
        mkey = self.bucket.key(manifest_name(backup.job, backup.id, encrypted))
        resend = set(resend)
        has_manifest = self.bucket.exists(mkey)
        if has_manifest:
            self.expect(backup.id, backup.job, "found there by a HEAD just now")
        if has_manifest and not resend:
            result.complete = result.already = True
            return result
        namer = self.namer()
        present = self.present()
        for name in resend:
            present.pop(name, None)
        names: dict[str, str] = {}  # sha256 → object name
        chunks: dict[str, tuple[int, list[str]]] = {}  # sha256 → (chunk size, chunk names)
        chunk_size = self.settings.chunk_size

        def skip(n: int) -> None:
            result.bytes_skipped += n
            result.objects_skipped += 1

        def plan(entries: Iterable[FileEntry]) -> Iterator[_Piece]:
            """The objects to send, decided file by file as each file's hash is known."""
            for entry in entries:
                sha = entry.sha256
                if sha in names or sha in chunks:
                    result.bytes_skipped += entry.size  # the same content twice in one backup
                    continue
                name = namer(sha)
                size = present.get(name)
                if size is not None and (encrypted or size == entry.size):
                    names[sha] = name  # whole, as sent before (by an older version too)
                    skip(entry.size)
                    continue
                step = chunk_size if split is None else split.get(sha, chunk_size)
                if not encrypted or step <= 0 or entry.size <= step:
                    names[sha] = name
                    yield _Piece(name, entry, 0, entry.size, False)
                    continue
                count = -(-entry.size // step)
                chunks[sha] = (step, [namer.chunk(sha, step, i) for i in range(count)])
                for i, piece in enumerate(chunks[sha][1]):
                    offset = i * step
                    length = min(step, entry.size - offset)
                    if piece in present:  # sent before this send was interrupted
                        skip(length)
                        continue
                    yield _Piece(piece, entry, offset, length, True)

        sent_lock = threading.Lock()

        def done(name: str, size: int, sent: int, complete: bool) -> None:
            with sent_lock:
                result.bytes_uploaded += sent
                result.objects_uploaded += complete
            if complete:
                with self._lock:
                    present[name] = size
                    if name in resend or name in self._distrusted:
                        result.resent.append(name)
                        self._distrusted.discard(name)

        hashed = _read_ahead(backup.source)
        try:
            stopped = self._run_all(self._jobs(backup.source, plan(hashed), done), should_stop)
        finally:
            hashed.close()
        if stopped:
            result.seconds = time.monotonic() - started
            return result
        if has_manifest:
            result.complete = True
            result.seconds = time.monotonic() - started
            return result
        manifest = build(
            id=backup.id,
            job=backup.job,
            kind=backup.kind,
            parent=backup.parent,
            record=backup.record,
            source=backup.source,
            names=names,
            key_id=namer.key_id,
            sent_at=time.time(),
            chunks=chunks,
        )
        if self.writer is not None:
            manifest.extra = {**manifest.extra, "writer": self.writer}
        data = manifest.encode()
        if encrypted:
            data = crypto.encrypt_bytes(data, self.recipients())
        result.bytes_uploaded += self.bucket.put_bytes(mkey, data)
        self.expect(backup.id, backup.job, "written just now")
        result.complete = True
        result.seconds = time.monotonic() - started
        return result

    def _jobs(
        self,
        source: Source,
        todo: Iterable[_Piece],
        done: Callable[[str, int, int, bool], None],
    ) -> Iterator[Callable[[], None]]:
        """One job per object (or chunk), or per part of a plain object larger than part_size,
        so that the parts of one large file go out side by side. Made lazily: a multipart
        upload is started (or found again) only when its first part is about to be sent."""
        for piece in todo:
            if self.settings.encrypted or piece.length <= self.settings.part_size:
                yield partial(self._whole, source, piece, done)
                continue
            upload = self.bucket.multipart(self.bucket.key(object_name(piece.name)), piece.length)
            for n in range(1, upload.count + 1):
                yield partial(self._part, source, piece, upload, n, done)

    def _whole(
        self, source: Source, piece: _Piece, done: Callable[[str, int, int, bool], None]
    ) -> None:
        done(piece.name, piece.length, self._send_object(source, piece), True)

    def _part(
        self,
        source: Source,
        piece: _Piece,
        upload: Multipart,
        n: int,
        done: Callable[[str, int, int, bool], None],
    ) -> None:
        with source.open(piece.entry, upload.offset(n), upload.length(n)) as reader:
            data = reader.read()
        sent, complete = upload.send(n, data)
        done(piece.name, piece.length, sent, complete)

    def _run_all(self, jobs: Iterable[Callable[[], None]], should_stop: Callable[[], bool]) -> bool:
        """Run the jobs, `concurrency` at a time (so at most that many parts in memory); the
        first error cancels the rest. Returns True when should_stop() ended it early."""
        limit = self.settings.concurrency
        with ThreadPoolExecutor(limit, thread_name_prefix="offsite") as pool:
            running: set[Future[None]] = set()
            try:
                for job in jobs:
                    while len(running) >= limit:
                        finished, running = wait(running, return_when=FIRST_COMPLETED)
                        for f in finished:
                            f.result()
                    # asked once a slot is free, just before the job starts: asked before the
                    # wait, one more part went out after the stop (a part's time at max_rate)
                    if should_stop():
                        wait(running)
                        for f in running:
                            f.result()
                        return True
                    running.add(pool.submit(job))
                finished, _ = wait(running)
                for f in finished:
                    f.result()
            except BaseException:
                for f in running:
                    f.cancel()
                raise
        return False

    def _send_object(self, source: Source, piece: _Piece) -> int:
        """One object: a file's bytes, an age file of them, or an age file of one chunk."""
        key = self.bucket.key(object_name(piece.name))
        entry, part = piece.entry, self.settings.part_size
        if not self.settings.encrypted:
            if entry.size <= part:
                with source.open(entry) as reader:
                    return self.bucket.put_bytes(key, reader.read(), sha256=entry.sha256)
            return self.bucket.put_resumable(key, entry.size, lambda: source.open(entry))
        to = self.recipients()
        if piece.length <= part:
            with source.open(entry, piece.offset, piece.length) as reader:
                return self.bucket.put_bytes(key, crypto.encrypt_bytes(reader.read(), to))

        def fill(writer: Any) -> None:
            with source.open(entry, piece.offset, piece.length) as reader:
                crypto.encrypt_stream(reader, writer, to)

        return self.bucket.put_stream(key, fill)

    # -- reading back ----------------------------------------------------------------------

    def _read_file(
        self, manifest: Manifest, f: ManifestFile, out: BinaryIO | None
    ) -> tuple[str, int]:
        """Download a file's object, or its chunks in order, into out (or nowhere), hashing the
        plaintext: (sha256, size)."""
        writer = _HashingWriter(out)
        for name in f.objects():
            key = self.bucket.key(object_name(name))
            body = self.bucket.get_stream(key)
            try:
                try:
                    if manifest.encrypted:
                        crypto.decrypt_stream(
                            body, writer, self.identities(), f"object {key} ({f.path})"
                        )
                    else:
                        while chunk := body.read(CHUNK):
                            writer.write(chunk)
                except Exception:
                    if body.broken is not None:
                        # the connection broke mid-body: no damage (age's reader says
                        # "decryption error" for a read that failed under it)
                        raise body.broken from None
                    raise
            except Unreachable:
                raise
            except NotOurs:
                raise  # not damage: encrypted to other keys (encrypt_to changed since)
            except OffsiteError as exc:
                raise IntegrityError(str(exc)) from None
            except _LocalWrite:
                raise
            except OSError as exc:
                if manifest.encrypted and str(exc) == "decryption error":
                    # pyrage's word for ciphertext that does not authenticate: cut or changed
                    raise IntegrityError(
                        f"{self.bucket.where}: {self._objects_of(f)} (for {f.path} of backup "
                        f"{manifest.id}) is damaged: its age ciphertext is cut short or changed"
                    ) from None
                raise self.bucket.error(exc, f"get {key}") from None
            except Exception as exc:
                raise self.bucket.error(exc, f"get {key}") from None
            finally:
                body.close()
        return writer.digest.hexdigest(), writer.bytes

    def _objects_of(self, f: ManifestFile) -> str:
        keys = [self.bucket.key(object_name(n)) for n in f.objects()]
        if len(keys) == 1:
            return f"object {keys[0]}"
        return f"the {len(keys)} chunks {keys[0]} …"

    def _check(self, manifest: Manifest, f: ManifestFile, got: tuple[str, int]) -> None:
        sha, size = got
        if sha != f.sha256 or size != f.size:
            raise IntegrityError(
                f"{self.bucket.where}: {self._objects_of(f)} (for {f.path} of backup {manifest.id}) "
                f"has sha256 {sha[:16]}… and {size} bytes; the manifest says {f.sha256[:16]}… "
                f"and {f.size} bytes"
            )

    def fetch(self, ref: ManifestRef | str, dest_dir: Path, *, tree: bool = False) -> Fetched:
        """Download a backup into dest_dir: a cold archive rebuilt byte for byte (its sha256
        checked against the record's), else the files as a tree. Every object is hashed."""
        manifest = self.manifest(ref, fresh=True)
        target = dest_dir / manifest.name
        if target.exists():
            raise OffsiteError(f"{target}: exists already; not overwritten")
        if manifest.layout == "tar" and manifest.rebuild == "bytes" and not tree:
            return self._rebuild_tar(manifest, target)
        return self._rebuild_tree(manifest, target)

    def _rebuild_tar(self, manifest: Manifest, target: Path) -> Fetched:
        partial = target.with_name(target.name + ".partial")
        whole = _HashingWriter(None)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        _FETCHING.add(partial)
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as out:

                class Both:
                    def write(self, data: bytes) -> int:
                        whole.write(data)
                        try:
                            return out.write(data)
                        except OSError as exc:
                            raise _LocalWrite(exc) from None

                both: Any = Both()
                for f in manifest.files:
                    if f.type != "file":
                        continue
                    both.write(base64.b64decode(f.lead))
                    self._check(manifest, f, self._read_file(manifest, f, both))
                both.write(base64.b64decode(manifest.trailer))
                out.flush()
                os.fsync(out.fileno())
            if whole.digest.hexdigest() != manifest.sha256:
                raise IntegrityError(
                    f"{self.bucket.where}: backup {manifest.id}: the rebuilt archive has sha256 "
                    f"{whole.digest.hexdigest()[:16]}…, its record says {manifest.sha256[:16]}…"
                )
            os.replace(partial, target)
        except (_LocalWrite, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise _local_failure(exc, target) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            _FETCHING.discard(partial)
        return Fetched(target, "bytes", whole.bytes)

    def _rebuild_tree(self, manifest: Manifest, target: Path) -> Fetched:
        # Checked when the manifest was read too; here again because a clash would otherwise
        # surface as a local write error ("File exists") blaming this host's disk.
        wrong = tree_problem((f.path, f.type) for f in manifest.files)
        if wrong is not None:
            raise IntegrityError(
                f"backup {manifest.id}: {wrong} in its manifest, which is not consistent; "
                "nothing fetched"
            )
        partial = target.with_name(target.name + ".partial")
        if partial.is_dir() and not partial.is_symlink():
            # an interrupted fetch's (fetches run under the backup lock: no one else's)
            shutil.rmtree(partial)
        total = 0
        partial.mkdir(mode=0o700)
        _FETCHING.add(partial)
        try:
            dirs: list[tuple[Path, ManifestFile]] = []
            for f in manifest.files:
                rel = PurePosixPath(f.path)
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise IntegrityError(
                        f"backup {manifest.id}: unsafe path {f.path!r} in its manifest"
                    )
                path = partial.joinpath(*rel.parts)
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if f.type == "dir":
                    path.mkdir(exist_ok=True, mode=0o700)
                    dirs.append((path, f))
                elif f.type == "symlink":
                    link = PurePosixPath(f.link)
                    if link.is_absolute() or ".." in link.parts:
                        raise IntegrityError(
                            f"backup {manifest.id}: symlink {f.path!r} leaves the tree"
                        )
                    os.symlink(f.link, path)
                else:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    with os.fdopen(fd, "wb", buffering=CHUNK) as out:
                        self._check(manifest, f, self._read_file(manifest, f, out))
                        out.flush()
                        os.fsync(out.fileno())
                    os.chmod(path, restored_mode(f.mode, is_dir=False))
                    os.utime(path, (f.mtime, f.mtime))
                    total += f.size
            for path, f in reversed(dirs):
                os.chmod(path, restored_mode(f.mode, is_dir=True))
                os.utime(path, (f.mtime, f.mtime))
            if manifest.layout == "dir" and listing_sha256(manifest.entries()) != manifest.sha256:
                raise IntegrityError(
                    f"backup {manifest.id}: its files do not give the record's digest"
                )
            os.replace(partial, target)
        except (_LocalWrite, OSError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise _local_failure(exc, target) from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        finally:
            _FETCHING.discard(partial)
        notes = (
            []
            if manifest.layout == "dir"
            else [
                f"{target}: the files of archive {manifest.name}, each checked against its sha256 "
                "(the archive itself could not be rebuilt byte for byte)"
            ]
        )
        return Fetched(target, "tree", total, notes)

    def verify(
        self,
        ref: ManifestRef | str,
        *,
        read_percent: float = 0.0,
        seed: int | None = None,
        read: set[str] | None = None,
        listed: Mapping[str, int] | None = None,
    ) -> VerifyResult:
        """Every object the backup needs is there (and of its size, when not encrypted);
        read_percent of them (at least one when > 0) are downloaded and hashed. read: objects
        already downloaded and found good in this check (backups share them): not again.
        listed: the objects as listed once for a check of many backups (else listed here)."""
        manifest = self.manifest(ref, fresh=True)
        present = self.objects_in_place() if listed is None else listed
        by_object: dict[str, ManifestFile] = {}  # every object (chunks too) → its file
        by_file: dict[str, ManifestFile] = {}  # one per content, by its first object
        for f in manifest.files:
            for name in f.objects():
                by_object.setdefault(name, f)
            if f.objects():
                by_file.setdefault(f.objects()[0], f)
        result = VerifyResult(
            manifest.id, len(by_object), 0, 0, job=manifest.job, parent=manifest.parent
        )
        # one content, one object: files naming the same object must agree on what it holds
        # (only one of them is downloaded), and an unencrypted object is named by its sha256
        for f in manifest.files:
            first = f.objects()[0] if f.objects() else None
            if first is None:
                continue
            other = by_file[first]
            if (other.sha256, other.size) != (f.sha256, f.size):
                result.errors.append(
                    f"{f.path} and {other.path} of backup {manifest.id} name the same object "
                    f"{first[:16]}… but not the same content: the manifest is not consistent"
                )
            elif not manifest.encrypted and f.object != f.sha256:
                result.errors.append(
                    f"{f.path} of backup {manifest.id}: object {f.object[:16]}… is not named by "
                    f"its sha256 {f.sha256[:16]}…: the manifest is not consistent"
                )
        for name, f in sorted(by_object.items()):
            size = present.get(name)
            if size is None:
                result.bad[name] = (
                    f"object {self.bucket.key(object_name(name))} ({f.path}) is missing"
                )
                result.errors.append(result.bad[name])
            elif not manifest.encrypted and size != f.size:
                result.bad[name] = (
                    f"object {self.bucket.key(object_name(name))} ({f.path}) has {size} bytes, "
                    f"the manifest says {f.size}"
                )
                result.errors.append(result.bad[name])
        if read_percent > 0 and by_file:
            # files, not objects: a chunk alone has no hash of its own to check
            count = min(len(by_file), max(1, math.ceil(len(by_file) * read_percent / 100)))
            sample = random.Random(seed).sample(sorted(by_file), count)
            for first in sample:
                f = by_file[first]
                if any(name not in present for name in f.objects()):
                    continue
                if read is not None and all(name in read for name in f.objects()):
                    result.checked += len(f.objects())
                    result.reread.extend(f.objects())
                    continue
                try:
                    got = self._read_file(manifest, f, None)
                    self._check(manifest, f, got)
                except NotOurs as exc:
                    # readable by other keys, perhaps: never noted as damage, or a repair would
                    # write over what those keys read
                    result.errors.append(str(exc))
                    continue
                except (IntegrityError, NotFound) as exc:
                    # NotFound: listed, gone when read (removed since: by a prune beside us,
                    # which the caller tells apart, or by anything else: damage, as missing)
                    result.errors.append(str(exc))
                    # which chunk of a file is wrong cannot be told: all of them are sent again
                    result.bad.update(dict.fromkeys(f.objects(), str(exc)))
                    continue
                result.checked += len(f.objects())
                result.bytes_read += got[1]
                result.reread.extend(f.objects())
                if read is not None:
                    read.update(f.objects())
        return result

    def verify_chain(
        self,
        ref: ManifestRef | str,
        done: dict[str, VerifyResult],
        *,
        refs: Mapping[str, ManifestRef] | None = None,
        listed: Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> VerifyResult:
        """verify() of a backup and of each earlier link of its chain not in done (each result
        put there, for the caller to note and to reuse): an increment restores only as well
        as its earlier links, so one whose link is not in the bucket, does not read or fails
        its own check fails too (result.chain says why), as a local verify of it does.
        refs: the manifests listed (id → ref), else listed here."""
        refs = {r.id: r for r in self.manifests()} if refs is None else refs
        listed = self.objects_in_place() if listed is None else listed
        result = done.get(ref if isinstance(ref, str) else ref.id)
        if result is None:
            result = self.verify(
                refs.get(ref, ref) if isinstance(ref, str) else ref, listed=listed, **kwargs
            )
            done[result.id] = result
        parents: dict[str, str | None] = {result.id: result.parent}
        unreadable: dict[str, str] = {}
        at = result
        while at.parent is not None and at.parent not in parents:
            link = done.get(at.parent)
            if link is None and at.parent in refs:
                try:
                    link = self.verify(refs[at.parent], listed=listed, **kwargs)
                except (BadManifest, NotOurs) as exc:
                    unreadable[at.parent] = str(exc)
                    break
                done[link.id] = link
            if link is None:
                break
            parents[link.id] = link.parent
            if link.errors:
                result.chain = (
                    f"the earlier link {link.id} of its chain failed this check "
                    f"({len(link.errors)} errors; the first: {link.errors[0]})"
                )
                return result
            at = link
        result.chain = chain_gap(result.id, parents, unreadable)
        return result

    # -- retention -------------------------------------------------------------------------

    def prune(
        self,
        keep: set[str],
        *,
        now: float | None = None,
        dry_run: bool = False,
        unreadable: dict[str, str] | None = None,
        judged: Iterable[ManifestRef] | None = None,
        retiring: Callable[[list[str]], None] = lambda _ids: None,
    ) -> PruneResult:
        """Delete the manifests not in keep (and not a chain parent of a kept one), then every
        object below the prefix that no remaining manifest names and that is older than grace;
        abort multipart uploads older than grace. judged: the manifests keep was decided over
        (else listed here): only those can be deleted, never one a later listing adds.

        Both listings are checked against the manifests known to be there (manifests()): one
        that misses any raises before anything is deleted on its strength. retiring: told the
        backup ids whose manifests are about to be deleted, before they are (a prune cut short
        after that, by a kill or an error in the mark or sweep, is then resumed, not undone)."""
        now = time.time() if now is None else now
        result = PruneResult(unreadable=dict(unreadable or {}))  # the caller's found already
        refs = {r.id: r for r in (self.manifests() if judged is None else judged)}
        kept: dict[str, Manifest] = {}
        unreadable = result.unreadable
        todo = [i for i in keep if i in refs]
        while todo:  # a kept increment keeps its parents, whatever the caller chose
            bid = todo.pop()
            if bid in kept or refs[bid].key in unreadable:
                continue
            for _, manifest in self.readable([refs[bid]], unreadable):
                kept[bid] = manifest
                parent = manifest.parent
                if parent and parent in refs and parent not in kept:
                    todo.append(parent)
        # what is not kept goes, but for a manifest that cannot be read (whose backup is
        # unknown): never deleted by a rule it cannot be judged by
        candidates = [r for i, r in refs.items() if i not in kept and r.key not in unreadable]
        # never a manifest another writer sent (a host sharing the prefix by mistake)
        doomed = [ref for ref, m in self.readable(candidates, unreadable) if self.owns(m)]
        result.manifests_deleted = [r.id for r in doomed]
        if not dry_run and doomed:
            retiring(result.manifests_deleted)
            self.bucket.delete([r.key for r in doomed])
            for ref in doomed:
                self._known.pop(ref.id, None)
        # mark: what the manifests now in the bucket name (listed again: one may have come
        # since); every manifest not deleted just now must be in it, or it sweeps nothing
        for ref in refs.values():
            if ref.id not in result.manifests_deleted or dry_run:
                self._known.setdefault(ref.id, (ref.job, "listed before"))
        referenced: set[str] = set()
        for ref in self.manifests():
            if ref.id in kept:
                referenced |= kept[ref.id].objects()
            else:
                for _, manifest in self.readable([ref], unreadable):
                    referenced |= manifest.objects()
        if unreadable:
            log.get().warning(
                "offsite.sweep_skipped",
                reason="a manifest that cannot be read may name any object: none is deleted",
                unreadable=sorted(unreadable),
            )
            return result
        sweep: list[Listed] = []
        for item in self.bucket.ls("objects"):
            name = self._object_at(item.key)
            if name is None or name in referenced:
                continue
            if now - item.modified < self.settings.grace:
                result.objects_in_grace += 1
                continue
            sweep.append(item)
        result.objects_deleted = len(sweep)
        result.bytes_freed = sum(i.size for i in sweep)
        if not dry_run and sweep:
            self.bucket.delete([i.key for i in sweep])
            if self._present is not None:
                for item in sweep:
                    self._present.pop(PurePosixPath(item.key).name, None)
        for key, upload_id, started in self.bucket.uploads():
            if self._object_at(key) is not None and now - started >= self.settings.grace:
                result.uploads_aborted += 1
                if not dry_run:
                    self.bucket.abort(key, upload_id)
        return result
