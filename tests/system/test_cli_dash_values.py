"""A value that starts with '-' (`restore ID --database -dash`: influxd takes such a database
name) is read by argparse as an option: the one-line error says how to pass it."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.cli.parser import build_parser
from tests.cli_process import run_cli_process

EXIT_USAGE, EXIT_CONFIG = 2, 78
CHOICES = ("--mode", "--log-level", "--from")  # a few words, none starting with '-'


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli_process(args, timeout=60)


def test_restore_database_dash(tmp_path: Path) -> None:
    config = str(tmp_path / "absent.toml")
    done = _run("--config", config, "restore", "20260101T000000Z-abcd", "--database", "-dash")
    assert done.returncode == EXIT_USAGE and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "argument --database: expected one argument" in line
    assert "--database=-VALUE" in line and "Traceback" not in done.stderr

    # the form it names gets past the parser (to the missing config, status 78)
    done = _run("--config", config, "restore", "20260101T000000Z-abcd", "--database=-dash")
    assert done.returncode == EXIT_CONFIG, done.stderr


def _options_taking_one_value() -> Iterator[tuple[str, str]]:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, sub in subs.choices.items():
        for action in sub._actions:
            takes_one = action.option_strings and action.nargs is None
            if takes_one and isinstance(action, argparse._StoreAction | argparse._AppendAction):
                yield command, max(action.option_strings, key=len)


@pytest.mark.parametrize(("command", "option"), sorted(set(_options_taking_one_value())))
def test_every_option_taking_a_value_says_so(
    command: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The class: every option with one value (--as, --job, --target, ...) gets the hint; one
    of a few choices (none starts with '-') does not."""
    positional = "sync" if command == "offsite" else "X"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, positional, option, "-dash"])
    assert exit_.value.code == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert f"argument {option}" in line and "expected one argument" in line, line
    assert (f"{option}=-VALUE" in line) == (option not in CHOICES), line
