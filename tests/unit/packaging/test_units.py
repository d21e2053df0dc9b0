"""The shipped systemd units pass `systemd-analyze verify` and score their documented exposure;
install.sh puts files in place."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

PACKAGING = Path(__file__).resolve().parents[3] / "packaging"
INSTALL_SH = PACKAGING / "install.sh"
UNITS = ("influx-backupd.service", "influx-backupd@.service")
EXEC_START = "ExecStart=/usr/bin/influx-backupd "
EXEC_STOP_POST = "ExecStopPost=-/usr/bin/influx-backupd "
RENDER = PACKAGING / "render-unit.sh"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


def unit_copy(tmp_path: Path, name: str) -> Path:
    """Copy a unit into tmp_path with ExecStart pointing at an executable that exists.

    verify fails when ExecStart's binary is missing, and /usr/bin/influx-backupd is only
    there once the package is installed; the rest of the line is kept as shipped.
    """
    text = (PACKAGING / name).read_text()
    assert text.count(EXEC_START) == 1, f"{name}: expected one ExecStart of the installed command"
    fake = tmp_path / "bin" / "influx-backupd"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    dest = tmp_path / name
    text = text.replace(EXEC_START, f"ExecStart={fake} ")
    dest.write_text(text.replace(EXEC_STOP_POST, f"ExecStopPost=-{fake} "))
    return dest


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    # --man=no: the units name no man pages, and man-db may be absent.
    # Runs offline: systemd need not be PID 1 (it is not in this container).
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_analyze
def test_service_unit_verifies(tmp_path: Path) -> None:
    result = verify(unit_copy(tmp_path, "influx-backupd.service"))
    # Unknown keys and bad values are only warnings (exit 0), so stderr must be empty too.
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@needs_analyze
def test_template_instance_verifies(tmp_path: Path) -> None:
    unit_copy(tmp_path, "influx-backupd@.service")
    result = verify(tmp_path / "influx-backupd@main.service")
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@needs_analyze
def test_verify_catches_mistakes(tmp_path: Path) -> None:
    """The two tests above would notice a typo or a missing binary."""
    unit = unit_copy(tmp_path, "influx-backupd.service")
    unit.write_text(unit.read_text().replace("KillMode=mixed", "KilMode=mixed"))
    assert "Unknown key" in verify(unit).stderr
    (tmp_path / "bin" / "influx-backupd").unlink()
    assert verify(unit).returncode != 0


def test_units_carry_required_settings() -> None:
    for name in UNITS:
        lines = set((PACKAGING / name).read_text().splitlines())
        for wanted in (
            "Type=notify",
            "NotifyAccess=main",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "WatchdogSec=60",
            "Restart=on-failure",
            "RestartPreventExitStatus=78",
            "KillMode=mixed",
            "After=network-online.target influxdb.service",
            "Wants=network-online.target",
            "UMask=0077",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        ):
            assert wanted in lines, f"{name}: {wanted}"
    template = (PACKAGING / "influx-backupd@.service").read_text()
    assert "--config /etc/influx-backupd/%i.toml run" in template
    assert "ExecStopPost=-/usr/bin/influx-backupd --config /etc/influx-backupd/%i.toml recover" in (
        template.splitlines()
    )
    plain = (PACKAGING / "influx-backupd.service").read_text().splitlines()
    assert f"{EXEC_STOP_POST}--config /etc/influx-backupd/config.toml recover" in plain
    assert "StateDirectory=influx-backupd/%i" in template


def render(name: str, bindir: str, version: str) -> str:
    return subprocess.run(
        ["/bin/sh", str(RENDER), str(PACKAGING / name), bindir, version],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


@pytest.mark.parametrize("name", UNITS)
def test_render_picks_the_reload_protocol_by_systemd_version(name: str) -> None:
    old = render(name, "/usr/local/bin", "252").splitlines()
    assert "Type=notify" in old and "ExecReload=/bin/kill -HUP $MAINPID" in old
    new = render(name, "/usr/bin", "253").splitlines()
    assert "Type=notify-reload" in new and "Type=notify" not in new
    assert not [line for line in new if line.startswith("ExecReload=")]
    for key in ("ExecStart=", "ExecStopPost="):
        assert [line for line in old if line.startswith(key)] == [
            line.replace("/usr/bin/", "/usr/local/bin/", 1) for line in new if line.startswith(key)
        ]
        assert [line for line in old if line.startswith(key) and "/usr/local/bin/" in line]


# The figure docs/daemon.md promises; tests/systemd checks it again inside a booted Debian 12.
EXPOSURE_LIMIT = 3.0


def exposure(unit: Path) -> float:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = next(x for x in result.stdout.splitlines() if "Overall exposure level" in x)
    return float(line.split(":")[1].split()[0])


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_units_exposure_is_at_most_the_documented_figure(tmp_path: Path, name: str) -> None:
    unit = unit_copy(tmp_path, name)
    if name.endswith("@.service"):
        unit = unit.rename(tmp_path / "influx-backupd@main.service")
    assert exposure(unit) <= EXPOSURE_LIMIT
    # the measure is not blind: without the hardening the same unit scores far worse
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/bin/true\n")
    assert exposure(bare) > 9.0


# --- install.sh ---------------------------------------------------------------------------------


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A minimal checkout: the real packaging files plus a stand-in example config."""
    src = tmp_path / "src"
    (src / "packaging").mkdir(parents=True)
    for name in (*UNITS, RENDER.name):
        shutil.copy(PACKAGING / name, src / "packaging" / name)
    (src / "pyproject.toml").write_text("[project]\nname = 'influx-backupd'\n")
    (src / "config.example.toml").write_text("# example\n")
    return src


@pytest.fixture
def fake_systemctl(tmp_path: Path) -> Path:
    """A systemctl earlier in PATH that records being called."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    log = bindir / "calls"
    script = bindir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    script.chmod(0o755)
    return log


def install(
    root: Path | None,
    *args: str,
    path_prefix: Path | None = None,
    systemd_version: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("INSTALL_ROOT", "PYTHON", "SYSTEMD_VERSION")
    }
    if systemd_version is not None:
        env["SYSTEMD_VERSION"] = systemd_version
    if root is not None:
        env["INSTALL_ROOT"] = str(root)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    # /bin/sh (dash on Debian) rather than bash, to keep the script POSIX.
    return subprocess.run(
        ["/bin/sh", str(INSTALL_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_install_into_root(checkout: Path, tmp_path: Path, fake_systemctl: Path) -> None:
    root = tmp_path / "root"
    result = install(
        root,
        "--skip-venv",
        "--enable",
        str(checkout),
        path_prefix=fake_systemctl.parent,
        systemd_version="252",
    )
    assert result.returncode == 0, result.stderr
    for name in UNITS:
        unit = root / "etc/systemd/system" / name
        assert unit.read_text() == render(name, "/usr/local/bin", "252")
        assert mode(unit) == 0o644
    config = root / "etc/influx-backupd/config.toml"
    assert config.read_text() == "# example\n"
    assert mode(config) == 0o640
    backups = root / "var/backups/influxdb"
    assert backups.is_dir() and mode(backups) == 0o700
    link = root / "usr/local/bin/influx-backupd"
    assert link.is_symlink()
    assert os.readlink(link) == "/opt/influx-backupd/bin/influx-backupd"
    # With INSTALL_ROOT, systemctl is never run, even with --enable.
    assert not fake_systemctl.exists()


def test_install_keeps_existing_config(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = root / "etc/influx-backupd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# the operator's own\n")
    config.chmod(0o600)
    result = install(root, "--skip-venv", str(checkout))
    assert result.returncode == 0, result.stderr
    assert config.read_text() == "# the operator's own\n"
    assert mode(config) == 0o600
    assert "keeping existing" in result.stdout
    assert (root / "etc/systemd/system/influx-backupd.service").is_file()


def test_install_dry_run_changes_nothing(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = install(root, "--dry-run", str(checkout))
    assert result.returncode == 0, result.stderr
    assert not root.exists()
    assert f"+ python3 -m venv {root}/opt/influx-backupd" in result.stdout
    assert f"+ {root}/opt/influx-backupd/bin/pip install --upgrade {checkout}" in result.stdout
    assert (
        f"+ install -m 0640 {checkout}/config.example.toml {root}/etc/influx-backupd/config.toml"
        in result.stdout
    )


def test_install_dry_run_without_root_plans_systemctl(checkout: Path, fake_systemctl: Path) -> None:
    # Nothing runs in a dry run, so the real paths are safe to name here.
    result = install(
        None, "--dry-run", "--enable", str(checkout), path_prefix=fake_systemctl.parent
    )
    assert result.returncode == 0, result.stderr
    assert "+ systemctl daemon-reload" in result.stdout
    assert "+ systemctl enable --now influx-backupd.service" in result.stdout
    assert not fake_systemctl.exists()


def test_install_refuses_incomplete_checkout(checkout: Path, tmp_path: Path) -> None:
    (checkout / "config.example.toml").unlink()
    root = tmp_path / "root"
    result = install(root, "--skip-venv", str(checkout))
    assert result.returncode == 2  # a usage mistake: not a checkout
    assert "config.example.toml" in result.stderr
    assert not root.exists()


def test_install_rejects_unknown_option(checkout: Path, tmp_path: Path) -> None:
    result = install(tmp_path / "root", "--frobnicate", str(checkout))
    assert result.returncode == 2
    assert "unknown option '--frobnicate'" in result.stderr
