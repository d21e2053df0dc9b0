"""The config as people meet it: the example states the defaults honestly, the JSON Schema for
editors is current and accepts the example, every message is one line in our words with a
"did you mean", and cron's @nicknames work."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from influx_backupd.core.config import JobSection, Settings, _describe, _model_at
from influx_backupd.core.schedule import ScheduleError, cron_trigger

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "config.example.toml"
SCHEMA = REPO / "packaging" / "config.schema.json"
BASE: dict[str, Any] = {"influxd": {"service": "influxdb.service"}, "storage": {"dir": "/b"}}


def sections() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    for name in Settings.model_fields:
        model = _model_at((name,))
        assert model is not None, name
        out[name] = model
    return out


def _example_keys(
    key_line: str, header: str = r"^\[\[?(\w+)\]\]?"
) -> Iterator[tuple[str, FieldInfo, re.Match[str], str]]:
    """(section, the key's field, the match of key_line, the line) for each line of the example
    that key_line matches (group 1: the key), in the table the last header line opened."""
    section: str | None = None
    for line in EXAMPLE.read_text().splitlines():
        opened = re.match(header, line)
        if opened:
            section = opened.group(1)
            continue
        found = re.match(key_line, line)
        if found and section is not None:
            model = sections()[section]
            key = found.group(1)
            field = next(f for n, f in model.model_fields.items() if key in (n, f.alias))
            yield section, field, found, line


def test_example_marks_every_value_that_is_not_the_default() -> None:
    settings_ = Settings.model_validate(tomllib.loads(EXAMPLE.read_text()))
    checked = 0
    for section, field, _live, line in _example_keys(r"^(\w+) = "):
        name = next(n for n, f in sections()[section].model_fields.items() if f is field)
        part: Any = getattr(settings_, section)
        value = getattr(part[0] if isinstance(part, list) else part, name)
        if field.is_required():
            assert "# required" in line, line
        elif value != field.get_default(call_default_factory=True):
            if "# required" not in line:  # service: one of service or command
                assert "# recommended (default: " in line, f"not the default, not marked: {line}"
        else:
            assert "# recommended" not in line, f"the default, marked as a change: {line}"
        checked += 1
    assert checked > 20


def test_example_comments_out_only_defaults_or_marked_examples() -> None:
    """A commented-out `# key = value` is the key's default, or marked "# e.g. (default: …)":
    an operator reads `# sse = "AES256"` as what they get (before, several such examples were
    unmarked: max_downtime, sse, storage_class, region, …)."""
    checked = 0
    commented = r"^# (\w+) = (.*?)(\s{2,}#.*)?$"
    for _section, field, found, line in _example_keys(commented, r"^(?:# )?\[\[?(\w+)\]\]?\s*$"):
        try:
            raw = tomllib.loads(f"x = {found.group(2)}")["x"]
        except tomllib.TOMLDecodeError:
            continue  # prose that happens to read "# word = …"
        annotated = (
            Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        )
        try:
            value = TypeAdapter(annotated).validate_python(raw)
        except ValueError:
            value = raw  # an example placeholder ("age1…"): never a default
        if field.is_required() or value != field.get_default(call_default_factory=True):
            assert "# e.g. (" in line and ("default: " in line or "required" in line), line
        else:
            assert "# e.g." not in line, f"the default, marked as an example: {line}"
        checked += 1
    assert checked > 40


def test_schema_is_generated_from_the_models() -> None:
    from scripts.config_schema import render

    assert SCHEMA.read_text() == render(), "run: python scripts/config_schema.py"


def test_example_validates_against_the_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    example = tomllib.loads(EXAMPLE.read_text())
    jsonschema.Draft202012Validator(schema).validate(example)


@pytest.mark.parametrize(
    "broken",
    [
        {"job": [{"name": "a", "keep_daily": -1}]},
        {"job": [{"name": "a", "mode": "warm"}]},
        {"job": [{"name": "a", "catch_up": "an hour"}]},
        {"job": [{"name": "a", "keep_dayly": 3}]},
        {"daemon": {"log_level": "loud"}},
        {"storage": {}},
    ],
)
def test_schema_refuses_what_the_config_refuses(broken: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    config = {**BASE, **broken}
    with pytest.raises(ValidationError):
        Settings.model_validate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(config)


def test_every_key_in_the_schema_is_described_and_durations_are_strings() -> None:
    schema = json.loads(SCHEMA.read_text())
    tables = {"(top)": schema, **schema["$defs"]}
    for table, body in tables.items():
        for key, prop in body["properties"].items():
            assert prop.get("description"), f"{table}.{key}: add a docstring under the field"
    catch_up = schema["$defs"]["JobSection"]["properties"]["catch_up"]
    assert catch_up["default"] == "1h"
    assert {"type": "string"}.items() <= catch_up["anyOf"][0].items()


def _bad_values() -> st.SearchStrategy[object]:
    return st.one_of(
        st.just({"x": 1}),
        st.just([{"y": 2}]),
        st.just("not a thing"),
        st.just(-5),
        st.just(True),
        st.just(3.5),
        st.just([1, 2]),
    )


@settings(max_examples=300, deadline=None)
@given(
    where=st.sampled_from(["daemon", "influxd", "storage", "job", "verify", "notify"]),
    data=st.data(),
    value=_bad_values(),
)
def test_every_message_is_one_line_in_our_words(where: str, data: Any, value: object) -> None:
    model = sections()[where]
    key = data.draw(st.sampled_from([f.alias or n for n, f in model.model_fields.items()]))
    config: dict[str, Any] = {**BASE, "job": [{"name": "a"}]}
    table = {**(config["job"][0] if where == "job" else config.get(where, {})), key: value}
    config[where] = [table] if where == "job" else table
    try:
        Settings.model_validate(config)
    except ValidationError as exc:
        message = _describe(exc.errors()[0])
    else:
        return  # lax parsing took it (e.g. 3.5 seconds)
    assert "\n" not in message
    path = f"job[0].{key}" if where == "job" else f"{where}.{key}"
    assert message.startswith((f"{path}: ", f"{path}[", f"{where}: ", "job[0]: ")), message
    for leak in ("Input should", "pydantic", "validation error", "type=", "For further"):
        assert leak not in message, message


def _unknown_key_line(where: str, key: str) -> tuple[str, str]:
    """(the key's path, the one line said) for a config with key added in table where."""
    config: dict[str, Any] = {**BASE}
    if where == "(top)":
        config[key] = {}
        path = key
    elif where == "job":
        config["job"] = [{"name": "a", key: 1}]
        path = f"job[0].{key}"
    else:
        config[where] = {**config.get(where, {}), key: 1}
        path = f"{where}.{key}"
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate(config)
    return path, _describe(caught.value.errors()[0])


@pytest.mark.parametrize(
    ("where", "typo", "meant"),
    [
        ("job", "keep_dayly", "keep_daily"),
        ("job", "schedual", "schedule"),
        ("job", "verify_after_backups", "verify_after_backup"),
        ("job", "keep-last", "keep_last"),
        ("influxd", "stop-timeout", "stop_timeout"),
        ("daemon", "metric_file", "metrics_file"),
        ("(top)", "jobs", "job"),
        ("(top)", "notifications", "notify"),
    ],
)
def test_unknown_keys_suggest_the_closest(where: str, typo: str, meant: str) -> None:
    path, line = _unknown_key_line(where, typo)
    assert line == f"{path}: unknown key; did you mean {meant}?"


@pytest.mark.parametrize(
    ("where", "key", "home"),
    [
        ("(top)", "state_dir", "[daemon]"),
        ("influxd", "keep_last", "each [[job]] or [offsite]"),
        ("storage", "stop_timeout", "[influxd]"),
        ("daemon", "dir", "[storage]"),
    ],
)
def test_a_key_in_the_wrong_table_says_where_it_belongs(where: str, key: str, home: str) -> None:
    path, line = _unknown_key_line(where, key)
    assert line == f"{path}: unknown key; {key} belongs in {home}"


def test_job_written_as_a_single_table() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({**BASE, "job": {"name": "a"}})
    assert _describe(caught.value.errors()[0]).startswith("job: must be [[job]] tables")


@pytest.mark.parametrize(
    ("nickname", "after", "fires"),
    [
        ("@hourly", datetime(2026, 3, 1, 10, 20, tzinfo=UTC), datetime(2026, 3, 1, 11, 0)),
        ("@daily", datetime(2026, 3, 1, 10, 20, tzinfo=UTC), datetime(2026, 3, 2, 0, 0)),
        ("@weekly", datetime(2026, 3, 2, 10, 0, tzinfo=UTC), datetime(2026, 3, 8, 0, 0)),  # Sunday
        ("@monthly", datetime(2026, 3, 2, 10, 0, tzinfo=UTC), datetime(2026, 4, 1, 0, 0)),
    ],
)
def test_cron_nicknames(nickname: str, after: datetime, fires: datetime) -> None:
    JobSection(name="a", schedule=nickname)
    trigger = cron_trigger(nickname, ZoneInfo("UTC"))
    assert trigger.get_next_fire_time(None, after) == fires.replace(tzinfo=ZoneInfo("UTC"))


def test_unknown_nickname_is_refused() -> None:
    with pytest.raises(ScheduleError, match="@hourly, @daily"):
        cron_trigger("@reboot", ZoneInfo("UTC"))
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({**BASE, "job": [{"name": "a", "schedule": "@fortnightly"}]})
    assert _describe(caught.value.errors()[0]).startswith("job[0].schedule: unknown nickname")
