"""The `[offsite]` section of the config (used by offsite/, which sits above core/)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from influx_backupd.core import config_values, offsite_keys
from influx_backupd.core.durations import Duration, PositiveDuration, PositiveTimeoutDuration

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]i?)?[bB]?\s*\Z")
_SIZE_UNIT = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,62})*\Z")
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


# In the schema: a whole number of bytes, or the strings parse_size takes ("20MiB", "1.5G"); the
# key's bounds are checked at load (an editor would otherwise flag a valid "20MB").
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _SIZE.pattern, "examples": ["20MiB", "64MB"]},
                {"type": "integer", "minimum": 0},
            ]
        }
    ),
]


# the names of the bucket layout below a prefix (docs/offsite.md): a prefix with a segment of
# these would put one host's layout inside another's (prefix "a/objects" inside the objects of
# prefix "a", whose sweep deletes what it does not name)
LAYOUT_NAMES = ("objects", "manifests", "keys", "writer.json")


def _prefix(value: object) -> object:
    if isinstance(value, str) and not _PREFIX.match(value):
        raise ValueError(
            "must be path segments of 1-63 letters, digits, '.', '_' or '-', each starting with "
            f"a letter or digit, joined by '/' (no leading or trailing '/'), not {value!r:.80}"
        )
    if isinstance(value, str):
        taken = next((p for p in value.split("/") if p in LAYOUT_NAMES), None)
        if taken is not None:
            raise ValueError(
                f"must not have a segment named {taken!r} (objects, manifests, keys and "
                "writer.json name the layout below a prefix: another host's prefix would hold "
                f"this one's copies), not {value!r:.80}"
            )
    return value


def _recipient(value: object) -> object:
    if not isinstance(value, str):
        return value  # pydantic says it must be a string
    try:
        offsite_keys.recipient(value)
    except offsite_keys.NoPyrage:
        return value  # the config's load says pyrage is needed, naming the extra
    return value


def _endpoint(value: object) -> object:
    if isinstance(value, str):
        wrong = config_values.endpoint_problem(value)
        if wrong is not None:
            raise ValueError(wrong)
    return value


# S3's rules for bucket names, beyond the form in BUCKET_PATTERN
# (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html)
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$"
BUCKET_FORM = (
    "an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-', "
    "beginning and ending with a letter or digit"
)
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_IP = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\Z")


def _bucket(value: str) -> str:
    if ".." in value:
        rule = "without two periods in a row"
    elif _IP.match(value):
        rule = "that is not formatted as an IP address"
    elif value.startswith(_RESERVED_PREFIXES):
        found = next(p for p in _RESERVED_PREFIXES if value.startswith(p))
        rule = f"not starting with {found!r} (reserved by S3)"
    elif value.endswith(_RESERVED_SUFFIXES):
        found = next(p for p in _RESERVED_SUFFIXES if value.endswith(p))
        rule = f"not ending with {found!r} (reserved by S3)"
    else:
        return value
    raise ValueError(f"must be {BUCKET_FORM}, {rule}, not {value!r}")


class OffsiteSection(BaseModel):
    """Where and how backups are copied off the host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: Annotated[str, AfterValidator(_bucket)] = Field(
        min_length=3, max_length=63, pattern=BUCKET_PATTERN
    )
    """The S3 bucket the copies go to."""
    # one daemon per prefix: objects, manifests and keys all live below it
    prefix: Annotated[str, BeforeValidator(_prefix)] = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "localhost"
    )
    """Everything of this host lives below this prefix in the bucket (default: the host name)."""
    # the pattern is for editors (the JSON Schema); the checks, which never echo the URL, are
    # config_values.endpoint_problem's
    endpoint_url: Annotated[str, AfterValidator(_endpoint)] | None = Field(
        default=None, json_schema_extra={"pattern": r"^https?://[^\s/?#@]+(/[^\s?#@]*)?$"}
    )
    """The S3 endpoint, for storage other than AWS (MinIO, Ceph, B2, R2, Garage …); omit for AWS."""
    region: str | None = None
    """The bucket's region."""
    # an AWS shared-credentials file ([default] aws_access_key_id / aws_secret_access_key);
    # without it, boto3's standard chain (environment, ~/.aws, instance profile)
    credentials_file: Path | None = None
    """An AWS shared-credentials file (0600); without it: environment, ~/.aws, instance profile."""
    profile: str = "default"
    """The profile in credentials_file."""
    storage_class: str | None = Field(default=None, pattern=r"^[A-Z_]+$")
    """The S3 storage class of uploaded objects, e.g. STANDARD_IA."""
    sse: Literal["AES256", "aws:kms"] | None = None
    """Server-side encryption: AES256 or aws:kms (with sse_kms_key_id)."""
    sse_kms_key_id: str | None = None
    """The KMS key for sse = "aws:kms"."""
    encrypt_to: list[Annotated[str, AfterValidator(_recipient)]] = Field(
        default_factory=list,
        json_schema_extra={"items": {"type": "string", "pattern": "^age1[0-9a-z]+$"}},
    )
    """Client-side encryption to these age recipients (age1…; not SSH keys: backups are read back only with an age identity)."""
    # age identities to read encrypted backups back (restore, verify, import)
    identity_file: Path | None = None
    """The age identity file, to read encrypted backups back (restore, verify, import)."""
    max_rate: Annotated[Size | None, Field(gt=0)] = None  # bytes per second, all uploads together
    """Bytes per second for all uploads together (e.g. "20MiB"); unset: no limit."""
    concurrency: int = Field(default=4, ge=1, le=64, strict=True)
    """Objects sent at once."""
    part_size: Annotated[Size, Field(ge=5 * MiB, le=5 * 1024 * MiB)] = 8 * MiB
    """Objects larger than this go as multipart uploads of parts this size."""
    # crc32: x-amz-checksum-crc32 on every part (4 GB/s), the plaintext sha256 the object is
    # named by on a plain single PUT (free); md5: Content-MD5 everywhere (2 ms per MB here),
    # for stores that verify only that (rclone serve s3)
    transfer_checksum: Literal["crc32", "md5"] = "crc32"
    """What each upload carries for the store to check: crc32 (x-amz-checksum-crc32, or the object's sha256 on a single PUT) or md5 (Content-MD5, for stores that check only that)."""
    # with encrypt_to: age ciphertext is random, so a file's interrupted upload cannot be
    # matched part by part; larger files go as independently encrypted chunks, one object each
    chunk_size: Annotated[Size, Field(ge=5 * MiB, le=5 * 1024 * MiB)] = 64 * MiB
    """With encrypt_to: files larger than this are sent as age-encrypted chunks of this size, each its own object, so an interrupted upload resumes chunk by chunk."""
    retries: int = Field(default=8, ge=1, le=30, strict=True)  # attempts per request, with backoff
    """Attempts per request, with backoff."""
    retry_after: Annotated[PositiveDuration, Field(gt=0)] = 900.0
    """After a failed off-site step the daemon tries again this long after, doubling up to 6 h."""
    yield_within: Annotated[PositiveDuration, Field(gt=0)] = 60.0
    """A backup that falls due in the daemon, or a command that needs the backup lock (cron's next `backup`, a restore), waits this long for an off-site send to stop between objects and parts; past it, the send gives its upload up (the daemon leaves a request that does not end behind) and the other runs; the next sync resumes. Such a command gives up 30 s later (busy, 75)."""
    stall_after: Annotated[PositiveDuration, Field(gt=0)] = 300.0
    """A request that makes no progress for this long has stalled (an endpoint answering a byte at a time defeats the read timeout): the off-site step gives up with one line (a command exits; the daemon leaves it behind and tries again after retry_after). Progress: bytes leaving the socket's send queue, 16 KiB of a download, an attempt begun; our own max_rate waits do not count. Keep it above the read timeout (60 s) and above the time the endpoint takes to answer a whole upload."""
    connect_timeout: Annotated[PositiveTimeoutDuration, Field(gt=0)] = 10.0
    """How long a connection to the endpoint may take."""
    # objects no kept manifest references are deleted only once older than this (seconds):
    # an upload in flight writes its objects before its manifest
    grace: Duration = 2 * 86400.0
    """Objects no kept manifest references are deleted only once older than this (an upload writes its objects before its manifest)."""
    hold_unsent: bool = Field(default=True, strict=True)
    """Local retention keeps a good backup that is not off-site yet (an endpoint down for days), with the earlier links of its chain, until a sync has sent it; a warning (prune.held) says so. false: local retention as if there were no off-site copies."""
    check_every: Annotated[Duration, Field(ge=0)] = 7 * 86400.0
    """Every backup in the bucket is checked this often, by the sync that follows (as `verify --offsite --all`): its objects there and of their size, check_read_data percent of them downloaded and hashed; what is found damaged is sent again from a local copy. 0: never. With encrypt_to it needs identity_file (the manifests are read)."""
    check_read_data: float = Field(default=0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    """With check_every: this percent of each backup's files downloaded and hashed (at least one file when above 0); 0: listing and sizes only (no download costs)."""
    keep_last: int = Field(default=0, ge=0, le=config_values.KEEP_MAX, strict=True)
    """Off-site retention: keep the newest N backups. All keep_* 0: keep all."""
    keep_daily: int = Field(default=0, ge=0, le=config_values.KEEP_MAX, strict=True)
    """Off-site retention: keep the newest backup of each of the last N days."""
    keep_weekly: int = Field(default=0, ge=0, le=config_values.KEEP_MAX, strict=True)
    """Off-site retention: keep the newest backup of each of the last N weeks."""
    keep_monthly: int = Field(default=0, ge=0, le=config_values.KEEP_MAX, strict=True)
    """Off-site retention: keep the newest backup of each of the last N months."""

    @model_validator(mode="after")
    def _kms(self) -> Self:
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ValueError('sse_kms_key_id needs sse = "aws:kms"')
        return self

    @model_validator(mode="after")
    def _retention_reads_manifests(self) -> Self:
        rules = [
            k
            for k in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")
            if getattr(self, k)
        ]
        if rules and self.encrypt_to and self.identity_file is None:
            raise ValueError(
                f"{rules[0]} needs identity_file when encrypt_to is set: off-site retention reads "
                "the encrypted manifests to know which objects the kept backups still need; set "
                "identity_file, or leave off-site retention off (no keep_* rule)"
            )
        return self

    @property
    def encrypted(self) -> bool:
        return bool(self.encrypt_to)
