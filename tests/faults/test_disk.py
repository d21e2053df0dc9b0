"""The storage filesystem fills up mid-write (a small real tmpfs; mounting needs root): the
error names the path, influxd runs, nothing partial is left or taken for a good backup, and the
backups made before are untouched."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import Ledger, Watched, kill_backup_mid_copy, run_cli

MiB = 1 << 20
FILLER = 300 * MiB  # sparse in the data dir, written out in full by the copy


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted on `mount` (made here) while the body runs."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (CI runs as root)")
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "archives", "1000m") as mount:
        yield mount


def _fill(mount: Path) -> None:
    """Take all the room left, fast (fallocate in shrinking steps while the run writes)."""
    fd = os.open(mount / "hog", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        offset, step = 0, 64 * MiB
        while step >= 4096:
            try:
                os.posix_fallocate(fd, offset, step)
                offset += step
            except OSError:
                step //= 4
    finally:
        os.close(fd)


def _take_all_but(hog: Path, keep: int) -> None:
    """Leave `keep` bytes free on hog's filesystem (nothing taken when less is free already)."""
    free = os.statvfs(hog.parent).f_bavail * os.statvfs(hog.parent).f_frsize
    if free > keep:
        fd = os.open(hog, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, free - keep)
        finally:
            os.close(fd)


# variant → (job mode, copy, the event at which the filesystem fills up, its fields)
VARIANTS = {
    "cold direct, in the stop window": ("cold", "direct", "archive.writing", {"phase": "copy"}),
    "cold staged, syncing before the stop": (
        "cold",
        "staged",
        "staging.syncing",
        {"phase": "prestage"},
    ),
    "cold staged, the tar after the start": (
        "cold",
        "staged",
        "archive.writing",
        {"phase": "archive"},
    ),
    "hot, as influxd backup writes": ("hot", "staged", "", {}),
}


@pytest.mark.fault("disk-full", "the storage filesystem fills up mid-write")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_storage_filling_up_mid_write_fails_cleanly(
    tmp_path: Path, sandbox: Sandbox, small_fs: Path, ledger: Ledger, variant: str
) -> None:
    mode, copy, event, fields = VARIANTS[variant]
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": mode, "copy": copy}
    config = write_config(tmp_path, sandbox, jobs=[job], holes="fill")
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 20_000)
    first = run_cli(config, "backup", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    ledger.take()
    before = set(os.listdir(small_fs))
    if mode == "cold":
        with open(sandbox.data / "filler.bin", "wb") as fh:
            fh.truncate(FILLER)
        # All the room but what the run's own space check asks for, taken up front: the fill at
        # the event then needs a few steps, not the archive's size (a 300 MiB copy at 700 MB/s
        # once finished before _fill had taken its room: the run was ok, seen in CI)
        planned = json.loads(run_cli(config, "backup", "--dry-run", "--json").stdout)
        _take_all_but(small_fs / "hog0", planned["needed_bytes"] + 16 * MiB)
        backup = Watched(config, "backup", "--json")
        backup.wait_event(event, **fields)
        _fill(small_fs)
    else:
        _fill(small_fs)  # the tool runs out of room as it writes
        backup = Watched(config, "backup", "--json")
    code, out, err = backup.finish()
    assert code == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    record = json.loads(out)
    assert record["status"] == "failed", record
    error = record["error"]
    assert "No space left on device" in error or "no space" in error.lower(), error
    assert str(small_fs) in error, f"the error names the path: {error}"
    assert sandbox.ping(), "influxd serves"
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    (small_fs / "hog").unlink()
    (small_fs / "hog0").unlink(missing_ok=True)
    (sandbox.data / "filler.bin").unlink(missing_ok=True)
    # Nothing of the failed run is left looking like a backup: no archive, no record beside it,
    # no partial; and it is not listed as good.
    left = set(os.listdir(small_fs)) - before - {".staging"}
    assert left == set(), f"left behind: {left}"
    runs = {r["id"]: r for r in json.loads(run_cli(config, "list", "--json").stdout)}
    assert runs[record["id"]]["status"] == "failed"
    assert runs[record["id"]]["archive"] is None or not Path(runs[record["id"]]["archive"]).exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
    again = run_cli(config, "backup", "--json")  # with room again, the next backup is good
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """A state dir alone on a small tmpfs, to fill."""
    with tmpfs(tmp_path / "state", "16m") as mount:
        yield mount


@pytest.mark.fault("disk-full", "the state dir is full when a dead run left influxd stopped")
@pytest.mark.parametrize("command", ["run", "backup"])
def test_a_full_state_dir_does_not_keep_influxd_down(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, small_state: Path, command: str
) -> None:
    """A backup killed in its stop window, then its state dir fills up: the next command (the
    daemon started by its unit, or a cron backup) still starts influxd (before, the pid it
    writes into the lock file failed first: exit 1, influxd left down until space was freed),
    then says in one line that the state dir is full."""
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    config = write_config(tmp_path, sandbox, jobs=[job], holes="fill")
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    assert run_cli(config, "backup").returncode == 0
    ledger.take()
    kill_backup_mid_copy(config, sandbox, FILLER)
    assert (small_state / "influxd-stopped.json").exists() and not sandbox.ping()
    _fill(small_state)

    done = run_cli(config, command, timeout=120)

    assert sandbox.ping(), "influxd answers again"
    assert not (small_state / "influxd-stopped.json").exists()
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"state_dir {small_state} is full" in done.stderr.strip().splitlines()[-1]
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


@pytest.mark.fault("disk-full", "a write with no file name to it fails for want of space")
def test_a_nameless_full_disk_error_names_the_full_dir(
    tmp_path: Path,
    sandbox: Sandbox,
    small_state: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """os.write and friends raise ENOSPC without a file name: the command's one line was the
    bare "No space left on device". It now says which of our dirs is full."""
    from influx_backupd.cli import main as cli_main

    config = write_config(tmp_path, sandbox)

    def writes_into_the_state_dir(*_args: object) -> int:
        fd = os.open(small_state / "scratch", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:  # a real ENOSPC from the kernel, as a full tmpfs gives it
                os.write(fd, b"\0" * (1 << 20))
        finally:
            os.close(fd)

    monkeypatch.setattr(cli_main, "command_function", lambda _name: writes_into_the_state_dir)
    status = cli_main.main(["--config", str(config), "list"])

    assert status == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("influx-backupd: No space left on device: state_dir "), line
    assert f"{small_state} has " in line and "bytes free" in line and "storage.dir" not in line


def _config_with(state: Path, storage: Path, data: Path) -> Any:
    """What the nameless-ENOSPC line reads of a config: our dirs and influxd's."""
    server = SimpleNamespace(dirs=lambda: {"meta": data.parent / "meta", "data": data})
    return SimpleNamespace(state_dir=state, storage_dir=storage, server=server)


@pytest.mark.fault("disk-full", "a restore's write beside influxd's dirs fails for want of space")
def test_a_nameless_full_disk_error_names_influxds_full_dir(tmp_path: Path) -> None:
    """A restore writes its staging dirs beside influxd's live dirs, which need not share a
    filesystem with ours: the line named no dir when that one filled (a bare "No space left
    on device" for a hot restore or --database). It names influxd's full dir now."""
    from influx_backupd.cli.main import _full_dirs

    for name in ("state", "storage"):
        (tmp_path / name).mkdir()
    with tmpfs(tmp_path / "influxdb", "4m") as live:
        (live / "data").mkdir()
        _fill(live)
        line = _full_dirs(_config_with(tmp_path / "state", tmp_path / "storage", live / "data"))
    assert line.startswith(": influxd's data dir "), line
    assert f"{live}/data has " in line and "state_dir" not in line and "storage.dir" not in line


@pytest.mark.fault("disk-full", "a write failed for want of space, freed again by the clean-up")
def test_a_nameless_full_disk_error_freed_since_says_what_is_free_now(tmp_path: Path) -> None:
    """The failed run's clean-up often frees what filled: then what each filesystem we write
    has free now, once each (state, storage and influxd's dirs on one filesystem here)."""
    from influx_backupd.cli.main import _full_dirs

    for name in ("state", "storage", "data"):
        (tmp_path / name).mkdir()
    line = _full_dirs(_config_with(tmp_path / "state", tmp_path / "storage", tmp_path / "data"))
    assert line.startswith(f" (bytes free now: state_dir {tmp_path}/state "), line
    assert line.count(" free now") == 1 and "storage.dir" not in line
