"""What `list`, `status` and `verify` say of the links of a hot chain after one link is found
bad, goes missing, or loses its record beside it: the same as what a restore then does.
Real influxd 1.6, a chain of a full and three increments.

Before: `verify TIP --deep` failed naming a damaged middle link, yet `list` showed that link and
the links after it ok (a restore refused for the same sha256 recorded nothing either); a missing
middle link's later links showed ok; and `verify --deep` said "chain ok" over a link whose
record beside it was gone, while `restore PATH` on a new host refused the chain for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import Cli, hot_chain, new_host_config, write_config

HOT = [{"name": "hot", "mode": "hot"}]


def _chain(tmp_path: Path, sandbox: Sandbox) -> tuple[Cli, list[dict[str, Any]]]:
    metrics = {"metrics_file": str(tmp_path / "metrics.prom")}
    cli = Cli(write_config(tmp_path, sandbox, jobs=HOT, daemon=metrics))
    links = hot_chain(
        cli,
        sandbox,
        [[("metrics", 2_000)], [("metrics", 500)], [("metrics", 400)], [("metrics", 300)]],
    )
    return cli, links


def _flip_a_byte(link: dict[str, Any]) -> None:
    """One byte in the middle of the link's largest shard .tar.gz: its size unchanged."""
    shard = max(Path(link["archive"]).glob("*.tar.gz"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def _statuses(cli: Cli) -> dict[str, str]:
    """`list`'s STATUS column by id."""
    rows = cli("list", check=True).stdout.splitlines()[1:]
    return {row.split()[0]: row.split()[3] for row in rows}


def _listed(cli: Cli) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in cli.json("list")}


def test_a_deep_verify_marks_the_damaged_link_and_the_links_that_need_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli, (full, first, second, tip) = _chain(tmp_path, sandbox)
    _flip_a_byte(first)

    done = cli("verify", tip["id"], "--deep")
    assert done.returncode == 1, done.stdout
    assert f"link {first['id']}" in done.stdout

    assert _statuses(cli) == {
        full["id"]: "ok",
        first["id"]: "check-fail",  # read and found bad: its own verdict, not only the tip's
        second["id"]: "broken-chain",  # intact, but restores only on top of the bad link
        tip["id"]: "check-fail",
    }
    listed = _listed(cli)
    assert listed[first["id"]]["verify_status"] == "failed"
    assert first["archive"] in listed[first["id"]]["verify_detail"]
    assert listed[second["id"]]["verify_status"] is None, "its own bytes were not judged"
    needs = {"link": first["id"], "why": "check-fail"}
    assert listed[second["id"]]["chain_broken"] == needs
    assert listed[tip["id"]]["chain_broken"] == needs
    assert listed[full["id"]]["chain_broken"] is None
    assert listed[first["id"]]["chain_broken"] is None  # the full below it is fine
    row = next(r for r in cli("list").stdout.splitlines() if r.startswith(second["id"]))
    assert f"(needs link {first['id']}, which is check-fail)" in row

    # status: the newest good backup is the full; what the bad link breaks is named
    status = cli.json("status")
    [job] = status["jobs"]
    assert job["last_ok"]["id"] == full["id"]
    assert sorted(status["verify"]["failing"]) == sorted([first["id"], tip["id"]])
    assert set(status["verify"]["broken"]) == {second["id"], tip["id"]}
    text = cli("status").stdout
    assert f"BROKEN  {second['id']}: needs link {first['id']}, which is check-fail" in text
    [last_ok] = [line for line in text.splitlines() if line.startswith("  last ok")]
    assert last_ok.endswith(f"(run {full['id']})"), text
    metrics = (tmp_path / "metrics.prom").read_text()
    assert (
        'influx_backupd_backups_failing_verify{backup_instance="metrics",backup_job="hot"} 2\n'
        in metrics
    )


def test_a_restore_refused_for_a_damaged_link_records_it(tmp_path: Path, sandbox: Sandbox) -> None:
    cli, (full, first, second, tip) = _chain(tmp_path, sandbox)
    _flip_a_byte(first)

    done = cli("restore", second["id"], "--target", str(tmp_path / "restored"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "restore refused, nothing touched" in done.stderr + done.stdout
    assert not (tmp_path / "restored").exists()

    listed = _listed(cli)
    assert listed[first["id"]]["verify_status"] == "failed"
    assert first["archive"] in listed[first["id"]]["verify_detail"]
    assert _statuses(cli) == {
        full["id"]: "ok",
        first["id"]: "check-fail",
        second["id"]: "broken-chain",
        tip["id"]: "broken-chain",
    }


def test_a_missing_middle_link_breaks_the_links_after_it(tmp_path: Path, sandbox: Sandbox) -> None:
    cli, (full, first, second, tip) = _chain(tmp_path, sandbox)
    Path(first["archive"]).rename(tmp_path / "moved-away")

    assert _statuses(cli) == {
        full["id"]: "ok",
        first["id"]: "missing",
        second["id"]: "broken-chain",
        tip["id"]: "broken-chain",
    }
    listed = _listed(cli)
    assert listed[tip["id"]]["chain_broken"] == {"link": first["id"], "why": "missing"}
    assert listed[tip["id"]]["status"] == "ok", "the catalog's word is kept in --json"
    assert cli.json("status")["jobs"][0]["last_ok"]["id"] == full["id"]
    # what the restore says of it
    done = cli("restore", tip["id"], "--target", str(tmp_path / "restored"))
    assert done.returncode == 1 and first["id"] in done.stderr + done.stdout


def test_verify_checks_the_records_beside_the_earlier_links(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    cli, (_full, first, _second, tip) = _chain(tmp_path, sandbox)
    sidecar = Path(first["archive"] + ".json")
    kept = sidecar.read_text()
    sidecar.unlink()

    refused = Cli(new_host_config(tmp_path, sandbox, jobs=HOT))(
        "restore", tip["archive"], "--target", str(tmp_path / "r")
    )
    assert refused.returncode == 1, refused.stdout
    why = f"link {first['id']} ({first['archive']}), the parent of"
    assert why in refused.stderr + refused.stdout

    for deep in ([], ["--deep"]):
        done = cli("verify", tip["id"], *deep, "--json")
        # this host restores it from the catalog: ok, with a warning naming the new host's refusal
        assert done.returncode == 0, done.stdout
        [result] = json.loads(done.stdout)
        assert "a new host cannot restore it" in result["checks"]["chain"], result
        [warning] = [w for w in result["warnings"] if "a restore on a new host" in w]
        assert why in warning and "has no backup record" in warning
    text = cli("verify", tip["id"], "--deep").stdout
    assert "ok (4 links, each one's contents verified); a new host cannot" in text

    # a record beside an earlier link that disagrees with the catalog: the chain fails
    data = json.loads(kept)
    data["sha256"] = "0" * 64
    sidecar.write_text(json.dumps(data))
    done = cli("verify", tip["id"], "--json")
    assert done.returncode == 1, done.stdout
    [result] = json.loads(done.stdout)
    assert result["checks"]["chain"] == "failed"
    [error] = result["errors"]
    assert f"link {first['id']}" in error and "disagrees with the catalog" in error

    sidecar.write_text(kept)
    done = cli("verify", tip["id"], "--json")
    assert done.returncode == 0, done.stdout
    [result] = json.loads(done.stdout)
    assert not result["warnings"], result
    assert "new host" not in result["checks"]["chain"]


def test_a_restore_refused_for_a_damaged_cold_archive_records_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """As for a hot link: a cold archive whose bytes no longer match its sha256 is refused, and
    `list` and `status` say so from then on instead of calling it ok."""
    cold = [{"name": "nightly", "mode": "cold", "copy": "direct"}]
    cli = Cli(write_config(tmp_path, sandbox, jobs=cold))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    backup = cli.json("backup")
    archive = Path(backup["archive"])
    with archive.open("r+b") as f:  # one byte of the tar's end-of-archive zeros: size unchanged
        f.seek(-10, 2)
        f.write(b"\xff")

    done = cli("restore", backup["id"], "--target", str(tmp_path / "restored"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "restore refused, nothing touched" in done.stderr and "sha256" in done.stderr
    assert not (tmp_path / "restored").exists()
    listed = _listed(cli)
    assert listed[backup["id"]]["verify_status"] == "failed"
    assert str(archive) in listed[backup["id"]]["verify_detail"]
    assert _statuses(cli) == {backup["id"]: "check-fail"}
    assert backup["id"] in cli.json("status")["verify"]["failing"]


@pytest.mark.parametrize("gone", ["moved", "a dangling link"])
@pytest.mark.parametrize("mode", ["cold", "hot"])
def test_a_restore_of_an_id_whose_archive_is_gone_says_so_in_one_line(
    tmp_path: Path, sandbox: Sandbox, mode: str, gone: str
) -> None:
    """Before: `influx-backupd: No such file or directory: PATH` from the first open, which
    neither said it was a restore refused nor where to look; a link left where the archive was
    (archives moved to a disk since unmounted) got that line until session 28."""
    job = {"name": "nightly", "mode": "cold", "copy": "direct"} if mode == "cold" else HOT[0]
    cli = Cli(write_config(tmp_path, sandbox, jobs=[job]))
    sandbox.create_db("metrics")
    sandbox.write_points("metrics", 1_000)
    backup = cli.json("backup")
    archive = Path(backup["archive"])
    archive.rename(tmp_path / "moved-away")
    why = "moved or deleted since it was written"
    if gone == "a dangling link":
        archive.symlink_to(tmp_path / "unmounted" / archive.name)
        why = f"a link to {tmp_path / 'unmounted' / archive.name}, which is not there"

    for form in ([], ["--target", str(tmp_path / "restored")], ["--database", "metrics"]):
        done = cli("restore", backup["id"], *form, "--yes")
        assert done.returncode == 1, (form, done.stdout + done.stderr)
        [line] = [ln for ln in done.stderr.splitlines() if not ln.startswith("{")]
        assert line == (
            f"influx-backupd: restore refused, nothing touched: backup {backup['id']}'s archive "
            f"{archive} is gone ({why}): `influx-backupd list` "
            "shows what is kept; if it was sent off-site, "
            f"`influx-backupd restore {backup['id']} --from offsite`"
        ), (form, line)
    assert sandbox.count("metrics") == 1_000
