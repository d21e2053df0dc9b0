"""A run killed while influxd was stopped, and its config edited since into one that does not
load: systemd restarts the daemon into a config error (78, and RestartPreventExitStatus=78 ends
the restarts there), so recovery must not wait for a config that loads. The server is started
again with the config the killed run used (kept in the state dir), before the error's line;
`status` says influxd may be down. And `recover`, which the unit runs after every stop."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.faults.conftest import Ledger, kill_backup_mid_copy, run_cli

MARKER = "influxd-stopped.json"
FILLER = 1_000_000_000  # sparse: its copy keeps the stop window open long enough to aim at


def _killed_mid_copy(
    tmp_path: Path,
    sandbox: Sandbox,
    ledger: Ledger,
    *,
    default_state_dir: bool = False,
    daemon: dict[str, str] | None = None,
) -> Path:
    """A config whose cold backup was SIGKILLed during its copy: influxd stopped, marker left.
    default_state_dir: the config names no state_dir; $STATE_DIRECTORY gives it (the unit's).
    daemon: more [daemon] settings."""
    job = {"name": "nightly", "schedule": "0 3 * * *", "mode": "cold", "copy": "direct"}
    config = write_config(tmp_path, sandbox, jobs=[job], holes="fill", daemon=daemon)
    if default_state_dir:
        config.write_text(re.sub(r"(?m)^state_dir = .*\n", "", config.read_text()))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 5_000)
    first = run_cli(config, "backup", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    ledger.take()
    kill_backup_mid_copy(config, sandbox, FILLER)
    assert (tmp_path / "state" / MARKER).exists()
    assert not sandbox.ping()
    return config


# edits that fail the load in ways the validation never sees: before, each ended the command
# outside the handling of a config that does not load (a traceback, or exit 1) and influxd
# stayed down (the hostile-input audit)
STRANGE = {
    "a 5000-digit number": (
        lambda text, tmp: text.replace(
            'mode = "cold"', 'mode = "cold"\nkeep_last = 1' + "0" * 5000
        ),
        "a number of more than 4300 digits",
    ),
    "a storage dir name over 255 bytes": (
        lambda text, tmp: text.replace(str(tmp / "archives"), str(tmp / ("a" * 300))),
        "File name too long",
    ),
}


@pytest.mark.fault("kill", "SIGKILL mid-copy, then the config edited into one that does not load")
@pytest.mark.parametrize(
    ("command", "edit"),
    [
        ("run", "a bad value"),
        ("recover", "a bad value"),
        ("backup", "a bad value"),
        ("run", "no TOML"),
        ("recover", "a 5000-digit number"),
        ("recover", "a storage dir name over 255 bytes"),
    ],
    ids=[
        "run, a bad value",
        "recover, a bad value",
        "backup, a bad value",
        "run, no TOML",
        "recover, a 5000-digit number",
        "recover, a storage dir name over 255 bytes",
    ],
)
def test_influxd_is_started_again_with_the_config_the_killed_run_used(
    tmp_path: Path,
    sandbox: Sandbox,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    edit: str,
) -> None:
    no_toml = edit == "no TOML"
    if no_toml:  # its state_dir unknown: the default one (the unit's $STATE_DIRECTORY)
        monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    config = _killed_mid_copy(tmp_path, sandbox, ledger, default_state_dir=no_toml)
    if edit in STRANGE:
        change, said = STRANGE[edit]
        config.write_text(change(config.read_text(), tmp_path))
        broken = ("", said)
    else:
        broken = ('mode = "cold', "not valid TOML") if no_toml else ('mode = "warm"', "'warm'")
        config.write_text(config.read_text().replace('mode = "cold"', broken[0]))

    status = run_cli(config, "status")
    assert status.returncode == 78, status.stderr[-3000:]
    assert "influxd may be down" in status.stderr and "recover" in status.stderr
    assert (tmp_path / "state" / MARKER).exists()  # status acts on nothing

    done = run_cli(config, command)
    assert done.returncode == 78, done.stderr[-3000:]
    assert "started again with the config that run used" in done.stderr, done.stderr[-3000:]
    assert broken[1] in done.stderr.strip().splitlines()[-1]  # then the config's own error
    assert "Traceback" not in done.stderr
    assert sandbox.ping(), "influxd answers"
    assert not (tmp_path / "state" / MARKER).exists()
    lost_points, lost = ledger.settle()
    assert (lost_points, lost) == (0, [])


@pytest.mark.fault("kill", "SIGKILL mid-copy, then the storage dir or metrics file replaced")
@pytest.mark.parametrize("replaced", ["the storage dir by a file", "the metrics file by a FIFO"])
def test_influxd_is_started_again_whatever_became_of_paths_a_start_does_not_need(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, replaced: str
) -> None:
    """The config's text unchanged, but what it names on disk fails its load: before, the kept
    config failed the same check, and every command (recover too) left influxd down."""
    metrics = tmp_path / "metrics.prom"
    config = _killed_mid_copy(tmp_path, sandbox, ledger, daemon={"metrics_file": str(metrics)})
    if replaced.startswith("the storage dir"):
        storage = tmp_path / "archives"
        storage.rename(tmp_path / "archives.unmounted")
        storage.write_text("x")
        said = "storage.dir"
    else:
        metrics.unlink(missing_ok=True)
        os.mkfifo(metrics)
        said = "daemon.metrics_file"
    done = run_cli(config, "recover")
    assert done.returncode == 78, done.stderr[-3000:]
    assert "started again with the config that run used" in done.stderr, done.stderr[-3000:]
    assert said in done.stderr.strip().splitlines()[-1]  # then the config's own error
    assert "Traceback" not in done.stderr
    assert sandbox.ping(), "influxd answers"
    assert not (tmp_path / "state" / MARKER).exists()
    lost_points, _ = ledger.settle()  # the archives moved away with the storage dir
    assert lost_points == 0


@pytest.mark.fault("kill", "SIGKILL mid-copy, then `recover` (the unit's ExecStopPost=)")
def test_recover_starts_influxd_a_killed_run_left_stopped_and_else_does_nothing(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger
) -> None:
    began = time.time()
    config = _killed_mid_copy(tmp_path, sandbox, ledger)
    time.sleep(1.0)  # down at least this long after the kill
    done = run_cli(config, "recover")
    back = time.time()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("recovered: influxd, stopped by run "), done.stdout
    # the outage the killed run caused is measured, to the start recovery made (before: none)
    [killed] = [
        r
        for r in json.loads(run_cli(config, "list", "--json").stdout)
        if r["status"] == "interrupted"
    ]
    assert killed["extra"]["downtime_until_recovery"] is True
    assert 1.0 <= killed["downtime_s"] <= back - began, (killed["downtime_s"], back - began)
    said = done.stdout.splitlines()
    # and what else the killed run left: its record still `running`
    assert any(line.startswith("cleared: run ") for line in said), said
    assert sandbox.ping()
    again = run_cli(config, "recover", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["left_stopped"] is False
    lost_points, lost = ledger.settle()
    assert (lost_points, lost) == (0, [])


@pytest.mark.fault("kill", "SIGKILL mid-copy, then an upgrade that refuses the kept config")
@pytest.mark.parametrize("kept", ["refused by the new release", "never written (older release)"])
def test_influxd_is_started_again_when_the_kept_config_no_longer_loads_whole(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, kept: str
) -> None:
    """The upgrade audit: a run of an older release killed in its stop window, then the new
    release, which refuses a job value the old one took (keep_last past 2**63 - 1), or which
    finds no config-in-use.toml (releases before it kept none): every command, recover and
    run included, exited 78 and influxd stayed down. What a start needs of a config is
    [influxd], daemon.state_dir and storage.dir: a start reads only those now."""
    config = _killed_mid_copy(tmp_path, sandbox, ledger)
    in_use = tmp_path / "state" / "config-in-use.toml"
    refused = 'mode = "cold"\nkeep_last = 9223372036854775808'
    config.write_text(config.read_text().replace('mode = "cold"', refused))
    if kept.startswith("refused"):
        in_use.write_text(in_use.read_text().replace('mode = "cold"', refused))
        used = f"[influxd] of the config that run used ({in_use}"
    else:
        in_use.unlink()
        used = f"[influxd] of {config} ("

    done = run_cli(config, "recover")

    assert done.returncode == 78, done.stderr[-3000:]  # the config itself still does not load
    assert f"started again with {used}" in done.stderr, done.stderr[-3000:]
    assert "keep_last: must be 9223372036854775807 or less" in done.stderr.splitlines()[-1]
    assert sandbox.ping(), "influxd answers"
    assert not (tmp_path / "state" / MARKER).exists()
    lost_points, lost = ledger.settle()
    assert (lost_points, lost) == (0, [])
