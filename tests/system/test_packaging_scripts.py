"""packaging/render-unit.sh as a real process. Bad input: one line naming it, exit 2, nothing
written.
"""

from __future__ import annotations

import os
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
