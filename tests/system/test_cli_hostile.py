"""What a hostile or unlucky environment does to a command, as real processes without an influxd:
closed streams, bytes that are no UTF-8, an ASCII locale, a state_dir that refuses, files that
never end, edited records and state files. Each ends in one line and a defined status; none in
a traceback."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord
from tests.cli_process import run_cli_process
from tests.system.test_cli_surface import serverless_config

EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 1, 2, 78


def run(argv: list[str | bytes], **kw: object) -> subprocess.CompletedProcess[str]:
    return run_cli_process(argv, timeout=60, **kw)  # type: ignore[arg-type]


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def in_shell(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A command line with its redirections, as cron or a unit would run it."""
    return subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_closed_stdout_or_stderr_changes_no_exit_status(tmp_path: Path) -> None:
    config = serverless_config(tmp_path)
    cmd = f"{sys.executable} -m influx_backupd -c {config}"
    assert in_shell(f"{cmd} list >&-").returncode == 0
    assert in_shell(f"{cmd} check-config >&-").returncode == 0
    assert in_shell(f"{cmd} list 2>&-").returncode == 0
    assert in_shell(f"{cmd} list --job nope 2>&-").returncode == EXIT_USAGE
    assert in_shell(f"{cmd} backup 2>&- >&-").returncode == EXIT_USAGE  # two jobs, no --job


def test_a_closed_stdin_is_no_terminal_to_ask(tmp_path: Path) -> None:
    """`restore ID` without --yes asks on a terminal; with stdin closed (`<&-`) it ended in an
    AttributeError traceback, exit 1 (the hostile-input audit)."""
    config = serverless_config(tmp_path)
    archive = tmp_path / "nightly-20261204T030000Z-3f9a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("meta"))
    done = in_shell(f"{sys.executable} -m influx_backupd -c {config} restore {archive} <&-")
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "--yes" in one_line(done)


@pytest.mark.parametrize(
    ("command", "named"),
    [(["list", "--job"], "--job"), (["verify"], "BACKUP"), (["restore"], "BACKUP"),
     (["prune", "--job"], "--job")],
)  # fmt: skip
def test_an_argument_that_is_not_utf8_is_a_usage_error(
    tmp_path: Path, command: list[str], named: str
) -> None:
    """Named as the command line gives it (it said `argument job`, `argument backup`)."""
    config = serverless_config(tmp_path)
    done = run([*(c.encode() for c in ["-c", str(config), *command]), b"x\xff"])
    assert done.returncode == EXIT_USAGE
    assert f"argument {named} 'x\\xff' is not valid UTF-8" in one_line(done)
    assert not (tmp_path / "state").exists(), "nothing touched"


def test_an_ascii_locale_and_a_non_ascii_path_say_what_to_do(tmp_path: Path) -> None:
    config = serverless_config(tmp_path)
    config.write_text(config.read_text().replace(f"{tmp_path}/state", f"{tmp_path}/stäte"))
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    for command in (["list"], ["status"], ["prune", "--dry-run"]):
        done = run(["-c", str(config), *command], env=env)
        assert done.returncode == EXIT_CONFIG, (command, done.stderr)
        assert "UTF-8 locale" in one_line(done)


def test_a_state_dir_that_refuses_the_lock_is_one_line(tmp_path: Path) -> None:
    config = serverless_config(tmp_path)
    (tmp_path / "state" / "backup.lock").mkdir(parents=True)  # a dir where the lock goes
    for command in (["prune", "--dry-run"], ["verify", "--all"], ["backup", "--job", "nightly"]):
        done = run(["-c", str(config), *command])
        assert done.returncode == EXIT_FAILED, (command, done.stderr)
        line = one_line(done)
        assert "cannot take the lock" in line and "backup.lock" in line, line


def test_a_lock_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """Before, the lock's open followed it: the file it named was truncated and got our pid."""
    config = serverless_config(tmp_path)
    victim = tmp_path / "victim.conf"
    victim.write_text("keep me\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "backup.lock").symlink_to(victim)
    done = run(["-c", str(config), "prune", "--dry-run"])
    assert done.returncode == EXIT_FAILED, done.stderr
    assert "cannot take the lock" in one_line(done)
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: os.mkfifo(p), id="fifo"),
        pytest.param(lambda p: p.write_text("x = " + "[" * 5000 + "]" * 5000), id="deep-arrays"),
        pytest.param(
            lambda p: p.write_text("x = " + "{a=" * 3000 + "1" + "}" * 3000), id="deep-tables"
        ),
        pytest.param(lambda p: p.write_bytes(b"#" * (17 << 20)), id="huge"),
    ],
)
def test_a_config_that_never_ends_or_nests_without_end_is_refused(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "config.toml"
    make(path)
    done = run(["-c", str(path), "check-config"])
    assert done.returncode == EXIT_CONFIG
    one_line(done)


@pytest.mark.parametrize("command", [["verify", ""], ["restore", "", "--yes"], ["verify", " "]])
def test_an_empty_backup_argument_names_nothing(tmp_path: Path, command: list[str]) -> None:
    done = run(["-c", str(serverless_config(tmp_path)), *command], cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "BACKUP: empty" in one_line(done)


@pytest.mark.parametrize(
    "command",
    [
        ["verify", "loop"],
        ["restore", "loop", "--yes"],
        ["restore", "loop", "--target", "t"],
        ["restore", "loop", "--database", "d"],
        ["verify", "loop/x"],
    ],
)
def test_a_backup_path_that_is_a_symlink_loop_is_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    """Before: RuntimeError: Symlink loop, a traceback (Path.resolve on Python 3.11)."""
    config = serverless_config(tmp_path)
    (tmp_path / "archives").mkdir()
    assert run(["-c", str(config), "import"]).returncode == 0  # a catalog, empty
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    done = run(["-c", str(config), *command], cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == EXIT_USAGE, done.stderr
    one_line(done)


def test_an_empty_config_path_is_no_config(tmp_path: Path) -> None:
    done = run(["-c", "", "list"], cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG
    assert "empty path" in one_line(done)


def test_an_edited_record_with_an_impossible_time_is_damage_not_a_crash(tmp_path: Path) -> None:
    """A sidecar with started_at = 1e20 is refused by import; a catalog row with one, by list
    as a damaged catalog: one line either way."""
    config = serverless_config(tmp_path)
    archives = tmp_path / "archives"
    archives.mkdir()
    record = RunRecord(id="20260101T000000Z-abcd", job="nightly", mode="cold", status="ok")
    data = {**record.to_dict(), "started_at": 1e20, "archive": str(archives / "a.tar")}
    (archives / "nightly-20260101T000000Z-abcd.tar.json").write_text(json.dumps(data))
    done = run(["-c", str(config), "import"])
    assert "Traceback" not in done.stderr
    assert run(["-c", str(config), "list"]).returncode == 0
    catalog = Catalog(tmp_path / "state")
    catalog.save(RunRecord(id="20260101T000000Z-beef", job="nightly", mode="cold", status="ok"))
    with catalog._connect() as db:  # the edit, by hand
        db.execute("UPDATE runs SET record = json_set(record, '$.started_at', 1e300)")
    for argv in (["list"], ["list", "--json"], ["status"]):
        done = run(["-c", str(config), *argv])
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode in (0, EXIT_FAILED)


@pytest.mark.parametrize("pid", [-1, 0, 2**70, "x"])
def test_a_daemon_state_file_with_an_impossible_pid_is_no_daemon(
    tmp_path: Path, pid: object
) -> None:
    config = serverless_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "daemon.json").write_text(json.dumps({"pid": pid, "create_time": 0}))
    done = run(["-c", str(config), "status"])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_end_of_input_at_the_restore_question_is_no(tmp_path: Path) -> None:
    config = serverless_config(tmp_path)
    backup = tmp_path / "backup.tar"
    subprocess.run(["tar", "-cf", str(backup), "-C", str(tmp_path / "server"), "."], check=True)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on a terminal
        os.execv(
            sys.executable,
            [sys.executable, "-m", "influx_backupd", "-c", str(config), "restore", str(backup)],
        )
    out = b""
    deadline = time.monotonic() + 60
    sent = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and b"[y/N]" in out:
            os.write(fd, b"\x04")  # Ctrl-D
            sent = True
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert sent, text
    assert os.waitstatus_to_exitcode(status) == EXIT_USAGE, text
    assert "nothing done" in text and "Traceback" not in text


DEEP = "[" * 200_000 + "]" * 200_000  # past the JSON parser's recursion limit


@pytest.mark.parametrize(
    ("where", "argv"),
    [
        ("state/influxd-stopped.json", ["list"]),  # the crash marker: every command reads it
        ("state/daemon.json", ["status"]),
        ("state/offsite.json", ["status"]),
        ("archives/nightly-20260101T000000Z-abcd.tar.json", ["import"]),
        ("archives/nightly-20260101T000000Z-abcd.tar.json", ["verify", "{archive}"]),
        ("state/prune-pending.json", ["prune"]),
    ],
)
def test_json_nested_past_the_parsers_limit_is_damage_not_a_traceback(
    tmp_path: Path, where: str, argv: list[str]
) -> None:
    """Before, RecursionError (no ValueError) went past every reader: a crash marker nested so
    deep ended every command, the one that would start influxd again too."""
    config = serverless_config(tmp_path)
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEEP)
    archive = tmp_path / "archives" / "nightly-20260101T000000Z-abcd.tar"
    if where.endswith(".tar.json"):
        subprocess.run(
            ["tar", "-cf", str(archive), "-C", str(tmp_path / "server"), "."], check=True
        )
    done = run(["-c", str(config), *(a.format(archive=archive) for a in argv)])
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr, done.stderr
    assert done.returncode in (0, EXIT_FAILED), done.stderr


@pytest.mark.parametrize("link", ["loop", "dangling"])
def test_a_storage_dir_that_is_a_symlink_to_nowhere_is_a_config_error(
    tmp_path: Path, link: str
) -> None:
    config = serverless_config(tmp_path)
    storage = tmp_path / "archives"
    if link == "loop":
        (tmp_path / "other").symlink_to(storage)
        storage.symlink_to(tmp_path / "other")
    else:
        storage.symlink_to(tmp_path / "gone")
    for argv in (["check-config"], ["verify", "--all"], ["backup", "--job", "nightly"]):
        done = run(["-c", str(config), *argv])
        assert done.returncode == EXIT_CONFIG, (argv, done.stderr)
        assert "storage.dir: " in one_line(done) and "leads nowhere" in one_line(done)


@pytest.mark.parametrize("text", ["[1, 2]", '[["a"]]', "{", "null"])
def test_a_damaged_prune_pending_list_is_set_aside_not_a_traceback(
    tmp_path: Path, text: str
) -> None:
    config = serverless_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "prune-pending.json").write_text(text)
    done = run(["-c", str(config), "prune"])
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert "prune.pending_list_damaged" in done.stderr
    [aside] = (tmp_path / "state").glob("prune-pending.json.damaged-*")
    assert aside.read_text() == text


@pytest.mark.parametrize(
    "command", [["list", "--job"], ["verify"], ["restore"], ["prune", "--job"], ["backup", "--job"]]
)
def test_a_non_utf8_argument_is_shown_as_its_bytes(tmp_path: Path, command: list[str]) -> None:
    config = serverless_config(tmp_path)
    done = run([*(c.encode() for c in ["-c", str(config), *command]), b"x\xff\xfe"])
    assert done.returncode == EXIT_USAGE
    line = one_line(done)
    assert "'x\\xff\\xfe' is not valid UTF-8" in line, line
    assert "\\udc" not in line, line


LONG = "x" * 10240


@pytest.mark.parametrize(
    "command",
    [
        ["list", "--job", LONG],
        ["prune", "--job", LONG],
        ["backup", "--job", LONG],
        ["backup", "--job", "nightly", "--job", LONG],
        ["backup", "--mode", LONG],
        ["verify", LONG],
        ["restore", LONG, "--yes"],
        ["restore", "--from", LONG, "x"],
        ["verify", "--all", "--job", LONG],
    ],
)
def test_a_long_argument_is_not_echoed_whole(tmp_path: Path, command: list[str]) -> None:
    """An error line quotes at most the first 100 characters of a user's argument, and says
    how long it was."""
    config = serverless_config(tmp_path)
    done = run(["-c", str(config), *command])
    assert done.returncode == EXIT_USAGE, done.stderr[:500]
    line = one_line(done)
    assert len(line) < 400 and "characters)" in line, line[:500]
    assert not (tmp_path / "state").exists(), "nothing touched"


@pytest.mark.parametrize(
    "argv", [["-q", "list", "-v"], ["-q", "-v", "list"], ["list", "-qv"], ["-vv", "list", "-q"]]
)
def test_quiet_and_verbose_together_are_refused(tmp_path: Path, argv: list[str]) -> None:
    done = run(["-c", str(serverless_config(tmp_path)), *argv])
    assert done.returncode == EXIT_USAGE and done.stdout == ""
    assert "-q/--quiet and -v/--verbose" in one_line(done)


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--job", "nightly", "--job", "hourly"],
        ["prune", "--dry-run", "--job", "nightly", "--job", "hourly"],
        ["backup", "--dry-run", "--mode", "hot", "--mode", "cold"],
        ["verify", "--all", "--job", "a", "--job", "b"],
    ],
)
def test_an_option_given_twice_is_refused_not_the_last_kept(
    tmp_path: Path, argv: list[str]
) -> None:
    done = run(["-c", str(serverless_config(tmp_path)), *argv])
    assert done.returncode == EXIT_USAGE and done.stdout == ""
    assert "given more than once" in one_line(done)


def test_backup_job_repeated_runs_those_jobs_in_order(tmp_path: Path) -> None:
    config = serverless_config(tmp_path, jobs=("nightly", "hourly", "weekly"))
    done = run(
        ["-c", str(config), "backup", "--dry-run", "--json", "--job", "weekly", "--job", "nightly"]
    )
    assert done.returncode == 0, done.stderr
    assert [p["job"] for p in json.loads(done.stdout)] == ["weekly", "nightly"]
    done = run(["-c", str(config), "backup", "--dry-run", "--job", "hourly", "--job", "hourly"])
    assert done.returncode == EXIT_USAGE and "given twice" in one_line(done)
    done = run(["-c", str(config), "backup", "--dry-run", "--job", "hourly", "--all"])
    assert done.returncode == EXIT_USAGE and "not allowed with" in one_line(done)


def test_control_characters_in_a_config_path_stay_on_one_line_and_inert(tmp_path: Path) -> None:
    """A newline and an ESC sequence in --config's path (or in a path the config holds) were
    printed raw: a second line, and a live `ESC[2J` that clears the operator's screen."""
    done = run(["-c", str(tmp_path / "ab\ncd\x1b[2J.toml"), "status"], cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.count("\n") == 1 and "\x1b" not in done.stderr, repr(done.stderr)
    assert "ab\\ncd\\x1b[2J.toml" in done.stderr, repr(done.stderr)
    config = serverless_config(tmp_path, jobs=("nightly",))
    config.write_text(
        config.read_text().replace(str(tmp_path / "archives"), "/x/back\\nups\\u001b[2J/x")
    )
    done = run(["-c", str(config), "check-config"], cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert done.stderr.count("\n") == 1 and "\x1b" not in done.stderr, repr(done.stderr)


@pytest.mark.parametrize(
    "where",
    [
        ["-c", "{a}", "-c", "{b}", "list"],
        ["--config", "{a}", "list", "--config", "{b}"],
        ["--config={a}", "list", "-c{b}"],
    ],
)
def test_config_given_twice_is_refused_not_the_last_kept(tmp_path: Path, where: list[str]) -> None:
    """Before and after the command, two parsers each kept theirs and the last won silently:
    another instance's config used."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = serverless_config(tmp_path / "a"), serverless_config(tmp_path / "b")
    done = run([w.format(a=a, b=b) for w in where])
    assert done.returncode == EXIT_USAGE and done.stdout == ""
    assert "--config/-c given more than once" in one_line(done)
    assert run(["-c", str(a), "list"]).returncode == 0, "once is fine"


@pytest.mark.parametrize(
    ("command", "start"),
    [
        (["verify", "X1", "--all"], "verify: BACKUP X1 and --all do not go together"),
        (["verify", "X1", "--all", "--offsite"], "verify --offsite: BACKUP X1 and --all do not"),
        (["verify"], "verify: name one BACKUP"),
    ],
)
def test_verify_names_the_pair_that_does_not_go_together(
    tmp_path: Path, command: list[str], start: str
) -> None:
    """Before: `verify X --all` said "name one BACKUP … or pass --all", as for neither."""
    config = serverless_config(tmp_path)
    if "--offsite" in command:
        config.write_text(
            config.read_text()
            + '\n[offsite]\nbucket = "bkt"\nendpoint_url = "http://127.0.0.1:9"\n'
        )
    done = run(["-c", str(config), *command])
    assert done.returncode == EXIT_USAGE, done.stderr
    assert one_line(done).startswith(f"influx-backupd: {start}"), done.stderr


def test_an_empty_job_name_and_an_oversized_config_say_what_they_are(tmp_path: Path) -> None:
    """`--job ''` read as `--job : no such job`; a config over the limit did not say the limit."""
    config = serverless_config(tmp_path)
    done = run(["-c", str(config), "list", "--job", ""])
    assert done.returncode == EXIT_USAGE
    assert one_line(done).startswith("influx-backupd: --job '' (empty): no such job")
    big = tmp_path / "big.toml"
    with big.open("wb") as f:
        f.truncate(17 << 20)
    done = run(["-c", str(big), "check-config"])
    assert done.returncode == EXIT_CONFIG
    assert "too large to be one (at most 16 MiB)" in one_line(done)
