"""The notes of off-site damage (run/offsite_repair) are changed by `verify --offsite`, which
runs without the backup lock, and by a sync's repair at the same time: neither may lose what
the other wrote."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from influx_backupd.run import offsite_repair


def test_a_check_noting_damage_while_a_repair_clears_the_note_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the repair read the note, a check noted a new damaged object, then the repair
    wrote back what it had read less what it repaired: the new damage was gone, and the next
    sync repaired nothing of it (found again only by another full read)."""
    offsite_repair.note(tmp_path, "B1", "nightly", {"obj-a": "missing"})
    [damage] = offsite_repair.noted(tmp_path)

    checker: list[threading.Thread] = []
    real_loads = offsite_repair.loads_json

    def loads_then_a_check_notes(text: str) -> object:
        found = real_loads(text)
        if not checker:  # the repair has read the note: a check finds more, meanwhile
            thread = threading.Thread(
                target=offsite_repair.note,
                args=(tmp_path, "B1", "nightly", {"obj-b": "size 3, expected 9"}),
            )
            checker.append(thread)
            thread.start()
            time.sleep(0.3)  # the check's whole note, unless it must wait
        return found

    monkeypatch.setattr(offsite_repair, "loads_json", loads_then_a_check_notes)
    offsite_repair._clear(tmp_path, damage, {})  # obj-a was sent again: nothing left of it
    checker[0].join(timeout=10)
    monkeypatch.undo()

    [after] = offsite_repair.noted(tmp_path)
    assert after.objects == {"obj-b": "size 3, expected 9"}


def test_a_check_that_finds_nothing_writes_no_notes_dir(tmp_path: Path) -> None:
    assert offsite_repair.note(tmp_path, "B1", "nightly", {}, reread=["obj-a"]) == {}
    assert not (tmp_path / offsite_repair.DAMAGED_DIR).exists()
    assert offsite_repair.note(tmp_path, "B1", "nightly", {"obj-a": "missing"}) == {
        "obj-a": "missing"
    }
    assert offsite_repair.note(tmp_path, "B1", "nightly", {}, reread=["obj-a"]) == {}
    assert offsite_repair.noted(tmp_path) == []
