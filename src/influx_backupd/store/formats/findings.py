"""What a format checker reports, and how it reads: shared by the Bolt, TSM and WAL checkers and
the archive walk in this package's __init__, which imports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Literal


@dataclass(frozen=True)
class Finding:
    severity: Literal["error", "warning"]
    member: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.member}: {self.message}"


def read_at(stream: BinaryIO, offset: int, n: int) -> bytes:
    """Read up to n bytes at offset; short only at end of data (raw streams may return less)."""
    stream.seek(offset)
    chunks: list[bytes] = []
    remaining = n
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
