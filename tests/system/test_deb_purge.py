"""packaging/deb/postrm purge and prerm remove as real processes, in a private mount namespace
whose /var/lib and /etc/systemd are a tmpfs: nothing of this host is touched.

Purge removes only what it knows by name to be the package's own state; before, it removed every
file under /var/lib/influx-backupd but crash markers, with a storage dir put there (the one dir
the unit's sandbox always lets it write) every archive and .tar.json record with it. A crash
marker whose run is still in flight (it holds the backup lock) was said as influxd left down:
"run systemctl start influxdb", in the middle of that run's copy.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from influx_backupd.daemon import loop, status
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.report import progress
from influx_backupd.restore import database
from influx_backupd.run import offsite, offsite_repair
from influx_backupd.store.state import ClockSteps
from tests.conftest import Cli, write_config

ROOT = Path(__file__).resolve().parents[2]
DEB = ROOT / "packaging" / "deb"
STATE = "/var/lib/influx-backupd"


def in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """script under sh -e, then the state dir's tree on stdout (one path a line, relative)."""
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-ec",
         "mount -t tmpfs none /var/lib && mount -t tmpfs none /etc/systemd && "
         f"mkdir -p {STATE} && {script}\n"
         f"if [ -d {STATE} ]; then cd {STATE} && find . -mindepth 1 | sort; fi"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def ours(stderr: str) -> list[str]:
    # (deb-systemd-helper, run outside dpkg, says so on stderr too)
    return [line for line in stderr.splitlines() if line.startswith("influx-backupd:")]


def left(stdout: str) -> set[str]:
    return {line.removeprefix("./") for line in stdout.splitlines() if line.startswith("./")}


def test_purge_keeps_the_backups_of_a_storage_dir_inside_the_state_dir(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A real state dir with its storage dir inside (storage.dir = state_dir/archives), after a
    real backup: purge removes the catalog and the lock, never the archive or its record."""
    config = write_config(tmp_path, sandbox)
    state = tmp_path / "state"
    text = config.read_text().replace(f'"{tmp_path / "archives"}"', f'"{state / "archives"}"')
    config.write_text(text)
    record = Cli(config).json("backup")
    assert record["status"] == "ok", record["error"]
    archive = Path(record["archive"]).name
    assert (state / "catalog.db").is_file() and (state / "backup.lock").is_file()

    done = in_namespace(f"cp -a {shlex.quote(str(state))}/. {STATE}/ && sh {DEB / 'postrm'} purge")
    assert done.returncode == 0, done.stderr
    assert left(done.stdout) == {"archives", f"archives/{archive}", f"archives/{archive}.json"}
    lines = ours(done.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"influx-backupd: purge left in {STATE}: archives/ ("), lines


def test_purge_removes_its_own_state_by_name_and_nothing_else() -> None:
    """Every name the package gives a file in a state dir (its modules' constants), in the main
    state dir and an instance's, goes with its temp files; all else stays."""
    own = [
        "catalog.db", "catalog.db-journal", "catalog.db-wal", "catalog.db-shm", "backup.lock",
        "influxd.log", "influxd.log.1", "prune-pending.json", loop.DAEMON_LOCK, status.STATE_FILE,
        progress.RUNNING_FILE, offsite.STATE_FILE, offsite.KEY_FILE, "offsite-known-nightly.json",
        f".{status.STATE_FILE}.123.456.tmp", ClockSteps.NAME,
    ]  # fmt: skip
    own_dirs = [offsite.CACHE_DIR, offsite_repair.DAMAGED_DIR]
    kept = [
        "influxd-stopped.json", database.PENDING, "catalog.db.damaged-20260101T000000Z-ab12",
        "nightly-1.tar", "nightly-1.tar.json", "nightly-2.tar.partial", "notes.txt",
        "archives/nightly-3.tar", "archives/nightly-3.tar.json", "archives/notes.txt",
        "archives/.staging/nightly/data/db/x.tsm", "archives/.verify-abc/owner.json",
    ]  # fmt: skip
    setup = []
    for base in ("", "inst/"):
        for name in own + kept:
            setup.append(
                f"mkdir -p $(dirname {STATE}/{base}{name}) && echo x > {STATE}/{base}{name}"
            )
        for name in own_dirs:
            setup.append(f"mkdir -p {STATE}/{base}{name} && echo x > {STATE}/{base}{name}/0123abcd")
    # a link to a dir elsewhere is not followed
    setup.append("mkdir -p /var/lib/elsewhere && echo x > /var/lib/elsewhere/catalog.db")
    setup.append(f"ln -s /var/lib/elsewhere {STATE}/linked")
    # an instance's dir left holding only its crash marker: the marker's own line says it
    setup.append(f"mkdir {STATE}/solo && echo '{{}}' > {STATE}/solo/influxd-stopped.json")
    done = in_namespace(
        " && ".join(setup) + f" && sh {DEB / 'postrm'} purge && ls /var/lib/elsewhere"
    )
    assert done.returncode == 0, done.stderr
    expected = {"inst", "archives", "archives/.staging", "archives/.staging/nightly",
                "archives/.staging/nightly/data", "archives/.staging/nightly/data/db",
                "archives/.verify-abc", "linked", "solo", "solo/influxd-stopped.json"}  # fmt: skip
    expected |= {f"inst/{p}" for p in expected if p.startswith("archives")}
    expected |= {base + name for base in ("", "inst/") for name in kept}
    assert left(done.stdout) == expected
    assert "catalog.db" in done.stdout.splitlines(), "the link's target is untouched"
    lines = ours(done.stderr)
    assert len(lines) == 4, lines  # the three markers' warnings, then what was left
    assert lines[3].startswith(f"influx-backupd: purge left in {STATE}: "), lines
    assert "archives/, " in lines[3] and "inst/, " in lines[3] and "nightly-1.tar.json" in lines[3]
    assert "solo" not in lines[3], lines


# this shell holds the lock itself, as a run does: flock on an fd, its pid in the file
HOLD = f"exec 9>>{STATE}/backup.lock && flock -x 9 && echo $$ > {STATE}/backup.lock"


@pytest.mark.parametrize("kind", ["backup", "restore"])
@pytest.mark.parametrize("script", ["prerm remove", "postrm purge"])
def test_a_marker_of_a_run_in_flight_is_not_said_as_influxd_left_down(
    script: str, kind: str
) -> None:
    """The run holds the backup lock: the line names it in flight and asks for nothing; purge
    leaves its state dir whole (its catalog still takes the run's record)."""
    marker = (
        '{"run_id":"r1","job":"nightly","stopping":true}'
        if kind == "backup"
        else '{"run_id":"restore-r2","kind":"restore","stopping":true}'
    )
    name, arg = script.split()
    done = in_namespace(
        f"printf '%s' '{marker}' > {STATE}/influxd-stopped.json && echo x > {STATE}/catalog.db && "
        f"{HOLD} && sh {DEB / name} {arg} 9>&- && echo pid=$$"
    )
    assert done.returncode == 0, done.stderr
    pid = next(ln for ln in done.stdout.splitlines() if ln.startswith("pid=")).removeprefix("pid=")
    lines = ours(done.stderr)
    what = "a backup run" if kind == "backup" else "a restore"
    assert lines[0] == (
        f"influx-backupd: {what} (pid {pid}) is in flight (crash marker {STATE}/influxd-stopped.json): "
        "it starts influxd again when it ends; do not start it yourself"
    ), lines
    assert not any("systemctl start" in line or "WARNING" in line for line in lines), lines
    if name == "postrm":
        assert lines[1:] == [
            f"influx-backupd: purge left {STATE} as it is: influx-backupd (pid {pid}) holds its "
            "backup.lock"
        ], lines
        assert left(done.stdout) == {"influxd-stopped.json", "catalog.db", "backup.lock"}
    else:
        assert len(lines) == 1, lines


def test_purge_names_the_staging_copies_it_leaves_and_removes_only_unowned_metrics_dirs() -> None:
    """Staging copies (a copy of the database per job) were left without a word, and the
    node_exporter dirs postinst made stayed for good. In the namespace /var/lib (dpkg's database
    with it) and /var/backups are a tmpfs: dpkg-query reads a database written here."""
    metrics = "/var/lib/prometheus/node-exporter"
    setup = (
        "mount -t tmpfs none /var/backups && "
        "mkdir -p '/var/backups/influxdb/.staging/nightly/data' "
        f"'{STATE}/.staging/hot/data' {metrics} /var/lib/dpkg/info && "
        ": > /var/lib/dpkg/status && "
        f"sh {DEB / 'postrm'} purge && "
        "test ! -e /var/lib/prometheus && "  # empty and no package's: gone
        # the same dirs, owned by a package: they stay
        f"mkdir -p {metrics} && printf '/var/lib/prometheus\\n{metrics}\\n' > "
        "/var/lib/dpkg/info/prometheus-node-exporter.list && "
        "printf 'Package: prometheus-node-exporter\\nStatus: install ok installed\\n"
        "Architecture: amd64\\nVersion: 1.0\\n\\n' > /var/lib/dpkg/status && "
        f"sh {DEB / 'postrm'} purge 2>/dev/null && test -d {metrics} && "
        "test -d /var/backups/influxdb/.staging/nightly/data"
    )
    done = in_namespace(setup)
    assert done.returncode == 0, done.stderr
    said = [line for line in ours(done.stderr) if "staging copies" in line]
    assert said == [
        "influx-backupd: purge left the staging copies in /var/backups/influxdb/.staging (a copy "
        "of the database per job, kept to shorten the next cold run; no backup): remove them "
        "with rm -rf /var/backups/influxdb/.staging",
        f"influx-backupd: purge left the staging copies in {STATE}/.staging (a copy of the "
        f"database per job, kept to shorten the next cold run; no backup): remove them with "
        f"rm -rf {STATE}/.staging",
    ], ours(done.stderr)
