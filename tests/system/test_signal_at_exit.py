"""A signal that lands once a command's work is done and said (its result printed, the process
ending) changes nothing: the exit status is the command's. Before, one in the interpreter's
last milliseconds ended the process by that signal (a finished restore looked killed; a
service run by systemd failed) or printed a traceback from an exit handler. Real processes,
real signals: the command sends the signal to itself from an exit handler, as late as any
other could come."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.test_cli_surface import serverless_config

HOOK = """
import atexit, os, signal, time
def _late():
    os.kill(os.getpid(), getattr(signal, os.environ["LATE_SIGNAL"]))
    time.sleep(0.2)
atexit.register(_late)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
@pytest.mark.parametrize("entry", ["python -m", "console script"])
def test_a_signal_after_the_work_is_done_leaves_the_exit_status_the_commands(
    tmp_path: Path, sig: str, entry: str
) -> None:
    config = serverless_config(tmp_path)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {
        **os.environ,
        "LATE_SIGNAL": sig,
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
    }
    start = (
        [sys.executable, "-m", "influx_backupd"]
        if entry == "python -m"
        else [
            sys.executable,
            "-c",
            "import sys; from influx_backupd.__main__ import main; sys.exit(main())",
        ]
    )
    done = subprocess.run(
        [*start, "--config", str(config), "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.strip() == "[]"
    assert "Traceback" not in done.stderr and "interrupted" not in done.stderr, done.stderr
    assert -done.returncode != getattr(signal, sig)
