"""Every name influx-backupd gives a thing in the storage dir or beside influxd's dirs.

Writers ask here for a name and cleaners (prune, crash recovery) ask here whether a name is one
of ours, so that no other module matches on spelled-out suffixes.
"""

from __future__ import annotations

from pathlib import Path

PARTIAL = ".partial"  # a file being written: fsync, then renamed onto its final name
INCOMPLETE = ".incomplete"  # a 1.x backup dir while the tool writes it (a dir: not PARTIAL)
STAGING_DIR = ".staging"  # under the storage dir; one staged-copy tree per job
RESTORE_SCRATCH = ".restore-"  # a hot restore's scratch under the storage dir, per restore id
SCRATCH = ".verify-"  # a throwaway influxd's scratch dir (restore tests, restore builds)


def partial_of(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL)


def incomplete_of(final: Path) -> Path:
    return final.with_name(final.name + INCOMPLETE)


def staging_root(storage_dir: Path, job: str) -> Path:
    return storage_dir / STAGING_DIR / job


def staging_trees(storage_dir: Path) -> Path:
    return storage_dir / STAGING_DIR


def restore_staging(live: Path, restore_id: str) -> Path:
    """Where a restore fills the replacement of one live dir, beside it (same filesystem)."""
    return live.parent / f".{live.name}.restore-{restore_id}"


def rollback_of(live: Path, restore_id: str) -> Path:
    """Where a restore moves one live dir aside: kept, never deleted by us."""
    return live.parent / f"{live.name}.rollback-{restore_id}"


def restore_scratch(storage_dir: Path, restore_id: str) -> Path:
    return storage_dir / f"{RESTORE_SCRATCH}{restore_id}"


def is_restore_staging(path: Path) -> bool:
    return path.name.startswith(".") and ".restore-" in path.name


def is_partial(path: Path) -> bool:
    return path.name.endswith(PARTIAL)


def is_incomplete(path: Path) -> bool:
    return path.name.endswith(INCOMPLETE)


def is_scratch(path: Path) -> bool:
    return path.name.startswith(SCRATCH)
