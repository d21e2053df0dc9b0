"""Staged cold backups against a real influxd 1.x: copy while it serves, then only the changes."""

from __future__ import annotations

import hashlib
import signal
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.jobs.staging import Stager
from influx_backupd.store.archive import write_archive
from influx_backupd.store.layout import staging_root
from tests.conftest import Cli, started, write_config

BATCH = 200


@pytest.fixture
def busy_sandbox(tmp_path: Path, influxd_path: str) -> Iterator[Sandbox]:
    """A sandbox that snapshots its cache to TSM early and compacts often, so that TSM files
    appear and vanish while a backup runs, as on a busy server."""
    server = Sandbox(
        tmp_path / "server",
        binary=influxd_path,
        extra_data={
            "cache-snapshot-memory-size": '"64k"',
            "compact-throughput-burst": '"64m"',
            "compact-full-write-cold-duration": '"1s"',
        },
    )
    with started(server):
        yield server


@dataclass
class Writer:
    """Writes batches of BATCH points with increasing timestamps until stopped; remembers which
    batches influxd acknowledged (204: in its WAL, fsynced) and which failed (it was down)."""

    sandbox: Sandbox
    db: str = "metrics"
    results: list[bool] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _one(self, n: int) -> bool:
        base = 1_600_000_000 + n * BATCH
        lines = "\n".join(
            f"cpu,host=h{i % 5} value={n * BATCH + i}i,load={i * 0.5} {base + i}"
            for i in range(BATCH)
        )
        url = (
            self.sandbox.url + "/write?" + urllib.parse.urlencode({"db": self.db, "precision": "s"})
        )
        req = urllib.request.Request(url, data=lines.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status) == 204
        except (urllib.error.URLError, OSError):
            return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            ok = self._one(len(self.results))
            self.results.append(ok)
            if not ok:
                time.sleep(0.01)

    def __enter__(self) -> Writer:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        while len(self.results) < 3:
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def acked_before_first_failure(self) -> int:
        first_failure = self.results.index(False)
        return first_failure


def seed(sandbox: Sandbox, points: int) -> None:
    """Points in a `seed` measurement, waited for until influxd has written them to TSM."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", points, measurement="seed")
    deadline = time.monotonic() + 30
    while not list(sandbox.data.rglob("*.tsm")):
        assert time.monotonic() < deadline, "influxd never snapshotted its cache to TSM"
        time.sleep(0.1)


def _members(archive: Path) -> dict[str, str | None]:
    """Member name → sha256 of its content (None for directories and links)."""
    out: dict[str, str | None] = {}
    with tarfile.open(archive) as tar:
        for info in tar:
            digest = None
            if info.isreg():
                stream = tar.extractfile(info)
                assert stream is not None
                digest = hashlib.sha256(stream.read()).hexdigest()
            out[info.name] = digest
    return out


def test_a_staged_backup_with_a_writer_running_restores_exactly_the_points_acked_before_the_stop(
    tmp_path: Path, busy_sandbox: Sandbox
) -> None:
    sandbox = busy_sandbox
    seed(sandbox, 20_000)
    cli = Cli(
        write_config(
            tmp_path, sandbox, jobs=[{"name": "nightly", "mode": "cold", "copy": "staged"}]
        )
    )
    with Writer(sandbox) as writer:
        record = cli.json("backup")
        deadline = time.monotonic() + 30
        while sum(writer.results[writer.results.index(False) :]) < 3:  # acked after the restart
            assert time.monotonic() < deadline, "the writer never got through after the backup"
            time.sleep(0.05)
    assert record["status"] == "ok", record["error"]
    assert record["extra"]["copy"] == "staged"
    for phase in ("prestage_s", "stop_s", "copy_s", "start_s", "downtime_s", "archive_s"):
        assert record[phase] is not None and record[phase] > 0, phase
    assert record["window_bytes"] == record["extra"]["staging"]["window"]["copied_bytes"]
    assert record["downtime_s"] >= record["stop_s"] + record["copy_s"] + record["start_s"] - 1e-6

    # Everything acknowledged before influxd went down is in the backup; at most the one batch
    # that was in flight when it stopped may be too (influxd may have logged it, then closed).
    acked = writer.acked_before_first_failure()
    assert acked >= 3 and writer.results.count(True) > acked
    names = _members(Path(record["archive"]))
    assert {n.split("/")[0] for n in names} == {"meta", "data", "wal", "influxdb.conf"}
    assert names["influxdb.conf"] == hashlib.sha256(sandbox.conf.read_bytes()).hexdigest()

    done = cli("restore", record["id"], "--yes")
    assert done.returncode == 0, done.stderr
    assert sandbox.count("metrics", measurement="seed") == 20_000
    assert sandbox.count("metrics") in (acked * BATCH, (acked + 1) * BATCH)


def test_the_staged_archive_equals_a_direct_archive_of_the_same_stopped_server(
    tmp_path: Path, busy_sandbox: Sandbox
) -> None:
    """Phase 1 while points are written and compactions delete TSM files; then, with influxd
    stopped, phase 2 and a direct tar of the same stopped dirs: same members, same bytes."""
    sandbox = busy_sandbox
    seed(sandbox, 30_000)
    sources = [
        ("meta", sandbox.meta),
        ("data", sandbox.data),
        ("wal", sandbox.wal),
        ("influxdb.conf", sandbox.conf),
    ]
    stager = Stager(staging_root(tmp_path / "archives", "job"), sources)
    with Writer(sandbox):
        first = stager.sync(tolerant=True)
        time.sleep(0.3)  # more writes (and snapshots) after phase 1
    assert first.files > 0
    sandbox.stop()
    try:
        stager.sync(tolerant=False)
        direct = write_archive(tmp_path / "direct.tar", sources)
        staged = write_archive(tmp_path / "staged.tar", stager.archive_sources())
        direct_members, staged_members = _members(direct.path), _members(staged.path)
        assert list(staged_members) == list(direct_members)
        assert staged_members == direct_members
        assert any(n.endswith(".tsm") for n in direct_members)
        assert staged.sha256 == direct.sha256  # headers too: mode, owner, mtime
    finally:
        sandbox.start()


def test_keep_staging_keeps_the_tree_for_an_incremental_next_run_and_false_removes_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    cli = Cli(
        write_config(
            tmp_path,
            sandbox,
            jobs=[
                {"name": "kept", "mode": "cold", "copy": "staged", "keep_staging": True},
                {"name": "tidy", "mode": "cold", "copy": "staged", "keep_staging": False},
            ],
        )
    )
    storage = tmp_path / "archives"
    first = cli.json("backup", "--job", "kept")
    second = cli.json("backup", "--job", "kept")
    assert first["status"] == second["status"] == "ok"
    assert staging_root(storage, "kept").is_dir()
    pre1, pre2 = first["extra"]["staging"]["prestage"], second["extra"]["staging"]["prestage"]
    assert pre1["copied"] == pre1["files"]
    assert pre2["copied"] < pre2["files"], "the kept tree makes phase 1 incremental"
    assert _members(Path(second["archive"]))["meta/meta.db"] is not None

    tidy = cli.json("backup", "--job", "tidy")
    assert tidy["status"] == "ok", tidy["error"]
    assert tidy["prestage_s"] is not None and tidy["archive_s"] is not None
    assert not staging_root(storage, "tidy").exists()
    assert sandbox.count("metrics") == 5_000


def test_sigkill_during_phase_one_leaves_influxd_serving_and_the_next_run_works(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    # A large sparse file makes phase 1 long enough to kill the backup while it copies.
    with open(sandbox.data / "filler.bin", "wb") as fh:
        fh.truncate(3_000_000_000)
    cli = Cli(
        write_config(
            tmp_path,
            sandbox,
            jobs=[{"name": "nightly", "mode": "cold", "copy": "staged"}],
            holes="fill",
        )
    )
    staged_filler = staging_root(tmp_path / "archives", "nightly") / "data" / "filler.bin"
    backup = cli.popen("backup", "--json")
    deadline = time.monotonic() + 60
    while not staged_filler.exists():
        assert time.monotonic() < deadline, "never saw phase 1 copy the filler"
        assert backup.poll() is None, "the backup ended before phase 1 was seen"
        time.sleep(0.002)
    backup.send_signal(signal.SIGKILL)
    backup.wait()
    assert sandbox.ping(), "phase 1 runs while influxd serves: killing it stops nothing"
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()

    (sandbox.data / "filler.bin").unlink()
    record = cli.json("backup")
    assert record["status"] == "ok", record["error"]
    assert not staged_filler.exists()
    assert "data/filler.bin" not in _members(Path(record["archive"]))
    assert sandbox.ping()
    assert sandbox.count("metrics") == 2_000
