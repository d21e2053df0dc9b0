"""Client-side encryption with age (pyrage), readable by the `age` command-line tool.

Object names must not reveal the plaintext's sha256 when encrypting: they are
HMAC-SHA256(name key, sha256) instead. The name key is 32 random bytes, kept 0600 on the host
(the host only holds recipients, it cannot decrypt the bucket) and stored in the bucket encrypted
to the recipients as keys/<key id>.age, so that a fresh host with the identity finds it again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from influx_backupd.core import log, offsite_keys
from influx_backupd.core.atomic import read_small, replace_file
from influx_backupd.core.config import MAX_READ
from influx_backupd.offsite.errors import (
    IntegrityError,
    MissingExtra,
    NotOurs,
    OffsiteError,
    OffsiteMisconfigured,
)


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError:
        raise MissingExtra("pyrage") from None
    return pyrage


def recipients(spec: list[str]) -> list[Any]:
    """The recipients of encrypt_to, parsed as the config's load parsed them."""
    out: list[Any] = []
    for i, text in enumerate(spec):
        try:
            out.append(offsite_keys.recipient(text))
        except offsite_keys.NoPyrage:
            raise MissingExtra("pyrage") from None
        except ValueError as exc:
            raise OffsiteMisconfigured(f"encrypt_to[{i}]: {exc}") from None
    return out


def identities(path: Path) -> list[Any]:
    """The identities of an age identity file (AGE-SECRET-KEY-1… lines; # comments): read as
    the config's load reads it, only a regular file of sane size (one replaced by a FIFO since
    would block the sync for ever, /dev/zero fill memory)."""
    try:
        return offsite_keys.identities(offsite_keys.text_of(read_small(path, MAX_READ)))
    except OSError as exc:
        raise OffsiteMisconfigured(f"identity_file {path}: {exc.strerror or exc}") from None
    except offsite_keys.NoPyrage:
        raise MissingExtra("pyrage") from None
    except ValueError as exc:
        raise OffsiteMisconfigured(f"identity_file {path} {exc}") from None


def encrypt_bytes(data: bytes, to: list[Any]) -> bytes:
    return bytes(_pyrage().encrypt(data, to))


# pyrage's words for "none of these identities is a recipient of it"; anything else it says
# (a MAC that fails, a header it cannot parse, a file cut short) is damage to the ciphertext
_NOT_OURS = "No matching keys found"
NOT_OURS_LINE = "cannot be decrypted with the identity_file's keys"


def _decrypt_failed(exc: Exception, what: str) -> OffsiteError:
    if str(exc) == _NOT_OURS:
        return NotOurs(f"{what}: {NOT_OURS_LINE}")
    return IntegrityError(f"{what}: is damaged: its age ciphertext is cut short or changed")


def decrypt_bytes(data: bytes, ids: list[Any], what: str) -> bytes:
    pyrage = _pyrage()
    try:
        return bytes(pyrage.decrypt(data, ids))
    except pyrage.DecryptError as exc:
        raise _decrypt_failed(exc, what) from None


def encrypt_stream(reader: Any, writer: Any, to: list[Any]) -> None:
    """Stream age encryption: pyrage reads and writes in chunks, memory stays flat."""
    _pyrage().encrypt_io(reader, writer, to)


def decrypt_stream(reader: Any, writer: Any, ids: list[Any], what: str) -> None:
    pyrage = _pyrage()
    try:
        pyrage.decrypt_io(reader, writer, ids)
    except pyrage.DecryptError as exc:
        raise _decrypt_failed(exc, what) from None


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"influx-backupd name key\0" + key).hexdigest()[:16]


class Namer:
    """Object names: the plaintext sha256, or its HMAC under the name key when encrypting."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.key_id = key_id(key) if key is not None else None

    def __call__(self, sha256: str) -> str:
        if self.key is None:
            return sha256
        return hmac.new(self.key, sha256.encode(), hashlib.sha256).hexdigest()

    def chunk(self, sha256: str, chunk_size: int, index: int) -> str:
        """The name of chunk `index` of a file sent in chunks of chunk_size (encrypting only):
        the same file gives the same chunks, so a resumed send finds those already there."""
        assert self.key is not None
        text = f"{sha256}/{chunk_size}/{index}".encode()
        return hmac.new(self.key, text, hashlib.sha256).hexdigest()


def recipients_fingerprint(recipients: list[str]) -> str:
    """Which recipients a name key names objects for (order and repeats do not matter)."""
    text = "\n".join(sorted({r.strip() for r in recipients}))
    return hashlib.sha256(b"influx-backupd recipients\0" + text.encode()).hexdigest()


def renew_key(path: Path) -> bytes:
    """A new name key in place of the one at path (0600, written then renamed)."""
    key = secrets.token_bytes(32)
    replace_file(path, key)
    return key


def _private(path: Path) -> None:
    """A name key others may read (copied in with cp, a umask, a chmod by hand): made 0600 again,
    as written, and said. With it, anyone may confirm a guessed file in the bucket by its
    name. One we may not change is left, said all the same."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        log.get().warning(
            "offsite.key_file_readable", path=str(path), mode=f"{mode:04o}", error=exc.strerror
        )
        return
    log.get().warning("offsite.key_file_made_private", path=str(path), mode=f"{mode:04o}")


def local_key(path: Path, make: Callable[[], bytes] = lambda: secrets.token_bytes(32)) -> bytes:
    """The host's name key: read it, or make one (0600, written then renamed)."""
    try:
        data = read_small(path)
    except FileNotFoundError:
        data = b""
    except OSError as exc:
        raise OffsiteError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(data) == 32:
        _private(path)
        return data
    if data:
        raise OffsiteError(f"{path}: not a name key (32 bytes); move it away to make a new one")
    key = make()
    replace_file(path, key)
    return key
