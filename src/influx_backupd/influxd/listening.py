"""Whether a process itself listens on a TCP port: an answer on a port proves nothing about who
answers (another process may hold a port a server failed to bind, and answer /ping too).

Read from /proc directly: the sockets listening on the port (in the process's own network
namespace), then the process's descriptors, oldest first, until one is such a socket. psutil's
per-process listing resolves every descriptor and every socket of the host: twice the time,
added to the stop window at each start (bench/readiness.py, docs/performance.md)."""

from __future__ import annotations

import os

import psutil

LISTEN = "0A"  # the TCP state in /proc/net/tcp


def listens(pid: int, port: int) -> bool | None:
    """pid, or one of its children (a wrapper script's server), has a listening socket on port.
    None when that cannot be told (another user's sockets)."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except (psutil.Error, ValueError):
        return False
    for member in family:
        found = _holds_listener(member.pid, port)
        if found is None:
            return _by_psutil(family, port)
        if found:
            return True
    return False


def _holds_listener(pid: int, port: int) -> bool | None:
    """None when /proc cannot tell (not Linux, another user's process)."""
    try:
        inodes = _listening_inodes(pid, port)
        if not inodes:
            return False
        # oldest first: influxd binds its listeners before it opens its shards' files
        for fd in sorted(map(int, os.listdir(f"/proc/{pid}/fd"))):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                return True
        return False
    except PermissionError:
        return None
    except FileNotFoundError:
        return False  # the process is gone
    except (OSError, ValueError, IndexError):
        return None


def _listening_inodes(pid: int, port: int) -> set[int]:
    """The inodes of sockets listening on port, IPv4 and IPv6, in pid's network namespace."""
    inodes: set[int] = set()
    local = f":{port:04X} "  # a line's local address ends so (a busy host has many lines)
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                next(fh, None)
                for line in fh:
                    if local not in line:
                        continue
                    fields = line.split()
                    if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(fields[9]))
        except FileNotFoundError:
            if table == "tcp":
                raise
    return inodes


def _by_psutil(family: list[psutil.Process], port: int) -> bool | None:
    for member in family:
        try:
            # net_connections since psutil 6; connections before
            listing = getattr(member, "net_connections", None) or member.connections
            sockets = listing(kind="tcp")
        except psutil.AccessDenied:
            return None
        except psutil.Error:
            continue
        if any(s.status == psutil.CONN_LISTEN and s.laddr and s.laddr[1] == port for s in sockets):
            return True
    return False


def listeners(port: int) -> list[int] | None:
    """The pids listening on port in our network namespace: [] when no socket listens there,
    None when one does but whose it is cannot be told (another user's process). The sockets
    are read first (one file): the descriptors of every process only when one listens."""
    try:
        inodes = _listening_inodes(os.getpid(), port)
    except (OSError, ValueError, IndexError):
        return None
    if not inodes:
        return []
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue  # gone, or another user's
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                found.append(int(entry))
                break
    return found or None
