"""Manifests whose parts disagree: a record that says cold of a backup dir, a full with a parent,
files that clash in the tree. Each is refused as the manifest's fault (one line naming it),
never blamed on the local disk, and nothing is written to the storage dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.offsite.errors import IntegrityError
from influx_backupd.offsite.repo import Offsite
from tests.conftest import Cli
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import hot_backup, make_tree
from tests.offsite.test_forged_chains import Change, hot, plant, run

__all__ = ["hot"]  # the fixture, shared


def cold(raw: dict[str, Any]) -> None:
    raw["record"]["mode"] = "cold"


def full_with_parent(raw: dict[str, Any]) -> None:
    raw["parent"] = raw["record"]["parent_id"] = "20200101T000009Z-0009"


def kinds_differ(raw: dict[str, Any]) -> None:
    raw["record"]["kind"] = "incremental"
    raw["record"]["parent_id"] = raw["parent"] = "20200101T000009Z-0009"


def dup(raw: dict[str, Any]) -> None:
    raw["files"].append(dict(next(f for f in raw["files"] if f["type"] == "file")))


def under_a_file(raw: dict[str, Any]) -> None:
    entry = dict(next(f for f in raw["files"] if f["type"] == "file"))
    entry["path"] += "/inside"
    raw["files"].append(entry)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (cold, "mode cold with layout dir"),
        (full_with_parent, "a full with a parent"),
        (kinds_differ, "its record is incremental, the manifest full"),
        (dup, "is listed twice"),
        (under_a_file, "lies under the file"),
    ],
)
def test_an_inconsistent_manifest_is_refused_not_blamed_on_the_disk(
    tmp_path: Path, hot: tuple[Cli, str], moto: Endpoint, change: Change, said: str
) -> None:
    cli, full = hot
    forged = "20200101T000004Z-0004"
    plant(moto, full, "hotjob", forged, change)
    done = run(cli, "restore", forged, "--from", "offsite", "--yes")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "Is a directory" not in done.stderr and "cannot be written here" not in done.stderr
    assert f"{forged}.json.gz: not a manifest of ours" in done.stderr and said in done.stderr
    assert [p.name for p in (tmp_path / "archives").iterdir() if forged in p.name] == []
    listed = run(cli, "list", "--offsite", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [full]


@pytest.mark.parametrize("clash", ["twice", "under", "dir over file"])
def test_a_clash_in_the_tree_is_the_manifests_fault(
    tmp_path: Path, moto: Endpoint, clash: str
) -> None:
    """The second guard: a manifest that passed its checks (an older rule, a bug) and still
    names one path twice is not reported as a local write failure."""
    tree = make_tree(tmp_path / "hot-1", {"a.manifest": b"{}", "a.tar.gz": b"x" * 900})
    offsite = Offsite(moto.settings(prefix="t"))
    backup_id = "20261130T030000Z-aaaa"
    assert offsite.send(hot_backup(tree, backup_id)).complete
    manifest = offsite.manifest(backup_id)
    first = manifest.files[0]
    extra = {
        "twice": [first],
        "under": [type(first)(**{**first.__dict__, "path": first.path + "/x"})],
        "dir over file": [type(first)(**{**first.__dict__, "type": "dir", "object": ""})],
    }[clash]
    manifest.files = [*manifest.files, *extra]
    storage = tmp_path / "storage"
    storage.mkdir()
    with pytest.raises(IntegrityError) as caught:
        offsite._rebuild_tree(manifest, storage / manifest.name)
    line = str(caught.value)
    assert f"backup {backup_id}" in line and first.path in line and "manifest" in line, line
    assert list(storage.iterdir()) == []
