#!/usr/bin/env python3
"""What `restore BACKUP --database NAME --as NEWNAME` costs the live server: its write latency
while the database goes in, against the same writes just before, and the restore's wall time.

    python bench/restore_database.py --size 300M --runs 2

Builds a real influxd sandbox holding a database of --size (incompressible payloads), takes a
cold archive and a hot full of it through the CLI, then, for each run and each form, writes small
batches (10 a second, --rate points a second) into another database of the live server for
--before seconds, then runs the restore (under a new name each time) while the same writes go on.
Each write's latency is its HTTP round trip. Prints p50/p99/max before and during, the ratio
p99 during / p99 before (the target: at most 2), the restore's wall time, and checks the
restored database's point count. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_downtime import generate, parse_size, write_config  # a sibling script

from influx_backupd.influxd import counts
from influx_backupd.influxd.sandbox import Sandbox, influxd_binary


class LatencyWriter:
    """Batches of small points into one database, 10 a second; every round trip recorded."""

    def __init__(self, sandbox: Sandbox, rate: int, db: str) -> None:
        self.url = sandbox.url + "/write?" + urllib.parse.urlencode({"db": db, "precision": "ms"})
        self.per_batch = max(1, rate // 10)
        self.samples: list[tuple[float, float]] = []  # (when, seconds)
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            now_ms = int(time.time() * 1000)
            body = "\n".join(
                f"steady,host=h{i % 8} value={n + i}i {now_ms - self.per_batch + i}"
                for i in range(self.per_batch)
            ).encode()
            started = time.monotonic()
            try:
                req = urllib.request.Request(self.url, data=body, method="POST")
                with urllib.request.urlopen(req, timeout=30) as resp:
                    ok = resp.status == 204
            except OSError:
                ok = False
            took = time.monotonic() - started
            if ok:
                self.samples.append((started, took))
            else:
                self.failed += 1
            n += self.per_batch
            next_at += 0.1
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def between(self, start: float, end: float) -> list[float]:
        return [took for when, took in self.samples if start <= when < end]

    def __enter__(self) -> LatencyWriter:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "writes": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values, default=float("nan")) * 1000, 2),
    }


def cli(
    conf: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(conf), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="300M", help="the restored database's size on disk")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--rate", type=int, default=1000, help="live writes, points a second")
    parser.add_argument("--before", type=float, default=20.0, help="seconds measured before")
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds after each drop before measuring"
    )
    parser.add_argument("--work", help="work dir (default: a temp dir, removed)")
    parser.add_argument("--forms", default="cold,hot", help="which backups to restore from")
    parser.add_argument(
        "--limit-rates", default="0", help="restore --limit-rate values (MiB/s) to compare"
    )
    parser.add_argument(
        "--flush-behind",
        default="on",
        help="on, off or on,off: the restore's flush-behind of the files the server writes",
    )
    parser.add_argument(
        "--cold-files",
        default="on",
        help="on, off or on,off: a cold archive's TSM files taken as they are (off: the "
        "throwaway replays and exports the whole database, as before)",
    )
    parser.add_argument(
        "--go-procs",
        default="-",
        help="GOMAXPROCS values in the restore's environment to compare (-: unset): its "
        "throwaway influxd and tools inherit it, the live server does not",
    )
    args = parser.parse_args()
    binary = influxd_binary()
    if binary is None:
        sys.exit("influxd is not installed")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-restore-db-"))
    sandbox = Sandbox(work / "server", binary=binary)
    sandbox.write_config()
    sandbox.start(timeout=120)
    jobs = (
        '\n[[job]]\nname = "cold"\nmode = "cold"\ncopy = "direct"\n'
        '\n[[job]]\nname = "hot"\nmode = "hot"\n'
    )
    conf = write_config(work, sandbox, jobs)
    try:
        made = generate(sandbox, parse_size(args.size), db="bench")
        points = counts.point_count(sandbox.url, "bench", timeout=600)
        print(json.dumps({"generated": made, "points": points}), flush=True)
        backups = {}
        for form in args.forms.split(","):
            done = cli(conf, "backup", "--job", form, "--json")
            record = json.loads(done.stdout)
            assert record["status"] == "ok", record.get("error")
            backups[form] = record["id"]
        sandbox.create_db("live")
        results = []
        rates = [float(r) for r in args.limit_rates.split(",")]
        behinds = args.flush_behind.split(",")
        colds = args.cold_files.split(",")
        combos = [
            (f, b, r, fb, cf, gp)
            for f, b in backups.items()
            for r in rates
            for fb in behinds
            for cf in (colds if f == "cold" else ["-"])
            for gp in args.go_procs.split(",")
        ]
        for run in range(args.runs):
            # odd runs take the variants the other way round: each follows the other's drop
            for form, backup_id, rate, behind, cold, procs in combos[:: -1 if run % 2 else 1]:
                os.sync()
                new = f"copy_{form}_{run}_{int(rate)}_{behind}_{cold}_{procs}".replace("-", "x")
                with LatencyWriter(sandbox, args.rate, "live") as writer:
                    t0 = time.monotonic()
                    time.sleep(args.before)
                    t1 = time.monotonic()
                    done = cli(
                        conf,
                        "restore",
                        backup_id,
                        "--database",
                        "bench",
                        "--as",
                        new,
                        "--limit-rate",
                        str(rate),
                        "--json",
                        env={
                            "INFLUX_BACKUPD_FLUSH_BEHIND": behind,
                            "INFLUX_BACKUPD_COLD_FILES": cold,
                            **({} if procs == "-" else {"GOMAXPROCS": procs}),
                        },
                    )
                    t2 = time.monotonic()
                    time.sleep(1)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    continue
                result = json.loads(done.stdout)
                before, during = writer.between(t0, t1), writer.between(t1, t2)
                # the last restore_s seconds: the live server taking the database in
                taking = writer.between(t2 - result["restore_s"] - 0.2, t2)
                row = {
                    "form": form,
                    "limit_rate": rate,
                    "flush_behind": behind,
                    "cold_files": cold,
                    "go_procs": procs,
                    "run": run,
                    "wall_s": round(t2 - t1, 2),
                    "prepare_s": result["prepare_s"],
                    "restore_s": result["restore_s"],
                    "before": summary(before),
                    "during": summary(during),
                    "taking": summary(taking),
                    "p99_ratio": round(percentile(during, 99) / percentile(before, 99), 2),
                    "p99_ratio_taking": round(percentile(taking, 99) / percentile(before, 99), 2),
                    # when the slowest writes were sent, in seconds before the command ended
                    "worst": [
                        [round(t2 - when, 1), round(took * 1000, 1)]
                        for when, took in sorted(
                            (x for x in writer.samples if t1 <= x[0] < t2), key=lambda x: -x[1]
                        )[:4]
                    ],
                    "failed_writes": writer.failed,
                    "points_ok": counts.point_count(sandbox.url, new, timeout=600) == points,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
                sandbox.query(f'DROP DATABASE "{new}"', method="POST")
                # influxd removes the dropped files at once: a burst of its own (the next
                # "before" would measure it), let it pass
                os.sync()
                time.sleep(args.settle)
        for form, _, rate, behind, cold, procs in combos:
            rows = [
                r
                for r in results
                if (r["form"], r["limit_rate"], r["flush_behind"], r["cold_files"], r["go_procs"])
                == (form, rate, behind, cold, procs)
            ]
            if rows:
                print(
                    f"{form}, --limit-rate {rate:g}, flush-behind {behind}, cold files {cold}, GOMAXPROCS {procs}: wall {statistics.median(r['wall_s'] for r in rows):.1f} s, "
                    f"p99 during/before {statistics.median(r['p99_ratio'] for r in rows):.2f}, "
                    f"while the live server takes it in "
                    f"{statistics.median(r['p99_ratio_taking'] for r in rows):.2f} "
                    f"(median of {len(rows)})"
                )
    finally:
        sandbox.stop()
        if args.work is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
