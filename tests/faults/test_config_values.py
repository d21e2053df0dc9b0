"""Class 5: config values that pass check-config must work in every command.

Each hostile value below is one that cannot work (a NUL byte in a path, a URL that is not one, a
duration that is NaN, infinite or absurdly large, an empty or relative path, a `service` or
`command` that names nothing, ...): check-config refuses it in one line naming the key (78), and
so does every other command, the daemon included, before anything is created. Values at the edge
that do work are accepted, and then work against a real influxd: backup, verify, prune and the
daemon for a few seconds.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.cli_process import run_cli_process
from tests.conftest import Cli
from tests.faults.conftest import FaultResult, Ledger, one_line
from tests.system.test_daemon import daemon

EXIT_CONFIG = 78


def config_text(root: Path, conf: Path, overrides: dict[str, dict[str, str]]) -> str:
    """A config whose values are raw TOML; overrides replace (or, with None, drop) keys."""
    sections: dict[str, dict[str, str | None]] = {
        "daemon": {"state_dir": json.dumps(str(root / "state"))},
        "influxd": {
            "config": json.dumps(str(conf)),
            "command": json.dumps(["/usr/bin/influxd", "run", "-config", str(conf)]),
            "user": '"root"',
            "group": '"root"',
        },
        "storage": {"dir": json.dumps(str(root / "archives"))},
        "verify": {},
        "[job]": {"name": '"nightly"', "schedule": '"0 3 * * *"', "copy": '"direct"'},
    }
    for section, keys in overrides.items():
        sections[section].update(keys)
    text = ""
    for section, keys in sections.items():
        text += f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)
    return text


def _influxdb_conf(root: Path) -> Path:
    conf = root / "influxdb.conf"
    conf.write_text(
        'bind-address = "127.0.0.1:1"\n'
        f'[meta]\n  dir = "{root}/server/meta"\n'
        f'[data]\n  dir = "{root}/server/data"\n  wal-dir = "{root}/server/wal"\n'
        '[http]\n  bind-address = "127.0.0.1:1"\n'
    )
    return conf


NUL = '"/tmp/with\\u0000nul"'
# name → (section, key, raw TOML value, what the line must say besides the key path)
HOSTILE: dict[str, tuple[str, str, str, str]] = {
    "state_dir with a NUL byte": ("daemon", "state_dir", NUL, "NUL"),
    "storage dir with a NUL byte": ("storage", "dir", NUL, "NUL"),
    "influxdb.conf path with a NUL byte": ("influxd", "config", NUL, "NUL"),
    "pidfile with a NUL byte": ("influxd", "pidfile", NUL, "NUL"),
    "metrics_file with a NUL byte": ("daemon", "metrics_file", NUL, "NUL"),
    "command argument with a NUL byte": (
        "influxd",
        "command",
        '["/usr/bin/influxd", "run", "-config", "/x\\u0000y"]',
        "NUL",
    ),
    "hook argument with a NUL byte": ("[job]", "on_success", '["/bin/true", "a\\u0000b"]', "NUL"),
    "relative influxdb.conf": ("influxd", "config", '"influxdb.conf"', "absolute"),
    "relative pidfile": ("influxd", "pidfile", '"run/influxd.pid"', "absolute"),
    "empty pidfile": ("influxd", "pidfile", '""', "absolute"),
    "relative binary": ("influxd", "binary", '"influxd"', "absolute"),
    "empty binary": ("influxd", "binary", '""', "absolute"),
    "relative metrics_file": ("daemon", "metrics_file", '"metrics.prom"', "absolute"),
    "empty state_dir": ("daemon", "state_dir", '""', "absolute"),
    "relative storage dir": ("storage", "dir", '"backups"', "absolute"),
    "relative command": ("influxd", "command", '["bin/influxd", "run"]', "absolute"),
    "relative hook": ("[job]", "on_failure", '["./notify", "failed"]', "absolute"),
    "hook that does not exist": ("[job]", "on_failure", '["/nonexistent/notify"]', "not exist"),
    "hook that is a directory": ("[job]", "on_success", '["/etc"]', "not an executable file"),
    "jitter as long as the schedule's gap": ("[job]", "jitter", '"1d"', "shorter"),
    "empty command": ("influxd", "command", "[]", "command"),
    "service with an empty command": ("influxd", "service", '"influxdb.service"', "command"),
    "service that is an option": ("influxd", "service", '"--host=evil"', "unit"),
    "service with a space": ("influxd", "service", '"influxdb service"', "unit"),
    "url that is a word": ("influxd", "url", '"localhost"', "http://"),
    "url without a host": ("influxd", "url", '"http://"', "host"),
    "url of another scheme": ("influxd", "url", '"ftp://127.0.0.1:8086"', "http://"),
    "url with port 99999": ("influxd", "url", '"http://127.0.0.1:99999"', "port"),
    "url with a space": ("influxd", "url", '"http://local host:8086"', "host"),
    "backup_url that is a word": ("influxd", "backup_url", '"influx"', "http://"),
    "heartbeat_url without a host": ("[job]", "heartbeat_url", '"https://"', "host"),
    "heartbeat_url with a space in its path": (
        "[job]",
        "heartbeat_url",
        '"https://hc-ping.com/5ec2e7 secret"',
        "spaces",
    ),
    "backup_host without a port": ("influxd", "backup_host", '"127.0.0.1:"', "port"),
    "backup_host with a word for a port": ("influxd", "backup_host", '"127.0.0.1:rpc"', "port"),
    "backup_host with port 0": ("influxd", "backup_host", '"127.0.0.1:0"', "port"),
    "stop_timeout NaN": ("influxd", "stop_timeout", "nan", "finite"),
    "start_timeout inf": ("influxd", "start_timeout", "inf", "finite"),
    "backup_timeout 1e300": ("influxd", "backup_timeout", "1e300", "at most"),
    "every of 10**20 weeks": ("[job]", "every", '"100000000000000000000w"', "at most"),
    "every NaN": ("[job]", "every", "nan", "finite"),
    "jitter inf": ("[job]", "jitter", "inf", "finite"),
    "catch_up 1e18 seconds": ("[job]", "catch_up", "1e18", "at most"),
    "hook_timeout NaN": ("[job]", "hook_timeout", "nan", "finite"),
    "full_every inf": ("[job]", "full_every", "inf", "finite"),
    "max_downtime NaN": ("[job]", "max_downtime", "nan", "finite"),
    "verify every 1e20": ("verify", "every", "1e20", "at most"),
    "username with a colon": ("influxd", "username", '"ad:min"', "username"),
    "username with a newline": ("influxd", "username", '"ad\\nmin"', "username"),
    "empty user": ("influxd", "user", '""', "user"),
    "empty group": ("influxd", "group", '""', "group"),
}
OTHER_KEYS = {  # keys a hostile value needs beside it
    "service with an empty command": {"command": "[]"},
    "service that is an option": {"command": None},
    "service with a space": {"command": None},
    "username with a colon": {"password_file": '"/etc/hostname"'},
    "username with a newline": {"password_file": '"/etc/hostname"'},
}
# one that reads, one that takes the lock and stops influxd, the daemon: all load the config alike
COMMANDS = [("check-config",), ("backup",), ("run",)]


def _refused(
    root: Path, argv: tuple[str, ...], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run_cli_process(
        ["--config", str(root / "config.toml"), *argv], timeout=timeout, cwd=root
    )


@pytest.mark.fault("5", "a config value that cannot work")
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_value_that_cannot_work_is_refused_by_every_command_before_anything(
    tmp_path: Path, case: str, fault_result: FaultResult
) -> None:
    section, key, value, says = HOSTILE[case]
    conf = _influxdb_conf(tmp_path)
    overrides = {section: {key: value}}
    if case in OTHER_KEYS:
        overrides.setdefault("influxd", {}).update(OTHER_KEYS[case])  # type: ignore[arg-type]
    (tmp_path / "config.toml").write_text(config_text(tmp_path, conf, overrides))  # type: ignore[arg-type]
    where = key if section in ("[job]", "verify") else f"{section}.{key}"
    if case in ("empty command", "service with an empty command"):
        where = "influxd"  # the pair service/command is the section's own rule
    with ThreadPoolExecutor(len(COMMANDS)) as pool:
        results = list(pool.map(lambda argv: _refused(tmp_path, argv), COMMANDS))
    lines = set()
    for argv, done in zip(COMMANDS, results, strict=True):
        line = one_line(done.stderr)
        assert done.returncode == EXIT_CONFIG, (argv, done.returncode, line)
        assert where in line and says.lower() in line.lower(), (argv, line)
        lines.add(line)
    assert len(lines) == 1, f"every command says the same: {lines}"
    assert not (tmp_path / "state").exists() and not (tmp_path / "archives").exists()


# -- values at the edge that work ---------------------------------------------------------------

EDGE: dict[str, dict[str, dict[str, str]]] = {
    "url with a trailing slash": {"influxd": {"url": '"{url}/"'}},
    "durations as plain numbers and units": {
        "influxd": {"stop_timeout": "40", "start_timeout": '"2m"', "backup_timeout": '"1.5h"'},
        "[job]": {"jitter": '"0s"', "catch_up": "0", "full_every": '"3650d"'},
    },
    "every instead of schedule, short": {"[job]": {"schedule": None, "every": '"2s"'}},
    "backup_host and backup_url given": {
        "influxd": {"backup_host": '"{rpc}"', "backup_url": '"{url}"'}
    },
}


@pytest.mark.fault("5", "values at the edge that check-config accepts")
@pytest.mark.parametrize("case", list(EDGE))
def test_values_check_config_accepts_work_in_every_command_and_the_daemon(
    tmp_path: Path, sandbox: Sandbox, case: str, fault_result: FaultResult
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    overrides: dict[str, dict[str, str]] = {
        "influxd": {
            "command": json.dumps(sandbox.command()),
            "stop_timeout": '"40s"',
            "start_timeout": '"30s"',
        }
    }
    for section, keys in EDGE[case].items():
        filled = {
            k: v.replace("{url}", sandbox.url).replace("{rpc}", sandbox.backup_host)
            if v is not None
            else v
            for k, v in keys.items()
        }
        overrides.setdefault(section, {}).update(filled)
    config = tmp_path / "config.toml"
    config.write_text(config_text(tmp_path, sandbox.conf, overrides))  # type: ignore[arg-type]
    ledger = Ledger(sandbox, tmp_path / "archives", fault_result)
    cli = Cli(config)
    checked = cli("check-config")
    assert checked.returncode == 0, checked.stderr[-2000:]
    ledger.take()
    backup = cli("backup", "--json")
    assert backup.returncode == 0 and "Traceback" not in backup.stderr, backup.stderr[-3000:]
    for argv in [("verify", "--all"), ("prune",), ("list",), ("status",), ("import",)]:
        done = cli(*argv)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (argv, done.stderr[-3000:])
    with daemon(tmp_path, config) as d:
        # serving with these values (it would have exited before saying so), and where the
        # schedule is seconds long, through a run of its own; not a fixed wait (a loaded
        # machine takes longer, an idle one less)
        d.wait_event("daemon.ready", 120)
        if "every" in EDGE[case].get("[job]", {}):
            finished = d.wait_event("run.finished", 120)
            assert finished["record"]["status"] == "ok", finished
        assert d.stop(120) == 0, d.tail()
    assert "Traceback" not in d.out.read_text(), d.tail()
    lost_points, lost = ledger.settle()
    assert lost_points == 0 and not lost
