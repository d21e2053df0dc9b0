"""docs/reliability.md is generated from a run of tests/faults (scripts/reliability_report.py):
it renders what the results say, and it reports on exactly the fault tests there are."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "reliability_report.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reliability_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_document_says_what_the_results_say() -> None:
    rows = [
        {"nodeid": "tests/faults/t.py::a[x]", "class": "kill", "fault": "SIGKILL", "variant": "x",
         "outcome": "passed", "data_lost": {"points": 0, "archives": 0}, "examples": 1},
        {"nodeid": "tests/faults/t.py::a[y]", "class": "kill", "fault": "SIGKILL", "variant": "y",
         "outcome": "failed", "data_lost": {"points": 7, "archives": 1}, "examples": 1},
        {"nodeid": "tests/faults/t.py::f", "class": "fuzz", "fault": "configs", "variant": "all",
         "outcome": "passed", "data_lost": None, "examples": 3000},
    ]  # fmt: skip
    text = _script().render(rows, "now")
    assert (
        "| kill | SIGKILL at every phase | 2 | 2 | 1 failed, 1 passed | 7 points, 1 backups |"
        in text
    )
    assert "| fuzz | config fuzzer | 1 | 3000 | held | not measured |" in text
    assert "  - y: failed; lost: 7 points, 1 backups (`tests/faults/t.py::a[y]`)" in text


def test_the_document_reports_on_every_fault_test_and_no_other() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def test_a_fault_test_without_a_mark_is_named(tmp_path: Path) -> None:
    rows = [
        {"nodeid": "tests/faults/t.py::marked", "class": "kill", "fault": "SIGKILL",
         "variant": "x", "outcome": "passed", "data_lost": None, "examples": 1},
        {"nodeid": "tests/faults/t.py::bare", "class": "?", "fault": "(no fault marker)",
         "variant": "bare", "outcome": "passed", "data_lost": None, "examples": 1},
    ]  # fmt: skip
    doc = tmp_path / "reliability.md"
    script = _script()
    doc.write_text(script.render(rows, "now"))
    assert script.unmarked(doc) == {"tests/faults/t.py::bare"}
