"""Off-site errors: each is one line (what, where), never holding a secret."""

from __future__ import annotations

from typing import Literal

from influx_backupd.core.errors import EXIT_CONFIG, BackupdError


class OffsiteError(BackupdError):
    """An off-site step failed; str() is the one line to show."""

    code = "offsite"
    label = "offsite"


class OffsiteMisconfigured(OffsiteError):
    """The [offsite] section does not fit what the bucket holds (encrypted backups and no
    identity_file, an identity_file that does not read): the config must change first."""

    exit_status = EXIT_CONFIG


class PrefixTaken(OffsiteMisconfigured):
    """The prefix is written by another host (or config): this one neither writes nor prunes
    there until given a prefix of its own, or told to take this one over (--adopt)."""


class Unreachable(OffsiteError):
    """The endpoint does not answer (closed port, DNS, timeouts after retries)."""


class Stalled(Unreachable):
    """A request made no progress for [offsite] stall_after: given up, left to end on its own."""


class Refused(OffsiteError):
    """The store refused the credentials or the request (403, bad key, bad signature)."""


class NoBucket(OffsiteError):
    """The bucket does not exist."""


class IntegrityError(OffsiteError):
    """What came back from the bucket is not what the manifest says."""


class BadManifest(IntegrityError):
    """A manifest in the bucket that this tool cannot have written as it is (damaged, cut
    short, too large, a field out of shape, stored under another backup's name): skipped by
    what lists backups, never acted on."""


class NotOurs(OffsiteError):
    """Encrypted to none of the identity_file's keys: a wrong identity, or another's file."""


class NoIdentity(NotOurs, OffsiteMisconfigured):
    """Encrypted, and no identity_file is set: a manifest of backups sent before encryption was
    turned off, or one planted. Passed over like one of other keys where many are read (a
    single such object must not stop every listing of a plain prefix); asked for by itself, or
    when nothing else reads, the config must change (78)."""


class Damaged(OffsiteError):
    """The local backup is not what its record says: it is not sent (the others are)."""


class NotFound(OffsiteError):
    """A backup (manifest) or object is not in the bucket."""


class AlreadyThere(OffsiteError):
    """A PUT made only if nothing is at its key (If-None-Match: *) found something there (412)."""


class NoSuchBackup(NotFound):
    """The backup the command line names is not in the bucket (a usage error there)."""


class MissingExtra(OffsiteError):
    """boto3 or pyrage is not installed."""

    def __init__(self, module: str) -> None:
        super().__init__(
            f"off-site copies need {module}: pip install 'influx-backupd[s3]' (boto3, pyrage)"
        )


# What the off-site copy fails on now, as the metrics name it (influx_backupd_offsite_failing's
# reason label): prefix_taken, another writer holds the prefix (`offsite sync --adopt` takes it
# over); sweep_blocked, off-site retention deleted no object, as a manifest does not read;
# unreachable, the endpoint does not answer or stalls; credentials, it refuses them (or the
# bucket policy the request); damaged, objects found missing or damaged in the bucket and not
# sent again yet, or what a read brought back is not what the manifest says; other, any other
# failure.
Reason = Literal["prefix_taken", "sweep_blocked", "unreachable", "credentials", "damaged", "other"]
REASONS: tuple[Reason, ...] = (
    "prefix_taken",
    "sweep_blocked",
    "unreachable",
    "credentials",
    "damaged",
    "other",
)


def reason_of(exc: BaseException) -> Reason:
    """The reason a failed off-site step names (sweep_blocked is no error: a sync's outcome)."""
    if isinstance(exc, PrefixTaken):
        return "prefix_taken"
    if isinstance(exc, Unreachable):
        return "unreachable"
    if isinstance(exc, Refused):
        return "credentials"
    if isinstance(exc, IntegrityError | Damaged):
        return "damaged"
    return "other"
