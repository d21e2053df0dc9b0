"""Files with holes: influxd 1.5+ preallocates each database's TSI series file as sparse
segments (data/DB/_series/NN/NNNN, 4 MiB each, 8 per database). A cold backup stages and
archives their data only (PAX 1.0 sparse members), restore and GNU tar give them back whole
and with their holes; `holes = "fill"` archives them as plain files, as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config

DATABASES = ("metrics", "events", "audit")
MiB = 1 << 20


def _series_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/_series/*/*") if p.is_file())


def _holes(path: Path) -> int:
    st = path.stat()
    return max(0, st.st_size - st.st_blocks * 512)


def _filled(sandbox: Sandbox) -> int:
    """Writes points into each database; returns the bytes of holes in their series files."""
    for number, db in enumerate(DATABASES):
        sandbox.create_db(db)
        sandbox.write_points(db, 3_000 + number * 1_000)
    holes = sum(_holes(p) for p in _series_files(sandbox.data))
    assert holes > 3 * 24 * MiB, "influxd 1.6 preallocates its series segments sparse"
    return holes


def _sha(stream: object) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(MiB):  # type: ignore[attr-defined]
        digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("copy", ["direct", "staged"])
def test_series_files_are_archived_without_their_holes_and_restored_with_them(
    tmp_path: Path, sandbox: Sandbox, copy: str
) -> None:
    holes = _filled(sandbox)
    apparent = sum(p.stat().st_size for p in sandbox.data.rglob("*") if p.is_file())
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": copy}
    cli = Cli(write_config(tmp_path, sandbox, jobs=[job]))
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    archive = Path(record["archive"])
    # the holes are not in the archive (before: every byte of them, 32 MiB per database)
    assert record["bytes"] < apparent - holes + 4 * MiB, (record["bytes"], apparent, holes)

    if copy == "staged":
        staged = _series_files(tmp_path / "archives" / ".staging" / "nightly" / "data")
        assert staged and all(_holes(p) > 0 for p in staged), "the staging copy kept the holes"

    # each series file is one member of its full size, its data runs only stored
    with tarfile.open(archive) as tar:
        members = {i.name: i for i in tar.getmembers() if "/_series/" in i.name and i.isreg()}
        assert members and all(i.sparse is not None for i in members.values())
        assert all(i.size == 4 * MiB for i in members.values())
        by_python = {name: _sha(tar.extractfile(info)) for name, info in members.items()}
    # GNU tar reads the same bytes back (an operator's `tar -xf` by hand)
    unpacked = tmp_path / "by-gnu-tar"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", str(archive)], cwd=unpacked, check=True)
    for name, digest in by_python.items():
        with open(unpacked / name, "rb") as fh:
            assert _sha(fh) == digest, name
        assert (unpacked / name).stat().st_size == 4 * MiB

    done = cli("verify", record["id"], "--deep", "--restore-test", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(done.stdout)
    assert result["checks"]["restore_test"].startswith("ok (3 databases answer"), result

    counts = {db: sandbox.count(db) for db in DATABASES}
    sandbox.write_points("metrics", 500, start=90_000)
    done = cli("restore", record["id"], "--yes")
    assert done.returncode == 0, done.stderr
    assert {db: sandbox.count(db) for db in DATABASES} == counts
    restored = _series_files(sandbox.data)
    assert restored and all(p.stat().st_size == 4 * MiB for p in restored)
    assert all(_holes(p) > 0 for p in restored), "restore wrote the holes as zeros"


def test_holes_fill_archives_plain_members_of_every_byte(tmp_path: Path, sandbox: Sandbox) -> None:
    holes = _filled(sandbox)
    cli = Cli(write_config(tmp_path, sandbox, holes="fill"))
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    with tarfile.open(record["archive"]) as tar:
        infos = tar.getmembers()
    assert not any(i.sparse is not None for i in infos)
    assert not any("GNU.sparse" in key for i in infos for key in i.pax_headers)
    assert record["bytes"] > holes


def test_the_space_check_counts_the_data_a_sparse_file_holds(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A file larger than the free space but nearly all holes fits: the archive holds its data
    (with holes = "fill" tests/integration/test_space.py refuses the same file)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    huge = sandbox.data / "huge.bin"
    with open(huge, "wb") as fh:
        fh.write(b"data" * 1024)
        fh.truncate(os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize + (1 << 30))
    try:
        cli = Cli(write_config(tmp_path, sandbox))
        record = cli.json("backup")
        assert record["status"] == "ok", record["error"]
        assert record["bytes"] < 64 * MiB
        with tarfile.open(record["archive"]) as tar:
            member = tar.getmember("data/huge.bin")
            assert member.size == huge.stat().st_size
            stream = tar.extractfile(member)
            assert stream is not None and stream.read(4096) == b"data" * 1024
        # restore needs room for the data, not the holes: it writes them as holes
        target = tmp_path / "look"
        done = cli("restore", record["id"], "--target", str(target))
        assert done.returncode == 0, done.stderr
        restored = target / "data" / "huge.bin"
        assert restored.stat().st_size == huge.stat().st_size
        assert restored.stat().st_blocks * 512 < 1 << 20
    finally:
        huge.unlink()
