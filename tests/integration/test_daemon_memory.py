"""What the daemon keeps for life: loading its config does not import apprise (some 24 MiB once
its plugins are loaded): the [notify] URLs are checked by apprise in a child process, as
notifications are sent. The refusals stay as they were.

Each check runs in a fresh interpreter (this one may have imported either already), through
core.config.load: the function the daemon calls at start and at every reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config

NOTIFY = (
    '\n[notify]\nsuccess = ["ntfy://ntfy.sh/t0p1c"]\n'
    'failure = ["json://127.0.0.1:9/failure", "ntfy://ntfy.sh/t0p1c"]\n'
)

LOAD = """
import json, sys
from pathlib import Path
for name in sys.argv[2:]:
    sys.modules[name] = None  # not installed
import influx_backupd.daemon.loop  # the daemon's own imports
from influx_backupd.core.config import ConfigError, load
try:
    load(Path(sys.argv[1]))
    said = None
except ConfigError as exc:
    said = str(exc)
print(json.dumps({"said": said, "loaded": "apprise" in sys.modules}))
"""


def loaded(config: Path, *missing: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """load(config) in a fresh interpreter: what it said (None: loaded) and whether it imported
    apprise. missing: modules made absent first."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(config), *missing],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def server(tmp_path: Path, influxd_path: str) -> Sandbox:
    """A server's config for load() to read (load never talks to it: not started)."""
    sandbox = Sandbox(tmp_path / "server", binary=influxd_path)
    sandbox.write_config()
    return sandbox


def test_loading_a_config_with_notify_urls_does_not_import_apprise(
    tmp_path: Path, influxd_path: str
) -> None:
    config = write_config(tmp_path, server(tmp_path, influxd_path), extra=NOTIFY)
    assert loaded(config) == {"said": None, "loaded": False}


def test_a_url_apprise_cannot_use_is_refused_by_the_load_as_before(
    tmp_path: Path, influxd_path: str
) -> None:
    bad = '"mailto://erin:pw@127.0.0.1:1?to=x@example.com"'
    extra = NOTIFY.replace(
        '/failure", "ntfy://ntfy.sh/t0p1c"]', f'/failure", "ntfy://ntfy.sh/t0p1c", {bad}]'
    )
    config = write_config(tmp_path, server(tmp_path, influxd_path), extra=extra)
    answer = loaded(config)
    said = str(answer["said"])
    assert said.startswith(f"{config}: notify.failure[2]: apprise cannot use this 'mailto' URL")
    assert "smtp=" in said and "erin" not in said and "\n" not in said
    assert answer["loaded"] is False
    # the command's wording and status: one line, 78
    done = Cli(config)("check-config")
    assert done.returncode == 78 and done.stderr.count("\n") == 1, done.stderr
    assert "notify.failure[2]: apprise cannot use this 'mailto' URL" in done.stderr


def test_list_and_status_take_notify_urls_as_written_and_other_commands_ask_apprise(
    tmp_path: Path, influxd_path: str
) -> None:
    """list and status send no notification: their load starts no apprise child (about 1 s
    each); the same unusable URL still stops every command that may send one."""
    bad = '"mailto://erin:pw@127.0.0.1:1?to=x@example.com"'
    extra = NOTIFY.replace(
        '/failure", "ntfy://ntfy.sh/t0p1c"]', f'/failure", "ntfy://ntfy.sh/t0p1c", {bad}]'
    )
    cli = Cli(write_config(tmp_path, server(tmp_path, influxd_path), extra=extra))
    for command in (["list"], ["status"]):
        done = cli(*command)
        assert done.returncode == 0, done.stderr
    for command in (["check-config"], ["backup", "--dry-run"], ["prune", "--dry-run"]):
        done = cli(*command)
        assert done.returncode == 78, (command, done.stderr)
        assert "notify.failure[2]: apprise cannot use this 'mailto' URL" in done.stderr


def test_notify_urls_without_apprise_installed_are_refused_naming_the_extra(
    tmp_path: Path, influxd_path: str
) -> None:
    config = write_config(tmp_path, server(tmp_path, influxd_path), extra=NOTIFY)
    said = str(loaded(config, "apprise")["said"])
    assert said == (
        f"{config}: notify.success[0]: needs apprise, which is not installed: "
        "pip install 'influx-backupd[notify]'"
    )


def test_an_apprise_that_fails_to_import_is_one_line_and_the_config_error_status(
    tmp_path: Path, influxd_path: str
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "apprise.py").write_text("raise RuntimeError('half installed')\n")
    config = write_config(tmp_path, server(tmp_path, influxd_path), extra=NOTIFY)
    path = os.pathsep.join([str(broken), os.environ.get("PYTHONPATH", "")])
    said = str(loaded(config, env={"PYTHONPATH": path})["said"])
    assert said == (
        f"{config}: notify.success[0]: could not be checked: apprise failed: importing it: "
        "RuntimeError: half installed"
    )
