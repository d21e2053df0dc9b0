#!/usr/bin/env python3
"""What a big catalog costs: `list`, `status`, `prune --dry-run`, `verify --all` of a long hot
chain, and the daemon's metrics write, at two catalog sizes, one tree against another.

    python bench/catalog_scale.py --records 500 5000 --chain 70 270 --runs 3 --vs-src /tmp/base/src

Every command that takes the lock reads the catalog, status and the metrics read every record,
and a scheduled `[verify]` looks each hot increment's chain up: what grows with the number of
backups kept decides whether a host with hourly backups and long retention stays usable. The
records are fabricated (no influxd is started): cold ones with a small file as their archive,
hot ones as a chain of empty dirs (each fails verify at once, after its chain is looked up, the
part that grew with the chain). Each round runs every command once per tree, one tree after the
other, so a busy moment weighs on both; prints medians of wall seconds and the paired ratios
this/vs. Byte-compile both trees first (`python -m compileall -q SRC`). Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup_cost import SRC, write_config  # sibling script

from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord

T0 = 1_780_000_000.0  # 2026-05-28: every record in the past


def fabricate(root: Path, records: int, chain: int) -> None:
    """records cold backups (one an hour) and a hot chain of `chain` links, in root's catalog."""
    catalog = Catalog(root / "state")
    archives = root / "backups"
    for n in range(records):
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(T0 + n * 3600)) + f"-{n % 65536:04x}"
        archive = archives / f"nightly-{run_id}.tar"
        archive.write_bytes(b"\0" * 1024)
        record = RunRecord(id=run_id, job="nightly", mode="cold", status="ok")
        record.started_at, record.finished_at = T0 + n * 3600, T0 + n * 3600 + 30
        record.archive, record.bytes, record.downtime_s = str(archive), 1024, 1.5
        record.db_counts = {"metrics": 1000 + n}
        catalog.save(record)
    parent: RunRecord | None = None
    for n in range(chain):
        start = T0 + n * 900 + 60
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start)) + f"-{(n + 1) % 65536:04x}"
        path = archives / f"hotjob-{run_id}"
        path.mkdir()
        record = RunRecord(id=run_id, job="hotjob", mode="hot", status="ok", started_at=start)
        record.kind = "full" if parent is None else "incremental"
        record.chain_id = run_id if parent is None else parent.chain_id
        record.parent_id = parent.id if parent is not None else None
        record.archive, record.finished_at = str(path), start + 5
        catalog.save(record)
        parent = record


def wall_of(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.monotonic() - started


METRICS = (
    "from pathlib import Path; from influx_backupd.core.config import load; "
    "from influx_backupd.store.catalog import Catalog; "
    "from influx_backupd.run.followup import write_metrics; import time; "
    "c = load(Path({conf!r})); cat = Catalog(c.state_dir); write_metrics(c, cat); "
    "t = time.monotonic(); [write_metrics(c, cat) for _ in range(10)]; "
    "print(time.monotonic() - t)"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, nargs=2, default=[500, 5000])
    ap.add_argument("--chain", type=int, nargs=2, default=[70, 270])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--src", type=Path, default=SRC, help="the tree measured (default: this one)")
    ap.add_argument("--vs-src", type=Path, help="a second tree, measured in the same rounds")
    args = ap.parse_args()
    trees = {"this": args.src} | ({"vs": args.vs_src} if args.vs_src else {})
    with tempfile.TemporaryDirectory(prefix="catalog-scale-") as tmp:
        for records, chain in zip(args.records, args.chain, strict=True):
            root = Path(tmp) / f"n{records}"
            root.mkdir()
            config = write_config(root)
            with config.open("a") as f:
                f.write('[[job]]\nname = "hotjob"\nmode = "hot"\n')
            text = config.read_text().replace(
                "[influxd]", f'metrics_file = "{root}/metrics.prom"\n[influxd]', 1
            )
            config.write_text(text)
            fabricate(root, records, chain)
            commands = {
                "list": ["list"],
                "status": ["status"],
                "prune --dry-run": ["prune", "--dry-run"],
                f"verify --all (chain {chain})": ["verify", "--all", "--job", "hotjob"],
            }
            got: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.runs):
                for name, src in trees.items():
                    env = {**os.environ, "PYTHONPATH": str(src)}
                    base = [sys.executable, "-m", "influx_backupd", "--config", str(config)]
                    for what, argv in commands.items():
                        got.setdefault((name, what), []).append(wall_of(base + argv, env))
                    tenfold = subprocess.run(
                        [sys.executable, "-c", METRICS.format(conf=str(config))],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    got.setdefault((name, "10 metrics writes"), []).append(
                        float(tenfold.stdout.strip().splitlines()[-1])
                    )
            print(f"{records} cold records, a hot chain of {chain} (medians of {args.runs}, s):")
            for what in [*commands, "10 metrics writes"]:
                line = f"  {what:<28}"
                for name in trees:
                    line += f"  {name} {statistics.median(got[(name, what)]):7.3f}"
                if args.vs_src:
                    ratio = statistics.median(
                        a / b for a, b in zip(got[("this", what)], got[("vs", what)], strict=True)
                    )
                    line += f"  this/vs {ratio:.2f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
