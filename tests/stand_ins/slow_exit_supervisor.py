"""Stand-in for an influxd whose shutdown outlasts stop_timeout: a supervisor around the real one.

On SIGTERM it stops the real influxd at once (it no longer answers /ping, as a real influxd that
closed its listeners), but the process we signalled lingers LINGER seconds before it exits, as a
real influxd busy flushing would. The real influxd cannot be slowed down on demand, hence this.

usage: slow_exit_supervisor.py PIDFILE LINGER INFLUXD_ARGV...
"""

import os
import signal
import subprocess
import sys
import time

pidfile, linger, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
child = subprocess.Popen(argv)
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
