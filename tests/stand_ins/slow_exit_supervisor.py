"""Stand-in for an influxd whose shutdown outlasts stop_timeout: a supervisor around the real one.

On SIGTERM it stops the real influxd at once (it no longer answers /ping, as a real influxd that
closed its listeners), but the process we signalled lingers LINGER seconds before it exits, as a
real influxd busy flushing would. The real influxd cannot be slowed down on demand, hence this.

usage: slow_exit_supervisor.py PIDFILE LINGER INFLUXD_ARGV...
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
stopping = False


def on_term(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True
    child.terminate()


signal.signal(signal.SIGTERM, on_term)
with open(pidfile, "w") as fh:
    fh.write(f"{os.getpid()}\n")
child.wait()
if stopping:
    time.sleep(linger)
sys.exit(0)
