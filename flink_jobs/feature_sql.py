"""The feature-spec to Flink SQL compiler: sources, validation, dead letters, raw tables and feature views.

Pure functions from declarations (``iceberg_schemas``) and config to SQL text, so unit tests can read
the SQL without a cluster, and the stream and a backfill run the very same statements.
"""

from __future__ import annotations

from iceberg_schemas.features import SPEC_VERSION, Aggregation, FeatureView, window_seconds
from iceberg_schemas.sources import FLINK_TYPES, EventField, EventSource
from iceberg_schemas.tables import TableSpec, feature_table, table_spec
from flink_jobs.common import kafka_source_options
from liveml.config import LivemlConfig


def q(name: str) -> str:
    return f"`{name}`"


def _opts(opts: dict[str, str]) -> str:
    return ",\n  ".join(f"'{k}' = '{v}'" for k, v in opts.items())


def interval(window: str) -> str:
    """``1h`` -> ``INTERVAL '1' HOUR``; precision is spelled out when more than two digits are needed."""
    n = int(window[:-1])
    unit = {"s": "SECOND", "m": "MINUTE", "h": "HOUR", "d": "DAY"}[window[-1]]
    precision = f"({len(str(n))})" if len(str(n)) > 2 else ""
    return f"INTERVAL '{n}' {unit}{precision}"


def _json(field: str) -> str:
    return f"JSON_VALUE(payload, '$.{field}')"


def _typed(f: EventField) -> str:
    return f"TRY_CAST({_json(f.name)} AS {FLINK_TYPES[f.type]})"


def kafka_source_ddl(src: EventSource, cfg: LivemlConfig, group_id: str, bounded: bool = False,
                     startup: str = "group-offsets", since_ms: int | None = None,
                     out_of_orderness_ms: int = 500) -> str:
    """The topic as raw payloads, with an event-time column and watermark computed from the payload.

    The event time is guarded: a missing, unparsable or absurd (far future) time falls back to the Kafka
    record time, so one bad event cannot push the watermark ahead and make every later event late.
    """
    t = _typed(src.field(src.time_field))
    max_future = src.max_future_s * 1000
    opts = {**kafka_source_options(cfg, cfg.kafka.topic(src.topic), group_id, bounded, since_ms, startup),
            "properties.isolation.level": "read_committed", "format": "raw", "raw.charset": "UTF-8"}
    return f"""CREATE TEMPORARY TABLE {src.name}_kafka (
  payload STRING,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  event_time AS CASE
    WHEN {t} IS NULL OR {t} < 0 OR {t} > UNIX_TIMESTAMP() * 1000 + {max_future} THEN kafka_ts
    ELSE TO_TIMESTAMP_LTZ({t}, 3) END,
  proc_time AS PROCTIME(),
  WATERMARK FOR event_time AS event_time - INTERVAL '{out_of_orderness_ms / 1000:.3f}' SECOND
) WITH (
  {_opts(opts)}
)"""


def _raw(f: EventField) -> str:
    return q(f"_raw_{f.name}")


def _cast(f: EventField) -> str:
    return f"TRY_CAST({_raw(f)} AS {FLINK_TYPES[f.type]})"


def reason_expr(src: EventSource) -> str:
    """Why an event is bad, or NULL: the first failed check names the field and the kind of problem.

    Written over the ``_raw_<field>`` strings and the ``_now_ms`` of the extract view, so the payload is
    parsed once per field, and the DLQ and the good events, which each compute it, judge an event alike.
    """
    checks = ["WHEN NOT _is_json THEN 'malformed_json'"]
    for f in src.fields:
        if f.required:
            checks.append(f"WHEN {_raw(f)} IS NULL THEN 'missing_field:{f.name}'")
    for f in src.fields:
        checks.append(f"WHEN {_raw(f)} IS NOT NULL AND {_cast(f)} IS NULL THEN 'wrong_type:{f.name}'")
    for f in src.fields:
        conds = []
        if f.min is not None:
            conds.append(f"{_cast(f)} < {f.min}")
        if f.max is not None:
            conds.append(f"{_cast(f)} > {f.max}")
        if f.choices:
            conds.append(f"{_cast(f)} NOT IN ({', '.join(repr(c) for c in f.choices)})")
        if conds:
            checks.append(f"WHEN {' OR '.join(conds)} THEN 'absurd_value:{f.name}'")
    t = _cast(src.field(src.time_field))
    checks.append(f"WHEN {t} > _now_ms + {src.max_future_s * 1000} "
                  f"THEN 'absurd_value:{src.time_field}_in_future'")
    return "CASE\n    " + "\n    ".join(checks) + "\n    ELSE CAST(NULL AS STRING) END"


def column(f: EventField) -> str:
    """The parsed column of a field; epoch-ms times get a ``_ms`` suffix beside the ``event_time`` rowtime."""
    return f"{f.name}_ms" if f.epoch_ms else f.name


def extract_view_ddl(src: EventSource) -> str:
    """Each field pulled out of the payload once, as a string, with the wall clock read once per event.

    Flink 2.2's ``JSON_VALUE`` parses the payload on every call, and its code generation does not share
    repeated sub-expressions. So the fields are extracted here and everything downstream reads the strings.
    The view has two consumers (the DLQ and the parsed events), which makes it a block the optimizer plans
    once (``table.optimizer.reuse-optimize-block-with-digest-enabled``, set by the feature job); otherwise
    each check of the reason would parse the payload again.
    """
    raws = ",\n  ".join(f"{_json(f.name)} AS {_raw(f)}" for f in src.fields)
    return f"""CREATE TEMPORARY VIEW {src.name}_extract AS
SELECT
  payload, kafka_ts, kafka_partition, kafka_offset, event_time, proc_time,
  COALESCE(payload IS JSON OBJECT, FALSE) AS _is_json,
  CAST(UNIX_TIMESTAMP() AS BIGINT) * 1000 AS _now_ms,
  {raws}
FROM {src.name}_kafka"""


def parsed_view_ddl(src: EventSource) -> str:
    cols = ",\n  ".join(f"{_cast(f)} AS {q(column(f))}" for f in src.fields)
    return f"""CREATE TEMPORARY VIEW {src.name}_parsed AS
SELECT
  payload, kafka_ts, kafka_partition, kafka_offset, event_time, proc_time,
  {reason_expr(src)} AS reason,
  COALESCE(event_time <= CURRENT_WATERMARK(event_time), FALSE) AS is_late,
  {cols}
FROM {src.name}_extract"""


def good_view_ddl(src: EventSource) -> str:
    return f"CREATE TEMPORARY VIEW {src.name}_good AS SELECT * FROM {src.name}_parsed WHERE reason IS NULL"


def good_events_ddl(src: EventSource, cfg: LivemlConfig, group_id: str, bounded: bool = False,
                    since_ms: int | None = None, out_of_orderness_ms: int = 500) -> list[str]:
    """The statements that declare ``<source>_good`` (validated events) and the views under it: the Kafka
    source, the extract view, the parsed events. Every job reading a source declares these, in this order."""
    return [kafka_source_ddl(src, cfg, group_id=group_id, bounded=bounded, since_ms=since_ms,
                             out_of_orderness_ms=out_of_orderness_ms),
            extract_view_ddl(src), parsed_view_ddl(src), good_view_ddl(src)]


def kafka_sink_options(cfg: LivemlConfig, topic: str, transactional_name: str, exactly_once: bool = True,
                       **extra: str) -> dict[str, str]:
    """A JSON Kafka sink's options: transactional (visible to read_committed consumers at each checkpoint,
    ids prefixed ``liveml-<topic prefix><transactional_name>``) or at-least-once."""
    opts = {"connector": "kafka", "topic": cfg.kafka.topic(topic),
            "properties.bootstrap.servers": cfg.kafka.bootstrap_servers, "format": "json", **extra}
    if exactly_once:
        opts.update({"sink.delivery-guarantee": "exactly-once",
                     "sink.transactional-id-prefix": f"liveml-{cfg.kafka.topic_prefix}{transactional_name}",
                     "properties.transaction.timeout.ms": "900000"})
    else:
        opts["sink.delivery-guarantee"] = "at-least-once"
    return opts


def kafka_sink_ddl(name: str, columns: str, opts: dict[str, str]) -> str:
    return f"CREATE TEMPORARY TABLE {name} (\n  {columns}\n) WITH (\n  {_opts(opts)}\n)"


def dlq_sink_ddl(src: EventSource, cfg: LivemlConfig, exactly_once: bool = True) -> str:
    opts = kafka_sink_options(cfg, src.dlq_topic, f"{src.name}-dlq", exactly_once,
                              **{"json.timestamp-format.standard": "ISO-8601"})
    return f"""CREATE TEMPORARY TABLE {src.name}_dlq (
  payload STRING, reason STRING, source_topic STRING, kafka_partition INT, kafka_offset BIGINT,
  kafka_ts TIMESTAMP_LTZ(3), detected_at TIMESTAMP_LTZ(3)
) WITH (
  {_opts(opts)}
)"""


def dlq_insert(src: EventSource) -> str:
    """Bad events with their reason, read from the extract view (not from ``<source>_parsed``, so that the
    extract view stays a shared block: see :func:`extract_view_ddl`)."""
    return (f"INSERT INTO {src.name}_dlq SELECT payload, reason, '{src.topic}', kafka_partition, kafka_offset, "
            f"kafka_ts, CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(3)) FROM (\n"
            f"  SELECT payload, kafka_partition, kafka_offset, kafka_ts, {reason_expr(src)} AS reason\n"
            f"  FROM {src.name}_extract)\nWHERE reason IS NOT NULL")


def raw_insert(src: EventSource, catalog: str) -> str:
    """Every good event, late ones included (flagged), into the source's raw Iceberg table."""
    spec = table_spec(src.raw_table)
    cols, exprs = [], []
    for fld in spec.schema.fields:
        name = fld.name
        if name == src.time_field:
            exprs.append("CAST(event_time AS TIMESTAMP_LTZ(6))")
        elif name == "ingest_time":
            exprs.append("CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(6))")
        elif name == "is_late":
            exprs.append("is_late")
        else:
            f = src.field(name)
            exprs.append(f"CAST(TO_TIMESTAMP_LTZ({q(column(f))}, 3) AS TIMESTAMP_LTZ(6))" if f.epoch_ms else q(name))
        cols.append(q(name))
    return (f"INSERT INTO {q(catalog)}.{q(spec.namespace)}.{q(spec.name)} ({', '.join(cols)})\n"
            f"SELECT {', '.join(exprs)} FROM {src.name}_good")


def exact_units(agg: Aggregation, src: EventSource) -> tuple[str, int]:
    """The aggregated field as exact integers, and how many of them make one unit of the field.

    Integer fields are their own units. A double is counted in 10^-scale units of its declared ``scale``
    (fare in cents: ``FLOOR(fare * 100 + 0.5)``, half up), since a double with a declared precision is an
    integer of that precision in disguise. A double without a scale cannot be summed exactly, so a view that
    sums or averages one is refused here rather than left to drift.

    Raises:
        ValueError: the field is a double without a declared ``scale``, or not a number.
    """
    f = src.field(agg.source_field)
    col = q(column(f))
    if f.type in ("int", "bigint"):
        return f"CAST({col} AS BIGINT)", 1
    if f.type == "double" and f.scale is not None:
        d = 10 ** f.scale
        return f"CAST(FLOOR({col} * CAST({d} AS DOUBLE) + CAST(0.5 AS DOUBLE)) AS BIGINT)", d
    raise ValueError(f"{agg.op} over {src.name}.{f.name} ({f.type}) cannot be exact: declare the field's "
                     f"precision in the source contract, e.g. EventField({f.name!r}, 'double', scale=2)")


def agg_expr(agg: Aggregation, src: EventSource, over: str = "OVER w", batch: bool = False) -> str:
    """One feature's value over window ``w``, a function of the window's events alone.

    Flink's OVER window keeps one accumulator per key: it adds each event and retracts it when it leaves. A
    running DOUBLE sum so drifts (``avg`` of one 3.25 fare came out 3.2499999...) for as long as the job runs.
    So every retracted accumulator here is an integer: ``sum`` and ``avg`` add :func:`exact_units`, ``rate``
    adds 0/1 counts, and each divides once at the end. ``avg`` is ``SUM(units) / (COUNT * units per unit)``,
    a single IEEE division of two exact integers: the exact mean, correctly rounded. ``min``, ``max``,
    ``last`` and ``distinct`` keep the values themselves (Flink's retractable MIN/MAX/LAST_VALUE/COUNT
    DISTINCT hold them in map state), so they are exact. NULLs are skipped, as SQL aggregates skip them.

    In ``batch`` (Flink's batch planner has no DISTINCT in OVER windows) a distinct count is the size of
    the distinct array of the window's values, less one if the window holds a NULL. ``liveml parity``
    holds the two forms to the same results.
    """
    f = q(column(src.field(agg.source_field))) if agg.source_field else None
    if agg.op == "count":
        return f"COUNT(*) {over}"
    if agg.op in ("sum", "avg"):
        units, per_unit = exact_units(agg, src)
        total = f"CAST(SUM({units}) {over} AS DOUBLE)"
        if agg.op == "sum":
            return total if per_unit == 1 else f"{total} / CAST({per_unit} AS DOUBLE)"
        return f"{total} / (CAST(COUNT({f}) {over} AS DOUBLE) * CAST({per_unit} AS DOUBLE))"
    if agg.op == "rate":
        hits = f"CASE WHEN {f} THEN CAST(1 AS BIGINT) WHEN NOT {f} THEN CAST(0 AS BIGINT) END"
        return f"CAST(SUM({hits}) {over} AS DOUBLE) / CAST(COUNT({f}) {over} AS DOUBLE)"
    if agg.op in ("min", "max"):
        return f"{agg.op.upper()}(CAST({f} AS DOUBLE)) {over}"
    if agg.op == "last":
        return f"LAST_VALUE(CAST({f} AS DOUBLE)) {over}"
    if agg.op == "distinct":
        if batch:
            return (f"CAST(CARDINALITY(ARRAY_DISTINCT(ARRAY_AGG({f}) {over})) AS BIGINT)"
                    f" - CASE WHEN COUNT({f}) {over} < COUNT(*) {over} THEN 1 ELSE 0 END")
        return f"COUNT(DISTINCT {f}) {over}"
    raise ValueError(f"aggregation {agg.op!r} has no SQL form")


def feature_view_ddl(view: FeatureView, src: EventSource, batch: bool = False) -> str:
    """One row per source event, with every aggregate over the entity's events in ``[t - window, t]``.

    An event-time OVER window emits as soon as the watermark passes the event, so a feature reflects an
    event within the watermark delay, not at the end of a long window. Late events never reach it: they
    are filtered (and kept in the raw table), not dropped silently by the window operator.

    ``batch`` is the backfill's dialect of the same view: the window is ordered by epoch milliseconds
    (Flink 2.2's batch code generation fails on a RANGE interval over a timestamp) and distinct counts
    take the form of :func:`agg_expr`. Rows, filters, names and window bounds are the same.
    """
    window_seconds(view.window)
    feats = ",\n  ".join(f"{agg_expr(a, src, batch=batch)} AS {q(n)}"
                         for a, n in zip(view.aggregations, view.feature_names()))
    where = [f"{q(view.entity)} IS NOT NULL", "NOT is_late"]
    where += [f"{q(name)} = '{value}'" for name, value in view.only.items()]
    time_ms = q(column(src.field(src.time_field)))
    order = (f"ORDER BY {time_ms} RANGE BETWEEN {view.window_s * 1000} PRECEDING AND CURRENT ROW" if batch else
             f"ORDER BY event_time\n             RANGE BETWEEN {interval(view.window)} PRECEDING AND CURRENT ROW")
    return f"""CREATE TEMPORARY VIEW feat_{view.name} AS
SELECT
  {q(view.entity)}, {q(src.id_field)} AS source_id, event_time,
  {time_ms} AS event_time_ms,
  {feats}
FROM {src.name}_good
WHERE {' AND '.join(where)}
WINDOW w AS (PARTITION BY {q(view.entity)} {order})"""


def epoch_ms_expr(ts: str) -> str:
    """Epoch milliseconds of a TIMESTAMP_LTZ, independent of the session time zone."""
    # TIMESTAMPDIFF returns INT: widen before multiplying, or 2013 overflows
    return (f"(CAST(TIMESTAMPDIFF(SECOND, TO_TIMESTAMP_LTZ(0, 3), {ts}) AS BIGINT) * 1000"
            f" + EXTRACT(MILLISECOND FROM {ts}))")


def batch_source_view_ddl(src: EventSource, catalog: str, lo_ms: int, hi_ms: int) -> str:
    """``<source>_good`` for a backfill: the source's raw Iceberg table, shaped like the stream's view
    (parsed columns, ``event_time``, ``<time>_ms``, ``is_late``), over event times ``[lo_ms, hi_ms]``."""
    spec = table_spec(src.raw_table)
    cols = []
    for f in src.fields:
        if f.epoch_ms:
            cols.append(f"{epoch_ms_expr(q(f.name))} AS {q(column(f))}")
        else:
            cols.append(q(f.name))
    time_col = q(src.time_field)
    return f"""CREATE TEMPORARY VIEW {src.name}_good AS
SELECT
  {', '.join(cols)},
  {time_col} AS event_time, COALESCE(is_late, FALSE) AS is_late
FROM {q(catalog)}.{q(spec.namespace)}.{q(spec.name)}
WHERE {time_col} >= TO_TIMESTAMP_LTZ({int(lo_ms)}, 3) AND {time_col} <= TO_TIMESTAMP_LTZ({int(hi_ms)}, 3)"""


def feature_iceberg_insert(view: FeatureView, catalog: str, table: TableSpec | None = None,
                           overwrite: bool = False, since_ms: int | None = None) -> str:
    """Feature rows into the view's Iceberg table (or ``table``: a backfill's), stamped with the spec version.

    ``overwrite`` replaces the partitions the rows land in (Iceberg's dynamic overwrite); ``since_ms`` keeps
    only rows from then on (a backfill reads a window's worth of earlier events to warm its windows up)."""
    spec = table or feature_table(view)
    names = view.feature_names()
    cols = [view.entity, "event_time", "window_end", "spec_version", "computed_at", "source_id", *names]
    exprs = [q(view.entity), "CAST(event_time AS TIMESTAMP_LTZ(6))", "CAST(event_time AS TIMESTAMP_LTZ(6))",
             str(SPEC_VERSION), "CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(6))", "source_id", *map(q, names)]
    where = f"\nWHERE event_time_ms >= {int(since_ms)}" if since_ms is not None else ""
    verb = "INSERT OVERWRITE" if overwrite else "INSERT INTO"
    return (f"{verb} {q(catalog)}.{q(spec.namespace)}.{q(spec.name)} ({', '.join(map(q, cols))})\n"
            f"SELECT {', '.join(exprs)} FROM feat_{view.name}{where}")


def blackhole_ddl(name: str) -> str:
    return f"CREATE TEMPORARY TABLE {name} (n BIGINT) WITH ('connector' = 'blackhole')"


def feature_redis_insert(view: FeatureView, udf_name: str) -> str:
    args = ", ".join([f"CAST({q(view.entity)} AS STRING)", "event_time_ms", "CAST(source_id AS STRING)",
                      *map(q, view.feature_names())])
    return f"INSERT INTO redis_{view.name}_sink SELECT {udf_name}({args}) FROM feat_{view.name}"


def late_counter_insert(src: EventSource) -> str:
    """Late events, counted by Flink's own metrics: the ``numRecordsIn`` of the ``<source>_late`` sink.

    With the DLQ writer's ``numRecordsIn`` and the source's ``numRecordsOut`` this gives events in, late and
    dead-lettered without a Python worker (a Python counter UDF cost a process per slot and tripled the
    freshness p50 on 2 cores).
    """
    return f"INSERT INTO {src.name}_late SELECT 1 FROM {src.name}_good WHERE is_late"
