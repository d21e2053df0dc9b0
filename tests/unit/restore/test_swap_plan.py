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
