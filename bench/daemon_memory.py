#!/usr/bin/env python3
"""The daemon's RSS over a short soak, with and without MALLOC_ARENA_MAX, side by side in one
run: two `influx-backupd run` daemons at once, each with its own influxd, moto S3 endpoint,
a cold and a hot job `every` --every, [notify] URLs (sent to nothing that listens) and
[offsite]. VmRSS is read from /proc/PID/status once a second.

    python bench/daemon_memory.py --seconds 600 --arena 2

Not a test: nothing is asserted; start RSS, the plateau (median of the second half), the
maximum and the runs' durations are printed per variant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.conftest's write_config

import boto3
import botocore.config
from moto.server import ThreadedMotoServer

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from tests.conftest import write_config

KEY, SECRET = "AKIABENCHDAEMON00001", "bench-secret"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def soak(root: Path, arena: str, seconds: float, every: str, out: dict[str, Any]) -> None:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    url = "http://{}:{}".format(*moto.get_host_and_port())
    creds = root / "aws"
    creds.write_text(f"[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
    creds.chmod(0o600)
    boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    ).create_bucket(Bucket="bench")
    binary = influxd_binary()
    assert binary, "influxd is not installed"
    server = Sandbox(root / "server", binary=binary)
    server.write_config()
    server.start()
    daemon = None
    try:
        server.create_db("db")
        server.write_points("db", 2000)
        extra = (
            '\n[notify]\nsuccess = ["ntfy://127.0.0.1:9/topic"]\n'
            'failure = ["json://127.0.0.1:9/failure"]\ntimeout = "5s"\n'
            f'\n[offsite]\nbucket = "bench"\nprefix = "h"\nendpoint_url = "{url}"\n'
            f'credentials_file = "{creds}"\n'
        )
        jobs = [
            {"name": "cold", "every": every, "mode": "cold", "copy": "direct", "keep_last": 3},
            {"name": "hot", "every": every, "mode": "hot", "keep_last": 3},
        ]
        config = write_config(root, server, jobs=jobs, extra=extra)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("MALLOC_ARENA_MAX", None)
        if arena:
            env["MALLOC_ARENA_MAX"] = arena
        log = root / "daemon.out"
        with open(log, "w") as sink:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "influx_backupd", "--config", str(config), "run"],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
            )
        while "daemon.ready" not in log.read_text():
            assert daemon.poll() is None, log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(1.0)
        start = rss_kib(daemon.pid)
        began, samples = time.monotonic(), []
        while time.monotonic() - began < seconds:
            time.sleep(1.0)
            samples.append((time.monotonic() - began, rss_kib(daemon.pid)))
        events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        records = [e["record"] for e in events if e.get("event") == "run.finished"]
        late = [r for t, r in samples if t > seconds / 2]

        def took(mode: str) -> float:
            spans = [r["finished_at"] - r["started_at"] for r in records if r["mode"] == mode]
            return statistics.median(spans) if spans else float("nan")

        out.update(
            start=start / 1024,
            plateau=statistics.median(late) / 1024,
            peak=max(r for _, r in samples) / 1024,
            runs=len(records),
            ok=sum(r["status"] == "ok" for r in records),
            cold=took("cold"),
            hot=took("hot"),
            sends=sum(e.get("event") == "offsite.sent" for e in events),
        )
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
        server.stop()
        moto.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--arena", default="2", help="MALLOC_ARENA_MAX of the second daemon")
    parser.add_argument("--every", default="20s")
    args = parser.parse_args()
    logging.getLogger("werkzeug").disabled = True  # moto's request log
    results: dict[str, dict[str, Any]] = {"unset": {}, f"MALLOC_ARENA_MAX={args.arena}": {}}
    with tempfile.TemporaryDirectory(prefix="daemon-memory-") as tmp:
        threads = []
        for (name, out), arena in zip(results.items(), ("", args.arena), strict=True):
            root = Path(tmp) / name.replace("=", "-")
            root.mkdir()
            threads.append(
                threading.Thread(target=soak, args=(root, arena, args.seconds, args.every, out))
            )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    print(
        f"{'variant':24} {'start MiB':>9} {'plateau':>8} {'peak':>6} {'runs ok':>8} "
        f"{'cold s':>7} {'hot s':>6} {'sends':>5}"
    )
    for name, r in results.items():
        print(
            f"{name:24} {r['start']:9.1f} {r['plateau']:8.1f} {r['peak']:6.1f} "
            f"{r['ok']:>3}/{r['runs']:<4} {r['cold']:7.3f} {r['hot']:6.3f} {r['sends']:5}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
