"""Command line: parse, load config, call one action, print, exit with a defined status."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from influx_backupd.cli import offsite as offsite_cli
from influx_backupd.cli.commands import (
    cmd_backup,
    cmd_import,
    cmd_prune,
    cmd_restore,
    cmd_run,
    cmd_verify,
)
from influx_backupd.cli.parser import build_parser
from influx_backupd.core import log
from influx_backupd.core.config import Config, load, resolve_path
from influx_backupd.core.errors import (
    EXIT_FAILED,
    BackupdError,
)
from influx_backupd.core.interrupt import Interrupted
from influx_backupd.daemon.status import read_daemon_state
from influx_backupd.report import hooks
from influx_backupd.run.guard import left_stopped, left_stopped_line

# -- commands ------------------------------------------------------------------------------------


# -- parser --------------------------------------------------------------------------------------

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


# Commands that take the backup lock: their recovery starts an influxd left stopped.
_LOCK_TAKING = {
    cmd_backup,
    cmd_restore,
    cmd_verify,
    cmd_prune,
    cmd_import,
    offsite_cli.cmd_sync,
    offsite_cli.cmd_import,
}


def _tell_left_stopped(config: Config, func: Callable[..., int]) -> None:
    """Every command says, in one line, when a dead run left influxd stopped (the daemon says
    it in its log and status line instead)."""
    if func is cmd_run:
        return
    left = left_stopped(config)
    if left is None:
        return
    state = read_daemon_state(config)
    line = left_stopped_line(
        config,
        left,
        daemon_pid=int(state["pid"]) if state else None,
        this_command_starts=func in _LOCK_TAKING,
    )
    print(f"influx-backupd: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    # Private by default (state, staging, archives, records, logs), whatever the caller's
    # umask; what is meant to be shared (the metrics file), influxd and hooks set their own.
    hooks.CALLER_UMASK = os.umask(0o077)
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print a traceback
    except BrokenPipeError:
        # The reader went away (`list | head`): stop quietly, as coreutils do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    finally:
        os.umask(hooks.CALLER_UMASK)  # a caller in the same process (tests) gets its own back
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (("json", False), ("quiet", False), ("verbose", 0)):
        if not hasattr(args, name):
            setattr(args, name, default)
    log.configure(level=_log_level(args, "info"))
    func: Callable[[Config, argparse.Namespace], int] = args.func
    path = resolve_path(getattr(args, "config", None))
    try:
        config = load(path)
        log.configure(level=_log_level(args, config.settings.daemon.log_level))
        _tell_left_stopped(config, func)
        return func(config, args)
    except Interrupted as exc:
        print(f"influx-backupd: interrupted by {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BackupdError as exc:  # every error of ours: one line, its own exit status
        print(f"influx-backupd: {exc.line()}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
