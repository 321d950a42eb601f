"""The sections of `liveml report` (:mod:`liveml.report`): each reads its tables with SQL that
``liveml sql`` runs unchanged, keeps its key numbers as tables, and draws its plots.

A section raises :class:`~liveml.report.NoData` when its table is missing or holds nothing in the range,
and :class:`~liveml.report.Unavailable` when its source cannot be reached; the report shows either as the
section's note.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pandas as pd

from liveml import report_html as plots
from liveml.report import (PLOTTED_METRICS, KeyTable, NoData, Reader, Section, Unavailable, bucket_seconds,
                           latest_computation, records, where)

TITLES = {
    "quality": ("Quality per model version",
                "Realised (from the labels) and estimated (NannyML's CBPE, from the scores alone) log loss and "
                "AUC per event-time window, per model version and label; dashed lines are the estimates, "
                "vertical lines the controller's decisions."),
    "drift": ("Drift per feature",
              "Distance of each model input (and the score) from the serving version's training statistics, "
              "TFDV's comparators (L-infinity for categorical, Jensen-Shannon for numeric), with the schema's "
              "threshold (dashed); red points crossed it."),
    "skew": ("Largest skew shares",
             "Share of served feature values that differ from a point-in-time training set's for the same "
             "entity and decision time, largest first."),
    "freshness": ("Feature freshness",
                  "Age of each feature view's values when a prediction used them (predictions.trips."
                  "feature_ages), percentiles per event-time bucket."),
    "latency": ("Prediction latency and status",
                "Latency from the event entering the enrich operator to its prediction, percentiles per "
                "event-time bucket, and the predictions per status."),
    "dlq": ("Dead letters",
            "Events the feature job sent to the dead-letter topics, against the events it accepted; counts "
            "cover whole topics (the report's time range does not apply)."),
    "label_delay": ("Label delays",
                    "Time from a prediction to its label (monitoring.outcomes), and the share never labelled "
                    "within the maximum label delay."),
    "decisions": ("Controller decisions",
                  "What the controller decided and when (monitoring.decisions); also marked on the quality "
                  "timeline."),
}

QUALITY_KEYS = ['"window"', "window_start", "model_name", "model_version", "model_label", "metric"]
DRIFT_KEYS = ['"window"', "window_start", "model_name", "model_version", "kind", "feature", "statistic"]
TABLE_METRICS = ("log_loss", "auc", "brier", "precision", "recall", "positive_rate")  # monitoring.quality.metric
DECISION_TIME_COLUMNS = ("decision_time", "decided_at", "event_time", "time", "created_at")
DECISION_TEXT_COLUMNS = ("action", "decision", "kind", "reason")


def new_section(section_id: str) -> Section:
    title, what = TITLES[section_id]
    return Section(section_id, title, what)


def _cols(df: pd.DataFrame) -> list[str]:
    return list(df.columns)


def _table(section: Section, table_id: str, caption: str, df: pd.DataFrame) -> None:
    section.tables.append(KeyTable(table_id, caption, _cols(df), records(df)))


def tumbling_first(specs) -> list[str]:
    """Window specs with the tumbling ones (SIZE, no /SLIDE) first, each group in sorted order."""
    return sorted(set(specs), key=lambda w: ("/" in w, w))


# --- quality -------------------------------------------------------------------------------------------
def quality(r: Reader, s: Section, decisions: pd.DataFrame | None) -> None:
    r.require("monitoring.quality", "`liveml monitor`")
    base = latest_computation("monitoring.quality", QUALITY_KEYS, r.windows())
    metrics = ", ".join(f"'{m}'" for m in PLOTTED_METRICS)
    df = r.query(s, "log loss and AUC of every window per version (each window's latest computation)", f"""
SELECT window_start, window_end, "window", model_name, model_version, model_label, metric, realised, estimated,
       n_scored, n_labelled, labels_complete
FROM ({base})
WHERE metric IN ({metrics})
ORDER BY "window", model_name, model_version, model_label, metric, window_start""")
    if df.empty:
        raise NoData("no data yet: monitoring.quality has no log loss or AUC rows in the range")
    figures = ",\n       ".join(f"max({kind}) FILTER (WHERE metric = '{m}') AS {m}_{kind}"
                                  for m in TABLE_METRICS for kind in ("realised", "estimated"))
    latest = r.query(s, "each version's latest window, one row per version and window spec", f"""
SELECT "window", model_name, model_version, model_label, window_start, window_end,
       max(n_scored) AS n_scored, max(n_labelled) AS n_labelled, bool_and(labels_complete) AS labels_complete,
       {figures}
FROM (SELECT *, max(window_start) OVER (PARTITION BY "window", model_name, model_version, model_label) AS latest_start
      FROM ({base}))
WHERE window_start = latest_start
GROUP BY ALL
ORDER BY "window", model_name, model_version, model_label""")
    _table(s, "quality-latest", "Each version's latest window, per window spec: realised (empty until its labels "
           "arrive) beside estimated", latest)
    specs = tumbling_first(df["window"])
    for metric in PLOTTED_METRICS:
        rows = df[df["metric"] == metric]
        if not rows.empty:
            s.plots.append(plots.quality_plot(rows, metric, specs, decisions))


# --- drift and skew ------------------------------------------------------------------------------------
def _drift_summary(base: str, order: str, limit: str = "") -> str:
    return f"""
SELECT "window", feature, statistic, model_name, model_version, count(*) AS windows,
       sum(CASE WHEN drifted THEN 1 ELSE 0 END) AS windows_over, max(distance) AS max_distance,
       first(window_end ORDER BY window_start DESC) AS latest_window_end,
       first(distance ORDER BY window_start DESC) AS latest_distance,
       first(threshold ORDER BY window_start DESC) AS latest_threshold,
       first(drifted ORDER BY window_start DESC) AS latest_drifted
FROM ({base})
GROUP BY ALL
ORDER BY {order}{limit}"""


def drift(r: Reader, s: Section) -> None:
    r.require("monitoring.drift", "`liveml monitor`")
    base = latest_computation("monitoring.drift", DRIFT_KEYS, ["kind = 'drift'", *r.windows()])
    df = r.query(s, "drift distance and threshold of every window (each window's latest computation)", f"""
SELECT window_start, window_end, "window", model_name, model_version, feature, statistic, distance, threshold,
       drifted, n
FROM ({base})
ORDER BY feature, "window", model_name, model_version, window_start""")
    if df.empty:
        raise NoData("no data yet: monitoring.drift has no drift rows in the range")
    summary = r.query(s, "per feature: the latest window and the largest distance",
                      _drift_summary(base, '"window", feature, statistic, model_name, model_version'))
    _table(s, "drift-summary", "Per feature and window spec: windows, windows over the threshold, the largest "
           "distance, and the latest window", summary)
    spec = tumbling_first(df["window"])[0]
    s.plots.append(plots.drift_plot(df[df["window"] == spec], spec))


def skew(r: Reader, s: Section) -> None:
    r.require("monitoring.drift", "`liveml monitor`")
    base = latest_computation("monitoring.drift", DRIFT_KEYS, ["kind = 'skew'", *r.windows()])
    shares = f"SELECT * FROM ({base}) WHERE statistic = 'share_differ'"
    summary = r.query(s, "the ten largest skew shares (share_differ)",
                      _drift_summary(shares, "max_distance DESC NULLS LAST, feature", "\nLIMIT 10"))
    if summary.empty:
        raise NoData("no data yet: monitoring.drift has no skew rows in the range")
    _table(s, "skew-largest", "Features whose served values differ most often from the offline ones "
           "(share of rows, largest first)", summary)
    s.plots.append(plots.bar_plot(summary, "feature", "max_distance", "largest share of values that differ",
                                  "Skew: largest share per feature"))
    comparators = f"SELECT * FROM ({base}) WHERE statistic IN ('linf', 'jensen_shannon')"
    tfdv = r.query(s, "TFDV's skew comparator per feature, against the schema's threshold",
                   _drift_summary(comparators, "windows_over DESC, max_distance DESC NULLS LAST, feature",
                                  "\nLIMIT 10"))
    if not tfdv.empty:
        _table(s, "skew-comparators", "TFDV's skew comparator (L-infinity, Jensen-Shannon) between served and "
               "offline statistics of the same rows", tfdv)


# --- predictions: freshness and latency ----------------------------------------------------------------
def _bucket(r: Reader, s: Section) -> tuple[int, list[str]]:
    conds = r.points("event_time")
    r.require("predictions.trips", "the enrich job (`liveml submit enrich`)")
    span = r.query(s, "the predictions' event-time span (which sets the bucket)", f"""
SELECT count(*) AS predictions, min(event_time) AS first_event, max(event_time) AS last_event
FROM predictions.trips{where(conds)}""")
    n = int(span["predictions"].iloc[0])
    if n == 0:
        raise NoData("no data yet: predictions.trips has no rows in the range")
    seconds = (span["last_event"].iloc[0] - span["first_event"].iloc[0]).total_seconds()
    return bucket_seconds(seconds), conds


def freshness(r: Reader, s: Section) -> None:
    width, conds = _bucket(r, s)
    # feature_ages: {view: {"status", "event_time_ms", "age_s"}} as flink_jobs.enrich.assemble writes it
    ages = f"""SELECT event_time, view,
         TRY_CAST(json_extract_string(feature_ages, '$."' || view || '".age_s') AS DOUBLE) AS age_s,
         json_extract_string(feature_ages, '$."' || view || '".status') AS view_status
  FROM (SELECT event_time, feature_ages,
               unnest(CASE WHEN json_valid(feature_ages) THEN json_keys(feature_ages) ELSE [] END) AS view
        FROM predictions.trips{where(conds)})"""
    summary = r.query(s, "age of each view's values at prediction, over the range", f"""
SELECT view, count(*) AS predictions, count(age_s) AS with_age,
       quantile_cont(age_s, 0.5) AS p50_s, quantile_cont(age_s, 0.95) AS p95_s,
       quantile_cont(age_s, 0.99) AS p99_s, max(age_s) AS max_s,
       avg(CASE WHEN view_status = 'ok' THEN 0.0 ELSE 1.0 END) AS not_ok_share
FROM ({ages})
GROUP BY view
ORDER BY view""")
    if summary.empty:
        raise NoData("no data yet: no prediction in the range recorded its feature ages")
    _table(s, "freshness-summary", "Per view: age percentiles (seconds) and the share of predictions whose "
           "values were not 'ok' (missing, expired)", summary)
    over_time = r.query(s, f"age percentiles per {width} s event-time bucket", f"""
SELECT time_bucket(INTERVAL '{width} seconds', event_time) AS bucket, view, count(age_s) AS with_age,
       quantile_cont(age_s, 0.5) AS p50_s, quantile_cont(age_s, 0.95) AS p95_s, quantile_cont(age_s, 0.99) AS p99_s
FROM ({ages})
GROUP BY ALL
ORDER BY view, bucket""")
    s.plots.append(plots.percentile_plot(over_time, "view", ("p50_s", "p95_s", "p99_s"), "age at prediction (s)",
                                         f"Feature age per view ({width} s buckets)"))


def latency(r: Reader, s: Section) -> None:
    width, conds = _bucket(r, s)
    summary = r.query(s, "latency percentiles over the range", f"""
SELECT count(*) AS predictions, count(latency_ms) AS timed,
       quantile_cont(latency_ms, 0.5) AS p50_ms, quantile_cont(latency_ms, 0.95) AS p95_ms,
       quantile_cont(latency_ms, 0.99) AS p99_ms, max(latency_ms) AS max_ms
FROM predictions.trips{where(conds)}""")
    _table(s, "latency-summary", "Latency over the range (milliseconds)", summary)
    statuses = r.query(s, "predictions per status", f"""
SELECT coalesce(status, 'null') AS status, count(*) AS predictions,
       count(*) / sum(count(*)) OVER () AS share
FROM predictions.trips{where(conds)}
GROUP BY 1
ORDER BY predictions DESC, status""")
    _table(s, "latency-status", "Predictions per status", statuses)
    per_bucket = r.query(s, f"latency percentiles and statuses per {width} s event-time bucket", f"""
SELECT time_bucket(INTERVAL '{width} seconds', event_time) AS bucket, count(*) AS predictions,
       quantile_cont(latency_ms, 0.5) AS p50_ms, quantile_cont(latency_ms, 0.95) AS p95_ms,
       quantile_cont(latency_ms, 0.99) AS p99_ms,
       count(*) FILTER (WHERE status = 'ok') AS ok, count(*) FILTER (WHERE status IS DISTINCT FROM 'ok') AS not_ok
FROM predictions.trips{where(conds)}
GROUP BY 1
ORDER BY 1""")
    _table(s, "latency-buckets", f"Per {width} s event-time bucket", per_bucket)
    s.plots.append(plots.percentile_plot(per_bucket.assign(series="all"), "series", ("p50_ms", "p95_ms", "p99_ms"),
                                         "latency (ms)", f"Prediction latency ({width} s buckets)"))
    s.plots.append(plots.status_plot(per_bucket, f"Predictions per bucket: ok and not ok ({width} s)"))


# --- dead letters --------------------------------------------------------------------------------------
def kafka_dead_letters(cfg) -> Callable[[], dict[str, Any]]:
    """:func:`liveml.dlq.dead_letters` on ``cfg``'s Kafka, or :class:`Unavailable` when Kafka does not
    answer (checked with a TCP connect first, so a stopped stack costs half a second, not the consumer's
    timeouts)."""
    def read() -> dict[str, Any]:
        if cfg is None:
            raise Unavailable("no config given, so no Kafka to read the dead-letter topics from")
        from liveml.stack.process import port_open

        servers = cfg.kafka.bootstrap_servers
        host, _, port = servers.split(",")[0].strip().rpartition(":")
        if not port.isdigit() or not port_open(host or "localhost", int(port)):
            raise Unavailable(f"Kafka is not reachable at {servers}, so the dead-letter topics cannot be read "
                              "(`liveml up kafka`); the rest of the report does not need it")
        from liveml.dlq import dead_letters

        try:
            return dead_letters(cfg, timeout_s=10.0)
        except Exception as exc:  # confluent_kafka.KafkaException and its kin
            raise Unavailable(f"reading the dead-letter topics from Kafka at {servers} failed: {exc}") from None

    return read


def dlq(r: Reader, s: Section, read: Callable[[], dict[str, Any]]) -> None:
    from iceberg_schemas.sources import SOURCES

    counts = read()
    rows = []
    for source in SOURCES.values():
        got = counts.get(source.dlq_topic, {"count": 0, "reasons": {}})
        accepted = None
        if r.has(source.raw_table):
            accepted = int(r.query(s, f"events accepted into {source.raw_table} (all time, as the topic)",
                                   f"SELECT count(*) AS n FROM {source.raw_table}")["n"].iloc[0])
        dead = int(got.get("count") or 0)
        total = dead + (accepted or 0)
        reasons = got.get("reasons") or {}
        rows.append({"topic": source.dlq_topic, "dead_letters": dead, "raw_table": source.raw_table,
                     "accepted": accepted, "dlq_share": dead / total if total else None,
                     "reasons": ", ".join(f"{k}: {v}" for k, v in list(reasons.items())[:5])})
    df = pd.DataFrame(rows, columns=["topic", "dead_letters", "raw_table", "accepted", "dlq_share", "reasons"])
    _table(s, "dlq-topics", "Per dead-letter topic: records (committed, read_committed), events accepted "
           "into the raw table, and the dead-letter share dead / (dead + accepted)", df)
    reasons = [{"reason": f"{t}: {k}", "count": v}
               for t, c in counts.items() for k, v in (c.get("reasons") or {}).items()]
    if reasons:
        s.plots.append(plots.bar_plot(pd.DataFrame(reasons), "reason", "count", "dead letters",
                                      "Dead letters per topic and reason"))
    else:
        s.note = "no dead letters: every event was accepted"


# --- label delays --------------------------------------------------------------------------------------
def nice_width(raw: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is >= ``raw`` (histogram bin widths)."""
    if not raw or raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-12))


def label_delays(r: Reader, s: Section) -> None:
    r.require("monitoring.outcomes", "the feedback job (`liveml submit feedback`)")
    conds = r.points("decision_time")
    summary = r.query(s, "labelled and unlabelled predictions, and delay percentiles", f"""
SELECT count(*) AS predictions,
       count(*) FILTER (WHERE outcome = 'labelled') AS labelled,
       count(*) FILTER (WHERE outcome = 'unlabelled') AS unlabelled,
       count(*) FILTER (WHERE outcome = 'unlabelled') / count(*) AS unlabelled_share,
       min(label_delay_s) FILTER (WHERE outcome = 'labelled') AS min_delay_s,
       quantile_cont(label_delay_s, 0.5) FILTER (WHERE outcome = 'labelled') AS p50_delay_s,
       quantile_cont(label_delay_s, 0.95) FILTER (WHERE outcome = 'labelled') AS p95_delay_s,
       quantile_cont(label_delay_s, 0.99) FILTER (WHERE outcome = 'labelled') AS p99_delay_s,
       max(label_delay_s) FILTER (WHERE outcome = 'labelled') AS max_delay_s,
       max(max_label_delay_s) AS max_label_delay_s
FROM monitoring.outcomes{where(conds)}""")
    if int(summary["predictions"].iloc[0]) == 0:
        raise NoData("no data yet: monitoring.outcomes has no rows in the range")
    _table(s, "label-delay-summary", "Outcomes in the range: delays in seconds, over the labelled ones", summary)
    row = summary.iloc[0]
    if pd.isna(row["max_delay_s"]):
        s.note = "no prediction in the range has a label yet"
        return
    width = nice_width((float(row["max_delay_s"]) - float(row["min_delay_s"])) / 30)
    hist = r.query(s, f"delay histogram, {width:g} s bins", f"""
SELECT floor(label_delay_s / {width:g}) * {width:g} AS bin_start_s, count(*) AS labelled
FROM monitoring.outcomes{where(["outcome = 'labelled'", "label_delay_s IS NOT NULL", *conds])}
GROUP BY 1
ORDER BY 1""")
    limit = row["max_label_delay_s"]
    s.plots.append(plots.histogram_plot(hist, width, None if pd.isna(limit) else float(limit)))


# --- controller decisions ------------------------------------------------------------------------------
def decisions(r: Reader, s: Section) -> pd.DataFrame:
    """The decisions as read, with ``_time`` and ``_text`` columns for the quality timeline."""
    from pyiceberg.types import TimestampType, TimestamptzType

    if not r.has("monitoring.decisions"):
        raise NoData("no data yet: there is no table monitoring.decisions; the controller (a later issue) "
                     "writes its decisions there, and they will show here and on the quality timeline")
    fields = r.store.table("monitoring.decisions").schema().fields
    times = [f.name for f in fields if isinstance(f.field_type, (TimestampType, TimestamptzType))]
    texts = [f.name for f in fields if str(f.field_type) == "string"]
    time_col = next((c for c in DECISION_TIME_COLUMNS if c in times), times[0] if times else None)
    if time_col is None:
        raise NoData("monitoring.decisions has no timestamp column, so its decisions cannot be placed in time")
    text_col = next((c for c in DECISION_TEXT_COLUMNS if c in texts), texts[0] if texts else None)
    df = r.query(s, "the decisions in the range", f"""
SELECT * FROM monitoring.decisions{where(r.points(f'"{time_col}"'))}
ORDER BY "{time_col}" """)
    if df.empty:
        raise NoData("no data yet: monitoring.decisions has no rows in the range")
    _table(s, "decisions-list", f"The latest {min(len(df), 50)} of {len(df)} decisions", df.tail(50))
    text = df[text_col].astype(str) if text_col else pd.Series(["decision"] * len(df), index=df.index)
    return df.assign(_time=df[time_col], _text=text)
