"""Every metric name the platform exports to Prometheus, by exporter, with its type.

The alert rules (``deploy/prometheus/*.yml``), the Grafana dashboard (``deploy/grafana/liveml.json``) and the
tests name metrics from this list only; ``tests/unit/test_metric_catalog.py`` holds it to the code that
registers them, and :func:`missing_series` asks a running Prometheus which of them it really holds.

Exporters:

* ``flink``: Flink's own metrics, through its PrometheusReporter (``flink_<scope>_<name>``).
* ``features``, ``enrich``, ``feedback``: PyFlink metrics of the feature job's Redis UDF, the enrichment
  operator and the feedback job. Flink's reporter names them ``flink_taskmanager_job_task_operator_`` plus the
  user groups and the metric name; a key/value group (``add_group("version", v)``) puts its key in the name
  and its value in a label of that key (:func:`flink_metric_name`). It exports every counter as a Prometheus
  gauge holding the count (``rate()`` still applies) and a PyFlink distribution as a gauge that is always 0
  (a ``DistributionResult`` is not a number, and the reporter exports numbers only): those entries are
  catalogued as ``distribution`` and must not be queried.
* ``serving``: the model server's prometheus_client metrics on ``/monitoring/prometheus/metrics`` (TF
  Serving's names with ``:`` as ``_``); a counter's series ends in ``_total``, a histogram's in
  ``_bucket`` / ``_sum`` / ``_count``.
* ``monitor``: the ``liveml monitor`` process's prometheus_client gauges.

Flink label names (``job_name``, ``job_id``, ``operator_name``, ``subtask_index``, ``tm_id``, ...) are Flink's
scope variables without their angle brackets; their values have every character outside ``[a-zA-Z0-9:_]``
replaced by ``_`` (``liveml-enrich`` is ``liveml_enrich``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from liveml.errors import LivemlError

OPERATOR_SCOPE = "taskmanager_job_task_operator"
_UNALLOWED = re.compile(r"[^a-zA-Z0-9:_]")  # Flink's PrometheusReporter, for names and label values


@dataclass(frozen=True)
class MetricSpec:
    """One metric family. ``name`` is what PromQL names (a histogram's base name); ``kind`` is counter, gauge,
    histogram or distribution (Flink: exported, always 0); ``labels`` are the exporter's own labels."""

    name: str
    kind: str
    exporter: str
    labels: tuple[str, ...] = ()
    help: str = ""

    @property
    def queryable(self) -> bool:
        return self.kind != "distribution"

    def series_names(self) -> tuple[str, ...]:
        """The names Prometheus stores: a histogram's ``_bucket``, ``_sum`` and ``_count`` series."""
        if self.kind == "histogram":
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count"))
        return (self.name,)


def flink_metric_name(groups: Sequence[str | tuple[str, str]], name: str,
                      scope: str = OPERATOR_SCOPE) -> tuple[str, dict[str, str]]:
    """The Prometheus name and user labels Flink's PrometheusReporter gives a metric registered under
    ``groups`` (a plain group is a name; a key/value group ``(key, value)``): ``flink_<scope>_<groups>_<name>``,
    a key/value group contributing its key to the name and ``{key: value}`` to the labels. Follows Flink's
    ``AbstractPrometheusReporter`` (logical scope, ``[^a-zA-Z0-9:_]`` to ``_``)."""
    parts, labels = ["flink", scope], {}
    for group in groups:
        if isinstance(group, tuple):
            key, value = group
            parts.append(key)
            labels[_UNALLOWED.sub("_", key)] = _UNALLOWED.sub("_", str(value))
        else:
            parts.append(group)
    parts.append(name)
    return _UNALLOWED.sub("_", "_".join(parts)), labels


def pyflink_metric_name(namespace: str, name: str) -> tuple[str, dict[str, str]]:
    """:func:`flink_metric_name` for a PyFlink metric, from the namespace PyFlink's metric group sends to the
    JVM (a JSON list: the group names, then their types ``MetricGroupType.generic|key|value``, then a meter's
    time span), the way ``FlinkMetricContainer`` registers it under the operator's group."""
    items = json.loads(namespace)
    half = len(items) // 2  # a meter appends its time span: an odd length
    names, types = items[:half], items[half:2 * half]
    groups: list[str | tuple[str, str]] = []
    for group, kind in zip(names, types):
        if kind.endswith("value") and groups and isinstance(groups[-1], tuple):
            groups[-1] = (groups[-1][0], group)
        elif kind.endswith("key"):
            groups.append((group, ""))
        else:
            groups.append(group)
    return flink_metric_name(groups, name)


def _op(*groups: str | tuple[str, str]):
    def make(name: str, kind: str, exporter: str, help: str) -> MetricSpec:
        full, labels = flink_metric_name(groups, name)
        return MetricSpec(full, kind, exporter, tuple(labels), help)
    return make


_enrich, _by_status = _op("liveml", "enrich"), _op("liveml", "enrich", ("version", ""), ("status", ""))
_view, _feedback = _op("liveml", ("view", "")), _op("liveml", "feedback")

# flink_jobs/feedback.py COUNTERS, as the feedback job registers them under liveml.feedback
FEEDBACK_COUNTERS = ("labels", "labels_without_prediction", "duplicate_labels", "labels_after_max_delay",
                     "labels_before_decision", "late_labels", "unscored_predictions", "duplicate_predictions")

CATALOG: tuple[MetricSpec, ...] = (
    # --- Flink's own (JobManager, job and operator scopes) ------------------------------------------------
    MetricSpec("flink_jobmanager_numRunningJobs", "gauge", "flink", (), "jobs in RUNNING"),
    MetricSpec("flink_jobmanager_numRegisteredTaskManagers", "gauge", "flink", (), "TaskManagers registered"),
    MetricSpec("flink_jobmanager_taskSlotsTotal", "gauge", "flink", (), "task slots"),
    MetricSpec("flink_jobmanager_taskSlotsAvailable", "gauge", "flink", (), "free task slots"),
    MetricSpec("flink_jobmanager_job_uptime", "gauge", "flink", ("job_id", "job_name"),
               "ms in RUNNING without interruption; 0 while not running, -1 once ended"),
    MetricSpec("flink_jobmanager_job_numRestarts", "counter", "flink", ("job_id", "job_name"), "restarts"),
    MetricSpec("flink_jobmanager_job_lastCheckpointDuration", "gauge", "flink", ("job_id", "job_name"), "ms"),
    MetricSpec("flink_jobmanager_job_numberOfFailedCheckpoints", "counter", "flink", ("job_id", "job_name"), ""),
    MetricSpec("flink_taskmanager_job_task_operator_numRecordsIn", "counter", "flink",
               ("job_name", "operator_name", "subtask_index"), "records into an operator (a DLQ writer: dead letters)"),
    MetricSpec("flink_taskmanager_job_task_operator_numRecordsOut", "counter", "flink",
               ("job_name", "operator_name", "subtask_index"),
               "records out of an operator (a Kafka source: events read)"),
    # --- the enrichment operator (flink_jobs/enrich_operator.py, group liveml.enrich) -------------------------
    _enrich("predictions", "counter", "enrich", "prediction rows emitted"),
    _by_status("predictions", "counter", "enrich", "prediction rows by model version and status"),
    _enrich("retries", "counter", "enrich", "batch retries"),
    _enrich("timeouts", "counter", "enrich", "rows past the operator's budget"),
    _enrich("in_flight", "gauge", "enrich", "batches in flight"),
    _enrich("latency_p50_ms", "gauge", "enrich", "p50 row latency over the last 2,000 rows, ms"),
    _enrich("latency_p99_ms", "gauge", "enrich", "p99 row latency over the last 2,000 rows, ms"),
    _enrich("flushed_rows", "gauge", "enrich", "latencies moved into the distribution at the last flush"),
    _enrich("latency_ms", "distribution", "enrich", "row latency (exported as 0)"),
    # --- the feature job's Redis UDF (flink_jobs/udfs.py, group liveml.view.<view>) ---------------------------
    _view("online_rows", "counter", "features", "feature rows handed to the online store"),
    _view("online_writes", "counter", "features", "entity hashes written"),
    _view("online_stale_skipped", "counter", "features", "rows older than what Redis holds, not written"),
    _view("online_newest_event_ms", "gauge", "features", "newest event time written, epoch ms (0: none yet)"),
    _view("online_write_ms", "distribution", "features", "Redis round trip per batch (exported as 0)"),
    _view("online_event_lag_ms", "distribution", "features", "wall time - newest event per batch (exported as 0)"),
    # --- the feedback job (flink_jobs/feedback_job.py, group liveml.feedback) --------------------------------
    *(_feedback(c, "counter", "feedback", c.replace("_", " ")) for c in FEEDBACK_COUNTERS),
    _op("liveml", "feedback", ("outcome", ""))("outcomes", "counter", "feedback",
                                                 "outcome rows written, labelled or unlabelled"),
    # --- the model server (serving/, prometheus_client) -------------------------------------------------------
    MetricSpec("tensorflow_serving_request_count_total", "counter", "serving", ("model_name", "API", "status"),
               "requests by model and outcome"),
    MetricSpec("tensorflow_serving_request_latency", "histogram", "serving", ("model_name", "API", "entrypoint"),
               "request latency, seconds"),
    MetricSpec("tensorflow_serving_batching_session_processed_batch_size", "histogram", "serving", ("model_name",)),
    MetricSpec("tensorflow_serving_batching_session_input_batch_size", "histogram", "serving", ("model_name",)),
    MetricSpec("tensorflow_serving_batching_session_padding_size", "histogram", "serving", ("model_name",)),
    MetricSpec("tensorflow_serving_batching_session_queuing_latency", "histogram", "serving", ("model_name",),
               "seconds in the batch queue"),
    MetricSpec("tensorflow_cc_saved_model_load_attempt_count_total", "counter", "serving", ("model_name", "status")),
    MetricSpec("tensorflow_serving_loaded_versions", "gauge", "serving", ("model_name",), "versions AVAILABLE"),
    # --- the monitor (liveml monitor, prometheus_client) -------------------------------------------------------
    MetricSpec("liveml_quality", "gauge", "monitor",
               ("model_name", "model_version", "model_label", "window", "metric", "kind"),
               "latest window's quality; kind estimated (CBPE) or realised"),
    MetricSpec("liveml_quality_baseline", "gauge", "monitor", ("model_name", "model_version", "metric"),
               "the version's Evaluator metric from lineage.json"),
    MetricSpec("liveml_quality_window_end_timestamp_seconds", "gauge", "monitor",
               ("model_name", "model_version", "model_label", "window")),
    MetricSpec("liveml_drift_distance", "gauge", "monitor",
               ("model_name", "model_version", "window", "kind", "feature", "statistic"), "kind drift or skew"),
    MetricSpec("liveml_drift_threshold", "gauge", "monitor",
               ("model_name", "model_version", "window", "kind", "feature", "statistic"), "declared in the schema"),
    MetricSpec("liveml_monitor_last_success_timestamp_seconds", "gauge", "monitor"),
    MetricSpec("liveml_monitor_runs_total", "counter", "monitor", ("result",)),
)

EXPORTERS = ("flink", "features", "enrich", "feedback", "serving", "monitor")
BY_NAME: dict[str, MetricSpec] = {m.name: m for m in CATALOG}
# a series name (a histogram's _bucket, ...) -> its family
BY_SERIES: dict[str, MetricSpec] = {s: m for m in CATALOG for s in m.series_names()}


def series_names(exporters: Iterable[str] | None = None, queryable_only: bool = True) -> list[str]:
    """Every series name of the catalogue (of ``exporters``, default all), distributions left out unless
    ``queryable_only`` is False."""
    chosen = set(exporters or EXPORTERS)
    unknown = chosen - set(EXPORTERS)
    if unknown:
        raise LivemlError(f"unknown exporter(s) {sorted(unknown)}; known: {list(EXPORTERS)}")
    return [s for m in CATALOG if m.exporter in chosen and (m.queryable or not queryable_only)
            for s in m.series_names()]


def missing_series(prometheus_url: str, names: Iterable[str], timeout_s: float = 10.0) -> list[str]:
    """Of ``names`` (series names, as :func:`series_names` gives them), those Prometheus at ``prometheus_url``
    holds no series of, in the given order. Reads Prometheus's HTTP API ``/api/v1/label/__name__/values``
    (every metric name in its TSDB). An unreachable Prometheus or an error answer raises LivemlError naming
    the URL."""
    import requests

    url = f"{prometheus_url.rstrip('/')}/api/v1/label/__name__/values"
    try:
        response = requests.get(url, timeout=timeout_s)
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise LivemlError(f"Prometheus at {url} did not answer with JSON: {exc}") from None
    if response.status_code != 200 or body.get("status") != "success":
        raise LivemlError(f"Prometheus at {url} answered {response.status_code}: {body.get('error', body)}")
    present = set(body.get("data") or [])
    return [n for n in names if n not in present]


# --- metric names in PromQL ---------------------------------------------------------------------------------
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
             "bool", "atan2", "inf", "nan", "start", "end"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]*)"')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")  # Grafana's template variables
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.I)
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: bare or before ``{`` / ``[``, and ``{__name__="..."}``.
    Left out: function and aggregation names (an identifier followed by ``(``), keywords, label names in
    ``by``/``on``/``group_left``/... lists and inside ``{...}``, strings, durations, numbers and Grafana
    variables (``$__rate_interval``, ``${view}``)."""
    names: set[str] = set()
    text = _VARIABLE.sub(" 0 ", expr)
    names.update(_NAME_MATCHER.findall(text))
    text = _STRING.sub('""', text)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers (strings already emptied)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # range and subquery durations
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+-?[0-9a-zA-Z]+", " ", text, flags=re.I)
    for m in _IDENT.finditer(text):
        word = m.group(1)
        if word.lower() in _KEYWORDS:
            continue
        if re.match(r"\s*\(", text[m.end():]):  # a function or an aggregation
            continue
        names.add(word)
    return names
