"""verify stops at the first SIGTERM (systemd sends one, then SIGKILL) even while a worker
thread is deep in a long check: a signal reaches only the main thread."""

from __future__ import annotations

import signal
import struct
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import Cli

_BLOCK = 4_000_000_000  # near a TSM block's u32 size limit
_BLOCKS = 250  # a deep walk over 1 TB: hours of CRC32, unless stopped


def sparse_tsm_archive(path: Path) -> Path:
    """A tar of one TSM file whose index names _BLOCKS blocks of holes: on disk a few KB (the
    archive itself is sparse), to a deep check a walk of every byte."""
    index = struct.pack(">H", 3) + b"k#v" + bytes([1]) + struct.pack(">H", _BLOCKS)
    for n in range(_BLOCKS):
        index += struct.pack(">qqqI", n, n, 5 + n * _BLOCK, _BLOCK)
    index_offset = 5 + _BLOCKS * _BLOCK
    size = index_offset + len(index) + 8
    info = tarfile.TarInfo("data/db/rp/1/000000001-000000001.tsm")
    info.size = size
    with path.open("wb") as out:
        out.write(info.tobuf(tarfile.GNU_FORMAT))
        start = out.tell()
        out.write(struct.pack(">IB", 0x16D116D1, 1))
        out.seek(start + index_offset)
        out.write(index + struct.pack(">Q", index_offset))
        out.seek(start + -(-size // 512) * 512)
        out.write(bytes(2 * 512))
    return path


def _read_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


@pytest.mark.fault("term", "verify signalled mid-check", "one SIGTERM in a deep walk on a worker")
def test_first_sigterm_stops_a_long_deep_check(cli: Cli, tmp_path: Path) -> None:
    archive = sparse_tsm_archive(tmp_path / "big.tar")
    proc = cli.popen("verify", str(archive), "--deep")
    try:
        while _read_bytes(proc.pid) < 1 << 30 and proc.poll() is None:  # in the block walk
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        # one SIGTERM: the walk ends at its next 1 MiB read (without the fix: hours)
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("verify went on after a SIGTERM") from None
    assert proc.returncode == 1, err
    assert "interrupted by SIGTERM" in err
