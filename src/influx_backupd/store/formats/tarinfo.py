"""Tar headers read from backups, which may be hostile: every damaged header is a TarError.

tarfile raises ValueError and friends, not TarError, on some crafted pax records (a
GNU.sparse map without its newlines, a non-numeric GNU.sparse.realsize): every reader of a
backup opens its tars with tarinfo=CheckedTarInfo, so a damaged header is reported like any
other unreadable archive, in one line, never as a traceback.

A sparse member's map is also held to what the archive stores: runs that claim more data than
its stored size (tarfile would hand out the next member's header as file contents), or a real
size past MAX_SPARSE_SIZE, are damaged headers too. Restore writes a sparse file's holes as
holes, so the space it needs is its stored data; these bounds keep that figure honest.
"""

from __future__ import annotations

import tarfile
from typing import Any, cast

MAX_SPARSE_SIZE = 1 << 50  # 1 PiB: no influxd file comes near; a crafted header may claim 10**30


class CheckedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tarfile_: Any) -> tarfile.TarInfo:
        try:
            member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        except tarfile.TarError:
            raise
        except (ValueError, IndexError, OverflowError, UnicodeError) as exc:
            raise tarfile.ReadError(
                f"damaged tar header before byte {tarfile_.offset}: a pax or sparse record that "
                f"cannot be read ({type(exc).__name__})"
            ) from None
        runs = cast("list[tuple[int, int]] | None", member.sparse)  # typeshed says bytes
        if runs is not None:
            # tarfile placed the next header after the stored data: what the runs may fill
            stored = tarfile_.offset - member.offset_data
            claimed = sum(length for _, length in runs)
            if claimed > stored or member.size > MAX_SPARSE_SIZE:
                raise tarfile.ReadError(
                    f"damaged tar header of {member.name!r}: a sparse file of {member.size} bytes "
                    f"whose map claims {claimed} bytes of data where {stored} are stored"
                    + (" (more than 1 PiB)" if member.size > MAX_SPARSE_SIZE else "")
                )
        return member
