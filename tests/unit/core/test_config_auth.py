"""[influxd] username + password_file: both or neither, the file read at load, never printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.cli import main as cli
from influx_backupd.core.config import load

INFLUXDB_CONF = """
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
[http]
  bind-address = ":18086"
  auth-enabled = true
"""


def config_file(tmp_path: Path, influxd_extra: str) -> Path:
    conf = tmp_path / "influxdb.conf"
    conf.write_text(INFLUXDB_CONF.format(root=tmp_path / "server"))
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
[influxd]
config = "{conf}"
service = "influxdb.service"
{influxd_extra}
[storage]
dir = "{tmp_path / "archives"}"
"""
    )
    return path


def test_the_password_is_read_from_its_file_without_the_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret word\n")
    config = load(config_file(tmp_path, f'username = "backup"\npassword_file = "{secret}"'))
    assert config.auth_enabled
    assert config.credentials is not None
    assert (config.credentials.username, config.credentials.password) == ("backup", "s3cret word")
    assert "s3cret" not in repr(config), "never in a repr (and so never in a log line)"


def test_no_credentials_is_fine(tmp_path: Path) -> None:
    config = load(config_file(tmp_path, ""))
    assert config.credentials is None and config.auth_enabled


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('username = "backup"', "influxd.password_file: required when influxd.username is set"),
        (
            'password_file = "{tmp}/pw"',
            "influxd.username: required when influxd.password_file is set",
        ),
        (
            'username = "backup"\npassword_file = "{tmp}/gone"',
            "influxd.password_file: {tmp}/gone not found",
        ),
        ('username = "backup"\npassword_file = "{tmp}"', "is a directory, not a file"),
        ('username = "backup"\npassword_file = "{tmp}/empty"', "{tmp}/empty is empty"),
        ('username = "backup"\npassword_file = "pw"', "influxd.password_file: must be an absolute"),
        ('username = ""\npassword_file = "{tmp}/pw"', "influxd.username: must not be empty"),
        ('password = "inline"', "influxd.password: unknown key"),
    ],
)
def test_credential_mistakes_are_one_line_with_the_key_path_and_exit_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, expected: str
) -> None:
    (tmp_path / "pw").write_text("x\n")
    (tmp_path / "empty").write_text("\n")
    path = config_file(tmp_path, extra.format(tmp=tmp_path))
    assert cli.main(["--config", str(path), "check-config"]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"influx-backupd: {path}: "), err
    assert expected.format(tmp=tmp_path) in err, err
    assert not (tmp_path / "state").exists(), "a bad config touches nothing"


def test_a_real_process_exits_78_with_one_line(tmp_path: Path) -> None:
    path = config_file(tmp_path, f'username = "backup"\npassword_file = "{tmp_path}/gone"')
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(path), "backup"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 78
    assert done.stderr.count("\n") == 1 and "influxd.password_file" in done.stderr, done.stderr
