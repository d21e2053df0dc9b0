"""Two source trees timed alternately, a child interpreter per run (each tree's own imports):
the loop and the report the tree-against-tree benches share."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def alternate(
    trees: dict[str, Path],
    runs: int,
    argv: Callable[[str], list[str]],
    seconds_of: Callable[[str, str], float],
) -> dict[str, list[float]]:
    """Each run of `python argv(tree name)…` with that tree on PYTHONPATH, the order flipped
    every round; seconds_of(tree name, the child's stdout) checks the output, returns its time."""
    got: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(runs):
        for name in list(trees) if i % 2 == 0 else list(reversed(trees)):
            done = subprocess.run(
                [sys.executable, *argv(name)],
                env={"PYTHONPATH": str(trees[name])},
                capture_output=True,
                text=True,
                check=True,
            )
            got[name].append(seconds_of(name, done.stdout))
    return got


def report(title: str, got: dict[str, list[float]]) -> None:
    """Medians per tree, and the median of the paired ratios when there are two."""
    print(title)
    for name, times in got.items():
        print(f"  {name:<5} {statistics.median(times):.4f} s")
    if "vs" in got:
        ratio = statistics.median(a / b for a, b in zip(got["this"], got["vs"], strict=True))
        print(f"  this/vs {ratio:.2f}")
