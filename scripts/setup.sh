#!/bin/sh
# Installs what influx-backupd, its demo and its tests need on a fresh Debian machine:
# InfluxDB (Debian's influxdb package, 1.6) when influxd is missing, systemd-analyze for the
# unit checks, what the .deb build and the systemd tests need, promtool (Debian's prometheus
# package) and prometheus-node-exporter for the metrics and alert-rule checks, and the package
# itself with its test dependencies. Idempotent.
set -eu
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=""
command -v influxd >/dev/null 2>&1 || [ -x /usr/bin/influxd ] || missing="$missing influxdb"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v tar >/dev/null 2>&1 || missing="$missing tar"
# The Debian package (scripts/build-deb.sh) and the tests under a real systemd (tests/systemd:
# a debootstrapped Debian 12 booted by systemd-nspawn).
command -v fakeroot >/dev/null 2>&1 || missing="$missing fakeroot"
command -v strip >/dev/null 2>&1 || missing="$missing binutils"
command -v dpkg-architecture >/dev/null 2>&1 || missing="$missing dpkg-dev"
command -v lintian >/dev/null 2>&1 || missing="$missing lintian"
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || missing="$missing python3-venv"
command -v systemd-nspawn >/dev/null 2>&1 || missing="$missing systemd-container"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
# the real textfile collector, scraped by the metrics tests (several instances' files in one dir)
[ -x /usr/bin/prometheus-node-exporter ] || missing="$missing prometheus-node-exporter"
# the off-site tests decrypt with the age command-line tool
command -v age >/dev/null 2>&1 || missing="$missing age"
# a daemon whose wall clock is stepped back (tests/system/test_daemon_clock.py): libfaketime
command -v faketime >/dev/null 2>&1 || missing="$missing faketime"
if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing" >&2
    $SUDO apt-get update -qq
    # policy-rc.d keeps the package from starting the system influxd: we never use it.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
    | grep -v -e 'Running pip as the .root. user' -e '^WARNING: Location' >&2 || true
"$PYTHON" -c 'import influx_backupd, apscheduler, psutil, pydantic, structlog' \
    || { echo "setup: the Python install failed" >&2; exit 1; }
