"""The cancel token the daemon passes down to a run."""

from __future__ import annotations

from influx_backupd.core.cancel import CancelToken


def test_callbacks_run_once_on_cancel_and_at_once_when_already_cancelled() -> None:
    token = CancelToken()
    seen: list[str] = []
    token.on_cancel(lambda: seen.append("first"))
    forget = token.on_cancel(lambda: seen.append("forgotten"))
    forget()
    assert not token.cancelled and seen == []
    token.cancel()
    token.cancel()
    assert token.cancelled and seen == ["first"]
    token.on_cancel(lambda: seen.append("late"))
    assert seen == ["first", "late"]
