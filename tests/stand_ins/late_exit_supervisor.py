"""Stand-in for an influxd that still serves well after SIGTERM, then exits: a supervisor.

On SIGTERM it lets the real influxd behind it go on answering /ping for LINGER seconds, then
stops it and exits: a shutdown slower than stop_timeout that keeps the HTTP service up to the
end. The real influxd closes its listeners early and forces its own exit 30 s after SIGTERM, so
it cannot be made to do this on demand; this wrapper (its pid in the pidfile) is what the backup
tool sees as "influxd" and signals.

SIGUSR1 ends the linger at once (or, before the SIGTERM, makes it none): a test that has seen
what must happen while the server lingers releases it then, instead of waiting out a LINGER
long enough for a loaded machine.

usage: late_exit_supervisor.py PIDFILE LINGER INFLUXD_ARGV...
(The real influxd is given its config by environment: see conf_by_env.py.)
"""

import os
import signal
import subprocess
import sys
import time

from conf_by_env import dies_with_parent, hidden

pidfile, linger, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
child_argv, child_env = hidden(argv)
child = subprocess.Popen(child_argv, executable=argv[0], env=child_env, preexec_fn=dies_with_parent)
asked_at: float | None = None


def on_term(_signum: int, _frame: object) -> None:
    global asked_at
    if asked_at is None:
        asked_at = time.monotonic()


def on_release(_signum: int, _frame: object) -> None:
    global linger
    linger = 0.0


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGUSR1, on_release)
with open(pidfile, "w") as fh:
    fh.write(f"{os.getpid()}\n")
while child.poll() is None:
    if asked_at is not None and time.monotonic() - asked_at >= linger:
        child.terminate()
        child.wait()
        break
    time.sleep(0.1)
sys.exit(0)
