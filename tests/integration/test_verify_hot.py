"""verify of hot backups: a real influxd 1.6 chain restore-tested, damaged shards, the 0.9 stand-in."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import shutil
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.core.errors import CheckFailed
from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import new_run_id
from influx_backupd.store.scanners import scan_portable
from tests.conftest import STAND_INS, Cli, hot_chain, throwaway_influxds, write_config

JOBS = [{"name": "hotjob", "mode": "hot"}, {"name": "coldjob", "mode": "cold", "copy": "direct"}]
INFLUXD09 = STAND_INS / "influxd09"
NOT_QUERIED = "files restored; not queried (0.9 server not available here)"


@dataclasses.dataclass
class Chain:
    root: Path
    cli: Cli
    server: Sandbox
    full: dict[str, Any]
    incremental: dict[str, Any]
    cold: dict[str, Any]

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.root / "state")

    def register(self, archive: Path, **changes: Any) -> str:
        """A catalog entry for a damaged copy of the incremental, in the same chain."""
        run_id = new_run_id()
        original = self.catalog.get(self.incremental["id"])
        assert original is not None
        self.catalog.save(dataclasses.replace(original, id=run_id, archive=str(archive), **changes))
        return run_id


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """A hot full and an incremental (writes and a new database between them), and a cold backup."""
    binary = influxd_binary()
    assert binary, "influxd is not installed"
    root = tmp_path_factory.mktemp("verify-hot")
    server = Sandbox(root / "server", binary=binary)
    server.write_config()
    server.start()
    try:
        cli = Cli(write_config(root, server, jobs=JOBS))
        full, incremental = hot_chain(
            cli, server, [[("metrics", 3_000)], [("metrics", 1_000), ("later", 500)]], job="hotjob"
        )
        cold = cli.json("backup", "--job", "coldjob")
        assert cold["status"] == "ok", cold["error"]
        yield Chain(root, cli, server, full, incremental, cold)
    finally:
        server.stop()


def results(done: Any) -> list[dict[str, Any]]:
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def assert_cleaned_up(chain: Chain) -> None:
    assert throwaway_influxds(chain.root / "archives") == [], "the throwaway influxd is stopped"
    assert not list((chain.root / "archives").glob(".verify-*")), "the scratch dir is removed"
    assert chain.server.ping(), "the real server is untouched"


def test_restore_test_of_an_incremental_restores_its_whole_chain(chain: Chain) -> None:
    done = chain.cli("verify", chain.incremental["id"], "--restore-test", "--deep", "--json")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    [result] = results(done)
    assert result["status"] == "ok" and result["partial"] is False
    checks = result["checks"]
    assert checks["sha256"] == "ok" and checks["manifest"].startswith("ok")
    assert checks["formats"].startswith("ok (") and "deep" in checks["formats"]
    assert not checks["formats"].startswith("ok (0 tsm"), "the shards' TSM files were read"
    assert checks["restore_test"].startswith("ok (2 links restored"), checks["restore_test"]
    # The full's 3000 points, the increment's 1000 more, and the database only it has.
    assert result["restored_counts"] == {"metrics": 4_000, "later": 500}
    stored = chain.catalog.get(chain.incremental["id"])
    assert stored is not None and stored.verify_status == "ok"
    assert stored.verify_detail and "later 500" in stored.verify_detail
    assert "metrics 4000" in stored.verify_detail
    assert_cleaned_up(chain)


def _flip_in_tsm(shard: Path) -> str | None:
    """Flip one byte inside the first TSM block of a shard .tar.gz; a valid gzip again, the
    unpacked size (the manifest's) unchanged. The member's name, or None without a TSM."""
    raw = bytearray(gzip.decompress(shard.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        member = next((m for m in tar if m.name.endswith(".tsm") and m.size > 100), None)
    if member is None:
        return None
    raw[member.offset_data + 5 + 4 + 20] ^= 0x01  # past the header and the block's CRC
    shard.write_bytes(gzip.compress(bytes(raw)))
    return member.name


def _damaged_copy(chain: Chain, dest: Path) -> tuple[Path, str]:
    shutil.copytree(chain.incremental["archive"], dest)
    for shard in sorted(dest.glob("*.tar.gz")):
        flipped = _flip_in_tsm(shard)
        if flipped is not None:
            return dest, flipped
    raise AssertionError("the incremental holds no TSM file")


def test_a_flipped_tsm_byte_inside_a_shard_gzip_fails_verify(chain: Chain, tmp_path: Path) -> None:
    damaged, member = _damaged_copy(chain, tmp_path / "damaged")
    stale = chain.register(damaged)  # the catalog keeps the original's sha256
    fixed = chain.register(damaged, sha256=scan_portable(damaged).sha256)
    try:
        done = chain.cli("verify", stale, "--deep", "--json")
        assert done.returncode == 1
        [result] = results(done)
        assert result["checks"]["sha256"] == "failed"
        assert result["checks"]["manifest"].startswith("ok"), "the gzip itself is sound"

        # With the sha256 fixed up, the format check alone finds the damaged block.
        done = chain.cli("verify", fixed, "--deep", "--restore-test", "--json")
        assert done.returncode == 1, done.stdout
        [result] = results(done)
        assert result["checks"]["sha256"] == "ok"
        assert result["checks"]["formats"] == "failed"
        assert any(member in e and "CRC32" in e for e in result["errors"]), result["errors"]
        assert "restore_test" in result["checks"], "the restore test still ran"
        stored = chain.catalog.get(fixed)
        assert stored is not None and stored.verify_status == "failed"
        assert stored.verify_detail and "CRC32" in stored.verify_detail
        assert_cleaned_up(chain)
    finally:
        chain.catalog.delete(stale)
        chain.catalog.delete(fixed)


def test_a_flipped_byte_in_the_compressed_stream_fails_the_manifest_check(
    chain: Chain, tmp_path: Path
) -> None:
    damaged = tmp_path / "gz"
    shutil.copytree(chain.incremental["archive"], damaged)
    shard = max(damaged.glob("*.tar.gz"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    run_id = chain.register(damaged)
    try:
        done = chain.cli("verify", run_id, "--json")
        assert done.returncode == 1
        [result] = results(done)
        assert result["checks"]["manifest"] == "failed"
        assert any("damaged gzip" in e for e in result["errors"]), result["errors"]
    finally:
        chain.catalog.delete(run_id)


def test_verify_all_restore_tests_hot_and_cold_backups(chain: Chain) -> None:
    done = chain.cli("verify", "--all", "--restore-test", "--json", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    by_id = {r["run_id"]: r for r in results(done)}
    assert set(by_id) == {chain.full["id"], chain.incremental["id"], chain.cold["id"]}
    assert by_id[chain.full["id"]]["checks"]["restore_test"].startswith("ok (1 link restored")
    assert by_id[chain.full["id"]]["restored_counts"] == {"metrics": 3_000}
    assert by_id[chain.incremental["id"]]["restored_counts"] == {"metrics": 4_000, "later": 500}
    assert by_id[chain.cold["id"]]["checks"]["restore_test"].startswith(
        "ok (2 databases answer, 2 point counts match"
    )
    for run_id in by_id:
        stored = chain.catalog.get(run_id)
        assert stored is not None and stored.verify_status == "ok"
    assert_cleaned_up(chain)


def test_a_signal_during_the_restore_test_stops_the_throwaway_server(chain: Chain) -> None:
    proc = chain.cli.popen("verify", chain.incremental["id"], "--restore-test")
    try:
        deadline = time.monotonic() + 60
        while not throwaway_influxds(chain.root / "archives"):
            assert proc.poll() is None, "verify ended before its throwaway influxd was seen"
            assert time.monotonic() < deadline, "no throwaway influxd appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    assert_cleaned_up(chain)


def test_a_restore_test_killed_for_memory_says_so(chain: Chain) -> None:
    """The restore test's influxd runs beside the live one: it is the OOM killer's first choice
    (oom_score_adj 1000), and a restore test it kills fails naming the kill, not only the
    refused queries that followed. The test plays the OOM killer."""
    proc = chain.cli.popen("verify", chain.incremental["id"], "--restore-test", "--json")
    try:
        deadline = time.monotonic() + 60
        while True:
            servers = throwaway_influxds(chain.root / "archives")
            scores = [Path(f"/proc/{s.pid}/oom_score_adj").read_text().strip() for s in servers]
            if scores == ["1000"]:
                break
            assert proc.poll() is None, "verify ended before its throwaway influxd was marked"
            assert time.monotonic() < deadline, f"no throwaway marked for the OOM killer: {scores}"
            time.sleep(0.02)
        servers[0].kill()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = json.loads(stdout)[0]["errors"]
    assert any("its influxd was killed by SIGKILL" in e and "OOM killer" in e for e in errors), (
        errors
    )
    assert_cleaned_up(chain)


# -- 0.9, through the stand-in ----------------------------------------------------------------------


@dataclasses.dataclass
class Chain09:
    cli: Cli
    full: dict[str, Any]
    incremental: dict[str, Any]


@pytest.fixture
def chain09(tmp_path: Path) -> Iterator[Chain09]:
    """A 0.9 snapshot and its increment (a shard added between them), from the stand-in."""
    server = Sandbox(tmp_path / "server09", binary=str(INFLUXD09))
    server.write_config()
    shard = server.data / "db" / "default" / "1"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(os.urandom(3000))
    server.meta.mkdir(parents=True)
    (server.meta / "meta").write_bytes(b"meta v1")
    server.start()
    try:
        cli = Cli(
            write_config(tmp_path, server, influxd={"binary": str(INFLUXD09)}, jobs=[JOBS[0]])
        )
        full = cli.json("backup")
        second = server.data / "db" / "default" / "2"
        second.write_bytes(b"second shard")
        os.utime(second, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        incremental = cli.json("backup")
        for record in (full, incremental):
            assert record["status"] == "ok", record["error"]
        assert incremental["kind"] == "incremental"
        yield Chain09(cli, full, incremental)
    finally:
        server.stop()


def test_09_restore_test_restores_the_chain_files_and_says_it_cannot_query(
    chain09: Chain09,
) -> None:
    done = chain09.cli("verify", chain09.incremental["id"], "--restore-test", "--json")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    [result] = results(done)
    assert result["status"] == "ok"
    assert result["checks"]["sha256"] == "ok"
    restore = result["checks"]["restore_test"]
    assert restore.startswith(NOT_QUERIED), restore
    assert "3 files of 2 links" in restore, "meta and the shard of the full, the increment's shard"
    assert result["partial"] is True, "not queried: a partial result"
    text = chain09.cli("verify", chain09.incremental["id"], "--restore-test").stdout
    assert "ok (partial)" in text and NOT_QUERIED in text
    assert not list(Path(chain09.full["archive"]).parent.glob(".verify-*"))


def test_09_restore_test_fails_when_a_link_of_the_chain_is_missing(chain09: Chain09) -> None:
    Path(chain09.full["archive"]).unlink()
    done = chain09.cli("verify", chain09.incremental["id"], "--restore-test", "--json")
    assert done.returncode == 1
    [result] = results(done)
    assert result["checks"]["sha256"] == "ok", "the increment itself is intact"
    assert result["checks"]["restore_test"] == "failed"
    assert any(chain09.full["archive"] in e and "does not exist" in e for e in result["errors"]), (
        result["errors"]
    )


def test_09_a_shard_file_missing_from_the_snapshot_fails(chain09: Chain09) -> None:
    path = Path(chain09.incremental["archive"])
    with tarfile.open(path) as src:
        members = [(m, src.extractfile(m).read()) for m in src]  # type: ignore[union-attr]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
        for info, data in members:
            if info.name != "db/default/2":  # the manifest still lists it
                out.addfile(info, io.BytesIO(data))
    done = chain09.cli("verify", chain09.incremental["id"], "--restore-test", "--json")
    assert done.returncode == 1
    [result] = results(done)
    assert result["checks"]["manifest"] == "failed"
    assert result["checks"]["restore_test"] == "failed", "the restored files miss it too"
    assert any("db/default/2 was not restored" in e for e in result["errors"]), result["errors"]


def test_a_server_keeping_its_own_statistics_restore_tests_ok(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Debian's influxdb keeps _internal (the monitor store is on by default); `influxd restore
    -portable` skips it. Before: every hot backup of such a server failed its restore test
    ("databases missing after restore: _internal"), and the chain's later links with it."""
    sandbox.stop()
    sandbox.conf.write_text(
        sandbox.conf.read_text().replace(
            "store-enabled = false", 'store-enabled = true\n  store-interval = "1s"'
        )
    )
    sandbox.start()
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    deadline = time.monotonic() + 30
    while "_internal" not in json.dumps(sandbox.query("SHOW DATABASES")):
        assert time.monotonic() < deadline, "the monitor store never wrote _internal"
        time.sleep(0.2)
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{"name": "hotjob", "mode": "hot"}]))
    backup = cli("backup", "--json")
    assert backup.returncode == 0, backup.stderr[-3000:]
    done = cli("verify", json.loads(backup.stdout)["id"], "--restore-test", "--json")
    [result] = json.loads(done.stdout)
    assert done.returncode == 0, result
    assert result["checks"]["restore_test"].startswith("ok"), result["checks"]


# -- the links before an increment, and the records beside the backups ----------------------------


def test_deep_verify_of_a_link_reads_the_earlier_links_plain_says_it_did_not(
    chain: Chain, tmp_path: Path
) -> None:
    """Before: `verify TIP [--deep]` said "chain ok" over an earlier link with one byte changed
    (its size the same: the chain check was a stat), and a restore of TIP then refused it."""
    middle = tmp_path / "middle"
    shutil.copytree(chain.incremental["archive"], middle)
    shard = max(middle.glob("*.tar.gz"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    # not the verdict an earlier test left on the original (a killed restore test's)
    fresh: dict[str, Any] = {"verify_status": None, "verify_detail": None}
    damaged = chain.register(middle, **fresh)
    shutil.copytree(chain.incremental["archive"], tmp_path / "tip")  # no record beside it
    tip = chain.register(tmp_path / "tip", parent_id=damaged, **fresh)
    try:
        plain = chain.cli("verify", tip)
        assert plain.returncode == 0, plain.stdout + plain.stderr[-2000:]
        assert "chain ok" not in plain.stdout and "ok (3 links" not in plain.stdout
        assert (
            "3 links present, sizes match; contents of 2 earlier links not read "
            "(verify --deep, or verify --all)" in plain.stdout
        ), plain.stdout

        done = chain.cli("verify", tip, "--deep", "--json")
        assert done.returncode == 1, done.stdout
        [result] = results(done)
        assert result["checks"]["sha256"] == "ok", "the tip itself is intact"
        assert result["checks"]["chain"] == "failed", result
        assert any(damaged in e and "damaged gzip" in e for e in result["errors"]), result
        # the damaged link was read and found bad: recorded on it too (tests/integration/
        # test_chain_marks.py has what list and status then say)
        found = chain.catalog.get(damaged)
        assert found is not None and found.failed_check, found

        intact = chain.cli("verify", chain.incremental["id"], "--deep", "--json")
        assert intact.returncode == 0, intact.stdout
        assert results(intact)[0]["checks"]["chain"].startswith("ok (2 links, each one's")
    finally:
        chain.catalog.delete(tip)
        chain.catalog.delete(damaged)


def test_deep_verify_reads_again_a_link_whose_last_check_failed(
    chain: Chain, tmp_path: Path
) -> None:
    """Before: `verify TIP --deep` failed on an earlier link's stale verdict ("failed its last
    check (... is not a directory)") although the link's dir was back and intact, and a
    restore of TIP succeeded. --deep reads it again, as verify of it alone would, and its
    record says what was found; plain verify still goes by the verdict (it reads no link)."""
    middle = tmp_path / "middle"
    shutil.copytree(chain.incremental["archive"], middle)
    stale = {"verify_status": "failed", "verify_detail": f"{middle}: is not a directory"}
    back = chain.register(middle, **stale)
    shutil.copytree(chain.incremental["archive"], tmp_path / "tip")
    tip = chain.register(tmp_path / "tip", parent_id=back, verify_status=None, verify_detail=None)
    try:
        plain = chain.cli("verify", tip, "--json")
        assert plain.returncode == 1, plain.stdout
        assert any("failed its last check" in e for e in results(plain)[0]["errors"])

        done = chain.cli("verify", tip, "--deep", "--json")
        assert done.returncode == 0, done.stdout + done.stderr[-2000:]
        [result] = results(done)
        assert result["checks"]["chain"].startswith("ok (3 links, each one's"), result
        again = chain.catalog.get(back)
        assert again is not None and again.verify_status == "ok", again
        assert not again.failed_check and "is not a directory" not in str(again.verify_detail)

        # a restore test's verdict stands: --deep runs none of an earlier link
        failed = {
            "verify_status": "failed",
            "verify_detail": "restore test: 3 points, 4000 counted",
        }
        chain.catalog.save(dataclasses.replace(again, **failed))
        done = chain.cli("verify", tip, "--deep", "--json")
        assert done.returncode == 1, done.stdout
        assert any("restore test: 3 points" in e for e in results(done)[0]["errors"])
    finally:
        chain.catalog.delete(tip)
        chain.catalog.delete(back)


def test_a_record_beside_a_backup_that_disagrees_with_the_catalog_fails_verify(
    chain: Chain, tmp_path: Path
) -> None:
    """Before: a sidecar edited to kind full, no parent and another sha256 (what `import` on a
    new host reads) passed verify and verify --all."""
    copy = tmp_path / Path(chain.incremental["archive"]).name
    shutil.copytree(chain.incremental["archive"], copy)
    run_id = chain.register(copy, verify_status=None, verify_detail=None)
    data = json.loads(Path(f"{chain.incremental['archive']}.json").read_text())
    data.update(id=run_id, kind="full", parent_id=None, sha256="0" * 64)
    Path(f"{copy}.json").write_text(json.dumps(data))
    bare = chain.register(tmp_path / "bare", verify_status=None, verify_detail=None)
    shutil.copytree(chain.incremental["archive"], tmp_path / "bare")
    try:
        done = chain.cli("verify", run_id, "--json")
        assert done.returncode == 1, done.stdout
        [result] = results(done)
        assert result["checks"]["sha256"] == "ok" and result["checks"]["record"] == "failed"
        [line] = [e for e in result["errors"] if "disagrees with the catalog" in e]
        assert f"{copy}.json" in line and "kind 'full' here, 'incremental' in the catalog" in line
        assert f"parent_id None here, '{chain.full['id']}' in the catalog" in line
        assert "sha256 '" + "0" * 64 + "' here" in line

        every = chain.cli("verify", "--all", "--job", "hotjob", "--json")
        assert every.returncode == 1
        by_id = {r["run_id"]: r for r in results(every)}
        assert by_id[run_id]["checks"]["record"] == "failed"
        assert by_id[chain.incremental["id"]]["checks"]["record"].startswith("ok")
        assert by_id[chain.full["id"]]["checks"]["record"].startswith("ok")
        # none beside it: said, no verdict against an intact backup
        assert by_id[bare]["status"] == "ok" and by_id[bare]["checks"]["record"] == "missing"
        assert any("no backup record beside it" in w for w in by_id[bare]["warnings"])
    finally:
        chain.catalog.delete(run_id)
        chain.catalog.delete(bare)


def test_a_portable_meta_store_whose_default_policy_is_none_of_its_own_fails_its_scan(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Audit G: "autogen" with one bit flipped in a portable backup's .meta passed verify
    --deep and restore by path; every query of the restored server that named no retention
    policy failed ("retention policy not found: Autogen"). The meta store is read now."""
    cli = Cli(write_config(tmp_path, sandbox, jobs=[{"name": "hotjob", "mode": "hot"}]))
    (full,) = hot_chain(cli, sandbox, [[("metrics", 300)]])
    backup = Path(full["archive"])
    assert scan_portable(backup).files > 0  # sound: no false alarm on a real one
    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    (meta,) = damaged.glob("*.meta")
    data = meta.read_bytes()
    at = data.index(b"\x12\x07autogen")  # DatabaseInfo's DefaultRetentionPolicy field
    meta.write_bytes(data[: at + 2] + b"A" + data[at + 3 :])
    with pytest.raises(CheckFailed, match="its default retention policy b'Autogen' is none"):
        scan_portable(damaged)
