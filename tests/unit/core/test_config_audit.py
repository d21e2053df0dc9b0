"""The config surface as an operator meets it: a BOM-prefixed file loads, check-config's JSON
names each key as the config writes it, each refusal's hint is the key's own, and a config
with no job says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from influx_backupd.cli import main as cli
from influx_backupd.core.config import (
    APPRISE_EXAMPLES,
    NO_JOB_WARNING,
    ConfigError,
    Settings,
    _model_at,
    load,
)
from tests.unit.core.test_config import INFLUXDB_CONF, base, write

BOM = "\ufeff"


@pytest.fixture
def influxdb_conf(tmp_path: Path) -> Path:
    path = tmp_path / "influxdb.conf"
    path.write_text(INFLUXDB_CONF.format(root=tmp_path / "server"))
    return path


def test_a_config_and_influxdb_conf_with_a_byte_order_mark_load(
    tmp_path: Path, influxdb_conf: Path
) -> None:
    influxdb_conf.write_text(BOM + influxdb_conf.read_text(), encoding="utf-8")
    job = '[[job]]\nname = "nightly"\nkeep_daily = 7'
    path = write(tmp_path, BOM + base(influxdb_conf, tmp_path, job=job))
    config = load(path)
    assert config.settings.job[0].name == "nightly"
    assert config.backup_host == "127.0.0.1:18088"


def test_a_password_file_with_a_byte_order_mark_is_the_password(
    tmp_path: Path, influxdb_conf: Path
) -> None:
    secret = tmp_path / "pw"
    secret.write_text(BOM + "s3cret\n", encoding="utf-8")
    extra = f'username = "backup"\npassword_file = "{secret}"'
    config = load(write(tmp_path, base(influxdb_conf, tmp_path, influxd_extra=extra)))
    assert config.credentials is not None and config.credentials.password == "s3cret"


def test_influxdb_conf_readers_after_load_take_a_bom(tmp_path: Path, influxdb_conf: Path) -> None:
    from influx_backupd.restore.database import live_snapshot_host
    from influx_backupd.restore.hot import live_settings

    influxdb_conf.write_text(BOM + influxdb_conf.read_text(), encoding="utf-8")
    config = load(write(tmp_path, base(influxdb_conf, tmp_path)))
    assert live_snapshot_host(config) == "127.0.0.1:18088"
    live_settings(influxdb_conf)  # raised TOMLDecodeError


def _plan(tmp_path: Path, body: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    path = write(tmp_path, body)
    assert cli.main(["--config", str(path), "check-config", "--json"]) == 0
    plan: dict[str, Any] = json.loads(capsys.readouterr().out)
    return plan


def test_check_config_json_names_every_key_as_the_config_does(
    tmp_path: Path, influxdb_conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    extra = f'username = "backup"\npassword_file = "{secret}"'
    job = (
        '[[job]]\nname = "nightly"\ncopy = "direct"\nkeep_daily = 7\n'
        'heartbeat_url = "https://hc-ping.com/5ec2e7-token"\n'
        '[verify]\nevery = "7d"\n'
        '[offsite]\nbucket = "backups"\nendpoint_url = "http://127.0.0.1:9000"\nmax_rate = "20MiB"'
    )
    body = base(influxdb_conf, tmp_path, influxd_extra=extra, job=job)
    plan = _plan(tmp_path, body, capsys)
    assert plan["job"][0]["copy"] == "direct"
    # what no config key holds: the file itself, and what follows from influxdb.conf
    derived = {"config", "dirs", "auth_enabled", "server_clock", "warnings"}
    tables = {f.alias or n: n for n, f in Settings.model_fields.items()}
    # every table and every key in it, set or not: an operator sees what load() resolved
    assert set(plan) - derived == set(tables), set(plan) - derived ^ set(tables)
    for table, section in plan.items():
        if table in derived:
            continue
        model = _model_at((table,))
        assert model is not None, table
        keys = {f.alias or n for n, f in model.model_fields.items()}
        for entry in section if isinstance(section, list) else [section]:
            assert set(entry) == keys, f"[{table}]: {set(entry) ^ keys}"
    assert plan["offsite"]["max_rate"] == 20 * 2**20 and plan["offsite"]["hold_unsent"] is True
    assert plan["influxd"]["user"] == "influxdb" and plan["influxd"]["stop_timeout"] == 90.0
    assert plan["notify"]["timeout"] == 30.0 and plan["notify"]["failure"] == 0
    # the heartbeat's token is its path: shown nowhere, as notify URLs are only counted
    assert plan["job"][0]["heartbeat_url"] == "https://hc-ping.com/…"
    assert cli.main(["--config", str(tmp_path / "config.toml"), "check-config"]) == 0
    text = capsys.readouterr().out
    assert "5ec2e7" not in text and "heartbeat https://hc-ping.com/…" in text
    assert "off-site       s3://backups/" in text and "at http://127.0.0.1:9000" in text
    assert "keep daily 7" in text and "restored files owned by influxdb:influxdb" in text
    assert plan["influxd"]["username"] == "backup" and plan["storage"]["dir"]
    assert plan["daemon"]["state_dir"] == str(tmp_path / "state")


def test_check_config_and_the_daemon_warn_of_a_config_without_jobs(
    tmp_path: Path, influxdb_conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _plan(tmp_path, base(influxdb_conf, tmp_path), capsys)
    assert NO_JOB_WARNING in plan["warnings"]
    path = tmp_path / "config.toml"
    assert cli.main(["--config", str(path), "check-config"]) == 0
    assert f"warning: {NO_JOB_WARNING}" in capsys.readouterr().out

    from influx_backupd.daemon.loop import Daemon

    with capture_logs() as logs:
        Daemon(load(path))._tell_unwritable()
    said = [e["detail"] for e in logs if e["event"] == "config.warning"]
    assert NO_JOB_WARNING in said, logs


def test_backup_of_the_implicit_job_warns_it_keeps_every_backup(
    tmp_path: Path, influxdb_conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, base(influxdb_conf, tmp_path))
    # a dry run: the same choice of job, nothing stopped
    cli.main(["--config", str(path), "backup", "--dry-run"])
    err = capsys.readouterr().err
    assert "warning:" in err and "job manual has no retention rule" in err, err


def test_the_mailto_refusal_says_apprise_cannot_use_it_and_shows_forms_apprise_takes(
    tmp_path: Path, influxdb_conf: Path
) -> None:
    import apprise

    for example in APPRISE_EXAMPLES:
        assert apprise.Apprise().add(example), example
    body = base(influxdb_conf, tmp_path) + (
        '[notify]\nfailure = ["mailto://erin:pw@127.0.0.1:1?to=x@example.com"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, body))
    said = str(caught.value)
    assert "apprise cannot use this 'mailto' URL" in said and "smtp=" in said, said
    assert "not one apprise can send to" not in said and "@HOST" not in said
    assert "pw" not in said.replace("mailto://USER:PASSWORD", "")  # never the secret


@pytest.mark.parametrize(
    ("where", "key", "own", "foreign"),
    [
        ("job", "heartbeat_url", "path or query", "[influxd]"),
        ("influxd", "url", "username and password_file", "heartbeat"),
        ("influxd", "backup_url", "username and password_file", "heartbeat"),
    ],
)
def test_a_url_with_credentials_gets_its_own_key_s_hint_only(
    tmp_path: Path, influxdb_conf: Path, where: str, key: str, own: str, foreign: str
) -> None:
    url = f'{key} = "https://u:p@example.com/x"'
    if where == "job":
        body = base(influxdb_conf, tmp_path, job=f'[[job]]\nname = "a"\n{url}')
    else:
        body = base(influxdb_conf, tmp_path, influxd_extra=url)
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, body))
    said = str(caught.value)
    assert f"{key}: must not hold credentials" in said and own in said, said
    assert foreign not in said, said
    if key == "heartbeat_url":
        assert "8086" not in said, said  # an influxd example is no heartbeat's
