"""The JSON Schema carries what it can of load()'s rules, and never refuses what load() accepts:
each value below is refused by both, each variant accepted by both."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from influx_backupd.core.config import CRON_PATTERN, MIN_EVERY, ConfigError, load
from influx_backupd.core.config_values import host_port_problem, url_problem
from influx_backupd.core.durations import (
    DURATION_PATTERN,
    INTERVAL_DURATION_PATTERN,
    POSITIVE_DURATION_PATTERN,
    parse_duration,
)
from influx_backupd.core.schedule import ALIASES, ScheduleError, validate
from tests.unit.core.test_config import INFLUXDB_CONF

REPO = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((REPO / "packaging" / "config.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _toml(config: dict[str, Any]) -> str:
    """Just enough TOML for these configs: tables of scalars and lists, and [[job]]."""
    lines: list[str] = []
    for section, body in config.items():
        for table in body if isinstance(body, list) else [body]:
            lines.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def good(tmp_path: Path) -> dict[str, Any]:
    conf = tmp_path / "influxdb.conf"
    conf.write_text(INFLUXDB_CONF.format(root=tmp_path / "server"))
    (tmp_path / "pw").write_text("secret\n")
    return {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "influxd": {"config": str(conf), "service": "influxdb.service"},
        "storage": {"dir": str(tmp_path / "archives")},
        "job": [{"name": "nightly", "schedule": "0 3 * * *", "keep_daily": 7}],
        "notify": {},
    }


def _loads(tmp_path: Path, config: dict[str, Any]) -> bool:
    path = tmp_path / "config.toml"
    path.write_text(_toml(config))
    try:
        load(path)
    except ConfigError:
        return False
    return True


def _with(config: dict[str, Any], where: str, key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(config)
    table = out["job"][0] if where == "job" else out[where]
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value
    return out


REFUSED = [
    ("job", "name", "../etc"),
    ("job", "schedule", "@reboot"),
    ("job", "schedule", "61 * * * *"),
    ("job", "schedule", "0 24 * * *"),
    ("job", "schedule", "hello"),
    ("job", "cold_window", "25:00-01:00"),
    ("job", "heartbeat_url", "ftp://hc-ping.com/x"),
    ("job", "heartbeat_url", "https://user:pass@hc-ping.com/x"),
    ("job", "heartbeat_url", "https://hc-ping.com:0/x"),
    ("job", "on_success", []),
    ("job", "on_failure", ["bin/notify"]),
    ("job", "on_success", ["./notify"]),
    ("job", "hook_timeout", 0),
    ("job", "hook_timeout", "0s"),
    ("job", "hook_timeout", "0.0m"),
    ("job", "every", "0.5"),
    ("job", "every", "500ms"),
    ("job", "every", 0.5),
    ("job", "every", "0s"),
    ("notify", "timeout", "0s"),
    ("influxd", "stop_timeout", "0s"),
    ("influxd", "start_timeout", 0),
    ("influxd", "backup_timeout", "0ms"),
    ("notify", "failure", ["not a url"]),
    ("daemon", "state_dir", "state"),
    ("daemon", "metrics_file", "metrics.prom"),
    ("storage", "dir", "/srv/backups/*"),
    ("storage", "dir", "/srv/back\0ups"),
    ("storage", "dir", "backups"),
    ("influxd", "url", "ftp://127.0.0.1:8086"),
    ("influxd", "url", "http://127.0.0.1:0"),
    ("influxd", "url", "http://user:pw@127.0.0.1:8086"),
    ("influxd", "backup_url", "ftp://x"),
    ("influxd", "backup_host", "127.0.0.1"),
    ("influxd", "backup_host", "127.0.0.1:0"),
    ("influxd", "command", ["/usr/bin/influxd"]),  # and service: both
    ("influxd", "service", None),  # neither
    ("influxd", "username", "backup"),  # without password_file
    ("influxd", "pidfile", "influxd.pid"),
]


@pytest.mark.parametrize(("where", "key", "value"), REFUSED)
def test_what_load_refuses_the_schema_refuses(
    tmp_path: Path, good: dict[str, Any], where: str, key: str, value: Any
) -> None:
    config = _with(good, where, key, value)
    assert not _loads(tmp_path, config), "load() takes it: not a refusal to test"
    assert not VALIDATOR.is_valid(config), f"the schema takes {where}.{key} = {value!r}"


def test_password_file_without_username_and_schedule_with_every(
    tmp_path: Path, good: dict[str, Any]
) -> None:
    for config in (
        _with(good, "influxd", "password_file", str(tmp_path / "pw")),
        _with(good, "job", "every", "6h"),
        _with(_with(good, "influxd", "service", None), "influxd", "command", ["influxd"]),
    ):
        assert not _loads(tmp_path, config)
        assert not VALIDATOR.is_valid(config), config


ACCEPTED = [
    ("job", "schedule", "@hourly"),
    ("job", "schedule", "@Daily"),
    ("job", "schedule", " 0 3 * * * "),
    ("job", "schedule", "*/15 0-23/2 1,15 jan-mar mon-fri"),
    ("job", "schedule", "00 03 * * 7"),
    ("job", "schedule", "5/10 23 31 12 *"),
    ("job", "schedule", "0,30 1-5,22 * * sun"),
    ("job", "name", "db-1.nightly_A"),
    ("job", "timezone", "Europe/Berlin"),
    ("job", "cold_window", "23:00-05:00"),
    ("job", "heartbeat_url", "https://hc-ping.com/5b5f0a3c?x=a@b"),
    ("job", "heartbeat_url", "http://[::1]:8000/ping/x"),
    ("job", "on_success", ["true"]),
    ("job", "on_failure", ["/bin/echo", "failed"]),
    ("job", "hook_timeout", "0.5s"),
    ("job", "hook_timeout", 0.001),
    ("job", "hook_timeout", "1ms"),
    ("job", "catch_up", "0s"),
    ("job", "jitter", 0),
    ("influxd", "url", "HTTP://127.0.0.1:8086/"),
    ("influxd", "url", "http://[::1]:8086"),
    ("influxd", "url", "https://influx.example.com/proxy/"),
    ("influxd", "backup_url", "http://10.0.0.2:8086"),
    ("influxd", "backup_host", "[::1]:8088"),
    ("influxd", "backup_host", "db2.example.com:08088"),
    ("storage", "dir", "/srv/backups (old)/x"),
    ("daemon", "metrics_file", "/var/lib/node_exporter/textfile/ib.prom"),
    ("influxd", "pidfile", "/run/influxd.pid"),
    ("notify", "failure", ["ntfy://ntfy.sh/TOPIC"]),
    ("notify", "timeout", "100ms"),
]
EVERY = ["1s", "1", 1, "1000ms", "0.02m", "6h", "1.5", "2d", "1w"]


@pytest.mark.parametrize(("where", "key", "value"), ACCEPTED + [("job", "every", e) for e in EVERY])
def test_what_load_accepts_the_schema_accepts(
    tmp_path: Path, good: dict[str, Any], where: str, key: str, value: Any
) -> None:
    config = _with(good, where, key, value)
    if key == "every":
        config["job"][0].pop("schedule")
    assert _loads(tmp_path, config), "load() refuses it: not an acceptance to test"
    errors = [e.message for e in VALIDATOR.iter_errors(config)]
    assert not errors, errors


def test_command_instead_of_service_and_http_auth_are_accepted(
    tmp_path: Path, good: dict[str, Any]
) -> None:
    config = _with(good, "influxd", "service", None)
    config["influxd"]["command"] = ["/usr/bin/influxd", "-config", "/etc/influxdb/influxdb.conf"]
    config["influxd"].update(username="backup", password_file=str(tmp_path / "pw"))
    assert _loads(tmp_path, config)
    assert not [e.message for e in VALIDATOR.iter_errors(config)]


def test_every_cron_nickname_matches() -> None:
    for alias in ALIASES:
        for written in (alias, alias.upper()):
            assert re.search(CRON_PATTERN, written), written


_TOKENS = st.sampled_from(
    [
        "*",
        "*/5",
        "0",
        "7",
        "07",
        "59",
        "60",
        "23",
        "24",
        "1-5",
        "5-1",
        "1,2",
        "1-5/2",
        "3/4",
        "mon",
        "jan-mar",
        "L",
        "last",
        "?",
        "",
        "-1",
        "1,",
        "0-59/61",
        "sun-sat",
        "x",
    ]
)


@settings(max_examples=400, deadline=None)
@given(fields=st.lists(_TOKENS, min_size=4, max_size=6), pad=st.sampled_from(["", " ", "  "]))
def test_the_cron_pattern_never_refuses_a_schedule_load_accepts(
    fields: list[str], pad: str
) -> None:
    expr = pad + " ".join(fields) + pad
    try:
        validate(expr)
    except ScheduleError:
        return
    assert re.search(CRON_PATTERN, expr), expr


@settings(max_examples=400, deadline=None)
@given(
    number=st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,3})?", fullmatch=True),
    unit=st.sampled_from(["", "ms", "s", "m", "h", "d", "w"]),
    space=st.sampled_from(["", " "]),
)
def test_duration_patterns_never_refuse_what_the_checks_accept(
    number: str, unit: str, space: str
) -> None:
    text = f"{space}{number}{space}{unit}{space}"
    try:
        seconds = parse_duration(text)
    except ValueError:  # over 100 years: refused by load, a schema may take it
        return
    for pattern, accepted in (
        (DURATION_PATTERN, True),
        (POSITIVE_DURATION_PATTERN, seconds > 0),
        (INTERVAL_DURATION_PATTERN, seconds >= MIN_EVERY),
    ):
        if accepted:
            assert re.search(pattern, text), (pattern, text)
    if seconds == 0:
        assert not re.search(POSITIVE_DURATION_PATTERN, text), text


_URL_PARTS = st.sampled_from(
    [
        *("http", "HTTPS", "https", "ftp", "://", ":", "@", "/", "?", "#", "[", "]", "::1"),
        *("0", "00", "8086", "x", "a.b", "u:p", "%", "-", "65536", "1", " ", "\x7f", "\n"),
    ]
)


@settings(max_examples=2000, deadline=None)
@given(parts=st.lists(_URL_PARTS, min_size=1, max_size=8))
def test_url_and_host_port_patterns_never_refuse_what_load_accepts(parts: list[str]) -> None:
    text = "".join(parts)
    props = {
        **SCHEMA["$defs"]["InfluxdSection"]["properties"],
        **SCHEMA["$defs"]["JobSection"]["properties"],
    }
    for key in ("url", "backup_url"):
        if url_problem(text, key) is None:
            assert re.search(props[key]["pattern"], text), (key, text)
    if text.startswith(("http://", "https://")) and url_problem(text, "heartbeat_url") is None:
        assert re.search(props["heartbeat_url"]["pattern"], text), text
    if host_port_problem(text) is None:
        assert re.search(props["backup_host"]["pattern"], text), text


@pytest.mark.parametrize("size", ["20MB", "10 MiB", "1.5G", "64MiB", 8 << 20])
def test_sizes_as_people_write_them_are_accepted(
    tmp_path: Path, good: dict[str, Any], size: str | int
) -> None:
    """[offsite] max_rate, part_size, chunk_size take "20MiB" (their descriptions say so): the
    schema typed them integer only, and an editor flagged a config load() takes."""
    credentials = tmp_path / "s3.ini"
    credentials.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    credentials.chmod(0o600)
    config = {
        **good,
        "offsite": {
            "bucket": "bkt-one",
            "endpoint_url": "http://127.0.0.1:9000",
            "credentials_file": str(credentials),
            "max_rate": size,
            "part_size": size if size != "1.5G" else "8MiB",
            "chunk_size": size if size != "1.5G" else "64MiB",
        },
    }
    assert _loads(tmp_path, config), "load() refuses it: not an acceptance to test"
    errors = [e.message for e in VALIDATOR.iter_errors(config)]
    assert not errors, errors
