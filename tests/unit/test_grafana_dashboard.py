"""deploy/grafana/liveml.json: every query names metrics the platform exports (liveml/metric_catalog.py),
parses as PromQL (promtool), and the dashboard shows every figure an alert rule watches."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from liveml import metric_catalog as mc
from tests.unit.test_alert_rules import alerts, binary

pytestmark = pytest.mark.unit
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "liveml.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def as_promql(expr: str) -> str:
    """Grafana's variables replaced by what Grafana would put there, so Prometheus's parser can read it."""
    return expr.replace("$__rate_interval", "1m").replace("$model", ".*")


def test_layout_and_datasource_variable(dashboard):
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert len(exprs(dashboard)) >= 20


def test_every_query_names_catalogued_metrics(dashboard):
    for title, expr in exprs(dashboard):
        used = mc.metric_names(expr)
        assert used, f"{title}: no metric in {expr!r}"
        unknown = used - set(mc.BY_SERIES)
        assert not unknown, f"panel {title!r} queries {sorted(unknown)}, not exported (liveml/metric_catalog.py)"
        assert all(mc.BY_SERIES[u].queryable for u in used), f"{title}: a distribution is exported as 0"


def test_variable_queries_name_catalogued_metrics(dashboard):
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition") or ""
        for metric in re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)", query):
            assert metric in mc.BY_SERIES, f"variable {variable['name']}: {metric}"


def test_every_query_is_promql(dashboard, tmp_path):
    """promtool parses each query as a recording rule's expression."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": as_promql(expr)} for i, (_, expr) in enumerate(exprs(dashboard))]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    proc = subprocess.run([binary("promtool", "prometheus"), "check", "rules", str(tmp_path / "queries.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dashboard_shows_what_the_alerts_watch(dashboard):
    shown = set().union(*(mc.metric_names(e) for _, e in exprs(dashboard)))
    for name, rule in alerts().items():
        missing = mc.metric_names(rule["expr"]) - shown
        assert not missing, f"{name} watches {sorted(missing)}, which no panel shows"
