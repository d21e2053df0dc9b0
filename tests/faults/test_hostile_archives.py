"""Class 4: archives that restore must refuse are refused by verify too (one safety check), every
input read from a backup is validated (a clear line naming the file, never ValueError/TypeError),
and whatever can be checked is checked before influxd is stopped.

One real influxd 1.6 with one cold and one hot (1.x portable) backup serves every variant.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store import sparse
from tests.conftest import STAND_INS, Cli, whole, write_config
from tests.faults.conftest import COLD_AND_HOT, FaultResult, backed_up, one_line

JOBS = COLD_AND_HOT
POINTS = 2_000


@dataclass
class World:
    root: Path
    server: Sandbox
    cli: Cli
    cold: Path
    hot: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with backed_up(tmp_path_factory, "hostile", POINTS) as got:
        cold, hot = got.runs
        yield World(got.root, got.server, got.cli, Path(cold["archive"]), Path(hot["archive"]))


def _settle(world: World, influxd: list[int], result: FaultResult) -> None:
    """Records the points lost, then: influxd is the very process it was (never stopped)."""
    result.lost(points=POINTS - world.server.count("metrics"))
    assert world.server.pids() == influxd, "influxd was stopped"


def _refused_by_both(world: World, path: Path, says: str) -> tuple[str, str]:
    """verify PATH fails naming `says`; restore PATH refuses in one line naming it; returns both."""
    verified = world.cli("verify", str(path), "--json")
    assert "Traceback" not in verified.stderr, verified.stderr[-3000:]
    assert verified.returncode == 1, (verified.returncode, verified.stdout, verified.stderr[-2000:])
    errors = " ".join(json.loads(verified.stdout)[0]["errors"])
    assert says in errors, errors
    restored = world.cli("restore", str(path), "--yes")
    line = one_line(restored.stderr)
    assert restored.returncode == 1 and says in line, (restored.returncode, line)
    return errors, line


# -- cold archives with members that could write outside the target -------------------------------


def _reg(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = 5
    return info, b"evil\n"


def _link(name: str, kind: bytes, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def _device(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = kind, 1, 3
    return info, b""


EVIL = f"influx-backupd-evil-{uuid.uuid4().hex[:8]}"
HOSTILE_MEMBERS: dict[str, Callable[[], tuple[tarfile.TarInfo, bytes]]] = {
    "a '..' member": lambda: _reg(f"data/../../../../tmp/{EVIL}"),
    "an absolute member": lambda: _reg(f"/tmp/{EVIL}"),
    "a hard link to /etc/passwd": lambda: _link("data/passwd", tarfile.LNKTYPE, "/etc/passwd"),
    "a hard link up the tree": lambda: _link("data/up", tarfile.LNKTYPE, "../../etc/passwd"),
    "a symlink to /etc": lambda: _link("data/etc", tarfile.SYMTYPE, "/etc"),
    "a symlink up the tree": lambda: _link("wal/up", tarfile.SYMTYPE, "../../../../etc"),
    "a character device": lambda: _device("data/null", tarfile.CHRTYPE),
    "a block device": lambda: _device("data/sda", tarfile.BLKTYPE),
    "a fifo": lambda: _device("meta/fifo", tarfile.FIFOTYPE),
    "an unexpected top-level entry": lambda: _reg("etc/cron.d/evil"),
}


def _with_member(good: Path, dest: Path, extra: tuple[tarfile.TarInfo, bytes]) -> None:
    """The good archive's members, one hostile member in the middle (after meta/)."""
    with tarfile.open(good) as src, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        members = src.getmembers()
        for index, info in enumerate(members):
            out.addfile(*whole(src, info))
            if index == 1:
                out.addfile(extra[0], io.BytesIO(extra[1]) if extra[1] else None)


@pytest.mark.fault("4", "hostile cold archive")
@pytest.mark.parametrize("hostile", list(HOSTILE_MEMBERS))
def test_verify_and_restore_refuse_the_same_unsafe_members(
    world: World, hostile: str, fault_result: FaultResult
) -> None:
    influxd = world.server.pids()
    info, data = HOSTILE_MEMBERS[hostile]()
    path = world.root / f"hostile-{uuid.uuid4().hex[:6]}.tar"
    _with_member(world.cold, path, (info, data))
    errors, line = _refused_by_both(world, path, repr(info.name))
    assert "unsafe" in errors and "unsafe" in line, (errors, line)
    assert not Path("/tmp", EVIL).exists()
    _settle(world, influxd, fault_result)


# -- 1.x hot dirs whose manifest lies ------------------------------------------------------------


def _set_meta_size(value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(manifest: dict[str, Any]) -> Any:
        manifest["meta"]["size"] = value
        return manifest

    return edit


def _set_first_shard(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(manifest: dict[str, Any]) -> Any:
        manifest["files"][0][key] = value
        return manifest

    return edit


MANIFESTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "meta size is a word": _set_meta_size("many"),
    "meta size is null": _set_meta_size(None),
    "meta size is true": _set_meta_size(True),
    "meta size is 1e400 (inf)": _set_meta_size("__INF__"),
    "meta size is 10**40": _set_meta_size(10**40),
    "meta size is negative": _set_meta_size(-7),
    "meta size is a float": _set_meta_size(12.5),
    "shard size is a string of digits": _set_first_shard("size", "1024"),
    "shard size is a list": _set_first_shard("size", [1]),
    "shard fileName is a number": _set_first_shard("fileName", 5),
    "shard fileName climbs out": _set_first_shard("fileName", "../../../etc/passwd"),
    # names that would make paths outside data/ and wal/, or a shard `influxd restore` would
    # skip without a word (the meta does not place it there): the database served empty
    "shard database climbs out": _set_first_shard("database", "../../../etc"),
    "shard database holds a slash": _set_first_shard("database", "a/b"),
    "shard policy is '..'": _set_first_shard("policy", ".."),
    "shard database is one the meta does not place it in": _set_first_shard("database", "other"),
    "shardID is a string": _set_first_shard("shardID", "1"),
    "shardID is negative": _set_first_shard("shardID", -1),
    "shardID the meta does not have": _set_first_shard("shardID", 987654),
    "a shard listed twice": lambda m: {**m, "files": [*m["files"], m["files"][0]]},
    "files is null": lambda m: {**m, "files": None},
    "files holds a number": lambda m: {**m, "files": [5]},
    "meta is a string": lambda m: {**m, "meta": "meta"},
    "the manifest is a list": lambda m: [m],
}


def _copy_hot(world: World, name: str) -> tuple[Path, Path]:
    """The hot backup dir, copied without its record beside it (restored alone, as a full)."""
    dest = world.root / "copies" / f"hotjob-{uuid.uuid4().hex[:8]}"
    shutil.copytree(world.hot, dest)
    manifest = next(dest.glob("*.manifest"))
    return dest, manifest


@pytest.mark.fault("4", "malformed 1.x hot manifest")
@pytest.mark.parametrize("edit", list(MANIFESTS))
def test_a_malformed_hot_manifest_is_named_never_a_traceback(
    world: World, edit: str, fault_result: FaultResult
) -> None:
    influxd = world.server.pids()
    path, manifest = _copy_hot(world, edit)
    raw = json.loads(manifest.read_bytes())
    edited = MANIFESTS[edit](raw)
    text = json.dumps(edited)
    text = text.replace('"__INF__"', "1e400")
    manifest.write_text(text)
    _refused_by_both(world, path, manifest.name)
    _settle(world, influxd, fault_result)


@pytest.mark.fault("4", "malformed 1.x hot manifest", "the manifest is binary garbage")
def test_a_manifest_that_is_not_text_is_named(world: World, fault_result: FaultResult) -> None:
    influxd = world.server.pids()
    path, manifest = _copy_hot(world, "binary")
    manifest.write_bytes(b"\xff\xfe\x00garbage{")
    _refused_by_both(world, path, manifest.name)
    _settle(world, influxd, fault_result)


# -- 0.9 snapshots (a tar: manifest first) -------------------------------------------------------


def _snapshot09(dest: Path, manifest: bytes, members: dict[str, bytes]) -> Path:
    with tarfile.open(dest, "w") as out:
        for name, data in {"manifest": manifest, **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dest


SNAPSHOT_MANIFESTS: dict[str, bytes] = {
    "size is a word": b'{"files": [{"name": "meta", "size": "big"}]}',
    "size is null": b'{"files": [{"name": "meta", "size": null}]}',
    "size is 1e400": b'{"files": [{"name": "meta", "size": 1e400}]}',
    "size is an object": b'{"files": [{"name": "meta", "size": {"n": 4}}]}',
    "files is an object": b'{"files": {"name": "meta"}}',
    "an entry is a string": b'{"files": ["meta"]}',
    "not JSON": b"{files: meta",
}


@pytest.mark.fault("4", "malformed 0.9 snapshot manifest")
@pytest.mark.parametrize("variant", list(SNAPSHOT_MANIFESTS))
def test_a_malformed_09_manifest_is_named_never_a_traceback(
    world: World, variant: str, fault_result: FaultResult
) -> None:
    influxd = world.server.pids()
    path = _snapshot09(
        world.root / f"snap-{uuid.uuid4().hex[:6]}", SNAPSHOT_MANIFESTS[variant], {"meta": b"meta"}
    )
    _refused_by_both(world, path, str(path))
    _settle(world, influxd, fault_result)


# -- the other flavour: found before influxd is stopped -----------------------------------------


@pytest.mark.fault(
    "4", "backup of the other flavour", "a well-formed 0.9 snapshot, influxd 1.6's tool"
)
def test_a_09_snapshot_is_refused_by_a_1x_tool_before_influxd_is_stopped(
    world: World, fault_result: FaultResult
) -> None:
    influxd = world.server.pids()
    meta = b"opaque 0.9 meta"
    path = _snapshot09(
        world.root / f"snap-good-{uuid.uuid4().hex[:6]}",
        json.dumps({"files": [{"name": "meta", "size": len(meta), "index": 1}]}).encode(),
        {"meta": meta},
    )
    done = world.cli("restore", str(path), "--yes")
    line = one_line(done.stderr)
    assert done.returncode == 1 and "0.9" in line and "nothing touched" in line, line
    _settle(world, influxd, fault_result)


@pytest.mark.fault(
    "4", "backup of the other flavour", "a 1.x portable backup, a 0.9 influxd binary"
)
def test_a_1x_backup_is_refused_by_a_09_tool_before_influxd_is_stopped(
    world: World, fault_result: FaultResult
) -> None:
    influxd = world.server.pids()
    home = world.root / f"tool09-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    config = write_config(
        home, world.server, influxd={"binary": str(STAND_INS / "influxd09")}, jobs=JOBS
    )
    done = Cli(config)("restore", str(world.hot), "--yes")
    line = one_line(done.stderr)
    assert done.returncode == 1 and "nothing touched" in line and "0.9" in line, line
    _settle(world, influxd, fault_result)


# -- a record beside a backup that lies about its types -------------------------------------------

SIDECARS: dict[str, dict[str, Any]] = {
    "bytes is a word": {"bytes": "many"},
    "started_at is null": {"started_at": None},
    "kind is sideways": {"kind": "sideways"},
    "db_counts is a list": {"db_counts": [1, 2]},
    "parent_id is a number": {"parent_id": 7},
}


@pytest.mark.fault("4", "a record beside a backup of the wrong shape")
@pytest.mark.parametrize("lie", list(SIDECARS))
def test_a_record_beside_a_backup_with_wrong_types_is_named(
    world: World, lie: str, fault_result: FaultResult
) -> None:
    influxd = world.server.pids()
    dest = world.root / "copies" / f"nightly-{uuid.uuid4().hex[:8]}.tar"
    dest.parent.mkdir(exist_ok=True)
    shutil.copyfile(world.cold, dest)
    record = json.loads(Path(str(world.cold) + ".json").read_text())
    Path(str(dest) + ".json").write_text(json.dumps({**record, **SIDECARS[lie]}))
    _refused_by_both(world, dest, "not a usable backup record")
    _settle(world, influxd, fault_result)


# -- members verify and every restore form must refuse alike, before anything is written ---------


def _refused_everywhere(world: World, path: Path, member: str, says: str) -> None:
    """verify (with and without its restore test) fails naming member for that one reason; the
    whole-server restore, --target and --database each refuse in one line naming it, exit 1;
    the live influxd is the very process it was and answers; no target dir was made."""
    influxd = world.server.pids()
    for extra in ([], ["--restore-test"]):
        verified = world.cli("verify", str(path), "--json", *extra)
        assert "Traceback" not in verified.stderr, verified.stderr[-3000:]
        assert verified.returncode == 1, (extra, verified.stdout, verified.stderr[-2000:])
        errors = json.loads(verified.stdout)[0]["errors"]
        assert len(errors) == 1 and repr(member) in errors[0] and says in errors[0], errors
    target = world.root / f"look-{uuid.uuid4().hex[:8]}"
    for form in (["--yes"], ["--target", str(target)], ["--database", "metrics", "--as", "m2"]):
        done = world.cli("restore", str(path), *form)
        line = one_line(done.stderr)
        assert done.returncode == 1, (form, done.returncode, line)
        assert repr(member) in line and says in line, (form, line)
        assert world.server.pids() == influxd, f"influxd was stopped by restore {form}"
        assert world.server.ping(), f"influxd does not answer after restore {form}"
    assert not target.exists()
    assert "m2" not in world.server.databases()


@pytest.mark.fault("4", "hostile cold archive")
@pytest.mark.parametrize(
    "form",
    [
        pytest.param(["--format=gnu"], id="an old GNU sparse member of 2 GB"),
        pytest.param(
            ["--format=pax", "--sparse-version=0.0"], id="a PAX 0.0 sparse member of 2 GB"
        ),
        pytest.param(
            ["--format=pax", "--sparse-version=0.1"], id="a PAX 0.1 sparse member of 2 GB"
        ),
    ],
)
def test_a_sparse_member_is_refused_by_verify_and_every_restore(
    world: World, tmp_path: Path, fault_result: FaultResult, form: list[str]
) -> None:
    """A few KB of tar that unpack to 2 GB of zeros in GNU tar's old sparse form: refused from
    its header alone (our cold job writes files with holes as PAX 1.0 sparse members only),
    never unpacked into the live, target or scratch dirs."""
    name = f"zeros-{uuid.uuid4().hex[:8]}"
    big = tmp_path / name
    with open(big, "wb") as fh:
        fh.truncate(2 << 30)  # a hole: no disk used
    # tar -r would append in the archive's own form (PAX 1.0): made apart, then joined
    member = tmp_path / "member.tar"
    subprocess.run(
        ["tar", "--sparse", *form, f"--transform=s,^{name}$,data/{name},", "-cf", member, name],
        cwd=tmp_path,
        check=True,
    )
    path = _joined(
        world.cold, member.read_bytes(), world.root / f"sparse-{uuid.uuid4().hex[:6]}.tar"
    )
    assert path.stat().st_size < 64 << 20
    _refused_everywhere(world, path, f"data/{name}", "sparse")
    found = list(world.root.rglob(f"{name}*"))
    assert not found, found
    _settle(world, world.server.pids(), fault_result)


def _with_pax_sparse(
    world: World, name: str, runs: list[tuple[int, int]], size: int, stored: int | None = None
) -> Path:
    """A copy of the cold archive with one more member: a PAX 1.0 sparse file (the form our
    writer gives a file with holes) whose map is runs, size bytes in all, and stored bytes of
    data (default: what the runs say), then an ordinary member."""
    info = tarfile.TarInfo(name)
    info.size = size
    block_map = sparse.sparse_map(runs, size)
    data = b"x" * (sum(length for _, length in runs) if stored is None else stored)
    member = sparse.sparse_header(info, len(block_map) + len(data)) + block_map + data
    member += bytes(-len(member) % tarfile.BLOCKSIZE)
    after, contents = _reg(f"{name}-after")
    member += after.tobuf(tarfile.PAX_FORMAT) + contents + bytes(tarfile.BLOCKSIZE - len(contents))
    path = world.root / f"pax-sparse-{uuid.uuid4().hex[:6]}.tar"
    return _joined(world.cold, member + bytes(2 * tarfile.BLOCKSIZE), path)


def _joined(good: Path, tail: bytes, path: Path) -> Path:
    """path: the members of the archive good, then tail (members and an end marker)."""
    with tarfile.open(good) as tar:
        for _ in tar:
            pass
        end = tar.offset
    with open(good, "rb") as src, open(path, "wb") as out:
        out.write(src.read(end))
        out.write(tail)
        out.write(bytes(-out.tell() % tarfile.RECORDSIZE))
    return path


@pytest.mark.fault("4", "hostile cold archive")
@pytest.mark.parametrize(
    ("runs", "size"),
    [
        pytest.param([(0, 4096), (1024, 4096)], 1 << 20, id="a PAX sparse map whose runs overlap"),
        pytest.param([(0, 4096), (2 << 20, 4096)], 1 << 20, id="a PAX sparse run past its size"),
    ],
)
def test_a_crafted_sparse_map_is_refused_by_verify_and_every_restore(
    world: World, fault_result: FaultResult, runs: list[tuple[int, int]], size: int
) -> None:
    """A file with holes is accepted in the one form our writer makes (PAX 1.0, runs in order
    inside the file): a map that would have tarfile write a run twice or past the end is not."""
    name = f"data/holes-{uuid.uuid4().hex[:8]}"
    path = _with_pax_sparse(world, name, runs, size)
    _refused_everywhere(world, path, name, "sparse file whose map")
    _settle(world, world.server.pids(), fault_result)


@pytest.mark.fault("4", "hostile cold archive")
@pytest.mark.parametrize(
    ("size", "stored"),
    [
        pytest.param(4 << 20, 512, id="a PAX sparse map claiming more data than is stored"),
        pytest.param(10**30, None, id="a PAX sparse file of 10**30 bytes"),
    ],
)
def test_a_sparse_map_the_archive_cannot_back_is_refused_by_verify_and_every_restore(
    world: World, fault_result: FaultResult, size: int, stored: int | None
) -> None:
    """tarfile would hand out the next member's header as the file's data, or restore would
    make a file larger than any filesystem: verify says what restore says (before: verify ok)."""
    name = f"data/claims-{uuid.uuid4().hex[:8]}"
    path = _with_pax_sparse(world, name, [(0, 6000)], size, stored)
    influxd = world.server.pids()
    errors, line = _refused_by_both(world, path, "sparse file of")
    assert repr(name) in errors and repr(name) in line, (errors, line)
    _settle(world, influxd, fault_result)


@pytest.mark.fault("4", "hostile cold archive", "a PAX sparse map cut short (no newline)")
def test_a_sparse_map_cut_short_is_a_damaged_archive_in_one_line(
    world: World, fault_result: FaultResult
) -> None:
    """tarfile itself raises ValueError on it (not TarError): verify and restore say the
    archive is damaged in one line, no traceback, nothing stopped."""
    info = tarfile.TarInfo("data/cut")
    info.size = 1 << 20
    member = sparse.sparse_header(info, tarfile.BLOCKSIZE) + b"7" * tarfile.BLOCKSIZE
    tail = member + bytes(2 * tarfile.BLOCKSIZE)
    path = _joined(world.cold, tail, world.root / f"cut-map-{uuid.uuid4().hex[:6]}.tar")
    influxd = world.server.pids()
    _refused_by_both(world, path, "damaged tar header")
    _settle(world, influxd, fault_result)


def _dir(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, b""


def _contiguous(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info, data = _reg(name)
    info.type = tarfile.CONTTYPE
    return info, data


# (the member added, the name the refusal gives, what it says)
MISSHAPEN: dict[str, tuple[Callable[[], tuple[tarfile.TarInfo, bytes]], str, str]] = {
    "meta/meta.db twice": (lambda: _reg("meta/meta.db"), "meta/meta.db", "second member"),
    "./meta/meta.db beside meta/meta.db": (
        lambda: _reg("./meta/meta.db"),
        "./meta/meta.db",
        "second member",
    ),
    "meta/ again": (lambda: _dir("meta/"), "meta", "second member"),
    "a dir where meta/meta.db is": (lambda: _dir("meta/meta.db"), "meta/meta.db", "second"),
    "a file below meta/meta.db": (lambda: _reg("meta/meta.db/x"), "meta/meta.db/x", "below"),
    "a file where meta/ is": (lambda: _reg("meta"), "meta", "must be a directory"),
    "a contiguous file": (lambda: _contiguous("meta/extra"), "meta/extra", "member type"),
    "influxdb.conf as a dir": (lambda: _dir("influxdb.conf"), "influxdb.conf", "regular file"),
}


@pytest.mark.fault("4", "hostile cold archive", "a member of no shape our cold job writes")
@pytest.mark.parametrize("variant", list(MISSHAPEN))
def test_a_misshapen_listing_is_refused_by_verify_and_every_restore(
    world: World, variant: str, fault_result: FaultResult
) -> None:
    """What extraction would meet half-way ('File exists') is refused from the headers, by
    verify as by restore: a name twice (./a is a), a member below a file, a type we never write."""
    make, member, says = MISSHAPEN[variant]
    path = world.root / f"misshapen-{uuid.uuid4().hex[:6]}.tar"
    _with_member(world.cold, path, make())
    _refused_everywhere(world, path, member, says)
    _settle(world, world.server.pids(), fault_result)


@pytest.mark.fault("4", "damaged cold archive", "cut at a member boundary, no record beside it")
def test_an_archive_cut_between_members_is_refused_by_verify_and_restore(
    world: World, fault_result: FaultResult
) -> None:
    """tarfile reads a tar cut right after a member as complete: verify looked for the
    end-of-archive marker, restore did not, and restored what was left of the server."""
    influxd = world.server.pids()
    with tarfile.open(world.cold) as tar:
        members = tar.getmembers()
    cut = members[len(members) // 2].offset  # a header's start: the members before it whole
    path = world.root / f"cut-{uuid.uuid4().hex[:6]}.tar"
    path.write_bytes(world.cold.read_bytes()[:cut])
    _refused_by_both(world, path, "end-of-archive marker")
    assert world.server.ping()
    _settle(world, influxd, fault_result)


# -- an archived influxdb.conf that writes its own sections ---------------------------------------

INJECTED = (
    b'[data]\n"x = 1\\n[[udp]]\\n  enabled = true\\n  bind-address = \\"0.0.0.0:{port}\\"'
    b'\\n  database" = "evil"\n'
    b'[coordinator]\n"y = 2\\n[[graphite]]\\n  enabled = true\\n  bind-address = \\":{port}\\"'
    b'\\n  z" = 3\n'
)


@pytest.mark.fault("4", "hostile cold archive", "influxdb.conf keys that open sections")
def test_an_archived_conf_cannot_write_sections_into_the_servers_we_start(
    world: World, fault_result: FaultResult
) -> None:
    """Before: keys of the archive's [data] and [coordinator] were copied into the config of
    the server `restore --target --start` and restore tests start, unquoted: a key holding a
    newline opened a [[udp]] listener on every interface."""
    from influx_backupd.influxd.sandbox import free_port

    influxd = world.server.pids()
    port = free_port()
    conf = INJECTED.replace(b"{port}", str(port).encode())
    hostile = world.root / f"conf-{uuid.uuid4().hex[:6]}.tar"
    with tarfile.open(world.cold) as src, tarfile.open(hostile, "w") as out:
        for info in src.getmembers():
            if info.name == "influxdb.conf":
                info.size = len(conf)
                out.addfile(info, io.BytesIO(conf))
            else:
                out.addfile(*whole(src, info))
    target = world.root / f"look-{uuid.uuid4().hex[:6]}"
    done = world.cli("restore", str(hostile), "--target", str(target), "--start", timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    pid = int(done.stdout.split("influxd pid ")[1].split(",")[0])
    try:
        written = (target / "influxdb.conf").read_text()
        assert "[[udp]]" not in written and "[[graphite]]" not in written, written
        import psutil

        ports = {c.laddr.port for c in psutil.Process(pid).net_connections("all")}
        assert port not in ports, "the archive's conf opened a listener"
    finally:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    _settle(world, influxd, fault_result)


@pytest.mark.fault("4", "hostile cold archive", "every member at mode 06777")
def test_modes_from_an_archive_are_capped_at_influxds_own(
    world: World, fault_result: FaultResult
) -> None:
    """Set-id, group- and other-writable members: restored no wider than influxd makes its
    dirs (0755) and files (0644), never writable by anyone else."""
    influxd = world.server.pids()
    path = world.root / f"modes-{uuid.uuid4().hex[:6]}.tar"
    with tarfile.open(world.cold) as src, tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
        for info in src.getmembers():
            if not info.issym():
                info.mode = 0o6777
            out.addfile(*whole(src, info))
    target = world.root / f"look-{uuid.uuid4().hex[:8]}"
    done = world.cli("restore", str(path), "--target", str(target))
    assert done.returncode == 0, done.stderr[-2000:]
    wide = {
        str(p.relative_to(target)): oct(p.lstat().st_mode & 0o7777)
        for p in [target, *target.rglob("*")]
        if not p.is_symlink() and p.lstat().st_mode & 0o7022
    }
    assert wide == {}
    assert (target / "data" / "metrics").stat().st_mode & 0o777 == 0o755
    meta = target / "meta" / "meta.db"
    assert meta.stat().st_mode & 0o777 == 0o644
    _settle(world, influxd, fault_result)
