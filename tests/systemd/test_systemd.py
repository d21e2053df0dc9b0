"""The Debian package under a real systemd: Debian 12 booted by systemd-nspawn, Debian's influxdb
with a writer running, `apt`-style install of the .deb, then the service as an administrator
runs it. One boot for the whole module; the tests run in file order and build on each other
(install, runs, reload, stops and kills, instances, upgrade, purge).

Needs root, systemd-nspawn and debootstrap (scripts/setup.sh installs them) and, the first time,
deb.debian.org to build the cached tree (tests/systemd/tree.sh).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from influx_backupd.core.log import MESSAGE_IDS
from tests.systemd.container import Container, build_tree

ROOT = Path(__file__).resolve().parents[2]
UNIT = "influx-backupd.service"
PROM = "/var/lib/prometheus/node-exporter/influx_backupd.prom"
EXPOSURE_LIMIT = 3.0  # docs/daemon.md

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn needs root"),
]

# Writes one point every 20 ms into database "test" of the container's influxd, whatever
# happens to the server (a cold backup stops it); counts what it wrote in /root/written.
WRITER = """
import time, urllib.request, urllib.parse
base = "http://127.0.0.1:8086"
n = 0
while True:
    try:
        urllib.request.urlopen(base + "/query", urllib.parse.urlencode(
            {"q": "CREATE DATABASE test"}).encode(), timeout=2).read()
        while True:
            body = f"m,src=writer v={n} {time.time_ns()}".encode()
            urllib.request.urlopen(base + "/write?db=test", body, timeout=2).read()
            n += 1
            time.sleep(0.02)
    except OSError:
        time.sleep(0.1)
"""

# influx.py query Q | influx.py write LINE, against database "test"; a cold backup may have the
# server stopped for a moment, so a refused connection is tried again for up to 60 s.
INFLUX = """
import sys, time, urllib.request, urllib.parse
what, arg = sys.argv[1:]
url = "http://127.0.0.1:8086/" + (
    "query?" + urllib.parse.urlencode({"db": "test", "q": arg}) if what == "query" else "write?db=test"
)
for attempt in range(600):
    try:
        body = None if what == "query" else arg.encode()
        print(urllib.request.urlopen(url, body, timeout=10).read().decode())
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("influxd did not answer for 60 s")
"""


def config(job: str, every: str, *, copy: str = "staged", extra: str = "") -> str:
    return f"""
[daemon]
metrics_file = "{PROM}"

[influxd]
config = "/etc/influxdb/influxdb.conf"
service = "influxdb.service"

[storage]
dir = "/var/backups/influxdb"

[verify]

[[job]]
name = "{job}"
every = "{every}"
mode = "cold"
copy = "{copy}"
keep_last = 2
keep_daily = 0
keep_weekly = 0
keep_monthly = 0
{extra}
"""


QUICK = config("quick", "3s")
IDLE = config("quick", "1h")
# direct copy of ~600 MB: influxd stays stopped long enough to stop or kill the daemon then.
# holes = "fill": the fallocated ballast reads as holes (unwritten extents, SEEK_DATA skips
# them); filled, its copy takes seconds, as a ballast of data would
SLOW = config("slow", "3s", copy="direct", extra='verify_after_backup = false\nholes = "fill"')
BROKEN = QUICK.replace('mode = "cold"', 'mode = "lukewarm"')
# a start notification to a listener that accepts and never answers: the run waits before its
# stop for as long as [notify] timeout
HUNG_START = config("hung", "3s", copy="direct") + (
    '\n[notify]\nstart = ["json://127.0.0.1:9999/"]\ntimeout = "10m"\n'
)
SILENT = """
import socket
server = socket.create_server(("127.0.0.1", 9999))
held = []
while True:
    held.append(server.accept()[0])
"""


def build_debs(out: Path, **suffixes: str) -> dict[str, Path]:
    """scripts/build-deb.sh once per suffix, side by side; name -> the .deb."""
    builds = {}
    for name, suffix in suffixes.items():
        argv = ["sh", str(ROOT / "scripts" / "build-deb.sh"), "--out", str(out / name)]
        if suffix:
            argv += ["--version-suffix", suffix]
        builds[name] = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # xz -1 rather than dpkg-deb's -6: a third of the CPU (10 s against 32 s a build,
            # measured) for a .deb a few per cent larger; what is in it is the same
            env={**os.environ, "DPKG_DEB_COMPRESSOR_LEVEL": "1"},
        )
    debs = {}
    for name, build in builds.items():
        stdout, stderr = build.communicate(timeout=900)
        assert build.returncode == 0, stderr[-3000:]
        debs[name] = Path(stdout.strip().splitlines()[-1])
    return debs


@pytest.fixture(scope="module")
def debs() -> Iterator[dict[str, Path]]:
    # not under pytest's basetemp: another pytest session may prune it while the container
    # still has it bind-mounted
    out = Path(tempfile.mkdtemp(prefix="influx-backupd-debs."))
    try:
        started = time.monotonic()
        # and a newer build of the same source, for the upgrade
        built = build_debs(out, first="", newer="+upgrade1")
        print(f"\n.debs built in {time.monotonic() - started:.1f}s", end=" ")
        yield built
    finally:
        shutil.rmtree(out)


@dataclass
class Lintian:
    """lintian on the first .deb, running: its output goes to files (a pipe nobody reads
    until the end could fill and stall it)."""

    proc: subprocess.Popen[bytes]
    out: Path

    def result(self) -> tuple[int, str, str]:
        """Its exit status, stdout and stderr."""
        returncode = self.proc.wait(600)
        read = [self.out.with_suffix(s).read_text(errors="replace") for s in (".out", ".err")]
        return returncode, read[0], read[1]


@pytest.fixture(scope="module")
def lintian(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lintian]:
    """Started as soon as the debs are built and left to run (a minute or two of CPU) while the
    container boots and the tests below drive it; its test, last in the file, reads it."""
    assert shutil.which("lintian"), "lintian is missing: scripts/setup.sh installs it"
    out = tmp_path_factory.mktemp("lintian") / "lintian"
    # lintian unpacks the .deb into a 64 MB pool under $TMPDIR and leaves it when killed:
    # under the test's own dir, pytest's clean-up removes it
    work = tmp_path_factory.mktemp("lintian-tmp")
    with open(out.with_suffix(".out"), "wb") as stdout, open(out.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(
            ["lintian", "--fail-on", "error,warning", "--info", str(debs["first"])],
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(work)},
            stdout=stdout,
            stderr=err,
        )
    try:
        yield Lintian(proc, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def box(
    debs: dict[str, Path],
    lintian: Lintian,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Container]:
    # (lintian: asked for only to start it before the boot)
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        assert shutil.which(tool), f"{tool} is missing: scripts/setup.sh installs it"
    started = time.monotonic()
    tree = build_tree()
    print(f"\ntree {tree} ready in {time.monotonic() - started:.1f}s", end=" ")
    box = Container(tree, binds=[(debs["first"].parents[1], "/mnt/debs")])
    logs = tmp_path_factory.mktemp("nspawn")
    started = time.monotonic()
    box.boot(logs / "console.log")
    print(f"booted in {time.monotonic() - started:.1f}s", end=" ")
    try:
        assert box.sh("systemctl is-active influxdb.service").stdout.strip() == "active"
        box.write("/root/writer.py", WRITER)
        box.write("/root/influx.py", INFLUX)
        box.write(
            "/etc/systemd/system/writer.service",
            "[Service]\nExecStart=/usr/bin/python3 /root/writer.py\nRestart=always\n",
        )
        box.sh("systemctl daemon-reload && systemctl start writer.service")
        yield box
    finally:
        box.shutdown()


def main_pid(box: Container, unit: str = UNIT) -> int:
    return int(box.show(unit, "MainPID")["MainPID"])


def runs(box: Container, conf: str = "/etc/influx-backupd/config.toml") -> list[dict[str, object]]:
    records = box.json(f"influx-backupd --config {conf} list --json")
    assert isinstance(records, list)
    return records


def count(box: Container, measurement: str) -> int:
    out = json.loads(
        box.sh(f'python3 /root/influx.py query "SELECT count(v) FROM {measurement}"').stdout
    )
    series = out["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def journal_since(box: Container, cursor: str, *matches: str) -> list[dict[str, str]]:
    out = box.sh(
        f"journalctl -o json --no-pager --after-cursor={shlex.quote(cursor)} "
        + " ".join(shlex.quote(m) for m in matches)
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def cursor(box: Container) -> str:
    last = json.loads(box.sh("journalctl -n 1 -o json --no-pager").stdout)
    assert isinstance(last, dict)
    return str(last["__CURSOR"])


def wait_active(box: Container, unit: str = UNIT, timeout: float = 90) -> None:
    box.wait(
        f"{unit} active",
        lambda: box.show(unit, "ActiveState")["ActiveState"] == "active",
        timeout=timeout,
    )


def mid_cold_run(box: Container, then: str) -> str:
    """Wait (inside the container, no round trips) until the daemon copies in a cold backup
    with influxd stopped, then run `then`; returns the run id the status line showed."""
    script = f"""
for i in $(seq 1200); do
    status=$(systemctl show {UNIT} -p StatusText --value)
    case $status in "running "*"phase copy, run "*)
        if [ "$(systemctl is-active influxdb.service)" != active ]; then
            {then}
            echo "$status"; exit 0
        fi ;;
    esac
    sleep 0.05
done
echo "no cold run seen with influxd stopped: $status" >&2; exit 1
"""
    status = box.sh(script, timeout=180).stdout.strip().splitlines()[-1]
    found = re.search(r"run (\S+)", status)
    assert found, status
    return found.group(1).rstrip(",")


def test_the_package_ships_alert_rules_and_config_schema(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    """In /usr/share/influx-backupd as packaging/ has them (README), usable where they lie:
    promtool loads the rules, and the config the package installs validates against the schema."""
    deb = debs["first"]
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(tmp_path)], check=True)
    share = tmp_path / "usr" / "share" / "influx-backupd"
    for name in ("prometheus-alerts.yml", "config.schema.json", "grafana-dashboard.json"):
        entry = [line for line in listing if line.endswith(f" ./usr/share/influx-backupd/{name}")]
        assert len(entry) == 1 and entry[0].startswith("-rw-r--r-- root/root "), entry or listing
        assert (share / name).read_bytes() == (ROOT / "packaging" / name).read_bytes()

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    checked = subprocess.run(
        [promtool, "check", "rules", str(share / "prometheus-alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = (ROOT / "packaging" / "prometheus-alerts.yml").read_text().count("\n      - alert: ")
    assert rules >= 6 and f"SUCCESS: {rules} rules found" in checked.stdout, checked.stdout

    schema = json.loads((share / "config.schema.json").read_text())
    config = tomllib.loads((tmp_path / "etc" / "influx-backupd" / "config.toml").read_text())
    jsonschema.Draft202012Validator(schema).validate(config)
    config["job"][0]["mode"] = "lukewarm"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(config)


# -- install and the first runs -------------------------------------------------------------------


def test_install_enable_ready_and_status_shows_next_run(
    box: Container, debs: dict[str, Path]
) -> None:
    box.sh(f"dpkg -i /mnt/debs/first/{debs['first'].name}", timeout=300)
    # the installed config as shipped: no warning, and the paths it names exist
    checked = box.sh("influx-backupd check-config")
    assert "warning" not in checked.stdout, checked.stdout
    box.sh("test -d /var/backups/influxdb && test -d /var/lib/prometheus/node-exporter")
    # faster restarts and watchdog than shipped, so that the tests below take seconds
    box.sh(f"mkdir -p /etc/systemd/system/{UNIT}.d")
    box.write(
        f"/etc/systemd/system/{UNIT}.d/50-test.conf",
        "[Service]\nRestartSec=1s\nWatchdogSec=10s\n",
    )
    box.write("/etc/influx-backupd/config.toml", QUICK)
    box.sh("systemctl daemon-reload")
    # Type=notify: enable --now returns once READY=1 arrived
    box.sh(f"systemctl enable --now {UNIT}")
    props = box.show(UNIT, "ActiveState", "SubState", "StatusText", "NRestarts", "Type")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] in ("notify", "notify-reload")
    assert props["StatusText"].startswith("idle; next: quick at "), props
    assert props["NRestarts"] == "0"


def test_cold_runs_stop_and_start_influxdb_through_systemctl(box: Container) -> None:
    before = box.show("influxdb.service", "InvocationID")["InvocationID"]
    start = cursor(box)
    box.wait("two ok runs", lambda: len([r for r in runs(box) if r["status"] == "ok"]) >= 2)
    ok = [r for r in runs(box) if r["status"] == "ok"]
    assert all(r["mode"] == "cold" and float(str(r["downtime_s"])) > 0 for r in ok)
    # systemd itself stopped and started influxdb.service for each run
    influx = [e["MESSAGE"] for e in journal_since(box, start, "_PID=1", "UNIT=influxdb.service")]
    assert sum("Stopped" in m for m in influx) >= 2, influx
    assert sum("Started" in m for m in influx) >= 2, influx
    assert box.show("influxdb.service", "InvocationID")["InvocationID"] != before
    # active again after each run; a run every 3 s may be in its stop window right now (seen
    # in CI: "inactive" at the moment of asking), so wait out one window, no more
    box.wait(
        "influxdb.service and writer.service active",
        lambda: (
            box.sh(
                "systemctl is-active influxdb.service writer.service", check=False
            ).stdout.split()
            == ["active", "active"]
        ),
        timeout=30,
        every=0.2,
    )
    assert count(box, "m") > 0


def test_journal_finds_a_run_by_its_run_id_with_fields(box: Container) -> None:
    run_id = str([r for r in runs(box) if r["status"] == "ok"][-1]["id"])
    out = box.sh(f"journalctl -u {UNIT} RUN_ID={run_id} -o json --no-pager").stdout
    entries = [json.loads(line) for line in out.splitlines()]
    events = [e["EVENT"] for e in entries]
    assert "run.started" in events and "run.finished" in events, events
    assert {e["RUN_ID"] for e in entries} == {run_id}
    assert {e["JOB"] for e in entries} == {"quick"}
    assert {"stop", "start"} <= {e.get("PHASE") for e in entries}
    # each event once: the daemon writes to journald's socket, not also to its stdout
    assert len(events) == len({(e["EVENT"], e.get("PHASE"), e["MESSAGE"]) for e in entries})


def test_a_backup_started_by_systemd_run_logs_fields_with_its_message_id(box: Container) -> None:
    """A one-shot command under systemd (a timer's service, systemd-run) logs as the daemon
    does: fields and MESSAGE_IDs, not JSON text in MESSAGE."""
    box.sh(f"systemctl stop {UNIT}")  # it would hold the lock: the one-shot would be busy
    try:
        done = box.sh(
            "systemd-run --wait --collect --quiet --unit=ib-oneshot influx-backupd backup",
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = box.sh("journalctl -u ib-oneshot.service -o json --no-pager").stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        finished = [e for e in entries if e.get("EVENT") == "run.finished"]
        assert len(finished) == 1, [e.get("EVENT") for e in entries]
        assert finished[0]["MESSAGE_ID"] == MESSAGE_IDS["run_ok"]
        assert finished[0]["JOB"] == "quick"
        assert {"stop", "start"} <= {e.get("PHASE") for e in entries}
        assert not [e["MESSAGE"] for e in entries if str(e["MESSAGE"]).startswith("{")]
        assert box.sh("systemctl is-active influxdb.service").stdout.strip() == "active"
    finally:
        box.sh(f"systemctl start {UNIT}")


def test_metrics_file_appears_where_node_exporter_reads_it(box: Container) -> None:
    text = box.sh(f"cat {PROM}").stdout
    assert re.search(
        r'^influx_backupd_last_success_timestamp_seconds\{[^}]*"quick"\} \d', text, re.M
    )
    # node_exporter runs as its own user: it must be able to read the file
    assert box.sh(f"stat -c %a {PROM}").stdout.strip()[-1] in "46"


def test_check_config_warns_about_a_path_the_unit_cannot_write(box: Container) -> None:
    probe = QUICK.replace(PROM, "/var/lib/node_exporter/textfile_collector/x.prom")
    box.write("/etc/influx-backupd/probe.toml", probe)
    out = box.sh("influx-backupd --config /etc/influx-backupd/probe.toml check-config").stdout
    box.sh("rm /etc/influx-backupd/probe.toml")
    assert (
        "warning: daemon.metrics_file: /var/lib/node_exporter/textfile_collector would not be "
        "writable by influx-backupd@probe.service (ProtectSystem=strict)"
    ) in out, out


def test_check_config_refuses_a_storage_dir_in_the_units_private_tmp(box: Container) -> None:
    """Before: check-config said ok, and each backup went to the unit's own /var/tmp: missing
    from a shell, deleted by `systemctl stop`. The unit's real PrivateTmp=yes, read by
    `systemctl show`."""
    probe = QUICK.replace('dir = "/var/backups/influxdb"', 'dir = "/var/tmp/influx-backups"')
    box.write("/etc/influx-backupd/probe.toml", probe)
    checked = box.sh(
        "influx-backupd --config /etc/influx-backupd/probe.toml check-config", check=False
    )
    box.sh("rm /etc/influx-backupd/probe.toml")
    assert checked.returncode == 78, checked
    assert checked.stderr == (
        "influx-backupd: /etc/influx-backupd/probe.toml: storage.dir /var/tmp/influx-backups: "
        "the unit influx-backupd@probe.service has PrivateTmp=yes: /tmp and /var/tmp are its "
        "own, deleted when it stops, and every backup with them; choose a dir such as "
        "/var/backups/influxdb\n"
    ), checked


def test_an_operators_own_unit_with_private_tmp_is_refused_whatever_the_config_path(
    box: Container,
) -> None:
    """Before: only the shipped units' config paths were checked; `run` under a unit of the
    operator's own (here a transient one, `systemd-run -p PrivateTmp=yes`) started, and each
    backup went to a /var/tmp deleted at its stop."""
    probe = QUICK.replace('dir = "/var/backups/influxdb"', 'dir = "/var/tmp/influx-backups"')
    box.sh("mkdir -p /srv/own")
    box.write("/srv/own/backups.toml", probe)
    try:
        for command in ("check-config", "run"):
            done = box.sh(
                "systemd-run --quiet --wait --pipe -p PrivateTmp=yes -p ProtectSystem=strict "
                f"influx-backupd --config /srv/own/backups.toml {command}",
                check=False,
            )
            assert done.returncode == 78, (command, done)
            line = done.stderr.strip()
            assert line.startswith(
                "influx-backupd: /srv/own/backups.toml: storage.dir /var/tmp/influx-backups: "
                "the unit run-"
            ), (command, line)
            assert ".service has PrivateTmp=yes" in line and "\n" not in line, (command, line)
        # the same config from a shell: no unit runs it, nothing to say
        assert box.sh("influx-backupd --config /srv/own/backups.toml check-config").returncode == 0
    finally:
        box.sh("rm -rf /srv/own")


def test_a_storage_dir_the_unit_cannot_write_is_said_at_start_and_by_each_run(
    box: Container,
) -> None:
    """Before: the daemon said READY and each run failed with "[Errno 30] Read-only file
    system: '/srv/ib'", naming neither storage.dir nor ReadWritePaths=."""
    start = cursor(box)
    before = {str(r["id"]) for r in runs(box)}
    box.write("/etc/influx-backupd/config.toml", QUICK.replace("/var/backups/influxdb", "/srv/ib"))
    try:
        box.sh(f"systemctl reload {UNIT}")
        box.wait(
            "a failed run",
            lambda: any(r["status"] == "failed" for r in runs(box) if str(r["id"]) not in before),
        )
        failed = next(
            r for r in runs(box) if str(r["id"]) not in before and r["status"] == "failed"
        )
        assert str(failed["error"]).startswith("storage.dir /srv/ib: Read-only file system; "), (
            failed
        )
        assert "ReadWritePaths=" in str(failed["error"]), failed
        said = [
            e["MESSAGE"]
            for e in journal_since(box, start, f"_SYSTEMD_UNIT={UNIT}")
            if e.get("EVENT") == "config.warning"
        ]
        assert any("storage.dir: /srv/ib would not be writable" in m for m in said), said
    finally:
        box.write("/etc/influx-backupd/config.toml", QUICK)
        box.sh(f"systemctl reload {UNIT}")


def test_the_package_carries_offsite_and_notifications(box: Container) -> None:
    """[offsite] and [notify] work from the package alone: their libraries are in its venv."""
    box.sh("/opt/influx-backupd/bin/python -c 'import boto3, pyrage, apprise'")
    assert box.sh("command -v apprise jp.py", check=False).returncode != 0, "only our command"


def test_an_archive_restores(box: Container) -> None:
    box.sh("systemctl stop writer.service")
    try:
        written = count(box, "m")
        # a run that began in a later second than this (run ids begin with their UTC start)
        # copied everything written; one in flight now might not have
        stopped = box.sh("date -u +%Y%m%dT%H%M%SZ").stdout.strip()

        def after_stop() -> list[dict[str, object]]:
            return [r for r in runs(box) if r["status"] == "ok" and str(r["id"])[:16] > stopped]

        box.wait("an ok run of everything written", lambda: bool(after_stop()))
        # The daemon runs every few seconds with keep_last = 2: left running, it would prune
        # the chosen run while the restore waits for the lock. An operator stops it too.
        box.sh(f"systemctl stop {UNIT}")
        run = after_stop()[0]
        # written after the backup: the restore must take it away again
        box.sh("python3 /root/influx.py write 'after v=1'")
        assert count(box, "after") == 1
        result = box.sh(f"influx-backupd restore {run['id']} --yes", check=False, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert box.sh("systemctl is-active influxdb.service").stdout.strip() == "active"
        assert count(box, "m") == written
        assert count(box, "after") == 0
    finally:
        box.sh(f"systemctl start writer.service {UNIT}")


# -- reload, priorities ----------------------------------------------------------------------------


def seconds_to_next_run(box: Container) -> float | None:
    """From the status line; None while a run is in flight (it shows the run instead)."""
    status = box.show(UNIT, "StatusText")["StatusText"]
    found = re.search(r"^idle; next: quick at (\S+ \S+)Z", status)
    if not found:
        return None
    when = datetime.fromisoformat(found.group(1)).replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


def hourly(box: Container) -> bool:
    left = seconds_to_next_run(box)
    return left is not None and left > 3000


def test_reload_applies_a_new_schedule_and_refuses_a_broken_one(box: Container) -> None:
    pid = main_pid(box)
    box.write("/etc/influx-backupd/config.toml", IDLE)
    box.sh(f"systemctl reload {UNIT}")
    box.wait("the hourly schedule", lambda: hourly(box))
    start = cursor(box)
    box.write("/etc/influx-backupd/config.toml", BROKEN)
    box.sh(f"systemctl reload {UNIT}")
    box.wait(
        "config.reload_failed",
        lambda: any(
            e.get("EVENT") == "config.reload_failed"
            for e in journal_since(box, start, f"_SYSTEMD_UNIT={UNIT}")
        ),
    )
    failed = next(
        e
        for e in journal_since(box, start, f"_SYSTEMD_UNIT={UNIT}")
        if e.get("EVENT") == "config.reload_failed"
    )
    assert "job[0].mode" in failed["MESSAGE"]
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "active"
    assert main_pid(box) == pid
    assert hourly(box)  # the old config stays
    # a storage dir moved into the unit's private /tmp: every backup would go at its stop
    start = cursor(box)
    box.write("/etc/influx-backupd/config.toml", IDLE.replace("/var/backups/", "/var/tmp/"))
    box.sh(f"systemctl reload {UNIT}")
    box.wait(
        "the private /tmp refused",
        lambda: any(
            e.get("EVENT") == "config.reload_failed" and "PrivateTmp=yes" in e.get("MESSAGE", "")
            for e in journal_since(box, start, f"_SYSTEMD_UNIT={UNIT}")
        ),
    )
    assert main_pid(box) == pid
    box.write("/etc/influx-backupd/config.toml", QUICK)
    box.sh(f"systemctl reload {UNIT}")
    box.wait("the 3 s schedule", lambda: (seconds_to_next_run(box) or 3600) < 10)


def test_daemon_runs_at_low_priority_and_influxd_at_normal(box: Container) -> None:
    daemon = main_pid(box)
    influxd = main_pid(box, "influxdb.service")
    assert box.sh(f"ps -o ni= -p {daemon}").stdout.strip() == "10"
    assert box.sh(f"ps -o ni= -p {influxd}").stdout.strip() == "0"


RUNUSER_INFLUXD = (
    'command = ["/usr/sbin/runuser", "-u", "influxdb", "--", '
    '"/usr/bin/influxd", "-config", "/etc/influxdb/influxdb.conf"]'
)


def test_an_influxd_the_daemon_starts_itself_outlives_the_daemon(box: Container) -> None:
    """[influxd] command under the unit. Before: the influxd the daemon started lived in the
    daemon's cgroup (as root) and `systemctl stop influx-backupd` SIGKILLed it (KillMode=mixed),
    with no crash marker; and a command dropping to the influxdb user failed inside the unit's
    sandbox ("runuser: cannot set groups") after influxd had been stopped."""
    box.sh("systemctl stop influxdb.service && touch /root/before-command")
    box.sh(
        "systemd-run --unit=byhand -p User=influxdb "
        "/usr/bin/influxd -config /etc/influxdb/influxdb.conf"
    )
    try:
        box.wait("influxd started by hand", lambda: count(box, "m") > 0)
        before = {str(r["id"]) for r in runs(box)}
        box.write(
            "/etc/influx-backupd/config.toml",
            QUICK.replace('service = "influxdb.service"', RUNUSER_INFLUXD),
        )
        box.sh(f"systemctl reload {UNIT}")
        box.wait(
            "an ok run with the command",
            lambda: any(r["status"] == "ok" for r in runs(box) if str(r["id"]) not in before),
            timeout=120,
        )
        # the conf is in both argvs (runuser's and influxd's): influxd is the one running as
        # influxdb; the wait lets a run that started meanwhile finish its start
        box.wait(
            "influxd answering after the runs",
            lambda: "influxdb" in box.sh("ps -o user= -C influxd", check=False).stdout,
        )
        box.write(
            "/etc/influx-backupd/config.toml",
            IDLE.replace('service = "influxdb.service"', RUNUSER_INFLUXD),
        )
        box.sh(f"systemctl reload {UNIT}")
        box.wait("the daemon idle", lambda: hourly(box))
        pid = box.sh("pgrep -x -u influxdb influxd").stdout.split()
        assert len(pid) == 1, pid
        cgroup = box.sh(f"cat /proc/{pid[0]}/cgroup").stdout
        assert "influx-backupd-influxd-" in cgroup and UNIT not in cgroup, cgroup
        assert box.sh(f"ps -o ni= -p {pid[0]}").stdout.strip() == "0"
        box.sh(f"systemctl stop {UNIT}")
        assert box.sh(f"kill -0 {pid[0]}", check=False).returncode == 0, "killed with the daemon"
        assert count(box, "m") > 0, "influxd answers after the daemon stopped"
        # nothing influxd wrote since belongs to root
        owned = box.sh(
            "find /var/lib/influxdb -newer /root/before-command ! -user influxdb -print"
        ).stdout.split()
        assert owned == [], owned
    finally:
        box.sh("pkill -TERM -x influxd; while pgrep -x influxd >/dev/null; do sleep 0.1; done")
        box.sh("systemctl reset-failed byhand.service", check=False)
        box.write("/etc/influx-backupd/config.toml", QUICK)
        # a failure above may have left files only root may open (influxd run as root): the
        # tests after this one need influxdb.service as it was, not this test's failure again
        box.sh("chown -R influxdb:influxdb /var/lib/influxdb")
        started = box.sh(
            f"systemctl start influxdb.service && systemctl restart {UNIT}", check=False
        )
        assert started.returncode == 0, f"{started.stderr}\n{box.journal_tail()}"


# -- stopping, killing, freezing -------------------------------------------------------------------


def test_stop_in_the_middle_of_a_cold_run_leaves_influxdb_active(box: Container) -> None:
    # ballast that influxd ignores, so that the copy takes seconds
    box.sh("fallocate -l 600M /var/lib/influxdb/meta/ballast")
    box.write("/etc/influx-backupd/config.toml", SLOW)
    box.sh(f"systemctl reload {UNIT}")
    run_id = mid_cold_run(box, f"systemctl stop {UNIT}")
    assert box.sh("systemctl is-active influxdb.service").stdout.strip() == "active"
    assert box.show(UNIT, "ActiveState", "Result") == {
        "ActiveState": "inactive",
        "Result": "success",
    }
    record = next(r for r in runs(box) if r["id"] == run_id)
    assert record["status"] == "ok", record


def test_stop_before_the_cold_runs_stop_returns_at_once_and_influxdb_is_untouched(
    box: Container,
) -> None:
    """Before: the run stopped influxdb after the daemon's own stop began; systemd queued that
    stop behind ours (After=influxdb.service), both waited stop_timeout (90 s), the daemon
    exited 0 and the queued stop then took influxdb down for good."""
    box.write("/root/silent.py", SILENT)
    box.write(
        "/etc/systemd/system/silent.service",
        "[Service]\nExecStart=/usr/bin/python3 /root/silent.py\n",
    )
    box.sh("systemctl daemon-reload && systemctl start silent.service")
    box.write("/etc/influx-backupd/config.toml", HUNG_START)
    before = box.show("influxdb.service", "InvocationID", "MainPID", "ActiveState")
    assert before["ActiveState"] == "active", before
    box.sh(f"systemctl restart {UNIT}")  # this config (the unit may run another)
    box.sh(
        f"""
for i in $(seq 600); do
    case $(systemctl show {UNIT} -p StatusText --value) in "running hung"*"phase policy"*)
        exit 0 ;;
    esac
    sleep 0.05
done
echo "no run of job hung seen in its policy phase" >&2; exit 1
""",
        timeout=120,
    )
    # stop_timeout is 90 s: a stop queued behind ours held this one that long
    box.sh(f"systemctl stop {UNIT}", timeout=60)
    assert box.show(UNIT, "ActiveState", "Result") == {
        "ActiveState": "inactive",
        "Result": "success",
    }
    assert box.show("influxdb.service", "InvocationID", "MainPID", "ActiveState") == before
    assert box.sh("systemctl list-jobs --no-legend").stdout.strip() == "", "a stop left queued"
    [record] = [r for r in runs(box) if r["job"] == "hung"]
    assert record["status"] == "interrupted", record
    assert "influxd was not stopped" in str(record["error"]), record
    box.sh("systemctl stop silent.service")
    box.write("/etc/influx-backupd/config.toml", SLOW)  # what the tests below expect


def test_kill_9_mid_run_is_recovered_by_systemds_restart(box: Container) -> None:
    box.sh(f"systemctl start {UNIT}")
    for _attempt in range(3):
        restarts = int(box.show(UNIT, "NRestarts")["NRestarts"])
        start = cursor(box)
        run_id = mid_cold_run(box, f"kill -9 $(systemctl show {UNIT} -p MainPID --value)")
        box.wait(
            "the restart",
            lambda: (
                int(box.show(UNIT, "NRestarts")["NRestarts"]) > restarts  # noqa: B023
                and box.show(UNIT, "ActiveState")["ActiveState"] == "active"
            ),
        )
        events = [e.get("EVENT") for e in journal_since(box, start, f"_SYSTEMD_UNIT={UNIT}")]
        # The copy can end between the status read and the kill (seen once in CI: the killed
        # run had logged influxd.starting, and the new daemon rightly found influxd running).
        # That kill did not land in the downtime: try again.
        recovered = [i for i, e in enumerate(events) if str(e).startswith("recovery.")]
        killed_run = events[: recovered[0]] if recovered else events
        if "influxd.starting" not in killed_run:
            break
    # The new daemon found the crash marker and started influxd before it said READY=1. Its own
    # lines only: the `daemon.ready` of the start before the cursor can reach the journal after
    # it (journald reads the stream on its own time; seen in CI).
    # Since ExecStopPost=, `recover` does it right after the kill, before the restart; either
    # way influxd runs before the new daemon's READY=1.
    pid = str(main_pid(box))
    order = [
        ("new" if e.get("_PID") == pid else "other", e.get("EVENT"))
        for e in journal_since(box, start, f"_SYSTEMD_UNIT={UNIT}")
    ]
    assert ("other", "recovery.influxd_started") in order, order
    assert ("new", "daemon.ready") in order, order
    assert order.index(("other", "recovery.influxd_started")) < order.index(
        ("new", "daemon.ready")
    ), order
    record = next(r for r in runs(box) if r["id"] == run_id)
    assert record["status"] == "interrupted", record
    # (its next cold run may have stopped influxd again by now: it starts it when done)
    box.wait(
        "influxdb active",
        lambda: (
            box.sh("systemctl is-active influxdb.service", check=False).stdout.strip() == "active"
        ),
    )


def test_kill_9_mid_run_then_a_stop_before_the_restart_leaves_influxdb_active(
    box: Container,
) -> None:
    """Audit P: the daemon killed while influxd was stopped, then `systemctl stop` within
    RestartSec: no restart, so no recovery; influxd stayed down. The unit's ExecStopPost=
    (`recover`) starts it."""
    for _attempt in range(3):
        box.sh(f"systemctl start {UNIT}")
        wait_active(box)
        start = cursor(box)
        mid_cold_run(
            box,
            f"kill -9 $(systemctl show {UNIT} -p MainPID --value); systemctl stop {UNIT}",
        )
        said = [e.get("MESSAGE", "") for e in journal_since(box, start, f"_SYSTEMD_UNIT={UNIT}")]
        if any(m.startswith("recovered: influxd, stopped by run ") for m in said):
            break  # else the copy ended between the status read and the kill: again
    else:
        raise AssertionError(f"no kill landed in the stop window: {said[-20:]}")
    # no wait: the stop returned after ExecStopPost= started influxdb
    assert box.sh("systemctl is-active influxdb.service", check=False).stdout.strip() == "active"
    assert box.show(UNIT, "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert box.sh("test -e /var/lib/influx-backupd/influxd-stopped.json", check=False).returncode
    box.sh(f"systemctl reset-failed {UNIT}", check=False)
    box.sh(f"systemctl start {UNIT}")
    wait_active(box)


def test_the_watchdog_restarts_a_frozen_daemon(box: Container) -> None:
    box.sh("rm -f /var/lib/influxdb/meta/ballast")
    box.write("/etc/influx-backupd/config.toml", IDLE)
    box.sh(f"systemctl reload {UNIT}")
    box.wait("the hourly schedule", lambda: hourly(box))
    pid = main_pid(box)
    start = cursor(box)
    box.sh(f"kill -STOP {pid}")
    box.wait(
        "a new daemon",
        lambda: (
            main_pid(box) not in (0, pid)
            and box.show(UNIT, "ActiveState")["ActiveState"] == "active"
        ),
        timeout=120,
    )
    messages = [e["MESSAGE"] for e in journal_since(box, start, "_PID=1", f"UNIT={UNIT}")]
    assert f"{UNIT}: Failed with result 'watchdog'." in messages, messages


def test_a_broken_config_at_start_leaves_the_unit_failed_not_restarting(box: Container) -> None:
    box.write("/etc/influx-backupd/config.toml", BROKEN)
    assert box.sh(f"systemctl restart {UNIT}", check=False).returncode != 0
    time.sleep(4)  # RestartSec=1s here: a restarting unit would have come back by now
    props = box.show(UNIT, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert props == {
        "ActiveState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "78",
        "NRestarts": "0",  # counted from the restart by hand, and none since
    }
    box.write("/etc/influx-backupd/config.toml", IDLE)
    box.sh(f"systemctl reset-failed {UNIT} && systemctl start {UNIT}")


def test_security_exposure_at_most_the_documented_figure(box: Container) -> None:
    for unit in (UNIT, "influx-backupd@main.service"):
        out = box.sh(f"systemd-analyze security --no-pager {unit}").stdout
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert found, out
        assert float(found.group(1)) <= EXPOSURE_LIMIT, out


# -- the template unit ------------------------------------------------------------------------------


def test_template_instances_each_with_own_config_and_state(box: Container) -> None:
    box.sh(f"systemctl stop {UNIT}")  # one daemon per influxd: the instances take over
    for name in ("alpha", "beta"):
        conf = (
            IDLE.replace("/var/backups/influxdb", f"/var/backups/influxdb/{name}")
            .replace("influx_backupd.prom", f"influx_backupd_{name}.prom")
            .replace('name = "quick"', f'name = "{name}job"')
        )
        box.write(f"/etc/influx-backupd/{name}.toml", conf)
        box.sh(f"systemctl start influx-backupd@{name}.service")
    for name in ("alpha", "beta"):
        unit = f"influx-backupd@{name}.service"
        props = box.show(unit, "ActiveState", "StatusText", "MainPID")
        assert props["ActiveState"] == "active", props
        assert props["StatusText"].startswith(f"idle; next: {name}job at "), props
        # no state_dir in its config: $STATE_DIRECTORY, /var/lib/influx-backupd/NAME
        state = box.json(f"cat /var/lib/influx-backupd/{name}/daemon.json")
        assert isinstance(state, dict) and state["pid"] == int(props["MainPID"])
        # by hand, the same config finds the same state: status sees its daemon, and a backup
        # lands in this instance's catalog only
        status = box.json(f"influx-backupd --config /etc/influx-backupd/{name}.toml status --json")
        assert isinstance(status, dict) and status["daemon"]["running"] is True, status
    box.sh(
        "influx-backupd --config /etc/influx-backupd/alpha.toml backup --no-progress", timeout=300
    )
    assert [r["job"] for r in runs(box, "/etc/influx-backupd/alpha.toml")] == ["alphajob"]
    assert runs(box, "/etc/influx-backupd/beta.toml") == []
    box.sh("ls /var/backups/influxdb/alpha/alphajob-*.tar")
    box.sh("systemctl reload influx-backupd@alpha.service influx-backupd@beta.service")
    box.sh("systemctl stop influx-backupd@alpha.service influx-backupd@beta.service")
    box.sh(f"systemctl start {UNIT}")


# -- upgrade and purge -------------------------------------------------------------------------------


def test_upgrade_to_a_newer_build_keeps_a_changed_config(
    box: Container, debs: dict[str, Path]
) -> None:
    before = box.sh("sha256sum /etc/influx-backupd/config.toml").stdout
    pid = main_pid(box)
    box.sh(f"dpkg -i /mnt/debs/newer/{debs['newer'].name}", timeout=300)
    assert box.sh("sha256sum /etc/influx-backupd/config.toml").stdout == before
    assert "+upgrade1" in box.sh("influx-backupd --version").stdout
    # the running daemon was restarted onto the new build
    wait_active(box)
    assert main_pid(box) != pid
    # Removed (config and the admin's enablement stay) and installed again: it runs again,
    # as after a boot; before, it stayed stopped while `systemctl is-enabled` said enabled.
    box.sh("dpkg -r influx-backupd", timeout=300)
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    box.sh(f"dpkg -i /mnt/debs/newer/{debs['newer'].name}", timeout=300)
    wait_active(box)


def test_an_upgrade_leaves_a_stopped_daemon_stopped_and_a_daemon_with_a_broken_config_running(
    box: Container, debs: dict[str, Path]
) -> None:
    """Before: an upgrade started every enabled unit that was not running (a daemon stopped
    for maintenance began a cold run at once), and restarted a daemon whose config had been
    edited into one that does not load: the unit failed (78), its reason only in the journal,
    dpkg said "Could not execute systemctl" and exited 0, and no backup ran any more."""
    deb = f"/mnt/debs/newer/{debs['newer'].name}"
    box.sh(f"systemctl stop {UNIT}")
    box.sh(f"dpkg -i {deb}", timeout=300)
    time.sleep(2)
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    box.sh(f"systemctl start {UNIT}")
    wait_active(box)
    good = box.sh("cat /etc/influx-backupd/config.toml").stdout
    pid = main_pid(box)
    box.write("/etc/influx-backupd/config.toml", BROKEN, mode=0o640)
    try:
        upgraded = box.sh(f"dpkg -i {deb} 2>&1", timeout=300).stdout
        said = [line for line in upgraded.splitlines() if "was not restarted" in line]
        assert len(said) == 1, upgraded
        assert f"WARNING: {UNIT} was not restarted onto the new version" in said[0]
        assert "mode" in said[0] and "lukewarm" in said[0], said
        assert "Could not execute" not in upgraded, upgraded
        assert box.show(UNIT, "ActiveState")["ActiveState"] == "active"
        assert main_pid(box) == pid, "the working daemon runs on"
    finally:
        box.write("/etc/influx-backupd/config.toml", good, mode=0o640)
    box.sh(f"systemctl restart {UNIT}")
    wait_active(box)


MARKER = "influxd-stopped.json"
# What purge leaves of the state: the crash markers, nothing else.
STATE_FILES = "find /var/lib/influx-backupd -type f 2>/dev/null | sort"
# Our enablement links (and any other link of our units) in /etc/systemd/system.
OUR_LINKS = "find /etc/systemd/system -type l -name 'influx-backupd*' | sort"


def test_purge_removes_state_and_keeps_the_backups(box: Container, debs: dict[str, Path]) -> None:
    # Stopped first: a run on a short schedule would prune while we look. Crash markers
    # are written below with no daemon running (a live one would act on them).
    box.sh(f"systemctl stop {UNIT}")
    state = box.sh("systemctl is-active influxdb.service", check=False).stdout.strip()
    assert state == "active", box.sh("journalctl -n 150 --no-pager", check=False).stdout
    archives = box.sh("find /var/backups/influxdb -name '*.tar' | sort").stdout.split()
    assert archives
    # What an admin adds that dpkg does not track: an instance enabled by hand (the main unit
    # was enabled so too), the instances' metrics files, the temp file of a killed writer.
    box.write("/etc/influx-backupd/alpha.toml", IDLE)  # kept as it is (not a conffile)
    box.sh("systemctl enable influx-backupd@alpha.service")
    box.sh("test -L /etc/systemd/system/multi-user.target.wants/influx-backupd@alpha.service")
    metrics = PROM.rsplit("/", 1)[0]
    box.sh(f"touch {metrics}/influx_backupd_alpha.prom {metrics}/.influx_backupd.prom.9.9.tmp")
    box.sh(f"touch {metrics}/other_exporter.prom")  # not ours: stays
    # Crash markers of runs killed with influxd down, in an instance's state dir and the main one.
    # gamma: a state dir whose config is gone (nothing can act on its marker)
    markers = [f"/var/lib/influx-backupd/{d}{MARKER}" for d in ("", "beta/", "gamma/")]
    box.sh("mkdir -p /var/lib/influx-backupd/beta /var/lib/influx-backupd/gamma")
    for marker in markers:
        box.write(marker, '{"run_id": "killed", "pid": 1, "written_at": 0}\n', mode=0o600)
    purged = box.sh("dpkg --purge influx-backupd 2>&1", timeout=300).stdout
    assert box.sh("find /var/backups/influxdb -name '*.tar' | sort").stdout.split() == archives
    for gone in (
        "/etc/influx-backupd/config.toml",
        PROM,
        f"{metrics}/influx_backupd_alpha.prom",
        f"{metrics}/.influx_backupd.prom.9.9.tmp",
        f"/lib/systemd/system/{UNIT}",
    ):
        assert box.sh(f"test -e {gone}", check=False).returncode != 0, gone
    box.sh(f"test -e {metrics}/other_exporter.prom && rm {metrics}/other_exporter.prom")
    assert box.show(UNIT, "LoadState")["LoadState"] == "not-found"
    assert box.sh("systemctl is-active influxdb.service").stdout.strip() == "active"
    # The markers of a config still there (main, beta): acted on at remove by the lock's
    # recovery, while the command is there (before: only said, with advice to run a command
    # the removal then took away). gamma's (no gamma.toml, no config kept in use): said at
    # remove and at purge, which keeps it and nothing else of the state.
    *recoverable, gamma = markers
    lines = [line for line in purged.splitlines() if "influx-backupd: WARNING" in line]
    for marker in recoverable:
        assert (
            f"influx-backupd: a killed run had left influxd stopped (crash marker {marker}): "
            '"influx-backupd recover" started it again before the removal'
        ) in purged, purged
        assert not [line for line in lines if f"crash marker {marker}" in line], purged
    said = [line for line in lines if f"crash marker {gamma}" in line]
    assert len(said) == 2, purged
    assert "systemctl start influxdb" in said[0] and "prune --dry-run" in said[0], said
    assert "kept by the purge" in said[1], said
    assert "--config /etc/influx-backupd/gamma.toml prune" in purged, purged
    assert box.sh(STATE_FILES).stdout.split() == [gamma]
    # No link of ours is left: installed again, the units are not enabled (README).
    assert box.sh(OUR_LINKS).stdout.split() == []
    box.sh(f"dpkg -i /mnt/debs/first/{debs['first'].name}", timeout=300)
    for unit in (UNIT, "influx-backupd@alpha.service"):
        enabled = box.sh(f"systemctl is-enabled {unit}", check=False).stdout.strip()
        assert enabled == "disabled", (unit, enabled)
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    # purged again, as this section leaves it; the marker (and influxd, never down) is ours
    box.sh("dpkg --purge influx-backupd", timeout=300)
    assert box.sh(STATE_FILES).stdout.split() == [gamma]
    box.sh("rm -rf /var/lib/influx-backupd")


def test_purge_keeps_backups_in_a_storage_dir_under_the_state_dir(
    box: Container, debs: dict[str, Path]
) -> None:
    """storage.dir = /var/lib/influx-backupd/archives (the one dir the unit always lets it
    write): check-config says so, and purge removes the catalog and the lock, never the archive
    or its record. Before, purge removed every file there but crash markers, without a word."""
    box.sh(f"dpkg -i /mnt/debs/first/{debs['first'].name}", timeout=300)
    box.write(
        "/etc/influx-backupd/config.toml",
        IDLE.replace("/var/backups/influxdb", "/var/lib/influx-backupd/archives"),
    )
    checked = box.sh("influx-backupd check-config").stdout
    assert "storage.dir: /var/lib/influx-backupd/archives is inside daemon.state_dir" in checked
    record = box.json("influx-backupd backup --json")
    assert record["status"] == "ok", record
    archive = str(record["archive"])
    box.sh("test -f /var/lib/influx-backupd/catalog.db")
    purged = box.sh("dpkg --purge influx-backupd 2>&1", timeout=300).stdout
    try:
        # (and the staging tree the job keeps in its storage dir)
        left = box.sh(f"{STATE_FILES} | grep -v /archives/.staging/").stdout.split()
        assert left == [archive, archive + ".json"], purged
        assert "influx-backupd: purge left in /var/lib/influx-backupd: archives/ (" in purged, (
            purged
        )
        assert box.sh("systemctl is-active influxdb.service").stdout.strip() == "active"
    finally:
        box.sh("rm -rf /var/lib/influx-backupd")


def test_lintian_has_no_errors_or_warnings(lintian: Lintian) -> None:
    """What remains is informational (packaging/deb/lintian-overrides says why for the rest).
    Last in the file: lintian has run beside the container tests since the boot."""
    returncode, stdout, stderr = lintian.result()
    assert returncode == 0, stdout + stderr
    tags = [line for line in stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert tags == []
