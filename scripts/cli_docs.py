"""Write the man page and the bash and zsh completions of influx-backupd from its argparse parser.

    python3 scripts/cli_docs.py OUTDIR    # OUTDIR/influx-backupd.1, influx-backupd.bash, _influx-backupd

Everything comes from `build_parser()`, so a new command or option reaches the man page and the
completions with the next package build; only the sections argparse knows nothing about (files,
exit statuses, environment) are written here.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROG = "influx-backupd"


@dataclass
class Option:
    flags: list[str]
    help: str
    metavar: str | None  # None: a flag without a value
    choices: list[str] = field(default_factory=list)
    files: bool = False  # the value is a path


@dataclass
class Command:
    name: str
    help: str
    options: list[Option]
    positionals: list[Option]


def _parser() -> argparse.ArgumentParser:
    # the parser lives in influx_backupd.cli.parser (cli/main.py before the split)
    for name in ("influx_backupd.cli.parser", "influx_backupd.cli.main"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        build: Callable[[], argparse.ArgumentParser] | None = getattr(module, "build_parser", None)
        if build is not None:
            return build()
    raise SystemExit("cli_docs: no build_parser() in influx_backupd.cli")


def _exit_statuses() -> list[tuple[int, str]]:
    """The exit statuses --help lists, from the same list."""
    module = importlib.import_module("influx_backupd.cli.parser")
    statuses: list[tuple[int, str]] = module.EXIT_STATUSES
    return statuses


def _option(action: argparse.Action) -> Option | None:
    if isinstance(action, argparse._HelpAction | argparse._VersionAction):
        return Option(list(action.option_strings), action.help or "", None)
    if action.help == argparse.SUPPRESS:
        return None
    takes_value = action.nargs != 0
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if takes_value and metavar is None:
        metavar = action.dest.upper() if action.option_strings else action.dest
    help_text = action.help or ""
    if action.choices and "one of" not in help_text:
        help_text = (
            (help_text + "; " if help_text else "")
            + "one of: "
            + ", ".join(map(str, action.choices))
        )
    return Option(
        list(action.option_strings),
        help_text,
        metavar if takes_value else None,
        [str(c) for c in action.choices or ()],
        files=action.dest in ("config", "backup"),
    )


def describe(
    parser: argparse.ArgumentParser,
) -> tuple[list[Option], list[Command]]:
    """The top-level options and every command, with their options, in the parser's order."""
    top: list[Option] = []
    commands: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                opts, pos = [], []
                for a in sub._actions:
                    o = _option(a)
                    if o is not None:
                        (opts if a.option_strings else pos).append(o)
                commands.append(Command(name, helps.get(name, ""), opts, pos))
        else:
            o = _option(action)
            if o is not None:
                top.append(o)
    return top, commands


# -- man page ----------------------------------------------------------------------------------


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _flags(o: Option) -> str:
    names = ", ".join(f"\\fB{_roff(f)}\\fR" for f in o.flags)
    return names + (f" \\fI{_roff(o.metavar)}\\fR" if o.metavar else "")


def man(parser: argparse.ArgumentParser, version: str) -> str:
    top, commands = describe(parser)
    date = datetime.date.today().isoformat()
    out = [
        f'.TH INFLUX\\-BACKUPD 1 "{date}" "{PROG} {version}" "User Commands"',
        ".SH NAME",
        f"{_roff(PROG)} \\- {_roff(parser.description or '')}",
        ".SH SYNOPSIS",
        f"\\fB{_roff(PROG)}\\fR [\\fB\\-\\-config\\fR \\fIFILE\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        "Scheduled file\\-level backups of an InfluxDB server: cold (influxd stopped for the copy,",
        "every phase of the downtime measured) or hot (\\fBinfluxd backup\\fR while it serves),",
        "checked, kept by a retention policy, restored by renaming directories.",
        "\\fBinflux\\-backupd run\\fR is the daemon that the systemd unit",
        "\\fBinflux\\-backupd.service\\fR starts.",
        ".SH OPTIONS",
        "These are accepted before or after the command.",
    ]
    for o in top:
        out += [".TP", _flags(o), _roff(o.help)]
    out.append(".SH COMMANDS")
    for c in commands:
        args = " ".join(f"[\\fI{_roff(p.metavar or '')}\\fR]" for p in c.positionals)
        out += [".SS " + f"\\fB{_roff(c.name)}\\fR {args}".rstrip(), _roff(c.help)]
        for o in c.options:
            if o.flags[0] in ("-h", "--help") or any(o.flags == t.flags for t in top):
                continue
            out += [".TP", _flags(o), _roff(o.help)]
    out += [
        ".SH FILES",
        ".TP",
        "\\fI/etc/influx\\-backupd/config.toml\\fR",
        "The configuration (TOML); every key is documented in it.",
        ".TP",
        "\\fI/etc/influx\\-backupd/NAME.toml\\fR",
        "The configuration of the template unit's instance \\fBinflux\\-backupd@NAME.service\\fR.",
        ".TP",
        "\\fI/var/lib/influx\\-backupd\\fR",
        "State: the catalog of runs, the backup lock, the crash marker.",
        ".TP",
        "\\fI/var/backups/influxdb\\fR",
        "Archives (the default storage dir).",
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBINFLUX_BACKUPD_CONFIG\\fR",
        "The configuration file when \\fB\\-\\-config\\fR is not given.",
        ".TP",
        "\\fBSTATE_DIRECTORY\\fR",
        "Set by systemd (\\fBStateDirectory=\\fR): the state dir when the configuration sets no",
        "\\fBstate_dir\\fR.",
        ".TP",
        "\\fBNO_COLOR\\fR",
        "Set (to anything but the empty string): no colours, even on a terminal.",
        ".SH EXIT STATUS",
        *[f".TP\n{code}\n{_roff(meaning)}" for code, meaning in _exit_statuses()],
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBinfluxd\\fR(1),",
        "\\fI/usr/share/doc/influx\\-backupd/README.md.gz\\fR",
    ]
    return "\n".join(out) + "\n"


# -- completions -------------------------------------------------------------------------------


def bash(parser: argparse.ArgumentParser) -> str:
    top, commands = describe(parser)
    value_opts = sorted(
        {f for c in commands for o in c.options + top if o.metavar for f in o.flags}
    )
    lines = [
        f"# bash completion for {PROG}; generated from its argparse parser by scripts/cli_docs.py",
        "_influx_backupd() {",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
        f"            {'|'.join(value_opts)}) ((i++)) ;;",
        "            -*) ;;",
        "            *) cmd=${COMP_WORDS[i]}; break ;;",
        "        esac",
        "    done",
        '    case "$prev" in',
    ]
    seen: set[str] = set()
    for o in top + [o for c in commands for o in c.options]:
        key = "|".join(o.flags)
        if not o.metavar or key in seen:
            continue
        seen.add(key)
        if o.choices:
            words = " ".join(o.choices)
            lines.append(f'        {key}) COMPREPLY=($(compgen -W "{words}" -- "$cur")); return ;;')
        elif o.files:
            lines.append(f'        {key}) COMPREPLY=($(compgen -f -- "$cur")); return ;;')
        else:
            lines.append(f"        {key}) return ;;")
    lines += ["    esac", '    case "$cmd" in']
    top_flags = " ".join(f for o in top for f in o.flags)
    for c in commands:
        flags = " ".join(f for o in c.options for f in o.flags)
        files = any(p.files for p in c.positionals)
        lines.append(f"        {c.name})")
        lines.append(
            f'            if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "{flags}" -- "$cur"))'
        )
        if files:
            lines.append('            else COMPREPLY=($(compgen -f -- "$cur"))')
        lines.append("            fi ;;")
    names = " ".join(c.name for c in commands)
    lines += [
        "        *)",
        f'            if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "{top_flags}" -- "$cur"))',
        f'            else COMPREPLY=($(compgen -W "{names}" -- "$cur"))',
        "            fi ;;",
        "    esac",
        "}",
        f"complete -F _influx_backupd {PROG}",
    ]
    return "\n".join(lines) + "\n"


def _zsh_spec(o: Option) -> str:
    text = o.help.replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")
    if o.metavar:
        action = "(" + " ".join(o.choices) + ")" if o.choices else ("_files" if o.files else " ")
        value = f":{o.metavar.lower()}:{action}"
    else:
        value = ""
    if len(o.flags) > 1:
        group = " ".join(o.flags)
        names = "{" + ",".join(o.flags) + "}"
        return f"'({group})'{names}'[{text}]{value}'"
    return f"'{o.flags[0]}[{text}]{value}'"


def zsh(parser: argparse.ArgumentParser) -> str:
    top, commands = describe(parser)
    lines = [
        f"#compdef {PROG}",
        "# zsh completion; generated from the argparse parser by scripts/cli_docs.py",
        "_influx_backupd() {",
        "    local curcontext=$curcontext state line",
        "    local -a commands",
        "    commands=(",
    ]
    for c in commands:
        text = c.help.replace("'", "'\\''").replace(":", "\\:")
        lines.append(f"        '{c.name}:{text}'")
    lines += ["    )", "    _arguments -C \\"]
    lines += [f"        {_zsh_spec(o)} \\" for o in top]
    lines += [
        "        '1:command:->command' \\",
        "        '*::arg:->args'",
        "    case $state in",
        "        command) _describe -t commands 'influx-backupd command' commands ;;",
        "        args)",
        "            case $line[1] in",
    ]
    for c in commands:
        specs = [_zsh_spec(o) for o in c.options]
        specs += [f"'::{p.metavar}:{'_files' if p.files else ' '}'" for p in c.positionals]
        lines.append(f"                {c.name}) _arguments \\")
        lines += [f"                    {s} \\" for s in specs[:-1]]
        lines.append(f"                    {specs[-1]} ;;")
    lines += ["            esac ;;", "    esac", "}", '_influx_backupd "$@"']
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):  # an option is not an OUTDIR to write into
        wanted = argv in (["-h"], ["--help"])
        print(
            __doc__ if wanted else "usage: cli_docs.py OUTDIR",
            file=sys.stdout if wanted else sys.stderr,
        )
        return 0 if wanted else 2
    from influx_backupd import __version__

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    parser = _parser()
    (out / f"{PROG}.1").write_text(man(parser, __version__))
    (out / f"{PROG}.bash").write_text(bash(parser))
    (out / f"_{PROG}").write_text(zsh(parser))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
