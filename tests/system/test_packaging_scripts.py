"""packaging/install.sh and packaging/render-unit.sh as real processes, against temp dirs.

install.sh runs with INSTALL_ROOT (no systemctl) and --skip-venv (no pip); the venv is made
under the same umask as the rest. Bad input: one line naming it, exit 2, nothing written.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "packaging" / "install.sh"
RENDER = ROOT / "packaging" / "render-unit.sh"
UNITS = ("influx-backupd.service", "influx-backupd@.service")
EXIT_USAGE = 2


def run(
    argv: list[str], *, env: dict[str, str] | None = None, umask: int = 0o022
) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        os.umask(umask)

    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
        preexec_fn=set_umask,
    )


def install(
    root: Path, *args: str, umask: int = 0o022, **env: str
) -> subprocess.CompletedProcess[str]:
    return run(["sh", str(INSTALL), *args], env={"INSTALL_ROOT": str(root), **env}, umask=umask)


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["sh", str(RENDER), *args])


def one_line(result: subprocess.CompletedProcess[str], *named: str) -> None:
    assert result.returncode == EXIT_USAGE, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for what in named:
        assert what in result.stderr, result.stderr


# -- install.sh ----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o077])
def test_install_makes_the_same_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """umask 000 made every dir world-writable: a local user could then swap the config a
    root daemon reads (its hooks and `command` run as root)."""
    root = tmp_path / "root"
    result = install(root, "--skip-venv", umask=umask)
    assert result.returncode == 0, result.stderr
    modes = {
        "/" + str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
        for p in root.rglob("*")
        if not p.is_symlink()
    }
    writable = {p: oct(m) for p, m in modes.items() if m & (stat.S_IWGRP | stat.S_IWOTH)}
    assert writable == {}
    # as the .deb ships and its postinst makes them
    assert modes["/etc/influx-backupd"] == 0o755
    assert modes["/etc/influx-backupd/config.toml"] == 0o640
    assert modes["/var/lib/influx-backupd"] == 0o700
    assert modes["/var/backups/influxdb"] == 0o700
    assert modes["/var/lib/prometheus/node-exporter"] == 0o755
    assert modes["/usr/local/bin"] == 0o755
    for unit in UNITS:
        assert modes[f"/etc/systemd/system/{unit}"] == 0o644
    # a second run keeps the config and leaves no temp file behind
    (root / "etc/influx-backupd/config.toml").write_text("# mine\n")
    assert install(root, "--skip-venv", umask=umask).returncode == 0
    assert (root / "etc/influx-backupd/config.toml").read_text() == "# mine\n"
    assert sorted(p.name for p in (root / "etc/systemd/system").iterdir()) == sorted(UNITS)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["/nonexistent/checkout"], "/nonexistent/checkout"),
        (["--bogus"], "--bogus"),
        (["/tmp"], "'/tmp'"),  # exists, but no checkout
        ([str(ROOT), str(ROOT)], "one CHECKOUT only"),
        (["--", str(ROOT), str(ROOT)], "one CHECKOUT only"),
    ],
)
def test_install_refuses_bad_arguments_in_one_line(
    tmp_path: Path, args: list[str], named: str
) -> None:
    root = tmp_path / "root"
    result = install(root, "--skip-venv", *args)
    one_line(result, named)
    assert not root.exists()


def test_install_refuses_a_python_it_cannot_use_as_a_usage_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = install(root, str(ROOT), PYTHON=str(tmp_path / "no-python"))
    one_line(result, "PYTHON=")
    assert not root.exists()
    assert install(root, "--skip-venv", "--dry-run", "--", str(ROOT)).returncode == 0


@pytest.mark.parametrize("version", ["999999999999999999999", "253x", "2 5 3"])
def test_install_refuses_a_bad_systemd_version_before_changing_anything(
    tmp_path: Path, version: str
) -> None:
    root = tmp_path / "root"
    result = install(root, "--skip-venv", SYSTEMD_VERSION=version)
    one_line(result, "SYSTEMD_VERSION", version)
    assert not root.exists()


@pytest.mark.parametrize(("version", "kind"), [("252", "notify"), ("253", "notify-reload")])
def test_install_renders_units_for_the_systemd_version(
    tmp_path: Path, version: str, kind: str
) -> None:
    root = tmp_path / "root"
    assert install(root, "--skip-venv", SYSTEMD_VERSION=version).returncode == 0
    for unit in UNITS:
        text = (root / "etc/systemd/system" / unit).read_text()
        assert f"\nType={kind}\n" in text
        assert "\nExecStart=/usr/local/bin/influx-backupd --config /etc/influx-backupd/" in text


# -- render-unit.sh ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bindir",
    [
        "/opt/my dir",  # ExecStart= splits at whitespace
        "relative/bin",  # systemd wants an absolute path
        "/opt/a&b",  # sed's & is the matched text
        "/opt/a|b",  # sed's delimiter
        "/opt/a\\b",
        "/opt/%i/bin",  # a systemd specifier
        "/opt/$HOME",  # expanded by systemd
        '/opt/"q"',
        "/opt/../bin",  # systemd refuses a path that is not normalized
        "//opt/bin",
        "/usr/bin//",  # one trailing slash is dropped, not two
        "",
    ],
)
def test_render_refuses_a_bindir_the_unit_cannot_hold(bindir: str) -> None:
    for unit in UNITS:
        result = render(str(ROOT / "packaging" / unit), bindir, "252")
        one_line(result, f"BINDIR '{bindir}'")
        assert result.stdout == ""


@pytest.mark.parametrize("version", ["999999999999999999999", "12345", "-1", "253x", " 253"])
def test_render_refuses_a_version_that_is_no_plain_integer(version: str) -> None:
    result = render(str(ROOT / "packaging" / UNITS[0]), "/usr/bin", version)
    one_line(result, f"SYSTEMD_VERSION '{version}'")
    assert result.stdout == ""


def test_render_refuses_a_missing_unit_and_extra_arguments() -> None:
    one_line(render("/nonexistent.service", "/usr/bin"), "/nonexistent.service")
    one_line(render(str(ROOT / "packaging" / UNITS[0]), "/usr/bin", "252", "x"), "usage")


@pytest.mark.parametrize(
    ("bindir", "version", "execstart", "kind"),
    [
        ("/usr/bin", "252", "/usr/bin/influx-backupd", "notify"),
        ("/usr/local/bin/", "253", "/usr/local/bin/influx-backupd", "notify-reload"),
        ("/opt/x-1_2.3+y@z", "0253", "/opt/x-1_2.3+y@z/influx-backupd", "notify-reload"),
    ],
)
def test_render_writes_execstart_and_type(
    bindir: str, version: str, execstart: str, kind: str
) -> None:
    result = render(str(ROOT / "packaging" / UNITS[0]), bindir, version)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"ExecStart={execstart} --config /etc/influx-backupd/config.toml run" in lines
    assert f"Type={kind}" in lines
    assert any(line.startswith("ExecReload=") for line in lines) == (kind == "notify")


# -- prerm / postrm: pending crash markers -------------------------------------------------------

MARKERS = {
    "stopped": '{"run_id":"r1","job":"nightly","stopping":true}',
    "restore": '{"run_id":"restore-r2","kind":"restore","swaps":[["/srv/d","/srv/d.rb","/srv/d.s"]],'
    '"stopping":true}',
    "signalled": '{"run_id":"r3","stopping":true,"signalled_at":1.0,'
    '"influxd":{"pid":1,"create_time":0}}',
    "never stopped": '{"run_id":"r4","stopping":false,"influxd":{"pid":1,"create_time":0}}',
}


@pytest.mark.parametrize("kind", list(MARKERS))
@pytest.mark.parametrize("script", ["prerm remove", "postrm purge"])
def test_removal_says_what_a_pending_marker_asks_for(kind: str, script: str) -> None:
    """Before: every marker got "run systemctl start influxdb" — for an interrupted restore
    that starts influxd on half-restored dirs, and throws away the rollback record on purge;
    a marker whose server never stopped was said as influxd down. The scripts run in a
    private mount namespace, /var/lib and /etc/systemd a tmpfs: nothing of this host touched."""
    body = MARKERS[kind].replace('"', '\\"')
    name, arg = script.split()
    done = run(
        [
            "unshare", "-m", "--propagation", "private", "sh", "-c",
            "mount -t tmpfs none /var/lib && mount -t tmpfs none /etc/systemd && "
            "mkdir -p /var/lib/influx-backupd && "
            f'printf "%s" "{body}" > /var/lib/influx-backupd/influxd-stopped.json && '
            f"sh {ROOT / 'packaging' / 'deb' / name} {arg} && "
            "test -f /var/lib/influx-backupd/influxd-stopped.json",
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # (deb-systemd-helper, run outside dpkg, says so on stderr too)
    lines = [line for line in done.stderr.splitlines() if line.startswith("influx-backupd:")]
    if kind == "never stopped":
        assert lines == [], lines
        return
    assert len(lines) == 1 and lines[0].startswith("influx-backupd: WARNING: "), lines
    if kind == "restore":
        assert "restore was interrupted" in lines[0] and "prune --dry-run" in lines[0]
        assert "systemctl start" not in lines[0] and "do not start influxd" in lines[0]
    elif kind == "signalled":
        assert "outlasted" in lines[0], lines
    else:
        assert "not started again" in lines[0] and "systemctl start influxdb" in lines[0]
