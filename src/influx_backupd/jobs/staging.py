"""The staging tree of a staged cold backup: a mirror of influxd's dirs on the storage filesystem.

Phase 1 syncs it while influxd runs (files may change or vanish: tolerated), phase 2 syncs it
again while influxd is stopped (only what changed since; errors are errors), phase 3 tars it.

A file is copied again when its source differs from what the manifest says we copied (size,
mtime_ns, inode, device) or when the staging copy no longer has the size and mtime we gave it.
The manifest is never trusted blindly: it is dropped after a reboot (page-cache contents of a
copy may not have reached the disk), and a copy whose source was modified just before the copy
is copied again next time (a timestamp tick can hide a second write).

Copies are kernel-side: os.copy_file_range (a reflink where the filesystem can), else sendfile;
the holes of a sparse file (influxd's _series segments) stay holes unless keep_holes is off.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from influx_backupd.core import log
from influx_backupd.core.atomic import read_ours_text, replace_json
from influx_backupd.core.jsontext import loads_json
from influx_backupd.store.sparse import copy_keeping_holes, copy_whole

MANIFEST = ".manifest.json"
MANIFEST_VERSION = 2  # 2: the staged copy's inode and ctime
# A copy of a file modified within this long before it is not trusted next time: a second
# write in the same timestamp tick would not change its mtime. While influxd runs, generously;
# while it is stopped nothing writes until after the sync, so a few timestamp ticks suffice.
RACY_NS = 2_000_000_000
RACY_STOPPED_NS = 50_000_000

# relative member name → [size, mtime_ns, ino, dev, racy]
Entries = dict[str, list[int]]


class SyncStopped(Exception):
    """sync's stop() said so between two files (the daemon is stopping)."""


@dataclass
class SyncStats:
    files: int = 0  # regular files in the source
    copied: int = 0
    copied_bytes: int = 0
    removed: int = 0  # staging entries whose source is gone
    vanished: int = 0  # source entries gone while we looked (phase 1 only)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        return {
            "files": self.files,
            "copied": self.copied,
            "copied_bytes": self.copied_bytes,
            "removed": self.removed,
            "vanished": self.vanished,
            "seconds": round(self.seconds, 3),
        }


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _vanished(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE)


def _not_own_file(path: str) -> bool:
    """path is there and is no regular file of the tree's alone (a link, a dir, a file with
    another name elsewhere)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_nlink > 1


def _remove(path: str | Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@dataclass
class Stager:
    """Keeps root/<prefix> equal to each source (a dir or a single file)."""

    root: Path
    sources: list[tuple[str, Path]]
    _old: Entries = field(default_factory=dict)
    _new: Entries = field(default_factory=dict)
    _can_chown: bool = True
    _racy_ns: int = RACY_NS
    _stop: Callable[[], bool] | None = None
    keep_holes: bool = True

    def __post_init__(self) -> None:
        self.sources = list(self.sources)  # its own: add_sources changes it

    def add_sources(self, added: list[tuple[str, Path]]) -> None:
        """Sources that appeared since the last pass (influxd makes wal/ at its first write),
        before the last one (influxdb.conf): staged by the next pass, what is staged of the
        others kept (a manifest of other sources would have the next pass copy everything)."""
        entries = self._load() if (self.root / MANIFEST).exists() else {}
        self.sources[-1:-1] = added
        if entries:
            self._save(entries)

    def archive_sources(self) -> list[tuple[str, Path]]:
        """The (member prefix, path) list for write_archive: the same prefixes, staged."""
        return [(prefix, self.root / prefix) for prefix, _src in self.sources]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- manifest ---------------------------------------------------------------------------
    def _load(self) -> Entries:
        try:
            raw = loads_json(read_ours_text(self.root / MANIFEST))
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        # Each reason to copy everything again (in the pre-copy, while influxd serves), said:
        # on a big server that first run reads the whole data set
        why = (
            "made by another release (its format changed)"
            if raw.get("version") != MANIFEST_VERSION
            else "made before the host last booted (copies may not have reached the disk)"
            if raw.get("boot_id") != boot_id()
            else "made for other source dirs"
            if raw.get("sources") != {p: str(s) for p, s in self.sources}
            # copies made with the other holes setting hold their holes, or zeros, wrongly
            else "made with the other holes setting"
            if raw.get("holes") != self.keep_holes
            else None
        )
        if why is not None:
            log.get().info("staging.copied_again", path=str(self.root), reason=why)
            return {}
        entries = raw.get("entries")
        return entries if isinstance(entries, dict) else {}

    def _save(self, entries: Entries) -> None:
        doc = {
            "version": MANIFEST_VERSION,
            "boot_id": boot_id(),
            "sources": {p: str(s) for p, s in self.sources},
            "holes": self.keep_holes,
            "entries": entries,
        }
        # not durable: after a power loss a missing manifest only costs a full sync
        replace_json(self.root / MANIFEST, doc, durable=False)

    # -- sync -------------------------------------------------------------------------------
    def sync(self, *, tolerant: bool, stop: Callable[[], bool] | None = None) -> SyncStats:
        """One pass. tolerant: influxd is running, so sources may change or vanish under us.
        stop: looked at before each file is copied; when true, SyncStopped (what was copied
        is kept in the manifest for the next pass)."""
        started = time.monotonic()
        for path in (self.root.parent, self.root):
            if path.is_symlink():  # its target is not ours to fill, nor to empty of the rest
                path.unlink()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._old = self._load()
        self._new = {}
        self._racy_ns = RACY_NS if tolerant else RACY_STOPPED_NS
        self._stop = stop
        try:
            stats = self._sync_all(tolerant)
        except SyncStopped:
            # entries not reached keep what they said: each is checked against both sides
            self._save({**self._old, **self._new})
            raise
        finally:
            self._stop = None
        stats.seconds = time.monotonic() - started
        return stats

    def _sync_all(self, tolerant: bool) -> SyncStats:
        stats = SyncStats()
        wanted = {prefix for prefix, _src in self.sources} | {MANIFEST}
        with os.scandir(self.root) as listing:
            for entry in listing:
                if entry.name not in wanted:
                    _remove(entry.path)
        for prefix, src in self.sources:
            # The configured dir or file itself is followed (data -> /mnt/big/data): its
            # contents are staged under prefix, as write_archive archives a direct copy.
            # A link staged as a link would be archived through to the live dir, or as a
            # link that restore refuses. Links below it stay links.
            try:
                real = Path(os.path.realpath(src))
                st = os.lstat(real)
            except OSError as exc:
                if not (tolerant and _vanished(exc)):
                    raise
                stats.vanished += 1
                continue
            self._sync_entry(str(real), str(self.root / prefix), prefix, st, stats, tolerant)
        self._save(self._new)
        return stats

    # The walk below goes by str paths: in the stopped pass, on thousands of shard files,
    # pathlib's parsing cost as much as the system calls (bench/staging_window.py)
    def _sync_entry(
        self, src: str, dst: str, name: str, st: os.stat_result, stats: SyncStats, tolerant: bool
    ) -> None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._sync_dir(src, dst, name, st, stats, tolerant)
        elif stat.S_ISREG(mode):
            stats.files += 1
            self._sync_file(src, dst, name, st, stats, tolerant)
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(src)
            except OSError as exc:
                if not (tolerant and _vanished(exc)):
                    raise
                stats.vanished += 1
                return
            try:
                same = os.readlink(dst) == target
            except OSError:
                same = False
            if not same:
                if os.path.lexists(dst):
                    _remove(dst)
                os.symlink(target, dst)
        # sockets, fifos and devices: the archive skips them, so does the staging tree

    def _sync_dir(
        self, src: str, dst: str, name: str, st: os.stat_result, stats: SyncStats, tolerant: bool
    ) -> None:
        try:
            with os.scandir(src) as listing:
                children = {e.name: e for e in listing}
        except OSError as exc:
            if not (tolerant and _vanished(exc)):
                raise
            stats.vanished += 1
            return
        try:
            there: os.stat_result | None = os.lstat(dst)
        except FileNotFoundError:
            there = None
        if there is not None and not stat.S_ISDIR(there.st_mode):  # a file, or a link
            _remove(dst)
            there = None
        if there is None:
            os.mkdir(dst, 0o700)
        with os.scandir(dst) as listing:
            for entry in listing:
                if entry.name not in children:
                    _remove(entry.path)
                    stats.removed += 1
        for child_name in sorted(children):
            child = children[child_name]
            try:
                child_st = child.stat(follow_symlinks=False)
            except OSError as exc:
                if not (tolerant and _vanished(exc)):
                    raise
                stats.vanished += 1
                continue
            self._sync_entry(
                child.path,
                f"{dst}/{child_name}",
                f"{name}/{child_name}",
                child_st,
                stats,
                tolerant,
            )
        # Last, after the entries inside changed: creating and removing them moves the mtime.
        # One lstat where the three writes are already so (every unchanged shard dir)
        have = os.lstat(dst)
        if not (
            have.st_mtime_ns == st.st_mtime_ns
            and stat.S_IMODE(have.st_mode) == stat.S_IMODE(st.st_mode)
            and (not self._can_chown or (have.st_uid, have.st_gid) == (st.st_uid, st.st_gid))
        ):
            self._copy_meta(dst, st, fd=None)

    def _unchanged(self, dst: str, name: str, st: os.stat_result) -> bool:
        old = self._old.get(name)
        if old is None or old[4] or old[:4] != [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]:
            return False
        try:
            have = os.lstat(dst)
        except OSError:
            return False
        # the staged copy as it was made: a byte changed in it since (its mtime set back by
        # hand, a restore of the tree) changes its ctime, which nobody can set back
        return (
            stat.S_ISREG(have.st_mode)
            and have.st_size == st.st_size
            and have.st_mtime_ns == st.st_mtime_ns
            and old[5:7] == [have.st_ino, have.st_ctime_ns]
        )

    def _sync_file(
        self, src: str, dst: str, name: str, st: os.stat_result, stats: SyncStats, tolerant: bool
    ) -> None:
        if self._unchanged(dst, name, st):
            self._new[name] = self._old[name]
            return
        if self._stop is not None and self._stop():
            raise SyncStopped(name)
        try:
            sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            if not (tolerant and _vanished(exc)):
                raise
            stats.vanished += 1
            return
        try:
            before = os.fstat(sfd)  # what we copy is this inode, whatever the name points at now
            now_ns = time.time_ns()
            # written in place only when it is a file of the tree's own: a hard link to it (a
            # file outside the tree) would be overwritten and given the source's owner
            if _not_own_file(dst):
                _remove(dst)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
            dfd = os.open(dst, flags, 0o600)
            try:
                if self.keep_holes:
                    reached, copied = copy_keeping_holes(sfd, dfd)
                else:
                    reached = copied = copy_whole(sfd, dfd)
                self._copy_meta(dst, before, fd=dfd)
                staged = os.fstat(dfd)
            finally:
                os.close(dfd)
            after = os.fstat(sfd)
        finally:
            os.close(sfd)
        racy = (
            before.st_mtime_ns >= now_ns - self._racy_ns
            or after.st_size != before.st_size
            or after.st_mtime_ns != before.st_mtime_ns
            or reached != before.st_size
        )
        self._new[name] = [
            before.st_size,
            before.st_mtime_ns,
            before.st_ino,
            before.st_dev,
            int(racy),
            staged.st_ino,
            staged.st_ctime_ns,
        ]
        stats.copied += 1
        stats.copied_bytes += copied

    def _copy_meta(self, dst: str, st: os.stat_result, fd: int | None) -> None:
        """Mode, owner and mtime as the source has them, so tar headers match a direct archive."""
        perm = stat.S_IMODE(st.st_mode)
        if self._can_chown:
            try:
                if fd is not None:
                    os.fchown(fd, st.st_uid, st.st_gid)
                else:
                    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
            except PermissionError:
                # not root: the archive gets our owner; nothing else differs
                self._can_chown = False
        if fd is not None:
            os.fchmod(fd, perm)
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            os.chmod(dst, perm)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
