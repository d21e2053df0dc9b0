"""The `influx-backupd` command (its entry point) and `python -m influx_backupd`."""

import sys

# structlog loads rich, where it is installed, for pretty tracebacks: about 0.1 CPU s of every
# command's start (a third of `--help`). A command prints no tracebacks to read that way (one
# line per error), so it never loads it; a program that imports the package keeps its own.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from influx_backupd.cli.main import main as command_line  # noqa: E402


def main() -> int:
    """The process's own command line: it ends when the command does."""
    return command_line(exiting=True)


if __name__ == "__main__":
    raise SystemExit(main())
