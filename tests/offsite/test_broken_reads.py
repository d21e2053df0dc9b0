"""An endpoint that closes the connection mid-body: one line of ours naming the endpoint, the
key and how much of it came (before: urllib3's own text, "('Connection broken:
IncompleteRead(12 bytes read, 88 more expected)', IncompleteRead(...))", reached the user)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import StallingProxy, age_identity, offsite_section


@pytest.fixture
def cutting(moto: Endpoint) -> Iterator[StallingProxy]:
    proxy = StallingProxy(
        moto.url,
        lambda _m, _p: False,
        cuts=lambda m, p: m == "GET" and "/objects/" in p,
    )
    yield proxy
    proxy.close()


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [x for x in stderr.splitlines() if x.startswith("influx-backupd:")]
    assert lines, stderr[-3000:]
    return lines[-1]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_body_cut_short_is_said_in_our_words(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, cutting: StallingProxy, encrypted: bool
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    extra: dict[str, object] = {}
    if encrypted:
        identity, recipient = age_identity(tmp_path)
        extra = {"encrypt_to": [recipient], "identity_file": str(identity)}
    config = write_config(tmp_path, sandbox, extra=offsite_section(moto, retries=1, **extra))
    cli = Cli(config)
    record = cli.json("backup")
    assert record["status"] == "ok"
    config.write_text(config.read_text().replace(moto.url, cutting.url))
    # shutil.rmtree(tmp_path / "state" / "offsite-manifests")  # each manifest read again

    archive = Path(record["archive"])
    archive.unlink()
    before = sandbox.pids()
    for argv in (
        ("verify", record["id"], "--offsite", "--read-data", "100"),
        ("restore", record["id"], "--from", "offsite", "--yes"),
    ):
        done = cli(*argv)
        assert done.returncode == 1, (argv, done.stderr[-2000:])
        line = _one_line(done.stderr)
        assert re.search(
            r"the endpoint closed the connection after \d+ of \d+ bytes of host-a/objects/", line
        ), line
        assert cutting.url in line and "IncompleteRead" not in line, line
        assert "damaged" not in line, "a broken connection is no damage in the bucket"
    assert cli.json("status")["offsite"]["damaged"] == [], "nothing noted damaged"
    assert sandbox.ping() and sandbox.pids() == before, "influxd never stopped"
    assert not archive.exists()

    # the small objects, read whole: a manifest cut short
    cutting.cuts = lambda m, p: m == "GET" and "/manifests/" in p
    shutil.rmtree(tmp_path / "state" / "offsite-manifests")  # each manifest read again
    done = cli("list", "--offsite")
    assert done.returncode == 1, done.stderr[-2000:]
    line = _one_line(done.stderr)
    assert re.search(r"closed the connection after \d+ of \d+ bytes of host-a/manifests/", line)
    assert cutting.cut
