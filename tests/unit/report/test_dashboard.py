from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.report.metrics import INSTANCE_LABEL, JOB_LABEL, METRIC_LABELS, METRIC_NAMES

DASHBOARD = Path(__file__).resolve().parents[3] / "packaging" / "grafana-dashboard.json"
METRIC = re.compile(r"\binflux_backupd_[A-Za-z0-9_:]*")
DS_UID = "${DS_PROMETHEUS}"
# Every metric is used; list here any left out on purpose, with the reason.
# The end of a stop window InfluxdLeftDown waits for: a time for the alert, not a figure to
# watch (the left_down panel shows the state)
NOT_ON_DASHBOARD: frozenset[str] = frozenset(
    {"influx_backupd_influxd_down_expected_until_timestamp_seconds"}
)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in panels(dashboard) for t in p.get("targets", [])]


def test_has_panels_with_queries(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert len(targets(dashboard)) >= 6
    assert all(t.get("expr") for _, t in targets(dashboard))


def test_every_metric_in_an_expr_is_rendered(dashboard: dict[str, Any]) -> None:
    for panel, target in targets(dashboard):
        used = METRIC.findall(target["expr"])
        assert used, f"panel {panel['title']!r} queries no influx_backupd metric"
        unknown = set(used) - METRIC_NAMES
        assert not unknown, f"panel {panel['title']!r} uses unrendered {sorted(unknown)}"


def test_every_rendered_metric_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    used = {m for _, t in targets(dashboard) for m in METRIC.findall(t["expr"])}
    assert used == METRIC_NAMES - NOT_ON_DASHBOARD


def test_legend_and_grouping_labels_exist(dashboard: dict[str, Any]) -> None:
    for panel, target in targets(dashboard):
        # plus the target labels Prometheus adds to every scraped series
        available = {lbl for m in METRIC.findall(target["expr"]) for lbl in METRIC_LABELS[m]}
        available |= {"instance", "job"}
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        grouped = {
            lbl.strip()
            for clause in re.findall(r"\bby\s*\(([^)]*)\)", target["expr"])
            for lbl in clause.split(",")
        }
        selected = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", target["expr"]))
        missing = (legend | grouped | selected) - available
        assert not missing, f"panel {panel['title']!r} uses labels {sorted(missing)} no metric has"


def test_every_query_honours_the_instance_and_job_variables(dashboard: dict[str, Any]) -> None:
    for panel, target in targets(dashboard):
        for match in re.finditer(r"(influx_backupd_\w+)(\{[^}]*\})?", target["expr"]):
            name, selector = match.group(1), match.group(2) or ""
            assert 'instance=~"$instance"' in selector, f"panel {panel['title']!r}: {selector!r}"
            assert f'{INSTANCE_LABEL}=~"${INSTANCE_LABEL}"' in selector, panel["title"]
            if JOB_LABEL in METRIC_LABELS[name]:
                assert f'{JOB_LABEL}=~"$job"' in selector, f"panel {panel['title']!r}: {selector!r}"


def test_datasource_is_the_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DS_UID, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == DS_UID, panel["title"]


def test_job_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    job = variables["job"]
    assert job["type"] == "query"
    assert job["datasource"]["uid"] == DS_UID
    assert job["query"] == (
        'label_values(influx_backupd_runs_total{instance=~"$instance", '
        f'{INSTANCE_LABEL}=~"${INSTANCE_LABEL}"}}, {JOB_LABEL})'
    )
    assert set(METRIC.findall(job["query"])) <= METRIC_NAMES


def test_instance_variable_comes_first(dashboard: dict[str, Any]) -> None:
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names.index("instance") < names.index("job"), "the job list follows the instance"
    instance = dashboard["templating"]["list"][names.index("instance")]
    assert instance["type"] == "query" and instance["multi"] and instance["includeAll"]
    assert instance["query"] == "label_values(influx_backupd_build_info, instance)"
    assert JOB_LABEL == "backup_job", "not Prometheus's own target label"
    # then the influx-backupd instances of the hosts chosen (influx-backupd@NAME), before the jobs
    assert names.index("instance") < names.index(INSTANCE_LABEL) < names.index("job")
    ours = dashboard["templating"]["list"][names.index(INSTANCE_LABEL)]
    assert ours["multi"] and ours["includeAll"]
    assert ours["query"] == (
        f'label_values(influx_backupd_build_info{{instance=~"$instance"}}, {INSTANCE_LABEL})'
    )


def test_panel_ids_unique_and_placed(dashboard: dict[str, Any]) -> None:
    all_panels = list(panels(dashboard))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    for p in all_panels:
        grid = p["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, p["title"]


def test_panels_the_brief_asks_for(dashboard: dict[str, Any]) -> None:
    exprs = [t["expr"] for _, t in targets(dashboard)]
    assert any(
        e.startswith("time() - influx_backupd_last_success_timestamp_seconds") for e in exprs
    )
    assert any("increase(influx_backupd_runs_total" in e and 'result!="ok"' in e for e in exprs)
