"""The series-file and TSI readers against files written by a real influxd 1.6 (tsi1 and inmem),
each kind damaged in a copy: verify --deep names the member."""

from __future__ import annotations

import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from influx_backupd.store.formats import check_archive
from tests.conftest import Cli, write_config
from tests.integration.test_formats_real import cold_tar

pytestmark = [
    pytest.mark.influxd,
    pytest.mark.skipif(shutil.which("influxd") is None, reason="needs the influxd binary"),
]

BASE_NS = 1_600_000_000 * 10**9


def _build(root: Path, index: str) -> Path:
    """Series in every partition; with tsi1, .tsi files (compacted from small log files) and a
    last .tsl of several entries."""
    server = Sandbox(
        root,
        binary=influxd_binary() or "influxd",
        extra_data={
            "index-version": f'"{index}"',
            "max-index-log-file-size": '"1k"',  # log files compact to .tsi files soon
            "cache-snapshot-memory-size": '"64k"',
        },
    )
    server.start(timeout=20)
    try:

        def post(path: str, body: str) -> None:
            req = urllib.request.Request(f"{server.url}{path}", data=body.encode(), method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status in (200, 204)

        post("/query", urllib.parse.urlencode({"q": "CREATE DATABASE x"}))
        for batch in range(3):
            lines = [
                f"cpu,host=h{i % 500},b=r{batch} v={i} {BASE_NS + i * 10**9}" for i in range(2000)
            ]
            post("/write?db=x", "\n".join(lines))
        post("/write?db=x", "\n".join(f"mem,host=n{i} v={i} {BASE_NS}" for i in range(60)))
    finally:
        server.stop()
    return root


@pytest.fixture(scope="module")
def tsi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tsi1"), "tsi1")


@pytest.fixture
def tsi_files(tsi_root: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may damage it."""
    return Path(shutil.copytree(tsi_root, tmp_path / "influxd"))


def test_real_tsi1_files_pass(tsi_files: Path, tmp_path: Path) -> None:
    assert list((tsi_files / "data").rglob("*.tsi")), "the server should have compacted to .tsi"
    report = check_archive(cold_tar(tsi_files, tmp_path / "cold.tar"), deep=True)
    assert report.findings == []
    assert report.checked["series"] == 8
    assert report.checked["MANIFEST"] == 8
    assert report.checked["tsi"] >= 8 and report.checked["tsl"] >= 8
    assert report.checked["fields.idx"] == 1
    assert report.checked["meta.db"] == 1  # a real meta store passes (no false alarm)
    assert report.unread == {".conf": 1}  # influxdb.conf


def test_real_inmem_files_pass(tmp_path: Path) -> None:
    """An inmem server has a series file too, and no index dirs: no false alarm."""
    root = _build(tmp_path / "inmem", "inmem")
    report = check_archive(cold_tar(root, tmp_path / "cold.tar"), deep=True)
    assert report.findings == []
    assert report.checked["series"] == 8
    assert not {"tsi", "tsl", "MANIFEST"} & set(report.checked)


def _flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    """Same size, one byte changed."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(data)


def _largest(root: Path, pattern: str) -> Path:
    return max((root / "data").rglob(pattern), key=lambda p: p.stat().st_size)


def _segment(root: Path) -> Path:
    return root / "data/x/_series/00/0000"


def _manifest(root: Path) -> Path:
    return root / "data/x/autogen/1/index/0/MANIFEST"


DAMAGE: dict[str, tuple[Callable[[Path], Path], bool, str]] = {
    # what is damaged: (damage it, returning the member named; found without --deep?; message)
    "segment magic": (lambda r: (_flip(_segment(r), 0), _segment(r))[1], True, "not a series"),
    # the first entry's key length: the key no longer parses (influxd panics reading it)
    "segment entry": (lambda r: (_flip(_segment(r), 14), _segment(r))[1], False, "garbled"),
    "tsi magic": (lambda r: (_flip(p := _largest(r, "*.tsi"), 1), p)[1], True, "TSI1"),
    "tsi version": (
        lambda r: (_flip(p := _largest(r, "*.tsi"), p.stat().st_size - 1, 0x02), p)[1],
        True,
        "version 3",
    ),
    "tsl entry": (
        lambda r: (_flip(p := _largest(r, "*.tsl"), p.stat().st_size // 3), p)[1],
        True,
        "influxd would",
    ),
    # the trailer's series-id-set and series-sketch offsets, one off: influxd serves no series
    "tsi id set offset": (
        lambda r: (_flip(p := _largest(r, "*.tsi"), p.stat().st_size - 82 + 23, 0x01), p)[1],
        True,
        "roaring bitmap",
    ),
    "tsi sketch offset": (
        lambda r: (_flip(p := _largest(r, "*.tsi"), p.stat().st_size - 82 + 55, 0x01), p)[1],
        True,
        "HLL sketch",
    ),
    "MANIFEST json": (lambda r: (_flip(_manifest(r), 0, 0x01), _manifest(r))[1], True, "JSON"),
    "fields.idx": (
        lambda r: (_flip(p := next(r.rglob("fields.idx")), 2), p)[1],
        True,
        "fields index",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_real_tsi1_file_damaged(kind: str, tsi_files: Path, tmp_path: Path) -> None:
    damage, shallow_too, message = DAMAGE[kind]
    member = damage(tsi_files).relative_to(tsi_files).as_posix()
    path = cold_tar(tsi_files, tmp_path / "cold.tar")

    deep = check_archive(path, deep=True)
    assert [f.member for f in deep.errors] == [member], deep.findings
    assert message in deep.errors[0].message
    shallow = check_archive(path)
    assert [f.member for f in shallow.errors] == ([member] if shallow_too else [])


def test_real_manifest_lists_a_missing_file(tsi_files: Path, tmp_path: Path) -> None:
    listed = next(_manifest(tsi_files).parent.glob("*.tsi"))
    listed.rename(listed.with_suffix(".tsi.moved"))  # still in the archive, not by that name
    report = check_archive(cold_tar(tsi_files, tmp_path / "cold.tar"), deep=True)
    manifest = _manifest(tsi_files).relative_to(tsi_files).as_posix()
    assert [(f.member, listed.name in f.message) for f in report.errors] == [(manifest, True)]


def test_real_series_dir_missing(tsi_files: Path, tmp_path: Path) -> None:
    shutil.rmtree(tsi_files / "data/x/_series")
    report = check_archive(cold_tar(tsi_files, tmp_path / "cold.tar"))
    assert [f.member for f in report.errors] == ["data/x/_series"]


def test_real_tsl_torn_tail_is_a_warning(tsi_files: Path, tmp_path: Path) -> None:
    """influxd replays a log file up to an entry cut short and carries on: so does verify."""
    tsl = _largest(tsi_files, "*.tsl")
    with tsl.open("r+b") as f:
        f.truncate(tsl.stat().st_size - 2)
    report = check_archive(cold_tar(tsi_files, tmp_path / "cold.tar"), deep=True)
    member = tsl.relative_to(tsi_files).as_posix()
    assert [(f.severity, f.member) for f in report.findings] == [("warning", member)]
    assert "torn tail" in report.findings[0].message


def test_verify_says_what_it_read(tsi_files: Path, tmp_path: Path) -> None:
    """The summary counts the series and index files it read, and names what it did not."""
    cli = Cli(write_config(tmp_path, Sandbox(tsi_files)))
    good = cli.json("verify", str(cold_tar(tsi_files, tmp_path / "good.tar")), "--deep")
    formats = good[0]["checks"]["formats"]
    assert good[0]["status"] == "ok", good
    assert "8 series" in formats and " tsi" in formats and " tsl" in formats, formats
    assert "1 meta.db" in formats and formats.endswith("deep; not read: 1 .conf)"), formats

    _flip(_segment(tsi_files), 0)
    done = cli("verify", str(cold_tar(tsi_files, tmp_path / "bad.tar")), "--deep")
    assert done.returncode == 1
    assert "data/x/_series/00/0000" in done.stdout + done.stderr
