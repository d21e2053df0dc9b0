"""Values the command line takes are checked where they are parsed: one line, exit 2."""

from __future__ import annotations

import pytest

from influx_backupd.cli.parser import build_parser


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e-300", "1e300", "abc", ""])
def test_limit_rate_takes_a_rate_a_throttle_can_keep(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """nan passed as no limit, 1e-300 overflowed the throttle's wait (a thread traceback)."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["restore", "x", "--database", "d", "--limit-rate", value])
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "MiB a second, 0.01 to 1e+06, or 0 for no limit" in line, line
    for fine in ("0", "0.01", "50"):
        args = build_parser().parse_args(["restore", "x", "--database", "d", "--limit-rate", fine])
        assert args.limit_rate == float(fine)
