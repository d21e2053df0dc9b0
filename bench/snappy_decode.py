#!/usr/bin/env python3
"""Snappy decoding of real WAL entries: cramjam against the pure-Python decoder it replaced.

    python bench/snappy_decode.py --size 100M --runs 3

Starts a real influxd sandbox whose cache is never snapshotted (so every write stays in the
WAL), writes telegraf-like points (a cpu measurement, 8 hosts x 4 cpus, 6 float fields) until
its wal dir holds --size, then reads every entry of every segment and decodes the payloads with
each decoder, alternately, checking that both give the same bytes. Also times the WAL check
`verify --deep` runs (formats.wal.check_wal) with each decoder plugged in, and sha256 of the same
segment bytes, the floor of any check that reads every byte. The pure-Python decoder is read
from git history (PURE_AT, its last version); without git it is left out. Not a test: nothing
is asserted.

    python bench/snappy_decode.py --size 100M --libsnappy /usr/lib/x86_64-linux-gnu/libsnappy.so.1

--libsnappy: also decode into a reused buffer with snappy's reference C++ library (Debian's
libsnappy1v5, called through ctypes, which releases the GIL as cramjam does), beside cramjam's
decompress_raw_into into the same buffer: is there a faster decoder to be had?
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import random
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cramjam

from influx_backupd.influxd.sandbox import Sandbox, influxd_binary
from influx_backupd.store.formats import wal

# influxd settings that keep every write in the WAL: its cache is never snapshotted to TSM
WAL_ONLY = {
    "cache-snapshot-memory-size": '"8g"',
    "cache-max-memory-size": '"8g"',
    "cache-snapshot-write-cold-duration": '"10h"',
}
PURE_AT = "32fd5c9:src/influx_backupd/formats/snappy.py"  # the decoder before cramjam

FIELDS = ("usage_user", "usage_system", "usage_idle", "usage_iowait", "usage_irq", "usage_steal")


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def wal_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.wal"))


def generate(sandbox: Sandbox, size: int) -> int:
    """Telegraf-like cpu points, 10 s apart per series, 5000 a request, from two threads."""
    sandbox.create_db("bench")
    url = sandbox.url + "/write?" + urllib.parse.urlencode({"db": "bench", "precision": "s"})
    state = {"next": 0, "done": False, "points": 0}
    lock = threading.Lock()

    def worker() -> None:
        rng = random.Random()
        while True:
            with lock:
                if state["done"]:
                    return
                n = state["next"]
                state["next"] += 1
            lines = []
            for i in range(5000):
                point, series = divmod(n * 5000 + i, 32)
                values = ",".join(f"{f}={rng.uniform(0, 100):.2f}" for f in FIELDS)
                ts = 1_600_000_000 + point * 10
                lines.append(f"cpu,host=h{series // 4},cpu=cpu{series % 4} {values} {ts}")
            req = urllib.request.Request(url, data="\n".join(lines).encode(), method="POST")
            with urllib.request.urlopen(req, timeout=60) as resp:
                assert resp.status == 204
            with lock:
                state["points"] += 5000

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    while wal_bytes(sandbox.wal) < size and any(t.is_alive() for t in threads):
        time.sleep(0.3)
    with lock:
        state["done"] = True
    for t in threads:
        t.join()
    return state["points"]


def entries(segments: list[bytes]) -> list[bytes]:
    payloads = []
    for seg in segments:
        pos = 0
        while pos + 5 <= len(seg):
            length = int.from_bytes(seg[pos + 1 : pos + 5], "big")
            if pos + 5 + length > len(seg):
                break
            payloads.append(seg[pos + 5 : pos + 5 + length])
            pos += 5 + length
    return payloads


def cramjam_decompress(src: bytes) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(src))


def pure_decoder() -> Callable[[bytes], bytes] | None:
    """The hand-written decoder as it was, from git history (None without git or history)."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(repo), "show", PURE_AT], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    namespace: dict[str, Any] = {"__name__": "snappy_pure"}
    exec(compile(done.stdout, PURE_AT, "exec"), namespace)
    decode: Callable[[bytes], bytes] = namespace["decompress"]
    return decode


def into_buffer_decoders(libsnappy: str | None) -> dict[str, Callable[[bytes], int]]:
    """Decoders that write into one reused output buffer (as verify's own decompress does):
    cramjam's, and the reference library's when a path to it is given."""
    buffer = bytearray(64 << 20)
    decoders: dict[str, Callable[[bytes], int]] = {
        "into cramjam": lambda src: int(cramjam.snappy.decompress_raw_into(src, buffer))
    }
    if libsnappy:
        uncompress = ctypes.CDLL(libsnappy).snappy_uncompress
        uncompress.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
        ]
        out = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        length = ctypes.c_size_t()

        def reference(src: bytes) -> int:
            length.value = len(buffer)
            if uncompress(src, len(src), ctypes.addressof(out), ctypes.byref(length)) != 0:
                raise ValueError("libsnappy: not a valid snappy block")
            return length.value

        decoders["into libsnappy"] = reference
    return decoders


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="100M", help="WAL to generate (default 100M)")
    ap.add_argument("--runs", type=int, default=3, help="rounds of each decoder (default 3)")
    ap.add_argument("--libsnappy", help="path of libsnappy.so.1 to compare with (see above)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="snappy-bench-") as work:
        server = Sandbox(
            Path(work) / "server",
            binary=influxd_binary() or "/usr/bin/influxd",
            extra_data=WAL_ONLY,
        )
        server.write_config()
        server.start()
        try:
            points = generate(server, parse_size(args.size))
            paths = sorted(server.wal.rglob("*.wal"))
            segments = [p.read_bytes() for p in paths]
        finally:
            server.stop()
    payloads = entries(segments)
    compressed = sum(len(p) for p in payloads)
    plain = sum(len(cramjam_decompress(p)) for p in payloads)
    on_disk = sum(len(s) for s in segments)
    print(
        f"{points} points; {len(paths)} segments, {on_disk / 2**20:.1f} MiB; {len(payloads)} "
        f"entries, {compressed / 2**20:.1f} MiB snappy -> {plain / 2**20:.1f} MiB "
        f"({plain / compressed:.2f}x)"
    )
    pure = pure_decoder()
    for p in payloads[:200] if pure else []:
        assert pure(p) == cramjam_decompress(p), "the decoders disagree"

    def check_all() -> None:
        for i, seg in enumerate(segments):
            findings = wal.check_wal(io.BytesIO(seg), len(seg), f"wal/{i}", deep=True)
            assert not [f for f in findings if f.severity == "error"], findings

    into = into_buffer_decoders(args.libsnappy)
    for p in payloads[:200]:
        assert len({decode(p) for decode in into.values()}) == 1, "the decoders disagree"
    decoders: dict[str, Callable[[bytes], bytes]] = {"cramjam": cramjam_decompress}
    if pure is not None:
        decoders["pure-Python"] = pure
    else:
        print(f"(no pure-Python row: git show {PURE_AT} failed)")
    times: dict[str, list[float]] = {}
    original = wal.decompress
    try:
        for run in range(args.runs):
            order = list(decoders) if run % 2 == 0 else list(reversed(decoders))
            for name in order:
                decode = decoders[name]
                times.setdefault(f"decode {name}", []).append(
                    timed(lambda d=decode: [d(p) for p in payloads])  # type: ignore[misc]
                )
                wal.decompress = decode  # type: ignore[assignment]
                times.setdefault(f"check_wal {name}", []).append(timed(check_all))
            for name in list(into) if run % 2 == 0 else list(reversed(into)):
                decode_into = into[name]
                times.setdefault(f"decode {name}", []).append(
                    timed(lambda d=decode_into: [d(p) for p in payloads])  # type: ignore[misc]
                )
            times.setdefault("sha256", []).append(
                timed(lambda: [hashlib.sha256(s).digest() for s in segments])
            )
    finally:
        wal.decompress = original
    print(f"{'what':<24}{'median s':>10}{'MB/s in':>10}{'MB/s out':>10}  runs")
    for name, values in times.items():
        median = statistics.median(values)
        inp = (on_disk if not name.startswith("decode") else compressed) / median / 1e6
        print(
            f"{name:<24}{median:>10.3f}{inp:>10.1f}{plain / median / 1e6:>10.1f}  "
            f"{[round(v, 3) for v in values]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
