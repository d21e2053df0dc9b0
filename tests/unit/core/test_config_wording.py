"""Config errors in our own words, naming the key and the allowed form (not APScheduler's,
urllib's or tomllib's), a state dir from $STATE_DIRECTORY said to come from there, and
check-config's warning for a group/world-readable [influxd] password_file."""

from __future__ import annotations

from pathlib import Path

import pytest

from influx_backupd.cli import main as cli
from tests.unit.core.test_config import base, influxdb_conf, write

__all__ = ["influxdb_conf"]


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = cli.main(["--config", str(path), "check-config"])
    return status, capsys.readouterr().err  # the one line of an error; warnings go there too


@pytest.mark.parametrize(
    ("where", "text", "said", "not_said"),
    [
        (
            "job",
            '[[job]]\nname = "n"\nschedule = "0 3 L * *"',
            "job[0].schedule: day of month field 'L'",
            "Unrecognized",
        ),
        (
            "influxd_extra",
            'url = "http://127.0.0.1:99999"',
            "influxd.url: its port must be a number 1-65535",
            "out of range 0-65535",
        ),
        (
            "job",
            '[[job]]\nname = "n"\nschedule = "@daily"\nname = "m"',
            "the key 'name' is given twice",
            "Cannot overwrite",
        ),
        (
            "job",
            '[notify]\n[notify]\ntimeout = "1s"',
            "the table [notify] is given twice",
            "Cannot declare",
        ),
        (  # tomllib calls it a table given twice: the missing ']' is the mistake
            "job",
            '[notify]\ntimeout = "1s"\n[notify  # the bracket forgotten',
            "the table header [notify is not closed: expected ']' at its end",
            "given twice",
        ),
        (
            "job",
            '[[job]]\nname = "a"\n[[job]\nname = "b"',
            "Expected ']]' at the end of an array declaration (at line",  # tomllib's: clear
            "given twice",
        ),
    ],
)
def test_other_libraries_wording_is_ours(
    tmp_path: Path,
    influxdb_conf: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    text: str,
    said: str,
    not_said: str,
) -> None:
    path = write(tmp_path, base(influxdb_conf, tmp_path, **{where: text}))
    status, err = _check(path, capsys)
    assert status == 78 and err.count("\n") == 1, err
    assert said in err and not_said not in err, err


def test_a_relative_state_directory_names_the_variable(
    tmp_path: Path,
    influxdb_conf: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = base(influxdb_conf, tmp_path).replace(f'state_dir = "{tmp_path / "state"}"', "")
    monkeypatch.setenv("STATE_DIRECTORY", "relative/dir")
    status, err = _check(write(tmp_path, body), capsys)
    assert status == 78 and err.count("\n") == 1, err
    assert "$STATE_DIRECTORY" in err and "'relative/dir'" in err, err
    assert "daemon.state_dir: must be" not in err, err


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False)])
def test_check_config_warns_of_a_readable_influxd_password_file(
    tmp_path: Path,
    influxdb_conf: Path,
    capsys: pytest.CaptureFixture[str],
    mode: int,
    warned: bool,
) -> None:
    secret = tmp_path / "influx.pw"
    secret.write_text("pw\n")
    secret.chmod(mode)
    extra = f'username = "backup"\npassword_file = "{secret}"'
    path = write(tmp_path, base(influxdb_conf, tmp_path, influxd_extra=extra))
    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr()
    assert ("influxd.password_file" in out.out + out.err) == warned, out


@pytest.mark.parametrize(
    "value",
    [
        '"tgram://123456:SECRETTOKEN/999"',  # a string where a list belongs
        '{ url = "ntfy://u:SECRETTOKEN@ntfy.sh/x" }',  # a table where a list belongs
    ],
)
def test_a_notify_url_in_the_wrong_form_is_not_quoted_with_its_token(
    tmp_path: Path, influxdb_conf: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """The audit's repro: `must be a list like ["a", "b"], not 'tgram://123456:SECRETTOKEN/999'`
    put the token in the error line (and in the journal, through ExecStopPost's recover)."""
    path = write(tmp_path, base(influxdb_conf, tmp_path, job=f"[notify]\nfailure = {value}"))
    status, err = _check(path, capsys)
    assert status == 78 and err.count("\n") == 1, err
    assert "notify.failure: must be a list" in err, err
    assert "SECRETTOKEN" not in err, err
