"""For the supervisor stand-ins: run the real influxd where the backup tool does not see it.

The backup tool takes for "influxd" the innermost process that runs the config: named with
-config (a wrapper's child is the server it signals), or an `influxd` whose environment names
it (INFLUXDB_CONFIG_PATH, which influxd 1.x reads when -config is absent). A supervisor that
plays an influxd refusing to stop must therefore be that innermost process: its real influxd
is given the config through INFLUXDB_CONFIG_PATH and runs under another name (argv[0]).
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
    """argv without its -config flag and under another name (Popen with executable=the
    binary: child_argv's first item is no influxd), and an environment naming that config."""
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
    return [HIDDEN_NAME, *out[1:]], env


HIDDEN_NAME = "server-behind-a-stand-in"
