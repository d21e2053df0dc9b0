"""A throwaway influxd's stop is never cut short by a signal to us: a SIGTERM that landed while
the stop looked its servers up (a restore test's cleanup, under load) raised there and left the
throwaway serving for good (found by the suite: an influxd of `verify --restore-test` alive 42
minutes after the command said "interrupted by SIGTERM")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os, signal, sys
from pathlib import Path
import psutil
from influx_backupd.core.interrupt import Interrupted, interrupt_on_signals
from influx_backupd.influxd.sandbox import Sandbox

interrupt_on_signals()
server = Sandbox(Path(sys.argv[1]), binary=sys.argv[2])
server.start()
real = psutil.process_iter
sent = []

def signalled_mid_lookup(*args, **kwargs):
    if not sent:  # the moment the race hit: SIGTERM while the stop looks for its servers
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

psutil.process_iter = signalled_mid_lookup
try:
    server.stop()
    print("stop returned")
except Interrupted:
    print("interrupted after the stop")
psutil.process_iter = real
print("left", server.pids())
"""


def test_a_sigterm_during_a_throwaway_stop_waits_for_the_stop(
    tmp_path: Path, influxd_path: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "throwaway"), influxd_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["interrupted after the stop", "left []"], done.stdout
