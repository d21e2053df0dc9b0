"""The suite's fork server (tests/cli_process.py) against `python -m influx_backupd`: what a test
reads of a command (status, stdout, stderr) must not depend on which of the two ran it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests import cli_process
from tests.cli_process import run_cli_process
from tests.system.test_cli_surface import serverless_config


def _exec(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "influx_backupd", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,  # type: ignore[call-overload]
    )


@pytest.fixture(autouse=True)
def _forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests hold the fork server to a fresh interpreter: they fork whatever
    INFLUX_BACKUPD_TESTS_EXEC asks of the rest of the suite."""
    monkeypatch.delenv("INFLUX_BACKUPD_TESTS_EXEC", raising=False)


def _forked(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    before = cli_process._SERVER
    done = run_cli_process(argv, timeout=60, **kw)  # type: ignore[arg-type]
    server = cli_process._SERVER
    assert server is not None and (before is None or before is server), "one server per worker"
    return done


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["-c", "{config}", "list"],
        ["-c", "{config}", "list", "--json"],
        ["-c", "{config}", "check-config"],
        ["-c", "{config}", "prune", "--dry-run"],
        ["-c", "{config}", "backup"],  # 2: several jobs, no --job
        ["-c", "{config}", "nonsense"],  # 2: argparse's own exit
        ["-c", "{root}/absent.toml", "list"],  # 78
        ["-c", "{config}", "restore", "{root}/nothing.tar"],
    ],
)
def test_a_forked_command_says_and_exits_as_a_fresh_interpreter(
    tmp_path: Path, argv: list[str]
) -> None:
    config = serverless_config(tmp_path)
    argv = [a.format(config=config, root=tmp_path) for a in argv]
    fresh, forked = _exec(argv), _forked(argv)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        fresh.returncode,
        fresh.stdout,
        fresh.stderr,
    )


def test_the_environment_working_dir_and_stdin_of_the_call_reach_the_child(
    tmp_path: Path,
) -> None:
    serverless_config(tmp_path)
    env = {**os.environ, "INFLUX_BACKUPD_CONFIG": "config.toml", "NO_COLOR": "1"}
    env.pop("INFLUX_BACKUPD_TESTS_EXEC", None)
    # a relative config path, named only in the environment: found only from the call's cwd
    done = run_cli_process(["list"], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (0, "no backups yet\n"), done.stderr
    elsewhere = run_cli_process(["list"], env=env, cwd="/", stdin=subprocess.DEVNULL)
    assert elsewhere.returncode == 78 and "config.toml" in elsewhere.stderr


def test_a_call_runs_in_the_callers_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serverless_config(tmp_path)
    run_cli_process(["--version"])  # the server up, in the worker's dir
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "INFLUX_BACKUPD_CONFIG": "config.toml"}
    done = run_cli_process(["list"], env=env)
    assert (done.returncode, done.stdout) == (0, "no backups yet\n"), done.stderr


def test_a_call_that_changes_how_python_starts_gets_an_interpreter_of_its_own(
    tmp_path: Path,
) -> None:
    config = serverless_config(tmp_path)
    run_cli_process(["--version"])  # the server up
    env = {**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "ascii"}
    fresh = _exec(["-c", str(config), "list", "--json"], env=env)
    forked = run_cli_process(["-c", str(config), "list", "--json"], env=env)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        fresh.returncode,
        fresh.stdout,
        fresh.stderr,
    )


def test_a_call_past_its_timeout_is_killed_as_subprocess_run_kills(tmp_path: Path) -> None:
    config = serverless_config(tmp_path)
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        run_cli_process(["-c", str(config), "run"], timeout=3)
    assert time.monotonic() - started < 30 and raised.value.timeout == 3
    server = cli_process._SERVER
    assert server is not None
    children = psutil.Process(server.proc.pid).children()
    assert children == [], f"the killed daemon was reaped: {children}"
    # and the server serves the next call
    assert run_cli_process(["-c", str(config), "list"]).returncode == 0
