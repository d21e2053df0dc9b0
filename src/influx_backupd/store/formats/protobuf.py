"""Protocol Buffers wire format, read without a schema compiler: influxd 1.x writes its meta
store (meta.db), the portable backup's meta and each shard's fields.idx as protobuf. Read in
windows (findings.Window), so a member of any size costs bounded memory."""

from __future__ import annotations

from collections.abc import Iterator

from influx_backupd.store.formats.findings import Window

# Which fields hold embedded messages to be walked too, by field number, nested.
Schema = dict[int, "Schema"]


def uvarint(data: bytes, i: int) -> tuple[int, int, str]:
    """(value, next index, "" or what influxd's uvarint() makes of it)."""
    value = shift = 0
    for n, byte in enumerate(data[i : i + 10]):
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if n == 9 and byte > 1:
                return 0, i, "overflow"
            return value, i + n + 1, ""
        shift += 7
    return 0, i, "overflow" if len(data) - i >= 10 else "short"


def framing_problem(window: Window, i: int, end: int, nested: Schema) -> str | None:
    """What breaks the framing of the message from i to end (and of the embedded messages
    nested names), or None: every key a field number and a wire type, every length inside."""
    while i < end:
        key, used, problem = uvarint(window.get(i, 10), 0)
        if problem:
            return f"unreadable field key at offset {i}"
        i += used
        number, wire = key >> 3, key & 7
        if number == 0 or wire not in (0, 1, 2, 5):
            return f"field {number} of wire type {wire} at offset {i}"
        if wire == 0:
            _value, used, problem = uvarint(window.get(i, 10), 0)
            if problem:
                return f"unreadable varint at offset {i}"
            i += used
        elif wire == 2:
            length, used, problem = uvarint(window.get(i, 10), 0)
            i += used
            if problem or i + length > end:
                return f"field {number} at offset {i} runs past its message"
            if number in nested:
                inner = framing_problem(window, i, i + length, nested[number])
                if inner is not None:
                    return inner
            i += length
        else:
            i += 8 if wire == 1 else 4
    return None if i == end else "the last field runs past the end"


def fields_of(window: Window, i: int, end: int) -> Iterator[tuple[int, int | tuple[int, int]]]:
    """(field number, varint value or (start, end) of a length-delimited one), in a message
    whose framing framing_problem has found whole."""
    while i < end:
        key, used, _ = uvarint(window.get(i, 10), 0)
        i += used
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, used, _ = uvarint(window.get(i, 10), 0)
            i += used
            yield number, value
        elif wire == 2:
            length, used, _ = uvarint(window.get(i, 10), 0)
            i += used
            yield number, (i, i + length)
            i += length
        else:
            i += 8 if wire == 1 else 4


def embedded(window: Window, i: int, end: int, number: int) -> Iterator[tuple[int, int]]:
    """The extents of field `number`'s embedded messages between i and end."""
    for found, value in fields_of(window, i, end):
        if found == number and isinstance(value, tuple):
            yield value


def text_of(window: Window, extent: tuple[int, int], limit: int = 1 << 16) -> bytes:
    """A length-delimited field's bytes (a name), at most limit of them."""
    start, end = extent
    return window.get(start, min(end - start, limit))
