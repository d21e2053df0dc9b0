"""The format readers against files written by a real influxd 1.x in a temp dir."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from influx_backupd.store.formats import check_archive

pytestmark = [
    pytest.mark.influxd,
    pytest.mark.skipif(shutil.which("influxd") is None, reason="needs the influxd binary"),
]

WEEK_NS = 7 * 24 * 3600 * 10**9
BASE_NS = 1_600_000_000 * 10**9 // WEEK_NS * WEEK_NS  # start of a 7-day shard group


class Influxd:
    def __init__(self, root: Path) -> None:
        self.root = root
        # A Sandbox: it starts again on fresh ports when another process took its port first
        server = Sandbox(
            root,
            binary=influxd_binary() or "influxd",
            extra_data={"cache-snapshot-write-cold-duration": '"1s"'},
        )
        server.start(timeout=10)
        assert server.proc is not None
        self.proc = server.proc
        self.http = server.url

    def _wait(self, ready: object, what: str, timeout: float = 10) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"influxd exited: {self.proc.returncode}"
            assert time.monotonic() < deadline, f"influxd did not {what} in {timeout}s"
            time.sleep(0.1)

    def post(self, path: str, body: bytes) -> None:
        req = urllib.request.Request(f"{self.http}{path}", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status in (200, 204)

    def query(self, q: str) -> None:
        self.post("/query", urllib.parse.urlencode({"q": q, "db": "x"}).encode())

    def write(self, lines: list[str]) -> None:
        self.post("/write?db=x", "\n".join(lines).encode())

    def wait_for_tsm(self) -> None:
        self._wait(lambda: any((self.root / "data").rglob("*.tsm")), "write a TSM file")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=35)  # influxd forces its own shutdown after 30 s
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _build_data_set(root: Path) -> int:
    """TSM files, a non-empty WAL (writes and a delete), and meta; influxd's exit status."""
    server = Influxd(root)
    try:
        server.query("CREATE DATABASE x")
        types = 'value={i}.5,n={i}i,s="str{i}",b=true'
        server.write(
            [f"cpu,host=h{i % 10} {types.format(i=i)} {BASE_NS + i * 10**9}" for i in range(4000)]
        )
        server.wait_for_tsm()
        # Next shard group: stays in the WAL, since a clean shutdown does not flush it.
        later = BASE_NS + WEEK_NS
        server.write([f"mem,host=h{i % 7} used={i}i {later + i * 10**9}" for i in range(3000)])
        server.query("DELETE FROM mem WHERE host='h3'")
    except OSError:
        if server.proc.poll() is None:
            raise  # a refusal by a live server is a real failure; a crash is retried
    finally:
        server.stop()
    assert server.proc.returncode is not None
    return server.proc.returncode


@pytest.fixture(scope="module")
def influxd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data set with TSM files, a non-empty WAL (writes and a delete), and meta.

    influxd 1.6.7 itself crashed once in about 25 suite runs while building it: SIGSEGV in
    tsm1.(*Engine).DeleteSeriesRangeWithPredicate (its DELETE racing its own cache snapshot),
    exit status 2. That is the peer's bug, not what these tests check: such an attempt is
    built again in a fresh dir, up to three times, and the crash shown if it persists."""
    log = ""
    for _attempt in range(3):
        root = tmp_path_factory.mktemp("influxd")
        status = _build_data_set(root)
        if status == 0:
            return root
        log = (root / "influxd.log").read_text(errors="replace")
        assert "fatal error" in log, f"influxd exited {status}: {log[-2000:]}"
    raise AssertionError(f"influxd crashed building the data set 3 times: {log[-2000:]}")


@pytest.fixture
def influxd_files(influxd_root: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may damage it."""
    return Path(shutil.copytree(influxd_root, tmp_path / "influxd"))


def cold_tar(root: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for name in ("meta", "data", "wal", "influxdb.conf"):
            tar.add(root / name, arcname=name)
    return dest


def test_real_influxd_files_pass(influxd_files: Path, tmp_path: Path) -> None:
    wal_sizes = [p.stat().st_size for p in (influxd_files / "wal").rglob("_*.wal")]
    assert max(wal_sizes) > 1000, "the WAL should hold the second batch"

    report = check_archive(cold_tar(influxd_files, tmp_path / "cold.tar"), deep=True)

    assert report.findings == []
    assert report.top_dirs == {"meta", "data", "wal", "influxdb.conf"}
    assert report.checked["tsm"] >= 1
    assert report.checked["wal"] == len(wal_sizes)
    assert "bolt" not in report.checked  # 1.x meta.db is protobuf, not bolt


def test_real_files_damaged(influxd_files: Path, tmp_path: Path) -> None:
    tsm = next((influxd_files / "data").rglob("*.tsm"))
    data = bytearray(tsm.read_bytes())
    data[5 + 4 + 20] ^= 0x01  # inside the first block, after its CRC
    tsm.write_bytes(data)
    wal = max((influxd_files / "wal").rglob("_*.wal"), key=lambda p: p.stat().st_size)
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 3)  # tear the last entry

    path = cold_tar(influxd_files, tmp_path / "cold.tar")
    shallow = check_archive(path)
    assert [(f.severity, f.member) for f in shallow.findings] == [
        ("warning", wal.relative_to(influxd_files).as_posix())
    ]
    assert "torn tail" in shallow.findings[0].message

    deep = check_archive(path, deep=True)
    assert [f.member for f in deep.errors] == [tsm.relative_to(influxd_files).as_posix()]
    assert "CRC32 mismatch" in deep.errors[0].message


def test_real_archive_truncated(influxd_files: Path, tmp_path: Path) -> None:
    path = cold_tar(influxd_files, tmp_path / "cold.tar")
    with tarfile.open(path) as tar:
        member = next(m for m in tar if m.name.endswith(".tsm"))
    path.write_bytes(path.read_bytes()[: member.offset_data + member.size // 2])
    report = check_archive(path)
    assert [f.member for f in report.errors] == ["<archive>"]
