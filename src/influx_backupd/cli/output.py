"""What the commands print: records and results as short text for people or as JSON (times in
RFC 3339 UTC, the Unix time beside them)."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from influx_backupd.store.chain import chain_breaks
from influx_backupd.store.record import RunRecord, missing_on_disk, only_in_bucket, window_rest

if TYPE_CHECKING:  # types only: `list` and `status` need not load the restore modules
    from influx_backupd.restore.database import DatabaseResult
    from influx_backupd.restore.target import TargetResult


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, ValueError, OSError):  # no date: shown as the number it is
        return str(ts)


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def rfc3339(ts: float) -> str:
    """2026-11-26T12:42:16.123Z"""
    try:
        stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):  # no date: shown as the number it is
        return str(ts)
    return stamp.replace("+00:00", "Z")


# Keys that hold a time whatever their name says (the rest end in _at).
TIME_KEYS = frozenset({"next_run", "since", "since_anchor", "create_time", "mtime"})


def is_time_key(key: object) -> bool:
    return isinstance(key, str) and (key.endswith("_at") or key in TIME_KEYS)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shard_files(shards: Any) -> Any:
    """A hot record's shard listing keeps each file as [size, mtime] (compact in the catalog):
    named fields here, so that its mtime follows the rule of every other time."""
    if not isinstance(shards, dict):
        return shards
    out: dict[Any, Any] = {}
    for shard, files in shards.items():
        if not isinstance(files, dict):
            out[shard] = files
            continue
        out[shard] = {
            name: {"size": entry[0], "mtime": entry[1]}
            if isinstance(entry, list) and len(entry) == 2
            else entry
            for name, entry in files.items()
        }
    return out


def json_ready(value: Any) -> Any:
    """One rule for every time in every --json output: a time (keys *_at, next_run, since,
    since_anchor, create_time, a shard file's mtime) is an RFC 3339 UTC string with the Unix
    time beside it as *_unix (null beside null); everything else as it is."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if key == "shards" and "taken_at" in value:  # extra.shard_listing
                item = _shard_files(item)
            if is_time_key(key) and (_is_number(item) or item is None):
                out[key] = rfc3339(item) if item is not None else None
                out[f"{key}_unix"] = item
            else:
                out[key] = json_ready(item)
        return out
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def print_json(value: Any, *, indent: int | None = None) -> None:
    print(json.dumps(json_ready(value), indent=indent, default=str))


def downtime_sum(total: float, parts: list[tuple[str, float | None]]) -> str:
    """`0.320s = stop 0.072s + checks 0.142s + copy 0.002s + start 0.104s`: the window's time
    besides its named phases (the checks between the stop and the next phase: files still
    held, the staged tree) shown as checks after the stop, so the parts add up to the total."""
    rest = window_rest(total, (seconds for _name, seconds in parts))
    if rest is not None:
        parts = [parts[0], ("checks", rest), *parts[1:]]
    return f"{fmt_s(total)} = " + " + ".join(f"{name} {fmt_s(sec)}" for name, sec in parts)


def print_record(record: RunRecord, as_json: bool, *, verbose: bool = False) -> None:
    """The short record (what ran, where it went, what it cost); with verbose, every figure."""
    if as_json:
        print_json(record.to_dict())
        return
    print(f"run {record.id}  job={record.job}  mode={record.mode}  status={record.status}")
    if record.archive:
        print(f"  archive   {record.archive}")
        sha = record.sha256 if verbose or not record.sha256 else record.sha256[:12] + "…"
        print(f"  size      {fmt_bytes(record.bytes)} in {record.files} files, sha256 {sha}")
    if record.mode == "hot":  # never stopped influxd, ok or failed: no phases to add up
        print("  downtime  none: hot, influxd kept serving")
    elif record.downtime_s is None and "frozen_after_stop" in record.extra:
        print(
            "  downtime  pending: influxd was asked to stop and frozen before it exited; it "
            "goes down once thawed, and is started again then"
        )
    elif record.downtime_s is not None and record.extra.get("downtime_until_recovery"):
        print(
            f"  downtime  {fmt_s(record.downtime_s)}: killed in its stop window; influxd ran "
            "again once recovery started it"
        )
    elif record.downtime_s is None and "serving_after_stop" in record.extra:
        print(
            "  downtime  none so far: influxd was asked to stop and still served past "
            "stop_timeout; it is watched, and started again should it exit"
        )
    elif record.downtime_s is None and record.stop_s is not None:
        print("  downtime  not ended: influxd was stopped and did not answer again in this run")
    elif record.downtime_s is None:
        print("  downtime  none: influxd was not stopped")
    else:
        parts = [("stop", record.stop_s), ("copy", record.copy_s), ("start", record.start_s)]
        print(f"  downtime  {downtime_sum(record.downtime_s, parts)}")
    if record.error:
        print(f"  error     {record.error}")
    if record.verify_status:
        print(f"  verify    {record.verify_status}: {record.verify_detail}")
    if not verbose:
        return
    took = (record.finished_at - record.started_at) if record.finished_at else None
    print(f"  started   {rfc3339(record.started_at)}, took {fmt_s(took)}")
    if record.prestage_s is not None or record.archive_s is not None:
        print(
            f"  staged    prestage {fmt_s(record.prestage_s)}, archive {fmt_s(record.archive_s)}"
            f" (influxd serving), {fmt_bytes(record.window_bytes or 0)} copied while stopped"
        )
    if record.kind != "full" or record.chain_id:
        print(
            f"  chain     {record.kind}, chain {record.chain_id}, parent {record.parent_id or '-'}"
        )
    if record.db_counts:
        counts = ", ".join(f"{db}={n}" for db, n in sorted(record.db_counts.items()))
        print(f"  points    {counts}")
    for key, value in sorted(record.extra.items()):
        print(f"  {key:<9} {json.dumps(value, default=str)}")


def print_list(records: list[RunRecord], as_json: bool, *, run_alive: bool = False) -> None:
    """`list`: one row a backup. A backup imported by `import --offsite` and not fetched has no
    archive here: its row says so instead of naming a path that does not exist (--json: the
    field only_in_bucket). An ok backup whose archive is gone is `missing` (archive_missing),
    not ok; a hot increment that is fine itself but needs a link before it that is missing or
    found bad is `broken-chain` (chain_broken: that link and why), as its restore is refused;
    a `running` run with no live process holding the lock (run_alive False) died, and says so
    (process_gone) until the next command that takes the lock records it."""
    breaks = chain_breaks(records)

    def process_gone(r: RunRecord) -> bool:
        return r.status == "running" and not run_alive

    if as_json:
        print_json(
            [
                {
                    **r.to_dict(),
                    "only_in_bucket": only_in_bucket(r),
                    "archive_missing": missing_on_disk(r),
                    "chain_broken": (
                        {"link": breaks[r.id].link, "why": breaks[r.id].why}
                        if r.id in breaks
                        else None
                    ),
                    "process_gone": process_gone(r),
                }
                for r in records
            ]
        )
        return
    if not records:
        print("no backups yet")
        return
    print(
        f"{'ID':<22} {'JOB':<10} {'MODE':<5} {'STATUS':<12} {'STARTED':<21} {'SIZE':>10} "
        f"{'DOWNTIME':>9}  ARCHIVE"
    )
    notes: list[str] = []
    for r in records:
        # taken ok, found bad by a check since: not a good backup, and said so here too
        status: str = "check-fail" if r.failed_check else r.status
        where = (
            "off-site only, no local copy (restore --from offsite fetches it)"
            if only_in_bucket(r)
            else r.archive or "-"
        )
        if missing_on_disk(r):
            status, where = "missing", f"{where} (gone from disk)"
        elif r.id in breaks:
            # its own verdict first (a check that failed for this very reason says so too)
            status = "check-fail" if r.failed_check else "broken-chain"
            where = f"{where} ({breaks[r.id]})"
        elif process_gone(r):
            status = "died"
            notes.append(
                f"{r.id}: its process is gone; the next command that takes the lock (backup, "
                "prune, verify) records it interrupted and undoes what it left"
            )
        print(
            f"{r.id:<22} {r.job:<10} {r.mode:<5} {status:<12} {fmt_time(r.started_at):<21} "
            f"{fmt_bytes(r.bytes):>10} {fmt_s(r.downtime_s):>9}  {where}"
        )
    for note in notes:
        print(note)


def print_merge(merge: str | None, reason: str | None) -> None:
    """How a 1.x chain's increments went in, when there were some."""
    if merge == "files":
        print("  chain    merged by files, restored once")
    elif merge == "sql":
        print(f"  chain    copied in with SELECT INTO (not merged by files: {reason})")
        # said where the operator reads, not only in the log (hot audit: 7,158 deleted points
        # back after a restore that exited 0)
        print(
            "  warning  SELECT INTO cannot undo a DELETE, DROP SERIES or DROP MEASUREMENT made "
            "between links in a shard that still exists: such points may be back"
        )


def print_deletes(deletes: dict[str, Any] | None) -> None:
    """What the restore did with the tombstones its backup held (restore/deletes.py)."""
    if not deletes:
        return
    print(
        f"  deletes  {deletes['tombstones']} pending in the backup (.tombstone files), "
        f"{deletes['applied']} applied before the restore ({deletes['seconds']:.1f}s)"
    )
    if deletes["left"]:
        print(
            f"  warning  {deletes['left']} not applied: points deleted shortly before the "
            "backup may be back"
        )
        for where, why in deletes["not_applied"].items():
            print(f"           {where}: {why}")


def print_database(result: DatabaseResult, as_json: bool) -> None:
    if as_json:
        print_json(result.__dict__)
        return
    print(
        f"restored database {result.database} of {result.archive} as {result.restored_as} "
        f"in {result.seconds:.1f}s; influxd kept serving"
    )
    print(
        f"  prepared {fmt_s(result.prepare_s)}, taken in by the live server {fmt_s(result.restore_s)}"
    )
    print_merge(result.merge, result.merge_reason)
    print_deletes(result.deletes)
    if result.cold_shards is not None:
        whole = result.cold_shards["whole"]
        from_wal = result.cold_shards["from_wal"]
        print(
            f"  shards   {result.cold_shards['by_files']} taken from the archive's TSM files, "
            f"{len(whole)} replayed whole by a throwaway influxd"
            + (f", {from_wal} from its WAL alone (no TSM file yet)" if from_wal else "")
        )
        for sid, why in whole.items():
            print(f"           shard {sid}: {why}")
        if result.cold_shards["tombstones_not_restored"]:
            print(
                f"  warning  {result.cold_shards['tombstones_not_restored']} .tombstone files "
                "were not compacted away in time and influxd restore takes none: points "
                "deleted shortly before the backup may be back"
            )
    if result.served_check:
        print(f"  checked  {result.served_check}")
    if result.replaced_copy:
        print(f"  the database it replaced was kept in {result.replaced_copy}")
        print(f"  once satisfied, remove it with: rm -rf {shlex.quote(result.replaced_copy)}")


def print_target(result: TargetResult, as_json: bool) -> None:
    if as_json:
        print_json(result.__dict__)
        return
    print(f"restored {result.archive} ({result.files} files) into {result.target}")
    print(f"  config   {result.conf}")
    print_merge(result.merge, result.merge_reason)
    print_deletes(result.deletes)
    if result.url is None:
        print(f"  serve it with: influxd run -config {shlex.quote(result.conf)}")
    else:
        print(
            f"  serving  {result.url} (influxd pid {result.pid}, log {result.target}/influxd.log)"
        )
        print(f"  stop it with: kill {result.pid}")
    print(
        "  the live server was not touched; remove the copy with: rm -rf "
        + shlex.quote(result.target)
    )
