"""The snappy *block* format (not the framing format) of InfluxDB's WAL entries.

Decoding is cramjam's (Rust, about 60x the pure-Python decoder this module used to have, on
real WAL entries: docs/performance.md). What stays in Python is `block_length`, the walk that
tells where a block ends inside longer data, for the rare torn-tail analysis: no snappy
library answers that question.

InfluxDB's WAL compresses every entry with Go's ``snappy.Encode``, which writes the block
format: a varint of the uncompressed length, then elements. An element's tag byte says,
in its low two bits: 0 literal (length in the tag, or in 1-4 little-endian bytes after
it), 1 copy with an 11-bit offset, 2 copy with a 16-bit offset, 3 copy with a 32-bit
offset. A copy repeats bytes already produced and may overlap its own output.
"""

from __future__ import annotations

import threading

import cramjam

# The best a snappy stream can do is a 3-byte copy element that emits 64 bytes, so a
# declared length beyond ~22x the input cannot be honest; checking it first keeps a
# corrupt varint from making us allocate gigabytes.
_MAX_RATIO = 22


class SnappyError(ValueError):
    """The input is not a valid snappy block."""


class _Ended(Exception):
    """The input ended inside the block (only an error when the input should be whole)."""


def decoded_length(src: bytes | memoryview) -> tuple[int, int]:
    """Return (uncompressed length, bytes used by the varint preamble)."""
    result = 0
    for i in range(min(len(src), 5)):
        byte = src[i]
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if result > 0xFFFFFFFF:
                raise SnappyError("declared length does not fit in 32 bits")
            return result, i + 1
    if len(src) < 5:
        raise _Ended
    raise SnappyError("overlong length preamble")


def preamble_problem(head: bytes | memoryview, size: int) -> str | None:
    """What is wrong with the length preamble of a block of `size` bytes, judged from its first
    bytes (`head`, at most 5 are used) alone, or None when it is plausible.

    A block's elements each emit at least one byte: a literal costs its bytes plus at most 5
    tag bytes, a copy at most 5. So the elements after the preamble take at most 6 bytes per
    byte they emit, and emit at most _MAX_RATIO bytes per byte they take."""
    try:
        want, used = decoded_length(head[:5])
    except _Ended:
        return "truncated length preamble"
    except SnappyError as exc:
        return str(exc)
    if used > size:
        return "truncated length preamble"
    if want > _MAX_RATIO * size + 64:
        return f"declared length {want} is impossible for {size} input bytes"
    if size - used > 6 * want:
        return f"declared length {want} is too small for {size - used} bytes of elements"
    return None


_scratch = threading.local()  # one output buffer per thread, grown as needed, reused


def decompress(src: bytes | memoryview) -> memoryview:
    """Decode one whole snappy block; raise SnappyError on any malformed input.

    Returns a view of this thread's reused output buffer, valid until the next call in the
    same thread: a fresh buffer per WAL entry (each up to a few MiB) cost page faults and a
    copy, a fifth of the decoding time. cramjam releases the GIL while it decodes.
    """
    # Checked before a buffer of `want` bytes is made for a corrupt length.
    problem = preamble_problem(src, len(src))
    if problem is not None:
        raise SnappyError(problem)
    want, _ = decoded_length(src[:5])
    buffer: bytearray | None = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < want:
        buffer = _scratch.buffer = bytearray(max(want, 1 << 20))
    try:
        got = cramjam.snappy.decompress_raw_into(src, buffer)
    except (cramjam.DecompressionError, ValueError) as exc:
        raise SnappyError(str(exc) or "not a valid snappy block") from None
    if got != want:  # the library checks this too; a mismatch must never pass
        raise SnappyError(f"decoded {got} bytes, the block declares {want}")
    return memoryview(buffer)[:got]


def block_length(src: bytes) -> int | None:
    """How many bytes at the start of src form one whole snappy block.

    None means src is a clean prefix of a block (it ends inside it), which is what a
    write cut short looks like. Raises SnappyError when src cannot start a valid block.
    Tracks only the output length, so it needs no memory for the output.
    """
    try:
        want, pos = decoded_length(src)
        return _walk(src, pos, want)
    except _Ended:
        return None


def _walk(src: bytes, pos: int, want: int) -> int:
    """Check elements from pos until they produce `want` bytes; return the input used.

    Counts the output without producing it. Raises _Ended if src ends first.
    """
    produced = 0
    end = len(src)
    while produced < want:
        if pos >= end:
            raise _Ended
        tag = src[pos]
        kind = tag & 0x03
        pos += 1
        if kind == 0:  # literal
            n = tag >> 2
            if n >= 60:
                extra = n - 59  # 60..63 -> 1..4 little-endian length bytes follow
                if pos + extra > end:
                    raise _Ended
                n = int.from_bytes(src[pos : pos + extra], "little")
                pos += extra
            n += 1
            if produced + n > want:
                raise SnappyError("output exceeds the declared length")
            if pos + n > end:
                raise _Ended
            produced += n
            pos += n
            continue
        width = (1, 2, 4)[kind - 1]
        if pos + width > end:
            raise _Ended
        if kind == 1:  # 3 high offset bits live in the tag
            length = 4 + ((tag >> 2) & 0x07)
            offset = ((tag >> 5) << 8) | src[pos]
        else:
            length = 1 + (tag >> 2)
            offset = int.from_bytes(src[pos : pos + width], "little")
        pos += width
        if offset == 0 or offset > produced:
            raise SnappyError(f"copy offset {offset} outside the {produced} bytes decoded")
        if produced + length > want:
            raise SnappyError("output exceeds the declared length")
        produced += length
    return pos
