"""A path with its symlinks resolved, for any path a user or a record may give.

`Path.resolve()` raises RuntimeError ("Symlink loop") on Python 3.11 for a link that leads to
itself: a traceback for what is a user's mistake (`restore ./loop`, a storage dir that is a
loop). os.path.realpath leaves such a link as it is; what then opens the path gets ELOOP, an
OSError every command already turns into its one line.
"""

from __future__ import annotations

import os
from pathlib import Path


def real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def is_within(inner: Path, outer: Path) -> bool:
    """inner is outer or lies under it, as given (resolve both with real() first to follow
    symlinks)."""
    return inner == outer or outer in inner.parents
