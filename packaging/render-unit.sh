#!/bin/sh
# Print a shipped unit as it is installed:
#
#   packaging/render-unit.sh UNIT_FILE BINDIR [SYSTEMD_VERSION]
#
# ExecStart names BINDIR/influx-backupd (/usr/bin for the .deb, /usr/local/bin for install.sh).
# On systemd >= 253, Type=notify becomes Type=notify-reload and ExecReload= goes: systemd then
# sends SIGHUP itself and `systemctl reload` returns once the daemon says READY=1 again.
# SYSTEMD_VERSION defaults to the version of this host's systemctl (0 when there is none).
set -eu
[ $# -ge 2 ] || { echo "usage: render-unit.sh UNIT_FILE BINDIR [SYSTEMD_VERSION]" >&2; exit 2; }
unit=$1
bindir=${2%/}
version=${3:-$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }')}
case ${version:-0} in *[!0-9]*) version=0 ;; esac
if [ "${version:-0}" -ge 253 ]; then
    sed -e "s|^ExecStart=/usr/bin/influx-backupd |ExecStart=$bindir/influx-backupd |" \
        -e 's|^Type=notify$|Type=notify-reload|' -e '/^ExecReload=/d' "$unit"
else
    sed -e "s|^ExecStart=/usr/bin/influx-backupd |ExecStart=$bindir/influx-backupd |" "$unit"
fi
