#!/bin/sh
# Build the Debian package: influx-backupd_VERSION_ARCH.deb with its own venv in
# /opt/influx-backupd (made with Debian's /usr/bin/python3, from wheels), the systemd units,
# /etc/influx-backupd/config.toml as a conffile, /usr/bin/influx-backupd, a man page and
# bash/zsh completion generated from the argparse parser, and in /usr/share/influx-backupd the
# Prometheus alert rules and the config's JSON Schema (files to use, not docs: uncompressed, and
# kept where dpkg's path-exclude of /usr/share/doc, common in containers, cannot drop them).
#
#   scripts/build-deb.sh [--out DIR] [--version-suffix SUFFIX] [--systemd-version N]
#
# --out             where the .deb goes (default: dist/)
# --version-suffix  appended to the version, the package's too (e.g. +test2, for an upgrade test)
# --systemd-version the target's systemd: >= 253 ships Type=notify-reload (default: this host's)
# WHEELS=DIR        take wheels from DIR only (no index), e.g. for an offline rebuild
set -eu
# A package is built the same whatever the caller's umask (a private 077 would ship unreadable files).
umask 022
# The build's Pythons see only their own venvs (a PYTHONPATH to a checkout would make pip take
# the package as installed already and leave it out of the venv).
unset PYTHONPATH PYTHONHOME PYTHONUSERBASE VIRTUAL_ENV
export PYTHONNOUSERSITE=1
cd "$(dirname "$0")/.."
SRC=$(pwd)
PY=/usr/bin/python3
OUT=$SRC/dist
SUFFIX=
SYSTEMD_VERSION=
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=$2; shift ;;
        --version-suffix) SUFFIX=$2; shift ;;
        --systemd-version) SYSTEMD_VERSION=$2; shift ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
# A bad --systemd-version is told now (one line, exit 2), not after the wheels are built.
for unit in influx-backupd.service influx-backupd@.service; do
    sh packaging/render-unit.sh "packaging/$unit" /usr/bin ${SYSTEMD_VERSION:+"$SYSTEMD_VERSION"} \
        >/dev/null || exit $?
done
for tool in dpkg-deb fakeroot; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build-deb.sh: $tool is missing (apt-get install dpkg-dev fakeroot)" >&2
        exit 1
    }
done
"$PY" -c 'import ensurepip, venv' 2>/dev/null || {
    echo "build-deb.sh: $PY cannot make venvs (apt-get install python3-venv)" >&2
    exit 1
}
# The one version string: src/influx_backupd/__init__.py (pyproject.toml reads it too).
VERSION=$("$PY" -c 'import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
print(next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
           and getattr(n.targets[0], "id", "") == "__version__"))' src/influx_backupd/__init__.py)
VERSION=$VERSION$SUFFIX
ARCH=$(dpkg --print-architecture)
MAINTAINER=$(sed -n 's/^Maintainer: //p' packaging/deb/control.in)
PREFIX=/opt/influx-backupd

BUILD=$(mktemp -d "${TMPDIR:-/tmp}/influx-backupd-deb.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
ROOT=$BUILD/root

# 1. Wheels of the package and its dependencies. A copy of the source: the build writes
#    egg-info and build/ next to it.
mkdir -p "$BUILD/src" "$BUILD/wheels"
# Off-site copies (boto3, pyrage) and notifications (apprise) ship in the package: an operator
# who installs it needs nothing from pip to use [offsite] or [notify].
EXTRAS="[s3,notify]"
# (not the checkout's __pycache__: test.sh compiles src, and nothing compiled here is shipped)
tar -c --exclude=__pycache__ pyproject.toml README.md src | tar -x -C "$BUILD/src"
# A suffix makes a different version: the package says so too (a PEP 440 local version).
sed -i "s/^__version__ = .*/__version__ = \"$VERSION\"/" "$BUILD/src/src/influx_backupd/__init__.py"
"$PY" -m venv "$BUILD/tools"
if [ -n "${WHEELS:-}" ]; then
    "$BUILD/tools/bin/pip" wheel -q --no-index --find-links "$WHEELS" -w "$BUILD/wheels" "$BUILD/src$EXTRAS"
else
    "$BUILD/tools/bin/pip" wheel -q --disable-pip-version-check -w "$BUILD/wheels" "$BUILD/src$EXTRAS"
fi

# 2. The venv, where it will live, then made relocatable to $PREFIX: only the scripts'
#    shebangs name its path (activate scripts are of no use to a service: dropped).
"$PY" -m venv --without-pip "$ROOT$PREFIX"
"$BUILD/tools/bin/pip" --python "$ROOT$PREFIX/bin/python" install -q --no-compile \
    --disable-pip-version-check --no-index --find-links "$BUILD/wheels" "influx-backupd$EXTRAS"
# Of no use to a service: activate scripts, the empty include/ and the lib64 link.
rm -rf "$ROOT$PREFIX"/bin/activate* "$ROOT$PREFIX"/bin/Activate.ps1 "$ROOT$PREFIX/include" \
    "$ROOT$PREFIX/lib64"
# Nor the command-line tools the dependencies bring (apprise, jp.py, …): only ours is shipped.
find "$ROOT$PREFIX/bin" -maxdepth 1 -type f ! -name influx-backupd ! -name 'python*' -delete
# Debian ships shared objects stripped.
find "$ROOT$PREFIX" -name '*.so' -exec strip --strip-unneeded --remove-section=.comment \
    --remove-section=.note {} +
sed -i "s|$ROOT$PREFIX|$PREFIX|g" "$ROOT$PREFIX/pyvenv.cfg"
for f in "$ROOT$PREFIX"/bin/*; do
    [ -L "$f" ] && continue
    sed -i "1s|^#!$ROOT$PREFIX/bin/python.*|#!$PREFIX/bin/python|" "$f"
done
# pip records where each wheel came from; the build dir means nothing on the target.
find "$ROOT$PREFIX" -name direct_url.json -delete
sed -i '/^\(influx_backupd\|influx_backupd-.*\)\/__pycache__/d' "$ROOT$PREFIX"/lib/python3*/site-packages/*.dist-info/RECORD
if grep -rlI "$BUILD" "$ROOT$PREFIX" >/dev/null; then
    echo "build-deb.sh: the venv still names the build dir:" >&2
    grep -rlI "$BUILD" "$ROOT$PREFIX" >&2
    exit 1
fi
"$ROOT$PREFIX/bin/python" -c 'import influx_backupd, apscheduler, psutil, pydantic, structlog'

# 3. The command, the units, the config, docs, man page and completions.
mkdir -p "$ROOT/usr/bin"
ln -s "$PREFIX/bin/influx-backupd" "$ROOT/usr/bin/influx-backupd"
mkdir -p "$ROOT/lib/systemd/system"
for unit in influx-backupd.service influx-backupd@.service; do
    sh packaging/render-unit.sh "packaging/$unit" /usr/bin ${SYSTEMD_VERSION:+"$SYSTEMD_VERSION"} \
        >"$ROOT/lib/systemd/system/$unit"
done
install -d -m 0755 "$ROOT/etc/influx-backupd"
install -m 0640 config.example.toml "$ROOT/etc/influx-backupd/config.toml"

DOC=$ROOT/usr/share/doc/influx-backupd
install -d "$DOC" "$ROOT/usr/share/man/man1" "$ROOT/usr/share/bash-completion/completions" \
    "$ROOT/usr/share/zsh/vendor-completions"
install -m 0644 packaging/deb/copyright "$DOC/copyright"
# every doc the README points to: an operator of the package has no checkout
for f in README.md docs/daemon.md docs/operations.md docs/offsite.md docs/performance.md \
    docs/reliability.md; do
    gzip -9n <"$f" >"$DOC/$(basename "$f").gz"
done
install -m 0644 config.example.toml "$DOC/"
DATE=$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")
printf 'influx-backupd (%s) unstable; urgency=medium\n\n  * Built from the upstream source, see README.md.gz.\n\n -- %s  %s\n' \
    "$VERSION" "$MAINTAINER" "$DATE" | gzip -9n >"$DOC/changelog.gz"

PYTHONPATH=$ROOT$PREFIX/lib/$(basename "$ROOT$PREFIX"/lib/python3*)/site-packages \
    "$PY" scripts/cli_docs.py "$BUILD/cli"
gzip -9n <"$BUILD/cli/influx-backupd.1" >"$ROOT/usr/share/man/man1/influx-backupd.1.gz"
install -m 0644 "$BUILD/cli/influx-backupd.bash" \
    "$ROOT/usr/share/bash-completion/completions/influx-backupd"
install -m 0644 "$BUILD/cli/_influx-backupd" "$ROOT/usr/share/zsh/vendor-completions/_influx-backupd"
# Read by Prometheus (rule_files), Grafana (dashboard provisioning) and editors (`#:schema` in
# the config) where they lie: as they are, outside /usr/share/doc (which images often strip).
install -d "$ROOT/usr/share/influx-backupd"
install -m 0644 packaging/prometheus-alerts.yml packaging/config.schema.json \
    packaging/grafana-dashboard.json "$ROOT/usr/share/influx-backupd/"
install -d "$ROOT/usr/share/lintian/overrides"
install -m 0644 packaging/deb/lintian-overrides "$ROOT/usr/share/lintian/overrides/influx-backupd"

# 4. Control files. Everything under /etc is a conffile: dpkg keeps an edited one on upgrade.
install -d -m 0755 "$ROOT/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/deb/$script" "$ROOT/DEBIAN/$script"
done
(cd "$ROOT" && find etc -type f | sed 's|^|/|') >"$ROOT/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
# The venv is tied to the minor version of the python3 it was made with.
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYNEXT=$("$PY" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
# Units rendered for Type=notify-reload need a systemd that knows it.
DEPENDS=
if grep -q '^Type=notify-reload$' "$ROOT/lib/systemd/system/influx-backupd.service"; then
    DEPENDS=", systemd (>= 253)"
fi
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    -e "/^Depends: /s/\$/$DEPENDS/" -e "s/@PY@/$PYVER/" -e "s/@PYNEXT@/$PYNEXT/" \
    packaging/deb/control.in >"$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
    xargs md5sum) >"$ROOT/DEBIAN/md5sums"
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/conffiles" "$ROOT/DEBIAN/md5sums"

mkdir -p "$OUT"
DEB=$OUT/influx-backupd_${VERSION}_$ARCH.deb
fakeroot sh -c "chown -R 0:0 '$ROOT' && dpkg-deb --build -Zxz '$ROOT' '$DEB'" >/dev/null
echo "$DEB"
