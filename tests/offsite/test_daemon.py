"""The daemon sends each backup off-site after its run, and the upload yields to a due backup."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moto.server import ThreadedMotoServer

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.jobs.cold import tree_size
from tests.conftest import Cli, wait_until, write_config
from tests.offsite.conftest import Endpoint, _credentials, wait_port
from tests.offsite.helpers import StallingProxy, offsite_section
from tests.system.test_daemon import daemon, runs


def test_the_upload_yields_to_a_due_backup_and_resumes_after_it(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    # 24 MB of content to send at 2 MiB/s, part by part: a backup falls due meanwhile
    (sandbox.data / "filler.bin").write_bytes(bytes(range(256)) * (24 * 4096))
    jobs = [{"name": "often", "every": "5s", "mode": "cold", "copy": "direct"}]
    section = offsite_section(moto, max_rate="2MiB", concurrency=1)
    config = write_config(tmp_path, sandbox, jobs=jobs, extra=section)
    with daemon(tmp_path, config) as d:
        d.wait_event("offsite.yielded", timeout=180)
        d.wait_event("offsite.sent", timeout=180)
        assert d.stop() == 0
    events = d.events()
    names = [e.get("event") for e in events]
    yielded = names.index("offsite.yielded")
    # the run that made it yield came between the stopped upload and the next one
    assert "run.finished" in names[yielded:]
    done = [r for r in runs(tmp_path) if r.ok]
    assert len(done) >= 2
    sent = {e["run_id"] for e in events if e.get("event") == "offsite.sent"}
    in_bucket = {r["id"] for r in Cli(config).json("list", "--offsite")}
    assert sent <= in_bucket and done[0].id in in_bucket
    state = json.loads((tmp_path / "state" / "offsite.json").read_text())
    assert set(state["sent"]) == in_bucket & {r.id for r in runs(tmp_path)}
    assert sandbox.ping()


def test_after_a_failure_the_daemon_tries_again_and_completes_the_upload(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    # The endpoint is down: the port is held (bound, not listening: connections are refused)
    # until moto starts on it, so that nothing else takes it in between
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = int(holder.getsockname()[1])
    down = Endpoint(
        "moto",
        f"http://127.0.0.1:{port}",
        f"comes-back-{uuid.uuid4().hex[:8]}",
        _credentials(tmp_path),
    )
    jobs = [{"name": "nightly", "schedule": "0 3 1 1 *", "mode": "cold", "copy": "direct"}]
    section = offsite_section(down, retries=1, retry_after="2s")
    config = write_config(tmp_path, sandbox, jobs=jobs, extra=section)
    record = Cli(config).json("backup")  # ok locally; its off-site copy fails
    assert record["status"] == "ok"
    server = None
    try:
        with daemon(tmp_path, config) as d:
            d.wait_event("offsite.retry_scheduled", timeout=120)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            holder.close()
            server.start()
            wait_port(port)
            down.client().create_bucket(Bucket=down.bucket)
            sent = d.wait_event("offsite.sent", timeout=180)
            assert sent["run_id"] == record["id"]
            assert d.stop() == 0
        failures = [e for e in d.events() if e.get("event") == "offsite.failed"]
        assert failures and all("cannot connect" in e["error"] for e in failures)
        delays = [e["in_s"] for e in d.events() if e.get("event") == "offsite.retry_scheduled"]
        assert delays[:2] == [2.0, 4.0][: len(delays[:2])]  # doubling
        assert [r["id"] for r in Cli(config).json("list", "--offsite")] == [record["id"]]
    finally:
        holder.close()
        if server is not None:
            server.stop()


@contextmanager
def _stalling(
    tmp_path: Path, sandbox: Sandbox, jobs: list[dict[str, str]], **section: str
) -> Iterator[Path]:
    """A config whose [offsite] endpoint answers no request to its end (one byte every 2 s)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    stalling = StallingProxy(None)
    try:
        down = Endpoint("moto", stalling.url, "held", _credentials(tmp_path))
        extra = offsite_section(down, retries=1, retry_after="1h", **section)
        yield write_config(tmp_path, sandbox, jobs=jobs, extra=extra)
    finally:
        stalling.close()


def test_an_endpoint_that_never_finishes_an_answer_does_not_hold_the_backups(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: the sync waited on the request for ever, under the lock; every backup that fell
    due waited behind it ("already waiting"), and SIGTERM took minutes."""
    jobs = [{"name": "often", "every": "4s", "mode": "cold", "copy": "direct"}]
    with _stalling(tmp_path, sandbox, jobs, yield_within="3s") as config:
        with daemon(tmp_path, config) as d:
            d.wait_event("offsite.left_behind", timeout=120)
            names = lambda: [e.get("event") for e in d.events()]  # noqa: E731
            wait_until(
                lambda: "run.finished" in names()[names().index("offsite.left_behind") :],
                60,
                "a backup run after the upload was left behind",
            )
            started = time.monotonic()
            assert d.stop() == 0
            assert time.monotonic() - started < 30, "SIGTERM is not held by the request"
        assert [r for r in runs(tmp_path) if r.ok], "the backup ran"
        assert sandbox.ping()


def test_a_stalled_request_is_left_behind_after_stall_after_even_with_nothing_due(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """yield_within only counts while a backup waits; a request that moves nothing for
    stall_after is left behind on its own, and the retry is scheduled (before: the upload held
    the sync, and `status` showed it uploading, for as long as the endpoint dripped)."""
    jobs = [{"name": "daily", "every": "1d", "mode": "cold", "copy": "direct"}]
    with _stalling(tmp_path, sandbox, jobs, yield_within="1h", stall_after="3s") as config:
        # a backup the bucket lacks (its own off-site step gives up on the stall): the
        # daemon sends it at start, with no backup due for a day
        assert Cli(config)("backup", timeout=90).returncode == 0
        with daemon(tmp_path, config) as d:
            left = d.wait_event("offsite.left_behind", timeout=60)
            assert "stall_after" in left["reason"], left
            d.wait_event("offsite.retry_scheduled", timeout=30)
            assert d.stop() == 0
        assert sandbox.ping()


def _size(path: Path) -> int:
    return tree_size(path)  # what an archive holds of it (a file's holes are not archived)


def test_held_backups_that_fill_the_storage_dir_are_sent_when_the_endpoint_is_back(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """hold_unsent keeps every backup the bucket lacks; an outage fills the storage dir and runs
    are refused for want of space. The endpoint back, the next refused run tries the bucket
    (the back-off alone waited up to 6 h, every run refused meanwhile)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    archive = _size(sandbox.meta) + _size(sandbox.data) + _size(sandbox.wal)
    store = tmp_path / "archives"
    store.mkdir()
    # the 64 MiB reserve and room for about two archives
    size_k = (archive * 5 // 2) // 1024 + 66 * 1024
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_k}k,mode=0700", "tmpfs", str(store)],
        check=True,
    )
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = int(holder.getsockname()[1])
    down = Endpoint(
        "moto",
        f"http://127.0.0.1:{port}",
        f"comes-back-{uuid.uuid4().hex[:8]}",
        _credentials(tmp_path),
    )
    server = None
    try:
        jobs = [{"name": "often", "every": "3s", "mode": "cold", "copy": "direct", "keep_last": 1}]
        # a retry far off: only the refused runs can bring the sync forward
        section = offsite_section(down, retries=1, retry_after="1h")
        config = write_config(tmp_path, sandbox, jobs=jobs, extra=section)
        with daemon(tmp_path, config) as d:
            wait_until(
                lambda: any("hold_unsent" in (r.error or "") for r in runs(tmp_path)),
                120,
                "a run refused for the space held backups take",
            )
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            holder.close()
            server.start()
            wait_port(port)
            down.client().create_bucket(Bucket=down.bucket)
            d.wait_event("offsite.sent", timeout=60)
            assert d.stop() == 0
        assert sandbox.ping()
    finally:
        holder.close()
        if server is not None:
            server.stop()
        subprocess.run(["umount", "-l", str(store)], check=False)
