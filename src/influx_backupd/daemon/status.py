"""`influx-backupd status`: is a daemon running, each job's last result and next run, the last
downtime. Reads state_dir only (daemon.json and the catalog); never takes the backup lock, so it
answers while a backup runs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from influx_backupd.core.atomic import read_ours_text
from influx_backupd.core.config import Config
from influx_backupd.core.jsontext import count, loads_json, number
from influx_backupd.core.schedule import describe
from influx_backupd.influxd.server import Influxd
from influx_backupd.report import progress
from influx_backupd.report.metrics import DAEMON_STATE
from influx_backupd.run import offsite
from influx_backupd.run.guard import left_stopped, left_stopped_line
from influx_backupd.store.catalog import Catalog
from influx_backupd.store.chain import chain_breaks
from influx_backupd.store.record import RunRecord, dated_ahead, missing_on_disk, served_less

# The running daemon's published state (written by daemon.loop): named in report.metrics (which
# keeps a killed daemon's next runs out of the file), so that `status` and every command's
# crash-marker line do not import the scheduler to name it.
STATE_FILE = DAEMON_STATE


def read_daemon_state(config: Config) -> dict[str, Any] | None:
    """The running daemon's published state, or None when no daemon is running."""
    return daemon_state_in(config.state_dir)


def daemon_state_in(state_dir: Path) -> dict[str, Any] | None:
    """read_daemon_state without a config (`status` on one that does not load). The pid alone
    could have been reused since: it counts only when the process still has the start time the
    daemon wrote (progress.read_published)."""
    state = progress.read_published(state_dir / STATE_FILE)
    if state is None:
        return None
    # a damaged file of a live daemon loses the parts that do not fit, not the whole `status`
    jobs = state.get("jobs")
    state["jobs"] = (
        {k: v for k, v in jobs.items() if isinstance(v, dict)} if isinstance(jobs, dict) else {}
    )
    for job in state["jobs"].values():
        skip = job.get("last_skip")
        if skip is not None and not (
            isinstance(skip, dict) and isinstance(skip.get("reasons"), list)
        ):
            job["last_skip"] = None
        begun = job.get("not_started")
        if begun is not None and not (
            isinstance(begun, dict)
            and isinstance(begun.get("count"), int)
            and isinstance(begun.get("error"), str)
        ):
            job["not_started"] = None
    if not isinstance(state.get("verify"), dict):
        state["verify"] = {}
    for key in ("started_at",):
        state[key] = number(state.get(key))
    return state


def suspended(pid: object) -> bool:
    """The daemon process is stopped by a signal (SIGSTOP, Ctrl-Z, a debugger): it runs no job,
    writes no heartbeat and answers no SIGHUP until it is continued, though its state file says
    it runs."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except (psutil.Error, OverflowError):
        return False


def left_behind(config: Config) -> dict[str, Any] | None:
    """daemon.json of a daemon that is gone without its clean exit (which removes it): killed
    (SIGKILL, the OOM killer, the watchdog) or crashed. Its pid and when it was last alive (the
    daemon touches the file with each metrics heartbeat)."""
    path = config.state_dir / STATE_FILE
    try:
        last_alive = path.stat().st_mtime
        state = loads_json(read_ours_text(path))
    except (OSError, ValueError):
        return None
    pid = state.get("pid") if isinstance(state, dict) else None
    return {"pid": count(pid), "last_alive": last_alive}


def _run_summary(record: RunRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "mode": record.mode,
        "status": record.status,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "downtime_s": record.downtime_s,
        "bytes": record.bytes,
        "archive": record.archive,
        "error": record.error,
    }


def _not_in_config(backups: int) -> str:
    """A job the config no longer names: no keep_* rules apply to the backups it left."""
    if not backups:
        return "not in the config"
    return f"not in the config: {backups} backup{'s' * (backups != 1)} kept, never pruned"


def gather(config: Config) -> dict[str, Any]:
    now = time.time()
    state = read_daemon_state(config)
    catalog = Catalog(config.state_dir)
    records = catalog.list() if catalog.exists() else []
    breaks = chain_breaks(records)
    daemon_jobs: dict[str, Any] = state.get("jobs", {}) if state else {}
    jobs = []
    # the config's jobs (or, with none, the implicit one `backup` runs), then any job the
    # catalog holds runs of and the config no longer names: a failed run is never hidden
    configured = config.settings.job or [config.job(None)]
    names = [job.name for job in configured]
    names += dict.fromkeys(r.job for r in records if r.job not in names)
    for name in names:
        job = next((j for j in configured if j.name == name), None)
        # a run dated ahead of the clock is never the last one: it would hide every later
        # failure until its date (store.record.dated_ahead); said on a line of its own
        ahead = [r for r in records if r.job == name and dated_ahead(r, now)]
        mine = [r for r in records if r.job == name and not dated_ahead(r, now)]
        finished = [r for r in mine if r.status != "running"]
        # "last ok": the newest good backup (none: one whose check failed since, one gone from
        # disk, one that needs a link that is: `list` shows none of them ok)
        last_ok = next(
            (r for r in reversed(mine) if r.good and not missing_on_disk(r) and r.id not in breaks),
            None,
        )
        published = daemon_jobs.get(name, {})
        served_run, lost = served_less(finished)
        jobs.append(
            {
                "name": name,
                "in_config": job is not None,
                "schedule": describe(job)
                if job is not None
                else _not_in_config(sum(r.ok for r in mine)),
                "mode": job.mode if job is not None else mine[-1].mode,
                "next_run": published.get("next_run") if state else None,
                "last": _run_summary(finished[-1]) if finished else None,
                "last_ok": _run_summary(last_ok) if last_ok else None,
                "last_skip": published.get("last_skip") if state else None,
                # scheduled runs the daemon could not begin (no record tells of them)
                "not_started": published.get("not_started") if state else None,
                # the newest cold run's restarted server served fewer points than before its stop
                "served_less": {"run_id": served_run, "databases": lost} if lost else None,
                "dated_ahead": [r.id for r in ahead] or None,
            }
        )
    verify = state.get("verify", {}) if state else {}
    failing = [r.id for r in records if r.failed_check]
    with_downtime = [r for r in records if r.downtime_s is not None and not dated_ahead(r, now)]
    offsite_report = offsite.status(config, catalog) if catalog.exists() else None
    last_downtime = with_downtime[-1] if with_downtime else None
    left = left_stopped(config)
    answering = Influxd(config).answers_itself() if left is not None else False
    return {
        # a restore running now (by hand or under a unit), with its progress
        "restore": progress.read_published(config.state_dir / progress.RUNNING_FILE),
        # influxd left stopped by a run that is gone (its crash marker), and what brings it back
        "influxd_down": {
            "run_id": left.get("run_id"),
            "start_failures": count(left.get("start_failures")) or 0,
            "last_start_error": left.get("last_start_error"),
            # a marker left while influxd answers (a restore killed after its start): not down
            "answers": answering,
            "detail": left_stopped_line(
                config,
                left,
                daemon_pid=int(state["pid"]) if state else None,
                this_command_starts=False,
                answering=answering,
            ),
        }
        if left is not None
        else None,
        "daemon": {
            "running": state is not None,
            "suspended": state is not None and suspended(state.get("pid")),
            "pid": state.get("pid") if state else None,
            "started_at": state.get("started_at") if state else None,
            "config": state.get("config") if state else None,
            "status": state.get("status") if state else None,
            "run_in_flight": state.get("running") if state else None,
            "waiting": state.get("pending", []) if state else [],
            # not running, and did not stop cleanly: its daemon.json was left behind
            "gone": None if state else left_behind(config),
        },
        "jobs": jobs,
        "verify": {
            "schedule": describe(config.settings.verify),
            "next_run": verify.get("next_run"),
            "failing": failing,  # good backups whose last check failed
            # good themselves, and need a link that is missing or failed its check
            "broken": {run_id: str(why) for run_id, why in breaks.items()},
        },
        "offsite": offsite_report,  # None without [offsite]
        "last_downtime": {
            "run_id": last_downtime.id,
            "job": last_downtime.job,
            "downtime_s": last_downtime.downtime_s,
            "started_at": last_downtime.started_at,
        }
        if last_downtime
        else None,
    }


def _when(ts: object) -> str:
    ts = number(ts)  # a damaged file's "yesterday" or 1e300 is no time: shown as none
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render(report: dict[str, Any]) -> str:
    d = report["daemon"]
    lines = []
    if report["influxd_down"]:
        label = "crash marker" if report["influxd_down"].get("answers") else "influxd down"
        lines.append(f"{label}  {report['influxd_down']['detail']}")
    if d["running"] and d.get("suspended"):
        lines.append(
            f"daemon    suspended (stopped by a signal: SIGSTOP, Ctrl-Z or a debugger), pid "
            f"{d['pid']}: it runs no job and writes no heartbeat until continued "
            f"(kill -CONT {d['pid']})"
        )
        lines.append(f"  status  {d['status']} (as it was when it was suspended)")
    elif d["running"]:
        lines.append(f"daemon    running, pid {d['pid']}, since {_when(d['started_at'])}")
        lines.append(f"  status  {d['status']}")
    elif d.get("gone"):
        gone = d["gone"]
        lines.append(
            f"daemon    not running: it did not stop cleanly (killed or crashed; pid "
            f"{gone['pid'] or '?'}, last alive {_when(gone['last_alive'])})"
        )
    else:
        lines.append("daemon    not running")
    running = report.get("restore")
    if running:
        files = running.get("files")
        done = progress.describe(running["done"], running["total"], tuple(files) if files else None)
        lines.append(
            f"restore   {running['what']} (pid {running['pid']}, since "
            f"{_when(running['started_at'])}): {done}"
        )
    for job in report["jobs"]:
        lines.append(f"job {job['name']}  {job['schedule']}, mode {job['mode']}")
        if job["in_config"]:
            next_run = _when(job["next_run"]) if d["running"] else "- (no daemon)"
            lines.append(f"  next    {next_run}")
        last = job["last"]
        if last is None:
            lines.append("  last    never ran")
        else:
            downtime = "" if last["downtime_s"] is None else f", downtime {last['downtime_s']:.3f}s"
            lines.append(
                f"  last    {last['status']} {last['mode']} at {_when(last['started_at'])}"
                f" (run {last['id']}{downtime})"
            )
            if last["error"]:
                lines.append(f"  error   {last['error']}")
        good = job["last_ok"]
        if last is not None and (good is None or good["id"] != last["id"]):
            # after a failure, how old the newest good backup is: what an operator asks first
            lines.append(
                f"  last ok {_when(good['started_at'])} (run {good['id']})"
                if good is not None
                else "  last ok never: no good backup of this job"
            )
        ahead = job.get("dated_ahead")
        if ahead:
            lines.append(
                f"  DATED AHEAD {len(ahead)} run(s) dated past now, taken while the clock was "
                f"ahead (or imported so): {', '.join(ahead[:3])}{' …' * (len(ahead) > 3)}; "
                "not shown as the last run, kept, counted by no retention rule until then"
            )
        served = job.get("served_less")
        if served:
            lost = ", ".join(f"{db} ({n} points)" for db, n in served["databases"].items())
            lines.append(
                f"  SERVED LESS after the restart of run {served['run_id']}: {lost} fewer than "
                "before its stop; the live server lost them, that run's archive holds them"
            )
        begun = job["not_started"]
        if begun:
            lines.append(
                f"  NOT STARTED {begun['count']} scheduled run(s) since the daemon started, the "
                f"last {_when(begun.get('at'))}: {begun['error']}"
            )
        skip = job["last_skip"]
        if skip:
            lines.append(
                f"  skipped {_when(skip.get('at'))}: {'; '.join(map(str, skip['reasons']))}"
            )
    verify = report["verify"]
    lines.append(f"verify --all  {verify['schedule']} ([verify])")
    if verify["schedule"] != "manual only":
        lines.append(f"  next    {_when(verify['next_run']) if d['running'] else '- (no daemon)'}")
    if verify["failing"]:
        lines.append(
            f"  FAILING {len(verify['failing'])} backup(s) failed their last check: "
            + ", ".join(verify["failing"])
        )
    for run_id, why in (verify.get("broken") or {}).items():
        lines.append(f"  BROKEN  {run_id}: {why} (a restore of it is refused)")
    off = report.get("offsite")
    if off:
        lines.append(
            f"offsite   {off['where']}: last sent {_when(off['last_success'])}, "
            f"{len(off['not_offsite'])} backup(s) not off-site"
            + (f": {', '.join(off['not_offsite'])}" if off["not_offsite"] else "")
        )
        for backup_id, why in (off.get("not_sent") or {}).items():
            lines.append(f"  NOT SENT {backup_id}: {why}")
        if off["last_error"]:
            lines.append(f"  error   {off['last_error']} ({_when(off['last_error_at'])})")
        for damage in off.get("damaged") or []:
            lines.append(
                f"  DAMAGED {damage['backup']}: {damage['objects']} object(s) missing or damaged "
                f"in the bucket (found {_when(damage['found_at'])}); "
                + _repair_said(damage.get("repair") or {})
            )
    down = report["last_downtime"]
    if down:
        lines.append(
            f"last downtime {down['downtime_s']:.3f}s ({down['job']}, run {down['run_id']}, "
            f"{_when(down['started_at'])})"
        )
    return "\n".join(lines)


def _repair_said(repair: dict[str, Any]) -> str:
    """What the next sync can do for a damaged off-site backup (run/offsite._repair_outlook)."""
    if repair.get("can") == "local_copy":
        return "the next sync sends them again from its local copy"
    if repair.get("can") == "not_repairable":
        return (
            f"NOT repairable: {repair.get('why')}; a restore of it from the bucket fails: "
            "take a new backup (the next sync sends it), and off-site retention prunes this one"
        )
    return (
        "its own local copy is not here: the next sync sends them again only if another "
        "local backup holds them (it says `not repaired` when none does)"
    )
