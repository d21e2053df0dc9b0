"""Bolt (bbolt/boltdb) file checks: the two meta pages and the file length.

Layout, all little-endian: each page starts with a 16-byte header (id u64, flags u16,
count u16, overflow u32). Pages 0 and 1 hold a meta struct right after the header:
magic u32, version u32, pageSize u32, flags u32, root bucket (pgid u64, sequence u64),
freelist pgid u64, high-water pgid u64, txid u64, checksum u64. The checksum is FNV-64a
over the 56 bytes before it. Bolt alternates commits between the two metas and opens with
whichever valid one has the higher txid, so one bad meta costs at most the last commit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from influx_backupd.store.formats.findings import Finding, read_at

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_HEADER_SIZE = 16
META = struct.Struct("<IIIIQQQQQQ")
CHECKSUMMED = META.size - 8  # 56: everything before the checksum field
# bbolt writes this as the freelist pgid when the freelist is not persisted.
NO_FREELIST = 0xFFFFFFFFFFFFFFFF
# Page sizes to probe for meta page 1 when meta page 0 cannot tell us (bbolt probes too).
_PROBE_PAGE_SIZES = (4096, 8192, 16384, 32768, 65536, 2048, 1024, 512)

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_U64 = 0xFFFFFFFFFFFFFFFF


def fnv64a(data: bytes) -> int:
    h = _FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV64_PRIME) & _U64
    return h


@dataclass(frozen=True)
class Meta:
    offset: int
    magic: int
    version: int
    page_size: int
    root: int
    freelist: int
    pgid: int
    txid: int
    checksum: int
    problem: str | None  # None when the meta page is valid

    @property
    def valid(self) -> bool:
        return self.problem is None


def parse_meta(page: bytes, offset: int) -> Meta | None:
    """Parse the meta struct of a page read at `offset`; None if the page is too short."""
    body = page[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + META.size]
    if len(body) < META.size:
        return None
    magic, version, page_size, _flags, root, _seq, freelist, pgid, txid, checksum = META.unpack(
        body
    )
    problem: str | None = None
    if magic != MAGIC:
        problem = f"bad magic {magic:#010x}"
    elif version != VERSION:
        problem = f"unsupported version {version}"
    elif (computed := fnv64a(body[:CHECKSUMMED])) != checksum:
        problem = f"checksum mismatch (stored {checksum:#018x}, computed {computed:#018x})"
    elif page_size < PAGE_HEADER_SIZE + META.size or page_size & (page_size - 1):
        problem = f"implausible page size {page_size}"
    elif offset and page_size != offset:
        problem = f"page size {page_size} disagrees with the page's offset {offset}"
    return Meta(offset, magic, version, page_size, root, freelist, pgid, txid, checksum, problem)


def _read_meta(stream: BinaryIO, size: int, offset: int) -> Meta | None:
    if offset + PAGE_HEADER_SIZE + META.size > size:
        return None
    return parse_meta(read_at(stream, offset, PAGE_HEADER_SIZE + META.size), offset)


def check_bolt(stream: BinaryIO, size: int, member: str) -> list[Finding]:
    findings: list[Finding] = []
    meta0 = _read_meta(stream, size, 0)
    if meta0 is None:
        return [Finding("error", member, f"{size} bytes is too small for a bolt file")]

    # Meta page 1 sits one page in; meta 0 gives the page size when it is valid.
    offsets = [meta0.page_size] if meta0.valid else list(_PROBE_PAGE_SIZES)
    meta1: Meta | None = None
    for offset in offsets:
        candidate = _read_meta(stream, size, offset)
        if candidate is not None and (meta1 is None or candidate.valid):
            meta1 = candidate
        if meta1 is not None and meta1.valid:
            break

    problems = {
        0: meta0.problem,
        1: "missing (file ends first)" if meta1 is None else meta1.problem,
    }
    valid = [m for m in (meta0, meta1) if m is not None and m.valid]
    if not valid:
        return [
            Finding(
                "error",
                member,
                f"both meta pages invalid: page 0: {problems[0]}; page 1: {problems[1]}",
            )
        ]
    for page, problem in problems.items():
        if problem is not None:
            findings.append(
                Finding(
                    "warning",
                    member,
                    f"meta page {page} invalid ({problem}); bolt opens with the other one",
                )
            )
    if len(valid) == 2 and meta0.page_size != valid[1].page_size:
        findings.append(
            Finding(
                "error",
                member,
                f"meta pages disagree on page size ({meta0.page_size} vs {valid[1].page_size})",
            )
        )

    meta = max(valid, key=lambda m: m.txid)
    needed = meta.pgid * meta.page_size
    if size < needed:
        findings.append(
            Finding(
                "error",
                member,
                f"truncated: {size} bytes, but meta (txid {meta.txid}) has high-water page "
                f"{meta.pgid} × {meta.page_size} bytes = {needed} bytes",
            )
        )
    if meta.root >= meta.pgid:
        findings.append(
            Finding("error", member, f"root page {meta.root} beyond high-water page {meta.pgid}")
        )
    if meta.freelist != NO_FREELIST and meta.freelist >= meta.pgid:
        findings.append(
            Finding(
                "error",
                member,
                f"freelist page {meta.freelist} beyond high-water page {meta.pgid}",
            )
        )
    return findings
