"""Is a pid written down earlier still the process it named?

State files (the crash marker, the daemon's and a command's published state, a scratch dir's
owner, a lock request) name a process by its identity(): pid, psutil's create_time, and
`start`, this boot's id with the process's start in clock ticks since boot. A pid alone can be
reused by another process since; pid and start cannot. One answer for every reader, so that a
damaged file (a string, NaN, a negative or 400-digit number) is "not that process" everywhere,
never a traceback.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping

import psutil

# Only for records written before `start` was: create_time is the kernel's boot time (whole
# seconds in /proc/stat, moved by every clock step and NTP slew) plus the start ticks, so the
# same process reads a second apart on either side of a boot-time step.
WALL_SLACK = 1.01


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""  # not known: _same_start falls back to the wall clock


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start) from /proc/PID/stat: start ticks never change with the wall clock."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rpartition(b")")[2].split()  # comm, in (), may hold spaces and ")"
    if len(fields) < 20:
        return None
    return fields[0].decode("ascii", "replace"), f"{_boot_id()}:{fields[19].decode('ascii')}"


def _wall_close(created: object, other: object) -> bool:
    """Two create_times of one process: equal but for a step of the kernel's boot time."""
    if not isinstance(created, int | float) or isinstance(created, bool):
        return False
    if not isinstance(other, int | float) or isinstance(other, bool):
        return False
    try:
        return math.isfinite(created) and abs(created - other) <= WALL_SLACK
    except OverflowError:  # a 400-digit number
        return False


def _same_start(start: str, created: object, now_start: str, now_created: float) -> bool:
    """Same start ticks, in the same boot. The boot ids differ in another boot, and also where
    this view of /proc/sys differs from the writer's (a sandboxed service in a container sees
    the host's id, a shell there nspawn's): then the wall clock tells, as a reboot always
    moves it by more than a second."""
    boot, _, ticks = start.rpartition(":")
    now_boot, _, now_ticks = now_start.rpartition(":")
    if not ticks or ticks != now_ticks:
        return False
    return (boot != "" and boot == now_boot) or _wall_close(created, now_created)


def identity(proc: psutil.Process | None) -> dict[str, object] | None:
    """What a state file keeps to name proc; None for none, or once it is gone."""
    if proc is None:
        return None
    try:
        named: dict[str, object] = {"pid": proc.pid, "create_time": proc.create_time()}
    except psutil.Error:
        return None
    stat = _stat(proc.pid)
    if stat is not None:
        named["start"] = stat[1]
    return named


def own_identity() -> dict[str, object]:
    """identity() of this process, which cannot be gone."""
    return identity(psutil.Process()) or {"pid": os.getpid()}


def same_process(pid: object, create_time: object, start: object = None) -> psutil.Process | None:
    """The live (not zombie) process with this pid, if it is the one identity() named."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)  # before the stat read: a pid reused in between mismatches
        if isinstance(start, str):
            stat = _stat(pid)
            if stat is None or stat[0] == "Z":
                return None
            return proc if _same_start(start, create_time, stat[1], proc.create_time()) else None
        if not _wall_close(create_time, proc.create_time()):
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.Error, ValueError, OverflowError):  # gone; or a pid no process can have
        return None
    return proc


def same_as(named: object) -> psutil.Process | None:
    """same_process for a record identity() wrote (damaged: None)."""
    if not isinstance(named, Mapping):
        return None
    return same_process(named.get("pid"), named.get("create_time"), named.get("start"))


def names_same(named: object, other: Mapping[str, object]) -> bool:
    """Two identities name the same process: a comparison of values, nothing looked up."""
    if not isinstance(named, Mapping) or named.get("pid") != other.get("pid"):
        return False
    start, now_start, now_created = named.get("start"), other.get("start"), other.get("create_time")
    if isinstance(start, str) and isinstance(now_start, str):
        if not isinstance(now_created, int | float):
            return False
        return _same_start(start, named.get("create_time"), now_start, float(now_created))
    return _wall_close(named.get("create_time"), now_created)
