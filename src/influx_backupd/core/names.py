"""What a job's name may be: it names archives, records, metrics labels and log fields, so the
config and every record read back (the catalog, a sidecar) hold it to the same rule."""

from __future__ import annotations

import re

JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
JOB_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter/digit"
