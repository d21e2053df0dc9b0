"""Class 1: influxd's systemd unit is there but systemd would refuse to start it (masked, failed
to load, RefuseManualStart=): a stop would still be obeyed and leave influxd down until someone
changes the unit. Refused (78) before anything is stopped, by check-config, backup and restore,
and by a restore's swap when the unit changed while it extracted.

systemd is not PID 1 here: the stand-in systemctl (tests/stand_ins/bin) answers the unit's
properties from its JSON, as `systemctl show` does, and refuses to start a unit that is not
loaded, as systemd does. Before: only LoadState=not-found was refused; a masked unit passed
check-config, the backup stopped influxd and every start failed ("Unit … is masked") for 633 s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import wait_until, write_config
from tests.faults.conftest import Ledger, Watched, one_line, run_cli
from tests.integration.test_service import UNIT, service

__all__ = ["service"]  # the fixture, imported for its use here

# what `systemctl show` says of a unit systemd would not start (systemd 252: its load state,
# the unit file's state, RefuseManualStart=, CanStart), and a word the refusal must name
REFUSED = {
    "masked": ({"LoadState": "masked", "UnitFileState": "masked", "CanStart": "no"}, "masked"),
    "masked at runtime, not reloaded yet": (
        {"LoadState": "loaded", "UnitFileState": "masked-runtime", "CanStart": "yes"},
        "masked",
    ),
    "bad setting": ({"LoadState": "bad-setting", "CanStart": "no"}, "bad-setting"),
    "failed to load": ({"LoadState": "error", "CanStart": "no"}, "LoadState=error"),
    "RefuseManualStart=yes": (
        {"LoadState": "loaded", "RefuseManualStart": "yes", "CanStart": "no"},
        "RefuseManualStart=yes",
    ),
    "CanStart=no": ({"LoadState": "loaded", "CanStart": "no"}, "CanStart=no"),
}


def _unit(units: Path, sandbox: Sandbox, properties: dict[str, str] | None = None) -> None:
    spec: dict[str, object] = {"command": sandbox.command()}
    if properties:
        spec["properties"] = properties
    (units / f"{UNIT}.json").write_text(json.dumps(spec))


@pytest.fixture
def units(service: Path) -> Path:
    """The sandbox's influxd run by the stand-in systemctl as UNIT."""
    return service


def _backed_up(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, str]:
    config = write_config(tmp_path, sandbox, influxd={"command": None, "service": UNIT})
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 2_000)
    done = run_cli(config, "backup", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return config, str(json.loads(done.stdout)["id"])


def _stops(units: Path) -> int:
    return (units / "calls.log").read_text().splitlines().count(f"stop {UNIT}")


@pytest.mark.fault("1", "a command that cannot start influxd again")
@pytest.mark.parametrize("state", list(REFUSED))
def test_a_unit_systemd_would_not_start_is_refused_before_anything_is_stopped(
    tmp_path: Path, sandbox: Sandbox, units: Path, ledger: Ledger, state: str
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox)
    properties, named = REFUSED[state]
    _unit(units, sandbox, properties)
    stops, pids = _stops(units), sandbox.pids()
    ledger.take()
    for args in (("check-config",), ("backup",), ("restore", backup_id, "--yes")):
        done = run_cli(config, *args)
        assert done.returncode == 78, (args, done.stdout + done.stderr[-3000:])
        line = one_line(done.stderr)
        assert UNIT in line and named in line, line
    assert _stops(units) == stops, "nothing stopped"
    assert sandbox.pids() == pids and sandbox.ping()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []


# Loaded into the restore (sitecustomize): its extraction waits until <GO> exists, so that the
# unit can be masked between the command's check and the swap's stop.
HOOK = """
import os, time
import influx_backupd.restore.cold as cold
_orig = cold.extract_safely
def _waits(*a, **k):
    open(os.environ["UR_PAUSED"], "w").close()
    while not os.path.exists(os.environ["UR_GO"]):
        time.sleep(0.01)
    return _orig(*a, **k)
cold.extract_safely = _waits
"""


@pytest.mark.fault("1", "a command that cannot start influxd again", "unit masked mid-restore")
def test_a_unit_masked_while_a_restore_extracts_is_refused_before_the_swap_stops_influxd(
    tmp_path: Path,
    sandbox: Sandbox,
    units: Path,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, backup_id = _backed_up(tmp_path, sandbox)
    sandbox.write_points("metrics", 500, start=100_000)  # newer than the backup
    stops, pids = _stops(units), sandbox.pids()
    ledger.take()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    paused, go = tmp_path / "paused", tmp_path / "go"
    monkeypatch.setenv("UR_PAUSED", str(paused))
    monkeypatch.setenv("UR_GO", str(go))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    restore = Watched(config, "restore", backup_id, "--yes")
    wait_until(paused.exists, 120, "the restore extracts")
    _unit(units, sandbox, REFUSED["masked"][0])  # after the command's own check
    go.touch()
    code, _, stderr = restore.finish()
    assert code == 78, stderr[-3000:]
    line = one_line(stderr)
    assert "masked" in line and "influxd not stopped, nothing restored" in line, line
    assert _stops(units) == stops, "nothing stopped"
    assert sandbox.pids() == pids and sandbox.count("metrics") == 2_500
    assert not (tmp_path / "state" / "influxd-stopped.json").exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
