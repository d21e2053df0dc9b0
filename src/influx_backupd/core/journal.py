"""systemd's journal protocol: structured entries sent straight to journald's socket, and the
structlog renderer that writes our events there as fields. Depends on nothing of ours, so that
logging can use it."""

from __future__ import annotations

import array
import errno
import fcntl
import json
import os
import re
import socket
import struct
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def journal_available() -> bool:
    """True when stderr or stdout is the journal stream systemd connected us to.

    $JOURNAL_STREAM ("device:inode") is inherited by children and survives redirection,
    so it only counts when it still matches the descriptor we would log to.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        expected = (int(dev), int(ino))
    except ValueError:
        return False
    for fd in (2, 1):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == expected:
            return True
    return False


_INVALID_KEY_CHARS = re.compile(r"[^A-Z0-9_]")


_MAX_KEY_LEN = 64  # journald drops fields with longer names


def journal_field_name(key: str) -> str:
    """``key`` as a journal field name: [A-Z0-9_], no leading "_" (trusted) or digit.

    Returns "" when nothing usable is left.
    """
    name = _INVALID_KEY_CHARS.sub("_", key.upper()).lstrip("_0123456789")
    return name[:_MAX_KEY_LEN]


def _encode_value(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict | list | tuple | bool) or value is None:
        # JSON, so that `journalctl -o json | jq` can read a nested value (not Python's repr),
        # and `journalctl DRY_RUN=true` matches (not True; null, not None)
        return json.dumps(value, default=str, separators=(",", ":")).encode("utf-8", "replace")
    return str(value).encode("utf-8", "replace")


def journal_payload(fields: Mapping[str, object]) -> bytes:
    """Serialise ``fields`` as one native-protocol entry.

    Values with a newline use the binary form (name, LF, little-endian u64 length, data,
    LF); others ``NAME=value`` LF. Fields whose names sanitise to nothing are dropped;
    when two keys sanitise to the same name the later one wins.
    """
    encoded: dict[str, bytes] = {}
    for key, value in fields.items():
        name = journal_field_name(key)
        if name:
            encoded[name] = _encode_value(value)
    parts: list[bytes] = []
    for name, data in encoded.items():
        raw = name.encode("ascii")
        if b"\n" in data:
            parts.append(raw + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(raw + b"=" + data + b"\n")
    return b"".join(parts)


def _send_via_memfd(sock: socket.socket, payload: bytes, socket_path: str) -> None:
    fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        # journald only accepts a memfd that can no longer change under it.
        if hasattr(fcntl, "F_ADD_SEALS"):
            fcntl.fcntl(
                fd,
                fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
            )
        rights = array.array("i", [fd])
        sock.sendmsg([b""], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, socket_path)
    finally:
        os.close(fd)  # the receiver holds its own reference once the message is queued


def journal_send(fields: Mapping[str, object], socket_path: str = JOURNAL_SOCKET) -> None:
    """Send one entry to journald. Raises OSError when the socket cannot be reached.

    The caller supplies MESSAGE, PRIORITY and SYSLOG_IDENTIFIER; a missing MESSAGE is sent
    as an empty one because journald discards entries without it.
    """
    if not any(journal_field_name(k) == "MESSAGE" for k in fields):
        fields = {"MESSAGE": "", **fields}
    payload = journal_payload(fields)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(payload, socket_path)
        except OSError as exc:
            # Too big for one datagram (EMSGSIZE), or bigger than the send buffer (ENOBUFS).
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            _send_via_memfd(sock, payload, socket_path)


_PRIORITIES = {
    "emergency": 0,
    "alert": 1,
    "critical": 2,
    "fatal": 2,
    "error": 3,
    "exception": 3,  # structlog's method name for error-with-traceback
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}


def priority_for(level: str) -> int:
    """Syslog priority for a logging level name; unknown names count as info (6)."""
    return _PRIORITIES.get(level.lower(), 6)


def _format_value(value: object) -> str:
    if isinstance(value, dict | list | tuple | bool) or value is None:
        return json.dumps(value, default=str, separators=(",", ":"))
    text = str(value)
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return repr(text)
    return text


class JournalRenderer:
    """structlog processor that writes each event to the journal as structured fields.

    Use it as the last processor. Fields sent:

    - MESSAGE: ``event`` followed by ``key=value`` for the other keys (except level and
      timestamp, which the journal records itself); an ``exception`` text goes on the lines
      after it.
    - PRIORITY from ``level`` (or the method name), SYSLOG_IDENTIFIER.
    - every key of the event dict as its own field, upper-cased: run_id -> RUN_ID; nested
      values (dicts, lists) as JSON; not level and timestamp (PRIORITY and the journal's own
      timestamp say it); message_id as MESSAGE_ID (log.MESSAGE_IDS).
      MESSAGE, PRIORITY and SYSLOG_IDENTIFIER are never overridden by event keys.

    Returns the same MESSAGE text, so a console logger after it still prints something
    readable. When stderr itself goes to the journal that print would duplicate the entry:
    pass ``drop=True`` to raise ``structlog.DropEvent`` after a successful send. If the
    send fails, the text is always returned so the line is not lost.
    """

    _NOT_IN_MESSAGE = frozenset({"event", "level", "timestamp", "exception", "message_id"})
    # The journal stamps every entry itself (__REALTIME_TIMESTAMP) and PRIORITY is the level.
    _NOT_FIELDS = frozenset({"level", "timestamp"})

    def __init__(
        self,
        identifier: str = "influx-backupd",
        socket_path: str = JOURNAL_SOCKET,
        *,
        drop: bool = False,
    ) -> None:
        self.identifier = identifier
        self.socket_path = socket_path
        self.drop = drop

    def message(self, event_dict: Mapping[str, Any]) -> str:
        pairs: Iterable[str] = (
            f"{k}={_format_value(v)}"
            for k, v in event_dict.items()
            if k not in self._NOT_IN_MESSAGE
        )
        text = " ".join([str(event_dict.get("event", "")), *pairs]).strip()
        exc = event_dict.get("exception")
        if exc:
            text = f"{text}\n{exc}"
        return text

    def __call__(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> str:
        text = self.message(event_dict)
        level = str(event_dict.get("level", method_name))
        fields: dict[str, object] = {
            str(k): v for k, v in event_dict.items() if k not in self._NOT_FIELDS
        }
        # Re-inserted last: journal_payload keeps the last value per field name, so event
        # keys such as "message" or "priority" cannot replace these.
        for name in ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"):
            fields.pop(name, None)
        fields["MESSAGE"] = text
        fields["PRIORITY"] = priority_for(level)
        fields["SYSLOG_IDENTIFIER"] = self.identifier
        try:
            journal_send(fields, self.socket_path)
        except OSError:
            return text
        if self.drop:
            raise structlog.DropEvent
        return text
