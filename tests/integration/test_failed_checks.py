"""A backup whose check failed is no good backup, but nothing is deleted for that alone: the
check may have failed for a reason outside it (a storage mount down while verify ran), and a
hot chain is never extended on, nor split at, such a link. Real influxd 1.6, real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, hot_chain, write_config

JOBS = [{"name": "hot", "mode": "hot"}, {"name": "cold", "mode": "cold", "copy": "direct"}]


def _statuses(cli: Cli) -> dict[str, str]:
    return {r["id"]: r.get("verify_status") or "" for r in cli.json("list")}


def test_a_chain_whose_full_failed_its_check_is_not_extended_and_its_tip_fails(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: the next hot run extended the chain on the bad full, prune deleted the full
    and kept its increments, and `verify` of the tip said ok (its restore was refused)."""
    config = write_config(tmp_path, sandbox, jobs=JOBS[:1])
    config.write_text(config.read_text().replace('mode = "hot"', 'mode = "hot"\nkeep_last = 2'))
    cli = Cli(config)
    full, inc = hot_chain(cli, sandbox, [[("metrics", 800)], [("metrics", 200)]], job="hot")
    shard = next(Path(full["archive"]).glob("*.tar.gz"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))

    checked = cli("verify", "--all", "--json")
    assert checked.returncode == 1
    by_id = {r["run_id"]: r for r in json.loads(checked.stdout)}
    assert by_id[full["id"]]["status"] == "failed"
    tip = cli("verify", inc["id"], "--json")
    assert tip.returncode == 1, tip.stdout
    assert json.loads(tip.stdout)[0]["checks"].get("chain") == "failed", tip.stdout
    assert f"link {full['id']}" in tip.stdout and "failed its last check" in tip.stdout
    [job] = cli.json("status")["jobs"]
    assert job["last_ok"] is None, "no good backup: `status` said 'last ok' for a failed one"

    sandbox.write_points("metrics", 100, start=900_000)
    nxt = cli.json("backup", "--job", "hot")
    assert nxt["status"] == "ok" and nxt["kind"] == "full", "a new chain, not one on the bad full"
    # its prune (keep_last 2): were their checks good, the rules would keep the increment, so
    # the bad chain stays — whole, never the full without its increments (before: the full was
    # deleted, the increment kept)
    assert {r["id"] for r in cli.json("list")} == {full["id"], inc["id"], nxt["id"]}
    sandbox.write_points("metrics", 100, start=950_000)
    assert cli.json("backup", "--job", "hot")["status"] == "ok"
    sandbox.write_points("metrics", 100, start=990_000)
    last = cli.json("backup", "--job", "hot")
    listed = {r["id"] for r in cli.json("list")}
    assert full["id"] not in listed and inc["id"] not in listed, "superseded: gone, and whole"
    assert last["id"] in listed


def test_a_record_beside_a_backup_without_its_sha256_fails_verify_by_path(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: "sha256 skipped (no record beside it)" although one was there, and exit 0 on a
    backup changed since: the record's missing sha256 let any change pass."""
    import shutil

    config = write_config(tmp_path, sandbox, jobs=JOBS[:1])
    cli = Cli(config)
    (full,) = hot_chain(cli, sandbox, [[("metrics", 500)]], job="hot")
    source = Path(full["archive"])
    elsewhere = tmp_path / "copied" / source.name
    shutil.copytree(source, elsewhere)
    record = json.loads(Path(f"{source}.json").read_text())
    del record["sha256"]
    Path(f"{elsewhere}.json").write_text(json.dumps(record))
    manifest = next(elsewhere.glob("*.manifest"))
    manifest.write_text(manifest.read_text() + " ")
    done = cli("verify", str(elsewhere), "--json")
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    assert "sha256 missing" in done.stdout and "unusable" in done.stdout, done.stdout


def test_a_cut_link_not_yet_verified_fails_its_increments_and_ends_the_chain(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: `verify I1` said "chain ok" over a full cut short, and the next hot run
    extended the chain on it (its restore test then failed on the damaged gzip)."""
    config = write_config(tmp_path, sandbox, jobs=JOBS[:1])
    cli = Cli(config)
    full, inc = hot_chain(cli, sandbox, [[("metrics", 800)], [("metrics", 200)]], job="hot")
    shard = next(Path(full["archive"]).glob("*.tar.gz"))
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    tip = cli("verify", inc["id"], "--json")
    assert tip.returncode == 1, tip.stdout
    [result] = json.loads(tip.stdout)
    assert result["checks"]["chain"] == "failed" and "when it was taken" in tip.stdout, result
    nxt = cli.json("backup", "--job", "hot")
    assert nxt["status"] == "ok" and nxt["kind"] == "full", nxt


def test_a_copied_increment_verified_by_path_checks_the_links_beside_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Before: `verify DIR` of an increment copied alone said ok (it restores only on top of
    its full); and a tar's unusable record was said as "no record beside it"."""
    import shutil

    config = write_config(tmp_path, sandbox, jobs=JOBS[:1])
    cli = Cli(config)
    full, inc = hot_chain(cli, sandbox, [[("metrics", 500)], [("metrics", 100)]], job="hot")
    elsewhere = tmp_path / "copied"
    elsewhere.mkdir()
    for link in (inc,):
        source = Path(link["archive"])
        shutil.copytree(source, elsewhere / source.name)
        shutil.copy(f"{source}.json", elsewhere / f"{source.name}.json")
    alone = cli("verify", str(elsewhere / Path(inc["archive"]).name), "--json")
    assert alone.returncode == 1, alone.stdout
    [result] = json.loads(alone.stdout)
    assert result["checks"]["chain"] == "failed" and full["id"] in alone.stdout, result
    source = Path(full["archive"])
    shutil.copytree(source, elsewhere / source.name)
    shutil.copy(f"{source}.json", elsewhere / f"{source.name}.json")
    both = cli("verify", str(elsewhere / Path(inc["archive"]).name), "--json")
    assert both.returncode == 0, both.stdout
    said = json.loads(both.stdout)[0]["checks"]["chain"]
    assert said.startswith("2 links present, sizes match") and "not read" in said, said
    deep = cli("verify", str(elsewhere / Path(inc["archive"]).name), "--deep", "--json")
    assert deep.returncode == 0, deep.stdout
    assert json.loads(deep.stdout)[0]["checks"]["chain"].startswith("ok (2 links"), deep.stdout
