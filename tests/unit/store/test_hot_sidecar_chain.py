"""Following a 1.x chain through the records beside its dirs (hot_restore.sidecar_chain)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.core.errors import RestoreRefused
from influx_backupd.store.chain import read_sidecar, sidecar_chain
from influx_backupd.store.record import RunRecord


def _link(storage: Path, run_id: str, parent: str | None, **extra: Any) -> Path:
    directory = storage / f"hotjob-{run_id}"
    directory.mkdir()
    record = {
        "format": 1,
        "id": run_id,
        "job": "hotjob",
        "mode": "hot",
        "status": "ok",
        "kind": "incremental" if parent else "full",
        "chain_id": "A",
        "parent_id": parent,
        "sha256": "0" * 64,
        "archive": f"/elsewhere/hotjob-{run_id}",
        **extra,
    }
    (storage / f"hotjob-{run_id}.json").write_text(json.dumps(record))
    return directory


def test_the_chain_is_followed_up_to_its_full_at_the_dirs_new_place(tmp_path: Path) -> None:
    _link(tmp_path, "A", None)
    _link(tmp_path, "B", "A")
    last = _link(tmp_path, "C", "B")
    links = sidecar_chain(last)
    assert [link.path.name for link in links] == ["hotjob-A", "hotjob-B", "hotjob-C"]
    assert [link.incremental for link in links] == [False, True, True]
    assert links[0].record is not None and links[0].record.archive == str(tmp_path / "hotjob-A")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing", "is missing"),
        ("no record", "has no backup record hotjob-B.json"),
        ("garbage", "unreadable backup record"),
        ("other chain", "record of another run"),
    ],
)
def test_a_broken_parent_refuses_naming_it(tmp_path: Path, damage: str, expected: str) -> None:
    _link(tmp_path, "A", None)
    middle = _link(tmp_path, "B", "A", chain_id="Z" if damage == "other chain" else "A")
    last = _link(tmp_path, "C", "B")
    sidecar = tmp_path / "hotjob-B.json"
    if damage == "missing":
        middle.rename(tmp_path / "moved")
    elif damage == "no record":
        sidecar.unlink()
    elif damage == "garbage":
        sidecar.write_text("{not json")
    with pytest.raises(RestoreRefused) as refused:
        sidecar_chain(last)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("link B ") and expected in message
    assert "cannot be restored without the links before it" in message


def test_a_record_of_an_unknown_format_is_refused_not_guessed(tmp_path: Path) -> None:
    directory = _link(tmp_path, "A", None, format=99)
    with pytest.raises(RestoreRefused, match="not a usable backup record"):
        read_sidecar(directory)
    assert read_sidecar(tmp_path / "nothing") is None


def test_records_from_before_the_typed_fields_read_them_from_extra() -> None:
    old = {
        "id": "20261101T000000Z-aaaa",
        "job": "hot",
        "mode": "hot",
        "status": "ok",
        "extra": {
            "flavour": "portable",
            "backup_host": "127.0.0.1:8088",
            "since_anchor": 12.5,
            "influxd_version": "v1.6.7",
        },
    }
    record = RunRecord.from_dict(old)
    assert (record.flavour, record.backup_host, record.since_anchor) == (
        "portable",
        "127.0.0.1:8088",
        12.5,
    )
    assert record.extra == {"influxd_version": "v1.6.7"}
    # and what is written now reads back the same
    assert RunRecord.from_dict(record.to_dict()) == record
