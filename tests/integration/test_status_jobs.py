"""`status` shows every job the catalog holds runs of: the implicit job of a config without
[[job]] tables, and a job since removed from (or renamed in) the config. A failed run of a
job the config does not name was hidden before: `status` looked clean."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.store.catalog import Catalog
from tests.conftest import Cli, write_config


def _without_jobs(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: text.index("[[job]]")])


def test_status_shows_the_implicit_job_and_jobs_no_longer_configured(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    _without_jobs(config)
    cli = Cli(config)
    assert cli("backup", "--json").returncode == 0
    # a failed run of the implicit job: influxd does not answer (refused before any stop)
    sandbox.stop()
    assert cli("backup").returncode == 1
    sandbox.start()

    jobs = {job["name"]: job for job in cli.json("status")["jobs"]}
    assert list(jobs) == ["manual"]
    assert jobs["manual"]["in_config"] is True
    assert jobs["manual"]["schedule"] == "manual only"
    assert jobs["manual"]["last"]["status"] == "failed"
    assert jobs["manual"]["last_ok"]["status"] == "ok"

    # the operator adds a scheduled job: the manual runs stay in view, said to be unconfigured
    write_config(tmp_path, sandbox)
    jobs = {job["name"]: job for job in cli.json("status")["jobs"]}
    assert list(jobs) == ["nightly", "manual"]
    assert jobs["nightly"]["last"] is None
    assert jobs["manual"]["in_config"] is False
    assert jobs["manual"]["last"]["status"] == "failed"
    text = cli("status").stdout
    assert re.search(
        r"^job manual  not in the config: 1 backup kept, never pruned, mode cold$", text, re.M
    ), text
    assert re.search(r"^job nightly  cron '0 3 \* \* \*' UTC, mode cold$", text, re.M), text
    # next run only for a job the daemon schedules
    manual = text[text.index("job manual") :]
    assert "next" not in manual.split("\njob ")[0], text


def test_status_says_when_the_last_good_backup_was_after_a_failure(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The text said only `last failed …`: the age of the newest good backup, what an operator
    asks first after a failure, was in --json alone."""
    cli = Cli(write_config(tmp_path, sandbox))
    good = cli.json("backup")
    assert good["status"] == "ok"
    assert "last ok" not in cli("status").stdout, "the last run is the last good one"
    sandbox.stop()
    assert cli("backup").returncode == 1  # influxd does not answer: refused before any stop
    sandbox.start()
    text = cli("status").stdout
    assert re.search(rf"^  last ok .* \(run {good['id']}\)$", text, re.M), text


def test_a_run_dated_ahead_of_the_clock_hides_no_later_failure(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A run taken while the clock was a year ahead (or imported with such a date) was `last`
    and `last ok` for that year: the failures since were never shown (the time audit)."""
    cli = Cli(write_config(tmp_path, sandbox))
    good = cli.json("backup")
    assert good["status"] == "ok"
    catalog = Catalog(tmp_path / "state")
    ahead = catalog.get(good["id"])
    assert ahead is not None
    year = 365 * 86_400.0
    ahead = dataclasses.replace(
        ahead,
        id="20271204T030000Z-ahead",
        started_at=ahead.started_at + year,
        finished_at=(ahead.finished_at or ahead.started_at) + year,
    )
    catalog.save(ahead)
    sandbox.stop()
    assert cli("backup").returncode == 1  # influxd does not answer: refused before any stop
    sandbox.start()

    text = cli("status").stdout

    assert re.search(r"^  last    failed ", text, re.M), text
    assert re.search(rf"^  last ok .* \(run {good['id']}\)$", text, re.M), text
    assert "DATED AHEAD 1 run(s)" in text and "20271204T030000Z-ahead" in text, text
    assert re.search(rf"^last downtime .*run {good['id']}", text, re.M), text
