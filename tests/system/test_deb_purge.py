"""packaging/deb/postrm purge and prerm remove as real processes, in a private mount namespace
whose /var/lib and /etc/systemd are a tmpfs: nothing of this host is touched.

A crash marker whose run is still in flight (it holds the backup lock) was said as influxd left down:
"run systemctl start influxdb", in the middle of that run's copy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

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


# this shell holds the lock itself, as a run does: flock on an fd, its pid in the file
HOLD = f"exec 9>>{STATE}/backup.lock && flock -x 9 && echo $$ > {STATE}/backup.lock"


@pytest.mark.parametrize("kind", ["backup", "restore"])
@pytest.mark.parametrize("script", ["prerm remove", "postrm purge"])
def test_a_marker_of_a_run_in_flight_is_not_said_as_influxd_left_down(
    script: str, kind: str
) -> None:
    """The run holds the backup lock: the line names it in flight and asks for nothing."""
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
    assert len(lines) == 1, lines
