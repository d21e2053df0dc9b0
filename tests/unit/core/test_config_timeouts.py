"""Every configured timeout ends up in poll(2) (subprocess's communicate, selectors), which
takes a C int of milliseconds: past 24.8 days Python raised OverflowError mid-run. Load refuses
any past 21d in one line naming the key, and the schema says the same."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from influx_backupd.cli import main as cli
from influx_backupd.core.durations import (
    MAX_TIMEOUT,
    POSITIVE_TIMEOUT_PATTERN,
    TIMEOUT_PATTERN,
    parse_timeout,
)
from tests.unit.core.test_config import base, influxdb_conf, write

__all__ = ["influxdb_conf"]

REPO = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((REPO / "packaging" / "config.schema.json").read_text())

KEYS = [
    ("influxd_extra", "stop_timeout = {v}", "influxd.stop_timeout"),
    ("influxd_extra", "start_timeout = {v}", "influxd.start_timeout"),
    ("influxd_extra", "backup_timeout = {v}", "influxd.backup_timeout"),
    ("job", '[[job]]\nname = "n"\nschedule = "@daily"\nhook_timeout = {v}', "hook_timeout"),
    ("job", "[notify]\ntimeout = {v}", "notify.timeout"),
]


@pytest.mark.parametrize(("where", "text", "key"), KEYS, ids=[k[2] for k in KEYS])
@pytest.mark.parametrize("value", ['"21d"', '"3w"', '"25d"', '"22d"', '"3.1w"', "1814401"])
def test_a_timeout_past_21d_is_refused_in_one_line(
    tmp_path: Path,
    influxdb_conf: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    text: str,
    key: str,
    value: str,
) -> None:
    path = write(tmp_path, base(influxdb_conf, tmp_path, **{where: text.format(v=value)}))
    status = cli.main(["--config", str(path), "check-config"])
    err = capsys.readouterr().err
    if value in ('"21d"', '"3w"'):  # the largest allowed
        assert status == 0, err
        return
    assert status == 78 and err.count("\n") == 1, err
    assert key in err and "at most 21d" in err, err


def _timeout_keys(node: object) -> dict[str, object]:
    found: dict[str, object] = {}
    if isinstance(node, dict):
        for name, value in (node.get("properties") or {}).items():
            if name.endswith("timeout"):
                found[name] = value
        for value in node.values():
            found.update(_timeout_keys(value))
    elif isinstance(node, list):
        for value in node:
            found.update(_timeout_keys(value))
    return found


def test_the_schema_bounds_every_timeout() -> None:
    found = _timeout_keys(SCHEMA)
    assert set(found) >= {
        "stop_timeout",
        "start_timeout",
        "backup_timeout",
        "hook_timeout",
        "timeout",
        "connect_timeout",
    }
    for name, body in found.items():
        assert f'"maximum": {MAX_TIMEOUT}' in json.dumps(body), name


NUMBER = st.one_of(
    st.integers(0, 3_000_000_000).map(str),
    st.tuples(st.integers(0, 40), st.integers(0, 99)).map(lambda t: f"{t[0]}.{t[1]}"),
)


@settings(max_examples=400, deadline=None)
@given(NUMBER, st.sampled_from(["", "s", "ms", "m", "h", "d", "w", " d"]))
def test_the_schema_pattern_refuses_exactly_what_load_refuses(number: str, unit: str) -> None:
    text = number + unit
    try:
        seconds: float | None = parse_timeout(text)
    except ValueError:
        seconds = None
    validator = jsonschema.Draft202012Validator({"type": "string", "pattern": TIMEOUT_PATTERN})
    assert validator.is_valid(text) == (seconds is not None), text
    positive = jsonschema.Draft202012Validator(
        {"type": "string", "pattern": POSITIVE_TIMEOUT_PATTERN}
    )
    assert positive.is_valid(text) == (seconds is not None and seconds > 0), text
