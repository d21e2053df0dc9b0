"""Every option that stores a value or a flag, of every command and those every command
takes, given twice is refused with exit 2, before or after the command: argparse kept the last
one silently (`--log-level` was, before and after the command, and every flag)."""

from __future__ import annotations

import argparse

import pytest

from influx_backupd.cli import main as cli
from influx_backupd.cli.parser import _Once, build_parser


def _value(action: argparse.Action) -> list[str]:
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(next(iter(action.choices)))]
    return ["1"]


def _cases() -> list[tuple[str, str, list[str]]]:
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if isinstance(action, _Once) and action.option_strings:
                option = max(action.option_strings, key=len)  # --config, not -c
                cases.append((name, option, [option, *_value(action)]))
    return cases


CASES = _cases()


@pytest.mark.parametrize(
    ("command", "option", "given"), CASES, ids=[f"{c} {o}" for c, o, _ in CASES]
)
def test_an_option_given_twice_is_refused(
    capsys: pytest.CaptureFixture[str], command: str, option: str, given: list[str]
) -> None:
    for argv in ([command, *given, *given], [*given, command, *given]):
        if argv[0] != command and option not in {"--config", "--log-level", "--json", "--quiet"}:
            continue  # only the common options are taken before the command
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "given more than once" in err, (argv, err)


def test_the_common_options_are_among_them() -> None:
    options = {(c, o) for c, o, _ in CASES}
    for option in ("--config", "--log-level", "--json", "--quiet"):
        assert ("backup", option) in options


def test_v_counts_and_once_is_fine(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert cli.main(["-c", "/nonexistent/x.toml", "-v", "list", "-v"]) == 78
    assert "given more than once" not in capsys.readouterr().err
