"""Configuration: TOML loaded with tomllib, validated by pydantic, errors as one line with a key path.

The server's directories are read from its own influxdb.conf so the operator never repeats them.

Why one module of this size: the pydantic models and the loader that turns their errors into
one line with a key path are read together when a key is added; value checks that need no model
live in config_values.py, durations in durations.py, [offsite] in offsite_section.py.
"""

from __future__ import annotations

import base64
import difflib
import os
import re
import shlex
import stat
import tomllib
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)

from influx_backupd.core import apprise_urls, atomic, config_values, offsite_keys, redact
from influx_backupd.core.durations import (
    Duration,
    IntervalDuration,
    PositiveTimeoutDuration,
)
from influx_backupd.core.errors import EXIT_CONFIG, BackupdError
from influx_backupd.core.names import JOB_NAME, JOB_NAME_RULE
from influx_backupd.core.offsite_section import BUCKET_FORM, OffsiteSection
from influx_backupd.core.paths import real

DEFAULT_CONFIG_PATH = Path("/etc/influx-backupd/config.toml")
CONFIG_ENV = "INFLUX_BACKUPD_CONFIG"
DEFAULT_STATE_DIR = Path("/var/lib/influx-backupd")

_WINDOW = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]\Z")

# The JSON Schema's share of the rules below (scripts/config_schema.py): only what it can say
# without ever refusing a value load() accepts (tests/unit/core/test_config_schema_rules.py).
_NO_CONTROL = r"\x00-\x1f\x7f"


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


def _url_pattern(scheme: str) -> str:
    """An http(s) URL: a netloc without user:password@ or port 0, no control characters."""
    return rf"^{scheme}://(?![^/?#]*:0+([/?#]|$))[^/?#@{_NO_CONTROL}]+([/?#][^{_NO_CONTROL}]*)?$"


def _cron_field(number: str) -> str:
    item = rf"(\*|{number}(-{number})?)(/[0-9]+)?"
    return rf"{item}(,{item})*"


# cron's nicknames (schedule.ALIASES, any case), or 5 fields: minute and hour in range; the
# day, month and weekday fields' shape only
_NICKNAMES = ("hourly", "daily", "midnight", "weekly", "monthly", "yearly", "annually")
CRON_PATTERN = (
    rf"^\s*(@({'|'.join(_any_case(n) for n in _NICKNAMES)})"
    rf"|{_cron_field('0*[0-5]?[0-9]')}\s+{_cron_field('0*(1?[0-9]|2[0-3])')}(\s+\S+){{3}})\s*$"
)
PATH_PATTERN = r"^/[^\x00]*$"  # absolute, no NUL byte: every Path key (config_values.path_problem)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # never in a log line, a repr or check-config's output

    def header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return "Basic " + token


class ConfigError(BackupdError):
    """A user's configuration mistake: printed as one line, exit status 78."""

    code = "config"
    exit_status = EXIT_CONFIG


class _Strict(BaseModel):
    # Docstrings under fields are their descriptions in the JSON Schema in packaging/, which
    # scripts/config_schema.py reads from the source (not pydantic at every command's start).
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DaemonSection(_Strict):
    state_dir: Path = DEFAULT_STATE_DIR  # unset: see default_state_dir
    """Catalog, backup lock, crash marker and the log of influxd servers we started. Unset: $STATE_DIRECTORY when systemd sets it, else /var/lib/influx-backupd."""
    metrics_file: Path | None = None
    """Prometheus text file for node_exporter's textfile collector, rewritten after every run and by the daemon at least every minute: a regular file, or none yet (a device, FIFO or socket is refused at load). Unset: no metrics."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """The lowest level of events logged by the daemon and, off a terminal, by commands."""


class InfluxdSection(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            # service or command, not both (an empty one counts as unset, as below)
            "oneOf": [
                {"required": ["service"], "properties": {"service": {"minLength": 1}}},
                {"required": ["command"], "properties": {"command": {"minItems": 1}}},
            ],
            "dependentRequired": {"username": ["password_file"], "password_file": ["username"]},
        }
    )

    config: Path = Path("/etc/influxdb/influxdb.conf")
    """The server's influxdb.conf: its meta, data, wal and hinted-handoff dirs are read from it."""
    service: str | None = None
    """The systemd unit that runs influxd, stopped and started with systemctl. Set service or command, not both."""
    command: Annotated[
        list[str] | None,
        Field(json_schema_extra={"minItems": 1, "prefixItems": [{"pattern": "^/"}]}),
    ] = None
    """Without a service manager: the argv that starts influxd (detached, in its own session). Set service or command, not both."""
    pidfile: Path | None = None
    """With command: the pidfile influxd writes (else it is found by the config path on its command line): a regular file, or none yet."""
    binary: Path = Path("/usr/bin/influxd")
    """The influxd executable used for `influxd backup` and `influxd restore` (hot jobs)."""
    url: Annotated[
        str | None,
        Field(json_schema_extra={"pattern": _url_pattern(" *" + _any_case("http") + "[sS]?")}),
    ] = None  # default: from influxdb.conf [http] bind-address
    """The HTTP API, whose /ping must answer after a start. Unset: from influxdb.conf [http] bind-address. Its host's form and a port above 65535 are checked at load, not by this schema."""
    backup_host: Annotated[
        str | None, Field(json_schema_extra={"pattern": r"^.+:(?!0+$)[0-9]+$"})
    ] = None  # default: from influxdb.conf bind-address
    """The snapshot (RPC) service hot backups read, host:port; may be a remote node. Unset: influxdb.conf's bind-address. Its host's form and a port above 65535 are checked at load, not by this schema."""
    # backup_host's server's HTTP API, whose clock dates hot increments; default: see hot.py
    backup_url: Annotated[
        str | None,
        Field(json_schema_extra={"pattern": _url_pattern(" *" + _any_case("http") + "[sS]?")}),
    ] = None
    """The HTTP API of backup_host's server, whose clock dates hot increments. Unset: url when backup_host is on url's host, else port 8086 of backup_host."""
    user: str = "influxdb"
    """Owner of restored files (influxd cannot write files it does not own)."""
    group: str = "influxdb"
    """Group of restored files."""
    stop_timeout: PositiveTimeoutDuration = 90.0
    """How long influxd may take to stop; past it nothing is copied and influxd is left running."""
    start_timeout: PositiveTimeoutDuration = 120.0
    """How long influxd may take to answer /ping after a start (it grows with the WAL)."""
    backup_timeout: PositiveTimeoutDuration = 3600.0  # a whole `influxd backup` run (hot job)
    """Limit on one whole `influxd backup` run (hot jobs); past it the run fails."""
    # HTTP auth for queries to the live server ([http] auth-enabled); both or neither. The
    # password lives in its own file (config files are often world-readable): read at load.
    username: str | None = None
    """HTTP user for the queries sent to a server with [http] auth-enabled (point counts before a cold stop). Set with password_file, or neither."""
    password_file: Path | None = None
    """File holding that user's password (trailing newline stripped), e.g. a 0600 file or a systemd credential. Set with username, or neither."""

    @model_validator(mode="after")
    def _one_way_to_start(self) -> InfluxdSection:
        if self.service and self.command:
            raise ValueError("set either service or command, not both")
        if not self.service and not self.command:
            raise ValueError(
                "set service (a systemd unit, e.g. influxdb.service) or command "
                "(the argv that starts influxd)"
            )
        if self.command is not None and (not self.command or not self.command[0]):
            raise ValueError("command: must start with the influxd executable")
        # 0 fails every run: influxd is given no time to stop or answer, influxd backup none
        for key in ("stop_timeout", "start_timeout", "backup_timeout"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be longer than 0s")
        return self


class StorageSection(_Strict):
    # influxd's file globbing: no *, ? [ or backslash (config_values.glob_problem)
    dir: Annotated[Path, Field(json_schema_extra={"pattern": r"^/[^*?\[\\\x00]*$"})]
    """Where the archives go (created with mode 0700); best on its own filesystem. Outside influxd's meta, data and wal dirs (checked at load, not by this schema)."""


def _job_name(value: object) -> object:
    if isinstance(value, str) and not JOB_NAME.match(value):
        raise ValueError(f"must be {JOB_NAME_RULE}")
    return value


def _cold_window(value: object) -> object:
    if value is None:
        return value
    if not isinstance(value, str) or not _WINDOW.match(value):
        raise ValueError(f"must be a daily window like '01:00-05:00', not {value!r}")
    return value


def _crontab(value: object) -> object:
    if value is None:
        return value
    if not isinstance(value, str):
        raise ValueError("must be a 5-field crontab string like '0 3 * * *'")
    from influx_backupd.core.schedule import ScheduleError, validate  # APScheduler: load when used

    try:
        validate(value)
    except ScheduleError as exc:
        raise ValueError(str(exc)) from None
    return value


def _timezone(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be an IANA time zone name like 'UTC' or 'Europe/Berlin'")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name like 'Europe/Berlin')"
        ) from None
    return value


MIN_EVERY = 1.0  # seconds


class Scheduled(_Strict):
    """When something runs: a 5-field crontab string, or an interval; neither = only by hand."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["schedule", "every"]}})

    schedule: Annotated[
        str | None, BeforeValidator(_crontab), Field(json_schema_extra={"pattern": CRON_PATTERN})
    ] = None
    """A 5-field crontab string in cron's meaning (0 and 7 are Sunday), or @hourly, @daily, @weekly, @monthly. Set schedule or every, or neither (by hand only). The day, month and weekday fields' values, and a schedule that never fires, are checked at load, not by this schema."""
    every: IntervalDuration | None = None
    """An interval instead of schedule, e.g. \"6h\", at least 1s; its grid is anchored at the last run."""
    jitter: Duration = 0.0
    """A random delay of up to this much added to each run."""
    timezone: Annotated[str, BeforeValidator(_timezone)] = "UTC"
    """IANA time zone of the schedule. That the system's tz database knows it is checked at load, not by this schema."""
    catch_up: Duration = 3600.0
    """A run missed while the daemon was down runs once at start-up if it is no older than this; a run waiting longer than this after it was due is skipped."""

    @model_validator(mode="after")
    def _schedule_or_every(self) -> Self:
        if self.schedule is not None and self.every is not None:
            raise ValueError("set either schedule or every, not both")
        if self.every is not None and self.every < MIN_EVERY:
            # a shorter one starts a run (a cold one stops influxd) as often as it can
            raise ValueError(f"every: must be {MIN_EVERY:g}s or longer")
        if self.jitter > 0:
            # a delay as long as the gap pushes each run past the next one's time: an hourly
            # job with jitter = "30d" ran weeks apart, and check-config said nothing
            from influx_backupd.core.schedule import human_duration, shortest_gap

            gap = shortest_gap(self)
            if gap is not None and self.jitter >= gap:
                raise ValueError(
                    f"jitter: {human_duration(self.jitter)} must be shorter than the shortest "
                    f"time between two runs of the schedule ({human_duration(gap)}), or a run "
                    "would be delayed past the next"
                )
        return self


class VerifySection(Scheduled):
    """[verify]: the daemon checks every good backup again on this schedule (bit rot, a
    truncated or edited archive), as `verify --all` does; neither schedule nor every: never."""

    deep: bool = Field(default=False, strict=True)
    """Also check every TSM block's CRC32 and decode every WAL entry (without: TSM indexes and WAL entry framing only)."""
    restore_test: bool = Field(default=False, strict=True)
    """Also restore every backup into a throwaway influxd and count its points (slow)."""


# a hook's executable: an absolute path or a bare name (found on the PATH), never relative
_HOOK_SCHEMA: dict[str, Any] = {"minItems": 1, "prefixItems": [{"pattern": "^(/|[^/]+$)"}]}


class JobSection(Scheduled):
    name: Annotated[
        str,
        BeforeValidator(_job_name),
        Field(json_schema_extra={"pattern": JOB_NAME.pattern.removesuffix("\\Z") + "$"}),
    ]
    """The job's name: 1-64 letters, digits, '.', '_' or '-'. Names the archives and the metrics' backup_job label. Unique among the jobs (checked at load, not by this schema)."""
    # how: the policy picks cold or hot per run
    mode: Literal["cold", "hot", "auto"] = "cold"
    """cold: stop influxd, tar its dirs, start it. hot: `influxd backup` while it serves. auto: hot when the snapshot service answers, else cold when allowed, else skip."""
    cold_window: Annotated[
        str | None,
        BeforeValidator(_cold_window),
        Field(json_schema_extra={"pattern": _WINDOW.pattern.removesuffix("\\Z") + "$"}),
    ] = None
    """Scheduled cold runs only inside this daily window, in the job's time zone, e.g. \"01:00-05:00\" (may wrap midnight; equal ends: the whole day). Unset: any time."""
    max_downtime: Duration | None = None
    """Refuse a scheduled cold run whose predicted downtime is longer than this. Unset: no limit."""
    fallback: Literal["none", "cold"] = "none"
    """cold: a failed hot run is followed by a cold one (if cold_window and max_downtime allow)."""
    # TOML key `copy`; renamed here because BaseModel.copy exists
    copy_mode: Literal["staged", "direct"] = Field(default="staged", alias="copy")
    """staged: copy the dirs while influxd serves and stop it only for what changed. direct: tar while it is stopped."""
    holes: Literal["keep", "fill"] = "keep"
    """keep: a file with holes (influxd's preallocated _series segments) is staged and archived as its data only, a PAX 1.0 sparse member that GNU tar, bsdtar and Python's tarfile restore with its holes. fill: its holes as zeros, for tar readers without sparse support (busybox); archives grow by the holes."""
    keep_staging: bool = Field(default=True, strict=True)
    """Keep the staging tree between runs, so the next staged copy is incremental (costs one more copy of the data on the storage filesystem)."""
    full_every: Duration = 7 * 86400.0
    """Hot jobs: start a new chain (a full backup) after this long; increments in between."""
    # keep
    keep_last: int = Field(default=0, ge=0, le=config_values.KEEP_MAX, strict=True)
    """Retention: keep the newest N good backups. All keep_* 0: keep every backup."""
    keep_hourly: int = Field(default=0, ge=0, le=config_values.KEEP_MAX, strict=True)
    """Retention: keep the newest good backup of each of the last N hours."""
    keep_daily: int = Field(default=0, ge=0, le=config_values.KEEP_MAX, strict=True)
    """Retention: keep the newest good backup of each of the last N days."""
    keep_weekly: int = Field(default=0, ge=0, le=config_values.KEEP_MAX, strict=True)
    """Retention: keep the newest good backup of each of the last N weeks."""
    keep_monthly: int = Field(default=0, ge=0, le=config_values.KEEP_MAX, strict=True)
    """Retention: keep the newest good backup of each of the last N months."""
    # prove and report
    verify_after_backup: bool = Field(default=False, strict=True)
    """Verify each backup after it is written (sha256, structure, file formats)."""
    verify_restore_test: bool = Field(default=False, strict=True)
    """With verify_after_backup: also restore it into a throwaway influxd and query it."""
    on_success: Annotated[list[str] | None, Field(json_schema_extra=_HOOK_SCHEMA)] = None
    """Argv run without a shell after a good run, the record in INFLUX_BACKUPD_* variables. Its executable: an absolute path, or a name on the PATH (that it is there is checked at load, not by this schema)."""
    on_failure: Annotated[list[str] | None, Field(json_schema_extra=_HOOK_SCHEMA)] = None
    """Argv run without a shell after a failed run, or when a check finds a backup bad. Its executable as for on_success."""
    hook_timeout: PositiveTimeoutDuration = 60.0
    """After this long a hook's whole process group is killed."""
    heartbeat_url: Annotated[
        str | None, Field(json_schema_extra={"pattern": _url_pattern("https?")})
    ] = None
    """healthchecks.io-style URL: GET url/start when a run begins, POST url on success and url/fail on failure, with the log tail. No user:password@ (the secret goes in the path or query)."""
    offsite: bool = Field(default=True, strict=True)
    """false: this job's backups are not copied off-site ([offsite])."""

    @model_validator(mode="after")
    def _hooks_and_heartbeat(self) -> JobSection:
        for hook in ("on_success", "on_failure"):
            argv = getattr(self, hook)
            if argv is not None and (not argv or not argv[0]):
                raise ValueError(
                    f"{hook}: must be a non-empty argv list like ['/usr/local/bin/notify', 'ok']"
                )
        if self.heartbeat_url is not None and not self.heartbeat_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("heartbeat_url: must start with http:// or https://")
        if self.hook_timeout <= 0:  # 0 kills every hook as it starts
            raise ValueError("hook_timeout: must be longer than 0s")
        return self


# Each [notify] URL's verdict (True, or why it could not be checked) while its section is
# validated: NotifySection asks one child about all of them, each URL's validator reads its own.
_VERDICTS: ContextVar[dict[str, bool | str] | None] = ContextVar("_VERDICTS", default=None)
# False while a command that never notifies (list, status) loads the config: its URLs are taken
# as written, and the child that asks apprise (about 1 s of wall time) is not started.
_ASK_APPRISE: ContextVar[bool] = ContextVar("_ASK_APPRISE", default=True)


def _apprise_takes(value: str) -> bool:
    """Whether apprise can use value, asked of a child: apprise stays out of this process (the
    daemon's, for its whole life); a value without :// never parses as an apprise URL."""
    if "://" not in value:
        return False
    verdict = (_VERDICTS.get() or {}).get(value)
    if verdict is None:  # a section built without its model validator around it
        try:
            verdict = apprise_urls.usable([value])[0]
        except apprise_urls.Unchecked as exc:
            verdict = str(exc)
    if isinstance(verdict, str):
        raise ValueError(f"could not be checked: {verdict}")
    return verdict


def _apprise_url(value: object) -> object:
    if not isinstance(value, str) or not value:
        raise ValueError("must be an apprise URL like 'ntfy://ntfy.sh/my-topic'")
    if not apprise_urls.installed():
        raise ValueError(
            "needs apprise, which is not installed: pip install 'influx-backupd[notify]'"
        )
    if not _apprise_takes(value):
        # never the rest of the value: a URL's path and user part carry its secrets
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        what = f"{scheme!r} URL" if scheme else "value without ://"
        hint = _APPRISE_HINTS.get(scheme, "")
        examples = ", ".join(APPRISE_EXAMPLES)
        raise ValueError(
            f"apprise cannot use this {what}{hint} (forms: "
            f"https://github.com/caronc/apprise/wiki, e.g. {examples})"
        )
    return value


# What the refusal shows: each one apprise itself accepts (tests/unit/core/test_config_audit.py).
APPRISE_EXAMPLES = (
    "ntfy://ntfy.sh/TOPIC",
    "mailto://USER:PASSWORD@example.com?smtp=smtp.example.com&to=you@example.com",
)
_MAIL_HINT = (
    ": its host must be a mail domain (an IP address or a bare host name is refused); "
    "name the SMTP server with smtp=HOST"
)
_APPRISE_HINTS = {"mailto": _MAIL_HINT, "mailtos": _MAIL_HINT}


# The schema checks the form only: which schemes and URLs apprise takes is checked at load.
AppriseUrls = list[
    Annotated[str, AfterValidator(_apprise_url), Field(json_schema_extra={"pattern": "://"})]
]


class NotifySection(_Strict):
    """[notify]: apprise URLs per event; each message is a short summary and the run's log tail."""

    start: AppriseUrls = Field(default_factory=list)
    """apprise URLs told when a run begins."""
    success: AppriseUrls = Field(default_factory=list)
    """apprise URLs told when a run finished ok (and its verify, if any)."""
    failure: AppriseUrls = Field(default_factory=list)
    """apprise URLs told when a run failed or was interrupted."""
    verify_failed: AppriseUrls = Field(default_factory=list)
    """apprise URLs told when a check finds a kept backup bad."""
    timeout: PositiveTimeoutDuration = (
        30.0  # the most a notification may hold up the run that sends it
    )
    """The most a notification may hold up the run that sends it."""

    @model_validator(mode="wrap")
    @classmethod
    def _asked_together(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """One child answers for every URL of the section (each child starts Python and
        apprise, about 0.4 s of CPU); each URL's own validator then reads its verdict."""
        urls = sorted(
            {
                url
                for urls in (data.values() if isinstance(data, dict) else ())
                if isinstance(urls, list)
                for url in urls
                if isinstance(url, str) and "://" in url
            }
        )
        if not urls or not apprise_urls.installed():
            return handler(data)
        if not _ASK_APPRISE.get():
            token = _VERDICTS.set(dict.fromkeys(urls, True))
            try:
                return handler(data)
            finally:
                _VERDICTS.reset(token)
        try:
            verdicts: dict[str, bool | str] = dict(
                zip(urls, apprise_urls.usable(urls), strict=True)
            )
        except apprise_urls.Unchecked as exc:
            verdicts = dict.fromkeys(urls, str(exc))
        token = _VERDICTS.set(verdicts)
        try:
            return handler(data)
        finally:
            _VERDICTS.reset(token)

    @model_validator(mode="after")
    def _some_time(self) -> Self:
        if self.timeout <= 0:  # 0 gives up before anything is sent, and says it failed
            raise ValueError("timeout: must be longer than 0s")
        return self


class Settings(_Strict):
    daemon: DaemonSection = DaemonSection()
    """The daemon's own files, metrics and logging."""
    influxd: InfluxdSection
    """The InfluxDB server to back up, and how to stop and start it."""
    storage: StorageSection
    """Where backups are kept."""
    job: list[JobSection] = Field(default_factory=list)
    """The backup jobs, one [[job]] table each, each with a name of its own (checked at load, not by this schema)."""
    verify: VerifySection = VerifySection()
    """Scheduled checks of every good backup (off unless schedule or every is set)."""
    notify: NotifySection = NotifySection()
    """Notifications through apprise, per event (needs influx-backupd[notify]). That apprise can use each URL is checked at load; this schema checks only that it has a scheme://."""
    offsite: OffsiteSection | None = None
    """Off-site copies to S3-compatible storage (needs influx-backupd[s3]; docs/offsite.md)."""

    @model_validator(mode="after")
    def _unique_jobs(self) -> Settings:
        seen: dict[str, int] = {}
        for number, job in enumerate(self.job):
            if job.name in seen:
                raise ValueError(
                    f"job[{number}].name: {job.name!r} is used twice (also job[{seen[job.name]}]"
                    ".name); each job needs a name of its own"
                )
            seen[job.name] = number
        return self


@dataclass(frozen=True)
class ServerPaths:
    """Where the InfluxDB server keeps its files, as its own influxdb.conf says."""

    conf: Path
    meta: Path
    data: Path
    wal: Path | None
    hh: Path | None  # 0.9 hinted handoff

    def dirs(self) -> dict[str, Path]:
        """Archive member prefix → live directory, in archive order."""
        found = {"meta": self.meta, "data": self.data}
        if self.wal is not None:
            found["wal"] = self.wal
        if self.hh is not None:
            found["hh"] = self.hh
        return found


@dataclass(frozen=True)
class Config:
    path: Path
    settings: Settings
    server: ServerPaths
    url: str
    backup_host: str
    credentials: Credentials | None = None  # [influxd] username + password_file's contents
    auth_enabled: bool = False  # influxdb.conf [http] auth-enabled
    # influxdb.conf [http] bind-address's port: the one influxd itself listens on (url may
    # name a proxy in front of it)
    http_port: int | None = None
    # the file's bytes as loaded: what a run that may stop influxd keeps beside its crash
    # marker (guard.exclusive), so that the server can be started again the way that run would
    # have, should the file since fail to load
    text: bytes = b""

    @property
    def state_dir(self) -> Path:
        return self.settings.daemon.state_dir

    @property
    def storage_dir(self) -> Path:
        return self.settings.storage.dir

    def job(self, name: str | None) -> JobSection:
        jobs = self.settings.job
        if name is None:
            if not jobs:
                return JobSection(name="manual")
            return jobs[0]
        for job in jobs:
            if job.name == name:
                return job
        known = ", ".join(j.name for j in jobs) or "none"
        raise ConfigError(f"{self.path}: no job named {name!r} (jobs: {known})")


def _key_path(loc: tuple[int | str, ...]) -> str:
    """('job', 0, 'mode') -> 'job[0].mode': TOML's arrays of tables counted from 0, as in the
    README and every message."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose keys are allowed at `loc` (the path of a table)."""
    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return None
        inner: Any = field.annotation
        for _ in range(3):  # list[JobSection], X | None
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                break
            args = [a for a in get_args(inner) if a is not type(None)]
            inner = args[0] if args else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
    return model


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _home_of(key: str, here: type[BaseModel]) -> str:
    """'; state_dir belongs in [daemon]' for a key of another table, '' when none has it."""
    tables: list[tuple[str, type[BaseModel]]] = [("top level, before any [table]", Settings)]
    for name in _keys_of(Settings):
        model = _model_at((name,))
        if model is not None:
            shown = f"each [[{name}]]" if name == "job" else f"[{name}]"
            tables.append((shown, model))
    homes = [shown for shown, model in tables if model is not here and key in _keys_of(model)]
    return f"; {key} belongs in {' or '.join(homes)}" if homes else ""


def _first_to_tell(errors: list[Any]) -> Any:
    """The error to report: a misspelt key that has a close match first ([storge] also makes
    [storage] missing, and the typo is the news), else the first."""
    for error in errors:
        loc = tuple(
            p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        if error["type"] == "extra_forbidden" and loc and _closest(loc):
            return error
    return errors[0]


def _closest(loc: tuple[int | str, ...]) -> str:
    """'; did you mean keep_daily?' for a misspelt key, '; state_dir belongs in [daemon]' for
    one in the wrong table, '' when nothing is close."""
    model = _model_at(loc[:-1])
    if model is None or not isinstance(loc[-1], str):
        return ""
    keys = _keys_of(model)
    home = _home_of(loc[-1], model)
    if home:
        return home
    found = difflib.get_close_matches(loc[-1], keys, n=1, cutoff=0.6) or difflib.get_close_matches(
        loc[-1].lower().replace("-", "_"), keys, n=1, cutoff=0.6
    )
    if not found:  # "notifications" for notify: a long shared start
        typo = loc[-1].lower()
        prefix = {
            k: next(
                (i for i, (a, b) in enumerate(zip(k, typo, strict=False)) if a != b),
                min(len(k), len(typo)),
            )
            for k in keys
        }
        best = max(prefix, key=lambda k: prefix[k], default=None)
        found = [best] if best is not None and prefix[best] >= 5 else []
    if found:
        return f"; did you mean {found[0]}?"
    return f" (keys here: {', '.join(keys)})" if len(keys) <= 12 else ""


def _shown(value: object) -> str:
    """A value as an error line quotes it: short, and any URL in it (a [notify] URL given as a
    string or a table where a list belongs) as scheme and host only: its token stays out."""
    if isinstance(value, int) and value.bit_length() > 64:  # repr() of 5000 digits raises
        return f"a number of {value.bit_length()} bits"
    text = redact.shown_url(repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


# pydantic's error type -> the form we expect, in our words (the rest come from our validators)
_EXPECTED = {
    "string_type": "must be a string in quotes",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": 'must be a list like ["a", "b"]',
    "path_type": "must be a path in quotes",
    "dict_type": "must be a table (a [section] or { key = value })",
    "model_type": "must be a table (a [section] or { key = value })",
    "model_attributes_type": "must be a table (a [section] or { key = value })",
    "string_too_short": "is too short",
    "too_short": "must not be empty",
    "finite_number": "must be a finite number",
    "string_too_long": "is too long",
    "string_pattern_mismatch": "is not of the allowed form",
    "url_parsing": "must be a URL like https://host/path",
    "url_scheme": "must be an http:// or https:// URL",
}


# keys with a pattern: the form it stands for, in our words
_PATTERN_WORDS = {
    "bucket": BUCKET_FORM,
    "storage_class": "an S3 storage class like STANDARD_IA",
}


def _describe(error: Any) -> str:
    """One line in our words: the key path, what is expected, and what was found."""
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = _key_path(loc)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{where}: unknown key{_closest(loc)}"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "value_error":  # our validators' own words
        said = str(error["msg"]).removeprefix("Value error, ")
        if not loc:
            return said  # a whole-file check names its keys
        key, sep, rest = said.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+", key):  # a table's check of one of its keys
            return f"{_key_path((*loc, key))}: {rest}"
        return f"{where}: {said}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{where}: must be one of {expected}, not {_shown(error.get('input'))}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {
            "greater_than_equal": "or more",
            "greater_than": "exclusive, or more",
            "less_than_equal": "or less",
            "less_than": "exclusive, or less",
        }[kind]
        bound = next(iter(ctx.values()), "?")
        return f"{where}: must be {bound} {words}, not {_shown(error.get('input'))}"
    if loc == ("job",) and kind == "list_type":
        return "job: must be [[job]] tables (double brackets: one table per job), not [job]"
    if kind == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_WORDS:
        return f"{where}: must be {_PATTERN_WORDS[str(loc[-1])]}, not {_shown(error.get('input'))}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return f"{where}: must not be empty"
    if kind in ("string_too_short", "string_too_long"):
        bound = ctx.get("min_length") if kind == "string_too_short" else ctx.get("max_length")
        words = "at least" if kind == "string_too_short" else "at most"
        return f"{where}: must be {words} {bound} characters, not {_shown(error.get('input'))}"
    expected = _EXPECTED.get(kind, "has a value of the wrong form")
    return f"{where}: {expected}, not {_shown(error.get('input'))}"


def resolve_path(cli_path: str | None) -> Path:
    if cli_path is not None:
        if not cli_path:
            raise ConfigError("--config: an empty path names no config file")
        return Path(cli_path).absolute()
    env = os.environ.get(CONFIG_ENV)
    # absolute: the daemon's status file names it for `status` run from anywhere, and a
    # reload reads the file the daemon started with whatever the cwd
    return Path(env).absolute() if env else DEFAULT_CONFIG_PATH


MAX_READ = 16 << 20  # a config, influxdb.conf or password file is never near this


def _read_bytes(path: Path, where: str) -> bytes:
    """A file we were told to read; where: how the error line names it. Only a regular file
    of sane size: a FIFO would block and /dev/zero never end."""
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where} is not a regular file")
        if st.st_size > MAX_READ:
            raise ConfigError(
                f"{where} is {st.st_size} bytes: too large to be one (at most {MAX_READ >> 20} MiB)"
            )
        with path.open("rb") as f:
            return f.read(MAX_READ + 1)
    except FileNotFoundError:
        raise ConfigError(f"{where} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{where} is not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None


def toml_of(data: bytes) -> dict[str, Any]:
    """A TOML file's table; a UTF-8 byte-order mark first is skipped (Windows editors write one,
    tomllib refuses it as "Invalid statement (at line 1, column 1)"). Raises as tomllib.loads,
    or UnicodeDecodeError."""
    return tomllib.loads(data.decode("utf-8-sig"))


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    return _toml_text(path, _read_bytes(path, f"{path}: {what}"))


def _restart_essentials(raw: dict[str, Any]) -> dict[str, Any]:
    """Of a config's tables, what starting influxd again reads (load's essentials_only)."""
    kept: dict[str, Any] = {}
    if "influxd" in raw:
        kept["influxd"] = raw["influxd"]
    for table, key in (("daemon", "state_dir"), ("storage", "dir")):
        section = raw.get(table)
        if isinstance(section, dict) and key in section:
            kept[table] = {key: section[key]}
        elif table in raw:
            kept[table] = raw[table] if not isinstance(raw[table], dict) else {}
    return kept


def _toml_text(path: Path, data: bytes) -> dict[str, Any]:
    try:
        return toml_of(data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {_toml_reason(str(exc), data)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except ValueError as exc:  # Python's own limit on integers, met while parsing
        if "digits" in str(exc):
            raise ConfigError(
                f"{path}: not valid TOML here: a number of more than 4300 digits"
            ) from None
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


_TWICE = re.compile(
    r"(Cannot overwrite a value|Cannot declare .* twice|Cannot mutate immutable namespace .*)"
    r" \(at line (\d+), column \d+\)\Z"
)


def _toml_reason(message: str, data: bytes) -> str:
    """tomllib's message, but a key or table given twice named, in our words (its own says
    "Cannot overwrite a value (at line 21, column 14)")."""
    found = _TWICE.match(message)
    if found is None:
        return message
    number = int(found.group(2))
    lines = data.decode("utf-8-sig", errors="replace").splitlines()
    text = lines[number - 1].strip() if 0 < number <= len(lines) else ""
    header = text.split("#", 1)[0].strip()
    if header.startswith("[") and not header.endswith("]"):
        # tomllib checks for a table given twice before it checks the closing bracket
        close = "]]" if header.startswith("[[") else "]"
        return (
            f"line {number}: the table header {header} is not closed: expected {close!r} at its end"
        )
    if text.startswith("["):
        what = f"the table {header}"
    else:
        what = f"the key {text.partition('=')[0].strip()!r}" if "=" in text else "a key"
    return (
        f"line {number}: {what} is given twice, or extends a value set before; TOML takes each "
        "key and table once (merge them)"
    )


def _host_port(bind: str, default_port: int) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, int(port) if port.isdigit() else default_port


def _joined(host: str, port: int) -> str:
    """host:port as a URL and `influxd backup -host` want it: an IPv6 address in brackets
    (before: "http://::1:8086", which names no host, for [http] bind-address = "[::1]:8086")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_server_paths(conf: Path) -> tuple[ServerPaths, dict[str, Any]]:
    """The meta, data, wal and hinted-handoff dirs from influxdb.conf (which is TOML too), its
    names read as influxd reads them: in any case (`[Data]`, `WAL-Dir`)."""
    raw = _folded(_read_toml(conf, "influxdb.conf"), conf, "")

    def section_dir(section: str, key: str, required: bool) -> Path | None:
        table = raw.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if value is None:
            if required:
                raise ConfigError(f"{conf}: [{section}] {key}: missing (influx-backupd needs it)")
            return None
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError(f"{conf}: [{section}] {key}: must be a directory path")
        # no expanduser: influxd takes "~" as it is, a dir named ~ (a relative path)
        path = Path(value)
        if not path.is_absolute():
            raise ConfigError(f"{conf}: [{section}] {key}: must be an absolute path, not {value!r}")
        return path

    meta = section_dir("meta", "dir", True)
    data = section_dir("data", "dir", True)
    assert meta is not None and data is not None
    paths = ServerPaths(
        conf=real(conf),
        meta=meta,
        data=data,
        wal=section_dir("data", "wal-dir", False),
        hh=section_dir("hinted-handoff", "dir", False),
    )
    return paths, raw


def influx_conf_of(data: bytes) -> dict[str, Any]:
    """An influxdb.conf's TOML with its names as influxd reads them, in any case (see _folded;
    of two spellings the first is kept: a live conf with two was refused when loaded)."""
    return _folded(toml_of(data), None, "")


def read_influx_conf(conf: Path) -> dict[str, Any]:
    """influx_conf_of the influxdb.conf at conf, read again when a run needs it (it may have
    changed since the load checked it): only a regular file of sane size, or OSError (a FIFO
    put there since would block the run for ever, a link to /dev/zero fill memory)."""
    return influx_conf_of(atomic.read_small(conf, MAX_READ))


def _folded(table: dict[str, Any], conf: Path | None, where: str) -> dict[str, Any]:
    """table with every name (its sections' too) in lower case, as influxd 1.x matches them
    (BurntSushi/toml ignores case); two spellings of one name, of which influxd takes either,
    are refused (conf None: the first is kept)."""
    folded: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for name, value in table.items():
        key = name.lower()
        if key in spelled and conf is None:
            continue
        if key in spelled:
            first, second = sorted((spelled[key], name))
            if where:
                what = f"[{where}] {first!r} and {second!r} are one key"
            else:
                what = f"[{first}] and [{second}] are one section"
            raise ConfigError(
                f"{conf}: {what} to influxd (it reads names in any case, and takes either "
                "value); keep one"
            )
        spelled[key] = name
        if isinstance(value, dict):
            value = _folded(value, conf, f"{where}.{key}" if where else name)
        elif isinstance(value, list):
            value = [_folded(v, conf, where or name) if isinstance(v, dict) else v for v in value]
        folded[key] = value
    return folded


def state_dir_leniently(path: Path) -> Path | None:
    """[daemon] state_dir as the file writes it, read leniently (the file fails validation
    elsewhere), or the default state dir of that config; None for a file that is no TOML (or
    no regular file: a FIFO would block the read). A file that is no TOML (half-edited) is
    read line by line for its [daemon] section's state_dir."""
    try:
        data = _read_bytes(path, str(path))
    except ConfigError:
        return None
    try:
        raw = toml_of(data)
    except (ValueError, RecursionError):
        written: object = _state_dir_line(data.decode("utf-8", "replace"))
        if written is None:
            return None
    else:
        daemon = raw.get("daemon")
        written = daemon.get("state_dir") if isinstance(daemon, dict) else None
    # one load() refuses (relative, a NUL byte) names no dir: the default one, as if unset
    if isinstance(written, str) and written and not config_values.path_problem(Path(written)):
        return Path(written)
    return default_state_dir(path)


_TABLE_LINE = re.compile(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?")
_STATE_DIR_LINE = re.compile(r"""\s*state_dir\s*=\s*(?:"([^"\\]*)"|'([^']*)')\s*(#.*)?""")


def _state_dir_line(text: str) -> str | None:
    """The state_dir a [daemon] section writes on a line of its own, in a file that does not
    parse as a whole (one broken line elsewhere): None when no such line, or two disagree."""
    section, found = None, set()
    for line in text.splitlines():
        table = _TABLE_LINE.fullmatch(line)
        if table:
            section = table.group(1)
            continue
        value = _STATE_DIR_LINE.fullmatch(line) if section == "daemon" else None
        if value:
            found.add(value.group(1) if value.group(1) is not None else value.group(2))
    return found.pop() if len(found) == 1 else None


def default_state_dir(config_path: Path) -> Path:
    """The state dir of a config without `state_dir`.

    Under systemd, the unit's StateDirectory= ($STATE_DIRECTORY): influx-backupd@NAME gets
    /var/lib/influx-backupd/NAME. By hand, the same dir for the same config, so that a `backup`
    or `status` of /etc/influx-backupd/NAME.toml shares the instance's lock and catalog.
    """
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if env:
        return Path(env)
    name = instance_name(config_path)
    return DEFAULT_STATE_DIR / name if name else DEFAULT_STATE_DIR


def spellings(config_path: Path) -> list[Path]:
    """config_path as given, `..` folded, and with its links followed: `-c /root/db2.toml`, a
    link to /etc/influx-backupd/db2.toml, is that instance's config (its state dir, its unit)."""
    return [Path(os.path.normpath(config_path)), real(config_path)]


def instance_name(config_path: Path) -> str | None:
    """NAME for /etc/influx-backupd/NAME.toml, the config of the unit influx-backupd@NAME."""
    for path in spellings(config_path):
        name = path.stem
        if path.parent != DEFAULT_CONFIG_PATH.parent or path.suffix != ".toml":
            continue
        if name != DEFAULT_CONFIG_PATH.stem and JOB_NAME.match(name):
            return name
    return None


def _usable_dir(path: Path, key: str, value: Path) -> None:
    """A directory we create on first use: it must be one, or creatable (checked, not created)."""
    if not value.is_absolute():
        raise ConfigError(f"{path}: {key}: must be an absolute path, not {str(value)!r}")
    for existing in (value, *value.parents):
        if existing.is_symlink() and not existing.exists():
            # a loop or a missing target: nothing can be made there (mkdir says "File exists")
            raise ConfigError(
                f"{path}: {key}: {existing} is a symlink that leads nowhere (a loop, or its "
                "target is missing)"
            )
        if existing.exists():
            if not existing.is_dir():
                what = "is" if existing == value else f"cannot be created: {existing} is"
                raise ConfigError(f"{path}: {key}: {value} {what} not a directory")
            return


def _credentials(path: Path, section: InfluxdSection) -> Credentials | None:
    username, password_file = section.username, section.password_file
    if username is None and password_file is None:
        return None
    if password_file is None:
        raise ConfigError(f"{path}: influxd.password_file: required when influxd.username is set")
    if username is None:
        raise ConfigError(f"{path}: influxd.username: required when influxd.password_file is set")
    if not username:
        raise ConfigError(f"{path}: influxd.username: must not be empty")
    if not password_file.is_absolute():
        raise ConfigError(
            f"{path}: influxd.password_file: must be an absolute path, not {str(password_file)!r}"
        )
    where = f"{path}: influxd.password_file: {password_file}"
    try:
        # utf-8-sig: a BOM a Windows editor wrote is no part of the password
        password = _read_bytes(password_file, where).decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    if not password:
        raise ConfigError(f"{where} is empty (it must hold the password)")
    return Credentials(username, password)


def _offsite_usable(path: Path, section: OffsiteSection) -> None:
    """[offsite] needs the s3 extra, and the files it names."""
    needed = ["boto3"] + (["pyrage"] if section.encrypt_to or section.identity_file else [])
    for module in needed:
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(
                f"{path}: offsite: needs {module}, which is not installed: "
                "pip install 'influx-backupd[s3]'"
            ) from None
    for key in ("credentials_file", "identity_file"):
        file = getattr(section, key)
        if file is not None and not file.is_file():
            raise ConfigError(f"{path}: offsite.{key}: {file} is not a file")
    # read as they will be used, by the same parsers: a file that passes here works there
    if section.identity_file is not None:
        where = f"{path}: offsite.identity_file: {section.identity_file}"
        try:
            offsite_keys.identities(offsite_keys.text_of(_read_bytes(section.identity_file, where)))
        except ValueError as exc:
            raise ConfigError(f"{where} {exc}") from None
    if section.credentials_file is not None:
        where = f"{path}: offsite.credentials_file: {section.credentials_file}"
        try:
            text = offsite_keys.text_of(_read_bytes(section.credentials_file, where))
            offsite_keys.credentials(text, section.profile)
        except offsite_keys.NoProfile as exc:
            raise ConfigError(
                f"{path}: offsite.profile: {section.credentials_file} {exc}"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{where} {exc}") from None


NO_JOB_WARNING = (
    "no [[job]] is configured: the daemon never runs a backup, and `backup` runs an implicit "
    "job 'manual' with no retention rule"
)


def retention_warning(job: JobSection) -> str | None:
    """A job that keeps every backup until the disk is full; None when it has a keep_* rule."""
    if any((job.keep_last, job.keep_hourly, job.keep_daily, job.keep_weekly, job.keep_monthly)):
        return None
    return (
        f"job {job.name} has no retention rule (keep_last, keep_hourly, keep_daily, "
        "keep_weekly, keep_monthly all 0): every backup is kept until the disk is full; "
        "e.g. keep_daily = 7 and keep_weekly = 4"
    )


def window_warning(job: JobSection) -> str | None:
    """A job whose scheduled cold runs may never come inside its cold_window: each of them is
    skipped (no run, no record, no failure to alert on); None when they can."""
    if job.cold_window is None or job.mode == "hot":
        return None
    from influx_backupd.core.schedule import window_missed  # APScheduler: load when used

    missed = window_missed(job.schedule, job.every, job.timezone, job.cold_window)
    if missed is None:
        return None
    when = (
        " whenever the snapshot service does not answer (mode = auto)" if job.mode == "auto" else ""
    )
    return f"job {job.name}: {missed}{when}"


def job_warnings(settings: Settings) -> list[str]:
    """check-config's and the daemon's (start, reload) warnings about the jobs: none at all,
    one that never deletes a backup, one whose scheduled cold runs never come inside its
    cold_window."""
    if not settings.job:
        return [NO_JOB_WARNING]
    found: list[str] = []
    for job in settings.job:
        found += [w for w in (retention_warning(job), window_warning(job)) if w is not None]
    return found


def secret_file_warnings(settings: Settings) -> list[str]:
    """check-config's warnings: a secret file ([influxd] password_file, [offsite]'s) that its
    group or others may open."""
    found: list[str] = []
    files: list[tuple[str, Path | None, str]] = [
        ("influxd.password_file", settings.influxd.password_file, "influxd's HTTP password")
    ]
    if settings.offsite is not None:
        files += [
            ("offsite.identity_file", settings.offsite.identity_file, "age identities"),
            ("offsite.credentials_file", settings.offsite.credentials_file, "S3 keys"),
        ]
    for key, file, holds in files:
        try:
            mode = stat.S_IMODE(file.stat().st_mode) if file is not None else 0
        except OSError:
            continue  # load read it; gone since: the command that uses it says so
        if mode & 0o077:
            found.append(
                f"{key}: {file} is readable or writable by group or others "
                f"(mode {mode:04o}) and holds {holds}: chmod 600 {shlex.quote(str(file))}"
            )
    return found


def load(
    path: Path,
    *,
    ask_apprise: bool = True,
    text: bytes | None = None,
    to_restart: bool = False,
    essentials_only: bool = False,
) -> Config:
    """Load and validate; raises ConfigError with one line naming the file and key path, and
    nothing else: a path the system refuses to look at (a name over 255 bytes, a loop, EACCES)
    is a config error too. Before, such an OSError or ValueError ended the command outside
    the handling of a config that does not load, which starts again an influxd a killed run
    left stopped: influxd stayed down (the hostile-input audit)."""
    try:
        return _load(
            path,
            ask_apprise=ask_apprise,
            text=text,
            to_restart=to_restart,
            essentials_only=essentials_only,
        )
    except (ConfigError, UnicodeEncodeError):  # the latter: a path the locale cannot hold,
        raise  # said as such by the CLI (its one line asks for a UTF-8 locale)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise ConfigError(f"{path}: {where}{exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: cannot be used: {str(exc)[:200]}") from None


def _load(
    path: Path, *, ask_apprise: bool, text: bytes | None, to_restart: bool, essentials_only: bool
) -> Config:
    """load's work (its docstring).

    ask_apprise=False: for a command that sends no notification, [notify] URLs are checked for
    their form only (each has ://), not by apprise in a child. text: the file's content as
    kept earlier (guard.config_in_use), read in place of path's own. to_restart: only to start
    an influxd a killed run left stopped (guard.recover_despite): what the files on disk say of
    the storage dir, the metrics file and the off-site keys is not asked (a storage dir turned
    into a file must not keep the server down; the commands after say it). essentials_only:
    only what starting influxd again needs is read ([influxd], daemon.state_dir, storage.dir):
    a job, notify or off-site value that a newer release validates more strictly (or one
    edited meanwhile) must not keep a server a killed run left stopped down."""
    if text is None:
        text = _read_bytes(path, f"{path}: config file")
    raw = _toml_text(path, text)
    if essentials_only:
        raw = _restart_essentials(raw)
    token = _ASK_APPRISE.set(ask_apprise)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(_first_to_tell(exc.errors()))}") from None
    finally:
        _ASK_APPRISE.reset(token)
    wrong = config_values.problem(settings)  # before any path is used (a NUL byte, relative)
    if wrong is not None:
        raise ConfigError(f"{path}: {wrong}")
    if "state_dir" not in settings.daemon.model_fields_set:
        state_dir = default_state_dir(path)
        wrong = config_values.path_problem(state_dir)
        if wrong is not None:  # systemd's; the user never wrote daemon.state_dir
            raise ConfigError(
                f"{path}: $STATE_DIRECTORY (daemon.state_dir is unset, so the state dir comes "
                f"from it) {wrong}; set daemon.state_dir or the unit's StateDirectory="
            )
        daemon = settings.daemon.model_copy(update={"state_dir": state_dir})
        settings = settings.model_copy(update={"daemon": daemon})
    if settings.offsite is not None and not to_restart:
        _offsite_usable(path, settings.offsite)
    if not os.path.lexists(settings.influxd.config):  # the key's line, not the file's alone
        raise ConfigError(
            f"{path}: influxd.config {settings.influxd.config}: not found (the influxdb.conf "
            "influxd runs with)"
        )
    server, influx_raw = read_server_paths(settings.influxd.config)
    wrong = config_values.server_dirs_problem(server.dirs())
    if wrong is not None:
        raise ConfigError(f"{server.conf}: {wrong}")
    _usable_dir(path, "daemon.state_dir", settings.daemon.state_dir)
    if not to_restart:
        _usable_dir(path, "storage.dir", settings.storage.dir)
    for key, file in (
        ("daemon.metrics_file", None if to_restart else settings.daemon.metrics_file),
        ("influxd.pidfile", settings.influxd.pidfile),
    ):
        # a device would be replaced by a file at the first write (/dev/null!), a FIFO block
        # the read that keeps the daemon's samples
        kind = atomic.not_regular(file) if file is not None else None
        if kind is not None:
            raise ConfigError(
                f"{path}: {key}: {file} is {kind}: must be a regular file (or not exist yet)"
            )
    ours = {"daemon.state_dir": settings.daemon.state_dir, "storage.dir": settings.storage.dir}
    if settings.daemon.metrics_file is not None:
        ours["daemon.metrics_file"] = settings.daemon.metrics_file
    wrong = config_values.our_dirs_problem(
        ours, server.dirs(), files=frozenset({"daemon.metrics_file"})
    )
    if wrong is not None:
        raise ConfigError(f"{path}: {wrong}")

    http = influx_raw.get("http")
    bind = http.get("bind-address", ":8086") if isinstance(http, dict) else ":8086"
    host, http_port = _host_port(str(bind), 8086)
    url = settings.influxd.url
    if url is None:
        url = f"http://{_joined(host, http_port)}"
    backup_host = settings.influxd.backup_host
    if backup_host is None:
        host, port = _host_port(str(influx_raw.get("bind-address", "127.0.0.1:8088")), 8088)
        backup_host = _joined(host, port)
    http = influx_raw.get("http")
    return Config(
        path=path,
        settings=settings,
        server=server,
        url=url.rstrip("/"),
        backup_host=backup_host,
        credentials=_credentials(path, settings.influxd),
        auth_enabled=isinstance(http, dict) and http.get("auth-enabled") is True,
        http_port=http_port,
        text=text,
    )
