"""The feedback job: each live prediction joined with its delayed label -> Iceberg ``monitoring.outcomes``.

    Kafka predictions (JSON, from the enrichment job)      Kafka labels (validated as the feature job does)
                 \\                                                   /
                  connect -> key by trip -> FeedbackJoin (keyed state, event-time timers)   [this file]
                      -> from_data_stream -> INSERT INTO monitoring.outcomes (Iceberg, exactly once)

An event-time interval join (the rules: :mod:`flink_jobs.feedback`): a label counts for a prediction when
it became known within ``max_label_delay`` of the decision (the training set's, or ``--max-label-delay``).
When the watermark passes ``decision_time + max_label_delay``, the prediction's one outcome row is written:
``labelled`` with the winning label, or ``unlabelled``. Nothing is waited for longer.

Labels stay in state ``--allowed-lateness`` past their deadline, so a prediction that reaches the job late
(behind the watermark: the enrichment job's async operator emits out of event-time order) is still joined with
them; a trip whose labels find no prediction by then is counted under ``labels_without_prediction``.
A replay that compresses years into minutes needs a lateness of days (`liveml demo` gives one).

Counted (group ``liveml.feedback``, see :data:`flink_jobs.feedback.COUNTERS`), never failing the job:
labels for trips never predicted, duplicate labels, labels after the maximum delay (or before the decision),
labels arriving after their trip's outcome was written, predictions without a score (their outcome row has
the status and a null score), duplicate predictions.

Run it with `liveml submit feedback`, or as a Flink user would:

    flink run -m localhost:8081 -py flink_jobs/feedback_job.py -pyexec .venv/bin/python \\
        -pyclientexec .venv/bin/python
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyflink.common import Row, Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.functions import KeyedCoProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.table import StreamTableEnvironment
from pyiceberg.types import BooleanType, DoubleType, IntegerType, LongType, StringType, TimestamptzType

from flink_jobs import feature_sql as fsql
from flink_jobs import feedback as F
from flink_jobs.common import (PlanRecorder, catalog_ddl, consumer_group, ensure_pipeline_jars, execute_resumable,
                               kafka_source_options, state_configuration)
from flink_jobs.features_job import configure
from iceberg_schemas.features import window_seconds
from iceberg_schemas.sources import LABELS, PREDICTIONS_TOPIC
from iceberg_schemas.tables import OUTCOMES, PREDICTIONS
from iceberg_schemas.training import TIPS, TrainingSetSpec
from liveml.config import LivemlConfig, load_config

_FLINK = {StringType: Types.STRING(), LongType: Types.LONG(), DoubleType: Types.DOUBLE(), IntegerType: Types.INT(),
          BooleanType: Types.BOOLEAN(), TimestamptzType: Types.LONG()}  # times travel as epoch ms
_SQL = {StringType: "STRING", LongType: "BIGINT", DoubleType: "DOUBLE", IntegerType: "INT", BooleanType: "BOOLEAN",
        TimestamptzType: "BIGINT"}


def predictions_source_ddl(cfg: LivemlConfig, group_id: str, bounded: bool, since_ms: int | None,
                           out_of_orderness_ms: int, startup: str = "group-offsets") -> str:
    """Kafka topic ``predictions`` as the enrichment job writes it (JSON, times as epoch ms), with the
    decision time as the rowtime. A record that is not JSON reads as nulls and is dropped by the query."""
    schema = PREDICTIONS.schema
    cols = ",\n  ".join(f"`{n}` {_SQL[type(schema.find_field(n).field_type)]}" for n in F.PREDICTION_FIELDS)
    opts = {**kafka_source_options(cfg, cfg.kafka.topic(PREDICTIONS_TOPIC), group_id, bounded, since_ms,
                                 startup),
            "properties.isolation.level": "read_committed", "format": "json", "json.ignore-parse-errors": "true"}
    return f"""CREATE TEMPORARY TABLE predictions_kafka (
  {cols},
  rowtime AS TO_TIMESTAMP_LTZ(COALESCE(`event_time`, 0), 3),
  WATERMARK FOR rowtime AS rowtime - INTERVAL '{out_of_orderness_ms / 1000:.3f}' SECOND
) WITH (
  {fsql._opts(opts)}
)"""


def predictions_query() -> str:
    cols = ", ".join(fsql.q(n) for n in F.PREDICTION_FIELDS)
    return f"SELECT {cols}, rowtime FROM predictions_kafka WHERE trip_id IS NOT NULL AND event_time IS NOT NULL"


def labels_query(spec: TrainingSetSpec) -> str:
    """Good label events as ``(trip_id, label_time, decision_time, label)``, the label as a number."""
    label = LABELS.field(spec.label)
    value = (f"CASE WHEN {fsql.q(label.name)} THEN 1.0 ELSE 0.0 END" if label.type == "boolean"
             else f"CAST({fsql.q(label.name)} AS DOUBLE)")
    return (f"SELECT trip_id, {fsql.column(LABELS.field('label_time'))}, "
            f"{fsql.column(LABELS.field('decision_time'))}, CAST({value} AS DOUBLE) AS label, event_time "
            f"FROM {LABELS.name}_good")


def output_type():
    names = list(F.OUTCOME_FIELDS)
    return names, Types.ROW_NAMED(names, [_FLINK[type(f.field_type)] for f in OUTCOMES.schema.fields])


def iceberg_insert(catalog: str) -> str:
    fields = OUTCOMES.schema.fields
    select = ", ".join(f"CAST(TO_TIMESTAMP_LTZ(`{f.name}`, 3) AS TIMESTAMP_LTZ(6))"
                       if isinstance(f.field_type, TimestamptzType) else f"`{f.name}`" for f in fields)
    target = f"`{catalog}`.`{OUTCOMES.namespace}`.`{OUTCOMES.name}`"
    return f"INSERT INTO {target} ({', '.join(f'`{f.name}`' for f in fields)}) SELECT {select} FROM outcomes"


class FeedbackJoin(KeyedCoProcessFunction):
    """Keyed by trip: input 1 predictions, input 2 labels; emits one outcome row per prediction.

    State per trip: the prediction, the winning label, how many labels fell within the delay, the deadline
    and whether the outcome was written. Timers: the deadline (``decision + max_delay``) writes the outcome;
    ``deadline + allowed_lateness`` clears the state (and counts labels that never met a prediction)."""

    def __init__(self, max_delay_ms: int, allowed_lateness_ms: int):
        self.max_delay_ms = max_delay_ms
        self.lateness_ms = allowed_lateness_ms

    def open(self, runtime_context: RuntimeContext):
        def state(name):
            return runtime_context.get_state(ValueStateDescriptor(name, Types.PICKLED_BYTE_ARRAY()))

        self.prediction, self.best, self.seen = state("prediction"), state("label"), state("labels_seen")
        self.deadline, self.done = state("deadline"), state("done")
        group = runtime_context.get_metrics_group().add_group("liveml").add_group("feedback")
        self.counters = {name: group.counter(name) for name in F.COUNTERS}
        self.outcomes = {o: group.add_group("outcome", o).counter("outcomes") for o in ("labelled", "unlabelled")}

    def _count(self, name: str) -> None:
        self.counters[name].inc()

    def _arm(self, ctx, decision_time: int) -> None:
        deadline = decision_time + self.max_delay_ms
        current = self.deadline.value()
        if current is None or deadline < current:
            self.deadline.update(deadline)
        ctx.timer_service().register_event_time_timer(deadline)
        ctx.timer_service().register_event_time_timer(deadline + self.lateness_ms)

    def process_element1(self, value, ctx):
        pred = tuple(value[i] for i in range(len(F.PREDICTION_FIELDS)))
        if self.done.value() or self.prediction.value() is not None:
            self._count("duplicate_predictions")
            return
        self.prediction.update(pred)
        if pred[F.PREDICTION_FIELDS.index("score")] is None:
            self._count("unscored_predictions")
        decision = int(pred[1])
        best = self.best.value()
        if best is not None and F.placement(best, decision, self.max_delay_ms) != "within":
            # labels came first and were placed by their own decision_time; the prediction's time rules
            self.best.clear()
            self.seen.clear()
        self.deadline.clear()
        self._arm(ctx, decision)
        if ctx.timer_service().current_watermark() >= decision + self.max_delay_ms:
            yield from self._emit()  # late: its deadline passed already, and the labels so far are all it gets

    def process_element2(self, value, ctx):
        label = F.Label.from_row(value)
        self._count("labels")
        if self.done.value():
            self._count("late_labels")
            return
        pred = self.prediction.value()
        decision = int(pred[1]) if pred is not None else (label.decision_time if label.decision_time is not None
                                                          else label.label_time)
        where = F.placement(label, decision, self.max_delay_ms)
        if where != "within":
            self._count("labels_after_max_delay" if where == "after_max_delay" else "labels_before_decision")
            return
        seen = (self.seen.value() or 0) + 1
        if seen > 1:
            self._count("duplicate_labels")
        self.seen.update(seen)
        self.best.update(F.winner(self.best.value(), label))
        if pred is None:
            self._arm(ctx, decision)

    def on_timer(self, timestamp: int, ctx):
        deadline = self.deadline.value()
        if deadline is None:
            return
        if timestamp < deadline:
            return
        if not self.done.value() and self.prediction.value() is not None:
            yield from self._emit()
        if timestamp >= deadline + self.lateness_ms:
            if not self.done.value() and self.prediction.value() is None and self.seen.value():
                self._count("labels_without_prediction")
            for s in (self.prediction, self.best, self.seen, self.deadline, self.done):
                s.clear()

    def _emit(self):
        best = self.best.value()
        self.outcomes["labelled" if best is not None else "unlabelled"].inc()
        row = F.outcome_row(self.prediction.value(), best, self.seen.value() or 0, self.max_delay_ms)
        self.done.update(True)
        self.prediction.clear()
        self.best.clear()
        yield Row(*row)


def build_feedback_job(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, cfg: LivemlConfig,
                       spec: TrainingSetSpec = TIPS, max_label_delay: str | None = None,
                       allowed_lateness: str | None = None, bounded: bool = False, since_ms: int | None = None,
                       out_of_orderness_ms: int = 5000, startup: str = "group-offsets"):
    """Declare the job on ``t_env``; returns the statement set (attached to ``env`` by the caller).

    ``max_label_delay``: ``--max-label-delay``, else ``monitor.max_label_delay``, else the training set's.
    ``allowed_lateness`` defaults to the maximum delay."""
    delay = max_label_delay or cfg.monitor.max_label_delay or spec.max_label_delay
    max_delay_ms = window_seconds(delay) * 1000
    lateness_ms = window_seconds(allowed_lateness or delay) * 1000
    t_env.execute_sql(catalog_ddl(cfg))
    group = consumer_group(cfg, "feedback")
    t_env.execute_sql(predictions_source_ddl(cfg, group, bounded, since_ms, out_of_orderness_ms, startup))
    ddls = fsql.good_events_ddl(LABELS, cfg, group, bounded, since_ms, out_of_orderness_ms)
    ddls[0] = fsql.kafka_source_ddl(LABELS, cfg, group, bounded, startup, since_ms, out_of_orderness_ms)
    for ddl in ddls:
        t_env.execute_sql(ddl)
    preds = t_env.to_data_stream(t_env.sql_query(predictions_query()))
    labels = t_env.to_data_stream(t_env.sql_query(labels_query(spec)))
    names, out_type = output_type()
    joined = preds.connect(labels).key_by(lambda r: r[0], lambda r: r[0], key_type=Types.STRING()) \
        .process(FeedbackJoin(max_delay_ms, lateness_ms), output_type=out_type) \
        .name("feedback join (event-time interval)").uid("liveml-feedback-join")
    if hasattr(t_env, "note"):  # a PlanRecorder: the join's keyed state is part of the job's plan
        t_env.note(f"PROCESS liveml-feedback-join state=prediction,label,labels_seen,deadline,done out={names}")
    t_env.create_temporary_view("outcomes", t_env.from_data_stream(joined))
    stmts = t_env.create_statement_set()
    stmts.add_insert_sql(iceberg_insert(cfg.catalog.name))
    return stmts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounded", action="store_true", help="stop at the offsets that were latest at start")
    parser.add_argument("--since-ms", type=int, default=None, help="read events from this Kafka timestamp")
    parser.add_argument("--max-label-delay", default=None,
                        help="a label later than this after its decision is not joined (e.g. 1h; default: the "
                             "training set's, or monitor.max_label_delay)")
    parser.add_argument("--allowed-lateness", default=None,
                        help="how long labels wait past their deadline for a late prediction (default: the delay)")
    parser.add_argument("--startup", default="group-offsets",
                        choices=("group-offsets", "earliest-offset", "latest-offset"),
                        help="where a run without state starts reading (Flink's scan.startup.mode); "
                             "latest-offset: only what arrives from now on")
    parser.add_argument("--out-of-orderness-ms", type=int, default=5000)
    parser.add_argument("--parallelism", type=int, default=None)
    parser.add_argument("--config", default=None, help="liveml.yaml to read addresses from")
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    env = StreamExecutionEnvironment.get_execution_environment(state_configuration(cfg, "feedback", args.bounded))
    t_env = StreamTableEnvironment.create(env)
    ensure_pipeline_jars(t_env, cfg)
    configure(t_env, args.parallelism, "liveml-feedback")
    recorder = PlanRecorder(t_env)
    stmts = build_feedback_job(env, recorder, cfg, max_label_delay=args.max_label_delay,
                               allowed_lateness=args.allowed_lateness, bounded=args.bounded,
                               since_ms=args.since_ms, out_of_orderness_ms=args.out_of_orderness_ms,
                               startup=args.startup)
    stmts.attach_as_datastream()
    execute_resumable(t_env, cfg, "feedback", args.bounded, recorder, lambda: env.execute("liveml-feedback"))


if __name__ == "__main__":
    main(sys.argv[1:])
