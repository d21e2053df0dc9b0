"""What the systemd units need from the code: the state dir from $STATE_DIRECTORY, warnings
about paths the unit's sandbox would not let the daemon write, influxd at normal priority."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from influx_backupd.core.config import default_state_dir, load
from influx_backupd.core.unit_paths import Sandbox, unit_for, warnings
from influx_backupd.influxd.server import normal_priority

INFLUXDB_CONF = """
[meta]
dir = "{root}/meta"
[data]
dir = "{root}/data"
wal-dir = "{root}/wal"
"""


def write(tmp_path: Path, daemon: str = "", storage: Path | None = None) -> Path:
    conf = tmp_path / "influxdb.conf"
    conf.write_text(INFLUXDB_CONF.format(root=tmp_path / "server"))
    path = tmp_path / "config.toml"
    path.write_text(
        f'[daemon]\n{daemon}\n[influxd]\nconfig = "{conf}"\nservice = "influxdb.service"\n'
        f'[storage]\ndir = "{storage or tmp_path / "archives"}"\n'
    )
    return path


def test_state_dir_comes_from_state_directory_when_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/inst:{tmp_path}/other")
    assert load(write(tmp_path)).state_dir == tmp_path / "inst"
    # a configured state_dir wins
    configured = load(write(tmp_path, f'state_dir = "{tmp_path / "mine"}"'))
    assert configured.state_dir == tmp_path / "mine"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert load(write(tmp_path)).state_dir == Path("/var/lib/influx-backupd")


def test_by_hand_an_instance_config_finds_the_instance_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    etc = Path("/etc/influx-backupd")
    assert default_state_dir(etc / "main.toml") == Path("/var/lib/influx-backupd/main")
    assert default_state_dir(etc / "config.toml") == Path("/var/lib/influx-backupd")
    assert default_state_dir(Path("/srv/main.toml")) == Path("/var/lib/influx-backupd")
    assert unit_for(etc / "main.toml") == "influx-backupd@main.service"
    assert unit_for(etc / "config.toml") == "influx-backupd.service"
    assert unit_for(Path("/srv/main.toml")) is None


def shipped_sandbox(tmp_path: Path, *rw: Path) -> Sandbox:
    """The shipped unit's sandbox, as `systemctl show` prints it, with paths under tmp_path
    (which is under /tmp: PrivateTmp= would make all of it writable, so it is left out)."""
    return Sandbox.from_properties(
        {
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "ReadWritePaths": " ".join(f"-{p}" for p in rw),
            "StateDirectory": "influx-backupd",
        }
    )


def test_sandbox_model(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    box = shipped_sandbox(tmp_path, backups, tmp_path / "missing")
    assert box.writable(backups) and box.writable(backups / "job" / "deeper")
    assert not box.writable(tmp_path)
    assert not box.writable(tmp_path / "missing")  # systemd skips a "-" path that is missing
    assert box.writable(Path("/var/lib/influx-backupd/x"))  # StateDirectory, made by systemd
    assert not box.writable(Path("/var/tmp/scratch"))
    assert Sandbox.from_properties({"ProtectSystem": "strict", "PrivateTmp": "yes"}).writable(
        Path("/var/tmp/scratch")
    )
    assert not box.writable(Path("/home/op/backups"))
    # ReadOnlyPaths inside a writable path win; ProtectSystem=full leaves /var writable
    inner = Sandbox.from_properties(
        {"ProtectSystem": "full", "ReadWritePaths": str(backups), "ReadOnlyPaths": f"{backups}/ro"}
    )
    assert inner.writable(Path("/var/lib/x")) and not inner.writable(Path("/etc/x"))
    assert not inner.writable(backups / "ro" / "x")


def test_check_config_warns_about_paths_outside_the_sandbox(tmp_path: Path) -> None:
    (tmp_path / "archives").mkdir()
    (tmp_path / "server").mkdir()
    metrics = tmp_path / "textfile" / "x.prom"
    config = load(
        write(tmp_path, f'state_dir = "{tmp_path / "state"}"\nmetrics_file = "{metrics}"')
    )
    box = shipped_sandbox(tmp_path, tmp_path / "archives", tmp_path / "server", tmp_path / "state")
    found = warnings(config, box, "influx-backupd.service")
    # the state dir does not exist yet, so systemd would skip its ReadWritePaths entry
    assert [w.split(":")[0] for w in found] == ["daemon.state_dir"] + ["daemon.metrics_file"] * 2
    assert found[1] == (
        f"daemon.metrics_file: its directory {metrics.parent} does not exist: no metrics are "
        "written until it does"
    )
    assert found[2] == (
        f"daemon.metrics_file: {metrics.parent} would not be writable by influx-backupd.service "
        "(ProtectSystem=strict): add it to ReadWritePaths= with "
        "`systemctl edit influx-backupd.service`"
    )
    (tmp_path / "state").mkdir()
    (tmp_path / "textfile").mkdir()
    box = shipped_sandbox(
        tmp_path,
        tmp_path / "archives",
        tmp_path / "server",
        tmp_path / "state",
        tmp_path / "textfile",
    )
    assert warnings(config, box, "influx-backupd.service") == []
    # without a unit, only what this process itself cannot write
    assert warnings(config, None, None) == []


def test_a_child_started_inside_normal_priority_runs_at_nice_0() -> None:
    if os.geteuid() != 0:
        pytest.skip("raising a priority needs CAP_SYS_NICE")
    seen: dict[str, object] = {}

    def worker() -> None:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 10)
        psutil.Process(tid).ionice(psutil.IOPRIO_CLASS_BE, 7)
        lowered = subprocess.Popen(["sleep", "30"])
        with normal_priority():
            normal = subprocess.Popen(["sleep", "30"])
        try:
            for name, child in (("lowered", lowered), ("normal", normal)):
                proc = psutil.Process(child.pid)
                seen[name] = (proc.nice(), proc.ionice().ioclass, proc.ionice().value)
            me = psutil.Process(tid)
            seen["after"] = (os.getpriority(os.PRIO_PROCESS, tid), me.ionice().ioclass)
        finally:
            for child in (lowered, normal):
                child.kill()
                child.wait()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert seen["lowered"] == (10, psutil.IOPRIO_CLASS_BE, 7)
    assert seen["normal"][:2] == (0, psutil.IOPRIO_CLASS_NONE)  # type: ignore[index]
    assert seen["after"] == (10, psutil.IOPRIO_CLASS_BE)
    # the main thread was never lowered
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0


def test_a_run_error_on_a_configured_path_names_its_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: "[Errno 30] Read-only file system: '/srv/ib'", naming neither storage.dir nor
    what lets the unit write there."""
    import errno

    from influx_backupd.core.unit_paths import explain

    storage = tmp_path / "srv" / "ib"
    config = load(write(tmp_path, storage=storage))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    refused = OSError(errno.EROFS, "Read-only file system", str(storage))
    assert explain(config, refused) == f"storage.dir {storage}: Read-only file system"
    inside = OSError(errno.EACCES, "Permission denied", str(storage / "job-1.tar.partial"))
    assert explain(config, inside) == (
        f"storage.dir {storage}: Permission denied ({storage / 'job-1.tar.partial'})"
    )
    monkeypatch.setenv("INVOCATION_ID", "0123")
    assert explain(config, refused).endswith(
        "; if the unit's sandbox is why, add it to ReadWritePaths= with `systemctl edit "
        "influx-backupd.service` (`influx-backupd check-config` lists every such path)"
    )
    nested = load(write(tmp_path, f'state_dir = "{tmp_path / "state"}"', tmp_path / "state" / "a"))
    deep = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "state" / "a" / "x"))
    assert explain(nested, deep).startswith(f"storage.dir {tmp_path / 'state' / 'a'}: ")
    data_file = OSError(errno.EACCES, "Permission denied", str(tmp_path / "server" / "data" / "f"))
    assert explain(nested, data_file).startswith(
        f"influxd.config (data dir) {tmp_path}/server/data:"
    )
    elsewhere = OSError(errno.EROFS, "Read-only file system", "/usr/lib/x")
    assert explain(config, elsewhere) == str(elsewhere)
    assert explain(config, OSError(errno.ENOSPC, "No space left")) == "[Errno 28] No space left"


def test_check_config_warns_about_a_storage_dir_inside_the_state_dir(tmp_path: Path) -> None:
    """The one dir the shipped unit always lets it write: the backups would share the state's
    fate (`systemctl clean --what=state`). Symlinks resolved; a dir beside the state is fine."""
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "server").mkdir()
    (tmp_path / "link").symlink_to(state)
    for storage in (state / "archives", state, tmp_path / "link" / "archives"):
        config = load(write(tmp_path, f'state_dir = "{state}"', storage))
        found = warnings(config, None, None)
        assert found == [
            f"storage.dir: {storage} is inside daemon.state_dir {state}: the backups would go "
            "with the state (`systemctl clean --what=state`, a state dir reset); give them a dir "
            "of their own, such as /var/backups/influxdb (in the unit's ReadWritePaths=)"
        ], found
    beside = load(write(tmp_path, f'state_dir = "{state}"', tmp_path / "state-archives"))
    assert warnings(beside, None, None) == []
