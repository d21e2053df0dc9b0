"""Command line: parse, load config, call one action, print, exit with a defined status."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from influx_backupd.cli.parser import PrintFailed, build_parser
from influx_backupd.cli.quote import quoted, say
from influx_backupd.core import log
from influx_backupd.core.errors import EXIT_CONFIG, EXIT_FAILED, BackupdError
from influx_backupd.core.interrupt import Interrupted, done_with_signals
from influx_backupd.core.journal import journal_available
from influx_backupd.report import hooks

if TYPE_CHECKING:
    from influx_backupd.core.config import Config

EXIT_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `seq 1 1000000 | head -1`


def _log_level(args: argparse.Namespace, configured: str) -> str:
    """--log-level, else -q/-v, else quiet on a terminal (the bar and the result say it),
    else the config's level (JSON lines for cron, scripts and the journal)."""
    if getattr(args, "log_level", None):
        return str(args.log_level)
    if args.quiet:
        return "error"
    if args.verbose >= 2:
        return "debug"
    if args.verbose == 1:
        return "info"
    if sys.stderr.isatty() and args.command != "run":
        return "warning"
    return configured


# Each command's function, imported only when it runs: `--help`, `--version` and a usage
# mistake load none of the package's machinery (the CLI's start is most of a short command).
_COMMANDS = {
    "check-config": ("commands", "cmd_check_config"),
    "backup": ("commands", "cmd_backup"),
    "list": ("commands", "cmd_list"),
    "import": ("commands", "cmd_import"),
    "offsite": ("offsite", "cmd_sync"),
    "run": ("commands", "cmd_run"),
    "status": ("commands", "cmd_status"),
    "restore": ("commands", "cmd_restore"),
    "verify": ("commands", "cmd_verify"),
    "prune": ("commands", "cmd_prune"),
    "recover": ("commands", "cmd_recover"),
}

# Commands that send no notification whatever they find: their config load does not ask
# apprise about the [notify] URLs (a child process, about 1 s); every other command's does.
_NEVER_NOTIFY = {"list", "status"}

# Commands that take the backup lock: their recovery starts an influxd left stopped.
_LOCK_TAKING = {"backup", "restore", "verify", "prune", "import", "offsite"}


def command_function(command: str) -> Callable[[Config, argparse.Namespace], int]:
    module, name = _COMMANDS[command]
    func: Callable[[Config, argparse.Namespace], int] = getattr(
        importlib.import_module(f"influx_backupd.cli.{module}"), name
    )
    return func


def _tell_left_stopped(config: Config, command: str) -> None:
    """Every command says, in one line, when a dead run left influxd stopped (the daemon says
    it in its log and status line instead)."""
    if command in ("run", "recover"):  # they say it themselves
        return
    from influx_backupd.store.state import CrashMarker

    if CrashMarker(config.state_dir).read() is None:
        return  # the common case, without loading what recovery needs (a tenth of a CPU s)
    from influx_backupd.daemon.status import read_daemon_state
    from influx_backupd.run.guard import left_stopped, left_stopped_line

    left = left_stopped(config)
    if left is None:
        return
    state = read_daemon_state(config)
    line = left_stopped_line(
        config,
        left,
        daemon_pid=int(state["pid"]) if state else None,
        this_command_starts=command in _LOCK_TAKING,
    )
    say(line)


def _left_down_despite(args: argparse.Namespace) -> None:
    """The config does not load: a run killed meanwhile may have left influxd stopped (see
    guard.left_down_despite); said before the error's line, acted on except by `status`."""
    from influx_backupd.run.guard import left_down_despite

    line = left_down_despite(getattr(args, "config", None), act=args.command != "status")
    if line is not None:
        say(line)


def _streams_open() -> None:
    """A command started with stdout or stderr closed (`>&-`, `2>&-`) writes into /dev/null
    there instead of failing on its first print: the backup's own status is what counts. A
    closed stdin (`<&-`) reads as /dev/null: no terminal, so a question is refused as usage."""
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode))  # noqa: SIM115


def _escaping(error: UnicodeError) -> tuple[str | bytes, int]:
    """A character the stream's encoding cannot hold is written escaped (\\u2026 for "…"); an
    undecodable byte of a file name (a lone surrogate) is written back as that byte."""
    try:
        return _SURROGATEESCAPE(error)
    except UnicodeError:
        return codecs.backslashreplace_errors(error)


_SURROGATEESCAPE = codecs.lookup_error("surrogateescape")
codecs.register_error("influx-backupd-escape", _escaping)


def _tolerant_streams() -> list[tuple[Any, str]]:
    """stdout and stderr write what their encoding cannot hold escaped (PYTHONIOENCODING=ascii,
    the C locale without UTF-8 mode): our own text ("…" after a sha256, a path) must not fail a
    command whose work is done. Returns each stream with its error handler before, to put back."""
    before = []
    for stream in (sys.stdout, sys.stderr):
        errors = getattr(stream, "errors", None)
        if isinstance(errors, str) and hasattr(stream, "reconfigure"):
            with contextlib.suppress(OSError, ValueError):
                stream.reconfigure(errors="influx-backupd-escape")
                before.append((stream, errors))
    return before


def _undecodable(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """The first argument that is not valid UTF-8 (undecodable bytes arrive as lone
    surrogates, which no file name, job name or query can carry on), named as the command
    line gives it (--job, BACKUP), its bytes escaped."""
    names = _argument_names(parser)
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                try:
                    item.encode()
                except UnicodeEncodeError:
                    return f"{names.get(name, name)} '{quoted(item)}'"
    return None


def _argument_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each argument's dest → how the command line names it: its longest option string
    (--job), or a positional's metavar (BACKUP), over the parser and its subcommands."""
    names: dict[str, str] = {}
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings:
                names.setdefault(action.dest, max(action.option_strings, key=len))
            else:
                names.setdefault(action.dest, str(action.metavar or action.dest.upper()))
    return names


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """The command line; exiting: the process ends with it (`influx-backupd`, `python -m`),
    and a signal once its work is done no longer changes its exit status."""
    _streams_open()
    tolerant = _tolerant_streams()
    # Private by default (state, staging, archives, records, logs), whatever the caller's
    # umask; what is meant to be shared (the metrics file), influxd and hooks set their own.
    hooks.CALLER_UMASK = os.umask(0o077)
    stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout)
    status: int | None = None
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print a traceback
        if exiting:
            done_with_signals()
        offsite_run = sys.modules.get("influx_backupd.run.offsite")  # loaded only if used
        if offsite_run is not None and offsite_run.left_behind():
            # a stalled request's thread is held: Python would join the upload's pool
            # threads at exit, as long as that request lasts; all of ours is written
            sys.stderr.flush()
            os._exit(status)
    except Interrupted:
        if status is None or not exiting:
            raise
        # a signal between the command's end and done_with_signals(): its work stands
        done_with_signals()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`list | head`): stop quietly, as coreutils do.
        _stdout_to_devnull()
        return EXIT_PIPE
    except PrintFailed as exc:  # `--help > /dev/full`
        return _stdout_failed(exc, work=False)
    except StdoutFailed as exc:  # stdout's last flush (`backup > /dev/full`)
        return _stdout_failed(exc)
    finally:
        sys.stdout = stdout
        for stream, errors in tolerant:
            with contextlib.suppress(OSError, ValueError):
                stream.reconfigure(errors=errors)
        os.umask(hooks.CALLER_UMASK)  # a caller in the same process (tests) gets its own back
    return status


def _stdout_to_devnull() -> None:
    """What stdout still holds goes nowhere: Python's own flush at exit would fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class StdoutFailed(OSError):
    """Writing the command's output to stdout failed (a closed pipe is BrokenPipeError)."""


class _Stdout:
    """sys.stdout, whose write errors say they are stdout's: an OSError alone cannot tell a
    full stdout from a full backup disk."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        try:
            return int(self._inner.write(text))
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutFailed(exc.errno, exc.strerror) from exc

    def flush(self) -> None:
        try:
            self._inner.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutFailed(exc.errno, exc.strerror) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _stdout_failed(exc: OSError, *, work: bool = True) -> int:
    """`backup > /dev/full`: "No space left on device" alone reads like the backup disk is
    full. The command's work (a backup recorded in the catalog) stands; only its output is lost.
    work=False: a command that does nothing but print (--help, --version)."""
    _stdout_to_devnull()
    stands = "; what the command did stands (`influx-backupd list` shows the runs)"
    say(f"cannot write the output to stdout: {exc.strerror or exc}{stands if work else ''}")
    return EXIT_FAILED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    bad = _undecodable(args, parser)
    if bad is not None:
        parser.error(f"argument {bad} is not valid UTF-8")
    for name, default in (("json", False), ("quiet", False), ("verbose", 0)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.quiet and args.verbose:  # before or after the command: two parsers, checked here
        parser.error("-q/--quiet and -v/--verbose: give one of them")
    # Under systemd (a timer's service, `systemd-run`) events go to the journal as fields with
    # their MESSAGE_IDs, as the daemon's do, not as JSON text lines
    journal = log.journal_socket() if journal_available() else None
    log.configure(level=_log_level(args, "info"), journal=journal)
    from influx_backupd.core.config import ConfigError, load, resolve_path

    config: Config | None = None
    try:
        try:
            config = load(
                resolve_path(getattr(args, "config", None)),
                ask_apprise=args.command not in _NEVER_NOTIFY,
            )
        except ConfigError as exc:
            _left_down_despite(args)
            if args.command != "status":
                raise
            # a daemon may run on the config it loaded before: status shows it all the same
            from influx_backupd.cli.commands import status_despite

            return status_despite(getattr(args, "config", None), exc, args)
        except Exception:
            # a mistake of ours in loading it: a server a killed run left stopped is started
            # again all the same (invariant 1), then the error goes its way
            _left_down_despite(args)
            raise
        log.configure(level=_log_level(args, config.settings.daemon.log_level), journal=journal)
        _state_dir_open_to_us(config)
        _tell_left_stopped(config, args.command)
        return command_function(args.command)(config, args)
    except Interrupted as exc:
        say(f"interrupted by {exc}")
        return EXIT_FAILED
    except BackupdError as exc:  # every error of ours: one line, its own exit status
        say(exc.line())
        return exc.exit_status
    except KeyboardInterrupt:  # Ctrl-C before a command set its handlers: as any interruption
        say("interrupted by SIGINT")
        return EXIT_FAILED
    except UnicodeEncodeError as exc:
        # a path or name the locale's encoding cannot hold (LANG=C and a config naming
        # "/var/lib/stäte"): nothing of ours can be written under that name
        print(
            f"influx-backupd: {exc.object[exc.start : exc.end]!r} cannot be written in this "
            f"locale's encoding ({exc.encoding}); run with a UTF-8 locale "
            "(LANG=C.UTF-8) or PYTHONUTF8=1",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except OSError as exc:
        # the machine said no where we did not expect it (a dir made read-only, a file where a
        # dir belongs, a full disk): what and where, in one line
        if isinstance(exc, BrokenPipeError):
            raise
        if isinstance(exc, StdoutFailed):
            return _stdout_failed(exc)
        where = f": {exc.filename}" if exc.filename else ""
        if not where and exc.errno in (errno.ENOSPC, errno.EDQUOT) and config is not None:
            where = _full_dirs(config)  # a write with no name to it: which of ours is full
        say(f"{exc.strerror or exc}{where}")
        return EXIT_FAILED


def _state_dir_open_to_us(config: Config) -> None:
    """A state_dir this user cannot look into (the service's, 0700, read without sudo) is said
    so, before anything reads it: every read there would fail as "absent", making a catalog
    look empty and a crash marker look torn (so, present)."""
    from influx_backupd.store.state import StateDirError

    try:
        os.lstat(config.state_dir / "backup.lock")
    except PermissionError as exc:
        raise StateDirError(
            f"state_dir {config.state_dir}: {exc.strerror}: this user (uid {os.getuid()}) "
            "cannot read it; run as the user the service runs as (e.g. with sudo)",
            exc,
        ) from None
    except OSError:
        pass  # absent (not made yet) or not a dir: each command says so in its own words


def _full_dirs(config: Config) -> str:
    """Which of the dirs we write is full, for a write that failed with no name to it: ours, and
    influxd's dirs (a restore builds its staging dirs beside them, on their filesystem). When
    none is full any more (the failed run's clean-up freed it), what each has free now."""
    places = [("state_dir", config.state_dir), ("storage.dir", config.storage_dir)] + [
        (f"influxd's {top} dir", path) for top, path in config.server.dirs().items()
    ]
    free_by_fs: dict[int, tuple[str, int]] = {}
    for key, path in places:
        try:
            device = os.stat(path).st_dev
            fs = os.statvfs(path)
        except OSError:
            continue
        free_by_fs.setdefault(device, (f"{key} {path}", fs.f_bavail * fs.f_frsize))
    full = [
        f"{place} has {free} bytes free" for place, free in free_by_fs.values() if free < 1 << 20
    ]
    if full:
        return f": {'; '.join(full)}"
    if not free_by_fs:
        return ""
    now = ", ".join(f"{place} {free}" for place, free in free_by_fs.values())
    return f" (bytes free now: {now})"


if __name__ == "__main__":
    raise SystemExit(main())
