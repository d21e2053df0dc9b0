"""The command line as people meet it, without an influxd: closed pipes, where options go, help,
exit codes in the help, several jobs without --job. Real processes, real pipes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.cli.main import command_function
from influx_backupd.cli.parser import build_parser
from tests.cli_process import run_cli_process

EXIT_USAGE, EXIT_PIPE = 2, 141


def serverless_config(
    root: Path, jobs: tuple[str, ...] = ("nightly", "hourly"), daemon: str = ""
) -> Path:
    """A config whose influxdb.conf names dirs that exist; no server runs. `daemon`: more
    [daemon] lines."""
    for name in ("meta", "data", "wal"):
        (root / "server" / name).mkdir(parents=True)
    conf = root / "influxdb.conf"
    conf.write_text(
        f'[meta]\n  dir = "{root}/server/meta"\n'
        f'[data]\n  dir = "{root}/server/data"\n  wal-dir = "{root}/server/wal"\n'
    )
    lines = [
        "[daemon]",
        f'state_dir = "{root}/state"',
        daemon,
        "[influxd]",
        f'config = "{conf}"',
        'service = "influxdb.service"',
        "[storage]",
        f'dir = "{root}/archives"',
    ]
    for name in jobs:
        lines += ["[[job]]", f'name = "{name}"', 'schedule = "0 3 1 1 *"', "keep_last = 3"]
    path = root / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run_cli_process(args, timeout=60, **kw)  # type: ignore[arg-type]


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    config = serverless_config(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before we write, as `| head` gone early
    try:
        done = subprocess.run(
            [sys.executable, "-m", "influx_backupd", "-c", str(config), "check-config"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.returncode == EXIT_PIPE
    assert done.stderr == "", "no traceback, no message"


def test_text_an_ascii_stdout_cannot_hold_is_escaped(tmp_path: Path) -> None:
    """PYTHONIOENCODING=ascii and a path with an "é": check-config printed half its plan and
    exited 78 (a UnicodeEncodeError of stdout's, read as a config error)."""
    config = serverless_config(tmp_path, jobs=("nightly",))
    config.write_text(config.read_text().replace("/archives", "/archiv\u00e9s"))
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "-c", str(config), "check-config"],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert f"archives       {tmp_path}/archiv\\xe9s\n".encode() in done.stdout, done.stdout


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["list", "--help"]])
def test_help_and_version_to_a_full_stdout_exit_1_in_one_line(args: list[str]) -> None:
    """argparse ignored the failed write and exited 0: a script saw --version succeed."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "influx_backupd", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr == (
        "influx-backupd: cannot write the output to stdout: No space left on device\n"
    )


def test_json_and_verbosity_before_or_after_the_command(tmp_path: Path) -> None:
    config = str(serverless_config(tmp_path))
    after = cli("check-config", "-c", config, "--json", "-q")
    before = cli("--json", "-q", "-c", config, "check-config")
    mixed = cli("-v", "--json", "check-config", "-c", config)
    assert after.returncode == before.returncode == mixed.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout) == json.loads(mixed.stdout)
    assert json.loads(before.stdout)["config"] == config


def test_several_jobs_need_job_or_all(tmp_path: Path) -> None:
    config = str(serverless_config(tmp_path))
    done = cli("-c", config, "backup")
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "2 jobs" in lines[0] and "(nightly, hourly)" in lines[0]
    assert "--job NAME" in lines[0] and "--all" in lines[0]
    assert not (tmp_path / "state").exists() and not (tmp_path / "archives").exists()
    both = cli("-c", config, "backup", "--job", "nightly", "--all")
    assert both.returncode == EXIT_USAGE and "not allowed with" in both.stderr


def test_top_level_help_lists_the_exit_statuses() -> None:
    done = cli("--help")
    assert done.returncode == 0
    assert "exit status:" in done.stdout
    for status in ("0 ", "1 ", "2 ", "75 ", "78 ", "141 "):
        assert f"\n  {status}" in done.stdout, status
    assert "NO_COLOR" in done.stdout


@pytest.mark.parametrize(
    "entry",
    [
        ["-m", "influx_backupd"],
        # the console script's target, as pip and the .deb write it
        ["-c", "import sys; from influx_backupd.__main__ import main; sys.exit(main())"],
    ],
    ids=["python -m", "entry point"],
)
def test_a_command_never_loads_rich(entry: list[str]) -> None:
    """structlog loads rich where it is installed (this suite's environment has it): a third of
    every command's start, for tracebacks a command never prints."""
    pytest.importorskip("rich")
    for args in (["--help"], ["status", "--config", "/nonexistent.toml"]):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", *entry, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
        assert "influx_backupd.cli.main" in imported and "structlog" in imported, args
        # (a refused `import rich` is listed too, alone: its modules are what loading costs)
        assert [m for m in imported if m.startswith("rich.")] == [], args


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_command_has_a_description_and_every_option_a_help() -> None:
    parser = build_parser()
    commands = _subcommands(parser)
    assert {"backup", "list", "restore", "verify", "prune", "status", "run"} <= set(commands)
    for name, sub in commands.items():
        assert sub.description and "\n" not in sub.description.split(".")[0], name
        assert sub.epilog and "exit status:" in sub.epilog, name
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    # the one-line summaries `influx-backupd --help` lists
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help and "\n" not in choice.help, choice.dest


def test_every_command_runs_a_function_of_its_own() -> None:
    """The parser names commands; main imports each one's function only when it runs."""
    names = set(_subcommands(build_parser()))
    functions = {name: command_function(name) for name in names}
    assert all(callable(f) for f in functions.values())
    assert len({id(f) for f in functions.values()}) == len(names)


def test_help_and_usage_mistakes_load_no_command_machinery() -> None:
    """`--help`, `--version` and a mistyped option answer without importing the jobs, the
    restores or the scheduler: their import was most of a short command's start."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['influx-backupd', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('influx_backupd.cli.main', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in sys.modules if m.split('.')[:2] in (\n"
        "    ['influx_backupd', 'cli'], ['influx_backupd', 'restore'], ['influx_backupd', 'jobs'],\n"
        "    ['influx_backupd', 'daemon'], ['influx_backupd', 'run'], ['influx_backupd', 'verify'],\n"
        ") and m not in ('influx_backupd.cli', 'influx_backupd.cli.main',\n"
        "    'influx_backupd.cli.parser', 'influx_backupd.cli.quote')]\n"
        "heavy += [m for m in ('apscheduler', 'pydantic', 'psutil') if m in sys.modules]\n"
        "print(','.join(sorted(heavy)), file=sys.stderr)\n"
    )
    for argv in (["--help"], ["--version"], ["backup", "--no-such-option"]):
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=False
        )
        assert done.stderr.splitlines()[-1] == "", (argv, done.stderr)


@pytest.mark.parametrize("command", ["backup", "verify", "restore", "list"])
def test_subcommand_help_shows_its_description(command: str) -> None:
    done = cli(command, "--help")
    assert done.returncode == 0
    description = _subcommands(build_parser())[command].description
    assert description is not None
    assert description.split(".")[0] in " ".join(done.stdout.split())


def test_check_config_warns_about_a_job_without_retention(tmp_path: Path) -> None:
    config = serverless_config(tmp_path, jobs=("kept",))
    with config.open("a") as f:
        f.write('[[job]]\nname = "hoarder"\nschedule = "@daily"\n')
    done = cli("-c", str(config), "check-config")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, done.stdout
    assert "job hoarder has no retention rule" in warnings[0]
    plan = json.loads(cli("-c", str(config), "check-config", "--json").stdout)
    assert [w for w in plan["warnings"] if "retention" in w] == [warnings[0][len("warning: ") :]]
    assert "job hoarder" in done.stdout and "cron '@daily'" in done.stdout


def test_check_config_warns_about_a_schedule_that_never_meets_its_cold_window(
    tmp_path: Path,
) -> None:
    """Every scheduled run of such a job is skipped: no record, no failure, and with no
    success yet no InfluxBackupTooOld either; said at load instead (the daemon says it too)."""
    config = serverless_config(tmp_path, jobs=("kept",))
    with config.open("a") as f:
        f.write(
            '[[job]]\nname = "noon"\nschedule = "0 12 * * *"\ncold_window = "01:00-05:00"\n'
            "keep_last = 3\n"
            '[[job]]\nname = "night"\nschedule = "0 3 * * *"\ncold_window = "01:00-05:00"\n'
            "keep_last = 3\n"
        )
    done = cli("-c", str(config), "check-config")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: job noon: schedule '0 12 * * *' never fires inside cold_window 01:00-05:00 "
        "(UTC): every scheduled cold run is skipped"
    ], done.stdout


def test_check_config_counts_notify_targets_without_their_urls(tmp_path: Path) -> None:
    config = serverless_config(tmp_path, jobs=("nightly",))
    with config.open("a") as f:
        f.write(
            '[notify]\nfailure = ["json://backup:s3cret@127.0.0.1:9/x", "ntfy://ntfy.sh/t0p1c"]\n'
        )
    done = cli("-c", str(config), "check-config")
    assert done.returncode == 0, done.stderr
    assert "  notify         failure (2)" in done.stdout.splitlines()
    plan = cli("-c", str(config), "check-config", "--json")
    assert json.loads(plan.stdout)["notify"] == {
        "start": 0,
        "success": 0,
        "failure": 2,
        "verify_failed": 0,
        "timeout": 30.0,
    }
    for text in (done.stdout, plan.stdout):
        assert "s3cret" not in text and "t0p1c" not in text


def test_check_config_warns_of_the_user_group_and_binary_later_commands_refuse(
    tmp_path: Path,
) -> None:
    """README walkthrough: a user, group or binary that does not exist passed check-config
    without a word; a restore then refused (78) and a hot backup failed."""
    config = serverless_config(tmp_path)
    plain = cli("--config", str(config), "check-config", "--json")
    assert plain.returncode == 0, plain.stderr
    assert not [w for w in json.loads(plain.stdout)["warnings"] if "(78)" in w]
    config.write_text(
        config.read_text().replace(
            "[influxd]\n",
            '[influxd]\nuser = "no-such-user-x"\ngroup = "no-such-group-x"\n'
            'binary = "/usr/bin/influxd-not-there"\n',
        )
    )
    done = cli("--config", str(config), "check-config", "--json")
    assert done.returncode == 0, done.stderr
    said = [w for w in json.loads(done.stdout)["warnings"] if "[influxd]" in w]
    assert said == [
        "[influxd] user: no such user 'no-such-user-x': a whole-server restore refuses it (78)",
        "[influxd] binary /usr/bin/influxd-not-there does not exist: hot backups fail, and "
        "restores and restore tests refuse it (78)",
    ], said
    text = cli("--config", str(config), "check-config")
    assert "no such user 'no-such-user-x'" in text.stdout + text.stderr
