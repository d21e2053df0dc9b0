"""listens(pid, port): from /proc, real processes and sockets (IPv4, IPv6, a wrapper's child)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from influx_backupd.influxd.listening import _by_psutil, listens

SERVE = """
import socket, sys, time
s = socket.socket(socket.AF_INET6 if sys.argv[1] == '6' else socket.AF_INET)
s.bind(('::1' if sys.argv[1] == '6' else '127.0.0.1', 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""


def _serving(family: str, *, wrapped: bool = False) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-c", SERVE, family]
    if wrapped:  # a shell that runs the server as its child, as a wrapper script does
        argv = ["/bin/sh", "-c", shlex.join(argv) + "; true"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


@pytest.mark.parametrize(
    ("family", "wrapped"),
    [("4", False), ("6", False), ("4", True)],
    ids=["ipv4", "ipv6", "wrapped"],
)
def test_a_process_listening_itself_is_told_from_one_that_does_not(
    family: str, wrapped: bool
) -> None:
    proc, port = _serving(family, wrapped=wrapped)
    other, _ = _serving("4")
    try:
        assert listens(proc.pid, port) is True
        assert _by_psutil([psutil.Process(proc.pid)], port) is (not wrapped), "as psutil says"
        assert listens(other.pid, port) is False, "another process answering there"
        with socket.socket() as idle:  # a port bound by us, not listening
            idle.bind(("127.0.0.1", 0))
            assert listens(proc.pid, idle.getsockname()[1]) is False
    finally:
        for p in (proc, other):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    time.sleep(0.1)
    assert listens(proc.pid, port) is False, "a process gone listens nowhere"
