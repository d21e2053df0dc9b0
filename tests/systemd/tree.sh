#!/bin/sh
# Prints the path of a Debian 12 tree that boots under systemd-nspawn with systemd as PID 1,
# Debian's influxdb enabled, and everything the .deb depends on; builds it once (debootstrap
# from deb.debian.org) and caches it, keyed by a hash of this script (the package list is in it).
#
#   tests/systemd/tree.sh            # prints /var/cache/influx-backupd-test/bookworm-HASH
#
# The tree is only ever booted with `systemd-nspawn -x` (a throwaway copy), so it stays clean.
set -eu
CACHE=${INFLUX_BACKUPD_TEST_CACHE:-/var/cache/influx-backupd-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# systemd-sysv: systemd as /sbin/init; procps: /bin/kill (ExecReload); the rest: the .deb's
# Depends (python3) and the server it backs up.
PACKAGES=systemd,systemd-sysv,dbus,procps,python3,influxdb

key=$(cat "$0" | sha256sum | cut -c1-12)
tree=$CACHE/bookworm-$key
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -e "$tree/.complete" ]; then
    echo "$tree"
    exit 0
fi
for tool in debootstrap systemd-nspawn; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "tree.sh: $tool is missing (apt-get install debootstrap systemd-container)" >&2
        exit 1
    }
done
rm -rf "$tree.tmp"
start=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$tree.tmp" "$MIRROR" \
    >"$CACHE/debootstrap-$key.log" 2>&1 || {
    echo "tree.sh: debootstrap failed, see $CACHE/debootstrap-$key.log" >&2
    tail -5 "$CACHE/debootstrap-$key.log" >&2
    exit 1
}
echo influx-test >"$tree.tmp/etc/hostname"
# Boot to multi-user quickly: no getty on the container's console. The container has only
# loopback (--private-network): nothing to wait for, network-online.target is reached at once.
chroot "$tree.tmp" systemctl mask console-getty.service getty@.service \
    systemd-networkd-wait-online.service >/dev/null 2>&1 || true
chroot "$tree.tmp" systemctl enable influxdb.service >/dev/null 2>&1
chroot "$tree.tmp" apt-get clean
rm -f "$tree.tmp/etc/machine-id"
echo "$(($(date +%s) - start))" >"$tree.tmp/.build_seconds"
touch "$tree.tmp/.complete"
# Older trees of other keys are of no use any more.
find "$CACHE" -mindepth 1 -maxdepth 1 -type d -name 'bookworm-*' ! -name "bookworm-$key*" \
    -exec rm -rf {} +
mv "$tree.tmp" "$tree"
echo "$tree"
