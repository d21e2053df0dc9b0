"""Is a pid written down earlier still the process it named?

State files (the crash marker, the daemon's and a command's published state, a scratch dir's
owner) name a process by pid and psutil's create_time. A pid alone can be reused by another
process since; the pair cannot. One answer for every reader, so that a damaged file (a string,
NaN, a negative or 400-digit number) is "not that process" everywhere, never a traceback.
"""

from __future__ import annotations

import math

import psutil

# Both values come from psutil on this host. Long-lived writers (the daemon) get a second: the
# kernel's boot time that psutil adds to a process's start ticks moves when the clock is stepped.
EXACT = 0.01
LOOSE = 1.0


def same_process(pid: object, create_time: object, slack: float = EXACT) -> psutil.Process | None:
    """The live (not zombie) process with this pid, if it was started at create_time."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if not isinstance(create_time, int | float) or isinstance(create_time, bool):
        return None
    if not math.isfinite(create_time):
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > slack:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.Error, ValueError, OverflowError):  # gone; or a pid no process can have
        return None
    return proc
