"""Every name influx-backupd gives a thing in the storage dir or beside influxd's dirs.

Writers ask here for a name and cleaners (prune, crash recovery) ask here whether a name is one
of ours, so that no other module matches on spelled-out suffixes.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from influx_backupd.core.atomic import kind_of
from influx_backupd.core.names import BACKUP_ID, JOB_NAME
from influx_backupd.store.record import RUN_ID_PATTERN, RunRecord

PARTIAL = ".partial"  # a file being written: fsync, then renamed onto its final name
INCOMPLETE = ".incomplete"  # a 1.x backup dir while the tool writes it (a dir: not PARTIAL)
STAGING_DIR = ".staging"  # under the storage dir; one staged-copy tree per job
SCRATCH = ".verify-"  # a throwaway influxd's scratch dir (restore tests, restore builds)
# What a run names in the storage dir: JOB-RUNID (store/record.new_run_id), then .tar (a cold
# archive), nothing (a hot backup's dir) or either's record beside it (.json). A cleaner matches
# whole names: another tool's "photos.partial" in the same dir is not ours to remove.
_RUN_NAMED = re.compile(rf".+-{RUN_ID_PATTERN}(\.tar)?(\.json)?")


def cold_archive(storage_dir: Path, job: str, run_id: str) -> Path:
    return storage_dir / f"{job}-{run_id}.tar"


def hot_backup_dir(storage_dir: Path, job: str, run_id: str) -> Path:
    """A 1.x hot (portable) backup's dir."""
    return storage_dir / f"{job}-{run_id}"


def snapshot_base(storage_dir: Path, job: str, run_id: str) -> Path:
    """A 0.9 hot chain's PATH: its full; influxd writes the increments beside it as PATH.N."""
    return storage_dir / f"{job}-{run_id}.snapshot"


def run_archives(storage_dir: Path, job: str, run_id: str) -> tuple[Path, Path]:
    """Where a run of job leaves its backup: a cold archive, or a hot backup's dir."""
    return cold_archive(storage_dir, job, run_id), hot_backup_dir(storage_dir, job, run_id)


def id_in_use(storage_dir: Path, job: str, run_id: str) -> bool:
    """Whether anything of the storage dir is named for this run already (an archive, a hot
    dir, a snapshot, a record beside one, a .partial): a run given that id would replace it."""
    names = (
        cold_archive(storage_dir, job, run_id).name,
        hot_backup_dir(storage_dir, job, run_id).name,
        snapshot_base(storage_dir, job, run_id).name,
    )
    try:
        return any(entry.name.startswith(names) for entry in os.scandir(storage_dir))
    except OSError:
        return False  # no storage dir yet (the first run makes it): nothing there to replace


def backup_name_problem(
    name: str, job: str, run_id: str, *, mode: str, snapshot: bool, kind: str
) -> str | None:
    """Why `name` is not the one the tool gives that backup in the storage dir (None: it is).
    A record from outside (a bucket's manifest) names where its backup goes: only the name
    of that backup, never another file there (which a fetch would move aside, a prune
    remove). snapshot: a 0.9 hot backup (a snapshot file, not a dir)."""
    root = Path("/")
    if mode == "cold":
        wanted = cold_archive(root, job, run_id).name
    elif snapshot and kind == "full":
        wanted = snapshot_base(root, job, run_id).name
    elif snapshot:  # an increment: PATH.N beside its chain's full
        prefix, rest = f"{job}-", name.rpartition(".snapshot.")
        increment = (
            name.startswith(prefix)
            and rest[1] != ""
            and rest[2].isdigit()
            and BACKUP_ID.match(rest[0][len(prefix) :]) is not None
        )
        return None if increment else f"name {name!r:.80} is not {job}-ID.snapshot.N"
    else:
        wanted = hot_backup_dir(root, job, run_id).name
    return None if name == wanted else f"name {name!r:.80} is not {wanted!r}"


def partial_of(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL)


def incomplete_of(final: Path) -> Path:
    return final.with_name(final.name + INCOMPLETE)


def staging_root(storage_dir: Path, job: str) -> Path:
    return storage_dir / STAGING_DIR / job


def staging_trees(storage_dir: Path) -> Path:
    return storage_dir / STAGING_DIR


def is_staging_tree(path: Path) -> bool:
    """A job's staged-copy tree under staging_trees(): a directory (no link) named as a job can
    be. A file, a link or another name found there is not ours to remove."""
    if JOB_NAME.match(path.name) is None:
        return False
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def restore_staging(live: Path, restore_id: str) -> Path:
    """Where a restore fills the replacement of one live dir, beside it (same filesystem)."""
    return live.parent / f".{live.name}.restore-{restore_id}"


def rollback_of(live: Path, restore_id: str) -> Path:
    """Where a restore moves one live dir aside: kept, never deleted by us."""
    return live.parent / f"{live.name}.rollback-{restore_id}"


def is_restore_staging(path: Path) -> bool:
    return path.name.startswith(".") and ".restore-" in path.name


def is_partial(path: Path) -> bool:
    """A run's file (or a fetched tree) being written, by its name."""
    name = path.name
    return name.endswith(PARTIAL) and _RUN_NAMED.fullmatch(name[: -len(PARTIAL)]) is not None


def is_incomplete(path: Path) -> bool:
    """A 1.x hot run's backup dir while the tool writes it, by its name."""
    name = path.name
    return name.endswith(INCOMPLETE) and _RUN_NAMED.fullmatch(name[: -len(INCOMPLETE)]) is not None


def is_scratch(path: Path) -> bool:
    return path.name.startswith(SCRATCH)


def not_a_backup(path: Path, record: RunRecord | None) -> str | None:
    """What path is when no backup can be there ("a FIFO", "a character device", "a directory"
    where a cold archive, one file, belongs): something put in its place, which a read would
    block on for ever or never end. None for a file or a dir, and when nothing is there (a
    backup gone: its callers say that their own way)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode):
        return "a directory" if record is not None and record.mode == "cold" else None
    return None if stat.S_ISREG(mode) else kind_of(mode)
