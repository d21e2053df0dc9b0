"""Bad input to every subcommand, as real processes: one line, a defined status, nothing touched.

No influxd runs here: every case must be refused before influxd, the lock or state_dir matter.
The processes run side by side (a module fixture) and each case asserts on its own result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from influx_backupd.store.catalog import Catalog
from influx_backupd.store.record import RunRecord
from tests.cli_process import run_cli_process

EXIT_USAGE, EXIT_CONFIG = 2, 78
COMMANDS = [
    ["check-config"],
    ["backup"],
    ["list"],
    ["restore", "20260101T000000Z-abcd", "--yes"],
    ["verify", "--all"],
    ["prune"],
    ["import"],
    ["run"],
    ["status"],
    ["offsite", "sync"],
    ["recover"],
]


@dataclass(frozen=True)
class Case:
    config: str  # which config variant (see _make_config)
    argv: tuple[str, ...]
    status: int
    says: tuple[str, ...]  # what the one line must name ({root} is the case's directory)


def _influxdb_conf(root: Path, *, data_dir: bool = True) -> Path:
    conf = root / "influxdb.conf"
    data = f'  dir = "{root}/server/data"\n' if data_dir else ""
    conf.write_text(
        'bind-address = "127.0.0.1:1"\n'
        f'[meta]\n  dir = "{root}/server/meta"\n'
        f'[data]\n{data}  wal-dir = "{root}/server/wal"\n'
        '[http]\n  bind-address = "127.0.0.1:1"\n'
    )
    return conf


def _make_config(root: Path, variant: str) -> Path:
    """A directory holding a server's dirs (with live data), an influxdb.conf and a config."""
    for name in ("meta", "data", "wal"):
        (root / "server" / name).mkdir(parents=True)
    (root / "server" / "data" / "live.tsm").write_bytes(b"live data")
    (root / "not-an-archive.txt").write_text("hello\n")
    (root / "a-directory").mkdir()
    (root / "a-file").write_text("")
    with tarfile.open(root / "backup.tar", "w") as tar:  # a tar: only the missing --yes is wrong
        tar.add(root / "server", arcname=".")
    conf = _influxdb_conf(root, data_dir=variant != "no-data-dir")
    state = root / ("a-file" if variant == "state-is-file" else "state")
    storage = root / "a-file" / "archives" if variant == "storage-uncreatable" else root / "arch"
    body = (
        f'[daemon]\nstate_dir = "{state}"\n'
        f'[influxd]\nconfig = "{conf}"\ncommand = ["/usr/bin/influxd", "run", "-config", "{conf}"]\n'
        f'[storage]\ndir = "{storage}"\n'
        '[[job]]\nname = "nightly"\nschedule = "0 3 * * *"\n'
    )
    if variant == "bad-toml":
        body += "[[job]\n"
    if variant.startswith("offsite-"):
        (root / "binary").write_bytes(b"\xff\xfe\x00AGE-SECRET-KEY-1")
        body += '[offsite]\nbucket = "influx-backups"\n' + OFFSITE_VARIANTS[variant].format(
            root=root
        )
    path = root / "config.toml"
    if variant == "config-is-dir":
        path.mkdir()
    elif variant != "config-missing":
        path.write_text(body)
    return path


CONFIG_ERRORS = {
    "config-is-dir": ("{root}/config.toml", "is a directory"),
    "config-missing": ("{root}/config.toml", "not found"),
    "bad-toml": ("{root}/config.toml", "not valid TOML"),
    "no-data-dir": ("{root}/influxdb.conf", "[data] dir", "missing"),
    "state-is-file": ("{root}/config.toml", "daemon.state_dir", "not a directory"),
    "storage-uncreatable": ("storage.dir", "cannot be created", "{root}/a-file is not a directory"),
}
CASES: dict[str, Case] = {
    f"{variant}-{argv[0]}": Case(variant, tuple(argv), EXIT_CONFIG, says)
    for variant, says in CONFIG_ERRORS.items()
    for argv in COMMANDS
}
# [offsite] values that used to pass check-config and fail when used (a traceback, or the
# secret in errors, logs, status and the state file): refused by every command, at load
OFFSITE_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"
OFFSITE_VARIANTS = {
    "offsite-secret-url": f'endpoint_url = "http://AKIAEXAMPLE:{OFFSITE_SECRET}@127.0.0.1:1"\n',
    "offsite-broken-url": 'endpoint_url = "http://[::1"\n',
    "offsite-binary-identity": 'identity_file = "{root}/binary"\n',
    "offsite-binary-credentials": 'credentials_file = "{root}/binary"\n',
}
OFFSITE_ERRORS = {
    "offsite-secret-url": ("offsite.endpoint_url", "credentials_file"),
    "offsite-broken-url": ("offsite.endpoint_url", "IPv6"),
    "offsite-binary-identity": ("offsite.identity_file", "{root}/binary is not UTF-8 text"),
    "offsite-binary-credentials": ("offsite.credentials_file", "{root}/binary is not UTF-8 text"),
}
OFFSITE_COMMANDS = (
    ["check-config"],
    ["backup"],
    ["status"],
    ["offsite", "sync"],
    ["list", "--offsite"],
)
for variant, says in OFFSITE_ERRORS.items():
    for argv in OFFSITE_COMMANDS:
        CASES[f"{variant}-{'-'.join(argv)}"] = Case(variant, tuple(argv), EXIT_CONFIG, says)
_JOB = ("--job nope", "{root}/config.toml", "jobs: nightly")
_BACKUP = ("give a catalog id",)
USAGE = {
    "no-command": ((), ("required: COMMAND", "--help")),
    "unknown-command": (("frobnicate",), ("invalid choice", "check-config")),
    "unknown-flag": (("status", "--bogus"), ("unrecognized arguments: --bogus",)),
    "bad-log-level": (("--log-level", "loud", "list"), ("--log-level", "debug")),
    "bad-mode": (("backup", "--mode", "warm"), ("--mode", "cold", "hot", "auto")),
    "backup-unknown-job": (("backup", "--job", "nope"), _JOB),
    "list-unknown-job": (("list", "--job", "nope"), _JOB),
    "prune-unknown-job": (("prune", "--job", "nope"), _JOB),
    "import-unknown-flag": (("import", "--all"), ("unrecognized arguments: --all",)),
    "verify-unknown-job": (("verify", "--all", "--job", "nope"), _JOB),
    "verify-nothing": (("verify",), ("BACKUP", "--all")),
    "verify-backup-and-all": (("verify", "x", "--all"), ("BACKUP", "--all")),
    "verify-backup-and-job": (("verify", "x", "--job", "nightly"), ("--job", "--all")),
    "verify-unknown-id": (("verify", "20260101T000000Z-abcd"), ("neither a catalog id", *_BACKUP)),
    "verify-not-archive": (
        ("verify", "{root}/not-an-archive.txt"),
        ("{root}/not-an-archive.txt", "not a tar archive", *_BACKUP),
    ),
    "verify-directory": (("verify", "{root}/a-directory"), ("{root}/a-directory", "*.manifest")),
    "verify-failed-run": (("verify", "20250101T000000Z-fail"), ("is failed", "no archive")),
    "restore-no-backup": (("restore", "--yes"), ("required: BACKUP",)),
    "restore-unknown-id": (("restore", "20260101T000000Z-abcd", "--yes"), _BACKUP),
    "restore-not-archive": (
        ("restore", "{root}/not-an-archive.txt", "--yes"),
        ("{root}/not-an-archive.txt", "not a tar archive", *_BACKUP),
    ),
    "restore-directory": (("restore", "{root}/a-directory", "--yes"), ("*.manifest", *_BACKUP)),
    "restore-failed-run": (("restore", "20250101T000000Z-fail", "--yes"), ("is failed",)),
    "restore-unconfirmed": (("restore", "{root}/backup.tar"), ("--yes", "replaces the live data")),
    "run-extra-argument": (("run", "now"), ("unrecognized arguments: now",)),
    "offsite-unknown-action": (("offsite", "push"), ("invalid choice", "sync")),
    "read-data-without-offsite": (
        ("verify", "x", "--read-data", "5"),
        ("--read-data", "--offsite"),
    ),
    "read-data-out-of-range": (
        ("verify", "x", "--offsite", "--read-data", "150"),
        ("--read-data", "above 0, up to 100"),
    ),
    "restore-from-elsewhere": (("restore", "x", "--from", "tape"), ("--from", "offsite")),
}
CASES.update({name: Case("good", argv, EXIT_USAGE, says) for name, (argv, says) in USAGE.items()})
# [offsite] commands without an [offsite] section: a configuration error, nothing touched
NO_OFFSITE = ("{root}/config.toml", "no [offsite] section")
for argv in (("offsite", "sync"), ("list", "--offsite"), ("import", "--offsite")):
    CASES[f"no-offsite-{'-'.join(argv)}"] = Case("good", argv, EXIT_CONFIG, NO_OFFSITE)
# Cases that need a catalog already there (a failed run): state_dir exists before, as a user's would.
WITH_CATALOG = {"verify-failed-run", "restore-failed-run"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@dataclass
class Outcome:
    root: Path
    done: subprocess.CompletedProcess[str]
    before: dict[str, tuple[int, int]]
    after: dict[str, tuple[int, int]]


def _run(root: Path, case: Case) -> Outcome:
    config = _make_config(root, case.config)
    if root.name in WITH_CATALOG:
        failed = RunRecord(id="20250101T000000Z-fail", job="nightly", mode="cold", started_at=1.0)
        failed.status, failed.error = "failed", "boom"
        Catalog(root / "state").save(failed)
    argv = [a.format(root=root) for a in case.argv]
    before = _tree(root)
    done = run_cli_process(
        ["--config", str(config), *argv],
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "INFLUX_BACKUPD_CONFIG"},
    )
    return Outcome(root, done, before, _tree(root))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("cli")
    roots = {name: base / name for name in CASES}
    for root in roots.values():
        root.mkdir()
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {name: pool.submit(_run, roots[name], case) for name, case in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gets_one_line_a_defined_status_and_touches_nothing(
    name: str, outcomes: dict[str, Outcome]
) -> None:
    case, outcome = CASES[name], outcomes[name]
    done = outcome.done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}:\n{done.stderr}"
    line = lines[0]
    assert line.startswith("influx-backupd"), line
    for needed in case.says:
        assert needed.format(root=outcome.root) in line, f"{needed!r} not in {line!r}"
    assert done.returncode == case.status, (done.returncode, line)
    assert done.stdout == "", done.stdout
    assert outcome.after == outcome.before, "bad input must create or change nothing"
    assert not (outcome.root / "state").exists() or case.config == "good"


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.startswith("offsite-secret-url")))
def test_credentials_in_the_endpoint_url_are_never_shown(
    name: str, outcomes: dict[str, Outcome]
) -> None:
    done = outcomes[name].done
    for part in (OFFSITE_SECRET, OFFSITE_SECRET[:8], "AKIAEXAMPLE"):
        assert part not in done.stdout + done.stderr, done.stderr


def test_every_subcommand_is_in_the_matrix() -> None:
    from influx_backupd.cli.parser import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {c[0] for c in COMMANDS} == set(sub.choices)
