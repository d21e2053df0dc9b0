#!/usr/bin/env python3
"""What an increment costs at restore time: a 1.x hot full restored alone, against the same full
plus one increment (restored under a temporary name and copied in with SELECT * INTO).

    python bench/hot_restore.py --size 500M --increment 50M --runs 2

Builds a real influxd sandbox of --size, takes a hot full through the CLI, writes --increment
more (new points, same database), takes a hot increment, then restores the full and the chain
alternately through the CLI into the live sandbox, checking the point count after each. Prints
the medians, the ratio, SELECT INTO's rate, and the peak RSS of every influxd during each
restore. Not a test: nothing is asserted.
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
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_downtime import generate, parse_size, write_config  # a sibling script

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(conf), *args],
        capture_output=True,
        text=True,
    )


def count(sandbox: Sandbox) -> int:
    series = sandbox.query("SELECT count(n) FROM blob", db="bench")["results"][0]["series"]
    return int(series[0]["values"][0][1])


class PeakRss:
    """The largest sum of RSS over every influxd process, sampled every 0.1 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            total = 0
            for proc in psutil.process_iter(["name", "memory_info"]):
                if proc.info["name"] == "influxd" and proc.info["memory_info"] is not None:
                    total += proc.info["memory_info"].rss
            self.peak = max(self.peak, total)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def restore(conf: Path, sandbox: Sandbox, backup_id: str) -> dict[str, Any]:
    os.sync()
    with PeakRss() as rss:
        started = time.monotonic()
        done = cli(conf, "restore", backup_id, "--yes", "--json")
        wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"restore {backup_id} exited {done.returncode}: {done.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    for path in result.get("rollback_dirs") or []:
        shutil.rmtree(path, ignore_errors=True)  # the previous data, kept aside by every restore
    flushed = [
        json.loads(line)
        for line in done.stderr.splitlines()
        if line.startswith("{") and '"restore.wal_flushed"' in line
    ]
    return {
        "wall_s": wall,
        "build_s": result.get("build_s"),
        "wal_wait_s": flushed[-1]["waited_s"] if flushed else None,
        "downtime_s": result.get("downtime_s"),
        "influxd_peak_rss_mb": rss.peak / 2**20,
        "points": count(sandbox),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="500M", help="data before the full (default 500M)")
    ap.add_argument("--increment", default="50M", help="data written before the increment")
    ap.add_argument("--runs", type=int, default=2, help="restores of each kind (default 2)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hot-restore-bench-"))
    sandbox = Sandbox(work / "server", binary=influxd_binary() or "/usr/bin/influxd")
    sandbox.write_config()
    sandbox.start()
    conf = write_config(
        work, sandbox, jobs='\n[[job]]\nname = "hot"\nmode = "hot"\nfull_every = "30d"\n'
    )
    runs: dict[str, list[dict[str, Any]]] = {"full": [], "chain": []}
    try:
        size, more = parse_size(args.size), parse_size(args.increment)
        print(f"generating {args.size} ...", flush=True)
        data = generate(sandbox, size)
        full = json.loads(cli(conf, "backup", "--json").stdout)
        points_full = count(sandbox)
        print(f"  {data}; full {full['status']} {full['bytes'] / 2**20:.0f} MiB", flush=True)
        print(f"writing {args.increment} more ...", flush=True)
        extra = generate(sandbox, size + more, first_ts=1_500_000_000 + data["points"] + 10)
        inc = json.loads(cli(conf, "backup", "--json").stdout)
        points_chain = count(sandbox)
        print(f"  {extra}; increment {inc['status']} {inc['bytes'] / 2**20:.0f} MiB", flush=True)
        if full["status"] != "ok" or inc["status"] != "ok" or inc["kind"] != "incremental":
            raise RuntimeError(f"backups: {full['error']} / {inc['error']} / {inc['kind']}")
        for i in range(args.runs):
            for kind in ("full", "chain") if i % 2 == 0 else ("chain", "full"):
                result = restore(conf, sandbox, full["id"] if kind == "full" else inc["id"])
                result["expected_points"] = points_full if kind == "full" else points_chain
                runs[kind].append(result)
                print(f"  restore {kind:<5} #{i + 1}: {result}", flush=True)
    finally:
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(kind: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[kind])

    print(f"\n# python bench/hot_restore.py {' '.join(sys.argv[1:])}")
    print(f"load average after {os.getloadavg()}")
    print(
        f"full {full['bytes'] / 2**20:.0f} MiB ({points_full} points), increment "
        f"{inc['bytes'] / 2**20:.0f} MiB (+{points_chain - points_full} points)"
    )
    print(f"| figure (median of {args.runs}) | full alone | full + increment | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for key in ("wall_s", "downtime_s", "influxd_peak_rss_mb"):
        a, b = med("full", key), med("chain", key)
        print(f"| {key} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    right = all(r["points"] == r["expected_points"] for rs in runs.values() for r in rs)
    print(f"point counts as backed up after every restore: {right}")
    extra_s = med("chain", "wall_s") - med("full", "wall_s")
    inc_bytes = inc["bytes"]
    print(
        f"the increment adds {extra_s:.2f} s for {inc_bytes / 2**20:.0f} MiB "
        f"({inc_bytes / 2**20 / max(extra_s, 1e-9):.0f} MiB/s of increment)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
