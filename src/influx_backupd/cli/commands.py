"""One function per command, as borgmatic's actions: each takes the loaded config and the parsed
arguments, calls one action of the package, prints, and returns the exit status.

Why one module of this size: one short function per command (ten of them) and the few helpers
they share; the parser is parser.py, output formatting output.py, the off-site commands offsite.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from influx_backupd.cli.output import (
    downtime_sum,
    fmt_bytes,
    fmt_s,
    fmt_time,
    print_database,
    print_deletes,
    print_json,
    print_list,
    print_merge,
    print_record,
    print_target,
)
from influx_backupd.cli.quote import quoted, say
from influx_backupd.core import unit_paths
from influx_backupd.core.config import (
    Config,
    ConfigError,
    JobSection,
    job_warnings,
    resolve_path,
    retention_warning,
    secret_file_warnings,
    state_dir_leniently,
)
from influx_backupd.core.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    BackupdError,
    OnlyInBucket,
    RestoreFailed,
    RestoreRefused,
    UsageError,
)
from influx_backupd.core.interrupt import interrupt_on_signals
from influx_backupd.core.jsontext import number
from influx_backupd.core.redact import shown_url
from influx_backupd.core.schedule import describe, human_duration
from influx_backupd.influxd import influxql, names
from influx_backupd.influxd.server import Influxd
from influx_backupd.influxd.throttle import DATABASE_RATE_MIB
from influx_backupd.report import notify, progress
from influx_backupd.run.guard import exclusive
from influx_backupd.store.archive import not_a_backup
from influx_backupd.store.catalog import Catalog, CatalogError
from influx_backupd.store.record import RunRecord, only_in_bucket
from influx_backupd.store.sidecar import records_in
from influx_backupd.store.state import (
    PENDING_DATABASE_RESTORE,
    Busy,
    CrashMarker,
    dry_recovery,
    lock_held,
    pending_database_restore,
)

if TYPE_CHECKING:
    from influx_backupd.keep.prune import PruneReport

# Every command's start loads this module: what one command alone runs (a restore, a backup, a
# verify, the off-site commands) is imported inside it, so that `list`, `status` and
# `check-config` (probed by monitoring, ExecStartPre) do not pay for the rest.


def known_job(config: Config, name: str | None, *, history_too: bool = False) -> None:
    """--job names a configured job (or, for reading commands, one with runs in the catalog)."""
    if name is None or any(j.name == name for j in config.settings.job):
        return
    if history_too:
        catalog = Catalog(config.state_dir)
        if catalog.exists() and catalog.list(job=name):
            return
    known = ", ".join(j.name for j in config.settings.job) or "none"
    shown = quoted(name) if name else "'' (empty)"
    raise UsageError(f"--job {shown}: no such job in {config.path} (jobs: {known})")


def backup_argument(config: Config, backup: str) -> None:
    """A BACKUP naming nothing is a usage error, found before the lock so nothing is created."""
    if not backup.strip():  # Path("") is the current directory, never what was meant
        raise UsageError("BACKUP: empty; give a catalog id (see `list`) or a backup's path")

    catalog = Catalog(config.state_dir)
    record = catalog.get(backup) if catalog.exists() else None
    if record is not None and not record.archive:
        raise UsageError(
            f"BACKUP {quoted(backup)}: run {backup} is {record.status} and has no archive"
        )
    if record is not None or (catalog.exists() and catalog.find_by_archive(Path(backup))):
        return  # a damaged backup of ours is the command's failure (1), not a usage error
    problem = not_a_backup(Path(backup))
    if problem is not None:
        raise UsageError(
            f"BACKUP {quoted(backup)}: {problem}; give a catalog id (see `list`), a cold .tar archive "
            "or a hot backup"
        )


def _startable(config: Config) -> None:
    """A config whose influxd could not be started again is refused before anything is
    stopped: a stop we cannot undo is the one mistake a backup tool must not make."""
    Influxd(config).refuse_unstartable()


def _not_admin_warning(config: Config) -> list[str]:
    """A user without admin rights counts only the databases it may read: said, if the server
    answers now (check-config works with it down: then nothing is said)."""
    try:
        refused = influxql.not_admin(config.url, config.credentials, timeout=3.0)
    except influxql.QueryError:
        return []
    if refused is None:
        return []
    return [
        f"[influxd] username {config.settings.influxd.username!r} is not an admin on "
        f"{config.url}: point counts (and so restore tests and restore checks) cover only the "
        "databases it may read, and restore --database is refused; use an admin user"
    ]


def _later_refusals(config: Config) -> list[str]:
    """What the commands that use them refuse, said now: the [influxd] user and group a
    restore gives the restored files, and the binary hot backups, restores and restore tests
    run. Warnings, not errors: a config that only takes cold backups never uses them."""
    from influx_backupd.restore.cold import named_owner
    from influx_backupd.restore.refusals import binary_usable

    found: list[str] = []
    checks: tuple[tuple[Callable[[Config], object], str], ...] = (
        (named_owner, "a whole-server restore refuses it (78)"),
        (binary_usable, "hot backups fail, and restores and restore tests refuse it (78)"),
    )
    for check, uses in checks:
        try:
            check(config)
        except BackupdError as exc:
            found.append(f"{str(exc).removeprefix(f'{config.path}: ')}: {uses}")
    return found


def cmd_check_config(config: Config, args: argparse.Namespace) -> int:
    from influx_backupd.jobs.hot import clock_url

    _startable(config)
    # the unit's private /tmp for storage or state: every backup lost at stop (`run` refuses)
    lost = unit_paths.private_tmp_errors(config)
    for line in lost:
        say(f"{config.path}: {line}")
    if lost:
        return EXIT_CONFIG
    try:  # the config is fine either way: a damaged catalog is a warning here
        Catalog(config.state_dir).check()
    except CatalogError as exc:
        say(f"warning: {exc}")
    s = config.settings

    # Every key of every table, as the operator writes it (by_alias: `copy`, not the model's
    # copy_mode; null when unset), resolved where load() resolves it; then what follows from
    # influxdb.conf, which has no key of ours. Secrets are never printed: notify URLs are
    # counted, a heartbeat URL shows its scheme and host (its path is the token).
    def table(model: BaseModel) -> dict[str, Any]:
        return model.model_dump(mode="json", by_alias=True)

    job_tables = [table(j) for j in s.job]
    for shown in job_tables:
        if shown["heartbeat_url"]:
            shown["heartbeat_url"] = shown_url(shown["heartbeat_url"]).strip("'")
    plan: dict[str, Any] = {
        "config": str(config.path),
        "daemon": {**table(s.daemon), "state_dir": str(config.state_dir)},
        "influxd": {
            **table(s.influxd),
            "config": str(config.server.conf),
            "url": config.url,
            "backup_host": config.backup_host,
        },
        "storage": {**table(s.storage), "dir": str(config.storage_dir)},
        "job": job_tables,
        "verify": table(s.verify),
        "notify": {
            **{event: len(getattr(s.notify, event)) for event in notify.EVENTS},
            "timeout": s.notify.timeout,
        },
        "offsite": table(s.offsite) if s.offsite is not None else None,
        "dirs": {k: str(v) for k, v in config.server.dirs().items()},
        "auth_enabled": config.auth_enabled,
        "server_clock": clock_url(config) + "/ping",
        "warnings": [],
    }
    if config.auth_enabled and config.credentials is None:
        # cold backups themselves need no HTTP auth: a warning, not an error
        plan["warnings"].append(
            f"{config.server.conf} has [http] auth-enabled = true but [influxd] username is "
            "not set: no point counts before a cold stop (restore tests cannot compare them); "
            "set [influxd] username and password_file"
        )
    if config.auth_enabled and config.credentials is not None:
        plan["warnings"] += _not_admin_warning(config)
    plan["warnings"] += unit_paths.warnings(config)
    plan["warnings"] += secret_file_warnings(s)
    plan["warnings"] += job_warnings(s)
    plan["warnings"] += _later_refusals(config)
    cold_jobs = [job.name for job in s.job if job.mode in ("cold", "auto")]
    unloadable = names.unloadable(config.server.dirs()) if cold_jobs else None
    if unloadable is not None:
        plan["warnings"].append(
            f"{unloadable}: a cold run of {', '.join(cold_jobs)} is refused ({names.HOT_HINT})"
        )
    if args.json:
        print_json(plan, indent=2)
        return EXIT_OK
    print(f"{config.path}: ok")
    print(f"  influxdb.conf  {plan['influxd']['config']}")
    for name, path in plan["dirs"].items():
        exists = "" if config.server.dirs()[name].is_dir() else "  (does not exist yet)"
        print(f"  {name + ' dir':<14} {path}{exists}")
    print(f"  ready check    {config.url}/ping")
    if config.credentials is not None:
        print(f"  http auth      {s.influxd.username}, password in {s.influxd.password_file}")
    print(f"  snapshot host  {config.backup_host}")
    if any(job.mode != "cold" for job in s.job):
        print(f"  server clock   {plan['server_clock']} (its Date dates hot increments)")
    ctl = plan["influxd"]
    print(
        "  control        "
        + (
            f"systemctl, unit {ctl['service']}"
            if ctl["service"]
            else f"signals, start with {ctl['command']}"
        )
    )
    print(
        f"  stop / start   within {human_duration(s.influxd.stop_timeout)} / "
        f"{human_duration(s.influxd.start_timeout)}; restored files owned by "
        f"{s.influxd.user}:{s.influxd.group}"
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
        keep = ", ".join(
            f"{rule.removeprefix('keep_')} {n}"
            for rule in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly")
            if (n := getattr(job, rule))
        )
        extras = [f"keep {keep}" if keep else "keeps every backup"]
        if job.heartbeat_url:
            extras.append(f"heartbeat {shown_url(job.heartbeat_url)}")
        if s.offsite is not None:
            extras.append("off-site" if job.offsite else "not off-site (offsite = false)")
        print(f"  job {job.name:<10} mode={job.mode} {when}; {'; '.join(extras)}")
    checks = " + restore test" if s.verify.restore_test else ""
    checks += " + deep" if s.verify.deep else ""
    print(f"  verify --all   {describe(s.verify)}{checks} ([verify])")
    told = [f"{event} ({n})" for event in notify.EVENTS if (n := plan["notify"][event])]
    print(f"  notify         {', '.join(told) if told else 'none ([notify])'}")
    off = s.offsite
    if off is None:
        print("  off-site       none ([offsite])")
    else:
        where = off.endpoint_url or "AWS S3"  # load() refuses credentials in it
        print(f"  off-site       s3://{off.bucket}/{off.prefix}/ at {where}")
        sealed = (
            f"age-encrypted to {len(off.encrypt_to)} recipient(s)"
            if off.encrypt_to
            else "not encrypted by us"
        )
        print(
            f"                 {sealed}; "
            + ("local copies held until sent" if off.hold_unsent else "hold_unsent = false")
        )
    for warning in plan["warnings"]:
        print(f"warning: {warning}")
    return EXIT_OK


def _jobs_to_run(config: Config, args: argparse.Namespace) -> list[JobSection]:
    jobs = config.settings.job
    if args.job is not None:  # --job given once or more: those jobs, in the order given
        for name in args.job:
            known_job(config, name)
        twice = next((name for i, name in enumerate(args.job) if name in args.job[:i]), None)
        if twice is not None:
            raise UsageError(f"--job {quoted(twice)}: given twice; name each job once")
        return [config.job(name) for name in args.job]
    if args.all:
        return list(jobs) or [_implicit_job(config)]
    if len(jobs) > 1:
        names = ", ".join(j.name for j in jobs)
        raise UsageError(
            f"backup: {len(jobs)} jobs in {config.path} ({names}): name one with --job NAME, "
            "or run them all, one after another, with --all"
        )
    return [_implicit_job(config)]


def _implicit_job(config: Config) -> JobSection:
    """The first job; without a [[job]], the implicit job 'manual', which keeps every backup:
    said, as check-config says it of any job without a keep_* rule."""
    job = config.job(None)
    if not config.settings.job:
        say(f"warning: {config.path}: {retention_warning(job)}")
    return job


def several(args: argparse.Namespace) -> bool:
    """--all, or --job more than once: --json prints an array, one item a job."""
    return bool(args.all or (args.job and len(args.job) > 1))


def cmd_backup(config: Config, args: argparse.Namespace) -> int:

    from influx_backupd.cli import offsite as offsite_cli
    from influx_backupd.run.runner import ModeUnavailable, Skipped, run_backup

    jobs = _jobs_to_run(config, args)
    if args.dry_run:
        return _dry_run(config, jobs, args)
    if any((args.mode or job.mode) != "hot" for job in jobs):  # a hot run never stops influxd
        _startable(config)
    interrupt_on_signals()
    bar = progress_bar(args)
    records: list[RunRecord] = []
    skipped = False
    pruned: list[str] = []  # what each run's retention deleted: said, not only logged
    try:
        with exclusive(config, doing="backup") as catalog:
            names = {job.name for job in jobs}

            def kept() -> set[str]:
                return {r.id for r in catalog.list() if r.job in names and r.good}

            before = kept() if not args.json else set()
            for job in jobs:
                try:
                    records.append(run_backup(config, job, catalog, mode=args.mode))
                except ModeUnavailable as exc:
                    raise UsageError(str(exc)) from None
                except Skipped as exc:  # mode auto: the policy ran nothing now
                    say(f"{job.name}: skipped, nothing backed up: {exc}")
                    skipped = True
            if before:
                pruned = sorted(before - kept())
    finally:
        if bar is not None:
            progress.unlisten(bar)
            bar.close()
    if several(args) and args.json:
        print_json([r.to_dict() for r in records])
    else:
        for record in records:
            print_record(record, args.json, verbose=args.verbose > 0)
    if pruned:
        print(
            f"pruned {len(pruned)} older backup{'s' if len(pruned) > 1 else ''} by the job's "
            f"retention (keep_*, hot and cold runs alike): {', '.join(pruned)}"
        )
    if config.settings.offsite is not None and any(r.good for r in records):
        # after the lock was let go: influxd serves again; the send takes it again as an
        # off-site send, which the next backup (cron's next hour) waits for and which yields
        offsite_cli.after_backup(config)
    return EXIT_OK if records and all(r.good for r in records) and not skipped else EXIT_FAILED


def _dry_run(config: Config, jobs: list[JobSection], args: argparse.Namespace) -> int:
    """The policy's decision and the predictions, stopping nothing, writing nothing (no lock,
    no state_dir created: the catalog is only read, if there is one)."""
    from influx_backupd.run.runner import dry_run

    catalog = Catalog(config.state_dir)
    plans = [dry_run(config, job, catalog if catalog.exists() else None, args.mode) for job in jobs]
    if args.json:
        print_json([p.to_dict() for p in plans] if several(args) else plans[0].to_dict())
    for plan in [] if args.json else plans:
        print(f"backup {plan.job}: dry run, nothing stopped or written")
        print(f"  mode        {plan.mode}: {'; '.join(plan.reasons)}")
        if plan.scheduled_mode != plan.mode or args.verbose:
            print(f"  scheduled   {plan.scheduled_mode}: {'; '.join(plan.scheduled_reasons)}")
        seconds = plan.predicted_downtime_s
        about = "unknown" if seconds is None else f"about {seconds:.1f}s"
        print(f"  downtime    {about} ({plan.downtime_basis})")
        free = f"{fmt_bytes(plan.free_bytes)} free in {plan.storage_dir}"
        if plan.fits is None:  # hot (or skip): never refused for space, so no verdict
            recent = (
                f", largest recent hot run {fmt_bytes(plan.recent_hot_bytes)}"
                if plan.recent_hot_bytes is not None
                else ""
            )
            print(
                f"  size        at most about {fmt_bytes(plan.predicted_bytes)} (upper bound: "
                f"hot output is gzipped{recent}), {free}; hot runs are not refused for space"
            )
            continue
        verdict = "fits" if plan.fits else "does NOT fit: the backup would be refused"
        print(
            f"  size        about {fmt_bytes(plan.predicted_bytes)} (needs "
            f"{fmt_bytes(plan.needed_bytes)} free), {free}: {verdict}"
        )
    return EXIT_OK if all(p.would_run for p in plans) else EXIT_FAILED


def progress_bar(args: argparse.Namespace, label: str = "archive") -> Any:
    """A bar on stderr while the archive is written (or a backup restored), only when stderr
    is a terminal that can redraw a line (TERM=dumb cannot: the bar would be escape codes)."""
    if getattr(args, "no_progress", False) or args.quiet or args.json or not sys.stderr.isatty():
        return None
    if os.environ.get("TERM") == "dumb":
        return None

    bar = progress.TerminalBar(label=label)
    progress.listen(bar)
    return bar


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    if args.offsite:
        from influx_backupd.cli import offsite as offsite_cli

        return int(offsite_cli.cmd_list(config, args))

    known_job(config, args.job, history_too=True)
    catalog = Catalog(config.state_dir)
    if catalog.exists():
        catalog.check()  # damage anywhere, not only in the rows listed
    records = catalog.list(job=args.job) if catalog.exists() else []
    print_list(records, args.json, run_alive=lock_held(config.state_dir))
    if not records:
        say_unimported(config, catalog)
    return EXIT_OK


def say_unimported(config: Config, catalog: Catalog) -> None:
    """When the catalog knows no backup at all (a new host; a catalog lost or truncated to
    nothing, which SQLite reads as a new one) but records of backups lie beside them in the
    storage dir: one line saying so, or every command would call the host backup-less."""
    try:
        if catalog.exists() and catalog.knows_any():
            return
        beside = [p for p in config.storage_dir.glob("*.json") if p.with_suffix("").exists()]
    except (CatalogError, OSError):
        return
    if beside:
        say(
            f"the catalog knows no backups, but {len(beside)} backups with their records lie "
            f"in storage.dir {config.storage_dir}: add them with `influx-backupd import`"
        )


def cmd_restore(config: Config, args: argparse.Namespace) -> int:

    from influx_backupd.restore.database import restore_database
    from influx_backupd.restore.hot import restore_backup
    from influx_backupd.restore.target import restore_into, target_problem
    from influx_backupd.run.followup import MetricsNotWritten, write_metrics
    from influx_backupd.store.chain import LinkDamaged
    from influx_backupd.verify.check import save_refused_link

    from_offsite = args.source == "offsite"
    if not from_offsite:
        backup_argument(config, args.backup)
        catalog = Catalog(config.state_dir)
        record = catalog.get(args.backup) if catalog.exists() else None
        if record is not None and only_in_bucket(record):
            raise _from_offsite_hint(args.backup)
    if args.start and args.target is None:
        raise UsageError("restore: --start goes with --target DIR")
    if args.database is None and (
        args.new_name is not None or args.replace or args.limit_rate is not None
    ):
        raise UsageError("restore: --as, --replace and --limit-rate go with --database NAME")
    if args.limit_rate is None:
        args.limit_rate = DATABASE_RATE_MIB
    if args.target is not None and args.database is not None:
        raise UsageError("restore: --target and --database are two forms; give one")
    if args.target is not None and args.accept_fewer_points:
        raise UsageError(
            "restore: --accept-fewer-points goes with a restore into the live server; "
            "--target compares no counts"
        )
    if args.target is not None:
        problem = target_problem(Path(args.target).absolute(), config)
        if problem is not None:
            raise UsageError(problem)
    if args.target is None and args.database is None:
        _startable(config)  # the whole-server restore stops influxd: it must start again
    if args.target is None and not args.yes and (args.database is None or args.replace):
        if not sys.stdin.isatty():
            what = (
                "the live data of influxd"
                if args.database is None
                else f"database {quoted(args.new_name or args.database)} on the live server"
            )
            raise UsageError(f"restore replaces {what}; pass --yes to confirm")
        what = (
            f"Replace database {quoted(args.new_name or args.database)} with the one in "
            f"{quoted(args.backup)}? "
            "(the present one is kept aside)"
            if args.database
            else f"Replace influxd's data with {quoted(args.backup)}? influxd will be stopped."
        )
        try:
            answer = input(f"{what} [y/N] ")
        except EOFError:  # Ctrl-D: no answer is no
            answer = ""
            print()
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return EXIT_USAGE
    interrupt_on_signals()  # a restore interrupted mid-way is rolled back; a fetch ends
    if from_offsite:  # fetched and hashed first; then the restore below, as from local backups
        from influx_backupd.cli import offsite as offsite_cli

        offsite_cli.fetch_for_restore(config, args.backup)
    bar = progress_bar(args, "restore")
    # a dead run's crash marker: the lock's recovery acts on it (influxd started again), which
    # the metrics must show even if this restore is refused
    recovering = CrashMarker(config.state_dir).path.exists()
    with (
        exclusive(config, doing="restore") as catalog,
        progress.under_systemd(f"restore {args.backup}"),
        progress.published(config.state_dir / progress.RUNNING_FILE, f"restore {args.backup}"),
        contextlib.ExitStack() as cleanup,
    ):
        if bar is not None:
            cleanup.callback(bar.close)
            cleanup.callback(progress.unlisten, bar)
        write_state = True  # refused: nothing was touched, no state is written
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
                    rate=args.limit_rate * (1 << 20),
                    accept_fewer_points=args.accept_fewer_points,
                )
            else:
                result = restore_backup(
                    config, catalog, args.backup, accept_fewer_points=args.accept_fewer_points
                )
        except OnlyInBucket:  # found by a path the catalog knows: the same mistake
            raise _from_offsite_hint(args.backup) from None
        except RestoreRefused as exc:
            # refused before the stop (restore/swap.py), so left_down is as it was: the metrics
            # are rewritten only for a link found bad, which the catalog now says, or after
            # recovery
            write_state = recovering or isinstance(exc, LinkDamaged)
            if isinstance(exc, LinkDamaged):
                save_refused_link(catalog, exc)  # a link found bad: `list` and status say so
            say(f"restore refused, nothing touched: {exc}")
            return exc.exit_status  # 1; 2 for a usage mistake, 78 for a config that cannot work
        except RestoreFailed as exc:
            say(str(exc))
            return EXIT_FAILED
        finally:
            # left_down went to 1 before the swap's stop (restore/swap.py): set from the truth
            if write_state:
                try:
                    write_metrics(config, catalog)
                except (OSError, MetricsNotWritten) as exc:
                    say(f"{exc}")
    # a plain line each (the log event says it too): e.g. a backup whose bytes nothing checked
    for warning in (
        into if args.target is not None else one if args.database is not None else result
    ).warnings:
        say(f"warning: {warning}")
    if args.target is not None:
        print_target(into, args.json)
        return EXIT_OK
    if args.database is not None:
        print_database(one, args.json)
        return EXIT_OK
    if args.json:
        print_json(result.__dict__)
        return EXIT_OK
    print(f"restored {result.archive} ({result.files} files); influxd is running")
    print_merge(getattr(result, "merge", None), getattr(result, "merge_reason", None))
    print_deletes(getattr(result, "deletes", None))
    if result.downtime_s is not None:
        parts = [("stop", result.stop_s), ("swap", result.swap_s), ("start", result.start_s)]
        print(f"  downtime {downtime_sum(result.downtime_s, parts)}")
    if result.served_check:
        took = f" (in {fmt_s(result.check_s)}, influxd answering)" if result.check_s else ""
        print(f"  checked  {result.served_check}{took}")
    if result.rollback_dirs:
        print("  the previous data was kept in:")
        for path in result.rollback_dirs:
            print(f"    {path}")
        print(
            "  once satisfied, remove it with: " + shlex.join(["rm", "-rf", *result.rollback_dirs])
        )
    return EXIT_OK


def _from_offsite_hint(backup: str) -> UsageError:
    """`restore ID` of a backup imported by `import --offsite` and not fetched: a usage
    mistake (the backup is fine, its archive is in the bucket), found before anything."""
    return UsageError(
        f"restore {quoted(backup)}: backup {quoted(backup)} is only in the bucket (imported by "
        "import --offsite, no local copy); add --from offsite to fetch and restore it: "
        f"restore {quoted(backup)} --from offsite"
    )


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    from influx_backupd.run.followup import MetricsNotWritten, tell_verify_failed, write_metrics
    from influx_backupd.verify.check import (
        BackupNotFound,
        passed_over,
        resolve,
        save_result,
        verify,
        verify_all,
    )

    if args.offsite:
        from influx_backupd.cli import offsite as offsite_cli

        return int(offsite_cli.cmd_verify(config, args))
    if args.read_data is not None:
        raise UsageError("verify: --read-data goes with --offsite")
    if args.backup is not None and args.all:
        raise UsageError(
            f"verify: BACKUP {quoted(args.backup)} and --all do not go together: name one "
            "backup, or pass --all for every one"
        )
    if args.backup is None and not args.all:
        raise UsageError("verify: name one BACKUP (catalog id or archive path) or pass --all")
    if args.job is not None and not args.all:
        raise UsageError("verify: --job goes with --all (a BACKUP names its job already)")
    known_job(config, args.job, history_too=True)
    if args.backup is not None:
        backup_argument(config, args.backup)
    interrupt_on_signals()  # a restore test's throwaway influxd is stopped
    results = []
    passed: list[str] = []
    # Under the lock: prune must not delete an archive (or its entry) while we read it.
    with exclusive(config, influxd=False, doing="verify") as catalog:
        if args.all:
            passed = passed_over(catalog, args.job)
            results = verify_all(
                config, catalog, job=args.job, deep=args.deep, restore_test=args.restore_test
            )
        else:
            try:
                archive, record = resolve(catalog, args.backup)
            except BackupNotFound as exc:
                raise UsageError(str(exc)) from None
            except OnlyInBucket:  # the backup is fine: its archive is in the bucket, not here
                raise UsageError(
                    f"verify {quoted(args.backup)}: backup {quoted(args.backup)} is only in the "
                    "bucket (imported by import --offsite, no local copy); check it there: "
                    f"verify {quoted(args.backup)} --offsite"
                ) from None
            result = verify(config, archive, record, deep=args.deep, restore_test=args.restore_test)
            if record is not None:
                save_result(catalog, record, result)
            results.append(result)
        try:
            write_metrics(config, catalog)
        except (OSError, MetricsNotWritten) as exc:
            say(f"{exc}")
        # a kept backup found bad is news whoever checked it (a cron'd `verify --all` as much
        # as the daemon's [verify]): its job's on_failure hook and [notify] verify_failed
        found_bad = [catalog.get(r.run_id) for r in results if r.run_id and not r.ok]
    for record in found_bad:
        if record is not None:
            tell_verify_failed(config, record)
    if args.json:
        print_json([r.to_dict() for r in results])
    elif not results and not passed:
        print("no backups to verify")
    if not results and not passed and args.all:
        say_unimported(config, catalog)
    if passed and not args.json:
        print(
            f"passed over {len(passed)} backup(s) only in the bucket (not fetched here): "
            "verify --offsite --all checks them there"
        )
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


def cmd_recover(config: Config, args: argparse.Namespace) -> int:
    """What the lock's recovery does, alone (guard.recover): influxd started again after a
    killed run, a killed restore rolled back, a killed `restore --database` undone or finished;
    3 starts tried, then StartFailed (exit 1)."""
    from influx_backupd.run.guard import dead_runs_left

    marker = CrashMarker(config.state_dir)
    left = marker.read() if config.state_dir.exists() else None
    database = (config.state_dir / PENDING_DATABASE_RESTORE).exists()
    # a killed restore's throwaway and staging, a killed run's partial archive or record: what
    # the next lock-taking command would clear, cleared now (each said in the log as it goes)
    found = dead_runs_left(config)
    recovered: list[str] = []
    if left is not None or database or found:
        try:
            with exclusive(config, influxd=False, start_attempts=3):
                pass
        except Busy:
            if left is not None or database:
                raise
            found = []  # a run took the lock since: it cleared them as it did
        if database:
            from influx_backupd.restore.database import RECOVERED

            recovered = RECOVERED
    remaining = dead_runs_left(config) if found else []
    cleared = [what for what in found if what not in remaining]
    still = marker.read() if left is not None else None
    run_id = left.get("run_id") if left is not None else None
    kept_db = database and (config.state_dir / PENDING_DATABASE_RESTORE).exists()
    if kept_db:  # the live server did not answer: said in the log; tried again next time
        recovered = [
            *recovered,
            f"{config.state_dir / PENDING_DATABASE_RESTORE} kept: a killed restore --database "
            "is neither undone nor finished (the live server did not answer; see the log): "
            "run recover again",
        ]
    if args.json:
        print_json(
            {
                "left_stopped": left is not None,
                "run_id": run_id,
                "kept": still is not None,
                "database_restore": recovered,
                "cleared": cleared,
                "not_cleared": remaining,
            }
        )
        return EXIT_FAILED if kept_db else EXIT_OK
    # influxd first: what the command is for
    if left is None:
        if not database and not found:
            print(
                "nothing to recover: no run left influxd stopped, no database restore pending, "
                "nothing of a killed run left"
            )
    elif still is None and not CrashMarker.may_be_down(left):
        print(f"cleared the crash marker of run {run_id}, killed before it stopped influxd")
    elif still is None:
        print(f"recovered: influxd, stopped by run {run_id or '(unknown)'}, runs again")
    else:  # a server that got a stop and still runs: watched, not started twice
        print(f"crash marker {marker.path} kept: its run's influxd still runs")
    for line in [
        *recovered,
        *(f"cleared: {what}" for what in cleared),
        *(f"not cleared (see the log): {what}" for what in remaining),
    ]:
        print(line)
    return EXIT_FAILED if kept_db else EXIT_OK


def cmd_prune(config: Config, args: argparse.Namespace) -> int:

    from influx_backupd.keep.prune import PruneReport, prune
    from influx_backupd.run.followup import MetricsNotWritten, write_metrics
    from influx_backupd.run.offsite import unsent_holds

    known_job(config, args.job)  # before the lock
    if args.dry_run and not config.state_dir.exists():
        # no catalog yet: nothing to prune, and a dry run creates no state dir to say so
        return _print_prune(PruneReport(dry_run=True), args)
    with dry_recovery(args.dry_run), exclusive(config, influxd=False, doing="prune") as catalog:
        hold = unsent_holds(config, catalog)
        report = prune(config, catalog, job=args.job, dry_run=args.dry_run, hold=hold)
        if not args.dry_run:
            try:
                write_metrics(config, catalog)
            except (OSError, MetricsNotWritten) as exc:
                say(f"{exc}")
    return _print_prune(report, args)


def _print_prune(report: PruneReport, args: argparse.Namespace) -> int:
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
        for job in report.not_in_config:
            print(
                f"{'kept':<12} {str(job['backups']) + ' backups':<22} {job['job']:<10} "
                "not in the config: never pruned (name the job again to prune them by its rules)"
            )
        for error in report.errors:
            say(f"prune: {error}")
    return EXIT_FAILED if report.errors else EXIT_OK


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    """The backups in the storage dir, by the records beside them, into this host's catalog."""
    if args.offsite:
        from influx_backupd.cli import offsite as offsite_cli

        return int(offsite_cli.cmd_import(config, args))

    storage = config.storage_dir
    if not storage.is_dir():
        say(f"import: storage dir {storage} (storage.dir) does not exist: nothing to import")
        return EXIT_CONFIG
    if args.dry_run and not config.state_dir.exists():
        # a fresh host: no catalog, no lock to take, and a dry run creates neither
        catalog = Catalog(config.state_dir)
        found, problems = records_in(storage)
        known: set[str] = set()
        new = found
    else:
        # A damaged catalog is moved aside (never deleted) and rebuilt from the records;
        # recovery reads the catalog only after that.
        with (
            dry_recovery(args.dry_run),
            exclusive(
                config,
                on_damage="ignore" if args.dry_run else "set_aside",
                influxd=False,
                doing="import",
            ) as catalog,
        ):
            found, problems = records_in(storage)
            known = set() if catalog.damage else {r.id for r in catalog.list()}
            new = [r for r in found if r.id not in known]
            if not args.dry_run:
                for record in new:  # not in runs_total: they ran on the host that counted them
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
        say(f"not imported: {problem}")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from influx_backupd.daemon.loop import run_daemon  # the scheduler: `run` alone loads it

    # refused as check-config and backup refuse it (78): every scheduled run would fail
    _startable(config)
    # under a unit with PrivateTmp=yes: a storage or state dir in /tmp would go at each stop
    unit_paths.refuse_private_tmp(config)
    return run_daemon(config, getattr(args, "log_level", None) or config.settings.daemon.log_level)


def status_despite(cli_path: str | None, error: ConfigError, args: argparse.Namespace) -> int:
    """`status` with a config that does not load (a mistyped key): a daemon started on it
    before still runs on what it loaded then, and an operator must still see it. What that
    daemon publishes in its state_dir (daemon.json, a restore's progress), then the config's
    error line; exit 78 all the same (a reload, a restart or any other command would refuse
    this config)."""
    from influx_backupd.daemon.status import daemon_state_in

    try:
        path: Path | None = resolve_path(cli_path)
    except ConfigError:
        path = None
    state_dir = state_dir_leniently(path) if path is not None else None
    state = daemon_state_in(state_dir) if state_dir is not None else None
    if state is not None and state_dir is not None:
        report = {
            "daemon": {
                "running": True,
                "pid": state.get("pid"),
                "started_at": state.get("started_at"),
                "config": state.get("config"),
                "status": state.get("status"),
                "run_in_flight": state.get("running"),
                "waiting": state.get("pending", []),
                "next_runs": {
                    str(name): job.get("next_run")
                    for name, job in (state.get("jobs") or {}).items()
                    if isinstance(job, dict)
                },
            },
            "restore": progress.read_published(state_dir / progress.RUNNING_FILE),
            "config_error": str(error),
        }
        if args.json:
            print_json(report)
        else:
            print(_render_despite(report))
    say(error.line())
    return error.exit_status


def _render_despite(report: dict[str, Any]) -> str:
    d = report["daemon"]
    lines = [
        f"daemon    running, pid {d['pid']}, since {fmt_time(number(d['started_at']))}",
        f"  status  {d['status']}",
    ]
    if d["config"]:
        lines.append(f"  config  {d['config']}, as it loaded it (the file fails now: below)")
    for name, when in d["next_runs"].items():
        lines.append(f"job {name}  next {fmt_time(number(when))}")
    running = report["restore"]
    if running:
        lines.append(f"restore   {running['what']} (pid {running['pid']})")
    lines.append(
        "config    NOT LOADED: the daemon keeps the config it loaded before; fix the file "
        "(influx-backupd check-config), then reload it"
    )
    return "\n".join(lines)


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from influx_backupd.daemon.status import gather, render  # the off-site state too

    Catalog(config.state_dir).check()
    report = gather(config)
    # a killed `restore --database` (a running one holds the lock): what the next lock-taking
    # command does with it
    pending = None if lock_held(config.state_dir) else pending_database_restore(config.state_dir)
    report["database_restore_pending"] = pending
    if args.json:
        print_json(report)
    else:
        print(render(report))
        if pending is not None:
            what = (
                "its database was in: `influx-backupd recover` keeps it and finishes"
                if pending.get("in")
                else "it was not in: `influx-backupd recover` undoes it"
            )
            print(
                f"restore   a killed restore --database left {pending.get('new', '?')} pending "
                f"({config.state_dir / PENDING_DATABASE_RESTORE}); {what}"
            )
    say_unimported(config, Catalog(config.state_dir))
    # influxd left down by a run that is gone is the one state that needs a person now:
    # `influx-backupd status || alert` (a job's failed run is a line, not an outage)
    down = report["influxd_down"]
    return EXIT_FAILED if down is not None and not down["answers"] else EXIT_OK
