"""The demo: the whole job on throwaway servers, through the real command line.

1. start a sandbox influxd (temp dirs, free ports) and write sample data;
2. `influx-backupd backup`: stop it, tar its dirs, start it, downtime measured phase by phase;
3. start a second, empty sandbox server and `influx-backupd restore` the archive into it;
4. show that the second server answers with the same points, print `list`, clean up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary

POINTS = 50_000


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "influx_backupd",
            "--config",
            str(config),
            "--log-level",
            "warning",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def write_config(root: Path, server: Sandbox) -> Path:
    config = root / f"{server.root.name}.toml"
    config.write_text(
        f"""[daemon]
state_dir = "{root / "state"}"

[influxd]
config = "{server.conf}"
command = {json.dumps(server.command())}
user = "root"
group = "root"

[storage]
dir = "{root / "archives"}"

[[job]]
name = "demo"
mode = "cold"
copy = "direct"
"""
    )
    return config


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir for a look afterwards"
    )
    args = parser.parse_args()
    binary = influxd_binary()
    if binary is None:
        print("demo: influxd is not installed (scripts/setup.sh installs it)", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="influx-backupd-demo-"))
    source = Sandbox(root / "source", binary=binary)
    target = Sandbox(root / "target", binary=binary)
    started = time.monotonic()
    try:
        step(f"a sandbox influxd in {source.root}, HTTP on port {source.http_port}")
        source.write_config()
        source.start()
        source.create_db("demo")
        source.write_points("demo", POINTS)
        print(f"wrote {source.count('demo')} points into database 'demo'")

        step("influx-backupd backup (cold: stop, uncompressed tar, start)")
        config = write_config(root, source)
        done = cli(config, "backup", "--json")
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            return 1
        record = json.loads(done.stdout)
        print(f"archive   {record['archive']}  ({record['bytes']} bytes, {record['files']} files)")
        print(f"sha256    {record['sha256']}")
        print(
            "downtime  {downtime_s:.3f}s = stop {stop_s:.3f}s + copy {copy_s:.3f}s + start {start_s:.3f}s".format(
                **record
            )
        )
        print(f"influxd answers /ping again: {source.ping()}")

        step(f"restore into a second, empty sandbox server ({target.root})")
        target.write_config()
        target.start()
        print(f"before: databases {target.databases()}")
        target_config = write_config(root, target)
        done = cli(target_config, "restore", record["archive"], "--yes")
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            return 1
        print(done.stdout.rstrip())
        restored = target.count("demo")
        print(f"after:  databases {target.databases()}, {restored} points in 'demo'")
        if restored != POINTS:
            print(f"demo: FAILED: expected {POINTS} points", file=sys.stderr)
            return 1

        step("influx-backupd list")
        print(cli(config, "list").stdout.rstrip())
        print(f"\ndemo ok in {time.monotonic() - started:.1f}s: backed up, restored, proved.")
        return 0
    finally:
        source.stop()
        target.stop()
        if args.keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
