#!/bin/sh
# Install influx-backupd from a checkout: a venv in /opt/influx-backupd, a command link in
# /usr/local/bin, the systemd units, a first config and the backup directory. For hosts
# without dpkg; on Debian and Ubuntu, build and install the package (scripts/build-deb.sh).
#
#   sudo packaging/install.sh [--dry-run] [--enable] [--skip-venv] [CHECKOUT]
#
# CHECKOUT defaults to the directory above this script. An existing
# /etc/influx-backupd/config.toml is never touched.
#
# INSTALL_ROOT=/some/dir puts every file under that prefix (like DESTDIR) and skips
# systemctl; it is meant for tests and staging. A venv created under it records its
# absolute path in its scripts, so it is not relocatable to /.
# PYTHON selects the interpreter for the venv (default python3, must be >= 3.11).
# A mistake in the arguments (unknown option, a CHECKOUT that is no checkout, a bad
# SYSTEMD_VERSION) exits 2 with one line, before anything is changed.
set -eu
# Whatever the caller's umask: a root daemon reads the config (hooks and `command` run as root)
# and runs the venv, so nothing made here may be group- or world-writable. Private files and
# dirs get their modes explicitly below (as the .deb: config.toml 0640, state and backups 0700).
umask 022

PREFIX=/opt/influx-backupd
BIN_LINK=/usr/local/bin/influx-backupd
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/influx-backupd
BACKUP_DIR=/var/backups/influxdb
STATE_DIR=/var/lib/influx-backupd
METRICS_DIR=/var/lib/prometheus/node-exporter
UNITS="influx-backupd.service influx-backupd@.service"

usage() {
    cat <<'EOF'
usage: install.sh [--dry-run] [--enable] [--skip-venv] [CHECKOUT]
  --dry-run    print what would be done, change nothing
  --enable     also run: systemctl enable --now influx-backupd.service
  --skip-venv  keep the existing venv in /opt/influx-backupd (units and config only)
EOF
}

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

# A mistake in what the caller gave: exit 2 (usage), like the command itself.
usage_error() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 2
}

DRY_RUN=0
ENABLE=0
SKIP_VENV=0
SRC=
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --enable) ENABLE=1 ;;
        --skip-venv) SKIP_VENV=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; [ $# -le 1 ] || usage_error "one CHECKOUT only, got '$*'"; SRC=${1:-$SRC}; break ;;
        -*) usage_error "unknown option '$1' (see --help)" ;;
        *)
            [ -z "$SRC" ] || usage_error "one CHECKOUT only, got '$SRC' and '$1'"
            SRC=$1
            ;;
    esac
    shift
done

[ -n "$SRC" ] || SRC=$(dirname -- "$0")/..
GIVEN=$SRC
SRC=$(CDPATH='' cd -- "$GIVEN" 2>/dev/null && pwd) || usage_error "no such directory: '$GIVEN'"
ROOT=${INSTALL_ROOT:-}
ROOT=${ROOT%/}
PYTHON=${PYTHON:-python3}

# Check everything before changing anything.
for f in pyproject.toml config.example.toml packaging/influx-backupd.service \
    packaging/influx-backupd@.service packaging/render-unit.sh; do
    [ -f "$SRC/$f" ] || usage_error "missing $SRC/$f (is '$GIVEN' an influx-backupd checkout?)"
done
# A SYSTEMD_VERSION given is valid (render-unit.sh says what is wrong in one line); without
# one, render-unit.sh asks this host's systemctl, which cannot be wrong.
if [ -n "${SYSTEMD_VERSION:-}" ]; then
    for unit in $UNITS; do
        sh "$SRC/packaging/render-unit.sh" "$SRC/packaging/$unit" "$(dirname "$BIN_LINK")" \
            "$SYSTEMD_VERSION" >/dev/null || exit $?
    done
fi
if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "must run as root (or try --dry-run)"
fi
if [ "$SKIP_VENV" = 0 ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        usage_error "PYTHON=$PYTHON is missing or older than 3.11 (set PYTHON=...)"
fi

# Show each step; run it unless --dry-run.
run() {
    printf '+ %s\n' "$*"
    [ "$DRY_RUN" = 1 ] || "$@"
}

if [ "$SKIP_VENV" = 0 ]; then
    run "$PYTHON" -m venv "$ROOT$PREFIX"
    # A local directory is always rebuilt, so re-running the script upgrades in place.
    run "$ROOT$PREFIX/bin/pip" install --upgrade "$SRC"
fi
# The link names the final path, not the one under INSTALL_ROOT.
run mkdir -p "$ROOT$(dirname "$BIN_LINK")"
run ln -sfn "$PREFIX/bin/influx-backupd" "$ROOT$BIN_LINK"

run mkdir -p "$ROOT$UNIT_DIR"
# ExecStart names the link above; Type=notify-reload on systemd >= 253 (SYSTEMD_VERSION=N
# overrides the version of this host's systemctl).
for unit in $UNITS; do
    printf '+ render-unit.sh %s > %s\n' "$unit" "$ROOT$UNIT_DIR/$unit"
    if [ "$DRY_RUN" = 0 ]; then
        # through a temp file: a unit is replaced whole or not at all
        sh "$SRC/packaging/render-unit.sh" "$SRC/packaging/$unit" "$(dirname "$BIN_LINK")" \
            ${SYSTEMD_VERSION:+"$SYSTEMD_VERSION"} >"$ROOT$UNIT_DIR/.$unit.tmp"
        chmod 0644 "$ROOT$UNIT_DIR/.$unit.tmp"
        mv -f "$ROOT$UNIT_DIR/.$unit.tmp" "$ROOT$UNIT_DIR/$unit"
    fi
done

run mkdir -p "$ROOT$CONF_DIR"
if [ -e "$ROOT$CONF_DIR/config.toml" ] || [ -L "$ROOT$CONF_DIR/config.toml" ]; then
    printf '= keeping existing %s\n' "$ROOT$CONF_DIR/config.toml"
else
    # It may hold InfluxDB credentials: 0640 from the start, as the .deb ships it.
    run install -m 0640 "$SRC/config.example.toml" "$ROOT$CONF_DIR/config.toml"
fi

# State (catalog, lock) and backups are a full copy of the database: root only (as the
# .deb's postinst; an existing dir is set to 0700 too).
run install -d -m 0700 "$ROOT$STATE_DIR" "$ROOT$BACKUP_DIR"
# The shipped config's metrics_file: node_exporter's textfile dir (the unit may write there).
run mkdir -p "$ROOT$METRICS_DIR"

if [ -n "$ROOT" ]; then
    printf '= INSTALL_ROOT is set: not running systemctl\n'
    exit 0
fi
run systemctl daemon-reload
if [ "$ENABLE" = 1 ]; then
    run systemctl enable --now influx-backupd.service
else
    printf '\nEdit %s, then start the daemon with:\n  systemctl enable --now influx-backupd.service\n' \
        "$CONF_DIR/config.toml"
fi
