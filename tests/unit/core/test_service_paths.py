"""What the systemd units need from the code: the state dir from $STATE_DIRECTORY, warnings
about paths the unit's sandbox would not let the daemon write, influxd at normal priority."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from influx_backupd.core.config import ConfigError, default_state_dir, load
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


PRIVATE_TMP = {"ProtectSystem": "strict", "PrivateTmp": "yes", "StateDirectory": "influx-backupd"}


@pytest.fixture
def fake_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """/tmp and /var/tmp played by two dirs under tmp_path (itself in /tmp, so that a dir
    outside them exists to compare with)."""
    from influx_backupd.core import unit_paths

    tmps = (tmp_path / "tmp", tmp_path / "var-tmp")
    for t in tmps:
        t.mkdir()
    monkeypatch.setattr(unit_paths, "_TMP", tmps)
    return tmps


def test_private_tmp_model_follows_symlinks(tmp_path: Path, fake_tmp: tuple[Path, Path]) -> None:
    tmp, var_tmp = fake_tmp
    box = Sandbox.from_properties(PRIVATE_TMP)
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / "link").symlink_to(var_tmp / "x")  # its target does not exist yet
    (tmp / "out").symlink_to(srv)
    assert box.private_tmp and box.writable(var_tmp / "b")  # writable, yet lost at stop
    for inside in (tmp, var_tmp / "b", tmp / "a" / "b", srv / "link", srv / "link" / "backups"):
        assert box.in_private_tmp(inside), inside
    for outside in (srv, srv / "backups", tmp / "out" / "backups", tmp_path / "tmpfoo"):
        assert not box.in_private_tmp(outside), outside
    no = Sandbox.from_properties({**PRIVATE_TMP, "PrivateTmp": "no"})
    assert not no.private_tmp and not no.in_private_tmp(var_tmp / "b")


def test_storage_and_state_in_the_units_private_tmp_are_errors(
    tmp_path: Path, fake_tmp: tuple[Path, Path]
) -> None:
    """Before: check-config said ok and the daemon's backups lived in the unit's own /var/tmp,
    missing from a shell and deleted by `systemctl stop`."""
    from influx_backupd.core.unit_paths import private_tmp_errors, refuse_private_tmp

    tmp, var_tmp = fake_tmp
    (tmp_path / "server").mkdir()
    state, storage = tmp / "state", var_tmp / "influx-backups"
    metrics = var_tmp / "m" / "x.prom"
    (var_tmp / "m").mkdir()
    config = load(
        write(tmp_path, f'state_dir = "{state}"\nmetrics_file = "{metrics}"', storage=storage)
    )
    box = Sandbox.from_properties({**PRIVATE_TMP, "ReadWritePaths": str(tmp_path / "server")})
    unit = "influx-backupd.service"
    gone = (
        f"the unit {unit} has PrivateTmp=yes: /tmp and /var/tmp are its own, deleted when it stops"
    )
    assert private_tmp_errors(config, box, unit) == [
        f"storage.dir {storage}: {gone}, and every backup with them; choose a dir such as "
        "/var/backups/influxdb",
        f"daemon.state_dir {state}: {gone}, and the catalog, the lock and the crash marker with "
        "them (influxd left down by a killed backup would go unnoticed); choose a dir such as "
        "/var/lib/influx-backupd (or leave state_dir out: the unit's StateDirectory=)",
    ]
    with pytest.raises(ConfigError) as refused:
        refuse_private_tmp(config, box, unit)
    assert str(refused.value).startswith(f"{config.path}: storage.dir {storage}: the unit ")
    assert "; daemon.state_dir " in str(refused.value) and "\n" not in str(refused.value)
    # the metrics file there is a warning: node_exporter never sees it
    assert warnings(config, box, unit) == [
        f"daemon.metrics_file: {metrics} is in /tmp or /var/tmp, which {unit} (PrivateTmp=yes) "
        "has its own of: node_exporter never sees the file, and it is deleted when the unit "
        "stops; choose "
        "node_exporter's textfile dir, such as /var/lib/prometheus/node-exporter"
    ]
    # without PrivateTmp, or with no unit running this config (cron, a shell): /tmp is fine
    plain = Sandbox.from_properties({**PRIVATE_TMP, "PrivateTmp": "no"})
    assert private_tmp_errors(config, plain, unit) == []
    assert private_tmp_errors(config, None, None) == []
    refuse_private_tmp(config, None, None)
    assert warnings(config, None, None) == []
    # a storage dir elsewhere, with the state dir there: the state dir alone
    beside = load(write(tmp_path, f'state_dir = "{var_tmp / "s"}"'))
    assert [e.split()[0] for e in private_tmp_errors(beside, box, unit)] == ["daemon.state_dir"]


def test_check_config_and_run_refuse_a_units_private_tmp(
    tmp_path: Path,
    fake_tmp: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from influx_backupd.cli import main as cli
    from influx_backupd.core import unit_paths

    _, var_tmp = fake_tmp
    (tmp_path / "server").mkdir()
    state, storage = tmp_path / "state", var_tmp / "influx-backups"
    path = write(tmp_path, f'state_dir = "{state}"', storage=storage)
    # this config is not any unit's (it is under /tmp): check-config says ok
    assert cli.main(["--config", str(path), "check-config"]) == 0
    assert "PrivateTmp" not in capsys.readouterr().err
    # as the shipped unit's config
    monkeypatch.setattr(unit_paths, "unit_for", lambda _: "influx-backupd.service")
    monkeypatch.setattr(unit_paths, "unit_sandbox", lambda _: Sandbox.from_properties(PRIVATE_TMP))
    for command in (["check-config"], ["check-config", "--json"], ["run"]):
        assert cli.main(["--config", str(path), *command]) == 78, command
        out, err = capsys.readouterr()
        assert out == "" and err == (
            f"influx-backupd: {path}: storage.dir {storage}: the unit influx-backupd.service has "
            "PrivateTmp=yes: /tmp and /var/tmp are its own, deleted when it stops, and every "
            "backup with them; choose a dir such as /var/backups/influxdb\n"
        ), command
    assert not storage.exists() and not state.exists()  # nothing touched


@pytest.mark.parametrize(
    ("cgroup", "service"),
    [
        ("0::/system.slice/my-backups.service\n", "my-backups.service"),
        ("0::/system.slice/run-u42.service\n", "run-u42.service"),  # systemd-run
        ("0::/system.slice/box.service/payload\n", "box.service"),  # a delegated sub-group
        ("12:cpu:/x.service\n1:name=systemd:/system.slice/v1.service\n", "v1.service"),
        ("0::/user.slice/user-0.slice/session-3.scope\n", None),  # a login shell
        ("0::/\n", None),  # no systemd (a container without it, this test machine)
        ("0::/system.slice/.service\n", None),
        ("garbage\n\n:::\n", None),
    ],
)
def test_own_service_is_read_from_the_cgroup(cgroup: str, service: str | None) -> None:
    from influx_backupd.core.unit_paths import own_service

    assert own_service(cgroup) == service


def test_the_unit_running_this_process_is_the_one_checked_whatever_the_config_path(
    tmp_path: Path, fake_tmp: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: only the shipped units' config paths were known; `run` under an operator's own
    unit with PrivateTmp=yes kept every backup in a /tmp deleted at its stop."""
    import os

    from influx_backupd.core import unit_paths

    _, var_tmp = fake_tmp
    (tmp_path / "server").mkdir()
    config = load(write(tmp_path, storage=var_tmp / "influx-backups"))
    assert unit_paths.unit_for(config.path) is None  # no shipped unit runs /tmp/…/config.toml
    other = {**PRIVATE_TMP, "LoadState": "loaded", "MainPID": "1", "ControlPID": "0"}
    shown = other
    monkeypatch.setattr(unit_paths, "own_service", lambda: "my-backups.service")
    monkeypatch.setattr(unit_paths, "_shown", lambda unit: shown)

    unit_paths.running_unit.cache_clear()
    assert unit_paths.private_tmp_errors(config) == [], "that service's process is another"
    for key in ("MainPID", "ControlPID"):  # ExecStart= `run`, ExecStartPre= `check-config`
        shown = {**other, key: str(os.getpid())}
        unit_paths.running_unit.cache_clear()
        [line] = unit_paths.private_tmp_errors(config)
        assert line.startswith(f"storage.dir {var_tmp / 'influx-backups'}: the unit "), line
        assert "my-backups.service has PrivateTmp=yes" in line, line
    unit_paths.running_unit.cache_clear()


def test_an_instance_config_named_through_a_link_or_dots_finds_the_instance_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `-c /root/db2.toml` (a link to /etc/influx-backupd/db2.toml) or a path with `..`
    in it got the plain unit's /var/lib/influx-backupd: its lock and catalog, whose retention
    then ranked the other instance's backups with this one's and pruned this one's."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    link = tmp_path / "db2.toml"
    link.symlink_to("/etc/influx-backupd/db2.toml")  # its target need not exist for the name
    assert default_state_dir(link) == Path("/var/lib/influx-backupd/db2")
    assert unit_for(link) == "influx-backupd@db2.service"
    dotted = Path("/etc/influx-backupd/../influx-backupd/db2.toml")
    assert default_state_dir(dotted) == Path("/var/lib/influx-backupd/db2")
    assert default_state_dir(tmp_path / "db2.toml.bak") == Path("/var/lib/influx-backupd")
