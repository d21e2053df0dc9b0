"""The staging sync on real files: what it copies, what it removes, what it tolerates."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from influx_backupd.jobs.staging import MANIFEST, Stager
from influx_backupd.store.archive import COLD_TOPS, check_written, write_archive

OLD = 1_600_000_000_000_000_000  # a settled mtime (2020), far outside the racy window


def settle(*paths: Path) -> None:
    for path in paths:
        os.utime(path, ns=(OLD, OLD))


def make_server(root: Path) -> list[tuple[str, Path]]:
    shard = root / "data" / "db" / "autogen" / "1"
    shard.mkdir(parents=True)
    (root / "meta").mkdir()
    (root / "wal" / "db" / "autogen" / "1").mkdir(parents=True)
    (root / "meta" / "meta.db").write_bytes(b"meta" * 100)
    (shard / "000000001-000000001.tsm").write_bytes(os.urandom(300_000))
    (shard / "000000002-000000001.tsm").write_bytes(os.urandom(5000))
    (root / "wal" / "db" / "autogen" / "1" / "_00001.wal").write_bytes(os.urandom(777))
    (root / "influxdb.conf").write_text("[meta]\n")
    settle(*[p for p in root.rglob("*") if p.is_file()])
    return [
        ("meta", root / "meta"),
        ("data", root / "data"),
        ("wal", root / "wal"),
        ("influxdb.conf", root / "influxdb.conf"),
    ]


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path → content (None for dirs), the manifest left out."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel == MANIFEST:
            continue
        out[rel] = path.read_bytes() if path.is_file() else None
    return out


@pytest.fixture
def server(tmp_path: Path) -> tuple[Path, list[tuple[str, Path]], Stager]:
    src = tmp_path / "src"
    sources = make_server(src)
    return src, sources, Stager(tmp_path / "storage" / ".staging" / "job", sources)


def test_first_sync_copies_everything_with_mode_and_mtime_then_nothing(
    server: tuple[Path, list[tuple[str, Path]], Stager],
) -> None:
    src, _sources, stager = server
    os.chmod(src / "meta" / "meta.db", 0o640)
    first = stager.sync(tolerant=False)
    assert first.copied == first.files == 5
    assert tree(stager.root) == tree(src)
    for rel in ("meta/meta.db", "data/db/autogen/1/000000001-000000001.tsm", "influxdb.conf"):
        a, b = os.stat(src / rel), os.stat(stager.root / rel)
        assert (a.st_mode, a.st_mtime_ns, a.st_uid) == (b.st_mode, b.st_mtime_ns, b.st_uid), rel
    again = stager.sync(tolerant=False)
    assert (again.copied, again.copied_bytes, again.removed) == (0, 0, 0)


def test_changes_by_size_mtime_or_inode_are_copied_and_deletions_removed(
    server: tuple[Path, list[tuple[str, Path]], Stager],
) -> None:
    src, _sources, stager = server
    stager.sync(tolerant=False)
    shard = src / "data" / "db" / "autogen" / "1"
    wal = src / "wal" / "db" / "autogen" / "1" / "_00001.wal"
    # grown (size)
    with open(wal, "ab") as fh:
        fh.write(b"more")
    settle(wal)
    # rewritten in place, same size, new mtime
    meta = src / "meta" / "meta.db"
    meta.write_bytes(b"ATEM" * 100)
    os.utime(meta, ns=(OLD + 10**9, OLD + 10**9))
    # replaced by another file of the same size and mtime: only the inode tells (compaction)
    tsm = shard / "000000002-000000001.tsm"
    replacement = shard / "tmp"
    replacement.write_bytes(os.urandom(5000))
    settle(replacement)
    os.replace(replacement, tsm)
    # gone: a file and a whole shard dir; new: a file in a new dir
    (shard / "000000001-000000001.tsm").unlink()
    (src / "data" / "db" / "autogen" / "2").mkdir()
    (src / "data" / "db" / "autogen" / "2" / "000000001-000000001.tsm").write_bytes(b"new")
    settle(src / "data" / "db" / "autogen" / "2" / "000000001-000000001.tsm")

    stats = stager.sync(tolerant=False)
    assert stats.copied == 4
    assert stats.copied_bytes == (777 + 4) + 400 + 5000 + 3
    assert stats.removed == 1
    assert tree(stager.root) == tree(src)

    import shutil

    shutil.rmtree(src / "data" / "db" / "autogen" / "2")
    stats = stager.sync(tolerant=False)
    assert stats.copied == 0 and stats.removed == 1
    assert tree(stager.root) == tree(src)


def test_files_and_dirs_vanishing_during_a_tolerant_sync_are_skipped_strict_raises(
    server: tuple[Path, list[tuple[str, Path]], Stager],
) -> None:
    src, sources, stager = server

    class Compacting(Stager):
        """Deletes each source file just before it is copied, as a compaction would."""

        def _sync_file(self, src_file: str, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            if src_file.endswith(".tsm"):
                os.unlink(src_file)
            super()._sync_file(src_file, *args, **kwargs)  # type: ignore[arg-type]

    racing = Compacting(stager.root, sources)
    stats = racing.sync(tolerant=True)
    assert stats.vanished == 2
    assert not list(stager.root.rglob("*.tsm"))
    assert (stager.root / "meta" / "meta.db").read_bytes() == b"meta" * 100

    (src / "data" / "db" / "autogen" / "1" / "000000003-000000001.tsm").write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        Compacting(stager.root, sources).sync(tolerant=False)

    # a whole shard dir removed (retention) while listing: the dir vanishes under scandir
    class Retention(Stager):
        def _sync_dir(self, src_dir: str, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            if os.path.basename(src_dir) == "1":
                import shutil

                shutil.rmtree(src_dir)
            super()._sync_dir(src_dir, *args, **kwargs)  # type: ignore[arg-type]

    stats = Retention(stager.root, sources).sync(tolerant=True)
    assert stats.vanished >= 1
    # the next pass, with nothing racing, makes the staging tree exact again
    stager.sync(tolerant=False)
    assert tree(stager.root) == tree(src)


def test_a_staging_tree_that_was_tampered_with_is_not_trusted(
    server: tuple[Path, list[tuple[str, Path]], Stager],
) -> None:
    src, _sources, stager = server
    stager.sync(tolerant=False)
    staged = stager.root / "data" / "db" / "autogen" / "1" / "000000002-000000001.tsm"
    staged.write_bytes(b"truncated")
    (stager.root / "wal" / "db" / "autogen" / "1" / "_00001.wal").unlink()
    (stager.root / "data" / "stray").write_text("not from the source")
    stats = stager.sync(tolerant=False)
    assert stats.copied == 2
    assert tree(stager.root) == tree(src)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"boot_id": "another-boot"}, "made before the host last booted"),
        ({"version": 1}, "made by another release"),  # an upgrade (the upgrade audit)
    ],
)
def test_a_manifest_from_another_boot_or_release_means_everything_is_copied_again_said(
    server: tuple[Path, list[tuple[str, Path]], Stager], change: dict[str, object], said: str
) -> None:
    """Said, with why: the first staged run after an upgrade read the whole data set again
    with nothing in the log to tell why."""
    _src, _sources, stager = server
    stager.sync(tolerant=False)
    manifest = stager.root / MANIFEST
    doc = json.loads(manifest.read_text())
    doc.update(change)
    manifest.write_text(json.dumps(doc))
    with capture_logs() as events:
        assert stager.sync(tolerant=False).copied == 5
    [event] = [e for e in events if e["event"] == "staging.copied_again"]
    assert event["reason"].startswith(said), event


def test_a_file_modified_just_before_its_copy_is_copied_again_next_time(
    server: tuple[Path, list[tuple[str, Path]], Stager],
) -> None:
    src, _sources, stager = server
    wal = src / "wal" / "db" / "autogen" / "1" / "_00001.wal"
    wal.write_bytes(b"fresh")  # mtime: now; a second write in the same tick would not show
    assert stager.sync(tolerant=True).copied == 5
    assert stager.sync(tolerant=False).copied == 1  # racy: copied again
    settle(wal)
    assert stager.sync(tolerant=False).copied == 1  # its mtime changed
    assert stager.sync(tolerant=False).copied == 0


def _members(archive: Path) -> list[tuple[str, str, int, float, int, int, str | None]]:
    out = []
    with tarfile.open(archive) as tar:
        for info in tar:
            digest = None
            if info.isreg():
                stream = tar.extractfile(info)
                assert stream is not None
                digest = hashlib.sha256(stream.read()).hexdigest()
            out.append(
                (info.name, info.type.decode(), info.mode, info.mtime, info.uid, info.gid, digest)
            )
    return out


def test_an_archive_of_the_staging_tree_equals_one_of_the_source(
    tmp_path: Path, server: tuple[Path, list[tuple[str, Path]], Stager]
) -> None:
    src, sources, stager = server
    stager.sync(tolerant=True)
    (src / "wal" / "db" / "autogen" / "1" / "_00002.wal").write_bytes(b"late")
    time.sleep(0.01)
    stager.sync(tolerant=False)
    direct = write_archive(tmp_path / "direct.tar", sources)
    staged = write_archive(tmp_path / "staged.tar", stager.archive_sources())
    assert _members(tmp_path / "direct.tar") == _members(tmp_path / "staged.tar")
    assert direct.sha256 == staged.sha256  # same headers, same data: the same bytes


def test_a_dir_whose_mode_owner_or_mtime_alone_changed_is_staged_as_it_is_now(
    tmp_path: Path, server: tuple[Path, list[tuple[str, Path]], Stager]
) -> None:
    """The stopped pass leaves a staged dir's metadata alone only when all of it is already
    the source's: each of mode, owner and mtime changed by itself still reaches the archive."""
    src, sources, stager = server
    stager.sync(tolerant=True)
    os.chmod(src / "data" / "db", 0o750)
    if os.geteuid() == 0:
        os.chown(src / "data" / "db" / "autogen", 4242, 4343)
    os.utime(src / "wal" / "db", ns=(OLD, OLD + 7_000_000_000))
    stager.sync(tolerant=False)
    write_archive(tmp_path / "direct.tar", sources)
    write_archive(tmp_path / "staged.tar", stager.archive_sources())
    assert _members(tmp_path / "direct.tar") == _members(tmp_path / "staged.tar")
    staged = os.lstat(stager.root / "data" / "db")
    assert stat.S_IMODE(staged.st_mode) == 0o750


def test_remove_deletes_the_tree(server: tuple[Path, list[tuple[str, Path]], Stager]) -> None:
    _src, _sources, stager = server
    stager.sync(tolerant=False)
    stager.remove()
    assert not stager.root.exists()


def test_configured_dirs_and_files_that_are_symlinks_are_staged_as_what_they_point_to(
    tmp_path: Path, server: tuple[Path, list[tuple[str, Path]], Stager]
) -> None:
    """data -> /mnt/big/data: staged (and archived) as a dir of its contents, byte for byte
    the archive of a direct copy."""
    src, _sources, _stager = server
    big = tmp_path / "big"
    big.mkdir()
    for name in ("data", "wal", "influxdb.conf"):
        (src / name).rename(big / name)
        (src / name).symlink_to(big / name)
    sources = make_server_sources(src)
    stager = Stager(tmp_path / "storage" / ".staging" / "job", sources)
    stager.sync(tolerant=True)
    stager.sync(tolerant=False)
    for name in ("data", "wal", "influxdb.conf"):
        assert not (stager.root / name).is_symlink(), name
    direct = write_archive(tmp_path / "direct.tar", sources)
    staged = write_archive(tmp_path / "staged.tar", stager.archive_sources())
    assert _members(tmp_path / "direct.tar") == _members(tmp_path / "staged.tar")
    assert direct.sha256 == staged.sha256
    check_written(staged, COLD_TOPS)


def make_server_sources(root: Path) -> list[tuple[str, Path]]:
    return [(name, root / name) for name in ("meta", "data", "wal", "influxdb.conf")]


def _holed(path: Path, data: bytes, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.truncate(size)
    settle(path)


def test_a_file_with_holes_is_staged_with_them_and_counted_by_its_data(
    server: tuple[Path, list[tuple[str, Path]], Stager],
) -> None:
    src, _sources, stager = server
    segment = src / "data" / "db" / "_series" / "00" / "0000"
    segment.parent.mkdir(parents=True)
    _holed(segment, b"SSEG\x01" + os.urandom(5000), 4 << 20)
    stats = stager.sync(tolerant=False)
    staged = stager.root / "data" / "db" / "_series" / "00" / "0000"
    assert staged.read_bytes() == segment.read_bytes()
    assert staged.stat().st_blocks * 512 < 1 << 20, "the staging copy kept the holes"
    # what was copied is the data, not the file's size (the run's window_bytes)
    assert stats.copied_bytes < 2 << 20, stats


def test_switching_holes_copies_every_file_again(
    server: tuple[Path, list[tuple[str, Path]], Stager],
) -> None:
    """A tree staged with holes filled would be archived with its zeros after a switch to
    keep (and the other way round): the manifest knows the setting, a switch starts over."""
    src, sources, stager = server
    holed = src / "data" / "db" / "big.bin"
    _holed(holed, b"x" * 4096, 8 << 20)
    filling = Stager(stager.root, sources, keep_holes=False)
    filling.sync(tolerant=False)
    staged = stager.root / "data" / "db" / "big.bin"
    assert staged.stat().st_blocks * 512 >= 8 << 20
    again = Stager(stager.root, sources, keep_holes=True).sync(tolerant=False)
    assert again.copied == again.files, again
    assert staged.stat().st_blocks * 512 < 1 << 20
    assert staged.read_bytes() == holed.read_bytes()


def test_a_staged_file_hard_linked_elsewhere_is_replaced_not_written_through(
    server: tuple[Path, list[tuple[str, Path]], Stager], tmp_path: Path
) -> None:
    """Audit F: a staged copy opened with O_TRUNC and written in place: a hard link to it from
    outside the tree (planted in the 0700 dir) had that outside file overwritten with the
    source's bytes and given its owner."""
    src, _sources, stager = server
    stager.sync(tolerant=False)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"not a backup")
    staged = stager.root / "meta" / "meta.db"
    staged.unlink()
    os.link(victim, staged)
    (src / "meta" / "meta.db").write_bytes(b"changed meta")
    settle(src / "meta" / "meta.db")
    os.utime(src / "meta" / "meta.db", ns=(OLD + 10**9, OLD + 10**9))
    stager.sync(tolerant=False)
    assert victim.read_bytes() == b"not a backup"
    assert staged.read_bytes() == b"changed meta" and staged.stat().st_nlink == 1


def test_a_staging_root_planted_as_a_link_to_another_dir_is_not_emptied(
    server: tuple[Path, list[tuple[str, Path]], Stager], tmp_path: Path
) -> None:
    """Audit F: .staging/JOB a symlink to another dir: a sync removed everything there but the
    names it stages. The link goes (only the link), a tree of its own is made."""
    src, _sources, stager = server
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.me").write_bytes(b"a user's file")
    stager.root.parent.mkdir(parents=True)
    stager.root.symlink_to(elsewhere)
    stager.sync(tolerant=False)
    assert (elsewhere / "keep.me").read_bytes() == b"a user's file"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.me"]
    assert not stager.root.is_symlink() and tree(stager.root) == tree(src)


def test_a_staged_copy_changed_with_its_mtime_set_back_is_copied_again(
    server: tuple[Path, list[tuple[str, Path]], Stager],
) -> None:
    """Audit F: a byte flipped in a staged TSM file and its mtime put back was trusted by size
    and mtime: the next backup archived the changed copy, ok, and a TSM file of an old shard
    (never rewritten) carried it into every backup after. The copy's ctime says it changed."""
    src, _sources, stager = server
    stager.sync(tolerant=False)
    rel = "data/db/autogen/1/000000001-000000001.tsm"
    staged = stager.root / rel
    before = staged.stat()
    data = bytearray(staged.read_bytes())
    data[1000] ^= 0xFF
    staged.write_bytes(bytes(data))
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = stager.sync(tolerant=False)
    assert again.copied == 1
    assert staged.read_bytes() == (src / rel).read_bytes()
    assert stager.sync(tolerant=False).copied == 0  # and trusted again once copied
