"""What one verify found: each check's outcome, the errors and warnings, and what a restore test
counted; saved in the catalog and printed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

NOT_QUERIED_09 = "not queried (0.9 server not available here)"
RESTORE_TEST = "restore test"  # how a restore test's failures begin (restore_test.py)


@dataclass
class VerifyResult:
    archive: str
    run_id: str | None = None
    job: str | None = None
    # error: a check could not be made for a reason outside the backup (influxd does not start
    # even on an empty dir): not ok, and not a verdict on the backup (retention, the chain)
    status: Literal["ok", "failed", "error"] = "ok"
    # check name → "ok …" | "failed …" | "skipped …" | "not supported yet …"
    checks: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    restored_counts: dict[str, int] | None = None  # per database, from a restore test's server
    # earlier links of an increment's chain read here and found bad themselves (run id → what):
    # saved as their own verdicts too, not only as this backup's
    links_failed: dict[str, str] = field(default_factory=dict)
    # earlier links whose last check had failed, read again here (--deep) and found ok: their
    # records say so too (run id -> what was checked)
    links_passed: dict[str, str] = field(default_factory=dict)

    def fail(self, check: str, message: str) -> None:
        self.errors.append(message)
        self.checks[check] = "failed"
        self.status = "failed"

    def cannot(self, check: str, message: str) -> None:
        self.errors.append(message)
        self.checks[check] = "not run"
        if self.status == "ok":
            self.status = "error"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def partial(self) -> bool:
        return any(
            v.startswith("not supported") or NOT_QUERIED_09 in v for v in self.checks.values()
        )

    def detail(self) -> str:
        if self.errors:
            return "; ".join(self.errors)
        return ", ".join(f"{k}: {v}" for k, v in self.checks.items())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "partial": self.partial}
