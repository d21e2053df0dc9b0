"""The restore swap plan: names beside every live dir, unique even within one second."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

from influx_backupd.core.config import Config
from influx_backupd.restore.swap import SwapPlan


def _config(root: Path) -> Config:
    dirs = {top: root / top for top in ("meta", "data", "wal")}
    return cast(Config, SimpleNamespace(server=SimpleNamespace(dirs=lambda: dirs)))


def test_two_restores_in_the_same_second_get_their_own_rollback_dirs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    plans = [SwapPlan.for_server(config) for _ in range(20)]
    names = {p.rollback["data"] for p in plans} | {p.staging["data"] for p in plans}
    assert len(names) == 40
    for plan in plans:
        assert plan.rollback["data"].parent == tmp_path
        assert plan.staging["data"].name.startswith(".data.restore-")
        assert set(plan.targets) == {"data", "meta", "wal"}


def test_a_plan_names_each_live_dir_with_its_aside_and_staged_dirs(tmp_path: Path) -> None:
    plan = SwapPlan.for_server(_config(tmp_path))
    assert plan.swaps() == [
        [str(tmp_path / t), str(plan.rollback[t]), str(plan.staging[t])]
        for t in ("data", "meta", "wal")
    ]


def test_a_symlinked_live_dir_is_staged_and_moved_aside_beside_its_real_dir(
    tmp_path: Path,
) -> None:
    """Beside the link, the swap would replace the link by a plain dir on its parent's
    filesystem; beside the real dir, the link names the restored data."""
    (tmp_path / "big" / "data").mkdir(parents=True)
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "data").symlink_to(tmp_path / "big" / "data")
    plan = SwapPlan.for_server(_config(tmp_path / "server"))
    assert plan.targets["data"] == tmp_path / "big" / "data"
    assert plan.staging["data"].parent == tmp_path / "big"
    assert plan.rollback["data"].parent == tmp_path / "big"
    assert plan.targets["meta"] == tmp_path / "server" / "meta"
