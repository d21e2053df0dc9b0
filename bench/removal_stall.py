#!/usr/bin/env python3
"""What removing big files costs small fsync'd appends on the same disk: shutil.rmtree against
core/removal.remove_gently, side by side in one run.

    python bench/removal_stall.py --size-mb 1800 --file-mb 100

Writes --size-mb of incompressible files (--file-mb each, fsynced, then a sync so that only the
removal is measured), and, while one thread appends 200 bytes and fsyncs them every 10 ms (a
WAL), removes the tree one way or the other. Prints the appends' fsync p50, p99, max and how
many took over 10 ms, and how long the removal took. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsync_interference import WalAppender  # a sibling script

from influx_backupd.core.removal import remove_gently


def fill(tree: Path, size_mb: int, file_mb: int) -> None:
    tree.mkdir()
    block = os.urandom(1 << 20)
    for number in range(max(1, size_mb // file_mb)):
        with (tree / f"f{number}").open("wb") as f:
            for _ in range(file_mb):
                f.write(block)
            os.fsync(f.fileno())
    os.sync()
    time.sleep(2)


def measure(wal: Path, remove: Callable[[], None]) -> tuple[list[float], float]:
    with WalAppender(wal, 0.01) as appender:
        time.sleep(1)
        started = time.monotonic()
        remove()
        took = time.monotonic() - started
        time.sleep(2)  # what the removal left to the journal
    return appender.latencies, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1800)
    parser.add_argument("--file-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--dir", default=None, help="on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    ways: dict[str, Callable[[Path], None]] = {
        "shutil.rmtree": shutil.rmtree,
        "remove_gently": remove_gently,
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for run in range(args.runs):
            for name, remove in ways.items():
                tree = Path(tmp) / "tree"
                fill(tree, args.size_mb, args.file_mb)
                lat, took = measure(Path(tmp) / "wal", functools.partial(remove, tree))
                slow = sum(1 for x in lat if x > 0.010)
                print(
                    f"run {run}, {name}: removal {took:.2f} s; {len(lat)} appends, fsync p50 "
                    f"{lat[len(lat) // 2] * 1000:.2f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.2f}"
                    f" ms, max {lat[-1] * 1000:.1f} ms, over 10 ms: {slow}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
