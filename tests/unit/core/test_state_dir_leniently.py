"""Which state dir a config that does not load names: the crash marker of a killed run is
looked for there, so that influxd left down is started again despite the config's error."""

from __future__ import annotations

from pathlib import Path

import pytest

from influx_backupd.core.config import state_dir_leniently

GOOD = """[daemon]
state_dir = "/srv/ib/state"  # where the marker is

[influxd]
service = "influxdb.service"

[[job]]
name = "nightly"
schedule = "0 3 * * *"
"""


@pytest.fixture(autouse=True)
def _no_unit_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def test_a_config_that_is_no_toml_still_names_its_state_dir(tmp_path: Path) -> None:
    """Before: a half-edited file (one unclosed string) was "no TOML", and the default state
    dir was looked at: a killed run's marker in the configured one went unseen, influxd down."""
    path = tmp_path / "config.toml"
    path.write_text(GOOD.replace('name = "nightly"', 'name = "nightly'))
    assert state_dir_leniently(path) == Path("/srv/ib/state")
    path.write_text(GOOD.replace('"/srv/ib/state"', "'/srv/ib/state'").replace("[[job]]", "[[job"))
    assert state_dir_leniently(path) == Path("/srv/ib/state")


def test_only_the_daemon_sections_line_and_only_when_one_value_is_written(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    broken = 'mode = "cold\n'
    elsewhere = GOOD.replace('state_dir = "/srv/ib/state"', "log_level = 'info'")
    path.write_text(elsewhere + 'state_dir = "/elsewhere"\n' + broken)  # in [[job]]: not it
    assert state_dir_leniently(path) is None
    twice = GOOD.replace("[influxd]", 'state_dir = "/other"\n[influxd]') + broken
    path.write_text(twice)
    assert state_dir_leniently(path) is None, "two values: neither is trusted"
    path.write_text(GOOD.replace("/srv/ib/state", "relative/dir") + broken)
    assert state_dir_leniently(path) is not None and state_dir_leniently(path) != Path(
        "relative/dir"
    ), "a value load() refuses names the default dir, as before"
