"""The machine a prefix's marker names: derived from the machine id, never the id itself."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.run.offsite import machine_fingerprint

ID = "3d1219c7c4c5404aaa1f6d2a48adfda4"


def test_the_fingerprint_is_stable_and_does_not_show_the_machine_id(tmp_path: Path) -> None:
    (tmp_path / "machine-id").write_text(ID + "\n")
    found = machine_fingerprint([tmp_path / "machine-id"])
    assert len(found) == 32 and int(found, 16) >= 0
    assert found == machine_fingerprint([tmp_path / "machine-id"]) and found != ID
    (tmp_path / "other").write_text("0" * 31 + "1\n")
    assert machine_fingerprint([tmp_path / "other"]) != found


def test_the_first_file_that_holds_an_id_is_taken_and_none_is_no_machine(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")  # systemd's first boot leaves it empty
    (tmp_path / "dbus").write_text(ID)
    assert machine_fingerprint([tmp_path / "missing", tmp_path / "empty", tmp_path / "dbus"])
    assert machine_fingerprint([tmp_path / "missing", tmp_path / "empty"]) == ""
    (tmp_path / "garbage").write_text("not an id")
    assert machine_fingerprint([tmp_path / "garbage"]) == ""
