"""A listing of the manifests that lies (a captive portal's HTML page answered with 200, a
proxy's well-formed but empty ListBucketResult) must never make off-site retention delete what
the kept backups need: the first is no listing (an error), the second is refused because it
misses manifests this host knows are in the bucket."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import offsite_section, relay

EMPTY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Name>%(bucket)s</Name><Prefix>%(prefix)s</Prefix><KeyCount>0</KeyCount>"
    b"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"
)


class LyingProxy:
    """Forwards to moto, except GET ?list-type=2&prefix=…/manifests/ while `lie` is set: a
    200 text/html page ("html"), or a valid ListBucketResult with nothing in it ("empty")."""

    def __init__(self, upstream: str, bucket: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.host, self.port_up, self.bucket = host, int(port), bucket
        self.lie: str | None = None
        self.lies = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _answer(self, path: str) -> bytes | None:
        if not (self.lie and "list-type" in path and "manifests" in path):
            return None
        self.lies += 1
        if self.lie == "html":
            page = b"<html><body>Please sign in to the network</body></html>"
            kind = b"text/html"
        else:
            page = EMPTY % {b"bucket": self.bucket.encode(), b"prefix": b"host-a/manifests/"}
            kind = b"application/xml"
        return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            kind,
            len(page),
            page,
        )

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            r = conn.makefile("rb")
            while line := r.readline().decode():
                method, path, _ = line.split(" ", 2)
                headers = {}
                while (h := r.readline().decode()) not in ("\r\n", ""):
                    k, v = h.split(":", 1)
                    headers[k.strip()] = v.strip()
                if headers.pop("Expect", "").lower() == "100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = r.read(int(headers.get("Content-Length", "0") or 0))
                lie = self._answer(path) if method == "GET" else None
                if lie is not None:
                    conn.sendall(lie)
                    continue
                head, data = relay(self.host, self.port_up, method, path, headers, body, 60)
                conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)


def _objects(moto: Endpoint) -> list[str]:
    listed = moto.client().list_objects_v2(Bucket=moto.bucket, Prefix="host-a/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.mark.parametrize("lie", ["html", "empty"])
def test_a_lying_manifest_listing_deletes_nothing(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, lie: str
) -> None:
    sandbox.create_db("metrics")
    px = LyingProxy(moto.url, moto.bucket)
    try:
        jobs = [{"name": "nightly", "mode": "cold", "copy": "direct", "keep_last": 5}]
        section = offsite_section(moto, endpoint_url=px.url, keep_last=5, grace="0s", retries=1)
        cli = Cli(write_config(tmp_path, sandbox, jobs=jobs, extra=section))
        for n in range(2):
            sandbox.write_points("metrics", 200, start=n * 10_000)
            assert cli.json("backup")["status"] == "ok"
        before = _objects(moto)
        assert len([k for k in before if "/manifests/" in k]) == 2
        px.lie = lie
        synced = cli("offsite", "sync")
        px.lie = None
        assert px.lies >= 1
        assert _objects(moto) == before, "a lying listing deleted objects of kept backups"
        assert synced.returncode == 1, synced.stdout
        lines = synced.stderr.strip().splitlines()
        said = [ln for ln in lines if ln.startswith("influx-backupd: ")]
        assert len(said) == 1, synced.stderr
        assert "manifests/" in said[0] and "nothing deleted" in said[0], said[0]
        assert "Traceback" not in synced.stderr
        # the endpoint honest again: the next sync is ok and the bucket whole
        again = cli("offsite", "sync")
        assert again.returncode == 0, again.stderr
        assert _objects(moto) == before
        assert cli("verify", "--offsite", "--all").returncode == 0
    finally:
        px.close()


# -- the second guard, unit level: a listing well-formed but missing manifests known there --------


def _two_sent(tmp_path: Path, moto: Endpoint) -> list[str]:
    from influx_backupd.offsite.repo import Offsite
    from tests.offsite.helpers import cold_backup, make_tar, make_tree

    sender = Offsite(moto.settings(grace=0))
    ids = []
    for n in range(2):
        bid = f"20261110T01000{n}Z-000{n}"
        tree = make_tree(tmp_path / f"t{n}", {f"data/f{n}": bytes([n]) * 5000, "data/same": b"x"})
        assert sender.send(
            cold_backup(make_tar(tmp_path / f"nightly-{bid}.tar", tree), bid)
        ).complete
        ids.append(bid)
    return ids


def _listing_lies_after(offsite: object, honest: int) -> None:
    """The first `honest` listings of manifests/ are true, the later ones empty."""
    bucket = offsite.bucket  # type: ignore[attr-defined]
    real = bucket.ls
    calls = [0]

    def ls(*under: str):  # type: ignore[no-untyped-def]
        if under == ("manifests",):
            calls[0] += 1
            if calls[0] > honest:
                return iter(())
        return real(*under)

    bucket.ls = ls


def test_a_mark_listing_that_misses_a_kept_manifest_sweeps_nothing(
    tmp_path: Path, moto: Endpoint
) -> None:
    from influx_backupd.offsite.errors import OffsiteError
    from influx_backupd.offsite.repo import Offsite

    ids = _two_sent(tmp_path, moto)
    before = _objects(moto)
    pruner = Offsite(moto.settings(grace=0))
    _listing_lies_after(pruner, honest=1)  # the first listing true, the mark listing empty
    with pytest.raises(OffsiteError, match=r"not complete.*nothing deleted"):
        pruner.prune(set(ids), now=10**10)
    assert _objects(moto) == before


def test_a_listing_that_misses_an_expected_manifest_deletes_nothing(
    tmp_path: Path, moto: Endpoint
) -> None:
    from influx_backupd.offsite.errors import OffsiteError
    from influx_backupd.offsite.repo import Offsite

    ids = _two_sent(tmp_path, moto)
    before = _objects(moto)
    pruner = Offsite(moto.settings(grace=0))
    _listing_lies_after(pruner, honest=0)  # every listing empty: only the caller knows
    pruner.expect(ids[0], "nightly", "sent by this host")
    with pytest.raises(OffsiteError, match=f"misses backup {ids[0]} \\(sent by this host\\)"):
        pruner.prune(set(), now=10**10)
    assert _objects(moto) == before


def test_only_the_manifests_judged_are_deleted(tmp_path: Path, moto: Endpoint) -> None:
    """Retention decided over one listing, prune listing again: a manifest the first did not
    name was never judged, and is not deleted for not being in keep."""
    from influx_backupd.offsite.repo import Offsite

    ids = _two_sent(tmp_path, moto)
    before = _objects(moto)
    pruner = Offsite(moto.settings(grace=0))
    judged = [r for r in pruner.manifests() if r.id == ids[1]]
    result = pruner.prune({ids[1]}, now=10**10, judged=judged)
    assert result.manifests_deleted == [] and result.objects_deleted == 0
    assert _objects(moto) == before


def test_a_manifest_deleted_by_hand_is_sent_again(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """offsite.json says sent, the listing does not name it and a HEAD does not find it: gone
    (not a lying listing); the sync sends it again and is ok."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 200)
    jobs = [{"name": "nightly", "mode": "cold", "copy": "direct", "keep_last": 5}]
    cli = Cli(write_config(tmp_path, sandbox, jobs=jobs, extra=offsite_section(moto, keep_last=5)))
    bid = cli.json("backup")["id"]
    key = f"host-a/manifests/nightly/{bid}.json.gz"
    moto.client().delete_object(Bucket=moto.bucket, Key=key)
    synced = cli("offsite", "sync")
    assert synced.returncode == 0, synced.stderr
    assert key in _objects(moto)


# -- the first guard, unit level: pages that are not this listing ----------------------------------


def _page(**fields: object) -> dict[str, object]:
    return {"ResponseMetadata": {"HTTPHeaders": {"content-type": "application/xml"}}, **fields}


@pytest.mark.parametrize(
    ("pages", "said"),
    [
        ([_page()], "not a listing of bucket"),  # what botocore makes of an HTML page
        ([_page(Name="other", Prefix="host-a/manifests/")], "not a listing of bucket"),
        ([_page(Name="bkt", Prefix="host-b/manifests/")], "lists prefix 'host-b/manifests/'"),
        (
            [_page(Name="bkt", Prefix="host-a/manifests/", Contents=[{"Key": "host-b/x"}])],
            "names 'host-b/x', outside the prefix",
        ),
        ([_page(Name="bkt", Prefix="host-a/manifests/", KeyCount=3)], "says 3 keys and lists 0"),
        (
            [_page(Name="bkt", Prefix="host-a/manifests/", IsTruncated=True)],
            "gives no new continuation token",
        ),
        (
            [
                _page(
                    Name="bkt",
                    Prefix="host-a/manifests/",
                    IsTruncated=True,
                    NextContinuationToken="t",
                ),
                _page(
                    Name="bkt",
                    Prefix="host-a/manifests/",
                    IsTruncated=True,
                    NextContinuationToken="t",
                ),
            ],
            "gives no new continuation token",
        ),
    ],
)
def test_a_page_that_is_not_this_listing_is_an_error(
    moto: Endpoint, pages: list[dict[str, object]], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from influx_backupd.offsite.bucket import Bucket
    from influx_backupd.offsite.errors import OffsiteError

    bucket = Bucket(moto.settings(bucket="bkt"))
    answers = iter(pages)
    # the client is the process's (offsite/bucket.py Clients): put back after this test
    monkeypatch.setattr(bucket.client, "list_objects_v2", lambda **_: next(answers))
    with pytest.raises(OffsiteError, match="nothing deleted") as raised:
        list(bucket.ls("manifests"))
    assert said in str(raised.value)
    assert "\n" not in str(raised.value)


def test_list_refuses_an_empty_listing_that_misses_what_this_host_sent(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: `list --offsite` printed "no backups in s3://…" (exit 0) for a well-formed empty
    listing that sync refuses: what this host sent, and a HEAD finds, is missing from it."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 200)
    px = LyingProxy(moto.url, moto.bucket)
    try:
        section = offsite_section(moto, endpoint_url=px.url, retries=1)
        cli = Cli(write_config(tmp_path, sandbox, extra=section))
        sent = cli.json("backup")["id"]
        assert [r["id"] for r in cli.json("list", "--offsite")] == [sent]
        px.lie = "empty"
        for argv in (("list", "--offsite"), ("-q", "list", "--offsite", "--json")):
            listed = cli(*argv)
            assert listed.returncode == 1, (argv, listed.stdout, listed.stderr[-2000:])
            assert listed.stdout == "", "no list shown from it"
            said = [x for x in listed.stderr.splitlines() if x.startswith("influx-backupd: ")]
            assert len(said) == 1 and "Traceback" not in listed.stderr, listed.stderr
            assert "is not complete: it misses backup " + sent in said[0], said[0]
            assert "sent by this host" in said[0], said[0]
        assert px.lies >= 2
        px.lie = None
        assert [r["id"] for r in cli.json("list", "--offsite")] == [sent]
    finally:
        px.close()
