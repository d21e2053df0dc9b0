#!/usr/bin/env python3
"""A 1.x hot chain restored at file speed against a single full holding the same data.

    python bench/restore_chain.py --size 1G --increment 450M --increments 2 --runs 1

Builds a real server of --size, takes a hot full (job "chain"), then --increments times writes
--increment more (into later shards, SHARD_STEP) and takes a hot increment, each link once the
server's compactions have settled; last, a hot full of the final server (job "single"). Then, side by side (rounds alternate the order), `restore ID --target DIR` of the
chain's first increment, of its last increment and of the single full, each timed, while every
influxd whose command line names the bench's dir (the throwaway the restore builds in and the
`influxd restore` tool) is sampled every 100 ms for its anonymous resident memory (RssAnon:
heap, not the page cache of mmapped TSM files). The restored dirs are served once to count
their points. Prints a Markdown table. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_downtime import generate, parse_size, write_config  # a sibling script

from influx_backupd.influxd.influxql import query, values
from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from influx_backupd.store.catalog import Catalog

JOBS = """
[[job]]
name = "chain"
mode = "hot"
full_every = "30d"

[[job]]
name = "single"
mode = "hot"
full_every = "30d"
"""


# Each increment's points start in a later shard group (autogen: 7 days): an increment then holds
# the new data, not the full's files rewritten by a compaction, which would make the chain's
# increments outgrow its full and the next backup a full (jobs/plan.py).
SHARD_STEP = 8 * 86400


def settled(server: Sandbox, quiet: float = 10.0, limit: float = 600.0) -> None:
    """Wait until the server's TSM files have not changed for `quiet` seconds (its level
    compactions done), at most `limit` seconds."""
    started = time.monotonic()
    seen: list[str] = []
    since = time.monotonic()
    while time.monotonic() - started < limit:
        now = sorted(str(p) for p in server.data.rglob("*.tsm"))
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(1.0)


class Peaks:
    """Peak RssAnon of every influxd process naming `mark` in its command line, by role."""

    def __init__(self, mark: str) -> None:
        self.mark = mark
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            for proc in psutil.process_iter(["name", "cmdline"]):
                argv = proc.info["cmdline"] or []
                if proc.info["name"] != "influxd" or not any(self.mark in a for a in argv):
                    continue
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                anon = int(fields.get("RssAnon", "0 kB").split()[0]) << 10
                role = argv[1] if len(argv) > 1 else "?"
                old = self.peaks.get(proc.pid, (role, 0))[1]
                self.peaks[proc.pid] = (role, max(old, anon))

    def by_role(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for role, anon in self.peaks.values():
            found[role] = max(found.get(role, 0.0), anon / 2**20)
        return found

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cli(conf: Path, *args: str, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(conf), *args, "--json"],
        capture_output=True,
        text=True,
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"{args}: {done.stderr[-2000:]}") from None
    if done.returncode != 0:
        raise RuntimeError(f"{args} exited {done.returncode}: {done.stderr[-2000:]}")
    for line in done.stderr.splitlines() if events is not None else []:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "restore.chain_merge":
            events.append(event)
    return result


def build(
    work: Path, size: int, more: int, increments: int, step: int
) -> tuple[Path, list[dict[str, Any]]]:
    server = Sandbox(work / "server", binary=influxd_binary() or "/usr/bin/influxd")
    server.write_config()
    server.start()
    conf = write_config(work, server, jobs=JOBS)
    links = []
    try:
        data = generate(server, size)
        settled(server)
        links.append(cli(conf, "backup", "--job", "chain"))
        first_ts = 1_500_000_000 + data["points"] + step
        for number in range(increments):
            data = generate(server, size + more * (number + 1), first_ts=first_ts)
            first_ts += data["points"] + step
            settled(server)
            links.append(cli(conf, "backup", "--job", "chain"))
        single = cli(conf, "backup", "--job", "single")
    finally:
        server.stop()
    for link in links[1:]:
        if link.get("kind") != "incremental":
            raise RuntimeError(f"a link is a {link.get('kind')}, not an increment")
    sizes = ", ".join(f"{link['kind']} {link['bytes'] >> 20} MiB" for link in links)
    print(f"  chain: {sizes}; single full {single['bytes'] >> 20} MiB", flush=True)
    return conf, [*links, single]


@contextmanager
def without_listings(work: Path, ids: list[str]) -> Iterator[None]:
    """The links' shard listings taken out of the catalog meanwhile: the restore then takes
    the SQL merge (SELECT INTO), as before the file merge or for a remote backup_host."""
    catalog = Catalog(work / "state")
    kept = {}
    for run_id in ids:
        record = catalog.get(run_id)
        if record is not None and "shard_listing" in record.extra:
            kept[run_id] = record.extra.pop("shard_listing")
            catalog.save(record)
    try:
        yield
    finally:
        for run_id, listing in kept.items():
            record = catalog.get(run_id)
            if record is not None:
                record.extra["shard_listing"] = listing
                catalog.save(record)


def restore(conf: Path, work: Path, run_id: str, sql: list[str] | None = None) -> dict[str, Any]:
    target = work / "restored"
    shutil.rmtree(target, ignore_errors=True)
    with Peaks(str(work)) as peaks, without_listings(work, sql or []):
        started = time.monotonic()
        merges: list[dict[str, Any]] = []
        result = cli(conf, "restore", run_id, "--target", str(target), events=merges)
        took = time.monotonic() - started
    return {
        "seconds": took,
        "merge": result.get("merge"),
        "why": result.get("merge_reason"),
        "merged": {k: merges[0].get(k) for k in ("seconds", "shards_reused", "shards_packed")}
        if merges
        else None,
        "anon": peaks.by_role(),
        "target": target,
    }


def points(target: Path) -> int:
    """Serve the restored dir as printed and count its points."""
    raw = tomllib.loads((target / "influxdb.conf").read_text())
    url = "http://" + raw["http"]["bind-address"]
    proc = subprocess.Popen(
        [influxd_binary() or "/usr/bin/influxd", "run", "-config", str(target / "influxdb.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                rows = values(query(url, "SELECT count(n) FROM blob", db="bench", timeout=600))
                return int(rows[0][1]) if rows else 0
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="1G", help="data before the full (default 1G)")
    ap.add_argument("--increment", default="450M", help="data written before each increment")
    ap.add_argument("--increments", type=int, default=2, help="increments (default 2)")
    ap.add_argument("--runs", type=int, default=1, help="rounds of every restore (default 1)")
    ap.add_argument(
        "--same-shard",
        action="store_true",
        help="increments write on into the full's shard (its files then packed again)",
    )
    ap.add_argument(
        "--sql", action="store_true", help="also the whole chain by SELECT INTO (no listings)"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="restore-chain-bench-"))
    try:
        print(f"generating {args.size}, then {args.increments} x {args.increment} ...")
        conf, links = build(
            work,
            parse_size(args.size),
            parse_size(args.increment),
            args.increments,
            10 if args.same_shard else SHARD_STEP,
        )
        cases = {
            "chain: full + 1 increment": links[1]["id"],
            f"chain: full + {args.increments} increments": links[-2]["id"],
            "single full, same data": links[-1]["id"],
        }
        if args.sql:
            cases[f"chain: full + {args.increments} increments, SELECT INTO"] = links[-2]["id"]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
        names = list(cases)
        loads = []
        for i in range(args.runs):
            for name in names if i % 2 == 0 else names[::-1]:
                sql = [link["id"] for link in links[1:-1]] if "SELECT INTO" in name else None
                result = restore(conf, work, cases[name], sql)
                loads.append(psutil.getloadavg()[0])
                if i == args.runs - 1:
                    result["points"] = points(result["target"])
                shutil.rmtree(result["target"], ignore_errors=True)
                results[name].append(result)
                shown = {k: v for k, v in result.items() if k != "target"}
                print(f"  {name}: {shown}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n# python bench/restore_chain.py {' '.join(sys.argv[1:])}")
    print(f"load average (1 min) after each restore: {', '.join(f'{x:.1f}' for x in loads)}")
    single = statistics.median(r["seconds"] for r in results["single full, same data"])
    print(
        f"| restore --target (median of {args.runs}) | how | time | / single full "
        "| peak RssAnon: server | peak RssAnon: restore tool | points |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        rows = results[name]
        took = statistics.median(r["seconds"] for r in rows)
        server = max(r["anon"].get("run", 0.0) for r in rows)
        tool = max(r["anon"].get("restore", 0.0) for r in rows)
        how = rows[-1]["merge"] or "one link"
        print(
            f"| {name} | {how} | {took:.1f} s | {took / single:.2f} | {server:.0f} MB "
            f"| {tool:.0f} MB | {rows[-1].get('points')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
