"""A one-shot command on an endpoint that stalls: a request that moves no byte for
[offsite] stall_after is given up with one line, and the process ends (before: `offsite sync`,
`backup`'s off-site step, `verify --offsite`, `restore --from offsite` waited as long as the
request did — for ever on an endpoint that answers a byte at a time, as botocore's read
timeout restarts with each byte)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import StallingProxy, offsite_section


@pytest.fixture
def proxy_for(moto: Endpoint) -> Iterator[Callable[[Callable[[str, str], bool]], StallingProxy]]:
    made: list[StallingProxy] = []

    def make(stalls: Callable[[str, str], bool]) -> StallingProxy:
        made.append(StallingProxy(moto.url, stalls))
        return made[-1]

    yield make
    for p in made:
        p.close()


def _objects(method: str) -> Callable[[str, str], bool]:
    return lambda m, path: m == method and "/objects/" in path


def _config(tmp_path: Path, sandbox: Sandbox, endpoint: Endpoint, url: str) -> Path:
    section = offsite_section(endpoint, endpoint_url=url, retries=1, stall_after="3s")
    return write_config(tmp_path, sandbox, extra=section)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("influx-backupd:")]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines, stderr[-3000:]
    return lines[-1]


def test_offsite_sync_gives_up_a_stalled_upload_and_ends(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, proxy_for: Callable[..., StallingProxy]
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    proxy = proxy_for(_objects("PUT"))
    cli = Cli(_config(tmp_path, sandbox, moto, proxy.url))
    # the backup's own off-site step meets the stall first: the backup stays ok
    started = time.monotonic()
    backup = cli("backup", "--json", timeout=90)
    took = time.monotonic() - started
    assert backup.returncode == 0, backup.stderr[-3000:]
    assert json.loads(backup.stdout)["status"] == "ok"
    line = _one_line(backup.stderr)
    assert "stalls" in line and "the local backup is kept" in line, line
    assert proxy.stalled, "the upload reached the stalling endpoint"
    assert took < 60, f"backup took {took:.0f}s on a stalled endpoint"
    assert sandbox.ping()

    started = time.monotonic()
    sync = cli("offsite", "sync", timeout=90)
    took = time.monotonic() - started
    assert sync.returncode == 1, sync.stderr[-3000:]
    line = _one_line(sync.stderr)
    assert "made no progress" in line and proxy.url in line, line
    assert took < 60, f"offsite sync took {took:.0f}s on a stalled endpoint"
    status = cli.json("status")
    assert "made no progress" in (status["offsite"]["last_error"] or ""), status["offsite"]
    assert status["offsite"]["last_error_reason"] == "unreachable", "as the metrics name it"
    assert status["offsite"]["not_offsite"], "the backup is not counted as off-site"


def test_reading_back_a_stalled_download_gives_up_and_touches_nothing(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, proxy_for: Callable[..., StallingProxy]
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    config = _config(tmp_path, sandbox, moto, moto.url)
    cli = Cli(config)
    record = cli.json("backup")
    assert record["status"] == "ok" and cli.json("list", "--offsite"), "sent through moto"
    proxy = proxy_for(_objects("GET"))
    config.write_text(config.read_text().replace(moto.url, proxy.url))

    for argv in (("verify", record["id"], "--offsite", "--read-data", "100"),):
        started = time.monotonic()
        done = cli(*argv, timeout=90)
        took = time.monotonic() - started
        assert done.returncode == 1, (argv, done.stderr[-3000:])
        assert "made no progress" in _one_line(done.stderr), argv
        assert took < 60, f"{argv} took {took:.0f}s"

    # restore from the bucket: the fetch gives up before influxd is touched
    archive = Path(record["archive"])
    archive.unlink()
    before = sandbox.pids()
    started = time.monotonic()
    done = cli("restore", record["id"], "--from", "offsite", "--yes", timeout=90)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-3000:]
    assert "made no progress" in _one_line(done.stderr)
    assert took < 60, f"restore --from offsite took {took:.0f}s"
    assert sandbox.ping(), "influxd was never stopped"
    assert sandbox.pids() == before
    assert not archive.exists(), "no half-fetched archive under the backup's name"
    left = list(archive.parent.glob("*.partial"))
    assert not left, f"the given-up fetch left its partial copy: {left}"
    assert proxy.stalled


@pytest.mark.parametrize(
    ("argv", "sig", "status"),
    [(("backup",), "SIGTERM", 1), (("offsite", "sync"), "SIGINT", 1)],
    ids=["backup's off-site step, SIGTERM", "offsite sync, SIGINT"],
)
def test_a_signal_during_a_stalled_request_ends_the_command_at_once(
    tmp_path: Path,
    sandbox: Sandbox,
    moto: Endpoint,
    proxy_for: Callable[..., StallingProxy],
    argv: tuple[str, ...],
    sig: str,
    status: int,
) -> None:
    """Before stall_after: the signal ended the main thread's wait, then Python joined the
    upload's pool threads at exit, as long as the stalled request lasted."""
    import signal
    import subprocess
    import sys

    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    proxy = proxy_for(_objects("PUT"))
    if argv[0] == "offsite":  # a backup the bucket lacks, taken before [offsite] was set
        assert Cli(write_config(tmp_path, sandbox))("backup").returncode == 0
    section = offsite_section(moto, endpoint_url=proxy.url, retries=1, stall_after="10m")
    config = write_config(tmp_path, sandbox, extra=section)
    proc = subprocess.Popen(
        [sys.executable, "-m", "influx_backupd", "--config", str(config), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "PYTHONFAULTHANDLER": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while not proxy.stalled and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proxy.stalled, "the upload reached the stalling endpoint"
        time.sleep(1)
        proc.send_signal(getattr(signal, sig))
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:  # show where it hangs (faulthandler's dump)
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=20)
            raise AssertionError(f"still running 20 s after {sig}: {err[-6000:]}") from None
    finally:
        proc.kill()
    assert proc.returncode == status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"influx-backupd: interrupted by {sig}" in err, err[-3000:]
    assert sandbox.ping()
    assert [r["status"] for r in Cli(config).json("list")] == ["ok"], "the local backup stays"
    # said where status looks: before, the sync's own record of it never came (its thread is
    # left, the command leaves with os._exit), and status showed nothing wrong
    last_error = Cli(config).json("status")["offsite"]["last_error"]
    assert last_error is not None and f"interrupted by {sig}" in last_error, last_error


def test_sigterm_during_a_fetch_from_the_bucket_ends_it_and_the_next_fetch_works(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, proxy_for: Callable[..., StallingProxy]
) -> None:
    """Before: no handler was set until after the fetch: SIGTERM ended `restore --from
    offsite` with status 143 and no line."""
    import signal
    import subprocess
    import sys

    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    config = _config(tmp_path, sandbox, moto, moto.url)
    record = Cli(config).json("backup")
    assert record["status"] == "ok"
    Path(record["archive"]).unlink()
    proxy = proxy_for(_objects("GET"))
    direct = config.read_text()
    config.write_text(direct.replace(moto.url, proxy.url).replace('"3s"', '"10m"'))
    target = tmp_path / "restored"
    argv = ["restore", record["id"], "--from", "offsite", "--target", str(target), "--yes"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "influx_backupd", "--config", str(config), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not proxy.stalled and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proxy.stalled, "the fetch reached the stalling endpoint"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "influx-backupd: interrupted by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    assert sandbox.ping() and not target.exists()
    left = list(tmp_path.rglob("*.partial"))
    assert not left, f"the interrupted fetch left its partial copy: {left}"
    config.write_text(direct)
    again = Cli(config)(*argv, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
