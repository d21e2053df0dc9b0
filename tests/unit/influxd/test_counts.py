"""Point counts taken right after `influxd restore -portable` uploaded a shard: the server says
"engine is closed" or "shard is disabled" for a moment (influxql.SHARD_OPENING). A count is a
restore's floor (restore/served.py) and a restore test's figure: one such answer must not lose
it (seen: a hot restore's build counted nothing, so the live server was held to nothing)."""

from __future__ import annotations

import pytest

from influx_backupd.core import log
from influx_backupd.influxd import counts
from influx_backupd.restore.served import count_built
from tests.unit.influxd.test_influxql import answering

RPS = (200, {"results": [{"series": [{"name": "rps", "values": [["autogen"]]}]}]})
COUNTED = (
    200,
    {"results": [{"series": [{"name": "cpu", "values": [[0, 20_000, 19_000]]}]}]},
)


@pytest.mark.parametrize("transient", ["shard is disabled", "engine is closed"])
def test_a_count_waits_out_a_shard_still_opening(transient: str) -> None:
    busy = (200, {"results": [{"error": transient}]})
    with answering(RPS, busy, busy, COUNTED) as seen:
        assert counts.point_count(seen[0], "metrics", timeout=10) == 20_000
    assert len(seen) - 1 == 4, "asked again until the shard answered"


def test_a_shard_that_never_opens_is_a_figure_not_taken_within_the_timeout() -> None:
    busy = (200, {"results": [{"error": "engine is closed"}]})
    with answering(RPS, busy) as seen, pytest.raises(counts.FiguresError, match="engine is"):
        counts.point_count(seen[0], "metrics", timeout=0.5)


def test_a_build_not_counted_says_why_for_the_restore_to_warn() -> None:
    dbs = (200, {"results": [{"series": [{"name": "databases", "values": [["metrics"]]}]}]})
    broken = (200, {"results": [{"error": "shard 3: checksum mismatch"}]})
    with answering(dbs, RPS, broken) as seen:
        found, why = count_built(seen[0], log.get(), budget=5)
    assert found == {} and "checksum mismatch" in why and "not counted: metrics" in why
