"""Who holds a file under influxd's dirs, read from /proc: open descriptors and mapped files
(influxd mmaps its TSM files, whose descriptors it may close). Real processes, real files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.influxd.server import Influxd

HOLD = """
import mmap, os, sys, time
how, path = sys.argv[1], sys.argv[2]
keep = [os.open('/dev/null', os.O_RDONLY) for _ in range(2000)]  # many descriptors besides
if how in ("open", "mapped"):
    f = open(path, 'r+b')
    if how == "mapped":
        m = mmap.mmap(f.fileno(), 4096)
        f.close()  # only the mapping holds it now
elif how == "dir":  # find or du walking through
    d = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
elif how == "deleted":  # a file of its own, removed while it holds it
    g = open(os.path.dirname(path) + "/scratch", "w")
    os.unlink(os.path.dirname(path) + "/scratch")
print('ready', flush=True)
time.sleep(120)
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "data" / "db" / "rp" / "1").mkdir(parents=True)
    (tmp_path / "data" / "db" / "rp" / "1" / "000000001-000000001.tsm").write_bytes(b"x" * 4096)
    return tmp_path / "data"


@pytest.fixture
def holder(data: Path, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    tsm = data / "db" / "rp" / "1" / "000000001-000000001.tsm"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, request.param, str(tsm)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("holder", ["open", "mapped"], indirect=True)
def test_a_file_held_open_or_only_mapped_is_found_with_its_process(
    data: Path, holder: subprocess.Popen[str]
) -> None:
    found = [h for h in Influxd.holders(None, [data]) if h.pid == holder.pid]  # type: ignore[arg-type]

    assert len(found) == 1, found
    assert found[0].path == str(data / "db" / "rp" / "1" / "000000001-000000001.tsm")
    assert found[0].name.startswith("python")


@pytest.mark.parametrize("holder", ["none", "dir", "deleted"], indirect=True)
def test_a_process_holding_nothing_under_the_dirs_is_not_named(
    data: Path, holder: subprocess.Popen[str]
) -> None:
    """Nor one with a dir open under them (find, du) or a file it deleted while open: psutil's
    open_files() never counted those, and a cold run failed after its stop (the review)."""
    assert [h for h in Influxd.holders(None, [data]) if h.pid == holder.pid] == []  # type: ignore[arg-type]
