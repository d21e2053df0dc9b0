"""The `[offsite]` section's keys and secret files, parsed once: at config load (core/config.py,
where a bad one is a config error) and where they are used (offsite/crypto.py, offsite/bucket.py,
where one changed since is an off-site error).

Every function raises ValueError with a line that never holds the secret: no line of an identity
file, no credential value, no more of a recipient than its first characters.
"""

from __future__ import annotations

import configparser
from typing import Any

# what the tool reads its own backups back with is an age identity (identity_file): a backup
# encrypted to anything else could never be listed, verified, imported or restored by it
RECIPIENT_FORM = "an age recipient (age1…, from age-keygen or age-keygen -y)"
IDENTITY_FORM = "age identities (AGE-SECRET-KEY-1… lines, from age-keygen) and # comments"
CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key")


class NoPyrage(ImportError):
    """pyrage (the s3 extra) is not installed."""


class NoProfile(ValueError):
    """The credentials file has no section for the configured profile."""


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError:
        raise NoPyrage("pyrage") from None
    return pyrage


def _start(text: str) -> str:
    return repr(text[:8] + "…" if len(text) > 8 else text)


def recipient(text: str) -> Any:
    """An age recipient (pyrage's); ValueError without more of it than its start."""
    if text.startswith(("ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-")):
        raise ValueError(
            f"{_start(text)} is an SSH key: influx-backupd reads its backups back only with an "
            "age identity (identity_file), so backups encrypted to an SSH key could never be "
            f"listed, verified, imported or restored by it; use {RECIPIENT_FORM}"
        )
    pyrage = _pyrage()
    try:
        return pyrage.x25519.Recipient.from_str(text)
    except Exception:
        raise ValueError(f"{_start(text)} is not {RECIPIENT_FORM}") from None


def text_of(data: bytes) -> str:
    """A secret file's bytes as text; ValueError 'is not UTF-8 text' (never its bytes)."""
    try:
        return data.decode("utf-8-sig")  # a BOM a Windows editor wrote is no part of a key
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None


def identities(text: str) -> list[Any]:
    """The identities of an age identity file (AGE-SECRET-KEY-1… lines; # comments)."""
    pyrage = _pyrage()
    found: list[Any] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(pyrage.x25519.Identity.from_str(line))
        except Exception:
            # never echo the line: it is a secret key
            raise ValueError(
                f"is not an age identity file (line {n}); it must hold {IDENTITY_FORM}"
            ) from None
    if not found:
        raise ValueError(f"holds no age identity; it must hold {IDENTITY_FORM}")
    return found


def credentials(text: str, profile: str) -> dict[str, str]:
    """aws_access_key_id, aws_secret_access_key (and aws_session_token) of `profile` in an AWS
    shared-credentials file; ValueError naming what is missing, never a value or a line."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        # its message quotes the line, which may be a secret: only the line number
        lineno = getattr(exc, "lineno", None)
        errors = getattr(exc, "errors", None)
        if lineno is None and errors:
            lineno = errors[0][0]
        at = f" (line {lineno})" if lineno else ""
        raise ValueError(
            f"is not an AWS credentials file{at}: it must hold [{profile}] with "
            "aws_access_key_id = … and aws_secret_access_key = …"
        ) from None
    if not parser.has_section(profile):
        known = ", ".join(f"[{s}]" for s in parser.sections()) or "none"
        raise NoProfile(f"has no [{profile}] section (sections: {known})")
    found = {
        k: parser.get(profile, k)
        for k in (*CREDENTIAL_KEYS, "aws_session_token")
        if parser.has_option(profile, k) and parser.get(profile, k).strip()
    }
    missing = [k for k in CREDENTIAL_KEYS if k not in found]
    if missing:
        raise ValueError(
            f"lacks {' and '.join(missing)} in [{profile}] "
            "(it needs aws_access_key_id and aws_secret_access_key)"
        )
    for key, value in found.items():
        # sent in a request header: a line break (an indented line after the key continues its
        # value, in this format) or a space would fail every request as "connection lost"
        found[key] = value = value.strip()
        if not all("!" <= c <= "~" for c in value):
            raise ValueError(
                f"{key} in [{profile}] is not one word of printable ASCII (an indented line "
                "after it continues its value; a space or a control character): each value "
                "must be one line, as the key was given"
            )
    return found
