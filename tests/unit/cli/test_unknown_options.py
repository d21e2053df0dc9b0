"""An unknown option is named first, whatever else is missing: `restore -x` said BACKUP was
required (as if -x were not there), `offsite -x` that its action was."""

from __future__ import annotations

import argparse

import pytest

from influx_backupd.cli.parser import build_parser


def _commands() -> list[str]:
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2, argv
    [line] = capsys.readouterr().err.splitlines()
    return line


@pytest.mark.parametrize("command", _commands())
@pytest.mark.parametrize("where", ["alone", "before the rest"])
def test_an_unknown_option_is_named_first(
    command: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "-x"] if where == "alone" else [command, "-x", "--json", "--bogus=1"]
    line = _refused(argv, capsys)
    unknown = "-x" if where == "alone" else "-x --bogus=1"
    assert f"influx-backupd {command}: unrecognized arguments: {unknown} (" in line, line


@pytest.mark.parametrize(
    "argv", [["-x"], ["-c", "conf", "-x"], ["--nope", "list"], ["--json", "--nope"]]
)
def test_an_unknown_option_before_the_command_is_named(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = next(a for a in argv if a in ("-x", "--nope"))
    assert f"unrecognized arguments: {unknown} (" in _refused(argv, capsys)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["restore", "--target", "-x"], "a value that starts with '-' is given as --target=-VALUE"),
        (["restore", "b", "--limit-rate", "-1"], "--limit-rate: '-1': MiB a second"),
        (["restore"], "the following arguments are required: BACKUP"),
    ],
)
def test_what_is_not_an_unknown_option_is_said_as_before(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in _refused(argv, capsys)


def test_options_values_and_combined_flags_still_parse() -> None:
    args = build_parser().parse_args(
        ["-c/etc/x.toml", "-vv", "backup", "--job", "-", "--mode=hot", "--json"]
    )
    assert (args.config, args.verbose, args.job, args.mode) == ("/etc/x.toml", 2, ["-"], "hot")


def _abbreviations() -> list[tuple[str, str]]:
    """(command, an abbreviation of each of its long options); "" for the top-level parser."""
    top = build_parser()
    [sub] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    cases = []
    for command, parser in [("", top), *sub.choices.items()]:
        known = {o for a in parser._actions for o in a.option_strings}
        for option in sorted(o for o in known if o.startswith("--")):
            if option[:-1] not in known:
                cases.append((command, option[:-1]))
    return cases


@pytest.mark.parametrize(("command", "abbreviation"), _abbreviations())
def test_an_abbreviated_option_is_refused(
    command: str, abbreviation: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse took `list --js` for --json: an option added later (--jsonl) would change
    what an old script means."""
    argv = [abbreviation, "list"] if not command else [command, abbreviation]
    line = _refused(argv, capsys)
    assert f"unrecognized arguments: {abbreviation} (" in line, line
