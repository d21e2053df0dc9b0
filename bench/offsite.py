#!/usr/bin/env python3
"""Off-site copies (issue 13): what travels each night, how fast, in how much memory.

    python bench/offsite.py                      # the documented figures (rclone serve s3)
    python bench/offsite.py --size 200M --nights 3 --server moto

A real influxd (influx_backupd.influxd.sandbox) filled to --size, a steady writer for the whole
run, and between nights more data written (new TSM files). Each night one staged cold backup
through the real CLI, sent off-site by it ([offsite] in its config) to a local S3 server:
- bytes uploaded that night / bytes of the archive's files whose content no earlier backup had
  (target ≤ 1.05);
- the last archive sent again to an empty prefix in a child process (the CLI's engine, scan
  included) against boto3's plain `upload_file` of the same archive to the same server, each
  timed and its peak RSS taken (/usr/bin/time): throughput ratio (target ≥ 0.9), peak RSS
  (target ≤ 150 MB, flat in archive size: the first night's archive is sent the same way).
  Our send is timed twice: as for an archive its run proved less than 24 h ago (each member
  hashed, not the whole archive again) and with the whole archive hashed again. Each child
  also reports the CPU seconds of its timed window (all threads), and the load average is
  recorded before and after.

Not a test: nothing is asserted; targets are printed next to what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

from cold_downtime import SteadyWriter, generate, parse_size
from cold_downtime import write_config as bench_config

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from influx_backupd.jobs.cold import tree_size
from influx_backupd.offsite.files import scan_tar
from tests.offsite.conftest import (
    ACCESS_KEY,
    SECRET_KEY,
    free_port,
    serve_rclone,
    wait_port,
)

BUCKET = "bench-offsite"

SEND = """
import sys, json, time
from pathlib import Path
from influx_backupd.offsite.files import scan_tar
from influx_backupd.offsite.repo import Backup, Offsite
from influx_backupd.offsite.settings import OffsiteSettings
settings = OffsiteSettings.model_validate_json(sys.argv[1])
archive = Path(sys.argv[2])
offsite = Offsite(settings)  # the client made before the clock starts, as upload_file's is
started, cpu = time.monotonic(), time.process_time()
# as the CLI does: the headers now, the members hashed while the ones before them are sent;
# argv[5] "recheck": the whole archive hashed too and checked against its record's sha256
# (argv[4]) before the manifest, as for an archive proved more than 24 h ago; "fresh": not,
# as for one its run (or a verify) proved less than 24 h ago (run/offsite.RECHECK_AFTER)
source = scan_tar(archive, sys.argv[4], lazy=True, recheck=sys.argv[5] == "recheck")
scanned = time.monotonic()
result = offsite.send(Backup(sys.argv[3], "bench", "full", None, {}, source))
print(json.dumps({"seconds": time.monotonic() - started, "scan_s": scanned - started,
                  "cpu_s": time.process_time() - cpu,
                  "uploaded": result.bytes_uploaded, "complete": result.complete}))
"""

BOTO = """
import sys, json, time
import boto3, botocore.config
client = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id=sys.argv[4], aws_secret_access_key=sys.argv[5],
    config=botocore.config.Config(s3={"addressing_style": "path"},
        request_checksum_calculation="when_required", response_checksum_validation="when_required"))
started, cpu = time.monotonic(), time.process_time()
client.upload_file(sys.argv[2], sys.argv[3], "plain/" + sys.argv[6])
print(json.dumps({"seconds": time.monotonic() - started, "cpu_s": time.process_time() - cpu}))
"""


def timed(argv: list[str]) -> tuple[dict[str, Any], float]:
    """Run a child under /usr/bin/time: its JSON line and its peak RSS in MB."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        peak_kb = int(rss.read().strip().splitlines()[-1])
    return json.loads(done.stdout.strip().splitlines()[-1]), peak_kb / 1024


def start_server(kind: str, work: Path) -> tuple[subprocess.Popen[bytes] | Any, str]:
    if kind == "rclone":
        root = work / "s3root"
        (root / BUCKET).mkdir(parents=True)
        proc, port = serve_rclone(root)
        return proc, f"http://127.0.0.1:{port}"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    import boto3

    boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    ).create_bucket(Bucket=BUCKET)  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="400M", help="data to start with (default 400M)")
    ap.add_argument("--nightly", default="40M", help="new data written between nights")
    ap.add_argument("--nights", type=int, default=4)
    ap.add_argument("--server", choices=("rclone", "moto"), default="rclone")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs of each side")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    binary = influxd_binary()
    if binary is None:
        print("influxd is not installed", file=sys.stderr)
        return 1
    figures: dict[str, Any] = {"server": args.server, "nights": []}
    with tempfile.TemporaryDirectory(prefix="bench-offsite-") as tmp:
        work = Path(tmp)
        server, url = start_server(args.server, work)
        sandbox = Sandbox(work / "server", binary=binary)
        sandbox.write_config()
        sandbox.start(timeout=120)
        try:
            creds = work / "credentials"
            creds.write_text(
                f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
            )
            offsite = {"bucket": BUCKET, "prefix": "nightly-host", "endpoint_url": url,
                       "credentials_file": str(creds)}  # fmt: skip
            jobs = '\n[[job]]\nname = "staged"\nmode = "cold"\ncopy = "staged"\nschedule = "0 3 1 1 *"\n'
            jobs += "\n[offsite]\n" + "".join(
                f"{k} = {json.dumps(v)}\n" for k, v in offsite.items()
            )
            conf = bench_config(work, sandbox, jobs)
            size = parse_size(args.size)
            figures["data"] = generate(sandbox, size)
            seen: set[str] = set()
            archives: list[Path] = []
            digests: dict[Path, str] = {}
            with SteadyWriter(sandbox, 2000):
                for night in range(args.nights):
                    if night:
                        target = tree_size(sandbox.data) + tree_size(sandbox.wal)
                        generate(sandbox, target + parse_size(args.nightly), db=f"night{night}",
                                 first_ts=1_600_000_000 + night * 10_000_000)  # fmt: skip
                    state_file = work / "state" / "offsite.json"
                    before = (
                        json.loads(state_file.read_text())["jobs"]["staged"]["uploaded_bytes"]
                        if state_file.exists()
                        else 0
                    )
                    done = subprocess.run(
                        [sys.executable, "-m", "influx_backupd", "--config", str(conf), "backup", "--json"],
                        capture_output=True, text=True,
                    )  # fmt: skip
                    record = json.loads(done.stdout)
                    if record["status"] != "ok":
                        raise RuntimeError(record.get("error"))
                    state = json.loads(state_file.read_text())
                    uploaded = state["jobs"]["staged"]["uploaded_bytes"] - before
                    archive = Path(record["archive"])
                    archives.append(archive)
                    digests[archive] = record["sha256"]
                    source = scan_tar(archive)
                    new = sum(e.size for e in source.files() if e.sha256 not in seen)
                    seen |= {e.sha256 for e in source.files()}
                    row = {
                        "night": night + 1,
                        "archive_bytes": record["bytes"],
                        "new_bytes": new,
                        "uploaded_bytes": uploaded,
                        "ratio": round(uploaded / new, 4) if new else None,
                        "sent_off_site": record["id"] in state["sent"],
                    }
                    figures["nights"].append(row)
                    print(json.dumps(row), flush=True)
            # throughput and memory: the last (largest) and the first archive, to an empty prefix
            settings = {**offsite, "prefix": "x"}
            for label, archive in (("last", archives[-1]), ("first", archives[0])):
                ours, rechecked, theirs, ours_rss, theirs_rss = [], [], [], [], []
                cpu: dict[str, list[float]] = {"fresh": [], "recheck": [], "upload_file": []}
                load_before = os.getloadavg()
                for run in range(args.runs if label == "last" else 1):
                    for mode, times in (("fresh", ours), ("recheck", rechecked)):
                        s = json.dumps({**settings, "prefix": f"tp-{label}-{mode}-{run}"})
                        got, rss = timed([sys.executable, "-c", SEND, s, str(archive),
                                          f"run-{run}", digests[archive], mode])  # fmt: skip
                        times.append(got["seconds"])
                        cpu[mode].append(got["cpu_s"])
                        ours_rss.append(rss)
                    got, rss = timed([sys.executable, "-c", BOTO, url, str(archive), BUCKET,
                                      ACCESS_KEY, SECRET_KEY, f"{label}-{run}.tar"])  # fmt: skip
                    theirs.append(got["seconds"])
                    cpu["upload_file"].append(got["cpu_s"])
                    theirs_rss.append(rss)
                n = archive.stat().st_size
                row = {
                    "archive": label,
                    "bytes": n,
                    "ours_mb_s": round(n / statistics.median(ours) / 1e6, 1),
                    "upload_file_mb_s": round(n / statistics.median(theirs) / 1e6, 1),
                    "throughput_ratio": round(
                        statistics.median(theirs) / statistics.median(ours), 3
                    ),
                    # with the whole archive hashed again before its manifest
                    "recheck_ratio": round(
                        statistics.median(theirs) / statistics.median(rechecked), 3
                    ),
                    "per_run_ratios": [round(t / o, 2) for t, o in zip(theirs, ours, strict=True)],
                    # CPU seconds of the sending process in the timed window (all its threads):
                    # what the load of a shared machine moves least
                    "cpu_s": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
                    "runs": len(ours),
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                    "ours_peak_rss_mb": round(max(ours_rss), 1),
                    "upload_file_peak_rss_mb": round(max(theirs_rss), 1),
                }
                figures[f"throughput_{label}"] = row
                print(json.dumps(row), flush=True)
        finally:
            sandbox.stop()
            server.terminate()
            server.wait(30)
    ratios = [r["ratio"] for r in figures["nights"][1:] if r["ratio"] is not None]
    print(
        f"uploaded/new after the first night: max {max(ratios) if ratios else '-'} (target <= 1.05)"
    )
    tp = figures["throughput_last"]
    print(f"throughput vs upload_file: {tp['throughput_ratio']} (target >= 0.9), "
          f"{tp['recheck_ratio']} with the whole archive hashed again; "
          f"peak RSS {tp['ours_peak_rss_mb']} MB on {tp['bytes'] / 1e6:.0f} MB, "
          f"{figures['throughput_first']['ours_peak_rss_mb']} MB on "
          f"{figures['throughput_first']['bytes'] / 1e6:.0f} MB (target <= 150)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
