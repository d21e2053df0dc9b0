"""Files with holes: where their data lies, copies that keep the holes, and tar's sparse map.

influxd 1.5+ preallocates each database's TSI series file as sparse segments
(data/DB/_series/NN/NNNN, 4 MiB and up, mostly holes): read byte for byte, a server with a few
small databases archives and stages tens of MB of zeros, copied inside a direct run's stop
window. A file's data runs come from lseek(SEEK_DATA/SEEK_HOLE); the holes are skipped on the
copy and kept out of the archive, as GNU tar's PAX 1.0 sparse members do (GNU tar, bsdtar and
Python's tarfile extract them with their holes).
"""

from __future__ import annotations

import errno
import os
import tarfile
from typing import cast

# Below this many bytes of holes a file is archived plainly: a sparse member costs a header
# and a map, and some tar readers (busybox) cannot read one.
HOLES_WORTH_A_MAP = 1 << 20
# A sparse member's stored size must fit the ustar size field: a pax "size" record would
# stand for the real size in tarfile's reader and misplace the next header.
MAX_STORED = 8**11 - 1
_NO_SEEK_DATA = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)
_COPY_CHUNK = 1 << 30  # per copy_file_range call: the kernel copies, so large is fine

Segments = list[tuple[int, int]]  # (offset, length) of each run of data


def data_segments(fd: int, size: int) -> Segments:
    """The runs of data in the first size bytes of fd. A filesystem that cannot tell holes
    from data gives the whole file as one run (what reading it would give)."""
    segments: Segments = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from pos to the end
                break
            if exc.errno in _NO_SEEK_DATA:
                segments.append((pos, size - pos))
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        segments.append((start, end - start))
        pos = end
    return segments


def hole_bytes(segments: Segments, size: int) -> int:
    return size - sum(length for _, length in segments)


def worth_a_map(runs: Segments, size: int) -> bool:
    """Whether a file of size bytes with these data runs is archived as a sparse member: holes
    worth a map, and the map and runs fit the ustar size field (else a plain member)."""
    holes = hole_bytes(runs, size)
    if holes < HOLES_WORTH_A_MAP:
        return False
    return len(sparse_map(runs, size)) + size - holes <= MAX_STORED


def archived_size(path: str | os.PathLike[str], st: os.stat_result, keep_holes: bool) -> int:
    """The bytes of the regular file path (stat st) an archive member holds: its size, or with
    keep_holes and holes worth a map, its data runs only. Only a file with fewer blocks than
    its size is opened to look (a sparse or a compressed file)."""
    if not keep_holes or st.st_blocks * 512 >= st.st_size:
        return st.st_size
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return st.st_size  # gone or unreadable: the archive's own pass says which
    try:
        runs = data_segments(fd, st.st_size)
    finally:
        os.close(fd)
    return (
        st.st_size - hole_bytes(runs, st.st_size) if worth_a_map(runs, st.st_size) else st.st_size
    )


def sparse_map(segments: Segments, size: int) -> bytes:
    """The map a PAX 1.0 sparse member's data starts with: the count, then offset and length
    of each run, one decimal per line, padded to a whole block. A file ending in a hole ends
    its map with (size, 0), as GNU tar writes it, so every reader restores the full size."""
    runs = list(segments)
    if not runs or runs[-1][0] + runs[-1][1] < size:
        runs.append((size, 0))
    text = f"{len(runs)}\n" + "".join(f"{offset}\n{length}\n" for offset, length in runs)
    data = text.encode("ascii")
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def sparse_header(info: tarfile.TarInfo, stored: int) -> bytes:
    """The headers of a PAX 1.0 sparse member for the regular file info (its real name and
    size) whose data part (map and runs) is stored bytes long."""
    name = info.name.rsplit("/", 1)[-1]
    # The ustar name is what a reader without sparse support extracts; short enough that no
    # pax "path" record is needed (one would override GNU.sparse.name in tarfile's reader).
    stand_in = f"GNUSparseFile.0/{name}"
    if len(stand_in.encode("utf-8", "surrogateescape")) > 100 or not stand_in.isascii():
        stand_in = "GNUSparseFile.0/file"
    header = tarfile.TarInfo(stand_in)
    header.type = tarfile.REGTYPE
    header.size = stored
    header.mode, header.mtime = info.mode, info.mtime
    header.uid, header.gid, header.uname, header.gname = info.uid, info.gid, info.uname, info.gname
    header.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": info.name,
        "GNU.sparse.realsize": str(info.size),
    }
    return header.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def runs_of(info: tarfile.TarInfo) -> Segments:
    """The data runs of a member read by tarfile: a sparse member's map, else the whole file.
    (typeshed calls TarInfo.sparse bytes; tarfile keeps (offset, length) pairs there.)"""
    runs = cast("Segments | None", info.sparse)
    return [(0, info.size)] if runs is None else runs


def sparse_refusal(info: tarfile.TarInfo) -> str | None:
    """Why restore refuses the sparse member info (None: it is one our writer could have
    written). Only PAX 1.0 regular files, whose runs lie in order inside the real size: the
    older GNU forms and a crafted map (overlapping runs, runs past the end) are refused."""
    pax = info.pax_headers
    if (pax.get("GNU.sparse.major"), pax.get("GNU.sparse.minor")) != ("1", "0") or not info.isreg():
        return (
            "a sparse file in a form backups never hold (only PAX 1.0 sparse files: "
            "GNU tar writes them with --format=pax)"
        )
    end = 0
    for offset, length in runs_of(info):
        if offset < end or length < 0 or offset + length > info.size:
            return f"a sparse file whose map is out of order or past its {info.size} bytes"
        end = offset + length
    return None


def stored_data(info: tarfile.TarInfo) -> int:
    """The bytes of a member's data in the archive after its headers (and, sparse, its map)."""
    return sum(length for _, length in runs_of(info))


def on_disk(info: tarfile.TarInfo, block: int, directory: int) -> int:
    """About the bytes a member takes once unpacked on a filesystem of `block`-byte blocks:
    each data run in whole blocks (a file of 10 bytes takes one), a directory `directory`
    bytes; a link or an empty file none. Counted bytes alone, many small files overrun a
    small disk."""
    if info.isdir():
        return directory
    if not info.isreg():
        return 0
    return sum(
        (-(-(offset + length) // block) - offset // block) * block
        for offset, length in runs_of(info)
        if length
    )


def copy_keeping_holes(src: int, dst: int) -> tuple[int, int]:
    """Copy the file src into the empty file dst (both opened, dst writable) run by run inside
    the kernel, holes left as holes. Returns (the bytes of src the copy covered, the data bytes
    copied): src's size when the copy began, less when it shrank meanwhile (dst is given that
    size either way; the caller compares sizes before and after)."""
    size = os.fstat(src).st_size
    kernel_copy = True
    copied = 0
    reached = size
    for offset, length in data_segments(src, size):
        done = 0
        while done < length:
            at = offset + done
            if kernel_copy:
                try:
                    n = os.copy_file_range(src, dst, min(length - done, _COPY_CHUNK), at, at)
                except OSError as exc:
                    # Across filesystems (EXDEV) or on filesystems without it: sendfile.
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, *_NO_SEEK_DATA):
                        raise
                    kernel_copy = False
                    continue
            else:
                os.lseek(dst, at, os.SEEK_SET)
                n = os.sendfile(dst, src, at, min(length - done, _COPY_CHUNK))
            if n == 0:  # src shrank under us: the copy ends here
                reached = min(reached, at)
                break
            done += n
            copied += n
    os.ftruncate(dst, size)
    return reached, copied


def copy_whole(src: int, dst: int) -> int:
    """Copy src (from its offset) to dst until EOF inside the kernel, holes read as zeros (a
    filesystem that reflinks may still share them); bytes copied."""
    total = 0
    try:
        while n := os.copy_file_range(src, dst, _COPY_CHUNK):
            total += n
        return total
    except OSError as exc:
        # Across filesystems (EXDEV) or on filesystems without it: sendfile, still kernel-side.
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, *_NO_SEEK_DATA):
            raise
    os.lseek(src, total, os.SEEK_SET)
    os.lseek(dst, total, os.SEEK_SET)
    while n := os.sendfile(dst, src, None, _COPY_CHUNK):
        total += n
    return total
