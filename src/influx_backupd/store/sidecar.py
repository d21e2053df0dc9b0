"""A backup's own record beside it: `<archive>.json` next to a cold tar or a 1.x hot dir.

The catalog lives in state_dir and is lost with the host; the storage dir alone must still say
what each backup is (its sha256, point counts, and for a hot increment the links it needs).
Written before the run is ok (.partial, fsync, rename), read by restore and verify when the
catalog does not know a path.
"""

from __future__ import annotations

from pathlib import Path

from influx_backupd.core.atomic import read_ours_text, replace_json
from influx_backupd.core.errors import BackupdError
from influx_backupd.core.jsontext import loads_json
from influx_backupd.store import layout
from influx_backupd.store.record import RunRecord

FORMAT = 1


class SidecarError(BackupdError):
    """A record beside a backup that cannot be used (unreadable, another format, incomplete)."""

    code = "sidecar"


def sidecar_of(archive: Path) -> Path:
    """Where a backup's own record lives: <storage>/<job>-<runid>[.tar].json beside it."""
    return archive.with_name(archive.name + ".json")


def write_sidecar(archive: Path, record: RunRecord) -> None:
    """The run's record (as it will be once ok) beside its archive: .partial, fsync, rename."""
    data = {"format": FORMAT, **record.to_dict(), "status": "ok"}
    final = sidecar_of(archive)
    # .partial: the name prune's cleanup of a dead run's leftovers knows
    replace_json(final, data, indent=1, tmp=layout.partial_of(final))


def note_verdict(record: RunRecord) -> str | None:
    """A check's verdict on a backup (verify, a restore that refused it) into the record beside
    it too, when it changes what that record says: import on a new host, or after a damaged
    catalog, reads it there (before: an imported backup that had failed its check counted as
    good, and retention removed the good ones in its place). Returns the line to log when the
    record could not be written; None when written or there is none to write to."""
    if record.archive is None:
        return None
    archive = Path(record.archive)
    try:
        data = read_sidecar_data(archive)
    except SidecarError as exc:
        return str(exc)
    if data is None or data.get("id") != record.id:
        return None
    if data.get("verify_status") == record.verify_status:
        return None
    data.update(
        verify_status=record.verify_status,
        verified_at=record.verified_at,
        verify_detail=record.verify_detail,
    )
    final = sidecar_of(archive)
    try:
        replace_json(final, data, indent=1, tmp=layout.partial_of(final))
    except OSError as exc:
        return f"{final}: {exc.strerror or exc}"
    return None


def read_sidecar_data(archive: Path) -> dict[str, object] | None:
    """The raw record beside archive; None when there is none; SidecarError when unusable."""
    path = sidecar_of(archive)
    try:
        data = loads_json(read_ours_text(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SidecarError(f"{path}: unreadable backup record ({exc})") from None
    if not isinstance(data, dict):
        raise SidecarError(f"{path}: not a usable backup record (not a JSON object)")
    if data.get("format") != FORMAT:
        raise SidecarError(
            f"{path}: not a usable backup record (format {data.get('format')!r}, this version "
            f"reads {FORMAT})"
        )
    if not all(isinstance(data.get(k), str) for k in ("id", "job", "sha256")):
        raise SidecarError(f"{path}: not a usable backup record (id, job or sha256 missing)")
    problem = RunRecord.problem({k: v for k, v in data.items() if k != "format"})
    if problem is not None:
        raise SidecarError(f"{path}: not a usable backup record ({problem})")
    return data


def record_beside(archive: Path) -> RunRecord | None:
    """The record beside a cold archive, pointing at where the archive is now."""
    data = read_sidecar_data(archive)
    if data is None:
        return None
    record = RunRecord.from_dict(data)
    record.archive = str(archive)
    return record


def records_in(storage: Path) -> tuple[list[RunRecord], list[str]]:
    """Every record beside an archive in storage (pointing at the archive where it is now),
    and one line for each record that cannot be used. Archives are not read here."""
    found: list[RunRecord] = []
    problems: list[str] = []
    for path in sorted(storage.glob("*.json")):
        archive = path.with_name(path.name.removesuffix(".json"))
        if not archive.exists():
            problems.append(f"{path}: its backup {archive.name} is not there")
            continue
        try:
            data = read_sidecar_data(archive)
        except SidecarError as exc:
            problems.append(str(exc))
            continue
        if data is None:  # gone since the glob
            continue
        record = RunRecord.from_dict(data)
        record.archive = str(archive)
        found.append(record)
    return found, problems
