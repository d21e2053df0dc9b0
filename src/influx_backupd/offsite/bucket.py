"""The bucket: one S3 client (kept for the process), every request retried with backoff, every failure one line.

Requests go through botocore's "standard" retry mode (exponential backoff with jitter for
503 SlowDown, throttling, 5xx and connection errors, `retries` attempts). What still fails is
turned into an OffsiteError naming the endpoint, the bucket and the error code, never the
message the server sent (it may echo an access key id) and never a secret.

Why one module of this size: every S3 call and its error translation in one place, so that no
other module ever sees botocore or a message that could carry a secret.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from influx_backupd.core import offsite_keys
from influx_backupd.core.atomic import read_small
from influx_backupd.core.config import MAX_READ
from influx_backupd.offsite.errors import (
    AlreadyThere,
    MissingExtra,
    NoBucket,
    NotFound,
    OffsiteError,
    Refused,
    Unreachable,
)
from influx_backupd.offsite.files import Window
from influx_backupd.offsite.settings import OffsiteSettings

_REFUSED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
    "403",
    "Forbidden",
}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}


class Activity:
    """When each thread's request to the endpoint last moved: an attempt began, or body bytes
    went out or came in. botocore's read timeout bounds one wait for a byte, so an endpoint
    that answers a byte at a time holds a request for ever; this is what notices it (one
    registry for the process: every Bucket reports here, whoever watches reads it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[int, float] = {}
        self._queued: dict[int, int] | None = None  # _send_queues() at the last look

    def begin(self, **_: Any) -> None:
        with self._lock:
            self._since[threading.get_ident()] = time.monotonic()

    def moved(self) -> None:
        me = threading.get_ident()
        with self._lock:
            if me in self._since:
                self._since[me] = time.monotonic()

    def end(self, **_: Any) -> None:  # also botocore's needs-retry handler: must return None
        with self._lock:
            self._since.pop(threading.get_ident(), None)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Our own wait (max_rate's throttle) is no stall of the endpoint's."""
        me = threading.get_ident()
        with self._lock:
            was = self._since.pop(me, None)
        try:
            yield
        finally:
            if was is not None:
                with self._lock:
                    self._since[me] = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds the longest-still request has moved nothing; 0 with none in flight. A body
        handed to the kernel whole drains from its socket buffer (up to some MiB) with no read
        of ours: bytes leaving our sockets' send queues since the last look count too."""
        now = time.monotonic()
        with self._lock:
            still = max((now - t for t in self._since.values()), default=0.0)
        if still > 1.0:
            queued = _send_queues()
            if queued is not None and queued != self._queued:
                self._queued = queued
                with self._lock:
                    for me in self._since:
                        self._since[me] = now
                return 0.0
        return still


def _send_queues() -> dict[int, int] | None:
    """Bytes waiting in the send queue of each TCP socket this process holds that has any
    (Linux /proc; None where it cannot be read)."""
    try:
        ours = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    ours.add(int(target[8:-1]))
        queues: dict[int, int] = {}
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    inode = int(fields[9])
                    queued = int(fields[4].split(":")[0], 16)
                    if inode in ours and queued:  # idle ones (and new ones) say nothing
                        queues[inode] = queued
        return queues
    except (OSError, ValueError, IndexError):
        return None


ACTIVITY = Activity()
PIECE = 16 * 1024  # a download's unit of movement (see _Reading.read)


class _Reading:
    """A response body whose every read is a request in flight for ACTIVITY (a download that
    trickles stalls as an upload's answer does). A read that fails (the connection broken or
    timed out mid-body) raises broken(exc, bytes read so far): our line, kept in self.broken
    for a caller whose reader (age's) hides it behind an error of its own."""

    def __init__(
        self, body: Any, broken: Callable[[BaseException, int], OffsiteError] | None = None
    ) -> None:
        self._body = body
        self._broken = broken
        self.got = 0  # bytes read so far
        self.broken: OffsiteError | None = None
        self.content_type = ""  # as the answer says ("" when it does not)

    def read(self, n: int = -1) -> bytes:
        """In pieces of PIECE at most, each one movement: a slow download that brings a piece
        now and then has not stalled (one read of a whole 1 MiB chunk could take minutes)."""
        ACTIVITY.begin()
        try:
            pieces: list[bytes] = []
            left = n
            while left != 0:
                try:
                    piece = bytes(self._body.read(PIECE if left < 0 else min(PIECE, left)))
                except Exception as exc:
                    if self._broken is None:
                        raise
                    self.broken = self._broken(exc, self.got + sum(map(len, pieces)))
                    raise self.broken from None
                if not piece:
                    break
                ACTIVITY.moved()
                pieces.append(piece)
                left = left - len(piece) if left > 0 else left
            data = b"".join(pieces)
            self.got += len(data)
            return data
        finally:
            ACTIVITY.end()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()


def _timed_out(exc: BaseException) -> bool:
    return type(exc).__name__ in ("ReadTimeoutError", "ReadTimeout") or isinstance(
        exc, TimeoutError
    )


def _connection_broken(exc: BaseException, e: Any) -> bool:
    """A connection closed or broken mid-answer, by whichever layer said it: botocore's
    ResponseStreamingError, IncompleteReadError and ConnectionClosedError, urllib3's
    ProtocolError and IncompleteRead, http.client's IncompleteRead, the socket's errors."""
    if isinstance(exc, e.ResponseStreamingError | e.IncompleteReadError | e.ConnectionClosedError):
        return True
    if type(exc).__name__ in ("ProtocolError", "IncompleteRead", "RemoteDisconnected"):
        return True
    return isinstance(exc, ConnectionError) or "Connection broken" in str(exc)


def _boto() -> tuple[Any, Any, Any]:
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise MissingExtra("boto3") from None
    return boto3, botocore.config, botocore.exceptions


class RateLimit:
    """A token bucket shared by every upload thread: max_rate bytes per second in all."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._at = time.monotonic()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            # at most a quarter second of burst
            self._tokens = min(self.rate / 4, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class _Body:
    """Bytes to send, read through the rate limit; seekable so a retry can rewind it. Each
    read is movement for ACTIVITY: a part that goes out slowly has not stalled."""

    def __init__(self, data: bytes | memoryview, limit: RateLimit | None) -> None:
        self._data, self._pos, self._limit = memoryview(data), 0, limit

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        if self._limit is not None and chunk:
            with ACTIVITY.paused():
                self._limit.take(len(chunk))
        ACTIVITY.moved()
        return chunk

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = {0: pos, 1: self._pos + pos, 2: len(self._data) + pos}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._data)


def _no_continue_when_empty(params: dict[str, Any], **_: Any) -> None:
    if params.get("headers", {}).get("Content-Length") in ("0", 0):
        params["headers"].pop("Expect", None)


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: float  # epoch seconds
    etag: str = ""


def _md5(data: bytes | memoryview) -> tuple[str, str]:
    digest = hashlib.md5(data, usedforsecurity=False)
    return digest.hexdigest(), base64.b64encode(digest.digest()).decode()


def _crc32(data: bytes | memoryview) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def _credentials(settings: OffsiteSettings) -> dict[str, str]:
    """The keys of credentials_file's profile, parsed as the config's load parsed them."""
    path = settings.credentials_file
    if path is None:
        return {}
    try:
        text = offsite_keys.text_of(read_small(path, MAX_READ))  # as the load reads it
        return offsite_keys.credentials(text, settings.profile)
    except OSError as exc:
        raise OffsiteError(f"credentials_file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise OffsiteError(f"credentials_file {path} {exc}") from None


def where_of(settings: OffsiteSettings) -> str:
    """The bucket as errors name it (the endpoint URL holds no secret: refused at load)."""
    at = f" at {settings.endpoint_url}" if settings.endpoint_url else ""
    return f"s3://{settings.bucket}/{settings.prefix}{at}"


def _aws_environment() -> tuple[object, ...]:
    """What boto3 reads besides our settings: AWS_* variables (keys, profile, CA bundle …) and
    the shared credentials and config files (by inode, size and mtime). A client keyed on it
    is built again when any of them changes, as one built per sync saw the change."""
    seen: list[object] = [
        hashlib.sha256(
            repr(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))).encode()
        ).hexdigest()
    ]
    for variable, default in (
        ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        ("AWS_CONFIG_FILE", "~/.aws/config"),
    ):
        try:
            st = os.stat(os.path.expanduser(os.environ.get(variable) or default))
            seen.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except (OSError, ValueError):
            seen.append(None)
    return tuple(seen)


class Clients:
    """One S3 client per distinct endpoint, region, credentials and connection settings, for
    the process's life. Each new one costs a Session, the S3 service model's parse (some
    14 MiB, freed only by a full GC) and 0.06-0.2 s of CPU: the daemon built one per sync. A
    client is thread-safe, a Session is not: built under the lock. A reload that changes
    any of these settings gets a new client; the last few are kept."""

    KEPT = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[object, ...], Any] = {}
        self.built = 0  # clients built by this process (tests/offsite/test_client_reuse.py)

    def get(self, settings: OffsiteSettings, creds: dict[str, str]) -> Any:
        key = (
            settings.endpoint_url,
            settings.region,
            hashlib.sha256(repr(sorted(creds.items())).encode()).hexdigest(),  # credentials_file's
            _aws_environment(),
            settings.retries,
            settings.connect_timeout,
            settings.concurrency,
        )
        with self._lock:
            client = self._clients.pop(key, None)
            if client is None:
                client = _new_client(settings, creds)
                self.built += 1
            self._clients[key] = client  # the newest last: the oldest goes first
            while len(self._clients) > self.KEPT:
                del self._clients[next(iter(self._clients))]
            return client


def _new_client(settings: OffsiteSettings, creds: dict[str, str]) -> Any:
    boto3, config, _ = _boto()
    session = boto3.session.Session(
        region_name=settings.region or ("us-east-1" if settings.endpoint_url else None),
        **creds,
    )
    client = session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        config=config.Config(
            signature_version="s3v4",
            s3={
                "addressing_style": "path" if settings.endpoint_url else "auto",
                # bodies are covered by the checksum header we sign (as boto3 itself does
                # over https), not by a second sha256 of every byte for the signature,
                # which botocore otherwise takes over plain http
                "payload_signing_enabled": False,
            },
            retries={"mode": "standard", "max_attempts": settings.retries},
            connect_timeout=settings.connect_timeout,
            read_timeout=max(60.0, settings.connect_timeout),
            max_pool_connections=settings.concurrency + 4,
            # we choose each body's checksum ourselves (transfer_checksum); boto3's own
            # flexible checksums (CRC32 trailers) are not served by every S3-compatible store
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    # rclone answers an empty body's Expect: 100-continue with its final response, then
    # once more: the next request on that connection waits for its read timeout
    client.meta.events.register_last("before-call.s3", _no_continue_when_empty)
    # each attempt (a retry is a new one) is a request in flight until botocore decides
    # whether to retry it
    client.meta.events.register("before-send.s3", ACTIVITY.begin)
    client.meta.events.register("needs-retry.s3", ACTIVITY.end)
    return client


CLIENTS = Clients()


class Bucket:
    def __init__(self, settings: OffsiteSettings, *, on_sent: Callable[[int], None] | None = None):
        _, _, self._exc = _boto()
        self.settings = settings
        self.name = settings.bucket
        self.where = where_of(settings)
        creds = _credentials(settings)
        self._secrets = [v for k, v in creds.items() if k != "aws_access_key_id"]
        self.client = CLIENTS.get(settings, creds)
        self.limit = RateLimit(settings.max_rate) if settings.max_rate else None
        self.on_sent = on_sent

    # -- names -----------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return "/".join((self.settings.prefix, *parts))

    # -- errors ----------------------------------------------------------------------------

    def error(self, exc: BaseException, what: str) -> OffsiteError:
        """One line for a failed request; the server's own message is left out on purpose."""
        e = self._exc
        if isinstance(exc, OffsiteError):
            return exc
        if isinstance(exc, e.NoCredentialsError | e.PartialCredentialsError):
            return Refused(
                f"{self.where}: no credentials (set credentials_file, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or an instance profile)"
            )
        if isinstance(exc, e.EndpointConnectionError | e.ConnectTimeoutError):
            return Unreachable(
                f"{self.where}: cannot connect (tried {self.settings.retries} times): {what}"
            )
        if isinstance(exc, e.ReadTimeoutError | e.ConnectionClosedError | e.HTTPClientError):
            return Unreachable(
                f"{self.where}: connection lost (tried {self.settings.retries} times): {what}"
            )
        if isinstance(exc, e.ClientError):
            err = exc.response.get("Error", {})
            code = str(
                err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            )
            if code in ("NoSuchBucket",):
                return NoBucket(f"{self.where}: bucket {self.name!r} does not exist")
            if code in _REFUSED:
                return Refused(
                    f"{self.where}: refused ({code}): check the credentials and the bucket policy"
                )
            if code in _NOT_FOUND:
                return NotFound(f"{self.where}: {what}: not found")
            if code in ("PreconditionFailed", "412"):
                return AlreadyThere(f"{self.where}: {what}: already there")
            if code in (
                "SlowDown",
                "503",
                "ServiceUnavailable",
                "Throttling",
                "RequestLimitExceeded",
            ):
                return Unreachable(
                    f"{self.where}: still throttled ({code}) after {self.settings.retries} tries: {what}"
                )
            return OffsiteError(f"{self.where}: {what}: failed ({code})")
        if isinstance(exc, e.BotoCoreError):
            return OffsiteError(f"{self.where}: {what}: {type(exc).__name__}")
        if _timed_out(exc) or _connection_broken(exc, e):
            # urllib3's or http.client's own, raised past botocore (its text is theirs)
            return Unreachable(f"{self.where}: connection lost: {what}")
        return OffsiteError(self._redact(f"{self.where}: {what}: {exc}"))

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def call(self, what: str, op: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return op(**kwargs)
        except Exception as exc:
            raise self.error(exc, what) from None

    # -- reading ---------------------------------------------------------------------------

    def check(self) -> None:
        """The bucket is there and these credentials may list it."""
        prefix = self.key("")
        page = self.call(
            f"list {prefix}",
            self.client.list_objects_v2,
            Bucket=self.name,
            Prefix=prefix,
            MaxKeys=1,
        )
        self._listing(page, prefix)

    def _listing(self, page: Any, prefix: str) -> list[Any]:
        """The Contents of a page that is a ListBucketResult of this bucket and prefix. botocore
        takes any 200 whose body parses as XML (a captive portal's or a proxy's HTML page) for
        a listing with nothing in it, and prune deletes on the strength of what is not listed:
        an answer that is not this listing is an error, never an empty bucket."""
        where = f"{self.where}: list {prefix}"
        if not isinstance(page, dict) or page.get("Name") != self.name:
            kind = ""
            if isinstance(page, dict):
                headers = page.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                kind = str(headers.get("content-type") or "")
            raise OffsiteError(
                f"{where}: the answer is not a listing of bucket {self.name!r}"
                + (f" ({kind})" if kind else "")
                + " (a proxy or captive portal in the way?); nothing deleted"
            )
        if page.get("Prefix", prefix) != prefix:
            raise OffsiteError(
                f"{where}: the answer lists prefix {str(page.get('Prefix'))[:80]!r}, not the one "
                "asked; nothing deleted"
            )
        contents = page.get("Contents", [])
        if not isinstance(contents, list):
            raise OffsiteError(f"{where}: the answer's Contents is no list; nothing deleted")
        for item in contents:
            key = item.get("Key") if isinstance(item, dict) else None
            if not isinstance(key, str) or not key.startswith(prefix):
                raise OffsiteError(
                    f"{where}: the answer names {str(key)[:80]!r}, outside the prefix asked; "
                    "nothing deleted"
                )
        count = page.get("KeyCount")
        if count is not None and count != len(contents):
            raise OffsiteError(
                f"{where}: the answer says {count} keys and lists {len(contents)}; nothing deleted"
            )
        return contents

    def ls(self, *under: str) -> Iterator[Listed]:
        """Every object below the prefix, each page checked to be this listing (_listing)."""
        prefix = self.key(*under) + "/"
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call(f"list {prefix}", self.client.list_objects_v2, **kwargs)
            for item in self._listing(page, prefix):
                modified: datetime = item["LastModified"]
                etag = str(item.get("ETag") or "").strip('"')
                yield Listed(item["Key"], int(item["Size"]), modified.timestamp(), etag)
            if not page.get("IsTruncated"):
                return
            nxt = page.get("NextContinuationToken")
            if not nxt or nxt == token:
                # no way on: asked again from the start it would loop, and stopping here
                # would take what is left for absent
                raise OffsiteError(
                    f"{self.where}: list {prefix}: the answer says there is more but gives no "
                    "new continuation token; nothing deleted"
                )
            token = nxt

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.name, Key=key)
        except Exception as exc:
            err = self.error(exc, f"head {key}")
            if isinstance(err, NotFound):
                return False
            raise err from None
        return True

    def get_bytes(self, key: str, limit: int) -> bytes:
        """The object's bytes, at most limit + 1 of them: anyone who can write the bucket (or
        answer for it) decides its size, and the caller's own check of what it reads refuses
        one longer than limit, without holding it in memory first."""
        return self.get_typed(key, limit)[0]

    def get_typed(self, key: str, limit: int) -> tuple[bytes, str]:
        """get_bytes(), and the Content-Type the answer came with ("" when none): what a
        caller names when the body is not what it expects (a proxy's or portal's HTML page)."""
        body = self.get_stream(key)
        try:
            return bytes(body.read(limit + 1)), body.content_type
        except Exception as exc:
            raise self.error(exc, f"get {key}") from None
        finally:
            with contextlib.suppress(Exception):
                body.close()  # the rest of an oversized body is not read

    def get_stream(self, key: str) -> _Reading:
        answer = self.call(f"get {key}", self.client.get_object, Bucket=self.name, Key=key)
        length = answer.get("ContentLength")
        reading = _Reading(
            answer["Body"],
            lambda exc, got: self.broken(
                exc, key, got, length if isinstance(length, int) else None
            ),
        )
        reading.content_type = str(answer.get("ContentType") or "")
        return reading

    def broken(self, exc: BaseException, key: str, got: int, length: int | None) -> OffsiteError:
        """One line for a download that failed mid-body, in our words (never urllib3's
        "('Connection broken: IncompleteRead(12 bytes read, 88 more expected)', …)"): the
        endpoint, the key and how far it came."""
        if isinstance(exc, OffsiteError):
            return exc
        of = f" of {length}" if length is not None else ""
        if _timed_out(exc):
            return Unreachable(
                f"{self.where}: the endpoint sent nothing more within the read timeout after {got}{of} "
                f"bytes of {key}; given up"
            )
        if _connection_broken(exc, self._exc):
            return Unreachable(
                f"{self.where}: the endpoint closed the connection after {got}{of} bytes of {key}"
            )
        return self.error(exc, f"get {key}")

    # -- writing ---------------------------------------------------------------------------

    def _extra(self) -> dict[str, Any]:
        s = self.settings
        extra: dict[str, Any] = {}
        if s.storage_class:
            extra["StorageClass"] = s.storage_class
        if s.sse:
            extra["ServerSideEncryption"] = s.sse
        if s.sse_kms_key_id:
            extra["SSEKMSKeyId"] = s.sse_kms_key_id
        return extra

    def _body(self, data: bytes | memoryview) -> Any:
        """Read in pieces (each one movement for ACTIVITY), through the rate limit if any."""
        if not data:
            return b""
        return _Body(data, self.limit)

    def _sent(self, n: int) -> None:
        if self.on_sent is not None:
            self.on_sent(n)

    @property
    def md5(self) -> bool:
        return self.settings.transfer_checksum == "md5"

    def _checksum(self, data: bytes | memoryview, sha256: str | None = None) -> dict[str, str]:
        """What the store checks the body against: Content-MD5, or (crc32) the sha256 the
        caller already knows (a plain object's content address: no pass over the bytes),
        else a CRC32 (4 GB/s)."""
        if self.md5:
            return {"ContentMD5": _md5(data)[1]}
        # the algorithm is named too (x-amz-sdk-checksum-algorithm): object lock asks for it
        # (or Content-MD5) on every upload
        if sha256 is not None:
            b64 = base64.b64encode(bytes.fromhex(sha256)).decode()
            return {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": b64}
        return {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": _crc32(data)}

    def put_bytes(
        self,
        key: str,
        data: bytes | memoryview,
        *,
        sha256: str | None = None,
        if_absent: bool = False,
    ) -> int:
        """One PUT; sha256: the data's, when the caller knows it (then sent as its checksum).
        if_absent: only where nothing is at key yet (If-None-Match: *, which AWS S3 and moto
        honour): AlreadyThere if something is. An endpoint may ignore the header."""
        self.call(
            f"put {key}",
            self.client.put_object,
            Bucket=self.name,
            Key=key,
            Body=self._body(data),
            ContentLength=len(data),
            **self._checksum(data, sha256),
            **self._extra(),
            **({"IfNoneMatch": "*"} if if_absent else {}),
        )
        self._sent(len(data))
        return len(data)

    def uploads(self, key: str | None = None) -> list[tuple[str, str, float]]:
        """Multipart uploads in progress below the prefix (or for one key): (key, id, started)."""
        return [(k, uid, started) for k, uid, started, _ in self._uploads(key)]

    def _uploads(self, key: str | None = None) -> list[tuple[str, str, float, str]]:
        """… and the checksum algorithm each was started with ("" when none is listed)."""
        found: list[tuple[str, str, float, str]] = []
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": key or self.key("")}
        while True:
            try:
                page = self.client.list_multipart_uploads(**kwargs)
            except Exception as exc:
                err = self.error(exc, "list uploads")
                if isinstance(err, NotFound):  # rclone's answer when there are none
                    return found
                raise err from None
            for up in page.get("Uploads", []):
                if key is None or up["Key"] == key:
                    found.append(
                        (
                            up["Key"],
                            up["UploadId"],
                            up["Initiated"].timestamp(),
                            str(up.get("ChecksumAlgorithm") or ""),
                        )
                    )
            if not page.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
        except Exception as exc:
            err = self.error(exc, f"abort upload of {key}")
            if not isinstance(err, NotFound):
                raise err from None

    def _parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
        parts: dict[int, tuple[str, int]] = {}
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key, "UploadId": upload_id}
        while True:
            page = self.call(f"list parts of {key}", self.client.list_parts, **kwargs)
            for p in page.get("Parts", []):
                parts[int(p["PartNumber"])] = (str(p["ETag"]).strip('"'), int(p["Size"]))
            if not page.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    def _upload_part(self, key: str, upload_id: str, n: int, data: bytes, crc: bool) -> Part:
        """Part n with Content-MD5, or with its CRC32 (crc: the upload was started with
        ChecksumAlgorithm CRC32). Returns what completing the upload needs."""
        check = (
            {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": _crc32(data)}
            if crc
            else {"ContentMD5": _md5(data)[1]}
        )
        got = self.call(
            f"upload part {n} of {key}",
            self.client.upload_part,
            Bucket=self.name,
            Key=key,
            UploadId=upload_id,
            PartNumber=n,
            Body=self._body(data),
            ContentLength=len(data),
            **check,
        )
        self._sent(len(data))
        return Part(str(got["ETag"]).strip('"'), check.get("ChecksumCRC32", ""))

    def _complete(self, key: str, upload_id: str, parts: list[Part]) -> None:
        listed: list[dict[str, Any]] = []
        for i, part in enumerate(parts, 1):
            item: dict[str, Any] = {"PartNumber": i, "ETag": f'"{part.etag}"'}
            if part.crc32:
                item["ChecksumCRC32"] = part.crc32
            listed.append(item)
        self.call(
            f"complete upload of {key}",
            self.client.complete_multipart_upload,
            Bucket=self.name,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": listed},
        )

    def _create(self, key: str) -> tuple[str, bool]:
        """A new multipart upload: (its id, whether its parts carry CRC32 checksums)."""
        crc = not self.md5
        started = self.call(
            f"start upload of {key}",
            self.client.create_multipart_upload,
            Bucket=self.name,
            Key=key,
            **({"ChecksumAlgorithm": "CRC32"} if crc else {}),
            **self._extra(),
        )
        return str(started["UploadId"]), crc

    def multipart(self, key: str, size: int) -> Multipart:
        """A plain object to send in parts (resumed if a killed run left its upload)."""
        return Multipart(self, key, size)

    def put_resumable(self, key: str, size: int, opener: Callable[[], Window]) -> int:
        """Upload size bytes in parts, one after the other; returns the bytes sent now."""
        upload = self.multipart(key, size)
        sent = 0
        with opener() as reader:
            for n in range(1, upload.count + 1):
                sent += upload.send(n, reader.read(upload.part_size))[0]
        return sent

    def put_stream(self, key: str, fill: Callable[[Any], None]) -> int:
        """Upload what fill() writes, part by part (encrypted objects: age ciphertext is
        random, so an interrupted one starts again: its old upload is aborted first)."""
        for k, uid, _ in self.uploads(key):
            self.abort(k, uid)
        bucket = self

        class Parts:
            def __init__(self) -> None:
                self.buf = bytearray()
                self.parts: list[Part] = []
                self.upload_id = ""
                self.crc = False
                self.sent = 0

            def write(self, data: bytes) -> int:
                self.buf += data
                while len(self.buf) >= bucket.settings.part_size:
                    self.flush_part(bucket.settings.part_size)
                return len(data)

            def flush_part(self, n: int) -> None:
                if not self.upload_id:
                    self.upload_id, self.crc = bucket._create(key)
                chunk = bytes(self.buf[:n])
                del self.buf[:n]
                self.parts.append(
                    bucket._upload_part(key, self.upload_id, len(self.parts) + 1, chunk, self.crc)
                )
                self.sent += len(chunk)

            def flush(self) -> None:
                pass

        out = Parts()
        try:
            fill(out)
        except BaseException:
            if out.upload_id:
                bucket.abort(key, out.upload_id)
            raise
        if not out.upload_id:  # small: one PUT
            return self.put_bytes(key, bytes(out.buf))
        if out.buf:
            out.flush_part(len(out.buf))
        self._complete(key, out.upload_id, out.parts)
        return out.sent

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            done = self.call(
                f"delete {len(batch)} objects",
                self.client.delete_objects,
                Bucket=self.name,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            if done.get("Errors"):
                first = done["Errors"][0]
                raise OffsiteError(
                    f"{self.where}: delete {first.get('Key')}: failed ({first.get('Code')})"
                )


@dataclass(frozen=True)
class Part:
    etag: str
    crc32: str = ""  # base64, when the upload carries CRC32 checksums


class Multipart:
    """One plain object sent as a multipart upload, its parts possibly from several threads.

    A multipart upload left by a killed run is continued: each part already there whose MD5
    (its ETag) and size match ours is kept, not sent again (the MD5 is taken only of those
    parts). The last part in completes it."""

    def __init__(self, bucket: Bucket, key: str, size: int) -> None:
        self.bucket, self.key, self.size = bucket, key, size
        self.part_size = bucket.settings.part_size
        self.count = max(1, -(-size // self.part_size))
        self.upload_id, self.have, self.crc = "", {}, False
        found = bucket._uploads(key)
        for _, uid, _started, algorithm in sorted(found, key=lambda u: u[2], reverse=True):
            if not self.upload_id:
                self.upload_id, self.have = uid, bucket._parts(key, uid)
                # a store that does not list the algorithm gets Content-MD5, which any takes
                self.crc = algorithm.upper() == "CRC32"
            else:
                bucket.abort(key, uid)  # older duplicates of the same object
        if not self.upload_id:
            self.upload_id, self.crc = bucket._create(key)
        self._parts: list[Part] = [Part("")] * self.count
        self._left = self.count
        self._lock = threading.Lock()

    def offset(self, n: int) -> int:
        return (n - 1) * self.part_size

    def length(self, n: int) -> int:
        return min(self.part_size, self.size - self.offset(n))

    def send(self, n: int, data: bytes) -> tuple[int, bool]:
        """Part n (1-based): (bytes sent now, whether this completed the object)."""
        if len(data) != self.length(n):
            raise OffsiteError(
                f"{self.key}: part {n} has {len(data)} bytes, {self.length(n)} expected: "
                "the source changed"
            )
        sent = 0
        there = self.have.get(n)
        if there is not None and there == (_md5(data)[0], len(data)):
            part = Part(there[0], _crc32(data) if self.crc else "")
        else:
            part = self.bucket._upload_part(self.key, self.upload_id, n, data, self.crc)
            sent = len(data)
        with self._lock:
            self._parts[n - 1] = part
            self._left -= 1
            last = self._left == 0
        if last:
            self.bucket._complete(self.key, self.upload_id, self._parts)
        return sent, last
