"""`backup` as people see it, against a real influxd: under a real pty (the bar, log lines above
it, NO_COLOR, the short record), --dry-run, --all and JSON times."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
from datetime import datetime
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config

SGR = re.compile(r"\x1b\[[0-9;]*m")  # colour escapes


def run_in_pty(
    argv: list[str], env: dict[str, str], timeout: float = 300, columns: int | None = None
) -> tuple[int, str]:
    """Run argv with stdin, stdout and stderr on a new pty (`columns` wide if given); return
    its status and all it wrote."""
    master, slave = pty.openpty()
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    out = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output for {timeout}s: {bytes(out[-2000:])!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the pty
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=60), out.decode("utf-8", "replace")


def screen(text: str) -> list[str]:
    """What a terminal shows: \\r returns to the line's start, ESC[K erases to its end."""
    lines: list[list[str]] = [[]]
    col = 0
    i = 0
    while i < len(text):
        if text.startswith("\x1b[K", i):
            del lines[-1][col:]
            i += 3
            continue
        match = SGR.match(text, i)
        if match:
            i = match.end()
            continue
        char = text[i]
        i += 1
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            if col < len(line):
                line[col] = char
            else:
                line.append(char)
            col += 1
    return ["".join(line) for line in lines]


def backup_in_pty(
    config: Path, *args: str, no_color: bool = False, columns: int | None = None
) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    if no_color:
        env["NO_COLOR"] = "1"
    argv = [sys.executable, "-m", "influx_backupd", "-c", str(config), "backup", *args]
    return run_in_pty(argv, env, columns=columns)


@pytest.fixture
def filled(sandbox: Sandbox) -> Sandbox:
    sandbox.create_db("db")
    sandbox.write_points("db", 20000)
    return sandbox


@pytest.mark.influxd
def test_terminal_shows_the_bar_then_the_short_record(tmp_path: Path, filled: Sandbox) -> None:
    config = write_config(tmp_path, filled)
    status, text = backup_in_pty(config)
    assert status == 0, text
    assert "archive [" in text, "the bar was drawn"
    shown = [line for line in screen(text) if line.strip()]
    # the bar is gone, no log line: only the short record
    assert shown[0].startswith("run ") and "status=ok" in shown[0], shown
    assert [line.split()[0] for line in shown[1:]] == ["archive", "size", "downtime"], shown
    assert "…" in shown[2], "a short sha256"


@pytest.mark.influxd
def test_verbose_log_lines_print_above_the_bar(tmp_path: Path, filled: Sandbox) -> None:
    config = write_config(tmp_path, filled)
    status, text = backup_in_pty(config, "-v")
    assert status == 0, text
    assert SGR.search(text), "colours on a terminal"
    shown = [line for line in screen(text) if line.strip()]
    events = [line for line in shown if "[info" in line]
    assert any("influxd.stopped" in line for line in events)
    assert any("run.finished" in line for line in events)
    for line in shown:
        assert "archive [" not in line, f"a bar left on screen or mixed into a line: {line!r}"
    # each event on its own line, starting with its timestamp
    assert all(re.match(r"\d{4}-\d\d-\d\dT", line) for line in events), events
    assert "  started " in text and "  copy " in text, "-v prints the whole record"


@pytest.mark.influxd
def test_no_color_means_no_colour(tmp_path: Path, filled: Sandbox) -> None:
    config = write_config(tmp_path, filled)
    status, text = backup_in_pty(config, "-v", no_color=True)
    assert status == 0, text
    assert "run.finished" in text
    assert not SGR.search(text), repr(SGR.search(text))


@pytest.mark.influxd
def test_dry_run_stops_nothing_and_writes_nothing(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    pids = sandbox.pids()
    cli = Cli(config)
    done = cli("backup", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "backup nightly: dry run, nothing stopped or written"
    assert lines[1].startswith("  mode        cold: mode = cold")
    assert lines[2] == "  downtime    unknown (no successful cold run yet)"
    assert lines[3].startswith("  size        about ") and lines[3].endswith(": fits")
    plan = cli.json("backup", "--dry-run")
    assert plan["mode"] == "cold" and plan["fits"] is True
    assert plan["predicted_bytes"] > 0 and plan["free_bytes"] > plan["needed_bytes"]
    assert sandbox.pids() == pids and sandbox.ping(), "influxd untouched"
    assert not (tmp_path / "state").exists() and not (tmp_path / "archives").exists()
    # after a cold run the prediction has a basis
    cli("backup", check=True)
    plan = cli.json("backup", "--dry-run")
    assert plan["predicted_downtime_s"] > 0
    assert plan["downtime_basis"] == "median of the last 1 cold runs"


@pytest.mark.influxd
def test_all_runs_every_job_in_turn_with_rfc3339_times(tmp_path: Path, sandbox: Sandbox) -> None:
    jobs = [
        {"name": "first", "every": "1h", "mode": "cold", "copy": "direct"},
        {"name": "second", "every": "1h", "mode": "cold", "copy": "direct"},
    ]
    cli = Cli(write_config(tmp_path, sandbox, jobs=jobs))
    records = cli.json("backup", "--all")
    assert [r["job"] for r in records] == ["first", "second"]
    assert all(r["status"] == "ok" for r in records)
    assert records[0]["finished_at_unix"] <= records[1]["started_at_unix"], "one after another"
    for record in records:
        stamp = record["started_at"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        assert abs(parsed - record["started_at_unix"]) < 0.001
    listed = json.loads(cli("--json", "list", check=True).stdout)
    assert {r["id"] for r in listed} == {r["id"] for r in records}
    assert all(r["finished_at"].endswith("Z") for r in listed)


@pytest.mark.influxd
def test_quiet_on_a_terminal_is_the_record_alone(tmp_path: Path, filled: Sandbox) -> None:
    config = write_config(tmp_path, filled)
    status, text = backup_in_pty(config, "-q")
    assert status == 0, text
    assert "archive [" not in text and "\x1b[" not in text, "no bar, nothing to colour"
    shown = [line for line in screen(text) if line.strip()]
    assert shown[0].startswith("run ") and len(shown) == 4, shown


@pytest.mark.influxd
@pytest.mark.parametrize("columns", [80, 40])
def test_the_bar_never_wraps_on_a_narrow_terminal(
    tmp_path: Path, filled: Sandbox, columns: int
) -> None:
    """A row that wraps leaves a row behind at each \\r redraw (ESC[K erases one row only):
    every drawing of the bar fits in one row of the pty's width, ETA included."""
    config = write_config(tmp_path, filled)
    status, text = backup_in_pty(config, columns=columns)
    assert status == 0, text
    drawn = [SGR.sub("", part) for part in re.split(r"\r\x1b\[K|\n", text)]
    bars = [part for part in drawn if "%" in part and "ETA" in part]
    assert bars, f"the bar was drawn: {text!r}"
    for bar in bars:
        assert len(bar) < columns, f"{len(bar)} characters on a {columns}-column terminal: {bar!r}"


def unconverted_times(value: object, where: str = "") -> list[str]:
    """Every number in a JSON document that looks like a Unix time (2001 … 2096) but is not a
    *_unix twin: a time left as a bare float."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.endswith("_unix"):
                stamp = value.get(key[: -len("_unix")])
                assert stamp is None or str(stamp).endswith("Z"), (where, key, stamp)
                continue
            if isinstance(key, str) and key.endswith("bytes"):
                continue
            found += unconverted_times(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += unconverted_times(item, f"{where}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool) and 1e9 <= value <= 4e9:
        found.append(f"{where}={value}")
    return found


@pytest.mark.influxd
def test_every_time_in_every_json_output_has_its_rfc3339_and_unix_forms(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    jobs = [
        {"name": "hourly", "every": "1h", "mode": "hot"},
        {"name": "nightly", "every": "1d", "mode": "cold", "copy": "direct"},
    ]
    cli = Cli(write_config(tmp_path, sandbox, jobs=jobs))
    sandbox.create_db("db")
    sandbox.write_points("db", 1000)
    outputs = {
        "hot full": cli.json("backup", "--job", "hourly"),
        "hot increment": cli.json("backup", "--job", "hourly"),
        "cold": cli.json("backup", "--job", "nightly"),
    }
    assert all(r["status"] == "ok" for r in outputs.values()), outputs
    assert outputs["hot increment"]["since_anchor"].endswith("Z")
    assert "shard_listing" in outputs["hot full"]["extra"], "a hot record with file mtimes"
    outputs["list"] = cli.json("list")
    outputs["status"] = cli.json("status")
    outputs["dry run"] = cli.json("backup", "--dry-run", "--all")
    outputs["verify"] = cli.json("verify", "--all")
    for name, document in outputs.items():
        assert unconverted_times(document) == [], name
    assert all("next_run_unix" in job for job in outputs["status"]["jobs"]), "null beside null"


def test_a_failed_run_on_a_terminal_shows_its_record_short_not_as_python_repr(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The error-level run.finished a terminal shows carried the whole record as a Python dict,
    then the command printed the short record again."""
    with socket.socket() as held:  # bound, never listening: the snapshot service is down
        held.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{held.getsockname()[1]}"
        config = write_config(tmp_path, sandbox, influxd={"backup_host": closed})
        status, text = backup_in_pty(config, "--mode", "hot")
    assert status == 1, text
    [finished] = [line for line in screen(text) if "run.finished" in line]
    assert "{'" not in text and "'status':" not in text, finished
    assert re.search(r"record=\S+ failed: hot\.unavailable", finished), finished


def test_a_dumb_terminal_gets_no_bar(tmp_path: Path, filled: Sandbox) -> None:
    """TERM=dumb cannot redraw a line: the bar was `\\r\\x1b[K` escapes on it."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "dumb"
    config = write_config(tmp_path, filled)
    argv = [sys.executable, "-m", "influx_backupd", "-c", str(config), "backup"]
    status, text = run_in_pty(argv, env)
    assert status == 0, text
    assert "archive [" not in text and "\x1b[K" not in text, text
    assert "status=ok" in text
