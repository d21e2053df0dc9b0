"""Values that pass the config's types but cannot work: found at load, one line naming the key.

Whatever check-config accepts must work in every command and never kill the daemon, so a value
is refused here when it would fail later: a NUL byte anywhere (no path, argv or header holds
one), a relative or empty path (it would depend on the caller's working directory), a URL
without an http(s) scheme, a host or a valid port, a host:port that is not one, a systemd unit
name that is not one (or would be read as an option), an argv whose executable is not an
absolute path. Every section and key is walked, so a new key of type Path gets the path rules.
(Durations are checked where they are parsed: core/durations.py.)
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from pathlib import Path

from pydantic import BaseModel

from influx_backupd.core.paths import is_within, real
from influx_backupd.core.redact import shown_parts

# the most backups a keep_* rule may name: SQLite's and JSON's largest integer, past any
# count (a config that says "forever" with a big number still loads after an upgrade); a
# number past it reached f-strings and Python's 4,300-digit limit (a traceback in prune)
KEEP_MAX = 2**63 - 1
# systemd's unit name characters; never starting with '-' (systemctl would take an option)
_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\][A-Za-z0-9:_.@\\-]*\Z")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]+)\Z")
_URL_KEYS = {"url", "backup_url", "heartbeat_url"}
_HOOK_KEYS = {"on_success", "on_failure"}
_ARGV_KEYS = {"command"} | _HOOK_KEYS
_NOT_EMPTY = {"user", "group"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def problem(settings: BaseModel) -> str | None:
    """The first value that cannot work, as "key.path: what is wrong", or None."""
    return _walk(settings, "")


def _walk(model: BaseModel, prefix: str) -> str | None:
    for name, info in type(model).model_fields.items():
        key = f"{prefix}{info.alias or name}"
        value = getattr(model, name)
        found: str | None
        if isinstance(value, BaseModel):
            found = _walk(value, key + ".")
        elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
            found = next(
                (p for i, v in enumerate(value) if (p := _walk(v, f"{key}[{i}].")) is not None),
                None,
            )
        else:
            found = _value(info.alias or name, value)
            if found is None and key == "storage.dir":
                found = glob_problem(value, "throwaway influxd servers run here (restore tests)")
            if found is not None:
                found = f"{key}: {found}"
        if found is not None:
            return found
    return None


def _value(key: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Path):
        return path_problem(value)
    if isinstance(value, str) and "\0" in value:
        return "must not contain a NUL byte"
    if isinstance(value, list) and any(isinstance(v, str) and "\0" in v for v in value):
        return "must not contain a NUL byte"
    if key in _URL_KEYS and isinstance(value, str):
        return url_problem(value, key)
    if key == "backup_host" and isinstance(value, str):
        return host_port_problem(value)
    if key == "service" and isinstance(value, str) and not _UNIT.match(value):
        return f"must be a systemd unit name like influxdb.service, not {value!r}"
    if key in _ARGV_KEYS and isinstance(value, list):
        # influxd's command must be exactly what starts it again (invariant 1); a hook may be
        # a program found on the PATH, as a shell would find it, if it is there now
        return argv_problem(value, on_path=key in _HOOK_KEYS)
    if key == "username" and isinstance(value, str) and (":" in value or _CONTROL.search(value)):
        return f"must not contain ':' or control characters (HTTP basic auth), not {value!r}"
    if key in _NOT_EMPTY and isinstance(value, str) and not value.strip():
        return "must not be empty"
    return None


def path_problem(path: Path) -> str | None:
    text = str(path)
    if "\0" in text:
        return "must not contain a NUL byte"
    if not path.is_absolute():
        shown = "an empty path" if text == "." else repr(text)
        return f"must be an absolute path, not {shown}"
    return None


def argv_problem(argv: list[str], *, on_path: bool = False) -> str | None:
    if not argv or not argv[0]:
        return "must be a non-empty argv list starting with the executable, like ['/usr/bin/x']"
    if Path(argv[0]).is_absolute():
        # a hook is checked now, as a bare name's lookup is: found missing only when the run
        # that needs it fails, it never says so (influxd's command: Influxd.startable())
        return _executable_problem(Path(argv[0])) if on_path else None
    if on_path and "/" not in argv[0]:
        if shutil.which(argv[0]) is None:
            return f"the executable {argv[0]!r} is not on the PATH; give its absolute path"
        return None
    return f"the executable must be an absolute path, not {argv[0]!r}"


def _executable_problem(path: Path) -> str | None:
    if not path.exists():
        return f"the executable {str(path)!r} does not exist"
    if not path.is_file() or not os.access(path, os.X_OK):
        return f"{str(path)!r} is not an executable file"
    return None


# Per key, its own example and where its secret goes: a heartbeat URL is no server's API.
_URL_EXAMPLE = {
    "heartbeat_url": "like https://hc-ping.com/UUID",
    "url": "like http://127.0.0.1:8086",
    "backup_url": "like http://127.0.0.1:8086",
}
_SERVER_URL_KEYS = frozenset({"url", "backup_url"})
_URL_SECRET = {
    "heartbeat_url": "a heartbeat URL takes its secret in the path or query",
    "url": "set [influxd] username and password_file",
    "backup_url": "set [influxd] username and password_file",
}


def url_problem(url: str, key: str = "url") -> str | None:
    """[influxd] url and backup_url, a job's heartbeat_url: an http(s) URL. The URL itself is
    shown only as scheme and host: its user:password, path or query may be the secret (a
    healthchecks UUID, a token)."""
    example = _URL_EXAMPLE.get(key, "like https://host/path")
    if _CONTROL.search(url):
        return f"must be a URL without control characters, {example}"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # a broken [v6 literal]
        return f"has a broken [IPv6 address]; must be an http:// or https:// URL, {example}"
    try:
        port = parts.port
    except ValueError:  # out of range or not a number; urllib's words quote part of the URL
        return f"its port must be a number 1-65535, {example}"
    shown = shown_parts(parts)
    if "@" in parts.netloc:
        # urllib cannot send them (it reads "user:password@host" as host and port, and says so
        # in an error holding the password): such a URL could only ever fail, loudly
        secret = _URL_SECRET.get(key, "leave them out")
        return (
            f"must not hold credentials (user:password@host; the URL is not shown): {secret}, "
            f"{example}"
        )
    if parts.scheme not in ("http", "https"):
        return f"must start with http:// or https://, {example}, not {shown}"
    if not parts.hostname or not _HOST.match(parts.hostname.strip("[]")):
        return f"must name a host, {example}"
    if port == 0:
        return "its port must be 1-65535, not 0"
    # Elsewhere than the host (said above) urllib sends neither (http.client refuses a space,
    # ASCII-encodes the path): every request would fail, its error quoting the path, a
    # heartbeat's secret. Leading spaces urllib strips itself.
    if any(c.isspace() for c in url.lstrip(" ")) or not (parts.path + parts.query).isascii():
        return (
            "must not contain spaces or non-ASCII characters (the URL is not shown): "
            f"percent-encode them (a space is %20), delete one pasted at its end, {example}"
        )
    if key in _SERVER_URL_KEYS and (parts.query or parts.fragment or "?" in url or "#" in url):
        # /ping, /query and /write are joined to its path: a query (u=…&p=… is how InfluxDB
        # takes credentials there) would swallow them, and the URL is shown in records and logs
        return (
            "must not hold a query or fragment (the URL is not shown): "
            f"{_URL_SECRET[key]} for credentials, {example}"
        )
    return None


_SPACE = re.compile(r"[\s\x00-\x1f\x7f]")


def endpoint_problem(url: str) -> str | None:
    """[offsite] endpoint_url: what botocore can connect to. Never shows the URL: a pasted
    http://KEY:SECRET@host holds a secret, and a broken one may hold part of it."""
    form = "an http:// or https:// URL like https://s3.example.net"
    if "@" in url:
        return (
            "must not hold credentials (user:password@host; the URL is not shown): put the keys "
            f"in credentials_file; must be {form}"
        )
    if _SPACE.search(url):
        return f"must not contain spaces or control characters; must be {form}"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # a broken [v6 literal]
        return f"has a broken [IPv6 address]; must be {form}"
    try:
        port = parts.port
    except ValueError:  # out of range or not a number; its message would quote it
        return f"its port must be a number 1-65535; must be {form}"
    if parts.scheme not in ("http", "https"):
        return f"must start with http:// or https://; must be {form}"
    if not parts.hostname or not _HOST.match(parts.hostname.strip("[]")):
        return f"must name a host; must be {form}"
    if port == 0:
        return f"its port must be 1-65535, not 0; must be {form}"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"must not have a ?query or #fragment; must be {form}"
    return None


def host_port_problem(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"must be host:port with a port 1-65535, like 127.0.0.1:8088, not {value!r}"
    if not _HOST.match(host):
        return f"must be host:port, like 127.0.0.1:8088; its host {host!r} is not a host name"
    return None


_GLOB = re.compile(r"[*?\[\\]")


def glob_problem(path: Path, why: str) -> str | None:
    """influxd 1.x finds its TSM and WAL files with Go's filepath.Glob, which reads *, ?, [ and
    a backslash in the dir's own path as pattern syntax: such a server starts with none of its
    data, silently. A dir influxd will serve must not hold them."""
    found = _GLOB.findall(str(path))
    if not found:
        return None
    return (
        f"{path} holds {found[0]!r}: influxd cannot find its own files under a path with "
        f"*, ?, [ or a backslash (Go's file globbing); {why}"
    )


def server_dirs_problem(dirs: dict[str, Path]) -> str | None:
    """The live server's dirs (influxdb.conf): stopped and started again by a backup, influxd
    would come back without its data."""
    for name, path in dirs.items():
        found = glob_problem(path, "a restart would lose sight of its data")
        if found is not None:
            return f"the {name} dir {found}"
    # Each dir is backed up and restored whole (a restore moves it aside by one rename): a dir
    # inside another would be archived twice, and its restore fails after influxd was stopped.
    real = {name: _real(path) for name, path in dirs.items()}
    for inner, inner_path in real.items():
        for outer, outer_path in real.items():
            if inner != outer and is_within(inner_path, outer_path):
                return (
                    f"the {inner} dir {dirs[inner]} is inside the {outer} dir {dirs[outer]}: "
                    "influx-backupd backs up and restores each dir whole, so they must be apart "
                    "(e.g. /var/lib/influxdb/{meta,data,wal})"
                )
    return None


def our_dirs_problem(
    ours: dict[str, Path], server: dict[str, Path], *, files: frozenset[str] = frozenset()
) -> str | None:
    """Our own dirs (state, storage, the metrics file's) against the server's: inside one of
    them, every archive would be in the next backup and a restore would move our files (the
    catalog, every backup) aside with the live data; holding one, our 0700 mode would shut the
    influxdb user out of it."""
    for key, path in ours.items():
        mine = _real(path)
        for name, live in server.items():
            theirs = _real(live)
            if is_within(mine, theirs):
                return (
                    f"{key}: {path} is inside influxd's {name} dir {live}: a backup would hold "
                    "the backups before it and a restore would move it aside with the live "
                    "data; choose a directory outside influxd's meta, data and wal dirs"
                )
            if key not in files and is_within(theirs, mine):  # a file holds no dir
                return (
                    f"{key}: {path} holds influxd's {name} dir {live}: choose a directory "
                    "of its own, outside influxd's meta, data and wal dirs"
                )
    return None


def _real(path: Path) -> Path:
    """Where a path leads, symlinks resolved as far as they exist (a dir made later too)."""
    try:
        return real(path)
    except (OSError, RuntimeError):  # a symlink loop: compared as written
        return path
