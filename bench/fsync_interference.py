#!/usr/bin/env python3
"""What a paced bulk writer that fsyncs each file costs small fsync'd appends on the same disk:
the shape of `restore --database` seen from the live server's WAL, without influxd.

    python bench/fsync_interference.py --rates 0,10,20,50 --file-mb 20 --flush-behind off,on

One thread appends 200 bytes and fsyncs them every 20 ms (a WAL taking one write batch at a
time); another writes files of --file-mb MiB at the given MiB/s and fsyncs each when it is
whole (as influxd does with each TSM file of an imported shard). With flush-behind on, the
restore's FlushBehind watches the bulk writer's directory from a third thread, as it watches
the live server's during `restore --database`. Prints the appends' fsync p50, p99 and max for
each rate and setting, side by side in one run, and the p99 ratio against no bulk writer.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

from influx_backupd.influxd.writeback import FlushBehind


class WalAppender:
    """While in use, a thread appends 200 bytes to path and fsyncs them every `every` seconds,
    as a WAL taking one write batch at a time; latencies: each append's, sorted at the end."""

    def __init__(self, path: Path, every: float) -> None:
        self.path, self.every = path, every
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                os.write(fd, b"x" * 200)
                os.fsync(fd)
                self.latencies.append(time.monotonic() - started)
                time.sleep(self.every)
        finally:
            os.close(fd)

    def __enter__(self) -> WalAppender:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.latencies.sort()


def run(
    directory: Path, rate_mib: float, file_mb: int, seconds: float, flush_behind: bool
) -> list[float]:
    bulk_dir = directory / "bulk"
    bulk_dir.mkdir(exist_ok=True)
    stop = threading.Event()

    def bulk() -> None:
        block, rate = os.urandom(1 << 20), rate_mib * (1 << 20)
        written, started, number = 0, time.monotonic(), 0
        while not stop.is_set():
            path = bulk_dir / f"bulk{number}"
            with path.open("wb") as f:
                for _ in range(file_mb):
                    if stop.is_set():
                        break
                    f.write(block)
                    written += len(block)
                    wait = started + written / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                f.flush()
                os.fsync(f.fileno())
            path.unlink()
            number += 1

    writer = threading.Thread(target=bulk)
    behind = FlushBehind(bulk_dir) if flush_behind else contextlib.nullcontext()
    with WalAppender(directory / "wal", 0.02) as wal, behind:
        if rate_mib > 0:
            writer.start()
        time.sleep(seconds)
        stop.set()
        if rate_mib > 0:
            writer.join()
    return wal.latencies


def quantile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="0,10,20,50", help="bulk writer MiB/s (0: none)")
    parser.add_argument("--file-mb", type=int, default=20, help="bulk file size, fsynced whole")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--flush-behind", default="off,on", help="off, on or off,on")
    parser.add_argument("--dir", default=None, help="on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        baseline = None
        settings = args.flush_behind.split(",")
        for rate in (float(r) for r in args.rates.split(",")):
            for setting in settings if rate > 0 else settings[:1]:
                lat = run(Path(tmp), rate, args.file_mb, args.seconds, setting == "on")
                p99 = quantile(lat, 99)
                baseline = baseline if baseline is not None else p99
                behind = f", flush-behind {setting}" if rate > 0 else ""
                print(
                    f"bulk {rate:g} MiB/s{behind}, {args.file_mb} MiB files: {len(lat)} appends, fsync p50 "
                    f"{quantile(lat, 50):.2f} ms, p99 {p99:.2f} ms, max {lat[-1] * 1000:.1f} ms, "
                    f"p99 / first row {p99 / baseline:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
