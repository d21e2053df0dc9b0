#!/usr/bin/env python3
"""What the readiness rule adds to the stop window: after influxd's first /ping 204, a start
counts only once influxd's own process is seen listening on its HTTP port (a socket listing
of that process, influxd/listening.listens). Side by side in one run: /ping alone against
/ping plus that listing, on a real influxd holding --databases shards (each one open TSM
and WAL files, so the process has many descriptors to look through).

    python bench/readiness.py --databases 200 --runs 300

Not a test: nothing is asserted; the ratio and the absolute cost are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

import psutil

from influx_backupd.influxd.listening import _by_psutil, listens
from influx_backupd.influxd.sandbox import Sandbox, influxd_binary


def timed(step: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        step()  # type: ignore[operator]
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--databases", type=int, default=200, help="shards held open (default 200)")
    ap.add_argument("--runs", type=int, default=300, help="timed runs of each (default 300)")
    args = ap.parse_args()
    binary = influxd_binary()
    if binary is None:
        print("influxd is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-ready-") as work:
        server = Sandbox(Path(work) / "server", binary=binary)
        server.write_config()
        server.start()
        try:
            for n in range(args.databases):
                server.create_db(f"db{n}")
                server.write_points(f"db{n}", 10)
            pid = server.pids()[0]
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            port = server.http_port
            assert listens(pid, port), "influxd listens on its own port"
            tables = (Path(f"/proc/{pid}/net/{t}").read_text() for t in ("tcp", "tcp6"))
            sockets = sum(t.count("\n") - 1 for t in tables)
            family = [psutil.Process(pid)]
            kinds = {
                "ping": server.ping,
                "proc": lambda: server.ping() and listens(pid, port),
                "psutil": lambda: server.ping() and _by_psutil(family, port),
            }
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.runs):  # interleaved: a load that comes and goes hits all three
                for kind, step in kinds.items():
                    times[kind] += timed(step, 1)
        finally:
            server.stop()
    p50 = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"influxd with {args.databases} databases, {fds} open descriptors; {sockets} TCP "
        f"sockets on the host; {args.runs} runs each, interleaved by kind"
    )
    print(f"  /ping alone                          p50 {p50['ping'] * 1000:7.2f} ms")
    print(f"  /ping + listening, /proc (ours)      p50 {p50['proc'] * 1000:7.2f} ms")
    print(f"  /ping + listening, psutil (before)   p50 {p50['psutil'] * 1000:7.2f} ms")
    print(
        f"  added to the stop window: {(p50['proc'] - p50['ping']) * 1000:.2f} ms, "
        f"{(p50['psutil'] - p50['ping']) * 1000:.2f} ms before "
        f"(ratio ours/before {(p50['proc'] - p50['ping']) / (p50['psutil'] - p50['ping']):.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
