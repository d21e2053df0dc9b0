"""influx-backupd run with a low open-file limit (a login shell's, `prlimit`, a unit's default
soft 1024) starts every influxd with a server's (influxd/limits.py: Debian's unit gives 65536).

Before, influxd inherited the caller's: a cold run's restarted server could not open all its
shards or accept connections (the run ok, "served less" blamed on lost data), a restore's
server never answered (rolled back, then every start of the old dirs failed the same way, for
ever: influxd left down), and a restore test failed good backups ("on the restored files").

Debian's influxd 1.6 is built with a Go (1.19+) that raises its own soft limit to the hard one
at start, so here it would mend a low soft limit itself; InfluxData's builds of 1.x with older
Go do not. The influxd here is started through a wrapper that writes down the limit it was
given, then execs the real influxd: what an older influxd would have had to live with."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.influxd.limits import INFLUXD_NOFILE
from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import started, write_config
from tests.faults.conftest import FaultResult

LOW = 64
PRLIMIT = ["prlimit", f"--nofile={LOW}:"]  # the soft limit (a unit's default is 1024)
# what influxd can be given without privilege: up to the hard limit (raising that needs
# CAP_SYS_RESOURCE, which this machine's root lacks)
SERVERS = min(INFLUXD_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])

WRAPPER = """#!{python}
import os, resource, sys
with open({given!r}, "a") as out:
    out.write("%d %s\\n" % (resource.getrlimit(resource.RLIMIT_NOFILE)[0], sys.argv[1]))
os.execv({binary!r}, [{binary!r}, *sys.argv[1:]])
"""


def _wrapped(tmp_path: Path, binary: str) -> tuple[str, Path]:
    given = tmp_path / "limits-given"
    wrapper = tmp_path / "influxd-recording-its-limit"
    wrapper.write_text(WRAPPER.format(python=sys.executable, given=str(given), binary=binary))
    wrapper.chmod(0o755)
    return str(wrapper), given


def _low(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PRLIMIT, sys.executable, "-m", "influx_backupd", "--config", str(config), *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _given(given: Path, what: str) -> list[int]:
    """The soft limits the wrapper was started with for `what` (run, version, backup...)."""
    return [
        int(n) for n, w in (line.split() for line in given.read_text().splitlines()) if w == what
    ]


@pytest.mark.fault(
    "limits",
    "a low open-file limit on the command",
    "cold backup, restore, restore test: each influxd started",
)
def test_every_influxd_started_under_a_low_open_file_limit_gets_a_servers(
    tmp_path: Path, influxd_path: str, fault_result: FaultResult
) -> None:
    wrapper, given = _wrapped(tmp_path, influxd_path)
    with started(Sandbox(tmp_path / "server", binary=wrapper)) as server:
        server.create_db("db1")
        server.write_points("db1", 3000)
        config = write_config(tmp_path, server, influxd={"binary": wrapper})
        given.unlink()  # the sandbox's own start, by the test
        backed = _low(config, "backup", "--json")
        assert backed.returncode == 0, backed.stderr[-3000:]
        record = json.loads(backed.stdout)
        assert record["status"] == "ok", record["error"]
        assert _given(given, "run") == [SERVERS], "the cold run's start of the live server"

        given.unlink()
        tested = _low(config, "verify", record["id"], "--restore-test")
        assert tested.returncode == 0, tested.stdout + tested.stderr[-3000:]
        assert _given(given, "run") == [SERVERS], "the restore test's throwaway"

        given.unlink()
        server.write_points("db1", 5, start=10_000_000)  # after the backup
        restored = _low(config, "restore", record["id"], "--yes")
        assert restored.returncode == 0, restored.stderr[-3000:]
        assert _given(given, "run") == [SERVERS], "the restored live server"
        after = server.count("db1")
        fault_result.lost(points=3000 - after)
        assert after == 3000
