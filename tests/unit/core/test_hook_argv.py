"""A hook may name a program on the PATH; influxd's command must be an absolute path."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.core.config_values import argv_problem


def test_a_hook_may_be_a_program_found_on_the_path() -> None:
    assert argv_problem(["sh", "-c", "true"], on_path=True) is None
    assert argv_problem(["/bin/sh", "-c", "true"], on_path=True) is None


def test_a_hook_not_on_the_path_or_relative_is_refused() -> None:
    missing = argv_problem(["no-such-program-here"], on_path=True)
    assert missing is not None and "not on the PATH" in missing
    relative = argv_problem(["bin/notify"], on_path=True)
    assert relative is not None and "absolute path" in relative


def test_influxds_command_must_be_absolute() -> None:
    refused = argv_problem(["influxd", "run"])
    assert refused is not None and "absolute path" in refused


def test_a_hook_by_absolute_path_must_be_there_and_executable(tmp_path: Path) -> None:
    """Found missing only when the failure it should report happens, a hook says nothing."""
    missing = argv_problem([str(tmp_path / "notify")], on_path=True)
    assert missing is not None and "does not exist" in missing
    script = tmp_path / "notify"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    plain = argv_problem([str(script)], on_path=True)
    assert plain is not None and "not an executable file" in plain
    assert argv_problem([str(tmp_path)], on_path=True) is not None  # a directory
    script.chmod(0o755)
    assert argv_problem([str(script), "failed"], on_path=True) is None
    # influxd's command is checked by Influxd.startable(), with its own message
    assert argv_problem([str(tmp_path / "influxd"), "run"]) is None
