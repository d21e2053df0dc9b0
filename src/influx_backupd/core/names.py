"""What a job's name may be: it names archives, records, metrics labels and log fields, so the
config and every record read back (the catalog, a sidecar) hold it to the same rule."""

from __future__ import annotations

import re

JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
JOB_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter/digit"

# A backup's id (new_run_id: 20261126T122754Z-3f9a; an imported one may differ): it names files,
# object keys and catalog rows, so one read back from outside is held to this
BACKUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}\Z")
BACKUP_ID_RULE = "1-128 letters, digits, '.', '_', ':', '+' or '-', starting with a letter/digit"

# A backup's file or dir name in the storage dir, as a record from outside (a bucket's manifest)
# may give it: one path element of ours, never a hidden one (.partial, .verify-… are the tool's)
FILE_NAME = re.compile(r"^[A-Za-z0-9_+:-][A-Za-z0-9_.+:-]{0,254}\Z")
FILE_NAME_RULE = "1-255 letters, digits, '.', '_', '+', ':' or '-', not starting with '.'"

# A database or retention policy name as influxd takes it (its meta.ValidName): one path element
# under data/ and wal/. A name read from a backup's manifest is held to this before any path or
# query is made of it.
INFLUX_NAME_RULE = "a name influxd takes: not empty, not '.' or '..', no '/', '\\' or NUL"


def influx_name_ok(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and not set(name) & set("/\\\0")
