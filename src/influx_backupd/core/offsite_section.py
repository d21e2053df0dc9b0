"""The `[offsite]` section of the config (used by offsite/, which sits above core/)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?)?[bB]?\s*$")
_SIZE_UNIT = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,62})*$")
MiB = 1 << 20


def parse_size(value: object) -> object:
    """12345, '20MB', '20MiB', '1.5G' → bytes (K/M/G decimal, Ki/Mi/Gi binary)."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        unit = match.group(2) or ""
        base = 1024 ** "kmg".index(unit[0].lower()) * 1024 if unit.endswith("i") else 0
        factor = base or _SIZE_UNIT[unit.lower()]
        return int(float(match.group(1)) * factor)
    raise ValueError(f"must be a number of bytes or a size like 20MB or 20MiB, not {value!r}")


Size = Annotated[int, BeforeValidator(parse_size)]


def _duration(value: object) -> object:
    from influx_backupd.core.config import parse_duration  # config imports this module

    return parse_duration(value)


def _prefix(value: object) -> object:
    if isinstance(value, str) and not _PREFIX.match(value):
        raise ValueError(
            "must be path segments of letters, digits, '.', '_' or '-' joined by '/' "
            "(no leading or trailing '/')"
        )
    return value


def _recipient(value: object) -> object:
    if isinstance(value, str) and not (
        value.startswith("age1") or value.startswith(("ssh-ed25519 ", "ssh-rsa "))
    ):
        raise ValueError("must be age recipients (age1…) or SSH public keys")
    return value


class OffsiteSection(BaseModel):
    """Where and how backups are copied off the host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")
    # one daemon per prefix: objects, manifests and keys all live below it
    prefix: Annotated[str, BeforeValidator(_prefix)] = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "localhost"
    )
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    region: str | None = None
    # an AWS shared-credentials file ([default] aws_access_key_id / aws_secret_access_key);
    # without it, boto3's standard chain (environment, ~/.aws, instance profile)
    credentials_file: Path | None = None
    profile: str = "default"
    storage_class: str | None = Field(default=None, pattern=r"^[A-Z_]+$")
    sse: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None
    encrypt_to: list[Annotated[str, BeforeValidator(_recipient)]] = Field(default_factory=list)
    # age identities to read encrypted backups back (restore, verify, import)
    identity_file: Path | None = None
    max_rate: Annotated[Size | None, Field(gt=0)] = None  # bytes per second, all uploads together
    concurrency: int = Field(default=4, ge=1, le=64)
    part_size: Annotated[Size, Field(ge=5 * MiB, le=5 * 1024 * MiB)] = 16 * MiB
    retries: int = Field(default=8, ge=1, le=30)  # attempts per request, with backoff
    connect_timeout: Annotated[float, BeforeValidator(_duration), Field(gt=0)] = 10.0
    # objects no kept manifest references are deleted only once older than this (seconds):
    # an upload in flight writes its objects before its manifest
    grace: Annotated[float, BeforeValidator(_duration)] = 2 * 86400.0
    keep_last: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _kms(self) -> Self:
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ValueError('sse_kms_key_id needs sse = "aws:kms"')
        return self

    @property
    def encrypted(self) -> bool:
        return bool(self.encrypt_to)
