"""Influxd.start against a real influxd that exits before it answers: the error says why."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.influxd.server import Influxd, StartFailed
from tests.conftest import started, write_config


def test_a_start_that_exits_before_answering_quotes_the_last_line_of_its_log(
    tmp_path: Path, influxd_path: str
) -> None:
    """Its HTTP port taken, influxd exits at once. Before: "influxd exited with status 1
    before answering …/ping", the reason only in the log."""
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    server.write_config()
    config = load(write_config(tmp_path, server, influxd={"start_timeout": "60s"}))
    log = tmp_path / "influxd.log"
    log.write_text("an earlier start's last line\n")
    with socket.socket() as taken:  # listening, never answering HTTP
        taken.bind(("127.0.0.1", server.http_port))
        taken.listen()
        with pytest.raises(StartFailed) as failed:
            Influxd(config).start(log_path=log)
    message = str(failed.value)
    assert "exited with status 1 before answering" in message, message
    assert f"its log {log} ends: " in message, message
    assert "address already in use" in message.split(" ends: ", 1)[1], message
    assert "\n" not in message and "earlier start" not in message


DAEMONIZING = """#!/bin/sh
# an init script's start: influxd in the background, the script returns 0 at once
{binary} "$@" >/dev/null 2>&1 &
exit 0
"""


def test_a_command_that_puts_influxd_in_the_background_and_returns_0_is_a_start(
    tmp_path: Path, influxd_path: str
) -> None:
    """Audit: its exit 0 was taken for a failed start: a cold run raised the left-down alarm
    (failure notifications, the heartbeat's /fail) and waited a backoff on every run."""
    import json

    from tests.conftest import Cli, log_events

    wrapper = tmp_path / "influxd-start"
    wrapper.write_text(DAEMONIZING.format(binary=influxd_path))
    wrapper.chmod(0o755)
    with started(Sandbox(tmp_path / "server", binary=influxd_path)) as server:
        server.create_db("db1")
        server.write_points("db1", 500)
        command = [str(wrapper), "run", "-config", str(server.conf)]
        pidfile = tmp_path / "influxd.pid"
        config = write_config(
            tmp_path, server, influxd={"command": command, "pidfile": str(pidfile)}
        )
        done = Cli(config)("backup", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        record = json.loads(done.stdout)
        assert record["status"] == "ok", record["error"]
        assert not log_events(done.stderr, "influxd.start_failed"), done.stderr[-3000:]
        assert log_events(done.stderr, "influxd.command_detached")
        assert server.count("db1") == 500
        [pid] = server.pids()
        assert int(pidfile.read_text()) == pid, "the server, not the command that exited"
        # the one running now is the one a later stop finds: stopped and started again, ok
        again = Cli(config).json("backup")
        assert again["status"] == "ok", again["error"]
        assert server.pids() != [pid]


def test_a_command_that_returns_0_and_leaves_nothing_running_fails_the_start(
    tmp_path: Path, influxd_path: str
) -> None:
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    server.write_config()
    config = load(
        write_config(
            tmp_path,
            server,
            influxd={"command": ["/bin/true", "-config", str(server.conf)], "start_timeout": "30s"},
        )
    )
    with pytest.raises(StartFailed) as failed:
        Influxd(config).start()
    assert "exited with status 0 before answering" in str(failed.value)


def test_an_influxd_started_without_config_flag_is_found_by_what_it_reads(
    tmp_path: Path, influxd_path: str
) -> None:
    """`influxd` with INFLUXDB_CONFIG_PATH (the official image's and a hand start's way) names
    no -config. Audit: such a server was "not running": a cold backup refused, and recovery
    after a killed run started a second influxd, which failed on the taken port, for ever."""
    import json
    import subprocess
    import time

    from tests.conftest import Cli

    server = Sandbox(tmp_path / "server", binary=influxd_path)
    server.write_config()
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "INFLUXDB_CONFIG_PATH": str(server.conf)}
    hand = subprocess.Popen(
        [influxd_path], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not server.ping() and time.monotonic() < deadline:
            time.sleep(0.1)
        server.create_db("db1")
        server.write_points("db1", 300)
        config_path = write_config(tmp_path, server)
        influxd = Influxd(load(config_path))
        found = influxd.locate()
        assert found is not None and found.pid == hand.pid
        assert influxd.start_until_up(attempts=1) == 1, "running: recovery starts nothing"
        assert [p for p in server.pids() if p != hand.pid] == []

        done = Cli(config_path)("backup", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        record = json.loads(done.stdout)
        assert record["status"] == "ok", record["error"]
        assert hand.wait(timeout=30) == 0, "stopped by the run (SIGTERM: a clean exit)"
        assert server.count("db1") == 300  # started again, by the configured command
    finally:
        hand.kill()
        hand.wait()
        server.stop()

    # never another tool of influxd's, nor an influxd given -config (read by its flag)
    from influx_backupd.influxd.server import implicit_conf

    class Proc:
        pid = os.getpid()  # its root: ours

        def environ(self) -> dict[str, str]:
            return {"INFLUXDB_CONFIG_PATH": str(server.conf)}

        def cwd(self) -> str:
            return "/"

    ours = os.stat(server.conf)
    assert implicit_conf(["influxd", "backup", "-portable", "x"], Proc()) is None  # type: ignore[arg-type]
    assert implicit_conf(["influxd", "-config", "/other.conf"], Proc()) is None  # type: ignore[arg-type]
    assert implicit_conf(["/usr/bin/influxd", "run"], Proc()) == (ours.st_dev, ours.st_ino)  # type: ignore[arg-type]


@pytest.mark.parametrize("named_by", ["INFLUXDB_CONFIG_PATH", "-config"])
def test_an_influxd_in_another_mount_namespace_reading_a_file_of_our_confs_name_is_not_ours(
    tmp_path: Path, influxd_path: str, named_by: str
) -> None:
    """Review: a container's influxd (the official image: no -config, its own
    /etc/influxdb/influxdb.conf) was matched by the path alone, looked up in our filesystem:
    a cold backup stopped ours, then waited on the other for ever (ours left down); named with
    -config, the same before. Here the other's namespace has its own file mounted over our
    conf's path."""
    import shutil
    import subprocess
    import time

    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    ours = Sandbox(tmp_path / "a", binary=influxd_path)
    theirs = Sandbox(tmp_path / "b", binary=influxd_path)
    theirs.write_config()
    with started(ours):
        env = {"PATH": os.environ["PATH"], "INFLUXDB_CONFIG_PATH": str(ours.conf)}
        flag = f" -config {ours.conf}" if named_by == "-config" else ""
        inside = f"mount --bind {theirs.conf} {ours.conf} && exec {influxd_path} run{flag}"
        other = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", inside],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not theirs.ping() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert theirs.ping(), "the other server serves its own ports"
            influxd = Influxd(load(write_config(tmp_path, ours)))
            found = influxd.locate()
            assert found is not None and found.pid in ours.pids(), (found, other.pid)
            assert other.pid not in [p.pid for p in influxd._all_naming_conf()]
        finally:
            other.terminate()
            other.wait(30)
