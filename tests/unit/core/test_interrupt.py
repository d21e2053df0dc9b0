"""Processes we start never inherit the signals we hold while influxd is being started."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
from pathlib import Path

import influx_backupd
from influx_backupd.core.interrupt import child_preexec, signals_blocked, unblock_in_child

SRC = Path(influx_backupd.__file__).parent


def _blocked(pid: int) -> set[int]:
    """The signals a process holds, from its SigBlk line in /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            mask = int(line.split()[1], 16)
            return {n for n in range(1, 65) if mask >> (n - 1) & 1}
    raise AssertionError("no SigBlk line")


def _started_inside_signals_blocked(*, reset: bool) -> set[int]:
    with signals_blocked():
        proc = subprocess.Popen(["sleep", "30"], preexec_fn=child_preexec() if reset else None)
    try:
        return _blocked(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_a_child_started_while_signals_are_held_can_still_be_stopped() -> None:
    shielded = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    # the hazard: the mask is inherited (a stand-in 0.9 influxd never stopped on SIGTERM)
    assert shielded <= _started_inside_signals_blocked(reset=False)
    assert not shielded & _started_inside_signals_blocked(reset=True)


def test_a_child_started_with_signals_let_through_takes_no_preexec() -> None:
    """A preexec_fn runs Python's at-fork hooks, where a handled signal's exception is
    dropped: given only while the signals are held, when no handler can run."""
    assert child_preexec() is None
    with signals_blocked():
        assert child_preexec() is unblock_in_child


def test_every_process_we_start_unblocks_the_held_signals() -> None:
    """Each subprocess.Popen/run in the package passes preexec_fn=child_preexec(): a new one
    that forgets would start a child unstoppable by SIGTERM when called inside signals_blocked."""
    calls = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "subprocess"
                and node.func.attr in {"Popen", "run", "call", "check_call", "check_output"}
            ):
                given = {
                    k.arg: ast.unparse(k.value) for k in node.keywords if k.arg == "preexec_fn"
                }
                calls.append((f"{path.relative_to(SRC)}:{node.lineno}", given.get("preexec_fn")))
    assert len(calls) >= 7, calls  # hooks, the tools, influxd, systemctl, the sandboxes
    assert [where for where, fn in calls if fn != "child_preexec()"] == []


# Run in a fresh interpreter: it installs handlers and signals itself. A thread that does not
# block SIGTERM takes it while the main thread holds it; Python runs the handler in the main
# thread all the same, at its next bytecode: before, that raised inside the window, even inside
# Popen's at-fork hooks, where the exception is printed and dropped.
_HELD_ACROSS_THREADS = r"""
import os, signal, subprocess, sys, threading, time
from influx_backupd.core.interrupt import Interrupted, signals_allowed, signals_blocked

def raise_it(signum, frame):
    raise Interrupted(signal.Signals(signum).name)

signal.signal(signal.SIGTERM, raise_it)
idle = threading.Event()
threading.Thread(target=idle.wait, daemon=True).start()  # SIGTERM not blocked there
events = []
try:
    with signals_blocked():
        os.kill(os.getpid(), signal.SIGTERM)  # the kernel gives it to the other thread
        time.sleep(0.3)
        # what influxd's start does inside the window: Popen with a preexec_fn runs the
        # interpreter's at-fork hooks (logging's among them)
        subprocess.run(["true"], preexec_fn=lambda: None, check=True)
        for _ in range(100_000):
            pass
        events.append("window finished")
except Interrupted as exc:
    events.append(f"raised after the window: {exc}")
try:
    with signals_blocked():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        events.append("held")
        with signals_allowed():
            events.append("not reached")
except Interrupted as exc:
    events.append(f"raised where allowed: {exc}")
print(events)
"""


def test_a_signal_another_thread_takes_waits_for_the_end_of_the_window() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HELD_ACROSS_THREADS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert done.stdout.strip() == str(
        [
            "window finished",
            "raised after the window: SIGTERM",
            "held",
            "raised where allowed: SIGTERM",
        ]
    )
