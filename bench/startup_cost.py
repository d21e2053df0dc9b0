#!/usr/bin/env python3
"""What starting a command costs: `list`, `status`, `check-config` against a bare interpreter.

    python bench/startup_cost.py --runs 11
    python bench/startup_cost.py --runs 11 --vs-src /tmp/base/src   # two trees, paired

Monitoring probes `status` every minute, the unit's ExecStartPre runs `check-config` and the
test suite runs the CLI some thousands of times: nearly all of their CPU is the interpreter
importing what the command needs (pydantic's models of the config, structlog, the modules of
the command). Each round runs every command once per tree and a bare `python -c pass`, one
after the other, so a busy moment weighs on all alike; prints the median CPU seconds (user +
sys) and the ratios. The config is a small one in a temporary dir (no influxd is started:
none of these commands starts one). Not a test: nothing is asserted.

Byte-compile both trees first (`python -m compileall -q SRC`): under PYTHONDONTWRITEBYTECODE a
tree without byte code is compiled at every start and measures that instead.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

COMMANDS = (["list"], ["status"], ["check-config"])
SRC = Path(__file__).resolve().parent.parent / "src"


def write_config(root: Path) -> Path:
    """A config whose influxd is never asked for (a command: these commands only read it)."""
    conf = root / "influxdb.conf"
    conf.write_text(
        f'[meta]\n  dir = "{root}/meta"\n[data]\n  dir = "{root}/data"\n'
        f'  wal-dir = "{root}/wal"\n[http]\n  bind-address = "127.0.0.1:1"\n'
    )
    config = root / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{root}/state"\n'
        f'[influxd]\nconfig = "{conf}"\ncommand = ["/usr/bin/influxd", "-config", "{conf}"]\n'
        f'[storage]\ndir = "{root}/backups"\n'
        '[[job]]\nname = "nightly"\nevery = "1h"\nmode = "cold"\nkeep_last = 2\n'
    )
    (root / "backups").mkdir()
    return config


def cpu_of(argv: list[str], env: dict[str, str]) -> float:
    """CPU seconds (user + sys) of one run of argv."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument(
        "--src", type=Path, default=SRC, help="the tree measured (default: this one)"
    )
    parser.add_argument("--vs-src", type=Path, help="a second tree, measured in the same rounds")
    args = parser.parse_args()
    trees = {"this": args.src} | ({"vs": args.vs_src} if args.vs_src else {})
    with tempfile.TemporaryDirectory(prefix="startup-cost-") as tmp:
        config = write_config(Path(tmp))
        bare: list[float] = []
        got: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):
            bare.append(cpu_of([sys.executable, "-c", "pass"], dict(os.environ)))
            for name, src in trees.items():
                env = {**os.environ, "PYTHONPATH": str(src)}
                for command in COMMANDS:
                    argv = [sys.executable, "-m", "influx_backupd", "--config", str(config)]
                    got.setdefault((name, command[0]), []).append(cpu_of(argv + command, env))
    floor = statistics.median(bare)
    print(f"bare interpreter  {floor:.3f} CPU s (median of {args.runs})")
    for command in COMMANDS:
        line = f"{command[0]:<14}"
        for name in trees:
            cpu = statistics.median(got[(name, command[0])])
            line += f"  {name} {cpu:.3f} s ({cpu / floor:.1f}x bare)"
        if args.vs_src:
            ratio = statistics.median(
                a / b
                for a, b in zip(got[("this", command[0])], got[("vs", command[0])], strict=True)
            )
            line += f"  this/vs {ratio:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
