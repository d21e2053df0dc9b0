"""Would the daemon's systemd unit let it write where the config says? (`check-config` asks.)

The shipped units run with ProtectSystem=strict: only ReadWritePaths=, the StateDirectory= and
a private /tmp are writable, so a storage dir or metrics_file elsewhere fails at the first run
(`after_run.step_failed`), long after `systemctl enable --now` looked fine. The sandbox is read
from `systemctl show` of the unit that runs this config, and modelled as systemd mounts it: the
most specific path rule wins.

Writable is not enough under PrivateTmp=yes (the shipped units): /tmp and /var/tmp there are the
unit's own, unseen from a shell and deleted when it stops. A storage dir or state dir there would
lose every backup, the catalog and the crash marker at `systemctl stop` (private_tmp_errors: a
refusal); a metrics file there is never seen by node_exporter (a warning).
"""

from __future__ import annotations

import errno
import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from influx_backupd.core.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    instance_name,
    spellings,
)
from influx_backupd.core.interrupt import child_preexec
from influx_backupd.core.paths import real

_PROPERTIES = (
    "LoadState",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "StateDirectory",
    "MainPID",
    "ControlPID",
)
_SYSTEM = {"yes": ("/usr", "/boot", "/efi"), "full": ("/usr", "/boot", "/efi", "/etc")}
_TMP = (Path("/tmp"), Path("/var/tmp"))  # what PrivateTmp=yes replaces by dirs of the unit's own


@dataclass(frozen=True)
class Written:
    key: str  # the config key that names it
    path: Path  # a directory the daemon creates, renames or replaces files in


def written_dirs(config: Config) -> list[Written]:
    """Every directory the config makes the daemon write into."""
    s = config.settings
    found = [
        Written("daemon.state_dir", config.state_dir),
        Written("storage.dir", config.storage_dir),
    ]
    if s.daemon.metrics_file is not None:
        found.append(Written("daemon.metrics_file", s.daemon.metrics_file.parent))
    for name, path in config.server.dirs().items():
        # a restore renames the live dir aside and the restored one in: its parent is written
        found.append(Written(f"influxd.config ({name} dir)", path.parent))
    if s.influxd.command and s.influxd.pidfile is not None:
        found.append(Written("influxd.pidfile", s.influxd.pidfile.parent))
    return found


def unit_for(config_path: Path) -> str | None:
    """The shipped unit that runs this config file, if one does."""
    if DEFAULT_CONFIG_PATH in spellings(config_path):
        return "influx-backupd.service"
    name = instance_name(config_path)
    return f"influx-backupd@{name}.service" if name else None


def own_service(cgroup: str | None = None) -> str | None:
    """The system service this process runs in, from its cgroup (cgroup v2 `0::/…`, or v1's
    `name=systemd` line): the innermost `*.service` of the path. Only when systemd started us
    (INVOCATION_ID): a login shell is in a session's `.scope` and is no service's."""
    if cgroup is None:
        if not os.environ.get("INVOCATION_ID"):
            return None
        try:
            with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
                cgroup = f.read(65536)
        except OSError:
            return None
    for line in cgroup.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3 or fields[1] not in ("", "name=systemd"):
            continue
        for part in reversed(fields[2].split("/")):
            if part.endswith(".service") and len(part) > len(".service"):
                return part
    return None


@dataclass(frozen=True)
class Sandbox:
    protect_system: str  # no | yes | full | strict
    read_write: tuple[Path, ...]  # ReadWritePaths=: skipped by systemd while they do not exist
    read_only: tuple[Path, ...]  # ReadOnlyPaths=, InaccessiblePaths=, ProtectHome=
    created: tuple[Path, ...] = ()  # StateDirectory=, PrivateTmp=: systemd makes them
    private_tmp: bool = False  # PrivateTmp=yes: /tmp and /var/tmp are the unit's, gone at stop
    # /tmp and /var/tmp as named and resolved (/var/tmp may be a link): resolved once
    tmp_dirs: frozenset[Path] = frozenset()

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> Sandbox:
        def paths(key: str) -> list[Path]:
            # "-" (skip if missing) and "+" (outside RootDirectory=) prefixes do not matter here
            return [Path(p.lstrip("-+")) for p in props.get(key, "").split() if p.lstrip("-+")]

        created = [Path("/var/lib") / d for d in props.get("StateDirectory", "").split()]
        private_tmp = props.get("PrivateTmp") == "yes"
        if private_tmp:
            created += _TMP
        read_only = paths("ReadOnlyPaths") + paths("InaccessiblePaths")
        if props.get("ProtectHome", "no") != "no":
            read_only += [Path("/home"), Path("/root"), Path("/run/user")]
        return cls(
            props.get("ProtectSystem", "no"),
            tuple(paths("ReadWritePaths")),
            tuple(read_only),
            tuple(created),
            private_tmp,
            frozenset({*_TMP, *(Path(os.path.realpath(t)) for t in _TMP)}),
        )

    def in_private_tmp(self, path: Path) -> bool:
        """Whether path (absolute), symlinks followed as far as it exists, is in the unit's own
        /tmp or /var/tmp: writable there, but seen by nothing outside and deleted at stop."""
        if not self.private_tmp:
            return False
        real = Path(os.path.realpath(path))
        return any(real == t or t in real.parents for t in self.tmp_dirs)

    def writable(self, path: Path) -> bool:
        """Whether the unit can create or write files in the directory path (absolute)."""
        rules = [(p, True) for p in self.read_write if p.exists()]
        rules += [(p, True) for p in self.created]
        rules += [(p, False) for p in self.read_only]
        if self.protect_system == "strict":
            rules.append((Path("/"), False))
        rules += [(Path(p), False) for p in _SYSTEM.get(self.protect_system, ())]
        matching = [(len(p.parts), ok) for p, ok in rules if path == p or p in path.parents]
        # the deepest rule wins; on a tie, read-only (systemd mounts those last)
        return max(matching, key=lambda m: (m[0], not m[1]))[1] if matching else True


def unit_sandbox(unit: str) -> Sandbox | None:
    """The unit's sandbox from `systemctl show`; None without systemd or without the unit."""
    props = _shown(unit)
    return Sandbox.from_properties(props) if props is not None else None


def _shown(unit: str) -> dict[str, str] | None:
    try:
        result = subprocess.run(
            ["systemctl", "show", "--property", ",".join(_PROPERTIES), unit],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            preexec_fn=child_preexec(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    props = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    if result.returncode != 0 or props.get("LoadState") != "loaded":
        return None
    return props


@functools.cache
def running_unit() -> tuple[str, Sandbox] | None:
    """The service whose main (ExecStart=) or control (ExecStartPre=, …) process this is, and
    its sandbox: an operator's own unit, or `systemd-run -p PrivateTmp=yes influx-backupd run`,
    whatever its config path. Not a process that merely runs inside some service (a test suite
    under a CI runner's unit): that service does not run us."""
    unit = own_service()
    props = _shown(unit) if unit is not None else None
    if unit is None or props is None:
        return None
    if str(os.getpid()) not in (props.get("MainPID"), props.get("ControlPID")):
        return None
    return unit, Sandbox.from_properties(props)


def _existing(path: Path) -> Path:
    """path, or the nearest ancestor that exists (where it would be created), resolved."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return real(candidate)
    return Path("/")


def storage_in_state(config: Config) -> str | None:
    """A storage dir inside the state dir (the one dir the shipped unit always lets it write):
    the backups share the state's fate. Package purge leaves them, but `systemctl clean
    --what=state` or an admin resetting the state removes the dir whole."""
    state = Path(os.path.realpath(config.state_dir))
    storage = Path(os.path.realpath(config.storage_dir))
    if storage != state and state not in storage.parents:
        return None
    return (
        f"storage.dir: {config.storage_dir} is inside daemon.state_dir {config.state_dir}: "
        "the backups would go with the state (`systemctl clean --what=state`, a state dir "
        "reset); give them a dir of their own, such as /var/backups/influxdb (in the unit's "
        "ReadWritePaths=)"
    )


def _the_unit(
    config: Config, sandbox: Sandbox | None, unit: str | None
) -> tuple[Sandbox | None, str | None]:
    """The unit that runs this config and its sandbox, unless given (tests give both): the
    one running this process, else the shipped unit for the config's path."""
    if unit is None:
        running = running_unit()
        if running is not None:
            return running[1], running[0]
        unit = unit_for(config.path)
    if sandbox is None and unit is not None:
        sandbox = unit_sandbox(unit)
    return sandbox, unit


# what each setting loses in the unit's private /tmp, and where it belongs instead
_LOST = {
    "storage.dir": ("every backup with them", "/var/backups/influxdb"),
    "daemon.state_dir": (
        "the catalog, the lock and the crash marker with them (influxd left down by a "
        "killed backup would go unnoticed)",
        "/var/lib/influx-backupd (or leave state_dir out: the unit's StateDirectory=)",
    ),
}


def private_tmp_errors(
    config: Config, sandbox: Sandbox | None = None, unit: str | None = None
) -> list[str]:
    """One line per key whose dir the unit running this config (PrivateTmp=yes) would keep in
    its own /tmp or /var/tmp, deleted when it stops: storage.dir and daemon.state_dir. A config
    no unit runs (cron, a shell) may use /tmp: nothing is said then."""
    sandbox, unit = _the_unit(config, sandbox, unit)
    if sandbox is None or unit is None:
        return []
    found: list[str] = []
    dirs = {w.key: w.path for w in written_dirs(config)}
    for key, (lost, instead) in _LOST.items():
        if sandbox.in_private_tmp(dirs[key]):
            found.append(
                f"{key} {dirs[key]}: the unit {unit} has PrivateTmp=yes: /tmp and /var/tmp are its "
                f"own, deleted when it stops, and {lost}; choose a dir such as {instead}"
            )
    return found


def refuse_private_tmp(
    config: Config, sandbox: Sandbox | None = None, unit: str | None = None
) -> None:
    """private_tmp_errors as the one line (78) `run` refuses to start with: the unit's
    RestartPreventExitStatus=78 ends the restart loop, and no backup is made to be lost."""
    found = private_tmp_errors(config, sandbox, unit)
    if found:
        raise ConfigError(f"{config.path}: " + "; ".join(found))


def _private_tmp_warnings(config: Config, sandbox: Sandbox, unit: str) -> list[str]:
    """The other dirs the service uses, in its private /tmp: a metrics file node_exporter
    never reads; influxd's dirs or pidfile, which the unit sees a /tmp of its own in place of."""
    found: list[str] = []
    seen: set[Path] = set()
    for w in written_dirs(config):
        if w.key in _LOST or w.path in seen or not sandbox.in_private_tmp(w.path):
            continue
        seen.add(w.path)
        if w.key == "daemon.metrics_file":
            found.append(
                f"{w.key}: {config.settings.daemon.metrics_file} is in /tmp or /var/tmp, which "
                f"{unit} (PrivateTmp=yes) has its own of: node_exporter never sees the file, "
                "and it is deleted when the unit stops; "
                "choose node_exporter's textfile dir, such as /var/lib/prometheus/node-exporter"
            )
        else:
            found.append(
                f"{w.key}: {w.path} is in /tmp or /var/tmp, which {unit} (PrivateTmp=yes) has "
                "its own of: the daemon would not see what influxd keeps there; move it out"
            )
    return found


def warnings(config: Config, sandbox: Sandbox | None = None, unit: str | None = None) -> list[str]:
    """One line per configured dir the service could not write in, or not where it should."""
    sandbox, unit = _the_unit(config, sandbox, unit)
    found: list[str] = []
    nested = storage_in_state(config)
    if nested is not None:
        found.append(nested)
    seen: set[Path] = set()
    for w in written_dirs(config):
        if w.path in seen:
            continue
        seen.add(w.path)
        target = _existing(w.path)
        never_made = w.key == "daemon.metrics_file" and not w.path.is_dir()
        if never_made:  # written into, never made by us: node_exporter's package makes it
            found.append(
                f"{w.key}: its directory {w.path} does not exist: no metrics are written "
                "until it does"
            )
        if sandbox is not None and unit is not None and not sandbox.writable(real(w.path)):
            # first: inside the unit, its sandbox is also why access() says no
            found.append(
                f"{w.key}: {w.path} would not be writable by {unit} "
                f"(ProtectSystem={sandbox.protect_system}): add it to ReadWritePaths= "
                f"with `systemctl edit {unit}`"
            )
        elif not never_made and not os.access(target, os.W_OK):
            where = "" if target == real(w.path) else f" (it would be made in {target})"
            found.append(f"{w.key}: {w.path} is not writable{where}")
    if sandbox is not None and unit is not None:
        found += _private_tmp_warnings(config, sandbox, unit)
    return found


_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)


def explain(config: Config, exc: OSError) -> str:
    """An OSError of a run, said of the setting that names its path: "[Errno 30] Read-only file
    system: '/srv/ib'" becomes "storage.dir /srv/ib: Read-only file system", and inside a
    systemd service, where a read-only path is its sandbox's doing, how to open it up."""
    if exc.filename is None:
        return str(exc)
    path = Path(os.fsdecode(exc.filename))
    # the live dirs themselves too (written_dirs has their parent, which they share), and of
    # nested settings (a storage dir inside the state dir) the deepest
    named = [
        *written_dirs(config),
        *(Written(f"influxd.config ({n} dir)", d) for n, d in config.server.dirs().items()),
    ]
    owners = [w for w in named if path == w.path or w.path in path.parents]
    if not owners:
        return str(exc)
    owner = max(owners, key=lambda w: len(w.path.parts))
    what = exc.strerror or str(exc)
    text = f"{owner.key} {owner.path}: {what}" + ("" if path == owner.path else f" ({path})")
    if exc.errno in _REFUSED and os.environ.get("INVOCATION_ID"):
        running = running_unit()
        unit = running[0] if running else unit_for(config.path) or "influx-backupd.service"
        text += (
            f"; if the unit's sandbox is why, add it to ReadWritePaths= with "
            f"`systemctl edit {unit}` (`influx-backupd check-config` lists every such path)"
        )
    return text
