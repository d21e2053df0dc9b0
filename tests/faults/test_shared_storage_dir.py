"""Two instances (two influxds, two state dirs) given one storage dir, as a config copied for
an influx-backupd@NAME with only [influxd] changed gives them. Real influxd 1.6, real CLI.

Before: nothing kept them apart. Run at once (one schedule), both filled the staging tree
.staging/nightly: 7 of 16 runs were ok and held the other server's databases; and each one's
recovery removed the other's unfinished archive as a dead run's, failing it after its stop."""

from __future__ import annotations

import signal
import tarfile
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, started, write_config
from tests.faults.test_restore_interrupted import paused_at

JOB = [{"name": "nightly", "schedule": "0 3 * * *", "mode": "cold"}]  # staged: the default


def _databases(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return {
            name.split("/")[1]
            for name in tar.getnames()
            if name.startswith("data/") and name.count("/") >= 2
        }


@pytest.mark.fault("refusal", "a second instance given the same storage dir", "cold, staged")
def test_a_second_instance_on_the_same_storage_dir_waits_and_touches_nothing_of_the_first(
    tmp_path: Path, influxd_path: str
) -> None:
    storage = tmp_path / "shared-archives"
    with (
        started(Sandbox(tmp_path / "a" / "server", binary=influxd_path)) as a,
        started(Sandbox(tmp_path / "b" / "server", binary=influxd_path)) as b,
    ):
        a.create_db("alpha")
        a.write_points("alpha", 500)
        b.create_db("beta")
        b.write_points("beta", 500)
        configs = {}
        for name, server in (("a", a), ("b", b)):
            config = write_config(tmp_path / name, server, jobs=JOB)
            config.write_text(
                config.read_text().replace(str(tmp_path / name / "archives"), str(storage))
            )
            configs[name] = config
        first = Cli(configs["a"]).json("backup")
        assert first["status"] == "ok" and _databases(Path(first["archive"])) == {"alpha"}

        # A's next run holds its lock (paused before its stop), its archive being written
        running = paused_at(
            tmp_path / "a",
            configs["a"],
            ["backup"],
            "influx_backupd.influxd.counts.before_stop",
            "",
        )
        try:
            in_flight = storage / "nightly-20261204T030000Z-a1b2.tar.partial"
            in_flight.write_bytes(b"A's archive, being written")
            pids = b.pids()
            refused = Cli(configs["b"])("backup")
            assert refused.returncode == 75, refused.stderr
            line = refused.stderr.strip().splitlines()[-1]
            assert f"storage dir {storage} is in use by another influx-backupd" in line, line
            assert in_flight.read_bytes() == b"A's archive, being written"
            assert b.pids() == pids, "B's influxd never stopped"
            assert not (storage / ".staging" / "nightly").exists() or _staged(storage) <= {"alpha"}
        finally:
            running.send_signal(signal.SIGKILL)
            running.communicate(timeout=60)
        assert a.ping()

        second = Cli(configs["b"]).json("backup")
        assert second["status"] == "ok", second.get("error")
        assert _databases(Path(second["archive"])) == {"beta"}
        assert _databases(Path(first["archive"])) == {"alpha"}


def _staged(storage: Path) -> set[str]:
    data = storage / ".staging" / "nightly" / "data"
    return {p.name for p in data.iterdir()} if data.is_dir() else set()
