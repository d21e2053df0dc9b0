"""Whether a process itself listens on a TCP port: an answer on a port proves nothing about who
answers (another process may hold a port a server failed to bind, and answer /ping too)."""

from __future__ import annotations

import psutil


def listens(pid: int, port: int) -> bool | None:
    """pid, or one of its children (a wrapper script's server), has a listening socket on port.
    None when that cannot be told (another user's sockets)."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except (psutil.Error, ValueError):
        return False
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
