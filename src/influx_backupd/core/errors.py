"""The base of influx-backupd's own errors: each carries a stable code and the exit status the CLI
gives it, so that callers match on the class, not on the words of the message."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 75
EXIT_CONFIG = 78


class BackupdError(Exception):
    """Something we detected and can explain in one line."""

    code = "error"
    exit_status = EXIT_FAILED
    label = ""  # what the command line puts before the message ("busy", "influxd", …)

    def line(self) -> str:
        """The one line a command prints for it."""
        return f"{self.label}: {self}" if self.label else str(self)


class HotFailed(BackupdError):
    """The hot run failed; the message starts with a hot.* code the policy can match."""

    code = "hot"


class CheckFailed(HotFailed):
    """A hot backup's output is missing, damaged or inconsistent with its manifest."""

    code = "hot.check"


class RestoreRefused(BackupdError):
    """The archive or the set-up failed a check; nothing was touched."""

    code = "restore.refused"


class RestoreMistake(RestoreRefused):
    """The command line asks for what the backup or the live server cannot give (a database
    the backup lacks, a name taken without --replace): a usage error, nothing touched."""

    code = "restore.usage"
    exit_status = EXIT_USAGE


class RestoreMisconfigured(RestoreRefused):
    """The config does not fit the host or the running server (an [influxd] user that does not
    exist, or that influxd does not run as): a configuration error, nothing touched."""

    code = "restore.config"
    exit_status = EXIT_CONFIG


class RestoreFailed(BackupdError):
    """The restore failed: after the swap began (the old dirs were put back, the old server
    started), or, for a 1.x hot restore, while building beside the live server (untouched)."""

    code = "restore.failed"


class OnlyInBucket(BackupdError):
    """A backup imported from the bucket (import --offsite) and not fetched since: there is no
    archive here to restore or check, and its absence is no verdict on the backup."""

    code = "offsite_only"

    def __init__(self, backup_id: str) -> None:
        super().__init__(
            f"backup {backup_id} is only in the bucket: "
            f"restore {backup_id} --from offsite / verify {backup_id} --offsite"
        )


class UsageError(BackupdError):
    """The command line asks for something that cannot be: found before anything is touched."""

    code = "usage"
    exit_status = EXIT_USAGE
