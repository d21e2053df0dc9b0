"""The open-file limit an influxd we start gets: a server's, not ours.

A child inherits its parent's RLIMIT_NOFILE. influxd keeps a descriptor per TSM file, WAL
segment and index file of every shard: a few hundred shards outgrow a login shell's or a
systemd unit's default soft limit of 1024 (or whatever the caller was given), and influxd then
fails to accept connections and to open shards, serving less, or not answering at all (seen
with `prlimit --nofile=64`: a restore rolled back, then every start of the old dirs failed).
Debian's influxdb.service gives it LimitNOFILE=65536; so do we, to every influxd we start
(the live server, a throwaway, the backup and restore tools). RLIMIT_NOFILE is per process,
so ours is raised around the fork and put back after: raising a soft limit harms nothing here,
and nothing of ours opens files by the thousand meanwhile.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator

INFLUXD_NOFILE = 65536  # Debian's influxdb.service: LimitNOFILE=65536


def server_nofile(soft: int, hard: int) -> tuple[int, int]:
    """The limits to fork influxd with from ours: at least INFLUXD_NOFILE, as the hard limit
    allows (raising it needs CAP_SYS_RESOURCE: tried by the caller first)."""
    want = max(soft, INFLUXD_NOFILE) if soft != resource.RLIM_INFINITY else soft
    top = want if hard == resource.RLIM_INFINITY else max(hard, want)
    return want, top


@contextlib.contextmanager
def server_limits() -> Iterator[None]:
    """Processes forked inside get a server's open-file limit (see the top); ours after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want, top = server_nofile(soft, hard)
    raised = False
    for limits in ((want, top), (hard if hard != resource.RLIM_INFINITY else want, hard)):
        if limits[0] <= soft:
            break  # ours already as high as this try would make it
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        except (ValueError, OSError):  # no privilege to raise the hard limit; above nr_open
            continue
        raised = True
        break
    try:
        yield
    finally:
        if raised:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
