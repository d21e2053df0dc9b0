"""Scratch dirs in the storage dir, each for one throwaway influxd (a restore test, or a 1.x
restore's build beside the live server).

Each holds the throwaway's influxdb.conf (or a dir of its own holding one) and owner.json: which process made it and, for a
restore's build, the staging dirs it fills beside the live ones. A process killed outright
leaves the dir, its server serving and those staging dirs behind: guard.recover stops the
server and removes the staging dirs, prune removes the dir.

A `restore --target DIR` names DIR too (and whether it made it): its throwaways serve from a
conf in DIR (`--start`), and a DIR its restore never finished is removed again by recovery.
Once its server answers, `--start` hands the server over to the user by removing the dir.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from influx_backupd.core.atomic import read_ours_text
from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.processes import own_identity, same_process
from influx_backupd.store import layout

PREFIX = layout.SCRATCH


@dataclass(frozen=True)
class Owner:
    pid: int
    # The owner's start time (psutil's create_time) and core.processes' `start`: a pid reused
    # since by another process is not the owner. None in dirs written before they were recorded.
    started: float | None
    staging: list[Path]
    start: str | None = None
    target: Path | None = None  # restore --target's DIR
    created: bool = False  # DIR was made by that restore (else it was an empty dir)

    @property
    def serves(self) -> list[str]:
        """Confs, besides the scratch dir's own, whose influxd is this owner's."""
        return [] if self.target is None else [str(self.target / "influxdb.conf")]


def make(
    storage: Path,
    kind: str = "",
    staging: list[Path] | None = None,
    *,
    target: Path | None = None,
    created: bool = False,
) -> Path:
    """A new scratch dir (PREFIX + kind + random), owned by this process."""
    storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = Path(tempfile.mkdtemp(prefix=PREFIX + kind, dir=storage))
    me = own_identity()
    owner: dict[str, object] = {
        "pid": me["pid"],
        "started": me.get("create_time"),
        "start": me.get("start"),
        "staging": [str(p) for p in staging or []],
    }
    if target is not None:
        owner.update(target=str(target), created=created)
    partial = path / "owner.json.partial"
    partial.write_text(json.dumps(owner))
    partial.rename(path / "owner.json")  # never half a record: recovery acts on what it says
    return path


def owner(scratch: Path) -> Owner | None:
    try:
        data = loads_json(read_ours_text(scratch / "owner.json"))
        started, start = data.get("started"), data.get("start")
        return Owner(
            pid=int(data["pid"]),
            started=None if started is None else float(started),
            staging=[Path(str(p)) for p in data.get("staging") or []],
            start=start if isinstance(start, str) else None,
            target=None if data.get("target") is None else Path(str(data["target"])),
            created=bool(data.get("created", False)),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def owner_alive(scratch: Path) -> bool:
    """Whether another process that made this dir still runs (this one's own dirs are not
    in use by the time it asks: each use removes its dir)."""
    made_by = owner(scratch)
    if made_by is None or made_by.pid == os.getpid():
        return False
    if made_by.started is None:  # written before the start time was recorded
        try:
            return made_by.pid > 0 and psutil.pid_exists(made_by.pid)
        except OverflowError:  # a pid no process can have
            return False
    return same_process(made_by.pid, made_by.started, made_by.start) is not None


def ours_and_dead(path: Path) -> bool:
    """A scratch dir of ours whose owner is gone: recovery and prune may clear it."""
    if not path.is_dir() or owner_alive(path):
        return False
    return is_ours(path, owner(path))


def is_ours(path: Path, made_by: Owner | None) -> bool:
    """A scratch dir of ours: its owner record reads (made_by), or it is empty (killed between
    mkdtemp and the owner record). A dir another tool or a person named `.verify-…` is none of
    ours, whatever it holds."""
    if path.is_symlink():
        return False
    if made_by is not None:
        return True
    try:
        return not any(path.iterdir())
    except OSError:
        return False


def left_behind(scratch: Path) -> list[str]:
    """What recovery has to clear of this dir's dead owner (guard's _restore_tests_left): its
    throwaway influxds still running, the restore staging dirs it named still there, the dir
    itself. Empty for a live owner's dir."""
    if owner_alive(scratch):
        return []
    made_by = owner(scratch)
    found = [
        f"a throwaway influxd (pid {proc.pid}) of {scratch}" for proc in _servers(scratch, made_by)
    ]
    found += [
        f"restore staging dir {staged} (a copy of the data beside the live dirs)"
        for staged in (made_by.staging if made_by else [])
        if layout.is_restore_staging(staged) and staged.is_dir()
    ]
    if made_by is not None and made_by.target is not None:
        found.append(f"restore --target {made_by.target}, not finished")
    if is_ours(scratch, made_by):  # its owner is dead (above)
        found.append(f"the working dir {scratch} of a killed restore or restore test")
    return found


def _servers(scratch: Path, made_by: Owner | None) -> list[psutil.Process]:
    """The influxds serving from this dir's conf (or a conf inside it, or its owner's
    (`made_by`) `--target` DIR's)."""
    confs = {str(scratch / "influxdb.conf"), *(made_by.serves if made_by else [])}
    # a throwaway may also serve from a dir of its own inside this one (a restore applies a
    # backup's deletes in one beside the throwaway it restores into)
    inside = str(scratch) + os.sep

    def ours(arg: str) -> bool:
        return arg in confs or (arg.startswith(inside) and arg.endswith(os.sep + "influxdb.conf"))

    return [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if any(ours(arg) for arg in proc.info["cmdline"] or [])
    ]


def stop_server(scratch: Path) -> list[int]:
    """The throwaway influxds of a dead owner: SIGKILL, as they hold nothing we keep (a
    `--target` DIR's server is stopped only before the hand-over, while this dir exists).
    Returns the pids stopped."""
    stopped = []
    for proc in _servers(scratch, owner(scratch)):
        try:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            continue
        stopped.append(proc.pid)
    return stopped
