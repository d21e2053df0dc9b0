"""Refusals every form of restore (the whole server, cold or hot; --database; --target) makes
before it touches anything because the host or the config must change first: exit 78
(RestoreMisconfigured), whichever form or flavour finds it. A backup that fails its checks, or
a moment that fails (a full disk, a server that does not answer), is RestoreRefused (1); a
command line asking for what cannot be is a usage error (2)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from influx_backupd.core.config import Config
from influx_backupd.core.errors import RestoreMisconfigured, RestoreRefused
from influx_backupd.influxd import scratch as scratch_dir

# what making a dir answers when the place, not the moment, is wrong: no retry helps
PLACE_REFUSALS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ELOOP}


def read_only(path: Path) -> bool:
    """On a read-only mount (a unit's ProtectSystem=strict outside ReadWritePaths=, say)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def storage_writable(config: Config) -> None:
    """Every restore writes its scratch dirs (owner records, throwaways' confs) in storage.dir:
    one it may not write there is refused up front, the same way in every form."""
    storage = config.storage_dir
    try:
        storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise _storage_refusal(config, exc) from None
    if read_only(storage) or not os.access(storage, os.W_OK | os.X_OK):
        raise _storage_refusal(
            config, OSError(errno.EROFS if read_only(storage) else errno.EACCES, "")
        )


def scratch_made(
    config: Config,
    kind: str,
    staging: list[Path] | None = None,
    *,
    target: Path | None = None,
    created: bool = False,
) -> Path:
    """scratch_dir.make in storage.dir; its failure as the refusal it is (nothing touched)."""
    try:
        return scratch_dir.make(config.storage_dir, kind, staging, target=target, created=created)
    except OSError as exc:
        raise _storage_refusal(config, exc) from None


def _storage_refusal(config: Config, exc: OSError) -> RestoreRefused:
    why = exc.strerror or os.strerror(exc.errno or 0) or str(exc)
    line = (
        f"storage.dir {config.storage_dir}: {why}: the restore writes its scratch dirs there; "
        "nothing touched"
    )
    if exc.errno in PLACE_REFUSALS:
        return RestoreMisconfigured(
            f"{config.path}: {line} (make it writable for this process; under a systemd unit, "
            "add it to ReadWritePaths=)"
        )
    return RestoreRefused(line)


def binary_usable(config: Config) -> None:
    """The [influxd] binary a restore runs (its restore tool, a throwaway influxd) is there
    and executable: a config error otherwise, found before anything is written."""
    binary = config.settings.influxd.binary
    if not binary.exists():
        raise RestoreMisconfigured(f"{config.path}: [influxd] binary {binary} does not exist")
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise RestoreMisconfigured(
            f"{config.path}: [influxd] binary {binary} is not an executable file"
        )
