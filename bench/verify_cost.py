#!/usr/bin/env python3
"""What a check costs: `verify` of a cold archive against reading and hashing the same file.

    python bench/verify_cost.py --size 1G --runs 3

A scheduled `[verify]` reads every kept archive again, so its cost per GB decides how often an
operator can afford it. This builds a real influxd sandbox of --size, takes one cold backup
through the CLI, then times, alternately and with the archive in the page cache: `openssl dgst
-sha256` (reading and hashing every byte with SHA-NI where the CPU has it: the floor for any
check that proves the bytes unchanged; coreutils' sha256sum was 4× slower here),
the CLI's start alone (`--help`: imports, paid once per command), `verify ID` (sha256 against the
catalog, structure, Bolt meta pages, TSM headers and indexes, WAL entry framing), `verify ID
--deep` (also every TSM block's CRC32 and every WAL entry decoded and walked) and, once, `verify
ID --restore-test`. Prints medians of wall and CPU seconds (user + sys, every thread), seconds
per GiB, ratios and the load average before and after the rounds. Not a test: nothing is
asserted.

    python bench/verify_cost.py --wal-heavy --size 400M --runs 5

--wal-heavy: a server whose cache is never snapshotted, so the archive is almost all WAL
(telegraf-like points, as bench/snappy_decode.py writes), where `verify --deep` decodes every
entry's snappy payload.

    env -u PYTHONPATH /opt/influx-backupd/bin/python bench/verify_cost.py --wal-heavy ...

With the package's own interpreter (an installed .deb, or one extracted and byte-compiled as its
postinst does), the CLI is timed as an operator runs it: a checkout's start can cost twice as
much (no byte code under PYTHONDONTWRITEBYTECODE, development tools' imports).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_downtime import generate, parse_size, write_config  # sibling scripts
from snappy_decode import WAL_ONLY, wal_bytes
from snappy_decode import generate as generate_wal

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from influx_backupd.store.archive import sha256_file
from influx_backupd.store.formats import check_archive


def timed(argv: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of one run; its CPU seconds (user + sys, all threads) appended to cpu."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True)
    took = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[-3:]} exited {done.returncode}: {done.stderr[-1500:]}")
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return took


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="1G", help="TSM+WAL to generate (default 1G)")
    ap.add_argument("--runs", type=int, default=3, help="rounds of each check (default 3)")
    ap.add_argument(
        "--wal-heavy", action="store_true", help="keep the data in the WAL (no cache snapshots)"
    )
    ap.add_argument(
        "--no-restore-test",
        dest="restore_test",
        action="store_false",
        help="skip the one `verify --restore-test` (it starts an influxd on the whole archive)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="verify-cost-bench-"))
    server = Sandbox(
        work / "server",
        binary=influxd_binary() or "/usr/bin/influxd",
        extra_data=WAL_ONLY if args.wal_heavy else {},
    )
    server.write_config()
    server.start()
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    loads: list[str] = []
    try:
        print(f"generating {args.size} ...", flush=True)
        if args.wal_heavy:
            points = generate_wal(server, parse_size(args.size))
            print(f"  {points} points, {wal_bytes(server.wal) / 2**20:.0f} MiB of WAL", flush=True)
        else:
            print(f"  {generate(server, parse_size(args.size))}", flush=True)
        conf = write_config(work, server)
        cli = [sys.executable, "-m", "influx_backupd", "--config", str(conf)]
        done = subprocess.run([*cli, "backup", "--job", "direct", "--json"], capture_output=True)
        record = json.loads(done.stdout)
        if record.get("status") != "ok":
            raise RuntimeError(f"backup failed: {record.get('error')}")
        archive, run_id = Path(record["archive"]), record["id"]
        size = archive.stat().st_size
        print(f"  archive {size / 2**30:.2f} GiB", flush=True)
        # No check needs the server, and a WAL-heavy one holds its whole WAL in memory (15 GB
        # RSS at 2 GiB): running beside the rounds, it evicted the archive from the page cache.
        server.stop()
        checks = {
            "openssl sha256": ["openssl", "dgst", "-sha256", str(archive)],
            "CLI start (--help)": [*cli, "--help"],
            "verify": [*cli, "verify", run_id],
            "verify --deep": [*cli, "verify", run_id, "--deep"],
        }
        timed(checks["openssl sha256"])  # untimed: the archive into the page cache
        loads = [load()]
        for i in range(args.runs):
            names = list(checks) if i % 2 == 0 else list(reversed(checks))
            for name in names:
                times.setdefault(name, []).append(timed(checks[name], cpu.setdefault(name, [])))
            print(
                f"  round {i + 1}: { {n: round(t[-1], 3) for n, t in times.items()} }", flush=True
            )
        # The same work in this process, without the CLI around it: where a check's time goes.
        inner = {
            "sha256 (hashlib)": lambda: sha256_file(archive),
            "check_archive + sha256": lambda: check_archive(archive, sha256=True),
            "check_archive deep + sha256": lambda: check_archive(archive, deep=True, sha256=True),
        }
        for i in range(args.runs):
            for name in list(inner) if i % 2 == 0 else list(reversed(inner)):
                wall, spent = time.monotonic(), time.process_time()
                inner[name]()
                times.setdefault(f"in process: {name}", []).append(time.monotonic() - wall)
                cpu.setdefault(f"in process: {name}", []).append(time.process_time() - spent)
        loads.append(load())
        if args.restore_test:
            try:
                times["verify --restore-test"] = [timed([*cli, "verify", run_id, "--restore-test"])]
            except RuntimeError as exc:  # e.g. its throwaway influxd OOM-killed on a busy machine
                print(f"  restore test failed, left out: {str(exc)[-300:]}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n# python bench/verify_cost.py {' '.join(sys.argv[1:])}")
    print(f"# {size / 2**30:.2f} GiB archive; load average (1, 5, 15 min) {' -> '.join(loads)}")
    floor = statistics.median(times["openssl sha256"])
    print(
        f"| check (median of {args.runs}; restore test once) | seconds | CPU seconds | s per GiB "
        "| / openssl sha256 |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        used = f"{statistics.median(cpu[name]):.2f}" if name in cpu else ""
        print(
            f"| {name} | {median:.2f} | {used} | {median / (size / 2**30):.2f} "
            f"| {median / floor:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
