"""Database and retention-policy names influxd 1.x cannot load its own files under.

influxd 1.x finds a shard's TSM files and WAL segments with Go's filepath.Glob over paths built
from the database and retention-policy names (data/DB/RP/ID/*.tsm, wal/DB/RP/ID/_*.wal). A name
whose characters are pattern syntax that does not match itself hides those files from the next
start: the server comes back without them, says nothing, and its next writes start a new
_00001.wal over the old one. Measured with influxd 1.6: `[` in a database or retention-policy
name loses all its points at a restart; `]`, `*`, `?`, `{` and `,` still match themselves and
keep them. A backslash (Go's escape: `\\s` matches only `s`) breaks the same way; 1.6's InfluxQL
refuses it in a name, but a meta.db from elsewhere may hold one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

BREAKING = ("[", "\\")
NAMED = "[ or a backslash"
HOT_HINT = 'a hot backup (mode = "hot") does not restart influxd'

# The dirs whose children are database dirs, theirs retention-policy dirs
_SHARD_TREES = ("data", "wal")


def _subdirs(path: Path) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def unloadable(dirs: Mapping[str, Path]) -> str | None:
    """One line naming the first database or retention-policy dir under dirs' data/ and wal/
    whose name holds a character that breaks influxd's globbing, or None. Read from the dirs on
    disk: no query, so it holds for a stopped server and an extracted archive alike."""
    for top in _SHARD_TREES:
        root = dirs.get(top)
        if root is None:
            continue
        for db in _subdirs(root):
            found = _problem(root / db, f"database {db!r}", db)
            if found is not None:
                return found
            for rp in _subdirs(root / db):
                if rp == "_series":  # 1.5+'s series file, beside the RP dirs
                    continue
                found = _problem(root / db / rp, f"retention policy {rp!r} of {db!r}", rp)
                if found is not None:
                    return found
    return None


def _problem(path: Path, what: str, name: str) -> str | None:
    hit = next((c for c in BREAKING if c in name), None)
    if hit is None:
        return None
    return (
        f"the dir {path} of {what} holds {hit!r}: influxd finds its files by glob patterns, "
        f"which read {NAMED} in a name as pattern syntax; a restart would not load the WAL "
        f"and TSM files of {what}: its points would be lost (its next writes overwrite them)"
    )
