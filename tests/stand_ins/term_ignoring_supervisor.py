"""Stand-in for an influxd that ignores SIGTERM: a supervisor that ignores it and runs the real one.

influxd (Go) re-enables SIGTERM even when started with it ignored, so a real influxd cannot be
made deaf to SIGTERM; this wrapper is what the backup tool sees as "influxd" (its pid is in the
pidfile), while the real server behind it keeps answering /ping. SIGUSR1 shuts both down, for
the test's clean-up.

usage: term_ignoring_supervisor.py PIDFILE INFLUXD_ARGV...
(The real influxd is given its config by environment: see conf_by_env.py.)
"""

import os
import signal
import subprocess
import sys

from conf_by_env import dies_with_parent, hidden

pidfile, argv = sys.argv[1], sys.argv[2:]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child_argv, child_env = hidden(argv)


def child_preexec() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    dies_with_parent()


child = subprocess.Popen(child_argv, executable=argv[0], env=child_env, preexec_fn=child_preexec)


def shutdown(_signum: int, _frame: object) -> None:
    # only signal here: the main thread's wait() below reaps the child and exits
    child.terminate()


signal.signal(signal.SIGUSR1, shutdown)
with open(pidfile, "w") as fh:
    fh.write(f"{os.getpid()}\n")
child.wait()
sys.exit(0)
