"""The daemon SIGTERMed while a stop its run asked for can still take influxd down.

A server that got the stop and serves on past stop_timeout is left "signalled": the daemon
watches it and starts it again should it exit late. Before: a SIGTERM then ended the daemon
with exit 0, and nobody watched; under systemd the unit read success. Now exit 1 with one line
(`daemon.exit_influxd_down`), as for a server left down.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import wait_until
from tests.faults.conftest import Ledger, run_cli
from tests.faults.test_nostop import MARKER, UNTIL_RELEASED, _gone, _release, _signalled, _under
from tests.faults.test_nostop import pidfile as pidfile  # the fixture, with its clean-up
from tests.system.test_daemon import daemon


@pytest.mark.fault(
    "no-stop", "influxd refuses to stop", "serves past stop_timeout, daemon SIGTERMed: exit 1"
)
def test_a_daemon_stopped_while_a_signalled_server_still_runs_exits_non_zero(
    tmp_path: Path, sandbox: Sandbox, ledger: Ledger, pidfile: Path
) -> None:
    config = _under(tmp_path, sandbox, pidfile, "late_exit_supervisor.py", UNTIL_RELEASED, "2s")
    text = config.read_text().replace('schedule = "0 3 * * *"', 'every = "2s"')
    config.write_text(text)
    ledger.take()
    first = int(pidfile.read_text())
    with daemon(tmp_path, config) as d:
        d.wait_event("run.finished", 120)
        d.proc.send_signal(signal.SIGTERM)
        status = d.proc.wait(120)
        assert _signalled(tmp_path) == first, d.tail()
        assert not _gone(first), "the server exited before the daemon did"
        assert status == 1, d.tail()
        [said] = [e for e in d.events() if e.get("event") == "daemon.exit_influxd_down"]
        assert "still runs" in said["error"] and "may yet go down" in said["error"], said
    # what happens next: the late exit, then the next lock-taking command starts it again
    _release(first)
    wait_until(lambda: _gone(first), 60, "the late end of its shutdown")
    assert run_cli(config, "prune", "--dry-run").returncode == 0
    assert sandbox.ping() and not (tmp_path / "state" / MARKER).exists()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and lost == []
