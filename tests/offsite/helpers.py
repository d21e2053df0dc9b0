"""Backups to send: a tar written like the cold job's (pax, dirs and files), and hot-like dirs."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from influx_backupd.offsite.files import Source, scan_dir, scan_tar
from influx_backupd.offsite.repo import Backup
from tests.offsite.conftest import Endpoint


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1_700_000_000, 1_700_000_000 + len(data) % 1000))
    return root


def make_tar(dest: Path, root: Path) -> Path:
    """A pax tar of root's children, as the cold job names them (meta/…, data/…, wal/…)."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name)
    return dest


def named_as_the_tool_names(path: Path, job: str, id: str, ext: str) -> Path:
    """path, or a link of it under the name the tool gives that backup (JOB-ID[.tar]): a
    manifest naming another file in the storage dir is refused as not ours. Made again on
    each call, so a caller that rewrote path sends what it holds now."""
    named = path.with_name(f"{job}-{id}{ext}")
    if named == path:
        return path
    if named.is_dir() and not named.is_symlink():
        shutil.rmtree(named)
    else:
        named.unlink(missing_ok=True)
    if path.is_dir():
        shutil.copytree(path, named, symlinks=True, copy_function=os.link)
    else:
        os.link(path, named)
    return named


def cold_backup(path: Path, id: str, job: str = "nightly") -> Backup:
    path = named_as_the_tool_names(path, job, id, ".tar")
    source: Source = scan_tar(path, sha256(path))
    record = {
        "id": id,
        "job": job,
        "mode": "cold",
        "status": "ok",
        "started_at": 1.7e9,
        "archive": str(path),
        "sha256": source.sha256,
        "bytes": source.size,
    }
    return Backup(id, job, "full", None, record, source)


def hot_backup(path: Path, id: str, *, parent: str | None = None, job: str = "hot") -> Backup:
    path = named_as_the_tool_names(path, job, id, "")
    source = scan_dir(path)
    record = {
        "id": id,
        "job": job,
        "mode": "hot",
        "status": "ok",
        "started_at": 1.7e9,
        "archive": str(path),
        "sha256": source.sha256,
        "kind": "incremental" if parent else "full",
        "parent_id": parent,
    }
    return Backup(id, job, "incremental" if parent else "full", parent, record, source)


def age_identity(tmp_path: Path) -> tuple[Path, str]:
    """A new age identity file (age-keygen) and its recipient."""
    key = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return key, public


_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from influx_backupd.offsite.repo import Offsite
from tests.offsite.helpers import cold_backup
from influx_backupd.offsite.settings import OffsiteSettings
settings = OffsiteSettings.model_validate_json({settings!r})
key = Path({key!r}) if {key!r} else None
Offsite(settings, key_file=key).send(cold_backup(Path({archive!r}), {id!r}))
print("finished")
"""


def send_in_child(
    settings: Any, archive: Path, id: str, key_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """A process that sends a cold backup of archive (for tests that kill it midway)."""
    code = _CHILD.format(
        root=str(Path(__file__).parents[2]),
        settings=settings.model_dump_json(),
        key=str(key_file or ""),
        archive=str(archive),
        id=id,
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def offsite_section(endpoint: Endpoint, **extra: object) -> str:
    """An [offsite] section for a config file, pointing at a test endpoint."""
    values: dict[str, object] = {
        "bucket": endpoint.bucket,
        "prefix": "host-a",
        "endpoint_url": endpoint.url,
        "credentials_file": str(endpoint.credentials),
        "part_size": "5MiB",
        "retries": 2,
    }
    values.update(extra)
    return "\n[offsite]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def relay(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    timeout: float,
) -> tuple[list[str], bytes]:
    """One request passed on to the upstream as it came (no Host or Accept-Encoding of
    http.client's): its answer's status line and headers, hop-by-hop ones dropped and the
    length its body's, and that body."""
    up = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        up.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            up.putheader(k, v)
        up.endheaders(body or None)
        answer = up.getresponse()
        data = answer.read()
    finally:
        up.close()
    head = [f"HTTP/1.1 {answer.status} {answer.reason}"]
    head += [
        f"{k}: {v}"
        for k, v in answer.getheaders()
        if k.lower() not in ("connection", "transfer-encoding", "content-length")
    ]
    head.append(f"Content-Length: {len(data)}")
    return head, data


class StallingProxy:
    """Passes requests on to upstream (moto), except those `stalls(method, path)` picks: those
    get a status line and headers, then one byte every 2 s, for ever: each byte resets
    botocore's read timeout, so no such request ever ends. No upstream: every request stalls.
    rate (bytes/s): every body, both ways, passed on that slowly but steadily. cuts(method,
    path): those answers are passed on with their whole Content-Length but half their body, and
    the connection closed (a connection broken mid-body)."""

    def __init__(
        self,
        upstream: str | None,
        stalls: Callable[[str, str], bool] = lambda _m, _p: True,
        *,
        rate: int | None = None,
        cuts: Callable[[str, str], bool] = lambda _m, _p: False,
    ) -> None:
        self.upstream = urlsplit(upstream or "http://127.0.0.1:9")
        self.stalls = stalls
        self.rate = rate
        self.cuts = cuts
        self.cut: list[str] = []
        self.stalled: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                reader = conn.makefile("rb")
                line = reader.readline().decode()
                if not line:
                    return
                method, path, _ = line.split(" ", 2)
                headers: dict[str, str] = {}
                while (h := reader.readline().decode()) not in ("\r\n", "\n", ""):
                    k, v = h.split(":", 1)
                    headers[k.strip()] = v.strip()
                if self.stalls(method, path):
                    self.stalled.append(f"{method} {path}")
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                    while not self.closed.wait(2.0):
                        conn.sendall(b"<")
                    return
                if headers.pop("Expect", "").lower() == "100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = self._slowly(reader.read, int(headers.get("Content-Length", "0") or 0))
                assert self.upstream.hostname and self.upstream.port
                head, data = relay(
                    self.upstream.hostname, self.upstream.port, method, path, headers, body, 30
                )
                head.append("Connection: close")
                conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
                if self.cuts(method, path) and len(data) > 1:
                    self.cut.append(f"{method} {path}")
                    conn.sendall(data[: len(data) // 2])
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                for at in range(0, len(data), 4096):
                    conn.sendall(data[at : at + 4096])
                    if self.rate:
                        time.sleep(len(data[at : at + 4096]) / self.rate)
            except OSError:
                return

    def _slowly(self, take: Callable[[int], bytes], size: int) -> bytes:
        """size bytes from take, 4 KiB at a time at self.rate."""
        got = []
        while size > 0:
            piece = take(min(4096, size))
            if not piece:
                break
            got.append(piece)
            size -= len(piece)
            if self.rate:
                time.sleep(len(piece) / self.rate)
        return b"".join(got)

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
