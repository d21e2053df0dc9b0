"""influx_backupd_offsite_failing: the reason the off-site copy fails, in the metrics file,
from what the last sync recorded; 0 for every reason once a sync completes. Against a real
influxd and moto's server, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influx_backupd.core.config import load
from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite.errors import REASONS
from influx_backupd.offsite.repo import Offsite
from influx_backupd.run import offsite, offsite_repair
from influx_backupd.run.followup import write_metrics
from influx_backupd.store.catalog import Catalog
from tests.conftest import Cli, write_config
from tests.offsite.conftest import Endpoint, free_port
from tests.offsite.helpers import offsite_section

PLANTED = "host-a/manifests/nightly/20200101T000001Z-beef.json.gz"


def _cli(tmp_path: Path, sandbox: Sandbox, section: str) -> tuple[Cli, Path]:
    metrics = tmp_path / "metrics.prom"
    config = write_config(tmp_path, sandbox, extra=section)
    config.write_text(
        config.read_text().replace("[daemon]\n", f'[daemon]\nmetrics_file = "{metrics}"\n')
    )
    return Cli(config), metrics


def failing(metrics: Path) -> dict[str, float]:
    """reason → value of every influx_backupd_offsite_failing sample in the file."""
    found = {}
    for line in metrics.read_text().splitlines():
        if line.startswith("influx_backupd_offsite_failing{"):
            labels, value = line.split(" ")
            found[labels.split('reason="')[1].rstrip('"}')] = float(value)
    return found


def only(reason: str | None) -> dict[str, float]:
    return {r: 1.0 if r == reason else 0.0 for r in REASONS}


def test_a_prefix_taken_by_another_writer_shows_until_adopt(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    cli, metrics = _cli(tmp_path, sandbox, offsite_section(moto))
    assert cli.json("backup")["status"] == "ok"
    assert failing(metrics) == only(None), "every reason written, all 0 after a good sync"

    # another host takes the prefix over
    Offsite(moto.settings(), writer="b" * 32).claim(adopt=True, host="db2.example")
    refused = cli("offsite", "sync")
    assert refused.returncode == 78, refused.stderr[-2000:]
    assert failing(metrics) == only("prefix_taken")
    off = cli.json("status")["offsite"]
    assert off["last_error_reason"] == "prefix_taken" and "--adopt" in off["last_error"]

    adopted = cli("offsite", "sync", "--adopt")
    assert adopted.returncode == 0, adopted.stderr[-2000:]
    assert failing(metrics) == only(None)
    assert cli.json("status")["offsite"]["last_error_reason"] is None


def test_a_blocked_sweep_shows_until_the_manifest_that_does_not_read_is_gone(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    cli, metrics = _cli(tmp_path, sandbox, offsite_section(moto, keep_last=1))
    moto.client().put_object(Bucket=moto.bucket, Key=PLANTED, Body=b"not gzip")
    for night in range(2):
        sandbox.write_points("metrics", 300, start=night * 10_000)
        assert cli.json("backup")["status"] == "ok", "the local backup stays ok"
    synced = cli("offsite", "sync", "--json")
    assert synced.returncode == 1, synced.stderr[-2000:]
    assert "20200101T000001Z-beef" in json.loads(synced.stdout)["sweep_blocked"]
    assert failing(metrics) == only("sweep_blocked")
    assert cli.json("status")["offsite"]["last_error_reason"] == "sweep_blocked"

    moto.client().delete_object(Bucket=moto.bucket, Key=PLANTED)
    again = cli("offsite", "sync", "--json")
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert json.loads(again.stdout)["sweep_blocked"] is None
    assert failing(metrics) == only(None)


def test_an_endpoint_down_then_refusing_our_keys_each_show_until_a_sync_completes(
    tmp_path: Path, sandbox: Sandbox, rclone: Endpoint
) -> None:
    """rclone's `serve s3` checks the keys (moto's server takes any)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    wrong = tmp_path / "wrong-credentials"
    wrong.write_text("[default]\naws_access_key_id = AKIAWRONG\naws_secret_access_key = nope\n")
    wrong.chmod(0o600)
    down = f"http://127.0.0.1:{free_port()}"
    cli, metrics = _cli(tmp_path, sandbox, offsite_section(rclone, endpoint_url=down, retries=1))
    config = cli.config
    assert cli.json("backup")["status"] == "ok", "the local backup stays ok"
    assert failing(metrics) == only("unreachable")

    config.write_text(
        config.read_text().replace(down, rclone.url).replace(str(rclone.credentials), str(wrong))
    )
    assert cli("offsite", "sync").returncode == 1
    assert failing(metrics) == only("credentials")

    config.write_text(config.read_text().replace(str(wrong), str(rclone.credentials)))
    assert cli("offsite", "sync").returncode == 0
    assert failing(metrics) == only(None)


def test_a_metrics_write_loads_offsite_json_and_the_damage_notes_once(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon writes the metrics every 30 s: the figures and the failing reasons come from
    one read of offsite.json and of the notes (each was read twice)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    cli, metrics = _cli(tmp_path, sandbox, offsite_section(moto))
    assert cli.json("backup")["status"] == "ok"
    before = metrics.read_text()
    config = load(cli.config)
    loads: list[str] = []
    state_load, noted = offsite.State.load.__func__, offsite_repair.noted  # type: ignore[attr-defined]
    monkeypatch.setattr(
        offsite.State, "load", classmethod(lambda c, d: loads.append("state") or state_load(c, d))
    )
    monkeypatch.setattr(offsite_repair, "noted", lambda d: loads.append("notes") or noted(d))
    write_metrics(config, Catalog(config.state_dir))
    assert sorted(loads) == ["notes", "state"]
    assert failing(metrics) == only(None)
    assert metrics.read_text().count("offsite") == before.count("offsite")


def test_a_sync_that_leaves_a_backup_behind_or_cannot_read_its_writer_id_is_failing(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: a sync that ended but did not send a backup (exit 1) cleared last_error, and
    one that failed on this host's writer id file recorded nothing: offsite_failing stayed 0."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    down = f"http://127.0.0.1:{free_port()}"
    cli, metrics = _cli(tmp_path, sandbox, offsite_section(moto, endpoint_url=down, retries=1))
    record = cli.json("backup")
    assert record["status"] == "ok"
    Path(record["archive"]).unlink()  # gone from the storage dir before the next sync
    cli.config.write_text(cli.config.read_text().replace(down, moto.url))
    synced = cli("offsite", "sync")
    assert synced.returncode == 1, synced.stderr[-2000:]
    assert f"not sent: {record['id']}" in synced.stderr
    assert failing(metrics) == only("other")
    off = cli.json("status")["offsite"]
    assert off["last_error_reason"] == "other"
    assert f"not sent: {record['id']}" in off["last_error"], off

    writer = load(cli.config).state_dir / "offsite-writer.id"
    writer.unlink()
    writer.mkdir()  # not a file this host can read its writer id from
    refused = cli("offsite", "sync")
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "offsite-writer.id: cannot be read" in refused.stderr
    off = cli.json("status")["offsite"]
    assert "offsite-writer.id: cannot be read" in (off["last_error"] or ""), off
    assert failing(metrics) == only("other")
