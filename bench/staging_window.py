#!/usr/bin/env python3
"""What a staged cold run's in-window pass costs as the file count grows, one tree against another.

    python bench/staging_window.py --dirs 2000 --files 5 --runs 7 --vs-src /tmp/base/src

A staged run copies while influxd serves (phase 1), then, influxd stopped, passes over the
tree again to copy what changed (phase 2): that pass is downtime, and on a server with
thousands of shards it is mostly looking at files that did not change. This makes a tree of
--dirs shard dirs with --files small files each (a TSM-heavy server's shape), stages it once,
then times the stopped pass (nothing changed, and --changed files touched since) in each tree
alternately, in a child interpreter per run (the tree's own imports), and checks both copied
what changed. Prints medians and the paired ratio this/vs. Not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from paired import alternate, report

SRC = Path(__file__).resolve().parent.parent / "src"

TIMED = """
import os, sys, time
from pathlib import Path
from influx_backupd.jobs.staging import Stager
src, stage, changed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
stager = Stager(stage, [("data", src / "data"), ("meta", src / "meta")])
stager.sync(tolerant=True)  # phase 1 (a first run copies all; later ones what changed)
time.sleep(0.1)  # past the stopped pass's racy margin
for i in range(changed):  # written "while influxd served", after phase 1
    with open(src / "data" / f"d{i}" / "f0.tsm", "ab") as f:
        f.write(b"+")
started = time.monotonic()
stats = stager.sync(tolerant=False)
print(time.monotonic() - started, stats.copied, stats.files)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirs", type=int, default=2000)
    ap.add_argument("--files", type=int, default=5)
    ap.add_argument("--changed", type=int, default=10)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--src", type=Path, default=SRC)
    ap.add_argument("--vs-src", type=Path)
    args = ap.parse_args()
    trees = {"this": args.src} | ({"vs": args.vs_src} if args.vs_src else {})
    with tempfile.TemporaryDirectory(prefix="staging-window-") as tmp:
        src = Path(tmp) / "src"
        old = time.time() - 3600
        for d in range(args.dirs):
            shard = src / "data" / f"d{d}"
            shard.mkdir(parents=True)
            for f in range(args.files):
                (shard / f"f{f}.tsm").write_bytes(b"x" * 512)
                # older than phase 1's racy margin, as a server's settled files are
                os.utime(shard / f"f{f}.tsm", (old, old))
        (src / "meta").mkdir()
        (src / "meta" / "meta.db").write_bytes(b"m" * 512)
        os.utime(src / "meta" / "meta.db", (old, old))

        def checked(name: str, out: str) -> float:
            seconds, copied, files = out.split()
            assert int(copied) == args.changed, (name, out)
            assert int(files) == args.dirs * args.files + 1, (name, out)
            return float(seconds)

        got = alternate(
            trees,
            args.runs,
            # each tree stages into a dir of its own
            lambda name: ["-c", TIMED, str(src), f"{tmp}/stage-{name}", str(args.changed)],
            checked,
        )
    report(
        f"{args.dirs} dirs x {args.files} files, {args.changed} changed, the stopped pass,"
        f" medians of {args.runs}:",
        got,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
