"""Tar headers read from backups, which may be hostile: every damaged header is a TarError.

tarfile raises ValueError and friends, not TarError, on some crafted pax records (a
GNU.sparse map without its newlines, a non-numeric GNU.sparse.realsize): every reader of a
backup opens its tars with tarinfo=CheckedTarInfo, so a damaged header is reported like any
other unreadable archive, in one line, never as a traceback.
"""

from __future__ import annotations

import tarfile
from typing import Any


class CheckedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tarfile_: Any) -> tarfile.TarInfo:
        try:
            member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        except tarfile.TarError:
            raise
        except (ValueError, IndexError, OverflowError, UnicodeError) as exc:
            raise tarfile.ReadError(f"damaged tar header ({exc})") from None
        return member
