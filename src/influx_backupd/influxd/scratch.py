"""Scratch dirs in the storage dir, each for one throwaway influxd (a restore test, or a 1.x
restore's build beside the live server).

Each holds the throwaway's influxdb.conf and owner.json: which process made it and, for a
restore's build, the staging dirs it fills beside the live ones. A process killed outright
leaves the dir, its server serving and those staging dirs behind: guard.recover stops the
server and removes the staging dirs, prune removes the dir.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from influx_backupd.store import layout

PREFIX = layout.SCRATCH


@dataclass(frozen=True)
class Owner:
    pid: int
    # The owner's start time (psutil's create_time): a pid reused since by another process is
    # not the owner. None in dirs written before it was recorded.
    started: float | None
    staging: list[Path]


def make(storage: Path, kind: str = "", staging: list[Path] | None = None) -> Path:
    """A new scratch dir (PREFIX + kind + random), owned by this process."""
    storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = Path(tempfile.mkdtemp(prefix=PREFIX + kind, dir=storage))
    me = psutil.Process()
    owner = {"pid": me.pid, "started": me.create_time(), "staging": [str(p) for p in staging or []]}
    (path / "owner.json").write_text(json.dumps(owner))
    return path


def owner(scratch: Path) -> Owner | None:
    try:
        data = json.loads((scratch / "owner.json").read_text())
        started = data.get("started")
        return Owner(
            pid=int(data["pid"]),
            started=None if started is None else float(started),
            staging=[Path(str(p)) for p in data.get("staging") or []],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def owner_alive(scratch: Path) -> bool:
    """Whether another process that made this dir still runs (this one's own dirs are not
    in use by the time it asks: each use removes its dir)."""
    made_by = owner(scratch)
    if made_by is None or made_by.pid == os.getpid():
        return False
    try:
        started = psutil.Process(made_by.pid).create_time()
    except psutil.Error:
        return False
    return made_by.started is None or abs(started - made_by.started) < 0.01


def stop_server(scratch: Path) -> None:
    """The throwaway influxd of a dead owner: SIGKILL, as it holds nothing we keep."""
    conf = str(scratch / "influxdb.conf")
    for proc in psutil.process_iter(["cmdline"]):
        if conf in (proc.info["cmdline"] or []):
            try:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                continue
