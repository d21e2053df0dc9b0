"""Would the daemon's systemd unit let it write where the config says? (`check-config` asks.)

The shipped units run with ProtectSystem=strict: only ReadWritePaths=, the StateDirectory= and
a private /tmp are writable, so a storage dir or metrics_file elsewhere fails at the first run
(`after_run.step_failed`), long after `systemctl enable --now` looked fine. The sandbox is read
from `systemctl show` of the unit that runs this config, and modelled as systemd mounts it: the
most specific path rule wins.
"""

from __future__ import annotations

import errno
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from influx_backupd.core.config import DEFAULT_CONFIG_PATH, Config, instance_name
from influx_backupd.core.interrupt import child_preexec

_PROPERTIES = (
    "LoadState",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "StateDirectory",
)
_SYSTEM = {"yes": ("/usr", "/boot", "/efi"), "full": ("/usr", "/boot", "/efi", "/etc")}


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
    if config_path == DEFAULT_CONFIG_PATH:
        return "influx-backupd.service"
    name = instance_name(config_path)
    return f"influx-backupd@{name}.service" if name else None


@dataclass(frozen=True)
class Sandbox:
    protect_system: str  # no | yes | full | strict
    read_write: tuple[Path, ...]  # ReadWritePaths=: skipped by systemd while they do not exist
    read_only: tuple[Path, ...]  # ReadOnlyPaths=, InaccessiblePaths=, ProtectHome=
    created: tuple[Path, ...] = ()  # StateDirectory=, PrivateTmp=: systemd makes them

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> Sandbox:
        def paths(key: str) -> list[Path]:
            # "-" (skip if missing) and "+" (outside RootDirectory=) prefixes do not matter here
            return [Path(p.lstrip("-+")) for p in props.get(key, "").split() if p.lstrip("-+")]

        created = [Path("/var/lib") / d for d in props.get("StateDirectory", "").split()]
        if props.get("PrivateTmp") == "yes":
            created += [Path("/tmp"), Path("/var/tmp")]
        read_only = paths("ReadOnlyPaths") + paths("InaccessiblePaths")
        if props.get("ProtectHome", "no") != "no":
            read_only += [Path("/home"), Path("/root"), Path("/run/user")]
        return cls(
            props.get("ProtectSystem", "no"),
            tuple(paths("ReadWritePaths")),
            tuple(read_only),
            tuple(created),
        )

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
    return Sandbox.from_properties(props)


def _existing(path: Path) -> Path:
    """path, or the nearest ancestor that exists (where it would be created), resolved."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.resolve()
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


def warnings(config: Config, sandbox: Sandbox | None = None, unit: str | None = None) -> list[str]:
    """One line per configured dir the service could not write in."""
    if unit is None:
        unit = unit_for(config.path)
    if sandbox is None and unit is not None:
        sandbox = unit_sandbox(unit)
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
        if sandbox is not None and unit is not None and not sandbox.writable(w.path.resolve()):
            # first: inside the unit, its sandbox is also why access() says no
            found.append(
                f"{w.key}: {w.path} would not be writable by {unit} "
                f"(ProtectSystem={sandbox.protect_system}): add it to ReadWritePaths= "
                f"with `systemctl edit {unit}`"
            )
        elif not never_made and not os.access(target, os.W_OK):
            where = "" if target == w.path.resolve() else f" (it would be made in {target})"
            found.append(f"{w.key}: {w.path} is not writable{where}")
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
        unit = unit_for(config.path) or "influx-backupd.service"
        text += (
            f"; if the unit's sandbox is why, add it to ReadWritePaths= with "
            f"`systemctl edit {unit}` (`influx-backupd check-config` lists every such path)"
        )
    return text
