"""chain_breaks: which ok increments need a link that a restore refuses, from records alone."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.store.chain import Break, chain_breaks
from influx_backupd.store.record import RunRecord


def _chain(tmp_path: Path, n: int) -> list[RunRecord]:
    links = []
    for i in range(n):
        archive = tmp_path / f"hot-{i}"
        archive.mkdir()
        links.append(
            RunRecord(
                f"20260101T00000{i}Z-000{i}",
                "hot",
                "hot",
                status="ok",
                started_at=1.7e9 + i,
                archive=str(archive),
                kind="incremental" if i else "full",
                chain_id="20260101T000000Z-0000",
                parent_id=links[-1].id if links else None,
            )
        )
    return links


def test_an_intact_chain_has_no_breaks(tmp_path: Path) -> None:
    assert chain_breaks(_chain(tmp_path, 4)) == {}


def test_every_later_link_needs_the_nearest_bad_one(tmp_path: Path) -> None:
    full, first, second, third = _chain(tmp_path, 4)
    Path(str(second.archive)).rmdir()
    first.verify_status = "failed"
    assert chain_breaks([full, first, second, third]) == {
        second.id: Break(first.id, "check-fail"),
        third.id: Break(second.id, "missing"),  # the nearest: the one a restore of it meets
    }
    assert str(Break(first.id, "check-fail")) == f"needs link {first.id}, which is check-fail"


def test_a_parent_not_in_the_catalog_not_ok_or_looping(tmp_path: Path) -> None:
    full, first, second = _chain(tmp_path, 3)
    assert chain_breaks([full, second]) == {second.id: Break(first.id, "not in the catalog")}
    first.status = "failed"
    assert chain_breaks([full, first, second]) == {second.id: Break(first.id, "failed")}
    first.status, first.parent_id = "ok", second.id
    assert chain_breaks([full, first, second]) == {
        first.id: Break(first.id, "a loop of parents"),
        second.id: Break(second.id, "a loop of parents"),
    }


def test_a_link_only_in_the_bucket_breaks_nothing(tmp_path: Path) -> None:
    """restore --from offsite fetches the chain: not broken."""
    full, first, second = _chain(tmp_path, 3)
    Path(str(first.archive)).rmdir()
    first.extra["offsite_only"] = True
    assert chain_breaks([full, first, second]) == {}
