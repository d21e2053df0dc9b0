"""scripts/cli_docs.py: the man page and the completions follow the real argparse parser."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from influx_backupd.cli.parser import build_parser

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "cli_docs.py"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli")
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, timeout=60)
    return out


def commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def complete(out: Path, *words: str) -> list[str]:
    """What bash completes for the last of words, with the generated function."""
    line = " ".join(words)
    script = (
        f"source {out / 'influx-backupd.bash'}; COMP_WORDS=(influx-backupd {line}); "
        f"COMP_CWORD={len(words)}; _influx_backupd; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    return result.stdout.split()


def test_man_page_has_every_command_and_option(out: Path) -> None:
    man = (out / "influx-backupd.1").read_text()
    assert man.startswith(".TH INFLUX\\-BACKUPD 1 ")
    names = commands()
    assert {"backup", "restore", "run", "check-config"} <= set(names)
    for name in names:
        assert f".SS \\fB{name.replace('-', chr(92) + '-')}\\fR" in man
    assert "\\fB\\-\\-restore\\-test\\fR" in man
    if shutil.which("groff"):
        result = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(out / "influx-backupd.1")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stderr) == (0, "")


def test_bash_completion_completes_commands_options_and_choices(out: Path) -> None:
    assert complete(out, "ba") == ["backup"]
    assert set(complete(out, "")) == set(commands())
    assert "--restore-test" in complete(out, "verify", "--")
    assert complete(out, "backup", "--mode", "") == ["cold", "hot", "auto"]
    # the value of --config is not taken for the command
    assert complete(out, "--config", "/etc/x.toml", "pru") == ["prune"]


def test_zsh_completion_names_every_command(out: Path) -> None:
    text = (out / "_influx-backupd").read_text()
    assert text.startswith("#compdef influx-backupd\n")
    for name in commands():
        assert f"\n                {name}) _arguments" in text
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-n", str(out / "_influx-backupd")], check=True, timeout=30)


def test_man_page_lists_the_exit_statuses_help_lists(out: Path) -> None:
    """One list for both (it lacked 141, and said less of 75, before)."""
    man = (out / "influx-backupd.1").read_text()
    section = man.split(".SH EXIT STATUS", 1)[1].split(".SH", 1)[0]
    epilog = build_parser().epilog or ""
    codes = [line.split()[0] for line in epilog.splitlines() if line[:2] == "  " and line.split()]
    assert codes == ["0", "1", "2", "75", "78", "141"]
    for code in codes:
        assert f".TP\n{code}\n" in section, code
    assert "NO_COLOR" in man.split(".SH ENVIRONMENT", 1)[1]


def test_an_option_is_not_taken_for_the_output_dir(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0 and "OUTDIR" in done.stdout
    assert list(tmp_path.iterdir()) == [], "no dir named --help written"
