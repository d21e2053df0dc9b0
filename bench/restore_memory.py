#!/usr/bin/env python3
"""The memory of a 1.x chain restore's SELECT INTO, by how the throwaway influxd runs.

    python bench/restore_memory.py --size 1G --increment 200M --runs 2

A hot restore builds the restored server in a throwaway influxd beside the live one, and copies
each increment in with `SELECT * INTO` (hot_restore.py). Two influxd then share the host's
memory. This builds a real server of --size, takes a hot full and, after --increment more
writes, a hot increment (through the CLI), then, for each variant in turn, starts a fresh
throwaway, restores the full and the increment under a temporary name with `influxd restore
-portable` (as the product does), and times the copy while sampling the throwaway's RSS and its
anonymous part (RssAnon: heap, not the page cache of mmapped TSM files, which the kernel can
take back). Variants: Go's default GOGC, GOGC 50, GOGC BESIDE_LIVE_GOGC (what the product
uses), and the default with the copy split into time windows. Rounds alternate the order.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_downtime import generate, parse_size, write_config  # a sibling script

from influx_backupd.influxd.influxql import query, values
from influx_backupd.influxd.sandbox import BESIDE_LIVE_GOGC, Sandbox, influxd_binary

SOURCE, DEST = '"tmp"."autogen"."blob"', '"bench"."autogen"."blob"'
WINDOW_S = 6 * 3600


class Peak:
    """Largest RSS and RssAnon of one process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rss, self.anon = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            self.rss = max(self.rss, int(fields["VmRSS"].split()[0]) << 10)
            self.anon = max(self.anon, int(fields["RssAnon"].split()[0]) << 10)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def backups(work: Path, size: int, more: int) -> tuple[str, str]:
    """A hot full and a hot increment of a generated server: their directories."""
    server = Sandbox(work / "server", binary=influxd_binary() or "/usr/bin/influxd")
    server.write_config()
    server.start()
    conf = write_config(
        work, server, jobs='\n[[job]]\nname = "hot"\nmode = "hot"\nfull_every = "30d"\n'
    )
    try:
        data = generate(server, size)
        full = backup(conf)
        generate(server, size + more, first_ts=1_500_000_000 + data["points"] + 10)
        increment = backup(conf)
    finally:
        server.stop()
    if increment.get("kind") != "incremental":
        raise RuntimeError(f"the second backup is a {increment.get('kind')}, not an increment")
    print(f"  full {full['bytes'] >> 20} MiB, increment {increment['bytes'] >> 20} MiB", flush=True)
    return str(full["archive"]), str(increment["archive"])


def backup(conf: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(conf), "backup", "--json"],
        capture_output=True,
        text=True,
    )
    record: dict[str, Any] = json.loads(done.stdout)
    if record.get("status") != "ok":
        raise RuntimeError(f"backup failed: {record.get('error')}")
    return record


def epoch(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def copy_in(url: str, windowed: bool) -> None:
    def q(statement: str) -> None:
        query(url, statement, db="tmp", timeout=3600)

    if not windowed:
        q(f"SELECT * INTO {DEST} FROM {SOURCE} GROUP BY *")
        return
    first = values(query(url, f"SELECT first(n) FROM {SOURCE}", db="tmp"))[0][0]
    last = values(query(url, f"SELECT last(n) FROM {SOURCE}", db="tmp"))[0][0]
    start, end = epoch(str(first)), epoch(str(last)) + 1
    while start < end:
        q(
            f"SELECT * INTO {DEST} FROM {SOURCE} "
            f"WHERE time >= {start}s AND time < {start + WINDOW_S}s GROUP BY *"
        )
        start += WINDOW_S


def variant(
    work: Path, full: str, increment: str, gogc: int | None, windowed: bool
) -> dict[str, float]:
    root = work / "throwaway"
    shutil.rmtree(root, ignore_errors=True)
    saved = os.environ.pop("GOGC", None)
    if gogc is not None:
        os.environ["GOGC"] = str(gogc)
    throwaway = Sandbox(root, binary=influxd_binary() or "/usr/bin/influxd")
    throwaway.write_config()
    try:
        throwaway.start()
    finally:
        os.environ.pop("GOGC", None)
        if saved is not None:
            os.environ["GOGC"] = saved
    assert throwaway.proc is not None
    try:
        tool = [throwaway.binary, "restore", "-portable", "-host", throwaway.backup_host]
        subprocess.run([*tool, full], check=True, capture_output=True)
        subprocess.run(
            [*tool, "-db", "bench", "-newdb", "tmp", increment], check=True, capture_output=True
        )
        time.sleep(2)
        with Peak(throwaway.proc.pid) as peak:
            started = time.monotonic()
            copy_in(throwaway.url, windowed)
            took = time.monotonic() - started
        points = values(query(throwaway.url, f"SELECT count(n) FROM {DEST}", db="bench"))[0][1]
    finally:
        throwaway.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "copy_s": took,
        "rss_mb": peak.rss / 2**20,
        "anon_mb": peak.anon / 2**20,
        "points": points,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="1G", help="data before the full (default 1G)")
    ap.add_argument("--increment", default="200M", help="data written before the increment")
    ap.add_argument("--runs", type=int, default=2, help="rounds of every variant (default 2)")
    args = ap.parse_args()
    variants: dict[str, tuple[int | None, bool]] = {
        "GOGC default (100)": (None, False),
        "GOGC 50": (50, False),
        f"GOGC {BESIDE_LIVE_GOGC} (the product's)": (BESIDE_LIVE_GOGC, False),
        f"GOGC default, {WINDOW_S // 3600} h windows": (None, True),
    }
    work = Path(tempfile.mkdtemp(prefix="restore-memory-bench-"))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    try:
        print(f"generating {args.size}, then {args.increment} more, with a backup after each ...")
        full, increment = backups(work, parse_size(args.size), parse_size(args.increment))
        names = list(variants)
        for i in range(args.runs):
            for name in names if i % 2 == 0 else names[::-1]:
                result = variant(work, full, increment, *variants[name])
                results[name].append(result)
                print(f"  {name}: {result}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n# python bench/restore_memory.py {' '.join(sys.argv[1:])}")
    print(
        f"| variant (median of {args.runs}) | SELECT INTO | peak RSS | peak RssAnon | RssAnon / default |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    base = statistics.median(r["anon_mb"] for r in results[names[0]])
    for name in names:
        rows = results[name]
        copy_s = statistics.median(r["copy_s"] for r in rows)
        rss = statistics.median(r["rss_mb"] for r in rows)
        anon = statistics.median(r["anon_mb"] for r in rows)
        print(f"| {name} | {copy_s:.1f} s | {rss:.0f} MB | {anon:.0f} MB | {anon / base:.2f} |")
    counts = {r["points"] for rows in results.values() for r in rows}
    print(f"points after every copy: {sorted(counts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
