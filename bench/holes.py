#!/usr/bin/env python3
"""Files with holes: `holes = "keep"` against `holes = "fill"`, side by side in one run.

    python bench/holes.py --databases 8 --runs 5

influxd 1.5+ preallocates each database's series file as 8 sparse segments of 4 MiB
(data/DB/_series/NN/NNNN): 32 MiB of holes per database. Builds a throwaway real influxd with
--databases small databases, then runs direct cold backups (the copy inside the stop window)
through the real CLI, alternating a job with holes kept and one with holes filled. Prints the
medians of the archive size, the copy inside the stop window and the downtime, and their
ratios. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_downtime import backup, write_config

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary

JOBS = {"keep": "holes-keep", "fill": "holes-fill"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=8)
    parser.add_argument("--points", type=int, default=2_000, help="points per database")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-holes-") as tmp:
        work = Path(tmp)
        sandbox = Sandbox(work / "server", binary=influxd_binary() or "/usr/bin/influxd")
        sandbox.write_config()
        sandbox.start()
        try:
            for n in range(args.databases):
                sandbox.create_db(f"db{n}")
                sandbox.write_points(f"db{n}", args.points)
            files = [p for p in sandbox.data.rglob("*") if p.is_file()]
            apparent = sum(p.stat().st_size for p in files)
            allocated = sum(p.stat().st_blocks * 512 for p in files)
            jobs = "".join(
                f'\n[[job]]\nname = "{name}"\nmode = "cold"\ncopy = "direct"\n'
                f'schedule = "0 3 1 1 *"\nholes = "{holes}"\n'
                for holes, name in JOBS.items()
            )
            conf = write_config(work, sandbox, jobs)
            runs: dict[str, list[dict[str, Any]]] = {holes: [] for holes in JOBS}
            for _ in range(args.runs):
                for holes, name in JOBS.items():
                    runs[holes].append(backup(conf, name))  # fails unless ok; removes it
        finally:
            sandbox.stop()

    def median(holes: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[holes])

    print(
        f"{args.databases} databases, data dir {apparent / 2**20:.1f} MiB apparent, "
        f"{allocated / 2**20:.1f} MiB allocated; {args.runs} direct cold runs each, alternating"
    )
    report: dict[str, Any] = {"apparent": apparent, "allocated": allocated, "runs": runs}
    for key, unit, scale in (("bytes", "MiB", 2**20), ("copy_s", "s", 1), ("downtime_s", "s", 1)):
        keep, fill = median("keep", key), median("fill", key)
        report[key] = {"keep": keep, "fill": fill, "ratio": keep / fill if fill else None}
        print(
            f"  {key:<11} keep {keep / scale:9.3f} {unit:<3}  fill {fill / scale:9.3f} {unit:<3}"
            f"  keep/fill {keep / fill:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
