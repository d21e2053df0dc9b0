#!/usr/bin/env python3
"""What the stop window's holders check costs beside a busy neighbour, one tree against another.

    python bench/holders_cost.py --fds 10000 --maps 5000 --runs 7 --vs-src /tmp/base/src

Once influxd has stopped, a cold run asks which processes still hold a file under its dirs
(Influxd.holders) before it copies: that time is downtime. It reads every process's open
descriptors and mapped files, so a second influxd (thousands of shards: a descriptor and a
mapping per TSM file) or a JVM on the same host makes it slower. This starts one such
neighbour (--fds descriptors, --maps mappings of a file, each also a descriptor: Python's mmap
keeps one; their sum must stay under `ulimit -n`) holding a file under the dirs asked
about, then times the check in each tree alternately, in a child interpreter per run (the
tree's own imports), and checks that both trees name the neighbour. Prints medians and the
paired ratio this/vs. Not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from paired import alternate, report

SRC = Path(__file__).resolve().parent.parent / "src"

NEIGHBOUR = """
import mmap, os, sys, time
fds, maps, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
keep = [os.open('/dev/null', os.O_RDONLY) for _ in range(fds)]
f = open(path, 'r+b')
mapped = [mmap.mmap(f.fileno(), 4096, offset=(i % 16) * 4096) for i in range(maps)]
f.close()
print('ready', flush=True)
time.sleep(3600)
"""

TIMED = """
import sys, time
from pathlib import Path
from influx_backupd.influxd.server import Influxd
started = time.monotonic()
found = Influxd.holders(None, [Path(sys.argv[1])])
print(time.monotonic() - started, ",".join(str(h.pid) for h in found))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fds", type=int, default=10000)
    ap.add_argument("--maps", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--src", type=Path, default=SRC)
    ap.add_argument("--vs-src", type=Path)
    args = ap.parse_args()
    trees = {"this": args.src} | ({"vs": args.vs_src} if args.vs_src else {})
    with tempfile.TemporaryDirectory(prefix="holders-cost-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        tsm = data / "000000001-000000001.tsm"
        tsm.write_bytes(b"\0" * 16 * 4096)
        neighbour = subprocess.Popen(
            [sys.executable, "-c", NEIGHBOUR, str(args.fds), str(args.maps), str(tsm)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert neighbour.stdout is not None and neighbour.stdout.readline().strip() == "ready"

            def checked(name: str, out: str) -> float:
                seconds, pids = out.split()
                assert str(neighbour.pid) in pids.split(","), (name, out)
                return float(seconds)

            got = alternate(trees, args.runs, lambda _name: ["-c", TIMED, str(data)], checked)
        finally:
            neighbour.kill()
            neighbour.wait()
    report(
        f"a neighbour with {args.fds} descriptors and {args.maps} mappings, medians of {args.runs}:",
        got,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
