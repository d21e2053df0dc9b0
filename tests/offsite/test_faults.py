"""Faults against real endpoints: each ends in one line, leaves the local backup untouched,
and the next send completes."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from influx_backupd.offsite.errors import NoBucket, Refused, Unreachable
from influx_backupd.offsite.repo import Offsite
from tests.offsite.conftest import SECRET_KEY, Endpoint, free_port
from tests.offsite.helpers import cold_backup, make_tar, make_tree, send_in_child, sha256

MiB = 1 << 20


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    files = {"meta/meta.db": b"m" * 5000, "data/db/rp/1/1.tsm": os.urandom(2 * MiB)}
    return make_tar(tmp_path / "nightly-1.tar", make_tree(tmp_path / "t", files))


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and SECRET_KEY not in text
    return text


def test_closed_port_is_one_line_after_retries(endpoint: Endpoint, archive: Path) -> None:
    before = sha256(archive)
    settings = endpoint.settings(endpoint_url=f"http://127.0.0.1:{free_port()}", retries=2)
    with pytest.raises(Unreachable) as caught:
        Offsite(settings).send(cold_backup(archive, "20261130T010000Z-0001"))
    assert "cannot connect" in _one_line(caught.value)
    assert sha256(archive) == before


def test_wrong_credentials_are_one_line_without_the_secret(
    rclone: Endpoint, archive: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-credentials"
    wrong.write_text(
        f"[default]\naws_access_key_id = AKIATESTOFFSITE00001\naws_secret_access_key = {SECRET_KEY}x\n"
    )
    with pytest.raises(Refused) as caught:
        Offsite(rclone.settings(credentials_file=wrong)).send(
            cold_backup(archive, "20261130T010000Z-0002")
        )
    text = _one_line(caught.value)
    assert "credentials" in text and SECRET_KEY[:10] not in text


def test_missing_bucket_is_one_line(endpoint: Endpoint, archive: Path) -> None:
    with pytest.raises(NoBucket) as caught:
        Offsite(endpoint.settings(bucket="no-such-bucket-here")).send(
            cold_backup(archive, "20261130T010000Z-0003")
        )
    assert "'no-such-bucket-here' does not exist" in _one_line(caught.value)


class _Throttling:
    """An HTTP proxy in front of moto that answers the first `fail` requests 503 SlowDown;
    it keeps each forwarded request (method, path, headers, body) in `seen`."""

    def __init__(self, upstream: str, fail: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        outer = self
        self.fail, self.failed, self.forwarded = fail, 0, 0
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    slow = outer.failed < outer.fail
                    outer.failed += slow
                    outer.forwarded += not slow
                    if not slow:
                        headers = {k.lower(): v for k, v in self.headers.items()}
                        outer.seen.append((self.command, self.path, headers, body))
                if slow:
                    xml = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":  # as S3: a body after a HEAD answer would be
                        self.wfile.write(xml)  # read as the next answer on that connection
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *_: None  # type: ignore[method-assign]  # clients hang up
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def throttling(moto: Endpoint) -> Iterator[_Throttling]:
    proxy = _Throttling(moto.url, fail=4)
    yield proxy
    proxy.server.shutdown()


def test_slowdown_is_retried_with_backoff(
    moto: Endpoint, throttling: _Throttling, archive: Path, tmp_path: Path
) -> None:
    settings = moto.settings(endpoint_url=throttling.url, retries=6)
    sent = Offsite(settings).send(cold_backup(archive, "20261130T010000Z-0004"))
    assert sent.complete and throttling.failed == 4 and throttling.forwarded > 0
    out = tmp_path / "out"
    out.mkdir()
    assert Offsite(moto.settings()).fetch("20261130T010000Z-0004", out).path.read_bytes() == (
        archive.read_bytes()
    )
    # more SlowDown than retries: one line, nothing in the bucket claims the backup
    throttling.fail, throttling.failed = 1000, 0
    with pytest.raises(Unreachable) as caught:
        Offsite(moto.settings(endpoint_url=throttling.url, retries=2)).send(
            cold_backup(archive, "20261130T010000Z-0005")
        )
    assert "throttled" in _one_line(caught.value)


def test_multipart_upload_resumes_after_sigkill(endpoint: Endpoint, tmp_path: Path) -> None:
    big = os.urandom(30 * MiB + 123)
    archive = make_tar(tmp_path / "nightly-big.tar", make_tree(tmp_path / "t", {"data/1.tsm": big}))
    before = sha256(archive)
    slow = endpoint.settings(max_rate=4 * MiB, concurrency=1)
    child = send_in_child(slow, archive, "20261130T040000Z-kill")
    client = endpoint.client()
    parts = 0
    deadline = time.monotonic() + 120
    try:
        while parts < 2 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
            try:
                ups = client.list_multipart_uploads(Bucket=endpoint.bucket).get("Uploads", [])
            except client.exceptions.NoSuchUpload:
                continue  # rclone's answer while there are none yet
            for up in ups:
                got = client.list_parts(
                    Bucket=endpoint.bucket, Key=up["Key"], UploadId=up["UploadId"]
                )
                parts = len(got.get("Parts", []))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert parts >= 2, child.stderr.read() if child.stderr else ""
    offsite = Offsite(endpoint.settings())
    assert offsite.manifests() == []  # a killed send claims nothing
    sent = offsite.send(cold_backup(archive, "20261130T040000Z-kill"))
    assert sent.complete
    # the parts already there were kept: at most the rest of the file (and the small objects)
    assert sent.bytes_uploaded <= len(big) - parts * 5 * MiB + 64 * 1024
    assert not offsite.bucket.uploads()
    out = tmp_path / "out"
    out.mkdir()
    assert offsite.fetch("20261130T040000Z-kill", out).path.read_bytes() == archive.read_bytes()
    assert sha256(archive) == before


@pytest.mark.parametrize("tree", [False, True], ids=["archive", "tree"])
def test_a_full_disk_while_fetching_names_the_local_path_and_leaves_nothing(
    moto: Endpoint, archive: Path, tmp_path: Path, tree: bool
) -> None:
    """Before: "s3://…: get KEY: [Errno 28] No space left on device", naming the bucket and
    an object as if the request had failed, not the full dir here."""
    import subprocess

    offsite = Offsite(moto.settings())
    offsite.send(cold_backup(archive, "20261130T010000Z-0009"))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(Exception) as caught:
            offsite.fetch("20261130T010000Z-0009", small, tree=tree)
        line = _one_line(caught.value)
        assert str(small / "nightly-20261130T010000Z-0009.tar") in line, line
        assert "No space left" in line, line
        assert "s3://" not in line, line
        assert os.listdir(small) == [], "the partial copy is removed"
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    fetched = offsite.fetch("20261130T010000Z-0009", roomy, tree=tree)
    assert fetched.path.exists(), "the backup in the bucket is whole: with room, it comes back"
