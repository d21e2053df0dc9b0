"""recover_despite when the kept config (state_dir/config-in-use.toml) cannot be used: one line
naming that file (not the operator's config), or saying it names another state dir; nothing is
started. The happy path, with a real influxd and a real kill, is in tests/faults."""

from __future__ import annotations

import json
import time
from pathlib import Path

from influx_backupd.run.guard import CONFIG_IN_USE, recover_despite
from tests.unit.core.test_config import base, influxdb_conf, write

__all__ = ["influxdb_conf"]


def _broken_config(tmp_path: Path, influxdb_conf: Path) -> Path:
    """A config that fails to load (an unknown table), its state dir tmp_path/state."""
    return write(tmp_path, base(influxdb_conf, tmp_path).replace("[storage]", "[storag]"))


def _left_down(tmp_path: Path, influxdb_conf: Path) -> tuple[Path, Path]:
    """The broken config, and its state dir with a killed run's crash marker in it."""
    config = _broken_config(tmp_path, influxdb_conf)
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    marker = {"run_id": "20261203T000000Z-dead", "pid": 999_999_999, "written_at": time.time()}
    (state / "influxd-stopped.json").write_text(json.dumps(marker))
    return config, state


def test_a_kept_config_that_does_not_load_is_named_as_such(
    tmp_path: Path, influxdb_conf: Path
) -> None:
    config, state = _left_down(tmp_path, influxdb_conf)
    (state / CONFIG_IN_USE).write_text("garbage [[[")
    line = recover_despite(config, state)
    assert line is not None and line.startswith("influxd may be down: run 20261203T000000Z-dead")
    assert f"({state / CONFIG_IN_USE}: not valid TOML" in line, line
    assert f"fix {config}, then any command starts it" in line, line
    assert (state / "influxd-stopped.json").exists()


def test_a_kept_config_of_another_state_dir_is_said_and_not_acted_on(
    tmp_path: Path, influxdb_conf: Path
) -> None:
    config, state = _left_down(tmp_path, influxdb_conf)
    other = base(influxdb_conf, tmp_path).replace(str(state), str(tmp_path / "other"))
    (state / CONFIG_IN_USE).write_text(other)
    line = recover_despite(config, state)
    assert line is not None and "names another state_dir" in line, line
    assert str(tmp_path / "other") in line, line
    assert (state / "influxd-stopped.json").exists()


def test_nothing_is_said_without_a_crash_marker(tmp_path: Path, influxdb_conf: Path) -> None:
    config = _broken_config(tmp_path, influxdb_conf)
    (tmp_path / "state").mkdir()
    assert recover_despite(config, tmp_path / "state") is None
