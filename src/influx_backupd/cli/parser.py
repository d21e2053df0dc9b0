"""The argparse parser: every command with its one-line description, every option with its help,
the exit statuses in the epilog. scripts/cli_docs.py builds the man page and completions from it."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from influx_backupd import __version__
from influx_backupd.cli.quote import LIMIT, quoted, readable
from influx_backupd.core import log
from influx_backupd.core.errors import (
    EXIT_USAGE,
)
from influx_backupd.influxd.throttle import DATABASE_RATE_MIB

_EXPECTED_ONE = re.compile(r"argument (-[^:]+): expected one argument")


class PrintFailed(OSError):
    """--help or --version could not be written to stdout (`--help > /dev/full`)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (what, and where to read more), and
    an option that stores (a value, a flag) given twice is refused (_once)."""

    top = False  # the whole command line's parser: a parse starts every count afresh

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # no abbreviations (`list --js` for --json): a script's option keeps its meaning as
        # options are added (every command's parser is one of these too)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        for name, action in _ONCE.items():
            self.register("action", name, action)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.top:
            for action in _every_action(self):
                if isinstance(action, _Once):
                    action.given = False
        given = list(sys.argv[1:] if args is None else args)
        unknown = self._unknown_options(given)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return super().parse_known_args(given, namespace)

    def _unknown_options(self, args: list[str]) -> list[str]:
        """The options given to this parser that it does not know, named before anything else:
        argparse said a missing BACKUP first (`restore -x`), as if -x were not there. The
        parser with commands looks only before the command (whose own parser looks after it);
        a value after an option that takes one is argparse's to judge (`--target -x`)."""
        unknown: list[str] = []
        value_next = False
        for arg in args:
            if arg == "--":
                break
            if value_next:
                value_next = False
                continue
            found = self._parse_optional(arg)
            if found is None:  # a positional: the command, a value, BACKUP
                if self._subparsers is not None:
                    break
                continue
            # (action, option, explicit value); a list of such tuples on later Pythons
            action, *_, explicit = found[0] if isinstance(found, list) else found
            if action is None:
                unknown.append(arg)
            else:
                value_next = explicit is None and action.nargs in (None, 1)
        return unknown

    def _print_message(self, message: str, file: Any = None) -> None:
        """argparse ignores an OSError writing --help or --version to stdout, then exits 0:
        here it is PrintFailed, which cli/main.py says in one line (exit 1), as it does for
        every other command's output."""
        if not message or file is None or file is not sys.stdout:
            super()._print_message(message, file)
            return
        try:
            file.write(message)
            file.flush()
        except BrokenPipeError:
            raise  # `--help | head -1`: quiet, as every command's output
        except OSError as exc:
            raise PrintFailed(exc.errno, exc.strerror) from None

    def error(self, message: str) -> NoReturn:
        # argparse quotes the user's value whole (`invalid choice: '…10 KB…'`): cut, readable
        message = re.sub(rf"\S{{{LIMIT + 1},}}", lambda m: quoted(m.group()), readable(message))
        # `--database -dash` reads -dash as an option: a name may start with '-' (influxd
        # takes it), and only the = form passes it
        missing = _EXPECTED_ONE.fullmatch(message)
        option = max(missing.group(1).split("/"), key=len) if missing else ""
        action = self._option_string_actions.get(option)
        if action is not None and not action.choices:  # a choice never starts with '-'
            message += f"; a value that starts with '-' is given as {option}=-VALUE"
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _every_action(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _every_action(sub)


class _Once(argparse.Action):
    """An option given twice (`--mode hot --mode cold`, `--log-level` before and after the
    command, `--yes --yes`) is refused: plain argparse keeps the last one silently, and an
    operator who wrote two meant both. Counted on the action itself: an option every command
    takes is one action shared by the parser before the command and the command's own, whose
    namespaces are two (-v counts, --job appends: neither is one of these)."""

    given = False

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if option_string is not None:
            if self.given:
                parser.error(f"{'/'.join(self.option_strings)} given more than once; give it once")
            self.given = True
        super().__call__(parser, namespace, values, option_string)


class _StoreOnce(_Once, argparse._StoreAction):
    pass


class _StoreTrueOnce(_Once, argparse._StoreTrueAction):
    pass


class _StoreFalseOnce(_Once, argparse._StoreFalseAction):
    pass


class _StoreConstOnce(_Once, argparse._StoreConstAction):
    pass


_ONCE: dict[str | None, type[argparse.Action]] = {
    None: _StoreOnce,
    "store": _StoreOnce,
    "store_true": _StoreTrueOnce,
    "store_false": _StoreFalseOnce,
    "store_const": _StoreConstOnce,
}


# One list for --help's epilog and the man page's EXIT STATUS (scripts/cli_docs.py).
EXIT_STATUSES = [
    (0, "ok"),
    (
        1,
        "the backup, restore, verify, prune or import failed or was interrupted; "
        "status: a run that is gone left influxd down",
    ),
    (2, "usage error (unknown command or option, a missing or conflicting argument)"),
    (75, "busy: another backup holds the lock in state_dir, or the same influxd's"),
    (78, "configuration error (the config or influxdb.conf missing or invalid)"),
    (141, "stdout was closed early (e.g. piped into head); nothing else is affected"),
]
EPILOG = (
    "exit status:\n"
    + "".join(f"  {code:<4} {meaning}\n" for code, meaning in EXIT_STATUSES)
    + "\n-q/-v, --json and --config work before or after the command. NO_COLOR=1 turns off "
    "colours.\n"
)


def _add_common(p: argparse.ArgumentParser) -> None:
    """Options every command takes, before or after its name (SUPPRESS: an option given
    before the command is not reset by the command's own parser)."""
    p.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: $INFLUX_BACKUPD_CONFIG or /etc/influx-backupd/config.toml)",
    )
    p.add_argument(
        "--log-level",
        choices=log.LEVELS,
        default=argparse.SUPPRESS,
        help="log events at this level and above (default: the config's daemon.log_level; "
        "warning on a terminal)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the result as JSON (times in RFC 3339 UTC, and as Unix time in *_unix)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="only errors on stderr, no progress bar (not with -v)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more detail: the run's log events (-vv: debug events too) and the whole record",
    )


def _command(
    sub: Any, common: argparse.ArgumentParser, name: str, summary: str, detail: str = ""
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        parents=[common],
        help=summary,
        description=(
            summary[0].upper() + summary[1:] + "." + (f" {detail}" if detail else "")
        ).replace(" \n", "\n"),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (the Debian package builds the man page and completions from it)."""
    common = _Parser(add_help=False)
    _add_common(common)
    parser = _Parser(
        prog="influx-backupd",
        description="File-level backups of InfluxDB with measured downtime.",
        parents=[common],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.top = True
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, common, "check-config", "validate the config and print the resolved plan")

    p = _command(
        sub,
        common,
        "backup",
        "run one backup now, in the foreground",
        "With several jobs, name one with --job or run them all, one after another, with --all; "
        "--job given more than once runs those jobs, one after another, in the order given.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--job",
        metavar="NAME",
        action="append",
        help="the job to run (needed when there are several); repeat it to run several jobs, "
        "one after another, in the order given",
    )
    which.add_argument("--all", action="store_true", help="run every job, one after another")
    p.add_argument(
        "--mode", choices=("cold", "hot", "auto"), help="run in this mode instead of the job's"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what a backup would do now (mode and reasons, predicted downtime, predicted "
        "size against free space); stop nothing, write nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")

    p = _command(sub, common, "list", "list the catalog of runs, oldest first")
    p.add_argument("--job", metavar="NAME", help="only this job's runs")
    p.add_argument("--offsite", action="store_true", help="the backups in the [offsite] bucket")

    p = _command(
        sub,
        common,
        "restore",
        "restore a backup (catalog id or archive path): the whole server, one database, or into a dir",
        "\n\nrestore BACKUP --yes\n"
        "  replace influxd's data: the live data is moved aside, never deleted (the command\n"
        "  prints where); downtime is stop + rename + start.\n"
        "restore BACKUP --target DIR [--start]\n"
        "  unpack (cold) or rebuild (hot chain) into DIR, absent or empty, with a ready-to-run\n"
        "  influxdb.conf; the live server is not touched. --start serves DIR from a throwaway\n"
        "  influxd on a free port and prints its URL and how to stop it.\n"
        "restore BACKUP --database NAME [--as NEWNAME] [--replace [--yes]]\n"
        "  bring back one database (every retention policy and shard; users and grants as\n"
        "  they are) into the live server while it serves, under its name or NEWNAME. A\n"
        "  database of that name is refused unless --replace, which keeps it aside first.",
    )
    p.add_argument("backup", metavar="BACKUP", help="catalog id (see list) or archive path")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--from",
        dest="source",
        choices=("local", "offsite"),
        default="local",
        help="offsite: fetch the backup (and its chain) from the bucket first, every hash checked",
    )
    p.add_argument(
        "--target",
        metavar="DIR",
        type=_directory,
        help="restore into DIR (absent or empty) with a ready-to-run influxdb.conf instead; "
        "the live server is not touched",
    )
    p.add_argument(
        "--start",
        action="store_true",
        help="with --target: serve DIR from a throwaway influxd on a free port; print its URL",
    )
    p.add_argument(
        "--database",
        metavar="NAME",
        help="restore only database NAME into the live server, which keeps serving",
    )
    p.add_argument(
        "--as",
        dest="new_name",
        metavar="NEWNAME",
        help="with --database: restore it under this name (default: NAME)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="with --database: replace the live database of that name (kept aside first)",
    )
    p.add_argument(
        "--limit-rate",
        type=_rate_mib,
        metavar="MIB_S",
        help="with --database: send the database to the live server at most this many MiB a "
        f"second, so that its own writes wait less (default: {DATABASE_RATE_MIB:g}; 0: no limit)",
    )
    p.add_argument(
        "--accept-fewer-points",
        action="store_true",
        help="keep the restore of a cold backup when the restored server serves fewer points "
        "than counted before its stop (a delete acknowledged in between); said, not refused",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")

    p = _command(sub, common, "verify", "check backups: sha256, structure, file formats")
    p.add_argument("backup", metavar="BACKUP", nargs="?", help="catalog id or archive path")
    p.add_argument("--all", action="store_true", help="every ok backup in the catalog")
    p.add_argument("--job", metavar="NAME", help="with --all: only this job's backups")
    p.add_argument(
        "--restore-test",
        action="store_true",
        help="also restore into a scratch dir and query it with a throwaway influxd",
    )
    p.add_argument(
        "--deep",
        action="store_true",
        help="also check every TSM block's CRC32 and decode every WAL entry (without: TSM "
        "indexes and WAL entry framing only)",
    )
    p.add_argument(
        "--offsite", action="store_true", help="check the backup's objects in the bucket instead"
    )
    p.add_argument(
        "--read-data",
        metavar="PERCENT",
        type=_percent,
        help="with --offsite: download and hash this share of the objects",
    )

    p = _command(
        sub,
        common,
        "import",
        "add the backups in the storage dir to the catalog, by the records beside them",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be added, add nothing")
    p.add_argument(
        "--offsite", action="store_true", help="from the manifests in the bucket (a fresh host)"
    )

    p = _command(
        sub, common, "offsite", "off-site copies: `offsite sync` sends now what the bucket lacks"
    )
    p.add_argument("action", choices=("sync",), help="sync: send, then off-site retention")
    p.add_argument(
        "--adopt",
        action="store_true",
        help="take the prefix over from the host that wrote it (it is gone for good): its "
        "backups are then this host's, judged by its off-site retention",
    )

    p = _command(sub, common, "run", "run the daemon: every job on its schedule until stopped")

    p = _command(
        sub,
        common,
        "recover",
        "start influxd again if a killed run left it stopped (a killed restore: rolled back)",
        "Every command that takes the backup lock does this first; this one does nothing else. "
        "The unit runs it after the daemon stops (ExecStopPost=), so that a daemon killed while "
        "influxd was stopped, and then stopped itself before systemd restarted it, never leaves "
        "the server down. Also when the config no longer loads: the config the killed run used "
        "is kept in the state dir for this. Tries 3 starts, then exits 1 (the next command or "
        "the daemon tries again). A killed `restore --database` is undone (its database not in "
        "yet) or finished (in: kept, with the writes since), and said; exit 1 if the live server "
        "does not answer. What killed runs left (a restore's throwaway influxd and staging "
        "copies, an unfinished archive, a run still recorded running) is cleared and said.",
    )

    p = _command(
        sub,
        common,
        "status",
        "show the daemon, each job's last result and next run",
        "Exits 1 while a run that is gone has left influxd stopped and it does not answer "
        "(`influx-backupd recover` starts it), so that `influx-backupd status || alert` "
        "works; 0 otherwise, whatever the jobs' last results.",
    )

    p = _command(sub, common, "prune", "delete the backups the jobs' keep_* rules no longer keep")
    p.add_argument("--job", metavar="NAME", help="only this job (default: every job)")
    p.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    return parser


RATE_MIB_MIN, RATE_MIB_MAX = 0.01, 1e6  # 10 KiB/s, a TiB/s: past these, no rate is meant


def _directory(text: str) -> str:
    """A directory named on the command line: an empty one would be the current directory,
    which nobody means (`--target "$UNSET"`)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a directory (absent or empty)")
    return text


def _rate_mib(text: str) -> float:
    """MiB a second: 0 (no limit) or a finite rate a throttle can keep (nan passed as no limit;
    1e-300 overflowed the throttle's wait)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value != 0 and not RATE_MIB_MIN <= value <= RATE_MIB_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r}: MiB a second, {RATE_MIB_MIN:g} to {RATE_MIB_MAX:g}, or 0 for no limit"
        )
    return value


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage above 0, up to 100")
    return value
