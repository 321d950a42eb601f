"""The metric catalogue against the code that registers the metrics, and PromQL name extraction.

Flink's naming rule is checked against a documented example of its PrometheusReporter; the PyFlink
operators run their real metric registration on PyFlink's own metric group (no Flink cluster), and the names
follow from the namespaces PyFlink would send to the JVM; the model server's names come from
prometheus_client's registry after importing the server's modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from liveml import metric_catalog as mc
from liveml.errors import LivemlError

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
FLINK_PYTHON = ("features", "enrich", "feedback")


def test_flink_naming_follows_the_reporter_on_its_documented_example():
    # Flink users' mailing list: addGroup("app", v).addGroup("exp", e).counter("myExpCounter") is scraped as
    # flink_taskmanager_job_task_operator_app_exp_myExpCounter{app="aaaa", exp="java_io_IOException", ...}
    name, labels = mc.flink_metric_name([("app", "aaaa"), ("exp", "java.io.IOException")], "myExpCounter")
    assert name == "flink_taskmanager_job_task_operator_app_exp_myExpCounter"
    assert labels == {"app": "aaaa", "exp": "java_io_IOException"}
    assert mc.flink_metric_name(["liveml", "enrich"], "latency_p99_ms")[0] == \
        "flink_taskmanager_job_task_operator_liveml_enrich_latency_p99_ms"


@pytest.fixture
def registered(monkeypatch):
    """Every metric registered on PyFlink's real GenericMetricGroup: (prometheus name, labels, kind)."""
    from pyflink.fn_execution.metrics.process.metric_impl import GenericMetricGroup

    seen: list[tuple[str, dict, str]] = []

    def recording(kind: str):
        original = getattr(GenericMetricGroup, kind)

        def method(self, name, *args, **kwargs):
            seen.append((*mc.pyflink_metric_name(self._get_namespace(), name), kind))
            return original(self, name, *args, **kwargs)
        return method

    for kind in ("counter", "gauge", "distribution", "meter"):
        monkeypatch.setattr(GenericMetricGroup, kind, recording(kind))
    return GenericMetricGroup(None, None), seen


def _kinds(seen) -> dict[str, str]:
    return {name: kind for name, _, kind in seen}


def test_the_redis_udf_registers_what_the_catalogue_lists(registered):
    from pyflink.table.udf import FunctionContext

    from flink_jobs.udfs import RedisUpsert
    from iceberg_schemas.features import FEATURE_VIEWS

    root, seen = registered
    udf = RedisUpsert("redis://localhost:1/0", FEATURE_VIEWS[0].name)  # no connection is opened by open()
    udf.open(FunctionContext(root, {}))
    assert {labels.get("view") for _, labels, _ in seen} == {FEATURE_VIEWS[0].name}
    expected = {m.name: m.kind for m in mc.CATALOG if m.exporter == "features"}
    assert _kinds(seen) == expected


def test_the_enrich_operator_registers_what_the_catalogue_lists(registered):
    from pyflink.common import Row
    from pyflink.fn_execution.datastream.process.runtime_context import StreamingRuntimeContext

    from flink_jobs.enrich_job import output_fields
    from flink_jobs.enrich_operator import _Metrics

    root, seen = registered
    names = [n for n, _ in output_fields()]
    ctx = StreamingRuntimeContext("enrich", "enrich (1/1)", 1, 128, 0, 0, {}, root, None, False)
    metrics = _Metrics(ctx, names)
    for version, status in (("2", "ok"), (None, "no_model"), ("2", "timeout")):
        values = {n: None for n in names} | {"model_version": version, "status": status, "latency_ms": 12.0}
        metrics.record(Row(*(values[n] for n in names)))
    metrics.flush()  # registers the per version and status counters
    by_status = [(labels["version"], labels["status"]) for name, labels, _ in seen if "version" in labels]
    assert sorted(by_status) == [("2", "ok"), ("2", "timeout"), ("none", "no_model")]
    expected = {m.name: m.kind for m in mc.CATALOG if m.exporter == "enrich"}
    assert _kinds(seen) == expected


def _registrations(path: Path) -> set[tuple[str, str]]:
    """(kind, name) of every ``.counter("x")`` / ``.gauge("x", ...)`` / ``.distribution("x")`` call with a
    literal name, and of names registered in a loop over a module tuple (``for name in F.COUNTERS``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("counter", "gauge", "distribution", "meter") and node.args):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add((node.func.attr, arg.value))
            elif isinstance(arg, ast.Name):
                found.add((node.func.attr, f"<{arg.id}>"))
    return found


def test_every_pyflink_metric_in_the_jobs_is_catalogued():
    from flink_jobs import feedback

    tails = {m.name.rsplit("_liveml_", 1)[1]: m for m in mc.CATALOG if m.exporter in FLINK_PYTHON}
    registered = set()
    for path in sorted((REPO / "flink_jobs").glob("*.py")):
        registered |= _registrations(path)
    literal = {(kind, name) for kind, name in registered if not name.startswith("<")}
    assert literal, "no metric registration found in flink_jobs/"
    for kind, name in literal:
        matches = [m for tail, m in tails.items() if tail == name or tail.endswith("_" + name)]
        assert matches, f"{kind} {name!r} registered in flink_jobs/ is not in liveml/metric_catalog.py"
        assert kind in {m.kind for m in matches}, f"{name!r} is registered as a {kind}, catalogued otherwise"
    # the feedback job registers its counters from one tuple: the catalogue keeps the same names
    assert tuple(feedback.COUNTERS) == mc.FEEDBACK_COUNTERS


def test_serving_metrics_equal_the_model_servers_registry():
    from prometheus_client import REGISTRY

    import serving.batching  # noqa: F401  (registration happens at import)
    import serving.grpc_server  # noqa: F401
    import serving.models  # noqa: F401

    exported = set()
    for family in REGISTRY.collect():
        if family.name.startswith("tensorflow"):
            counter = family.type == "counter"
            exported.add((family.name + "_total", "counter") if counter else (family.name, family.type))
    assert exported == {(m.name, m.kind) for m in mc.CATALOG if m.exporter == "serving"}


_MONITOR_METRIC = re.compile(r"\b(Gauge|Counter|GaugeMetricFamily|CounterMetricFamily)\(\s*[\"'](liveml_\w+)[\"']")


def test_monitor_names_match_the_monitor_code():
    """What the monitor's own registry exposes (its fixed metrics and its figure families) is the catalogue's."""
    from liveml.monitor_metrics import FAMILIES, MonitorMetrics

    registry = MonitorMetrics().registry
    # prometheus_client exposes a counter's samples as NAME_total
    exposed = {s.name for metric in registry.collect() for s in metric.samples if not s.name.endswith("_created")}
    declared = exposed | set(FAMILIES)
    assert declared == {m.name for m in mc.CATALOG if m.exporter == "monitor"}


@pytest.mark.parametrize("expr, names", [
    ('sum by (job_name, status) (rate(a_total{status=~"x|y"}[5m])) / ignoring(status) group_left() '
     'sum by (job_name) (rate(a_total[5m])) > 0.05', {"a_total"}),
    ('histogram_quantile(0.99, sum by (le) (rate(lat_bucket{model_name="$model"}[$__rate_interval])))',
     {"lat_bucket"}),
    ('(sum(rate(labels[30m])) or vector(0)) == 0 and on() (sum(rate(preds[30m])) > 0)', {"labels", "preds"}),
    ('time() - max by (view) (newest{view=~"${view:regex}"} > 0) / 1000 > 120', {"newest"}),
    ('max_over_time(up[1h]) unless on(job_name) up offset 5m', {"up"}),
    ('{__name__="flink_jobmanager_numRunningJobs", job="flink"}', {"flink_jobmanager_numRunningJobs"}),
    ('label_replace(x, "dst", "$1", "by", "(.*)") * 1e3 + Inf', {"x"}),
    ('avg_over_time(rate(c[5m])[30m:1m]) and bool_like', {"c", "bool_like"}),
    ('sum without (instance) (g)', {"g"}),
])
def test_metric_names_are_read_from_promql(expr, names):
    assert mc.metric_names(expr) == names


def test_missing_series_names_an_unreachable_prometheus():
    with pytest.raises(LivemlError, match="127.0.0.1:9"):
        mc.missing_series("http://127.0.0.1:9", ["liveml_quality"], timeout_s=2)


def test_series_names_expand_histograms_and_leave_distributions_out():
    names = mc.series_names(["serving", "enrich"])
    assert "tensorflow_serving_request_latency_bucket" in names
    assert "tensorflow_serving_request_latency" not in names
    assert not any(n.endswith("_liveml_enrich_latency_ms") for n in names)
    with pytest.raises(LivemlError, match="unknown exporter"):
        mc.series_names(["grafana"])
