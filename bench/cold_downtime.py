#!/usr/bin/env python3
"""Cold-backup downtime, direct against staged, side by side in one run (issue 6).

    python bench/cold_downtime.py --size 2G          # the documented figures
    python bench/cold_downtime.py --size 200M --runs 3
    python bench/cold_downtime.py --hot-only --runs 5   # issue 6's hot comparison alone

Builds a throwaway real influxd (influx_backupd.influxd.sandbox) holding about --size of TSM and WAL,
keeps a writer going at a steady rate for the whole run, and runs direct and staged cold
backups alternately through the real CLI (`python -m influx_backupd backup --json`). Then, in
the same run: the archive writer against GNU tar on the same tree, the backup process's peak
RSS, the idle daemon (`run`) and a hot run against a bare `influxd backup -portable`, when
those commands exist. Prints medians and ratios; --json writes every figure to a file.

Not a test: nothing is asserted; targets are printed next to what was measured.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from influx_backupd.jobs.cold import tree_size
from influx_backupd.store.archive import write_archive

PHASES = ("stop_s", "copy_s", "start_s", "downtime_s", "prestage_s", "archive_s")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def post(url: str, body: bytes, timeout: float = 60) -> bool:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status) == 204
    except (urllib.error.URLError, OSError):
        return False


# -- data ------------------------------------------------------------------------------------


def generate(
    sandbox: Sandbox, size: int, db: str = "bench", first_ts: int = 1_500_000_000
) -> dict[str, Any]:
    """Incompressible string payloads (TSM stays about as large as what is written), 16 series,
    1 MiB requests from two threads: the quickest way to a given number of TSM+WAL bytes.
    Stops once the server's data and wal dirs hold `size` bytes; one point a second from
    first_ts on (seconds since the epoch)."""
    sandbox.create_db(db)
    url = sandbox.url + "/write?" + urllib.parse.urlencode({"db": db, "precision": "s"})
    payload_len, per_request = 3000, 320
    started = time.monotonic()
    lock = threading.Lock()
    state = {"next": 0, "done": False, "points": 0}

    def worker() -> None:
        while True:
            with lock:
                if state["done"]:
                    return
                n = state["next"]
                state["next"] += 1
            base = first_ts + n * per_request
            lines = []
            for i in range(per_request):
                blob = base64.b64encode(os.urandom(payload_len * 3 // 4)).decode()
                lines.append(f'blob,series=s{i % 16} payload="{blob}",n={i}i {base + i}')
            if not post(url, "\n".join(lines).encode()):
                raise RuntimeError("write failed while generating data")
            with lock:
                state["points"] += per_request

    threads: list[threading.Thread] = []
    try:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        while tree_size(sandbox.data) + tree_size(sandbox.wal) < size:
            if not any(t.is_alive() for t in threads):
                raise RuntimeError("the generator threads died")
            time.sleep(0.5)
    finally:
        with lock:
            state["done"] = True
        for t in threads:
            t.join()
    took = time.monotonic() - started
    # let influxd snapshot the cache and settle, so TSM dominates as on a real server
    time.sleep(3)
    return {
        "points": state["points"],
        "generate_s": round(took, 1),
        "rate_mb_s": round(size / took / 1e6, 1),
        "tsm_bytes": sum(p.stat().st_size for p in sandbox.data.rglob("*.tsm")),
        "wal_bytes": tree_size(sandbox.wal),
        "files": sum(1 for p in sandbox.root.rglob("*") if p.is_file()),
    }


class SteadyWriter:
    """Small numeric points at a steady rate in 10 batches a second, for the whole run."""

    def __init__(self, sandbox: Sandbox, rate: int, db: str = "bench") -> None:
        self.url = sandbox.url + "/write?" + urllib.parse.urlencode({"db": db, "precision": "ms"})
        self.rate = rate
        self.ok = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        per_batch = max(1, self.rate // 10)
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            now_ms = int(time.time() * 1000)
            body = "\n".join(
                f"steady,host=h{i % 8} value={n + i}i {now_ms - per_batch + i}"
                for i in range(per_batch)
            )
            if post(self.url, body.encode(), timeout=5):
                self.ok += per_batch
            else:
                self.failed += per_batch
            n += per_batch
            next_at += 0.1
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> SteadyWriter:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


# -- the CLI -----------------------------------------------------------------------------------


def write_config(work: Path, sandbox: Sandbox, jobs: str | None = None) -> Path:
    """The CLI's config for the sandbox; by default a direct and a staged cold job."""
    conf = work / "config.toml"
    if jobs is None:
        jobs = ""
        for name, copy in (("direct", "direct"), ("staged", "staged")):
            jobs += f'\n[[job]]\nname = "{name}"\nmode = "cold"\ncopy = "{copy}"\n'
            jobs += 'schedule = "0 3 1 1 *"\nkeep_staging = true\n'
    conf.write_text(
        f"""[daemon]
state_dir = "{work / "state"}"

[influxd]
config = "{sandbox.conf}"
command = {json.dumps(sandbox.command())}
user = "root"
group = "root"
stop_timeout = "60s"
start_timeout = "120s"

[storage]
dir = "{work / "archives"}"
{jobs}"""
    )
    return conf


def cli(conf: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "influx_backupd", "--config", str(conf), *args]


def has_command(conf: Path, name: str) -> bool:
    done = subprocess.run(cli(conf, name, "--help"), capture_output=True, text=True)
    return done.returncode == 0


def backup(conf: Path, job: str, mode: str | None = None) -> dict[str, Any]:
    """One CLI backup; the record plus wall time and the process's peak RSS."""
    args = ["backup", "--job", job, "--json", *(["--mode", mode] if mode else [])]
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        timer = (
            ["/usr/bin/time", "-f", "%M", "-o", rss.name] if Path("/usr/bin/time").exists() else []
        )
        started = time.monotonic()
        done = subprocess.run(timer + cli(conf, *args), capture_output=True, text=True)
        wall = time.monotonic() - started
        peak_kb = int(rss.read().strip().splitlines()[-1]) if timer else None
    try:
        record: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(
            f"backup --job {job}: no JSON ({done.returncode}): {done.stderr[-2000:]}"
        ) from None
    record["wall_s"] = wall
    record["peak_rss_mb"] = peak_kb / 1024 if peak_kb is not None else None
    if record.get("status") != "ok":
        raise RuntimeError(f"backup --job {job} failed: {record.get('error')}")
    archive = Path(record["archive"])  # measured; removed to keep the disk use flat
    if archive.is_dir():
        shutil.rmtree(archive)
    else:
        archive.unlink(missing_ok=True)
    return record


# -- side benches -------------------------------------------------------------------------------


def writer_vs_tar(root: Path, prefixes: list[str], out: Path, runs: int) -> dict[str, Any]:
    """The project's writer against `tar -cf` on the same tree (both fsync, as a backup must)."""
    sources = [(p, root / p) for p in prefixes]
    ours, tar, tar_nosync = [], [], []
    for _ in range(runs):
        t = time.monotonic()
        write_archive(out / "writer.tar", sources)
        ours.append(time.monotonic() - t)
        (out / "writer.tar").unlink()

        t = time.monotonic()
        subprocess.run(["tar", "-cf", str(out / "gnu.tar"), "-C", str(root), *prefixes], check=True)
        tar_nosync.append(time.monotonic() - t)
        fd = os.open(out / "gnu.tar", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        tar.append(time.monotonic() - t)
        (out / "gnu.tar").unlink()
    return {
        "bytes": sum(
            tree_size(root / p) if (root / p).is_dir() else (root / p).stat().st_size
            for p in prefixes
        ),
        "writer_s": ours,
        "tar_fsync_s": tar,
        "tar_nofsync_s": tar_nosync,
    }


def idle_daemon(conf: Path, seconds: float) -> dict[str, Any] | str:
    if not has_command(conf, "run"):
        return "not measured: run command missing"
    proc = subprocess.Popen(cli(conf, "run"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(5)  # start-up is not idling
        if proc.poll() is not None:
            return f"not measured: run exited {proc.returncode}: {proc.stderr.read()[-500:]!r}"  # type: ignore[union-attr]
        ps = psutil.Process(proc.pid)
        cpu0 = sum(ps.cpu_times()[:2])
        rss_max = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            rss_max = max(rss_max, ps.memory_info().rss)
            time.sleep(1)
        cpu = sum(ps.cpu_times()[:2]) - cpu0
        elapsed = time.monotonic() - started
        return {
            "seconds": round(elapsed, 1),
            "rss_mb": rss_max / 2**20,
            "cpu_pct": 100 * cpu / elapsed,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def same_guarantees(dest: Path) -> float:
    """What a bare `influxd backup` output still needs before it is as safe as one of our hot
    runs: every file fsynced (on disk before the run is called ok, invariant 2) and its sha256
    taken (the catalog's fingerprint, what `verify` and `restore` check later). Seconds."""
    t = time.monotonic()
    for path in sorted(dest.iterdir()):
        digest = hashlib.sha256()
        fd = os.open(path, os.O_RDONLY)
        try:
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
    dir_fd = os.open(dest, os.O_RDONLY)
    os.fsync(dir_fd)
    os.close(dir_fd)
    return time.monotonic() - t


class CpuMeter:
    """CPU seconds spent by the server and by every child this script waited for (the CLI and
    the `influxd backup` it runs, or the bare tool), between enter and exit."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.server = psutil.Process(sandbox.pids()[0])
        self.server_s = self.children_s = 0.0

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def _server(self) -> float:
        times = self.server.cpu_times()
        return times.user + times.system

    def __enter__(self) -> CpuMeter:
        self._s0, self._c0 = self._server(), self._children()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server_s = self._server() - self._s0
        self.children_s = self._children() - self._c0


def hot_vs_bare(conf: Path, sandbox: Sandbox, work: Path, runs: int) -> dict[str, Any] | str:
    """`backup --mode hot` through the CLI against a bare `influxd backup -portable`, alternating
    which goes first; `sync` before each so neither pays for the other's dirty pages. After each
    bare run (outside its time), the fsync and sha256 that would give it our run's guarantees."""
    import importlib.util

    if importlib.util.find_spec("influx_backupd.jobs.hot") is None:
        return "not measured: hot mode missing (no influx_backupd.jobs.hot)"
    ours: list[float] = []
    bare: list[float] = []
    guarantees: list[float] = []
    parts: list[dict[str, Any]] = []
    cpu: dict[str, list[float]] = {"hot": [], "bare": []}  # CPU seconds, server + client
    # Untimed first: right after the data is generated influxd still compacts, and whichever
    # backup went first took 4-6 times as long (13-14 s against 2-3 s in two --hot-only runs).
    tool = [sandbox.binary, "backup", "-portable", "-host", sandbox.backup_host]
    warm_up = work / "warm-up"
    subprocess.run([*tool, str(warm_up)], check=True, capture_output=True)
    shutil.rmtree(warm_up)
    for i in range(runs):
        for which in ("hot", "bare") if i % 2 == 0 else ("bare", "hot"):
            os.sync()
            if which == "hot":
                try:
                    with CpuMeter(sandbox) as meter:
                        record = backup(conf, "direct", mode="hot")
                except RuntimeError as exc:
                    return f"not measured: hot run failed: {exc}"
                cpu["hot"].append(meter.server_s + meter.children_s)
                ours.append(record["wall_s"])
                extra = record.get("extra") or {}
                part = {k: extra.get(k) for k in ("tool_s", "catchup_s", "check_s")}
                part["run_s"] = round(record["finished_at_unix"] - record["started_at_unix"], 3)
                part["bytes"] = record["bytes"]
                parts.append(part)
                continue
            dest = work / f"bare-{i}"
            with CpuMeter(sandbox) as meter:
                t = time.monotonic()
                subprocess.run([*tool, str(dest)], check=True, capture_output=True)
                bare.append(time.monotonic() - t)
            cpu["bare"].append(meter.server_s + meter.children_s)
            guarantees.append(same_guarantees(dest))
            shutil.rmtree(dest)
        print(
            f"  hot #{i + 1}: ours {ours[-1]:.3f}s {parts[-1]}, bare {bare[-1]:.3f}s "
            f"(+ fsync and sha256 {guarantees[-1]:.3f}s); CPU s ours {cpu['hot'][-1]:.2f}, "
            f"bare {cpu['bare'][-1]:.2f}",
            flush=True,
        )
    return {
        "hot_s": ours,
        "bare_s": bare,
        "guarantees_s": guarantees,
        "hot_parts": parts,
        "cpu_s": cpu,
        "cpus": os.cpu_count() or 1,
        "sha256_bytes_per_s": sha256_speed(),
    }


def sha256_speed() -> float:
    """hashlib's sha256 on this machine, bytes per CPU second (in memory; best of 3)."""
    block = os.urandom(256 << 20)
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        hashlib.sha256(block).hexdigest()
        best = min(best, time.process_time() - t)
    return len(block) / best


def hot_summary(hot: dict[str, Any]) -> list[tuple[str, float, bool | None]]:
    """The hot figures as (what, ratio, met or None when the figure has no target)."""
    ours, bare = need(med(hot["hot_s"])), need(med(hot["bare_s"]))
    checked = need(med([b + g for b, g in zip(hot["bare_s"], hot["guarantees_s"], strict=True)]))
    parts = hot["hot_parts"]
    run, tool = need(med([p["run_s"] for p in parts])), need(med([p["tool_s"] for p in parts]))
    print(
        f"hot (median of {len(hot['hot_s'])}): CLI {ours:.3f}s, its run {run:.3f}s, the tool "
        f"inside it {tool:.3f}s; bare {bare:.3f}s, bare + fsync + sha256 {checked:.3f}s"
    )
    return [
        ("hot CLI / bare influxd backup <= 1.05", ours / bare, ours / bare <= 1.05),
        ("hot run (record: started -> finished) / bare", run / bare, None),
        ("hot CLI / (bare + fsync + sha256)", ours / checked, None),
        ("the tool inside our run / bare (hashing alongside)", tool / bare, None),
        *cpu_floor(hot, bare),
    ]


def cpu_floor(hot: dict[str, Any], bare_wall: float) -> list[tuple[str, float, bool | None]]:
    """How close to bare a hot run can come on this machine at all: the CPU seconds it needs
    (server + tool + our sha256 and checks) spread perfectly over every core. Above 1.05 the
    target cannot be met here without doing less work, whatever the scheduling."""
    cpu = hot.get("cpu_s")
    if not cpu:
        return []  # a --json report from before the CPU was measured
    ours, bare = need(med(cpu["hot"])), need(med(cpu["bare"]))
    cores = int(hot["cpus"])
    print(
        f"CPU seconds (server + client, median): ours {ours:.2f}, bare {bare:.2f}, "
        f"ours - bare {ours - bare:.2f}; bare keeps {bare / bare_wall:.2f} of {cores} cores busy"
    )
    floor = max(bare_wall, ours / cores) / bare_wall
    # The least any run that fingerprints every byte must add: sha256 alone, no Python start,
    # no copies, no fsync.
    hashed = need(med([p["bytes"] for p in hot["hot_parts"]]))
    sha_s = hashed / float(hot["sha256_bytes_per_s"])
    print(
        f"sha256 here: {hot['sha256_bytes_per_s'] / 1e9:.2f} GB per CPU second; "
        f"{hashed / 1e9:.2f} GB hashed per run = {sha_s:.2f} CPU s"
    )
    sha_floor = max(bare_wall, (bare + sha_s) / cores) / bare_wall
    return [
        (f"floor: ours' CPU seconds / {cores} cores / bare wall", floor, None),
        (
            f"floor with sha256 as the only cost: (bare CPU + sha256) / {cores} / bare",
            sha_floor,
            None,
        ),
    ]


def print_checks(checks: list[tuple[str, float, bool | None]]) -> None:
    for name, value, met in checks:
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"  {'    ' if met is None else 'met ' if met else 'MISS'}  {name}: {shown}")


def hot_only(args: argparse.Namespace, size: int, work: Path) -> int:
    """--hot-only: data, steady writer, and the hot comparison alone (issue 6)."""
    load_before = os.getloadavg()
    sandbox = Sandbox(work / "server", binary=influxd_binary() or "/usr/bin/influxd")
    sandbox.write_config()
    sandbox.start()
    try:
        print(f"generating {args.size} of TSM+WAL ...", flush=True)
        data = generate(sandbox, size)
        print(f"  {data}", flush=True)
        conf = write_config(work, sandbox)
        scratch = work / "scratch"
        scratch.mkdir(exist_ok=True)
        with SteadyWriter(sandbox, args.rate):
            print("hot vs bare influxd backup ...", flush=True)
            hot = hot_vs_bare(conf, sandbox, scratch, args.runs)
    finally:
        sandbox.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n# python bench/cold_downtime.py {' '.join(sys.argv[1:])}")
    print(f"load average before {load_before}, after {os.getloadavg()}")
    if isinstance(hot, str):
        print(hot)
        return 1
    print(f"hot (CLI) {hot['hot_s']}\nbare       {hot['bare_s']}")
    print_checks(hot_summary(hot))
    if args.json:
        report = {"data": data, "hot": hot, "load_before": load_before}
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


# -- report -------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    mem = psutil.virtual_memory().total / 2**30
    influxd = subprocess.run(
        [influxd_binary() or "influxd", "version"], capture_output=True, text=True
    )
    return {
        "cpu": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
        "ram": f"{mem:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "influxd": influxd.stdout.strip(),
    }


def disk(path: Path) -> str:
    done = subprocess.run(["df", "-hT", str(path)], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else "?"


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def need(value: float | None) -> float:
    """A median that must exist: every run of a completed bench measured it."""
    if value is None:
        raise RuntimeError("a figure was not measured")
    return value


def fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.3f} s"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="2G", help="TSM+WAL to generate (default 2G; e.g. 200M)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each copy mode (default 3)")
    ap.add_argument("--rate", type=int, default=2000, help="steady writer, points/s (default 2000)")
    ap.add_argument("--idle", type=float, default=60.0, help="idle daemon seconds (default 60)")
    ap.add_argument("--workdir", help="where the sandbox and archives go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument(
        "--hot-only", action="store_true", help="only the hot run against bare influxd backup"
    )
    args = ap.parse_args()
    size = parse_size(args.size)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cold-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.hot_only:
        return hot_only(args, size, work)
    report: dict[str, Any] = {
        "command": "python bench/cold_downtime.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "disk": disk(work),
        "load_before": os.getloadavg(),
    }
    print(f"work dir {work}; machine {report['machine']}; load {report['load_before']}", flush=True)
    sandbox = Sandbox(work / "server", binary=influxd_binary() or "/usr/bin/influxd")
    sandbox.write_config()
    sandbox.start()
    try:
        print(f"generating {args.size} of TSM+WAL ...", flush=True)
        report["data"] = generate(sandbox, size)
        print(f"  {report['data']}", flush=True)
        conf = write_config(work, sandbox)
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "staged": []}
        with SteadyWriter(sandbox, args.rate) as writer:
            print("first staged run (fills the staging tree) ...", flush=True)
            report["first_staged"] = backup(conf, "staged")
            for i in range(args.runs):
                for job in ("direct", "staged"):
                    record = backup(conf, job)
                    runs[job].append(record)
                    print(
                        f"  {job:<6} #{i + 1}: downtime {record['downtime_s']:.3f}s = stop "
                        f"{record['stop_s']:.3f} + copy {record['copy_s']:.3f} + start "
                        f"{record['start_s']:.3f}; window {record['window_bytes'] / 2**20:.1f} MiB",
                        flush=True,
                    )
            report["writer"] = {"ok_points": writer.ok, "failed_points": writer.failed}
            staging = work / "archives" / ".staging" / "staged"
            prefixes = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
            print("archive writer vs GNU tar ...", flush=True)
            scratch = work / "scratch"
            scratch.mkdir(exist_ok=True)
            report["writer_vs_tar"] = writer_vs_tar(staging, prefixes, scratch, args.runs)
            print("hot vs bare influxd backup ...", flush=True)
            report["hot"] = hot_vs_bare(conf, sandbox, scratch, args.runs)
        print(f"idle daemon for {args.idle:.0f}s ...", flush=True)
        report["idle"] = idle_daemon(conf, args.idle)
        report["runs"] = runs
        report["load_after"] = os.getloadavg()
    finally:
        sandbox.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


def print_report(r: dict[str, Any]) -> None:
    d, s = r["runs"]["direct"], r["runs"]["staged"]
    print()
    print(f"# {r['command']}  ({r['date']})")
    print(f"machine: {r['machine']}; disk: {r['disk']}")
    print(f"load average before {r['load_before']}, after {r['load_after']}")
    print(f"data: {r['data']}; steady writer: {r['writer']}")
    print()
    print(f"| figure (median of {len(d)}) | direct | staged | staged / direct |")
    print("| --- | ---: | ---: | ---: |")
    rows: list[tuple[str, str]] = [(p, "s") for p in PHASES]
    rows += [("window_bytes", "B"), ("wall_s", "s"), ("peak_rss_mb", "MB")]
    medians: dict[str, tuple[float | None, float | None]] = {}
    for key, unit in rows:
        a, b = med([x.get(key) for x in d]), med([x.get(key) for x in s])
        medians[key] = (a, b)
        ratio = f"{b / a:.3f}" if a and b is not None else "-"
        print(f"| {key} | {fmt(a, unit)} | {fmt(b, unit)} | {ratio} |")
    first = r["first_staged"]
    print(
        f"\nfirst staged run (empty staging tree): prestage {first['prestage_s']:.3f}s, "
        f"copy {first['copy_s']:.3f}s, downtime {first['downtime_s']:.3f}s"
    )
    wt = r["writer_vs_tar"]
    writer_m = need(med(wt["writer_s"]))
    tar_m, raw_m = need(med(wt["tar_fsync_s"])), need(med(wt["tar_nofsync_s"]))
    print(
        f"archive writer vs GNU tar on {wt['bytes'] / 2**20:.0f} MiB: writer {writer_m:.3f}s, "
        f"tar+fsync {tar_m:.3f}s, tar without fsync {raw_m:.3f}s"
    )
    print("\ntargets:")
    copy_ratio = (medians["copy_s"][1] or 0) / (medians["copy_s"][0] or 1)
    staged_budget = (medians["stop_s"][1] or 0) + (medians["start_s"][1] or 0) + 0.5
    staged_downtime = need(medians["downtime_s"][1])
    checks: list[tuple[str, float, bool | None]] = [
        ("staged copy_s / direct copy_s <= 0.05", copy_ratio, copy_ratio <= 0.05),
        (
            f"staged downtime_s <= stop_s + start_s + 0.5 s ({staged_budget:.3f})",
            staged_downtime,
            staged_downtime <= staged_budget,
        ),
        ("writer / tar+fsync <= 1.15", writer_m / tar_m, writer_m / tar_m <= 1.15),
        ("writer / tar (no fsync) <= 1.15", writer_m / raw_m, writer_m / raw_m <= 1.15),
    ]
    peak = max(medians["peak_rss_mb"][0] or 0, medians["peak_rss_mb"][1] or 0)
    checks.append(("backup peak RSS <= 100 MB", peak, peak <= 100))
    hot = r["hot"]
    if isinstance(hot, dict):
        checks += hot_summary(hot)
    else:
        print(f"  hot / bare: {hot}")
    idle = r["idle"]
    if isinstance(idle, dict):
        checks.append(("idle daemon RSS <= 60 MB", idle["rss_mb"], idle["rss_mb"] <= 60))
        checks.append(("idle daemon CPU < 0.1 %", idle["cpu_pct"], idle["cpu_pct"] < 0.1))
    else:
        print(f"  idle daemon: {idle}")
    print_checks(checks)


if __name__ == "__main__":
    raise SystemExit(main())
