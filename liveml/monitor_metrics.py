"""The monitor's Prometheus metrics: quality and drift of each version's latest windows, as gauges.

Names and labels are the contract the alert rules (``deploy/prometheus/quality.yml``, ``drift.yml``) and the
dashboard are written against:

- ``liveml_quality{model_name,model_version,model_label,window,metric,kind}``: the latest window of each
  window spec, ``kind`` ``estimated`` or ``realised`` (a null figure is not exported);
- ``liveml_quality_window_end_timestamp_seconds{model_name,model_version,model_label,window}``;
- ``liveml_quality_baseline{model_name,model_version,metric}``: the version's own Evaluator figure from its
  ``lineage.json`` (``auc``, ``log_loss``);
- ``liveml_drift_distance`` / ``liveml_drift_threshold{model_name,model_version,window,kind,feature,statistic}``:
  the latest window of each;
- ``liveml_monitor_last_success_timestamp_seconds``, ``liveml_monitor_runs_total{result="ok"|"error"}``.

The figure gauges come from a custom collector whose state is replaced whole after each cycle (the
client's documented pattern for metrics mirrored from elsewhere), so a version that leaves the tables
leaves ``/metrics`` with it instead of lingering with its last value.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Iterable, Mapping

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily

from liveml.errors import PortInUseError
from liveml.quality_windows import latest_windows

QUALITY_LABELS = ["model_name", "model_version", "model_label", "window", "metric", "kind"]
WINDOW_END_LABELS = ["model_name", "model_version", "model_label", "window"]
BASELINE_LABELS = ["model_name", "model_version", "metric"]
DRIFT_LABELS = ["model_name", "model_version", "window", "kind", "feature", "statistic"]
BASELINE_METRICS = ("auc", "log_loss")


def _label(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _finite(value: Any) -> bool:
    try:
        return value is not None and value is not pd.NA and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class _Figures:
    """A collector over the latest cycle's samples; :meth:`replace` swaps them in one assignment."""

    def __init__(self) -> None:
        self._samples: dict[str, list[tuple[list[str], float]]] = {}
        self._lock = threading.Lock()

    def replace(self, name: str, samples: list[tuple[list[str], float]]) -> None:
        with self._lock:
            self._samples = {**self._samples, name: samples}

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # unchecked collector: its families vary with the data

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            samples = self._samples
        for name, (doc, labels) in FAMILIES.items():
            family = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in samples.get(name, []):
                family.add_metric(values, value)
            yield family


FAMILIES = {
    "liveml_quality": ("Model quality of the latest window of each window spec, estimated (CBPE) or realised",
                       QUALITY_LABELS),
    "liveml_quality_window_end_timestamp_seconds": ("End of the window liveml_quality describes (exclusive)",
                                                    WINDOW_END_LABELS),
    "liveml_quality_baseline": ("The version's own Evaluator metric at training time (lineage.json)",
                                BASELINE_LABELS),
    "liveml_drift_distance": ("TFDV comparator distance of the latest window from the training reference",
                              DRIFT_LABELS),
    "liveml_drift_threshold": ("The schema's threshold for liveml_drift_distance", DRIFT_LABELS),
}


class MonitorMetrics:
    """The monitor's metrics in a registry of their own (tests read them with :meth:`exposition`)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.runs = Counter("liveml_monitor_runs", "Monitor cycles by result", ["result"], registry=self.registry)
        for result in ("ok", "error"):
            self.runs.labels(result=result)  # both series exist from the start, at 0
        self.last_success = Gauge("liveml_monitor_last_success_timestamp_seconds",
                                  "Wall time the last cycle finished without error", registry=self.registry)
        self.figures = _Figures()
        self.registry.register(self.figures)
        self.server = None

    def set_quality(self, rows: pd.DataFrame, baselines: Mapping[tuple[str, int], Mapping[str, float]]) -> None:
        """``rows``: ``monitoring.quality`` rows (any windows; the latest of each spec is exported);
        ``baselines``: (model_name, model_version) -> the lineage's metrics."""
        latest = latest_windows(rows) if len(rows) else rows
        quality, ends = [], {}
        for r in latest.itertuples(index=False):
            group = [_label(r.model_name), _label(r.model_version), _label(r.model_label), _label(r.window)]
            ends[tuple(group)] = pd.Timestamp(r.window_end).timestamp()
            for kind in ("estimated", "realised"):
                value = getattr(r, kind)
                if _finite(value):
                    quality.append(([*group[:4], r.metric, kind], float(value)))
        self.figures.replace("liveml_quality", quality)
        self.figures.replace("liveml_quality_window_end_timestamp_seconds",
                             [(list(k), v) for k, v in sorted(ends.items())])
        base = [([_label(name), _label(version), m], float(metrics[m]))
                for (name, version), metrics in sorted(baselines.items()) for m in BASELINE_METRICS
                if _finite(metrics.get(m))]
        self.figures.replace("liveml_quality_baseline", base)

    def set_drift(self, rows: pd.DataFrame) -> None:
        """``rows``: ``monitoring.drift`` rows; the latest window of each (spec, version, kind, feature,
        statistic) is exported."""
        distance, threshold = [], []
        if len(rows):
            keys = ["window", "model_name", "model_version", "kind", "feature", "statistic"]
            k = rows[keys].astype(object).where(rows[keys].notna(), "")
            last = rows.groupby([k[c] for c in keys])["window_start"].transform("max")
            for r in rows[rows["window_start"] == last].itertuples(index=False):
                labels = [_label(getattr(r, c)) for c in DRIFT_LABELS]
                if _finite(r.distance):
                    distance.append((labels, float(r.distance)))
                if _finite(r.threshold):
                    threshold.append((labels, float(r.threshold)))
        self.figures.replace("liveml_drift_distance", distance)
        self.figures.replace("liveml_drift_threshold", threshold)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``host:port`` (a thread); a taken port is a :class:`PortInUseError`."""
        from prometheus_client import start_http_server

        try:
            self.server = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise PortInUseError(f"the monitor's metrics port {port} is taken ({exc.strerror}): stop what holds "
                                 "it, or change prometheus.metrics_base_port / monitor.metrics_port_offset") from None

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()
