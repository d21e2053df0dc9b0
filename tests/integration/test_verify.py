"""verify against real cold backups of a real influxd: intact, damaged, and restore-tested."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import new_run_id
from tests.conftest import Cli, plain, throwaway_influxds, write_config
from tests.unit.store.test_formats import bolt_file, snappy_elements


@dataclasses.dataclass
class Backed:
    root: Path
    cli: Cli
    server: Sandbox
    record: dict[str, Any]

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.root / "state")

    def register(self, archive: Path, **changes: Any) -> str:
        """A catalog entry for a damaged copy: the original's record, pointing at the copy."""
        # the catalog's record: the CLI's JSON carries times as RFC 3339 strings
        original = self.catalog.get(self.record["id"])
        assert original is not None
        run_id = new_run_id()
        self.catalog.save(dataclasses.replace(original, id=run_id, archive=str(archive), **changes))
        return run_id


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backed]:
    """One real cold backup with TSM files, WAL and two databases, shared by the module."""
    binary = influxd_binary()
    assert binary, "influxd is not installed"
    root = tmp_path_factory.mktemp("verify")
    server = Sandbox(
        root / "server", binary=binary, extra_data={"cache-snapshot-write-cold-duration": '"1s"'}
    )
    server.write_config()
    server.start()
    try:
        server.create_db("metrics")
        server.create_db("other")
        server.write_points("metrics", 20_000)
        deadline = time.monotonic() + 30
        while not any(server.data.rglob("*.tsm")):
            assert time.monotonic() < deadline, "influxd wrote no TSM file"
            time.sleep(0.2)
        # "other" must stay in the WAL: with a 1 s cold duration influxd snapshotted it before
        # the stop on a busy machine (seen in CI beside other suites), so the server is
        # restarted with one it cannot reach first
        server.stop()
        server.extra_data["cache-snapshot-write-cold-duration"] = '"1h"'
        server.write_config()
        server.start()
        cli = Cli(write_config(root, server))
        server.write_points("other", 500, measurement="mem")
        record = cli.json("backup")
        assert record["status"] == "ok", record["error"]
        assert _holds_wal(Path(record["archive"])), "the backup holds no WAL entry"
        yield Backed(root, cli, server, record)
    finally:
        server.stop()


def _holds_wal(archive: Path) -> bool:
    with tarfile.open(archive) as tar:
        return any(i.name.endswith(".wal") and i.size > 5 for i in tar if i.isreg())


def rewrite(
    source: Path, dest: Path, change: Callable[[tarfile.TarInfo, bytes], bytes | None]
) -> Path:
    """Copy a tar member by member; change returns new bytes, or None to drop the member."""
    with tarfile.open(source) as src, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        for info in src:
            data = src.extractfile(info).read() if info.isreg() else b""  # type: ignore[union-attr]
            new = change(info, data)
            if new is None:
                continue
            info = plain(info)
            info.size = len(new)
            out.addfile(info, io.BytesIO(new) if info.isreg() else None)
    return dest


def results(done: Any) -> list[dict[str, Any]]:
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_db_counts_are_taken_before_the_stop(backed: Backed) -> None:
    counts = backed.record["db_counts"]
    assert counts["metrics"] == 20_000 and counts["other"] in range(500, 2501, 500), counts
    assert set(backed.record["dirs"]) == {"meta", "data", "wal"}


def test_a_good_backup_verifies_and_the_result_is_in_the_catalog(backed: Backed) -> None:
    done = backed.cli("verify", backed.record["id"], "--deep", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = results(done)
    assert result["status"] == "ok"
    assert result["checks"]["sha256"] == "ok"
    assert result["checks"]["structure"] == "ok"
    assert "tsm" in result["checks"]["formats"] and "wal" in result["checks"]["formats"]
    stored = backed.catalog.get(backed.record["id"])
    assert stored is not None and stored.verify_status == "ok" and stored.verified_at


def test_restore_test_passes_on_a_real_backup(backed: Backed) -> None:
    done = backed.cli("verify", backed.record["id"], "--restore-test", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = results(done)
    assert result["checks"]["restore_test"].startswith(
        "ok (2 databases answer, 2 point counts match"
    )
    storage = backed.root / "archives"
    assert not list(storage.glob(".verify-*")), "the scratch dir is removed"
    assert throwaway_influxds(storage) == [], "the throwaway influxd is stopped"
    assert backed.server.ping()


def test_a_flipped_byte_in_a_tsm_file_is_caught(backed: Backed, tmp_path: Path) -> None:
    flipped: list[str] = []

    def flip(info: tarfile.TarInfo, data: bytes) -> bytes:
        if info.name.endswith(".tsm") and not flipped:
            flipped.append(info.name)
            body = bytearray(data)
            body[5 + 4 + 20] ^= 0x01  # inside the first block, after its CRC
            return bytes(body)
        return data

    damaged = rewrite(Path(backed.record["archive"]), tmp_path / "flipped.tar", flip)
    run_id = backed.register(damaged)  # the catalog keeps the original's sha256

    done = backed.cli("verify", run_id, "--deep", "--json")
    assert done.returncode == 1
    [result] = results(done)
    assert result["status"] == "failed"
    assert result["checks"]["sha256"] == "failed"
    assert any(flipped[0] in e and "CRC32" in e for e in result["errors"]), result["errors"]
    stored = backed.catalog.get(run_id)
    assert stored is not None and stored.verify_status == "failed"
    assert stored.verify_detail and "sha256" in stored.verify_detail

    # Without the catalog's sha256 (a path, not an id), the format check alone still catches it.
    done = backed.cli("verify", str(damaged.rename(tmp_path / "unknown.tar")), "--deep", "--json")
    assert done.returncode == 1
    [result] = results(done)
    assert result["checks"]["sha256"].startswith("skipped")
    assert [e for e in result["errors"] if flipped[0] in e]


def test_wal_damage_inside_an_entry_is_caught_by_deep_and_framing_damage_by_both(
    backed: Backed, tmp_path: Path
) -> None:
    """A real segment's entry written twice, the first's snappy elements damaged (a copy
    reaching before the output's start): only decoding finds it. An unknown entry type in the
    middle breaks the framing: the plain check finds it too."""
    damaged_wal: list[str] = []

    def damage(info: tarfile.TarInfo, data: bytes, *, framing: bool) -> bytes:
        if damaged_wal or not (info.name.startswith("wal/") and info.name.endswith(".wal")):
            return data
        if len(data) < 5:  # an empty segment
            return data
        length = int.from_bytes(data[1:5], "big")
        entry = bytearray(data[: 5 + length])
        if framing:
            entry[0] = 9
        else:
            at, kind = next((pos, k) for pos, k in snappy_elements(bytes(entry[5:])) if k)
            at += 5
            if kind == 1:  # offset: 3 bits in the tag, 8 in the next byte
                entry[at] |= 0xE0
                entry[at + 1] = 0xFF
            else:
                width = 2 if kind == 2 else 4
                entry[at + 1 : at + 1 + width] = b"\xff" * width
        damaged_wal.append(info.name)
        return bytes(entry) + data  # the damaged entry, then the whole segment as it was

    for framing in (False, True):
        damaged_wal.clear()
        archive = rewrite(
            Path(backed.record["archive"]),
            tmp_path / f"wal-{framing}.tar",
            lambda info, data, framing=framing: damage(info, data, framing=framing),
        )
        assert damaged_wal, "the backup has a WAL segment"
        plain, deep = (
            results(backed.cli("verify", str(archive), *extra, "--json"))[0]
            for extra in ((), ("--deep",))
        )
        assert deep["status"] == "failed"
        assert [e for e in deep["errors"] if damaged_wal[0] in e], deep["errors"]
        if framing:
            assert plain["status"] == "failed"
            assert any("unknown entry type 9" in e for e in plain["errors"]), plain["errors"]
        else:
            assert plain["status"] == "ok", plain["errors"]
            assert plain["checks"]["formats"].startswith("ok (")
            assert any("undecodable snappy payload" in e for e in deep["errors"]), deep["errors"]


def test_a_truncated_archive_is_caught(backed: Backed, tmp_path: Path) -> None:
    data = Path(backed.record["archive"]).read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    done = backed.cli("verify", str(truncated), "--json")
    assert done.returncode == 1
    [result] = results(done)
    assert result["checks"]["formats"] == "failed"
    assert any("truncated" in e for e in result["errors"]), result["errors"]
    # what lies past the cut is unknown: no claim that influxdb.conf or wal/ are missing
    assert not any("missing from the archive" in e for e in result["errors"]), result["errors"]
    assert result["checks"]["structure"].startswith("not checked")


def test_a_truncated_bolt_file_and_a_missing_dir_are_caught(backed: Backed, tmp_path: Path) -> None:
    bolt = bolt_file(pages=8, pgid=8)

    def add_bolt(info: tarfile.TarInfo, data: bytes) -> bytes | None:
        if info.name == "influxdb.conf":
            return None  # and lose influxdb.conf on the way
        return data

    damaged = rewrite(Path(backed.record["archive"]), tmp_path / "bolt.tar", add_bolt)
    # append a 0.9-style raft log cut short: the tar stays well-formed, the bolt file does not
    with tarfile.open(damaged) as src:
        members = [(i, src.extractfile(i).read() if i.isreg() else None) for i in src]  # type: ignore[union-attr]
    with tarfile.open(damaged, "w", format=tarfile.PAX_FORMAT) as out:
        for info, data in members:
            out.addfile(plain(info), io.BytesIO(data) if data is not None else None)
        info = tarfile.TarInfo("meta/raft.db")
        info.size = len(bolt) // 2
        out.addfile(info, io.BytesIO(bolt[: info.size]))

    done = backed.cli("verify", str(damaged), "--json")
    assert done.returncode == 1
    [result] = results(done)
    assert any(e.startswith("error: meta/raft.db") for e in result["errors"]), result["errors"]
    assert result["checks"]["structure"] == "failed"
    assert any("influxdb.conf" in e for e in result["errors"])


def test_restore_test_fails_on_a_backup_that_lost_its_data(backed: Backed, tmp_path: Path) -> None:
    def drop_metrics(info: tarfile.TarInfo, data: bytes) -> bytes | None:
        if info.isreg() and info.name.startswith(("data/metrics/", "wal/metrics/")):
            return None
        return data

    damaged = rewrite(Path(backed.record["archive"]), tmp_path / "lost.tar", drop_metrics)
    from influx_backupd.store.archive import sha256_file

    # sha256 and formats are fine: only restoring and counting can tell
    run_id = backed.register(damaged, sha256=sha256_file(damaged))
    done = backed.cli("verify", run_id, "--restore-test", "--json")
    assert done.returncode == 1
    [result] = results(done)
    assert result["checks"]["sha256"] == "ok"
    assert result["checks"]["formats"].startswith("ok")
    assert result["checks"]["restore_test"] == "failed"
    assert any("metrics: 0 points restored, 20000 counted" in e for e in result["errors"]), result[
        "errors"
    ]
    assert not list((backed.root / "archives").glob(".verify-*"))


def test_verify_usage_and_missing_archive(backed: Backed, tmp_path: Path) -> None:
    done = backed.cli("verify")
    assert done.returncode == 2 and "BACKUP" in done.stderr and "Traceback" not in done.stderr
    done = backed.cli("verify", "no-such-backup")
    assert done.returncode == 2 and "neither a catalog id" in done.stderr

    gone = tmp_path / "gone.tar"
    run_id = backed.register(gone)
    done = backed.cli("verify", run_id, "--json")
    assert done.returncode == 1
    assert "missing" in results(done)[0]["errors"][0]
    backed.catalog.delete(run_id)


def test_a_hot_portable_backup_gets_its_manifest_and_sha256_checked(
    backed: Backed, tmp_path: Path
) -> None:
    import subprocess

    from influx_backupd.store.scanners import scan_portable

    target = tmp_path / "portable"
    subprocess.run(
        [
            backed.server.binary,
            "backup",
            "-portable",
            "-host",
            backed.server.backup_host,
            str(target),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    run_id = backed.register(target, mode="hot", sha256=scan_portable(target).sha256)
    done = backed.cli("verify", run_id, "--restore-test", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = results(done)
    assert result["checks"]["sha256"] == "ok" and result["checks"]["manifest"].startswith("ok")
    # Formats and restore test of hot backups: tests/integration/test_verify_hot.py.
    assert result["partial"] is False
    assert result["checks"]["restore_test"].startswith("ok (1 link restored")

    shard = next(p for p in target.iterdir() if p.name.endswith(".tar.gz"))
    shard.write_bytes(shard.read_bytes()[:-10])
    done = backed.cli("verify", run_id, "--json")
    assert done.returncode == 1
    assert results(done)[0]["checks"]["manifest"] == "failed"
