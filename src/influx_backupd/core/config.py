"""Configuration: TOML loaded with tomllib, validated by pydantic, errors as one line with a key path.

The server's directories are read from its own influxdb.conf so the operator never repeats them.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from influx_backupd.core.errors import EXIT_CONFIG, BackupdError
from influx_backupd.core.offsite_section import OffsiteSection

DEFAULT_CONFIG_PATH = Path("/etc/influx-backupd/config.toml")
CONFIG_ENV = "INFLUX_BACKUPD_CONFIG"
DEFAULT_STATE_DIR = Path("/var/lib/influx-backupd")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_WINDOW = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def parse_duration(value: object) -> float:
    """'90s', '5m', '2h', '7d' or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90s, 5m, 2h or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    else:
        raise ValueError(f"must be a duration like 90s, 5m, 2h or 7d, not {value!r}")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DaemonSection(_Strict):
    state_dir: Path = DEFAULT_STATE_DIR  # unset: see default_state_dir
    metrics_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class InfluxdSection(_Strict):
    config: Path = Path("/etc/influxdb/influxdb.conf")
    service: str | None = None
    command: list[str] | None = None
    pidfile: Path | None = None
    binary: Path = Path("/usr/bin/influxd")
    url: str | None = None  # default: from influxdb.conf [http] bind-address
    backup_host: str | None = None  # default: from influxdb.conf bind-address
    # backup_host's server's HTTP API, whose clock dates hot increments; default: see hot.py
    backup_url: str | None = None
    user: str = "influxdb"
    group: str = "influxdb"
    stop_timeout: Duration = 90.0
    start_timeout: Duration = 120.0
    backup_timeout: Duration = 3600.0  # a whole `influxd backup` run (hot job)
    # HTTP auth for queries to the live server ([http] auth-enabled); both or neither. The
    # password lives in its own file (config files are often world-readable): read at load.
    username: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_way_to_start(self) -> InfluxdSection:
        if self.service and self.command:
            raise ValueError("set either service or command, not both")
        if not self.service and not self.command:
            raise ValueError(
                "set service (a systemd unit, e.g. influxdb.service) or command "
                "(the argv that starts influxd)"
            )
        if self.command is not None and not self.command[0]:
            raise ValueError("command must start with the influxd executable")
        return self


class StorageSection(_Strict):
    dir: Path


def _job_name(value: object) -> object:
    if isinstance(value, str) and not _JOB_NAME.match(value):
        raise ValueError(
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter/digit"
        )
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


class Scheduled(_Strict):
    """When something runs: a 5-field crontab string, or an interval; neither = only by hand."""

    schedule: Annotated[str | None, BeforeValidator(_crontab)] = None
    every: Duration | None = None
    jitter: Duration = 0.0
    timezone: Annotated[str, BeforeValidator(_timezone)] = "UTC"
    catch_up: Duration = 3600.0

    @model_validator(mode="after")
    def _schedule_or_every(self) -> Self:
        if self.schedule is not None and self.every is not None:
            raise ValueError("set either schedule or every, not both")
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be longer than 0s")
        return self


class VerifySection(Scheduled):
    """[verify]: the daemon checks every good backup again on this schedule (bit rot, a
    truncated or edited archive), as `verify --all` does; neither schedule nor every: never."""

    deep: bool = False
    restore_test: bool = False


class JobSection(Scheduled):
    name: Annotated[str, BeforeValidator(_job_name)]
    # how: the policy picks cold or hot per run
    mode: Literal["cold", "hot", "auto"] = "cold"
    cold_window: Annotated[str | None, BeforeValidator(_cold_window)] = None
    max_downtime: Duration | None = None
    fallback: Literal["none", "cold"] = "none"
    # TOML key `copy`; renamed here because BaseModel.copy exists
    copy_mode: Literal["staged", "direct"] = Field(default="staged", alias="copy")
    keep_staging: bool = True
    full_every: Duration = 7 * 86400.0
    # keep
    keep_last: int = Field(default=0, ge=0)
    keep_hourly: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)
    # prove and report
    verify_after_backup: bool = False
    verify_restore_test: bool = False
    on_success: list[str] | None = None
    on_failure: list[str] | None = None
    hook_timeout: Duration = 60.0
    heartbeat_url: str | None = None
    offsite: bool = True  # false: this job's backups are not copied off-site

    @model_validator(mode="after")
    def _hooks_and_heartbeat(self) -> JobSection:
        for hook in ("on_success", "on_failure"):
            argv = getattr(self, hook)
            if argv is not None and (not argv or not argv[0]):
                raise ValueError(
                    f"{hook} must be a non-empty argv list like ['/usr/local/bin/notify', 'ok']"
                )
        if self.heartbeat_url is not None and not self.heartbeat_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("heartbeat_url must start with http:// or https://")
        return self


def _apprise_url(value: object) -> object:
    if not isinstance(value, str) or not value:
        raise ValueError("must be an apprise URL like 'ntfy://ntfy.sh/my-topic'")
    try:
        import apprise  # optional: influx-backupd[notify]
    except ImportError:
        raise ValueError(
            "needs apprise, which is not installed: pip install 'influx-backupd[notify]'"
        ) from None
    quiet = logging.getLogger("apprise")  # it logs its own error: ours is the one line
    was, quiet.disabled = quiet.disabled, True
    try:
        known = apprise.Apprise().add(value)
    finally:
        quiet.disabled = was
    if not known:
        scheme = value.split("://", 1)[0] if "://" in value else value[:20]
        raise ValueError(
            f"{scheme!r} is not a URL apprise can send to (forms: "
            "https://github.com/caronc/apprise/wiki, e.g. ntfy://ntfy.sh/TOPIC, "
            "mailto://USER:PASSWORD@HOST, slack://TOKEN_A/TOKEN_B/TOKEN_C)"
        )
    return value


AppriseUrls = list[Annotated[str, AfterValidator(_apprise_url)]]


class NotifySection(_Strict):
    """[notify]: apprise URLs per event; each message is a short summary and the run's log tail."""

    start: AppriseUrls = Field(default_factory=list)
    success: AppriseUrls = Field(default_factory=list)
    failure: AppriseUrls = Field(default_factory=list)
    verify_failed: AppriseUrls = Field(default_factory=list)
    timeout: Duration = 30.0  # the most a notification may hold up the run that sends it


class Settings(_Strict):
    daemon: DaemonSection = DaemonSection()
    influxd: InfluxdSection
    storage: StorageSection
    job: list[JobSection] = Field(default_factory=list)
    verify: VerifySection = VerifySection()
    notify: NotifySection = NotifySection()
    offsite: OffsiteSection | None = None  # off-site copies (docs/offsite.md)

    @model_validator(mode="after")
    def _unique_jobs(self) -> Settings:
        seen: set[str] = set()
        for job in self.job:
            if job.name in seen:
                raise ValueError(f"job name {job.name!r} is used twice")
            seen.add(job.name)
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
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _describe(error: Any) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = _key_path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", ""))
        message = "must be one of " + expected.replace("'", "").replace(" or ", ", ")
    return f"{where}: {message}"


def resolve_path(cli_path: str | None) -> Path:
    if cli_path:
        return Path(cli_path)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _read_bytes(path: Path, where: str) -> bytes:
    """A file we were told to read; where: how the error line names it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{where} is not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    data = _read_bytes(path, f"{path}: {what}")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None


def _host_port(bind: str, default_port: int) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, int(port) if port.isdigit() else default_port


def read_server_paths(conf: Path) -> tuple[ServerPaths, dict[str, Any]]:
    """The meta, data, wal and hinted-handoff dirs from influxdb.conf (which is TOML too)."""
    raw = _read_toml(conf, "influxdb.conf")

    def section_dir(section: str, key: str, required: bool) -> Path | None:
        table = raw.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if value is None:
            if required:
                raise ConfigError(f"{conf}: [{section}] {key}: missing (influx-backupd needs it)")
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{conf}: [{section}] {key}: must be a directory path")
        path = Path(value).expanduser()
        if not path.is_absolute():
            raise ConfigError(f"{conf}: [{section}] {key}: must be an absolute path, not {value!r}")
        return path

    meta = section_dir("meta", "dir", True)
    data = section_dir("data", "dir", True)
    assert meta is not None and data is not None
    paths = ServerPaths(
        conf=conf.resolve(),
        meta=meta,
        data=data,
        wal=section_dir("data", "wal-dir", False),
        hh=section_dir("hinted-handoff", "dir", False),
    )
    return paths, raw


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


def instance_name(config_path: Path) -> str | None:
    """NAME for /etc/influx-backupd/NAME.toml, the config of the unit influx-backupd@NAME."""
    name = config_path.stem
    if config_path.parent != DEFAULT_CONFIG_PATH.parent or config_path.suffix != ".toml":
        return None
    return name if name != DEFAULT_CONFIG_PATH.stem and _JOB_NAME.match(name) else None


def _usable_dir(path: Path, key: str, value: Path) -> None:
    """A directory we create on first use: it must be one, or creatable (checked, not created)."""
    if not value.is_absolute():
        raise ConfigError(f"{path}: {key}: must be an absolute path, not {str(value)!r}")
    for existing in (value, *value.parents):
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
        password = _read_bytes(password_file, where).decode("utf-8").rstrip("\r\n")
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


def load(path: Path) -> Config:
    """Load and validate; raises ConfigError with one line naming the file and key path."""
    raw = _read_toml(path, "config file")
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{path}: {_describe(first)}") from None
    if "state_dir" not in settings.daemon.model_fields_set:
        daemon = settings.daemon.model_copy(update={"state_dir": default_state_dir(path)})
        settings = settings.model_copy(update={"daemon": daemon})
    if settings.offsite is not None:
        _offsite_usable(path, settings.offsite)
    server, influx_raw = read_server_paths(settings.influxd.config)
    _usable_dir(path, "daemon.state_dir", settings.daemon.state_dir)
    _usable_dir(path, "storage.dir", settings.storage.dir)

    url = settings.influxd.url
    if url is None:
        http = influx_raw.get("http")
        bind = http.get("bind-address", ":8086") if isinstance(http, dict) else ":8086"
        host, port = _host_port(str(bind), 8086)
        url = f"http://{host}:{port}"
    backup_host = settings.influxd.backup_host
    if backup_host is None:
        host, port = _host_port(str(influx_raw.get("bind-address", "127.0.0.1:8088")), 8088)
        backup_host = f"{host}:{port}"
    http = influx_raw.get("http")
    return Config(
        path=path,
        settings=settings,
        server=server,
        url=url.rstrip("/"),
        backup_host=backup_host,
        credentials=_credentials(path, settings.influxd),
        auth_enabled=isinstance(http, dict) and http.get("auth-enabled") is True,
    )
