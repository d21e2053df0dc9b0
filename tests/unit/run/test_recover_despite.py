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
    assert f"once that and {config} load, any command starts it" in line, line
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


def test_with_a_daemon_alive_the_line_says_it_keeps_trying_not_that_a_run_was_killed(
    tmp_path: Path, influxdb_conf: Path
) -> None:
    """Before: status and list said "a run stopped it and was killed … any other command
    starts it again" while the daemon that stopped it was alive and retrying the start."""
    from influx_backupd.run.guard import left_down_despite
    from influx_backupd.store.state import DAEMON_LOCK, BackupLock

    config, state = _left_down(tmp_path, influxdb_conf)
    marker = json.loads((state / "influxd-stopped.json").read_text())
    marker.update(start_failures=4, last_start_error="influxdb.conf: bad toml")
    (state / "influxd-stopped.json").write_text(json.dumps(marker))
    with BackupLock(state / DAEMON_LOCK):  # the daemon, alive
        for act in (False, True):
            line = left_down_despite(str(config), act=act)
            assert line is not None and "was killed" not in line, line
            assert "the daemon (pid " in line and "keeps trying to start it" in line, line
            assert "4 failed starts; last: influxdb.conf: bad toml" in line, line
    assert (state / "influxd-stopped.json").exists(), "nothing acted on"
