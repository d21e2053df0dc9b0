"""Stand-in for a unit whose stop leaves a process behind (KillMode=process, a helper the
server forked): the real influxd as its child; on SIGTERM it first starts, in a session of its
own, a process that holds HELD open (a file in a live dir), writes that process's pid to
PIDFILE, then stops its influxd and exits. Once the unit's MainPID is gone, that process still
holds the file. No real systemd can be set up here without one.

usage: leaves_a_holder.py HELD PIDFILE INFLUXD_ARGV...
"""

import os
import signal
import subprocess
import sys
import time

held, pidfile, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
child = subprocess.Popen(argv)
# the holder writes its pid once the file is open: the wrapper exits only after that
HOLDER = """
import os, sys, time
f = open(sys.argv[1], "rb")
with open(sys.argv[2] + ".partial", "w") as fh:
    fh.write(f"{os.getpid()}\\n")
os.rename(sys.argv[2] + ".partial", sys.argv[2])
time.sleep(600)
"""


def on_term(_signum: int, _frame: object) -> None:
    if os.path.exists(pidfile):  # one holder is left, by the first stop only
        child.terminate()
        return
    subprocess.Popen([sys.executable, "-c", HOLDER, held, pidfile], start_new_session=True)
    while not os.path.exists(pidfile):
        time.sleep(0.01)
    child.terminate()


signal.signal(signal.SIGTERM, on_term)
sys.exit(child.wait())
