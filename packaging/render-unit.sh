#!/bin/sh
# Print a shipped unit as it is installed:
#
#   packaging/render-unit.sh UNIT_FILE BINDIR [SYSTEMD_VERSION]
#
# ExecStart names BINDIR/influx-backupd (/usr/bin for the .deb, /usr/local/bin for install.sh).
# On systemd >= 253, Type=notify becomes Type=notify-reload and ExecReload= goes: systemd then
# sends SIGHUP itself and `systemctl reload` returns once the daemon says READY=1 again.
# SYSTEMD_VERSION defaults to the version of this host's systemctl (0 when there is none).
# Bad input (exit 2) and a unit without our ExecStart= line (exit 1) print one line and nothing
# else: a caller's redirect gets no half-rendered unit.
set -eu
# The character classes below mean ASCII, whatever the caller's locale.
LC_ALL=C
export LC_ALL
usage() {
    printf 'render-unit.sh: %s\n' "$1" >&2
    exit 2
}
[ $# -ge 2 ] && [ $# -le 3 ] || usage "usage: render-unit.sh UNIT_FILE BINDIR [SYSTEMD_VERSION] (got $# arguments)"
unit=$1
[ -f "$unit" ] && [ -r "$unit" ] || usage "UNIT_FILE '$unit' is not a readable file"
bindir=$2
[ "$bindir" = / ] || bindir=${bindir%/}
# BINDIR goes into ExecStart= (systemd expands % specifiers, $VARS, quotes and backslashes, and
# splits at whitespace) and into a sed replacement (& and the | delimiter): only plain path
# characters, absolute, normalized (systemd refuses . and .. components).
case $bindir in
    /*) ;;
    *) usage "BINDIR '$2' must be an absolute path" ;;
esac
case $bindir in
    *[!A-Za-z0-9/._+@-]*) usage "BINDIR '$2' may hold only letters, digits and / . _ + @ - (no spaces)" ;;
    *//* | */./* | */../* | */. | */.. | ?*/) usage "BINDIR '$2' must be a normalized path (no //, . or ..)" ;;
esac
[ "$bindir" != / ] || bindir=
if [ $# -ge 3 ] && [ -n "$3" ]; then
    # systemd versions are plain integers (252, 253, ...); more than 4 digits is a mistake, and
    # the shell's test cannot compare numbers past its integer size.
    case $3 in
        *[!0-9]* | ?????*) usage "SYSTEMD_VERSION '$3' must be a plain integer of at most 4 digits" ;;
    esac
    version=$3
else
    version=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }')
    case $version in '' | *[!0-9]* | ?????*) version=0 ;; esac
fi
grep -q '^ExecStart=/usr/bin/influx-backupd ' "$unit" || {
    printf 'render-unit.sh: %s has no line "ExecStart=/usr/bin/influx-backupd ...": not an influx-backupd unit\n' "$unit" >&2
    exit 1
}
# leading zeros: read as decimal
version=$(printf '%s' "$version" | sed 's/^0*\(.\)/\1/')
if [ "$version" -ge 253 ]; then
    sed -e "s|^ExecStart=/usr/bin/influx-backupd |ExecStart=$bindir/influx-backupd |" \
        -e "s|^ExecStopPost=-/usr/bin/influx-backupd |ExecStopPost=-$bindir/influx-backupd |" \
        -e 's|^Type=notify$|Type=notify-reload|' -e '/^ExecReload=/d' "$unit"
else
    sed -e "s|^ExecStart=/usr/bin/influx-backupd |ExecStart=$bindir/influx-backupd |" \
        -e "s|^ExecStopPost=-/usr/bin/influx-backupd |ExecStopPost=-$bindir/influx-backupd |" "$unit"
fi
