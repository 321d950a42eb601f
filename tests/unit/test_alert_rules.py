"""The alert rules in deploy/prometheus/, through the real promtool; Alertmanager's and Prometheus's generated
configs through amtool and promtool.

promtool comes with Debian's ``prometheus`` package and amtool with ``prometheus-alertmanager``; a missing
binary fails the test with the command that installs it (these tests run in ``make test``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from liveml import metric_catalog as mc

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus"
RULE_FILES = sorted(RULES.glob("*.yml"))
TEST_FILES = sorted((RULES / "tests").glob("*.yml"))


def binary(name: str, package: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not found:
        pytest.fail(f"{name} is not installed: apt-get install {package} (or `make setup` as root)")
    return found


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


def alerts() -> dict[str, dict]:
    """alert name -> rule, over every rules file; a name given twice fails."""
    out: dict[str, dict] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in out, f"{rule['alert']} is defined twice ({path.name})"
                    out[rule["alert"]] = rule | {"file": path.name}
    return out


def test_the_rules_are_valid():
    assert RULE_FILES and len(alerts()) >= 10
    proc = run(binary("promtool", "prometheus"), "check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass():
    proc = run(binary("promtool", "prometheus"), "test", "rules", *map(str, TEST_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(TEST_FILES)


def test_promtool_fails_a_wrong_expectation(tmp_path):
    """The tests can fail: one expected summary changed by a character is caught."""
    test = yaml.safe_load((RULES / "tests" / "drift.yml").read_text())
    test["rule_files"] = [str(RULES / "drift.yml")]
    firing = next(case for t in test["tests"] for case in t["alert_rule_test"] if case["exp_alerts"])
    firing["exp_alerts"][0]["exp_annotations"]["summary"] += "!"
    (tmp_path / "drift.yml").write_text(yaml.safe_dump(test))
    proc = run(binary("promtool", "prometheus"), "test", "rules", str(tmp_path / "drift.yml"))
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr
    assert "0.300 above its threshold!" in proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    defined = alerts()
    firing, quiet, tested_files = set(), set(), set()
    for path in TEST_FILES:
        test = yaml.safe_load(path.read_text())
        tested_files |= {(path.parent / f).resolve().name for f in test["rule_files"]}
        for case in (c for t in test["tests"] for c in t.get("alert_rule_test", [])):
            # promtool passes `exp_alerts: []` for a name no rule has: a typo would pass silently
            assert case["alertname"] in defined, f"{path.name}: no rule named {case['alertname']}"
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
            for alert in case.get("exp_alerts") or []:
                rule = defined[case["alertname"]]
                assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
                assert set(alert["exp_annotations"]) == {"summary", "runbook"}
    assert tested_files == {p.name for p in RULE_FILES}
    assert sorted(set(defined) - firing) == [], "alerts without a case where they fire"
    assert sorted(set(defined) - quiet) == [], "alerts without a case where they stay quiet"


def test_every_alert_has_for_severity_summary_and_runbook():
    for name, rule in alerts().items():
        assert rule.get("for"), name
        assert rule["labels"].get("severity") in ("warning", "critical"), name
        assert rule["annotations"].get("summary") and len(rule["annotations"].get("runbook", "")) > 40, name


def test_every_metric_an_alert_reads_is_catalogued_and_queryable():
    for name, rule in alerts().items():
        used = mc.metric_names(rule["expr"])
        assert used, f"{name}: no metric found in {rule['expr']!r}"
        unknown = used - set(mc.BY_SERIES)
        assert not unknown, f"{name} reads {sorted(unknown)}, not in liveml/metric_catalog.py"
        assert all(mc.BY_SERIES[u].queryable for u in used), f"{name} reads a distribution (exported as 0)"


def test_the_issue_covers_each_concern():
    """Issue 14's list: drift (features and score), quality realised and estimated, freshness, DLQ, prediction
    errors and timeouts, p99 latency, a job not running, labels stopping."""
    exprs = {name: rule["expr"] for name, rule in alerts().items()}
    assert 'feature!="score"' in exprs["FeatureDrift"] and 'feature="score"' in exprs["ScoreDrift"]
    assert 'kind="realised"' in exprs["QualityDropRealised"] and 'kind="estimated"' in exprs["QualityDropEstimated"]
    assert "online_newest_event_ms" in exprs["FeatureFreshnessLag"]
    assert "_dlq" in exprs["DeadLetterRateHigh"]
    assert 'status="timeout"' in exprs["PredictionTimeoutRate"] and "unavailable" in exprs["PredictionErrorRate"]
    assert "latency_p99_ms" in exprs["PredictionLatencyP99High"]
    assert {"FlinkJobNotRunning", "FlinkJobGone", "LabelsStopped"} <= set(exprs)


@pytest.fixture
def cfg(tmp_path):
    from liveml.config import load_config

    def make(**alertmanager):
        return load_config(env={}, overrides={"home": str(tmp_path / "home"), "alertmanager": alertmanager})
    return make


def test_prometheus_loads_every_rules_file_and_sends_to_alertmanager(cfg):
    from liveml.stack.prometheus import PrometheusService

    config = cfg(port=19995)
    path = PrometheusService(config).write_conf()
    written = yaml.safe_load(path.read_text())
    assert written["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["localhost:19995"]
    proc = run(binary("promtool", "prometheus"), "check", "config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in proc.stdout
    for rules in RULE_FILES:
        assert f"Checking {rules}" in proc.stdout


@pytest.mark.parametrize("webhook", [None, "http://localhost:18999/alerts"])
def test_alertmanager_config_is_valid(cfg, webhook):
    from liveml.stack.alertmanager import AlertmanagerService

    svc = AlertmanagerService(cfg(webhook_url=webhook))
    path = svc.write_conf()
    assert path == svc.cfg.path("alertmanager", "alertmanager.yml")
    proc = run(binary("amtool", "prometheus-alertmanager"), "check-config", str(path))
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
    written = yaml.safe_load(path.read_text())
    receiver = next(r for r in written["receivers"] if r["name"] == written["route"]["receiver"])
    if webhook:
        assert receiver["webhook_configs"] == [{"url": webhook, "send_resolved": True}]
    else:
        assert set(receiver) == {"name"}
    assert svc.ports() == [svc.cfg.alertmanager.port]


def test_alertmanager_runs_after_prometheus_in_a_bare_up(cfg):
    from liveml.stack import launcher

    order = launcher.default_up(cfg())
    assert "alertmanager" in order and order.index("prometheus") < order.index("alertmanager")
    binary("prometheus-alertmanager", "prometheus-alertmanager")  # the binary the service starts
