"""Stand-in for a supervisor that starts influxd again the moment it exits (runit, a shell
loop, a unit with Restart=always that the config does not name): the real influxd as its child,
started again whenever it exits, until the supervisor itself gets SIGTERM. Its own argv names
the config, as runuser's does, so it is among the processes running that config: the one left
running once its influxd was stopped. No real supervisor can be set up here without one.

usage: respawning_supervisor.py INFLUXD_ARGV...
"""

import signal
import subprocess
import sys

from conf_by_env import dies_with_parent

argv = sys.argv[1:]
stopping = False
child: "subprocess.Popen[bytes] | None" = None


def on_term(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True
    if child is not None:
        child.terminate()


signal.signal(signal.SIGTERM, on_term)
while not stopping:
    child = subprocess.Popen(argv, preexec_fn=dies_with_parent)
    child.wait()
sys.exit(0)
