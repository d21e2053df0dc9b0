#!/bin/sh
# Installs what influx-backupd, its demo and its tests need on a fresh Debian machine:
# InfluxDB (Debian's influxdb package, 1.6) when influxd is missing, systemd-analyze for the
# unit checks, and the package itself with its test dependencies. Idempotent.
set -eu
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=""
command -v influxd >/dev/null 2>&1 || [ -x /usr/bin/influxd ] || missing="$missing influxdb"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v tar >/dev/null 2>&1 || missing="$missing tar"
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
