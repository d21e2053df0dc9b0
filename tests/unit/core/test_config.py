"""Config: every mistake is one line naming the file and the key path, exit 78, nothing touched."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from influx_backupd.cli import main as cli
from influx_backupd.core.config import (
    ConfigError,
    JobSection,
    Settings,
    load,
    read_influx_conf,
    read_server_paths,
)
from influx_backupd.core.durations import parse_duration
from influx_backupd.core.offsite_section import OffsiteSection
from tests.conftest import raised_promptly

REPO = Path(__file__).resolve().parents[3]

INFLUXDB_CONF = """
reporting-enabled = false
bind-address = "127.0.0.1:18088"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
[http]
  bind-address = ":18086"
"""


@pytest.fixture
def influxdb_conf(tmp_path: Path) -> Path:
    path = tmp_path / "influxdb.conf"
    path.write_text(INFLUXDB_CONF.format(root=tmp_path / "server"))
    return path


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(body)
    return path


def base(influxdb_conf: Path, tmp_path: Path, influxd_extra: str = "", job: str = "") -> str:
    return f"""
[daemon]
state_dir = "{tmp_path / "state"}"
[influxd]
config = "{influxdb_conf}"
service = "influxdb.service"
{influxd_extra}
[storage]
dir = "{tmp_path / "archives"}"
{job}
"""


def test_a_valid_config_resolves_dirs_url_and_snapshot_host_from_influxdb_conf(
    tmp_path: Path, influxdb_conf: Path
) -> None:
    config = load(write(tmp_path, base(influxdb_conf, tmp_path)))
    server = tmp_path / "server"
    assert config.server.dirs() == {
        "meta": server / "meta",
        "data": server / "data",
        "wal": server / "wal",
    }
    assert config.url == "http://127.0.0.1:18086"  # ":18086" binds every address; we ask loopback
    assert config.backup_host == "127.0.0.1:18088"


def test_an_ipv6_bind_address_gives_a_url_and_snapshot_host_in_brackets(
    tmp_path: Path, influxdb_conf: Path
) -> None:
    influxdb_conf.write_text(
        influxdb_conf.read_text()
        .replace('bind-address = "127.0.0.1:18088"', 'bind-address = "[::1]:18088"')
        .replace('bind-address = ":18086"', 'bind-address = "[::1]:18086"')
    )
    config = load(write(tmp_path, base(influxdb_conf, tmp_path)))
    assert config.url == "http://[::1]:18086"
    assert config.backup_host == "[::1]:18088"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("2h", 7200),
        ("7d", 604800),
        ("1.5h", 5400),
        (30, 30),
        ("250ms", 0.25),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "m5", "-3s", "", True, "1y"])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(bad)


BAD_CONFIGS: list[tuple[str, str, str]] = [
    # (name, how to break the base config, expected message fragment with key path)
    ("unknown key", 'influxd_extra:colour = "blue"', "influxd.colour: unknown key"),
    ("wrong type", "influxd_extra:stop_timeout = [1]", "influxd.stop_timeout: must be a duration"),
    (
        "bad duration",
        'influxd_extra:start_timeout = "5 minutes"',
        "influxd.start_timeout: must be a duration",
    ),
    (
        "bad mode",
        'job:[[job]]\nname = "a"\n[[job]]\nname = "b"\nmode = "warm"',
        "job[1].mode: must be one of cold, hot, auto",
    ),
    (
        "bad schedule",
        'job:[[job]]\nname = "a"\nschedule = "every day"',
        "job[0].schedule: must be a 5-field",
    ),
    (
        "crontab field out of range",
        'job:[[job]]\nname = "a"\nschedule = "0 3 * * 8"',
        "job[0].schedule: day of week '8' must be 0-7 (0 and 7 are Sunday)",
    ),
    ("bad job name", 'job:[[job]]\nname = "a b"', "job[0].name: must be 1-64 letters"),
    (
        "duplicate job",
        'job:[[job]]\nname = "a"\n[[job]]\nname = "a"',
        "job[1].name: 'a' is used twice (also job[0].name)",
    ),
    (
        "bad window",
        'job:[[job]]\nname = "a"\ncold_window = "1am-5am"',
        "job[0].cold_window: must be a daily window",
    ),
    (
        "bad zone",
        'job:[[job]]\nname = "a"\ntimezone = "Mars/Olympus"',
        "job[0].timezone: unknown time zone",
    ),
    ("negative keep", 'job:[[job]]\nname = "a"\nkeep_daily = -1', "job[0].keep_daily:"),
    (
        "both service and command",
        'influxd_extra:command = ["/usr/bin/influxd"]',
        "influxd: set either service or command",
    ),
    # a run as often as it can start, every cold one stopping influxd
    ("sub-second every", 'job:[[job]]\nname = "a"\nevery = "1ms"', "job[0].every: must be 1s"),
    # int() reads Arabic-Indic digits: "١٠s" would be 10 s, "0 ٣ * * *" 03:00
    ("non-ASCII digits", 'job:[[job]]\nname = "a"\nevery = "١٠s"', "job[0].every: must be a"),
    ("non-ASCII cron", 'job:[[job]]\nname = "a"\nschedule = "0 ٣ * * *"', "only ASCII"),
    ("newline in cron", 'job:[[job]]\nname = "a"\nschedule = "0 3 * * *\\n"', "only ASCII"),
    ("newline ending a name", 'job:[[job]]\nname = "a\\n"', "job[0].name: must be 1-64"),
    (
        "zero hook timeout",
        'job:[[job]]\nname = "a"\nhook_timeout = "0s"',
        "job[0].hook_timeout: must",
    ),
    ("zero notify timeout", 'job:[notify]\ntimeout = "0s"', "notify.timeout: must be longer"),
    # each fails every run (stop_timeout: no stop is waited for; backup_timeout: no backup)
    ("zero stop timeout", 'influxd_extra:stop_timeout = "0s"', "influxd.stop_timeout: must be"),
    ("zero start timeout", "influxd_extra:start_timeout = 0", "influxd.start_timeout: must be"),
    (
        "zero backup timeout",
        'influxd_extra:backup_timeout = "0.0m"',
        "influxd.backup_timeout: must be longer than 0s",
    ),
    ("misspelt section", 'job:[storge]\ndir = "/x"', "storge: unknown key; did you mean storage?"),
    # what TOML says as a string or a float is not quietly read as a bool or a count
    (
        "string for a bool",
        'job:[[job]]\nname = "a"\nverify_after_backup = "yes"',
        "job[0].verify_after_backup: must be true or false",
    ),
    (
        "bool for a count",
        'job:[[job]]\nname = "a"\nkeep_last = true',
        "job[0].keep_last: must be a",
    ),
    (
        "float for a count",
        'job:[[job]]\nname = "a"\nkeep_last = 1e3',
        "job[0].keep_last: must be a",
    ),
    (
        "bucket name",
        'job:[offsite]\nbucket = "Bad Bucket!"',
        "offsite.bucket: must be an S3 bucket name",
    ),
    # past any count: check-config said ok, then printing the plan, prune and every backup's
    # follow-up ended in a traceback (the hostile-input audit)
    (
        "a keep rule past any count",
        'job:[[job]]\nname = "a"\nkeep_last = 0x' + "f" * 5000,
        "job[0].keep_last: must be 9223372036854775807 or less",
    ),
    (
        "an off-site keep rule past any count",
        'job:[offsite]\nbucket = "backups"\nkeep_daily = 9223372036854775808',
        "offsite.keep_daily: must be 9223372036854775807 or less",
    ),
    (
        "not a number for a percentage",
        'job:[offsite]\nbucket = "backups"\ncheck_read_data = nan',
        "offsite.check_read_data: must be a finite number",
    ),
    (
        "a number past Python's digits",
        'job:[[job]]\nname = "a"\nkeep_last = 1' + "0" * 5000,
        "not valid TOML here: a number of more than 4300 digits",
    ),
]


@pytest.mark.parametrize(
    ("name", "change", "expected"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_configs_give_one_line_with_the_key_path_and_exit_78(
    tmp_path: Path,
    influxdb_conf: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    change: str,
    expected: str,
) -> None:
    where, _, text = change.partition(":")
    body = base(influxdb_conf, tmp_path, **{where: text})
    path = write(tmp_path, body)
    assert cli.main(["--config", str(path), "check-config"]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"influx-backupd: {path}: "), err
    assert expected in err, err
    assert not (tmp_path / "state").exists(), "a bad config touches nothing"


def test_a_notify_value_that_is_no_url_is_not_echoed(
    tmp_path: Path, influxdb_conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token pasted without its scheme is a secret: the line names the key, not the value."""
    body = base(influxdb_conf, tmp_path, job='[notify]\nfailure = ["tk_live_s3cr3t"]')
    assert cli.main(["--config", str(write(tmp_path, body)), "check-config"]) == 78
    err = capsys.readouterr().err
    assert "notify.failure[0]" in err and "without ://" in err, err
    assert "s3cr3t" not in err and "tk_live" not in err, err


def test_a_schedule_may_have_spaces_around_it(tmp_path: Path, influxdb_conf: Path) -> None:
    body = base(influxdb_conf, tmp_path, job='[[job]]\nname = "a"\nschedule = " @daily "')
    assert load(write(tmp_path, body)).settings.job[0].schedule == " @daily "


def test_a_metrics_file_that_is_a_directory_is_refused(tmp_path: Path, influxdb_conf: Path) -> None:
    body = base(influxdb_conf, tmp_path).replace(
        "[daemon]\n", f'[daemon]\nmetrics_file = "{tmp_path}"\n'
    )
    with pytest.raises(ConfigError, match=r"daemon.metrics_file: .* is a directory"):
        load(write(tmp_path, body))


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", str(tmp_path / "nope.toml"), "check-config"]) == 78
    assert (
        capsys.readouterr().err
        == f"influx-backupd: {tmp_path / 'nope.toml'}: config file not found\n"
    )


def test_config_that_is_not_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[influxd\nconfig = 1\n")
    assert cli.main(["--config", str(path), "check-config"]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid TOML" in err


def test_missing_required_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[daemon]\n")
    assert cli.main(["--config", str(path), "check-config"]) == 78
    assert "influxd: required key is missing" in capsys.readouterr().err


def test_neither_service_nor_command(
    tmp_path: Path, influxdb_conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = base(influxdb_conf, tmp_path).replace('service = "influxdb.service"', "")
    assert cli.main(["--config", str(write(tmp_path, body)), "check-config"]) == 78
    assert "influxd: set service" in capsys.readouterr().err


def test_influxdb_conf_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The line names the config and its key (README walkthrough: it named neither)."""
    body = base(tmp_path / "gone.conf", tmp_path)
    config = write(tmp_path, body)
    assert cli.main(["--config", str(config), "check-config"]) == 78
    assert capsys.readouterr().err == (
        f"influx-backupd: {config}: influxd.config {tmp_path / 'gone.conf'}: not found "
        "(the influxdb.conf influxd runs with)\n"
    )


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ('[meta]\ndir = "/m"\n', "[data] dir: missing"),
        ('[meta]\ndir = "/m"\n[data]\nwal-dir = "/w"\n', "[data] dir: missing"),
        ('[data]\ndir = "/d"\n', "[meta] dir: missing"),
        ('[meta]\ndir = "m"\n[data]\ndir = "/d"\n', "[meta] dir: must be an absolute path"),
        ('[meta]\ndir = "/m"\n[data]\ndir = 5\n', "[data] dir: must be a directory path"),
        # influxd takes "~" literally (a dir named ~ under its working dir): relative
        ('[meta]\ndir = "/m"\n[data]\ndir = "~/d"\n', "[data] dir: must be an absolute path"),
        # TOML's \u0000: a traceback from every command before
        (
            '[meta]\ndir = "/m"\n[data]\ndir = "/d\\u0000x"\n',
            "[data] dir: must be a directory path",
        ),
        # influxd reads names in any case: two spellings of one are either, at random
        (
            '[meta]\ndir = "/m"\n[data]\ndir = "/d"\n[DATA]\nDIR = "/e"\n',
            "[DATA] and [data] are one section to influxd",
        ),
        (
            '[meta]\ndir = "/m"\n[data]\ndir = "/d"\nwal-dir = "/w"\nWAL-DIR = "/v"\n',
            "[data] 'WAL-DIR' and 'wal-dir' are one key to influxd",
        ),
    ],
)
def test_influxdb_conf_without_the_dirs_we_need(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], conf: str, expected: str
) -> None:
    influxdb_conf = tmp_path / "influxdb.conf"
    influxdb_conf.write_text(conf)
    assert (
        cli.main(["--config", str(write(tmp_path, base(influxdb_conf, tmp_path))), "check-config"])
        == 78
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(influxdb_conf) in err and expected in err, err


def test_no_traceback_from_a_real_process(tmp_path: Path, influxdb_conf: Path) -> None:
    path = write(tmp_path, base(influxdb_conf, tmp_path, influxd_extra="stop_timeout = []"))
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(path), "backup"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 78
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1


def test_env_var_and_flag_choose_the_config(
    tmp_path: Path,
    influxdb_conf: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, base(influxdb_conf, tmp_path))
    monkeypatch.setenv("INFLUX_BACKUPD_CONFIG", str(path))
    assert cli.main(["check-config"]) == 0
    assert f"{path}: ok" in capsys.readouterr().out
    assert cli.main(["check-config", "--config", str(tmp_path / "other.toml")]) == 78


def test_check_config_prints_the_resolved_plan(
    tmp_path: Path, influxdb_conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = '[[job]]\nname = "nightly"\nschedule = "0 3 * * *"\nmode = "auto"'
    path = write(tmp_path, base(influxdb_conf, tmp_path, job=job))
    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "server" / "wal") in out
    assert "nightly" in out and "auto" in out and "influxdb.service" in out
    # a job that may run hot: which server's clock dates its increments
    assert "server clock" in out
    assert cli.main(["--config", str(path), "check-config", "--json"]) == 0
    import json

    plan = json.loads(capsys.readouterr().out)
    assert plan["dirs"]["data"] == str(tmp_path / "server" / "data")
    assert plan["server_clock"].endswith("/ping") and plan["server_clock"] in out
    assert plan["job"][0]["name"] == "nightly"


def _field_names(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
    return names


def test_config_example_is_valid_and_documents_every_key() -> None:
    raw: dict[str, Any] = tomllib.loads((REPO / "config.example.toml").read_text())
    Settings.model_validate(raw)
    text = (REPO / "config.example.toml").read_text()
    for section, model in Settings.model_fields.items():
        assert model.annotation is not None
        sub = model.annotation
        if section == "job":
            sub = JobSection
        if section == "offsite":  # optional: OffsiteSection | None
            sub = OffsiteSection
        assert isinstance(sub, type) and issubclass(sub, BaseModel)
        for key in _field_names(sub):
            # documented either as a live key or as a commented-out example
            assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{section}.{key} undocumented"


def test_influxdb_conf_names_are_read_in_any_case_as_influxd_reads_them(tmp_path: Path) -> None:
    """influxd 1.6 matches section and key names ignoring case: `[Data]` and `WAL-Dir` move its
    dirs. Read exactly, the tool archived the default-spelled dirs (or none) and called it ok."""
    conf = tmp_path / "influxdb.conf"
    conf.write_text(
        '[Meta]\n  Dir = "/srv/m"\n[DATA]\n  dir = "/srv/d"\n  WAL-Dir = "/srv/w"\n'
        '[Http]\n  Bind-Address = ":9999"\n'
    )
    paths, raw = read_server_paths(conf)
    assert (paths.meta, paths.data, paths.wal) == (Path("/srv/m"), Path("/srv/d"), Path("/srv/w"))
    assert raw["http"]["bind-address"] == ":9999"


def test_read_server_paths_of_a_09_style_conf_includes_hinted_handoff(tmp_path: Path) -> None:
    conf = tmp_path / "influxdb.conf"
    conf.write_text('[meta]\ndir = "/m"\n[data]\ndir = "/d"\n[hinted-handoff]\ndir = "/hh"\n')
    paths, _ = read_server_paths(conf)
    assert paths.dirs() == {"meta": Path("/m"), "data": Path("/d"), "hh": Path("/hh")}


def test_config_error_is_a_plain_exception() -> None:
    assert issubclass(ConfigError, Exception)


def test_verify_is_not_scheduled_unless_asked(tmp_path: Path, influxdb_conf: Path) -> None:
    verify = load(write(tmp_path, base(influxdb_conf, tmp_path))).settings.verify
    assert (verify.schedule, verify.every, verify.deep, verify.restore_test) == (
        None,
        None,
        False,
        False,
    )
    section = '[verify]\nevery = "7d"\nrestore_test = true\n'
    verify = load(write(tmp_path, base(influxdb_conf, tmp_path, job=section))).settings.verify
    assert verify.every == 7 * 86400 and verify.restore_test


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('every = "7d"\nschedule = "0 5 * * 0"', "verify: set either schedule or every, not both"),
        ('schedule = "0 5 * * 8"', "verify.schedule:"),
        ("scrub = true", "verify.scrub:"),
    ],
)
def test_a_bad_verify_section_is_one_line_naming_it(
    tmp_path: Path, influxdb_conf: Path, section: str, expected: str
) -> None:
    path = write(tmp_path, base(influxdb_conf, tmp_path, job=f"[verify]\n{section}\n"))
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert expected in message, message


def test_a_relative_config_path_is_made_absolute_where_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's status file and its reloads name the config: a relative path given at
    start (`--config conf.toml` from /etc/x) named another file, or none, from anywhere else."""
    from influx_backupd.core.config import CONFIG_ENV, resolve_path

    monkeypatch.chdir(tmp_path)
    assert resolve_path("conf.toml") == tmp_path / "conf.toml"
    monkeypatch.setenv(CONFIG_ENV, "sub/conf.toml")
    assert resolve_path(None) == tmp_path / "sub" / "conf.toml"


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_influxdb_conf_read_again_by_a_run_is_only_a_regular_file(
    tmp_path: Path, kind: str
) -> None:
    """A hot run and the restores read the live influxdb.conf again (its bind-address, its
    [data] settings), days after the load checked it. Before: a plain read, so a FIFO put
    there since blocked the run holding the lock for good, a link to /dev/zero filled memory.
    Now an OSError at once, which each caller reports as any unreadable conf."""
    conf = tmp_path / "influxdb.conf"
    conf.write_text('[Data]\nDir = "/var/lib/influxdb/data"\n')
    assert read_influx_conf(conf) == {"data": {"dir": "/var/lib/influxdb/data"}}
    conf.unlink()
    if kind == "fifo":
        os.mkfifo(conf)
    else:
        conf.symlink_to("/dev/zero")
    caught = raised_promptly(lambda: read_influx_conf(conf))
    assert isinstance(caught, OSError) and "not a regular file" in str(caught), caught
