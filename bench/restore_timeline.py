#!/usr/bin/env python3
"""Where the live server's slow writes fall during `restore BACKUP --database NAME --as NEW`:
every write slower than --slow-ms, on one time line with the restore's own log events.

    python bench/restore_timeline.py --size 1G --form cold --env INFLUX_BACKUPD_COLD_FILES=on,off

Builds a real influxd sandbox holding a database of --size, takes one backup of --form through
the CLI, then for each value of --env runs one restore under a new name while 10 batches a
second go into another database of the live server (restore_database.py's writer), and prints
the time line (seconds since the command started). The p99 figures are restore_database.py's
job; this tells which phase the slow writes belong to. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_downtime import generate, parse_size, write_config  # sibling scripts
from restore_database import LatencyWriter, cli

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary


def events(stderr: str, monotonic_offset: float) -> list[tuple[float, str]]:
    """The CLI's JSON log lines as (monotonic time, event)."""
    found = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
            when = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            continue
        found.append((when.timestamp() - monotonic_offset, f"event {event.get('event')}"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--form", choices=("cold", "hot"), default="cold")
    parser.add_argument("--env", default="", help="NAME=v1,v2: one restore with each value")
    parser.add_argument("--slow-ms", type=float, default=10.0)
    parser.add_argument("--before", type=float, default=10.0, help="seconds of writes first")
    args = parser.parse_args()
    binary = influxd_binary()
    if binary is None:
        sys.exit("influxd is not installed")
    name, _, values = args.env.partition("=")
    variants = [(name, value) for value in values.split(",")] if name else [("", "")]
    work = Path(tempfile.mkdtemp(prefix="bench-restore-timeline-"))
    sandbox = Sandbox(work / "server", binary=binary)
    sandbox.write_config()
    sandbox.start(timeout=120)
    job = f'\n[[job]]\nname = "{args.form}"\nmode = "{args.form}"\n'
    conf = write_config(work, sandbox, job + ('copy = "direct"\n' if args.form == "cold" else ""))
    try:
        generate(sandbox, parse_size(args.size), db="bench")
        record = json.loads(cli(conf, "backup", "--job", args.form, "--json").stdout)
        assert record["status"] == "ok", record.get("error")
        sandbox.create_db("live")
        time.sleep(20)  # the backup's restart of influxd and its compactions: let them pass
        offset = time.time() - time.monotonic()
        for number, (var, value) in enumerate(variants):
            os.sync()
            new = f"copy_{number}"
            with LatencyWriter(sandbox, 1000, "live") as writer:
                time.sleep(args.before)
                t1 = time.monotonic()
                done = cli(
                    conf,
                    "-v",
                    "restore",
                    record["id"],
                    "--database",
                    "bench",
                    "--as",
                    new,
                    "--json",
                    env={var: value} if var else {},
                )
                t2 = time.monotonic()
                time.sleep(1)
            slow = [
                (when, f"    write took {took * 1000:.1f} ms")
                for when, took in writer.samples
                if t1 <= when <= t2 and took * 1000 > args.slow_ms
            ]
            label = f"{var}={value}" if var else "as it is"
            print(f"== {args.form}, {label}: exit {done.returncode}, {t2 - t1:.1f} s", flush=True)
            for when, what in sorted(events(done.stderr, offset) + slow):
                print(f"{when - t1:7.2f} {what}", flush=True)
            sandbox.query(f'DROP DATABASE "{new}"', method="POST")
            os.sync()
            time.sleep(15)
    finally:
        sandbox.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
