#!/usr/bin/env python3
"""Why a hot run cannot hide its sha256 behind the tool on a small machine (issue 6).

    python bench/hash_interference.py --size 1G --runs 3

A bare `influxd backup -portable` of a real sandbox server, timed alone and with a thread
hashing a page-cached file of the same size at the same time, as our hot run does while the
tool writes: at normal priority, at nice 19, and under SCHED_IDLE (runs only on an idle core).
If lowering the hasher's priority gave the tool its speed back, the hot run could do the same.
Rounds alternate the variants. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_downtime import generate, parse_size  # a sibling script, not a package

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary

VARIANTS = ("alone", "nice 0", "nice 19", "SCHED_IDLE")


def hasher(path: Path, variant: str, stop: threading.Event, hashed: list[int]) -> None:
    tid = threading.get_native_id()
    if variant == "nice 19":
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    elif variant == "SCHED_IDLE":
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while not stop.is_set():
            chunk = os.pread(fd, 1 << 20, offset)
            if not chunk:
                offset = 0  # keep hashing until the tool is done, as the follower would
                continue
            digest.update(chunk)
            offset += len(chunk)
            hashed[0] += len(chunk)
    finally:
        os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="1G", help="TSM+WAL to generate (default 1G)")
    ap.add_argument("--runs", type=int, default=3, help="rounds of the four variants")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="hash-bench-"))
    sandbox = Sandbox(work / "server", binary=influxd_binary() or "/usr/bin/influxd")
    sandbox.write_config()
    sandbox.start()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        print(f"generating {args.size} ...", flush=True)
        print(f"  {generate(sandbox, size)}", flush=True)
        page_cached = work / "hashed.bin"
        with open(page_cached, "wb") as fh:
            for _ in range(max(1, size >> 20)):
                fh.write(os.urandom(1 << 20))
        for i in range(args.runs):
            order = VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                os.sync()
                stop, hashed = threading.Event(), [0]
                thread = None
                if variant != "alone":
                    thread = threading.Thread(
                        target=hasher, args=(page_cached, variant, stop, hashed)
                    )
                    thread.start()
                dest = work / "bare"
                started = time.monotonic()
                subprocess.run(
                    [
                        sandbox.binary,
                        "backup",
                        "-portable",
                        "-host",
                        sandbox.backup_host,
                        str(dest),
                    ],
                    check=True,
                    capture_output=True,
                )
                took = time.monotonic() - started
                stop.set()
                if thread is not None:
                    thread.join()
                shutil.rmtree(dest)
                times[variant].append(took)
                rates[variant].append(hashed[0] / took / 1e9)
                print(
                    f"  #{i + 1} {variant:<10} bare {took:.3f}s, hashed {rates[variant][-1]:.2f} GB/s"
                )
    finally:
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    alone = statistics.median(times["alone"])
    print(f"\n# python bench/hash_interference.py {' '.join(sys.argv[1:])}")
    print(f"load average after {os.getloadavg()}")
    print("| hasher beside the tool | bare influxd backup | / alone | hashed while it ran |")
    print("| --- | ---: | ---: | ---: |")
    for variant in VARIANTS:
        t = statistics.median(times[variant])
        r = statistics.median(rates[variant])
        print(f"| {variant} | {t:.3f} s | {t / alone:.2f} | {r:.2f} GB/s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
