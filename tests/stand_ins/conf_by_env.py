"""For the supervisor stand-ins: run the real influxd with its config named by environment.

The backup tool takes for "influxd" the innermost process whose argv names the config with
-config (a wrapper's child is the server it signals). A supervisor that plays an influxd
refusing to stop must therefore be that innermost process: its real influxd is given the
config through INFLUXDB_CONFIG_PATH (influxd 1.x reads it when -config is absent) instead.
"""

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def dies_with_parent() -> None:
    """preexec_fn: the real influxd gets SIGTERM when its supervisor dies, however it dies.
    Its argv no longer names the config, so the tests' clean-up (which finds servers by it)
    would not find it: a supervisor SIGKILLed after ignoring SIGTERM left it running."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def hidden(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv without its -config flag, and an environment naming that config."""
    out: list[str] = []
    conf = None
    it = iter(argv)
    for arg in it:
        if arg in ("-config", "--config"):
            conf = next(it)
        elif arg.startswith(("-config=", "--config=")):
            conf = arg.split("=", 1)[1]
        else:
            out.append(arg)
    env = dict(os.environ)
    if conf is not None:
        env["INFLUXDB_CONFIG_PATH"] = conf
    return out, env
