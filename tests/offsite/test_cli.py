"""[offsite] through the command line, against a real influxd and moto's server."""

from __future__ import annotations

import json
import os
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from influx_backupd.offsite.repo import Offsite
from influx_backupd.report.metrics import JOB_LABEL
from tests.conftest import Cli, write_config
from tests.offsite.conftest import SECRET_KEY, Endpoint, free_port
from tests.offsite.helpers import offsite_section, sha256


def test_backup_goes_off_site_and_is_listed_verified_and_reported(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_500)
    metrics = tmp_path / "metrics.prom"
    config = write_config(tmp_path, sandbox, extra=offsite_section(moto))
    config.write_text(
        config.read_text().replace("[daemon]\n", f'[daemon]\nmetrics_file = "{metrics}"\n')
    )
    cli = Cli(config)
    record = cli.json("backup")
    assert record["status"] == "ok"
    listed = cli.json("list", "--offsite")
    assert [(r["id"], r["job"], r["sha256"]) for r in listed] == [
        (record["id"], "nightly", record["sha256"])
    ]
    status = cli.json("status")
    assert status["offsite"]["not_offsite"] == [] and status["offsite"]["last_success"]
    text = metrics.read_text()
    assert (
        f'influx_backupd_offsite_pending_backups{{backup_instance="metrics",{JOB_LABEL}="nightly"}} 0'
        in text
    )
    assert (
        f'influx_backupd_offsite_uploaded_bytes_total{{backup_instance="metrics",{JOB_LABEL}="nightly"}}'
        in text
    )
    assert "# HELP influx_backupd_offsite_skipped_bytes_total" in text
    checked = cli("verify", record["id"], "--offsite", "--read-data", "100", "--json")
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert json.loads(checked.stdout)["checked"] == json.loads(checked.stdout)["objects"]

    # the next night sends only what changed: most of the data is in the bucket already
    sandbox.write_points("metrics", 10, start=50_000)
    cli.json("backup")
    synced = cli.json("offsite", "sync")
    assert synced["sent"] == [] and synced["pending"] == []
    skipped = [line for line in metrics.read_text().splitlines() if "skipped_bytes_total{" in line]
    assert skipped and int(skipped[0].split()[-1]) > 0


def test_offsite_failure_runs_the_hook_keeps_the_backup_and_the_next_sync_completes(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 500)
    told = tmp_path / "told"
    hook = ["/bin/sh", "-c", f'env | grep ^INFLUX_BACKUPD_OFFSITE > "{told}"']
    job = {"name": "nightly", "mode": "cold", "copy": "direct", "on_failure": hook}
    down = moto.settings(endpoint_url=f"http://127.0.0.1:{free_port()}")
    config = write_config(
        tmp_path, sandbox, jobs=[job], extra=offsite_section(moto, endpoint_url=down.endpoint_url)
    )
    cli = Cli(config)
    done = cli("backup", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout)
    lines = [
        line for line in done.stderr.splitlines() if line.startswith("influx-backupd: offsite:")
    ]
    assert len(lines) == 1 and "cannot connect" in lines[0] and SECRET_KEY not in done.stderr
    assert "INFLUX_BACKUPD_OFFSITE=failed" in told.read_text()
    archive = Path(record["archive"])
    assert sha256(archive) == record["sha256"]
    status = cli.json("status")
    assert status["offsite"]["not_offsite"] == [record["id"]] and status["offsite"]["last_error"]

    config.write_text(config.read_text().replace(down.endpoint_url, moto.url))
    synced = cli.json("offsite", "sync")
    assert [s["id"] for s in synced["sent"]] == [record["id"]] and synced["pending"] == []
    assert cli.json("status")["offsite"]["last_error"] is None


def test_offsite_without_boto3_is_a_config_error_naming_the_extra(
    tmp_path: Path, influxd_path: str, moto: Endpoint
) -> None:
    server = Sandbox(tmp_path / "server", binary=influxd_path)
    server.write_config()
    config = write_config(tmp_path, server, extra=offsite_section(moto))
    hide = tmp_path / "no-boto3" / "boto3"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('boto3 hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{hide.parent}:{os.environ.get('PYTHONPATH', '')}"}
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(config), "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 78
    assert done.stderr.count("\n") == 1 and "influx-backupd[s3]" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()


def test_offsite_retention_keeps_the_newest_and_sweeps_what_only_the_others_needed(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    jobs = [{"name": "nightly", "mode": "cold", "copy": "direct", "keep_last": 5}]
    section = offsite_section(moto, keep_last=1, grace="0s")
    cli = Cli(write_config(tmp_path, sandbox, jobs=jobs, extra=section))
    ids = []
    for night in range(3):
        sandbox.write_points("metrics", 300, start=night * 10_000)
        ids.append(cli.json("backup")["id"])
    assert [r["id"] for r in cli.json("list", "--offsite")] == [ids[-1]]
    assert len(cli.json("list")) == 3, "local backups are not touched by off-site retention"
    checked = cli("verify", ids[-1], "--offsite", "--read-data", "100", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    client = moto.client()
    objects = {
        o["Key"].rsplit("/", 1)[1]
        for o in client.list_objects_v2(Bucket=moto.bucket, Prefix="host-a/objects/").get(
            "Contents", []
        )
    }
    assert objects == Offsite(moto.settings()).manifest(ids[-1]).objects()


def test_a_job_with_offsite_false_stays_on_the_host(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 200)
    jobs = [
        {"name": "nightly", "mode": "cold", "copy": "direct"},
        {"name": "scratch", "mode": "cold", "copy": "direct", "offsite": False},
    ]
    cli = Cli(write_config(tmp_path, sandbox, jobs=jobs, extra=offsite_section(moto)))
    done = cli("backup", "--all", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads(done.stdout)
    assert [r["job"] for r in cli.json("list", "--offsite")] == ["nightly"]
    assert cli.json("status")["offsite"]["not_offsite"] == []
    assert cli.json("offsite", "sync")["sent"] == []
    assert sorted(r["job"] for r in records if r["status"] == "ok") == ["nightly", "scratch"]
    # the job removed from the config: its backups stay on the host all the same (before, the
    # next sync sent them, and status counted them as not off-site yet)
    cli = Cli(write_config(tmp_path, sandbox, jobs=jobs[:1], extra=offsite_section(moto)))
    assert cli.json("status")["offsite"]["not_offsite"] == []
    assert cli.json("offsite", "sync")["sent"] == []
    assert [r["job"] for r in cli.json("list", "--offsite")] == ["nightly"]


def test_a_damaged_local_archive_is_restored_from_the_bucket_and_kept_aside(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 800)
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    record = cli.json("backup")
    archive = Path(record["archive"])
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot in the local copy
    archive.write_bytes(bytes(data))
    assert cli("restore", record["id"], "--yes").returncode == 1  # the local copy is refused
    sandbox.write_points("metrics", 100, start=90_000)
    done = cli("restore", record["id"], "--from", "offsite", "--yes")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sandbox.count("metrics") == 800
    assert sha256(archive) == record["sha256"]
    aside = list(archive.parent.glob(archive.name + ".damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data)
    assert f"fetched {record['id']} into {archive}" in done.stderr
    # again, with the local copy intact now: said so, not "fetched"; its record beside it is
    # written again if a fetch that ran out of space lost it (before: never, and a new host's
    # import did not take that backup)
    beside = archive.with_name(archive.name + ".json")
    beside.unlink()
    again = cli("restore", record["id"], "--from", "offsite", "--target", str(tmp_path / "look"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{record['id']} is here already, as the bucket has it: {archive}" in again.stderr
    assert "fetched" not in again.stderr
    assert json.loads(beside.read_text())["id"] == record["id"]


def test_a_backup_id_the_bucket_does_not_hold_is_a_usage_error(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    for argv in (
        ["verify", "20200101T000000Z-0000", "--offsite"],
        ["restore", "20200101T000000Z-0000", "--from", "offsite", "--yes"],
    ):
        done = cli(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.strip().endswith("no backup 20200101T000000Z-0000 in the bucket")
    assert sandbox.ping()


def test_quiet_list_and_import_say_why_they_exit_1_for_a_manifest_passed_over(
    tmp_path: Path, sandbox: Sandbox, moto: Endpoint
) -> None:
    """Before: -q hid the warning event, the only word of the manifest passed over: exit 1 in
    silence (--json printed the other rows and nothing of it)."""
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 300)
    cli = Cli(write_config(tmp_path, sandbox, extra=offsite_section(moto)))
    record = cli.json("backup")
    assert record["status"] == "ok"
    planted = "host-a/manifests/nightly/20200101T000001Z-beef.json.gz"
    moto.client().put_object(Bucket=moto.bucket, Key=planted, Body=b"not gzip")
    for argv in (("-q", "list", "--offsite"), ("-q", "list", "--offsite", "--json")):
        listed = cli(*argv)
        assert listed.returncode == 1, listed.stderr
        lines = listed.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in listed.stderr, listed.stderr
        assert lines[0].startswith("influx-backupd: offsite: passed over 1 manifest(s)")
        assert planted in lines[0], lines[0]
    (tmp_path / "new").mkdir()
    fresh = Cli(write_config(tmp_path / "new", sandbox, extra=offsite_section(moto)))
    imported = fresh("-q", "import", "--offsite")
    assert imported.returncode == 1, imported.stderr
    assert planted in imported.stderr and "passed over 1 manifest(s)" in imported.stderr
