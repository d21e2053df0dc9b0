"""Command line: parse, load config, call one action, print, exit with a defined status."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from influx_backupd import __version__
from influx_backupd.core import log, unit_paths
from influx_backupd.core.config import Config, ConfigError, JobSection, load, resolve_path
from influx_backupd.core.errors import (
    EXIT_BUSY,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_USAGE,
    BackupdError,
    RestoreFailed,
    RestoreRefused,
)
from influx_backupd.core.interrupt import Interrupted
from influx_backupd.core.schedule import describe
from influx_backupd.daemon.loop import run_daemon
from influx_backupd.daemon.status import gather, read_daemon_state, render
from influx_backupd.influxd.server import Influxd, InfluxdError
from influx_backupd.jobs.hot import clock_url
from influx_backupd.keep.prune import prune
from influx_backupd.offsite.errors import OffsiteError
from influx_backupd.report import notify, progress
from influx_backupd.restore.database import DatabaseResult, restore_database
from influx_backupd.restore.hot import restore_backup
from influx_backupd.restore.target import TargetResult, restore_into, target_problem
from influx_backupd.run.followup import write_metrics
from influx_backupd.run.guard import exclusive, left_stopped, left_stopped_line
from influx_backupd.run.runner import ModeUnavailable, Skipped, dry_run, run_backup
from influx_backupd.store.archive import not_a_backup
from influx_backupd.store.catalog import Catalog, CatalogBusy, CatalogError
from influx_backupd.store.record import RunRecord
from influx_backupd.store.sidecar import records_in
from influx_backupd.store.state import Busy
from influx_backupd.verify.check import BackupNotFound, resolve, save_result, verify, verify_all

EXIT_OK = 0


class UsageError(BackupdError):
    code = "usage"
    exit_status = EXIT_USAGE
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (what, and where to read more)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _known_job(config: Config, name: str | None, *, history_too: bool = False) -> None:
    """--job names a configured job (or, for reading commands, one with runs in the catalog)."""
    if name is None or any(j.name == name for j in config.settings.job):
        return
    if history_too:
        catalog = Catalog(config.state_dir)
        if catalog.exists() and catalog.list(job=name):
            return
    known = ", ".join(j.name for j in config.settings.job) or "none"
    raise UsageError(f"--job {name}: no such job in {config.path} (jobs: {known})")


def _backup_argument(config: Config, backup: str) -> None:
    """A BACKUP naming nothing is a usage error, found before the lock so nothing is created."""

    catalog = Catalog(config.state_dir)
    record = catalog.get(backup) if catalog.exists() else None
    if record is not None and not record.archive:
        raise UsageError(f"BACKUP {backup}: run {backup} is {record.status} and has no archive")
    if record is not None or (catalog.exists() and catalog.find_by_archive(Path(backup))):
        return  # a damaged backup of ours is the command's failure (1), not a usage error
    problem = not_a_backup(Path(backup))
    if problem is not None:
        raise UsageError(
            f"BACKUP {backup}: {problem}; give a catalog id (see `list`), a cold .tar archive "
            "or a hot backup"
        )


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def rfc3339(ts: float) -> str:
    """2026-11-26T12:42:16.123Z"""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_time_key(key: object) -> bool:
    return isinstance(key, str) and (key.endswith("_at") or key == "next_run")


def json_ready(value: Any) -> Any:
    """Times (keys *_at, next_run) as RFC 3339 UTC strings, the Unix time beside them as
    *_unix; everything else as it is."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if _is_time_key(key) and isinstance(item, int | float) and not isinstance(item, bool):
                out[key] = rfc3339(item)
                out[f"{key}_unix"] = item
            else:
                out[key] = json_ready(item)
        return out
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def print_json(value: Any, *, indent: int | None = None) -> None:
    print(json.dumps(json_ready(value), indent=indent, default=str))


def print_record(record: RunRecord, as_json: bool, *, verbose: bool = False) -> None:
    """The short record (what ran, where it went, what it cost); with verbose, every figure."""
    if as_json:
        print_json(record.to_dict())
        return
    print(f"run {record.id}  job={record.job}  mode={record.mode}  status={record.status}")
    if record.archive:
        print(f"  archive   {record.archive}")
        sha = record.sha256 if verbose or not record.sha256 else record.sha256[:12] + "…"
        print(f"  size      {_fmt_bytes(record.bytes)} in {record.files} files, sha256 {sha}")
    print(
        f"  downtime  {_fmt_s(record.downtime_s)} = stop {_fmt_s(record.stop_s)}"
        f" + copy {_fmt_s(record.copy_s)} + start {_fmt_s(record.start_s)}"
    )
    if record.error:
        print(f"  error     {record.error}")
    if record.verify_status:
        print(f"  verify    {record.verify_status}: {record.verify_detail}")
    if not verbose:
        return
    took = (record.finished_at - record.started_at) if record.finished_at else None
    print(f"  started   {rfc3339(record.started_at)}, took {_fmt_s(took)}")
    if record.prestage_s is not None or record.archive_s is not None:
        print(
            f"  staged    prestage {_fmt_s(record.prestage_s)}, archive {_fmt_s(record.archive_s)}"
            f" (influxd serving), {_fmt_bytes(record.window_bytes or 0)} copied while stopped"
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


# -- commands ------------------------------------------------------------------------------------


def _startable(config: Config) -> None:
    """A config whose influxd could not be started again is refused before anything is
    stopped: a stop we cannot undo is the one mistake a backup tool must not make."""
    problem = Influxd(config).startable()
    if problem is not None:
        raise ConfigError(f"{config.path}: {problem}")


def cmd_check_config(config: Config, args: argparse.Namespace) -> int:
    _startable(config)
    try:  # the config is fine either way: a damaged catalog is a warning here
        Catalog(config.state_dir).check()
    except CatalogError as exc:
        print(f"influx-backupd: warning: {exc}", file=sys.stderr)
    s = config.settings
    plan: dict[str, Any] = {
        "config": str(config.path),
        "influxdb_conf": str(config.server.conf),
        "dirs": {k: str(v) for k, v in config.server.dirs().items()},
        "url": config.url,
        "backup_host": config.backup_host,
        "server_clock": clock_url(config) + "/ping",
        "control": {"service": s.influxd.service}
        if s.influxd.service
        else {
            "command": s.influxd.command,
            "pidfile": str(s.influxd.pidfile) if s.influxd.pidfile else None,
        },
        "state_dir": str(config.state_dir),
        "storage_dir": str(config.storage_dir),
        "jobs": [j.model_dump(exclude_none=True) for j in s.job],
        "verify": s.verify.model_dump(exclude_none=True),
        # how many targets per event: the URLs themselves carry tokens and passwords
        "notify": {event: len(getattr(s.notify, event)) for event in notify.EVENTS},
        "http_auth": {
            "auth_enabled": config.auth_enabled,
            "username": s.influxd.username,
            "password_file": str(s.influxd.password_file) if s.influxd.password_file else None,
        },
        "warnings": [],
    }
    if config.auth_enabled and config.credentials is None:
        # cold backups themselves need no HTTP auth: a warning, not an error
        plan["warnings"].append(
            f"{config.server.conf} has [http] auth-enabled = true but [influxd] username is "
            "not set: no point counts before a cold stop (restore tests cannot compare them); "
            "set [influxd] username and password_file"
        )
    plan["warnings"] += unit_paths.warnings(config)
    for job in s.job:
        if not any(
            (job.keep_last, job.keep_hourly, job.keep_daily, job.keep_weekly, job.keep_monthly)
        ):
            plan["warnings"].append(
                f"job {job.name} has no retention rule (keep_last, keep_hourly, keep_daily, "
                "keep_weekly, keep_monthly all 0): every backup is kept until the disk is full; "
                "e.g. keep_daily = 7 and keep_weekly = 4"
            )
    if args.json:
        print_json(plan, indent=2)
        return EXIT_OK
    print(f"{config.path}: ok")
    print(f"  influxdb.conf  {plan['influxdb_conf']}")
    for name, path in plan["dirs"].items():
        exists = "" if config.server.dirs()[name].is_dir() else "  (does not exist yet)"
        print(f"  {name + ' dir':<14} {path}{exists}")
    print(f"  ready check    {config.url}/ping")
    if config.credentials is not None:
        print(f"  http auth      {s.influxd.username}, password in {s.influxd.password_file}")
    print(f"  snapshot host  {config.backup_host}")
    if any(job.mode != "cold" for job in s.job):
        print(f"  server clock   {plan['server_clock']} (its Date dates hot increments)")
    ctl = plan["control"]
    print(
        "  control        "
        + (
            f"systemctl, unit {ctl['service']}"
            if "service" in ctl
            else f"signals, start with {ctl['command']}"
        )
    )
    print(f"  state dir      {config.state_dir}")
    print(f"  archives       {config.storage_dir}")
    if not s.job:
        print("  jobs           none ([[job]] tables)")
    for job in s.job:
        when = (
            f"cron '{job.schedule}'"
            if job.schedule
            else (f"every {job.every:g}s" if job.every else "manual only")
        )
        print(f"  job {job.name:<10} mode={job.mode} {when}")
    checks = " + restore test" if s.verify.restore_test else ""
    checks += " + deep" if s.verify.deep else ""
    print(f"  verify --all   {describe(s.verify)}{checks} ([verify])")
    told = [f"{event} ({n})" for event, n in plan["notify"].items() if n]
    print(f"  notify         {', '.join(told) if told else 'none ([notify])'}")
    for warning in plan["warnings"]:
        print(f"warning: {warning}")
    return EXIT_OK


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _jobs_to_run(config: Config, args: argparse.Namespace) -> list[JobSection]:
    jobs = config.settings.job
    if args.job is not None:
        _known_job(config, args.job)
        return [config.job(args.job)]
    if args.all:
        return list(jobs) or [config.job(None)]
    if len(jobs) > 1:
        names = ", ".join(j.name for j in jobs)
        raise UsageError(
            f"backup: {len(jobs)} jobs in {config.path} ({names}): name one with --job NAME, "
            "or run them all, one after another, with --all"
        )
    return [config.job(None)]


def cmd_backup(config: Config, args: argparse.Namespace) -> int:

    jobs = _jobs_to_run(config, args)
    if args.dry_run:
        return _dry_run(config, jobs, args)
    if any((args.mode or job.mode) != "hot" for job in jobs):  # a hot run never stops influxd
        _startable(config)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    bar = _progress_bar(args)
    records: list[RunRecord] = []
    skipped = False
    try:
        with exclusive(config) as catalog:
            for job in jobs:
                try:
                    records.append(run_backup(config, job, catalog, mode=args.mode))
                except ModeUnavailable as exc:
                    raise UsageError(str(exc)) from None
                except Skipped as exc:  # mode auto: the policy ran nothing now
                    print(
                        f"influx-backupd: {job.name}: skipped, nothing backed up: {exc}",
                        file=sys.stderr,
                    )
                    skipped = True
    finally:
        if bar is not None:
            progress.unlisten(bar)
            bar.close()
    if args.all and args.json:
        print_json([r.to_dict() for r in records])
    else:
        for record in records:
            print_record(record, args.json, verbose=args.verbose > 0)
    if config.settings.offsite is not None and any(r.good for r in records):
        _offsite().after_backup(config)  # after the lock was let go: influxd serves again
    return EXIT_OK if records and all(r.good for r in records) and not skipped else EXIT_FAILED


def _dry_run(config: Config, jobs: list[JobSection], args: argparse.Namespace) -> int:
    """The policy's decision and the predictions, stopping nothing, writing nothing (no lock,
    no state_dir created: the catalog is only read, if there is one)."""
    catalog = Catalog(config.state_dir)
    plans = [dry_run(config, job, catalog if catalog.exists() else None, args.mode) for job in jobs]
    if args.json:
        print_json([p.to_dict() for p in plans] if args.all else plans[0].to_dict())
    for plan in [] if args.json else plans:
        print(f"backup {plan.job}: dry run, nothing stopped or written")
        print(f"  mode        {plan.mode}: {'; '.join(plan.reasons)}")
        if plan.scheduled_mode != plan.mode or args.verbose:
            print(f"  scheduled   {plan.scheduled_mode}: {'; '.join(plan.scheduled_reasons)}")
        seconds = plan.predicted_downtime_s
        about = "unknown" if seconds is None else f"about {seconds:.1f}s"
        print(f"  downtime    {about} ({plan.downtime_basis})")
        verdict = "fits" if plan.fits else "does NOT fit: the backup would be refused"
        print(
            f"  size        about {_fmt_bytes(plan.predicted_bytes)} (needs "
            f"{_fmt_bytes(plan.needed_bytes)} free), {_fmt_bytes(plan.free_bytes)} free in "
            f"{plan.storage_dir}: {verdict}"
        )
    return EXIT_OK if all(p.would_run for p in plans) else EXIT_FAILED


def _progress_bar(args: argparse.Namespace, label: str = "archive") -> Any:
    """A bar on stderr while the archive is written (or a backup restored), only when stderr
    is a terminal."""
    if getattr(args, "no_progress", False) or args.quiet or args.json or not sys.stderr.isatty():
        return None

    bar = progress.TerminalBar(label=label)
    progress.listen(bar)
    return bar


def _offsite() -> Any:
    from influx_backupd.cli import offsite  # imports this module: loaded on use

    return offsite


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    if args.offsite:
        return int(_offsite().cmd_list(config, args))

    _known_job(config, args.job, history_too=True)
    catalog = Catalog(config.state_dir)
    if catalog.exists():
        catalog.check()  # damage anywhere, not only in the rows listed
    records = catalog.list(job=args.job) if catalog.exists() else []
    if args.json:
        print_json([r.to_dict() for r in records])
        return EXIT_OK
    if not records:
        print("no backups yet")
        return EXIT_OK
    print(
        f"{'ID':<22} {'JOB':<10} {'MODE':<5} {'STATUS':<11} {'STARTED':<21} {'SIZE':>10} {'DOWNTIME':>9}  ARCHIVE"
    )
    for r in records:
        print(
            f"{r.id:<22} {r.job:<10} {r.mode:<5} {r.status:<11} {_fmt_time(r.started_at):<21} "
            f"{_fmt_bytes(r.bytes):>10} {_fmt_s(r.downtime_s):>9}  {r.archive or '-'}"
        )
    return EXIT_OK


def cmd_restore(config: Config, args: argparse.Namespace) -> int:

    from_offsite = args.source == "offsite"
    if not from_offsite:
        _backup_argument(config, args.backup)
    if args.start and args.target is None:
        raise UsageError("restore: --start goes with --target DIR")
    if args.database is None and (args.new_name is not None or args.replace):
        raise UsageError("restore: --as and --replace go with --database NAME")
    if args.target is not None and args.database is not None:
        raise UsageError("restore: --target and --database are two forms; give one")
    if args.target is not None:
        problem = target_problem(Path(args.target).absolute())
        if problem is not None:
            raise UsageError(problem)
    if args.target is None and args.database is None:
        _startable(config)  # the whole-server restore stops influxd: it must start again
    if args.target is None and not args.yes and (args.database is None or args.replace):
        if not sys.stdin.isatty():
            raise UsageError("restore replaces the live data of influxd; pass --yes to confirm")
        what = (
            f"Replace database {args.new_name or args.database} with the one in {args.backup}? "
            "(the present one is kept aside)"
            if args.database
            else f"Replace influxd's data with {args.backup}? influxd will be stopped."
        )
        answer = input(f"{what} [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return EXIT_USAGE
    if from_offsite:  # fetched and hashed first; then the restore below, as from local backups
        _offsite().fetch_for_restore(config, args.backup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)  # a restore interrupted mid-way is rolled back
    bar = _progress_bar(args, "restore")
    with (
        exclusive(config) as catalog,
        progress.under_systemd(f"restore {args.backup}"),
        contextlib.ExitStack() as cleanup,
    ):
        if bar is not None:
            cleanup.callback(bar.close)
            cleanup.callback(progress.unlisten, bar)
        try:
            if args.target is not None:
                into = restore_into(
                    config, catalog, args.backup, Path(args.target), start=args.start
                )
            elif args.database is not None:
                one = restore_database(
                    config,
                    catalog,
                    args.backup,
                    args.database,
                    new_name=args.new_name,
                    replace=args.replace,
                )
            else:
                result = restore_backup(config, catalog, args.backup)
        except RestoreRefused as exc:
            print(f"influx-backupd: restore refused, nothing touched: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except RestoreFailed as exc:
            print(f"influx-backupd: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if args.target is not None:
        _print_target(into, args.json)
        return EXIT_OK
    if args.database is not None:
        _print_database(one, args.json)
        return EXIT_OK
    if args.json:
        print_json(result.__dict__)
        return EXIT_OK
    print(f"restored {result.archive} ({result.files} files); influxd is running")
    print(
        f"  downtime {_fmt_s(result.downtime_s)} = stop {_fmt_s(result.stop_s)} + swap {_fmt_s(result.swap_s)} + start {_fmt_s(result.start_s)}"
    )
    if result.rollback_dirs:
        print("  the previous data was kept in:")
        for path in result.rollback_dirs:
            print(f"    {path}")
        print("  once satisfied, remove it with: rm -rf " + " ".join(result.rollback_dirs))
    return EXIT_OK


def _print_database(result: DatabaseResult, as_json: bool) -> None:
    if as_json:
        print_json(result.__dict__)
        return
    print(
        f"restored database {result.database} of {result.archive} as {result.restored_as} "
        f"in {result.seconds:.1f}s; influxd kept serving"
    )
    print(
        f"  prepared {_fmt_s(result.prepare_s)}, taken in by the live server {_fmt_s(result.restore_s)}"
    )
    if result.replaced_copy:
        print(f"  the database it replaced was kept in {result.replaced_copy}")
        print(f"  once satisfied, remove it with: rm -rf {result.replaced_copy}")


def _print_target(result: TargetResult, as_json: bool) -> None:
    if as_json:
        print_json(result.__dict__)
        return
    print(f"restored {result.archive} ({result.files} files) into {result.target}")
    print(f"  config   {result.conf}")
    if result.url is None:
        print(f"  serve it with: influxd run -config {result.conf}")
    else:
        print(
            f"  serving  {result.url} (influxd pid {result.pid}, log {result.target}/influxd.log)"
        )
        print(f"  stop it with: kill {result.pid}")
    print("  the live server was not touched; remove the copy with: rm -rf " + result.target)


def cmd_verify(config: Config, args: argparse.Namespace) -> int:

    if args.offsite:
        return int(_offsite().cmd_verify(config, args))
    if args.read_data is not None:
        raise UsageError("verify: --read-data goes with --offsite")
    if (args.backup is None) == (not args.all):
        raise UsageError("verify: name one BACKUP (catalog id or archive path) or pass --all")
    if args.job is not None and not args.all:
        raise UsageError("verify: --job goes with --all (a BACKUP names its job already)")
    _known_job(config, args.job, history_too=True)
    if args.backup is not None:
        _backup_argument(config, args.backup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)  # a restore test's throwaway influxd is stopped
    results = []
    # Under the lock: prune must not delete an archive (or its entry) while we read it.
    with exclusive(config) as catalog:
        if args.all:
            results = verify_all(
                config, catalog, job=args.job, deep=args.deep, restore_test=args.restore_test
            )
        else:
            try:
                archive, record = resolve(catalog, args.backup)
            except BackupNotFound as exc:
                raise UsageError(str(exc)) from None
            result = verify(config, archive, record, deep=args.deep, restore_test=args.restore_test)
            if record is not None:
                save_result(catalog, record, result)
            results.append(result)
        try:
            write_metrics(config, catalog)
        except OSError as exc:
            print(f"influx-backupd: metrics file not written: {exc}", file=sys.stderr)
    if args.json:
        print_json([r.to_dict() for r in results])
    elif not results:
        print("no backups to verify")
    for result in [] if args.json else results:
        label = result.status + (" (partial)" if result.ok and result.partial else "")
        print(f"{label:<16} {result.run_id or '-':<22} {result.archive}")
        for name, value in result.checks.items():
            print(f"  {name:<13} {value}")
        for message in result.errors:
            print(f"  error         {message}")
        for message in result.warnings:
            print(f"  warning       {message}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def cmd_prune(config: Config, args: argparse.Namespace) -> int:

    _known_job(config, args.job)  # before the lock
    with exclusive(config) as catalog:
        report = prune(config, catalog, job=args.job, dry_run=args.dry_run)
        if not args.dry_run:
            try:
                write_metrics(config, catalog)
            except OSError as exc:
                print(f"influx-backupd: metrics file not written: {exc}", file=sys.stderr)
    if args.json:
        print_json(report.to_dict())
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for d in report.deleted:
            print(
                f"{verb:<12} {d.run_id:<22} {d.job:<10} {d.status:<11} {' '.join(d.paths) or '-'}"
            )
        for path in report.cleaned:
            print(f"{'would clean' if args.dry_run else 'cleaned':<12} {path}")
        for kept in report.kept:
            print(f"{'kept':<12} {kept['id']:<22} {kept['job']:<10} {', '.join(kept['reasons'])}")
        for error in report.errors:
            print(f"influx-backupd: prune: {error}", file=sys.stderr)
    return EXIT_FAILED if report.errors else EXIT_OK


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    """The backups in the storage dir, by the records beside them, into this host's catalog."""
    if args.offsite:
        return int(_offsite().cmd_import(config, args))

    storage = config.storage_dir
    if not storage.is_dir():
        print(f"influx-backupd: import: storage dir {storage} does not exist", file=sys.stderr)
        return EXIT_FAILED
    # A damaged catalog is moved aside (never deleted) and rebuilt from the records; recovery
    # reads the catalog only after that.
    with exclusive(config, on_damage="ignore" if args.dry_run else "set_aside") as catalog:
        found, problems = records_in(storage)
        known = set() if catalog.damage else {r.id for r in catalog.list()}
        new = [r for r in found if r.id not in known]
        if not args.dry_run:
            for record in new:  # not counted in runs_total: they ran on the host that counted them
                catalog.save(record)
    if args.json:
        report: dict[str, Any] = {
            "dry_run": args.dry_run,
            "imported": [r.id for r in new],
            "already_known": sorted(r.id for r in found if r.id in known),
            "problems": problems,
        }
        if catalog.moved_aside is not None:
            report["damaged_catalog_moved_to"] = str(catalog.moved_aside)
        if catalog.damage is not None:
            report["damaged_catalog"] = catalog.damage
        print(json.dumps(report))
    else:
        verb = "would import" if args.dry_run else "imported"
        if catalog.moved_aside is not None:
            print(f"the damaged catalog was moved to {catalog.moved_aside}; a new one was made")
        if catalog.damage is not None:
            print(f"would move the damaged catalog {catalog.path} aside and make a new one")
        print(f"{verb} {len(new)} backups, {len(found) - len(new)} already in the catalog")
        for record in new:
            print(f"  {record.id}  job={record.job}  mode={record.mode}  {record.archive}")
        if new and not args.dry_run:
            print("check them with: influx-backupd verify --all")
    for problem in problems:
        print(f"influx-backupd: not imported: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_run(config: Config, args: argparse.Namespace) -> int:

    return run_daemon(config, getattr(args, "log_level", None) or config.settings.daemon.log_level)


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    Catalog(config.state_dir).check()
    report = gather(config)
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return EXIT_OK


# -- parser --------------------------------------------------------------------------------------

EXIT_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `seq 1 1000000 | head -1`

EPILOG = """\
exit status:
  0    ok
  1    the backup, restore, verify, prune or import failed or was interrupted
  2    usage error (unknown command or option, a missing or conflicting argument)
  75   busy: another backup holds the lock in state_dir
  78   configuration error (the config or influxdb.conf missing or invalid)
  141  stdout was closed early (e.g. piped into head); nothing else is affected

-q/-v, --json and --config work before or after the command. NO_COLOR=1 turns off colours.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    """Options every command takes, before or after its name (SUPPRESS: an option given
    before the command is not reset by the command's own parser)."""
    p.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: $INFLUX_BACKUPD_CONFIG or /etc/influx-backupd/config.toml)",
    )
    p.add_argument(
        "--log-level",
        choices=log.LEVELS,
        default=argparse.SUPPRESS,
        help="log events at this level and above (default: the config's daemon.log_level; "
        "warning on a terminal)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the result as JSON (times in RFC 3339 UTC, and as Unix time in *_unix)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="only errors on stderr, no progress bar",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more detail: the run's log events (-vv: debug events too) and the whole record",
    )


def _command(
    sub: Any, common: argparse.ArgumentParser, name: str, summary: str, detail: str = ""
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        parents=[common],
        help=summary,
        description=(
            summary[0].upper() + summary[1:] + "." + (f" {detail}" if detail else "")
        ).replace(" \n", "\n"),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (the Debian package builds the man page and completions from it)."""
    common = _Parser(add_help=False)
    _add_common(common)
    parser = _Parser(
        prog="influx-backupd",
        description="File-level backups of InfluxDB with measured downtime.",
        parents=[common],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, common, "check-config", "validate the config and print the resolved plan")
    p.set_defaults(func=cmd_check_config)

    p = _command(
        sub,
        common,
        "backup",
        "run one backup now, in the foreground",
        "With several jobs, name one with --job or run them all, one after another, with --all.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--job", metavar="NAME", help="the job to run (needed when there are several)"
    )
    which.add_argument("--all", action="store_true", help="run every job, one after another")
    p.add_argument(
        "--mode", choices=("cold", "hot", "auto"), help="run in this mode instead of the job's"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what a backup would do now (mode and reasons, predicted downtime, predicted "
        "size against free space); stop nothing, write nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.set_defaults(func=cmd_backup)

    p = _command(sub, common, "list", "list the catalog of runs, oldest first")
    p.add_argument("--job", metavar="NAME", help="only this job's runs")
    p.add_argument("--offsite", action="store_true", help="the backups in the [offsite] bucket")
    p.set_defaults(func=cmd_list)

    p = _command(
        sub,
        common,
        "restore",
        "restore a backup (catalog id or archive path): the whole server, one database, or into a dir",
        "\n\nrestore BACKUP --yes\n"
        "  replace influxd's data: the live data is moved aside, never deleted (the command\n"
        "  prints where); downtime is stop + rename + start.\n"
        "restore BACKUP --target DIR [--start]\n"
        "  unpack (cold) or rebuild (hot chain) into DIR, absent or empty, with a ready-to-run\n"
        "  influxdb.conf; the live server is not touched. --start serves DIR from a throwaway\n"
        "  influxd on a free port and prints its URL and how to stop it.\n"
        "restore BACKUP --database NAME [--as NEWNAME] [--replace [--yes]]\n"
        "  bring back one database (every retention policy and shard; users and grants as\n"
        "  they are) into the live server while it serves, under its name or NEWNAME. A\n"
        "  database of that name is refused unless --replace, which keeps it aside first.",
    )
    p.add_argument("backup", metavar="BACKUP", help="catalog id (see list) or archive path")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--from",
        dest="source",
        choices=("local", "offsite"),
        default="local",
        help="offsite: fetch the backup (and its chain) from the bucket first, every hash checked",
    )
    p.add_argument(
        "--target",
        metavar="DIR",
        help="restore into DIR (absent or empty) with a ready-to-run influxdb.conf instead; "
        "the live server is not touched",
    )
    p.add_argument(
        "--start",
        action="store_true",
        help="with --target: serve DIR from a throwaway influxd on a free port; print its URL",
    )
    p.add_argument(
        "--database",
        metavar="NAME",
        help="restore only database NAME into the live server, which keeps serving",
    )
    p.add_argument(
        "--as",
        dest="new_name",
        metavar="NEWNAME",
        help="with --database: restore it under this name (default: NAME)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="with --database: replace the live database of that name (kept aside first)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.set_defaults(func=cmd_restore)

    p = _command(sub, common, "verify", "check backups: sha256, structure, file formats")
    p.add_argument("backup", metavar="BACKUP", nargs="?", help="catalog id or archive path")
    p.add_argument("--all", action="store_true", help="every ok backup in the catalog")
    p.add_argument("--job", metavar="NAME", help="with --all: only this job's backups")
    p.add_argument(
        "--restore-test",
        action="store_true",
        help="also restore into a scratch dir and query it with a throwaway influxd",
    )
    p.add_argument("--deep", action="store_true", help="check every TSM block's CRC32 too")
    p.add_argument(
        "--offsite", action="store_true", help="check the backup's objects in the bucket instead"
    )
    p.add_argument(
        "--read-data",
        metavar="PERCENT",
        type=_percent,
        help="with --offsite: download and hash this share of the objects",
    )
    p.set_defaults(func=cmd_verify)

    p = _command(
        sub,
        common,
        "import",
        "add the backups in the storage dir to the catalog, by the records beside them",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be added, add nothing")
    p.add_argument(
        "--offsite", action="store_true", help="from the manifests in the bucket (a fresh host)"
    )
    p.set_defaults(func=cmd_import)

    p = _command(
        sub, common, "offsite", "off-site copies: `offsite sync` sends now what the bucket lacks"
    )
    p.add_argument("action", choices=("sync",), help="sync: send, then off-site retention")
    p.set_defaults(func=lambda config, args: int(_offsite().cmd_sync(config, args)))

    p = _command(sub, common, "run", "run the daemon: every job on its schedule until stopped")
    p.set_defaults(func=cmd_run)

    p = _command(sub, common, "status", "show the daemon, each job's last result and next run")
    p.set_defaults(func=cmd_status)

    p = _command(sub, common, "prune", "delete the backups the jobs' keep_* rules no longer keep")
    p.add_argument("--job", metavar="NAME", help="only this job (default: every job)")
    p.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    p.set_defaults(func=cmd_prune)
    return parser


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage above 0, up to 100")
    return value


def _log_level(args: argparse.Namespace, configured: str) -> str:
    """--log-level, else -q/-v, else quiet on a terminal (the bar and the result say it),
    else the config's level (JSON lines for cron, scripts and the journal)."""
    if getattr(args, "log_level", None):
        return str(args.log_level)
    if args.quiet:
        return "error"
    if args.verbose >= 2:
        return "debug"
    if args.verbose == 1:
        return "info"
    if sys.stderr.isatty() and args.command != "run":
        return "warning"
    return configured


# Commands that take the backup lock: their recovery starts an influxd left stopped.
_LOCK_TAKING = {cmd_backup, cmd_restore, cmd_verify, cmd_prune, cmd_import}


def _tell_left_stopped(config: Config, func: Callable[..., int]) -> None:
    """Every command says, in one line, when a dead run left influxd stopped (the daemon says
    it in its log and status line instead)."""
    if func is cmd_run:
        return
    left = left_stopped(config)
    if left is None:
        return
    state = read_daemon_state(config)
    line = left_stopped_line(
        config,
        left,
        daemon_pid=int(state["pid"]) if state else None,
        this_command_starts=func in _LOCK_TAKING,
    )
    print(f"influx-backupd: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    # Private by default (state, staging, archives, records, logs), whatever the caller's
    # umask; what is meant to be shared (the metrics file) and influxd itself set their own.
    os.umask(0o077)
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print a traceback
    except BrokenPipeError:
        # The reader went away (`list | head`): stop quietly, as coreutils do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (("json", False), ("quiet", False), ("verbose", 0)):
        if not hasattr(args, name):
            setattr(args, name, default)
    log.configure(level=_log_level(args, "info"))
    func: Callable[[Config, argparse.Namespace], int] = args.func
    path = resolve_path(getattr(args, "config", None))
    try:
        config = load(path)
        log.configure(level=_log_level(args, config.settings.daemon.log_level))
        _tell_left_stopped(config, func)
        return func(config, args)
    except ConfigError as exc:
        print(f"influx-backupd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"influx-backupd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Busy as exc:
        print(f"influx-backupd: busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except InfluxdError as exc:
        print(f"influx-backupd: influxd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OffsiteError as exc:
        print(f"influx-backupd: offsite: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Interrupted as exc:
        print(f"influx-backupd: interrupted by {exc}", file=sys.stderr)
        return EXIT_FAILED
    except CatalogBusy as exc:
        print(f"influx-backupd: busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except BackupdError as exc:  # every other error of ours: one line, its own status
        print(f"influx-backupd: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
