"""The SQL the compiler derives from the specs, read without a cluster."""

from datetime import timedelta

import pytest

from flink_jobs import feature_sql as fsql
from iceberg_schemas.features import FEATURE_VIEWS, view
from iceberg_schemas.sources import LABELS, TRIPS
from liveml.config import load_config

pytestmark = pytest.mark.unit


@pytest.fixture
def cfg(tmp_path):
    return load_config(overrides={"home": str(tmp_path), "kafka": {"topic_prefix": "t-"}}, env={})


@pytest.mark.parametrize("window, sql", [("15m", "INTERVAL '15' MINUTE"), ("1h", "INTERVAL '1' HOUR"),
                                         ("24h", "INTERVAL '24' HOUR"), ("120s", "INTERVAL '120' SECOND(3)")])
def test_interval(window, sql):
    assert fsql.interval(window) == sql


def test_source_reads_the_prefixed_topic_with_a_guarded_watermark(cfg):
    ddl = fsql.kafka_source_ddl(TRIPS, cfg, "g", bounded=True, out_of_orderness_ms=250)
    assert "'topic' = 't-trips'" in ddl and "'scan.bounded.mode' = 'latest-offset'" in ddl
    assert "WATERMARK FOR event_time AS event_time - INTERVAL '0.250' SECOND" in ddl
    assert "THEN kafka_ts" in ddl  # an unparsable or far-future time cannot push the watermark


def test_reasons_follow_the_contract_order():
    expr = fsql.reason_expr(TRIPS)
    assert "JSON_VALUE" not in expr  # checks read the extracted strings; the payload is parsed once per field
    order = [expr.index(s) for s in ("'malformed_json'", "'missing_field:trip_id'", "'missing_field:event_time'",
                                      "'wrong_type:event_time'", "'absurd_value:event_type'", "'absurd_value:fare'",
                                      "'absurd_value:trip_miles'")]
    assert order == sorted(order)
    assert "NOT IN ('start', 'end')" in expr


def test_feature_view_sql_uses_one_window_per_view():
    for v in FEATURE_VIEWS:
        src = TRIPS if v.source == "trips" else LABELS
        sql = fsql.feature_view_ddl(v, src)
        assert sql.count("WINDOW w AS") == 1 and "OVER (" not in sql
        assert f"PARTITION BY `{v.entity}` ORDER BY event_time" in sql
        assert "NOT is_late" in sql
        for name in v.feature_names():
            assert f"AS `{name}`" in sql


def test_aggregations_compile():
    sql = fsql.feature_view_ddl(view("company_tips_24h"), LABELS)
    assert "SUM(CASE WHEN `big_tipper` THEN CAST(1 AS BIGINT)" in sql and "`label_time_ms` AS event_time_ms" in sql
    assert "COUNT(DISTINCT `company`) OVER w" in fsql.feature_view_ddl(view("pickup_area_15m"), TRIPS)


def test_raw_insert_writes_every_raw_column(cfg):
    sql = fsql.raw_insert(LABELS, "liveml")
    assert sql.startswith("INSERT INTO `liveml`.`labels`.`trips`")
    assert "CAST(TO_TIMESTAMP_LTZ(`decision_time_ms`, 3) AS TIMESTAMP_LTZ(6))" in sql
    assert "is_late" in sql and "FROM labels_good" in sql


def test_dlq_is_exactly_once_per_tenant(cfg):
    ddl = fsql.dlq_sink_ddl(TRIPS, cfg)
    assert "'topic' = 't-trips.dlq'" in ddl and "'sink.delivery-guarantee' = 'exactly-once'" in ddl
    assert "'sink.transactional-id-prefix' = 'liveml-t-trips-dlq'" in ddl


def test_every_view_source_field_exists_in_its_source():
    from iceberg_schemas.sources import SOURCES

    for v in FEATURE_VIEWS:
        src = SOURCES[v.source]
        src.field(v.entity)
        for agg in v.aggregations:
            if agg.source_field:
                src.field(agg.source_field)


def test_view_conditions_are_source_fields_and_compile():
    from iceberg_schemas.sources import SOURCES

    for v in FEATURE_VIEWS:
        for name, value in v.only.items():
            SOURCES[v.source].field(name)
            assert f"`{name}` = '{value}'" in fsql.feature_view_ddl(v, SOURCES[v.source])


def test_the_pandas_reference_covers_every_aggregation():
    from iceberg_schemas.features import AGG_OPS
    from tests.reference import AGGREGATE

    assert set(AGGREGATE) == set(AGG_OPS)


def test_raw_tables_hold_every_source_field():
    from iceberg_schemas.sources import SOURCES
    from iceberg_schemas.tables import table_spec

    for src in SOURCES.values():
        cols = {f.name for f in table_spec(src.raw_table).schema.fields}
        assert {f.name for f in src.fields} <= cols
        assert {"ingest_time", "is_late"} <= cols


def test_batch_dialect_orders_by_epoch_ms_and_counts_distinct_without_distinct():
    from iceberg_schemas.features import view
    from iceberg_schemas.sources import SOURCES

    v = view("pickup_area_15m")
    stream = fsql.feature_view_ddl(v, SOURCES[v.source])
    batch = fsql.feature_view_ddl(v, SOURCES[v.source], batch=True)
    assert "COUNT(DISTINCT `company`) OVER w" in stream and "DISTINCT `company`" not in batch
    assert "ARRAY_DISTINCT(ARRAY_AGG(`company`) OVER w)" in batch
    assert f"RANGE BETWEEN {v.window_s * 1000} PRECEDING" in batch and "INTERVAL" not in batch.split("WINDOW")[1]
    # everything but the window clause and the distinct count is the stream's SQL, line for line
    same = [l for l in stream.splitlines() if "OVER w" not in l and "RANGE" not in l and "ORDER BY" not in l]
    assert all(l in batch for l in same)


def test_epoch_ms_is_computed_in_bigint():
    # TIMESTAMPDIFF returns INT: multiplying it by 1000 before widening overflows for any date after 1970-01-25
    assert fsql.epoch_ms_expr("t").startswith("(CAST(TIMESTAMPDIFF(SECOND, TO_TIMESTAMP_LTZ(0, 3), t) AS BIGINT)")


def test_backfill_insert_overwrites_only_from_its_start():
    from iceberg_schemas.features import view
    from iceberg_schemas.tables import backfill_table

    v = view("pickup_area_1h")
    sql = fsql.feature_iceberg_insert(v, "liveml", backfill_table(v), overwrite=True, since_ms=123)
    assert sql.startswith("INSERT OVERWRITE `liveml`.`backfill`.`pickup_area_1h`")
    assert sql.rstrip().endswith("WHERE event_time_ms >= 123")


# --- exact windows: no retracted accumulator is a float -------------------------------------------------
def _all_ops_view(field: str = "fare"):
    from iceberg_schemas.features import AGG_OPS, Aggregation, FeatureView

    aggs = tuple(Aggregation("labels", "count") if op == "count" else
                 Aggregation("tip", op, source="big_tipper") if op == "rate" else Aggregation(field, op)
                 for op in AGG_OPS)
    return FeatureView("every_op", "company", "string", "labels", "1h", aggs, timedelta(hours=1), "every op", "test")


def test_sums_and_averages_accumulate_integers_and_divide_once():
    import re

    v = _all_ops_view()
    sql = fsql.feature_view_ddl(v, LABELS)
    for batch in (False, True):
        for agg in v.aggregations:
            expr = fsql.agg_expr(agg, LABELS, batch=batch)
            # every SUM is over BIGINT: a running DOUBLE sum drifts as events enter and leave the window
            for summed in re.findall(r"SUM\((.*?)\) OVER w", expr):
                assert "AS BIGINT)" in summed and "AVG(" not in expr, expr
            assert "AVG(" not in expr
    assert "FLOOR(`fare` * CAST(100 AS DOUBLE) + CAST(0.5 AS DOUBLE))" in sql  # fare in cents, from the contract
    avg = fsql.agg_expr(next(a for a in v.aggregations if a.op == "avg"), LABELS)
    assert avg.count(" / ") == 1  # one division: the correctly rounded exact mean


def test_a_double_without_declared_precision_cannot_be_summed():
    from iceberg_schemas.features import Aggregation

    for op in ("sum", "avg"):
        with pytest.raises(ValueError, match=r"pickup_latitude.*declare the field's precision.*scale="):
            fsql.agg_expr(Aggregation("pickup_latitude", op), TRIPS)
    # min, max and last keep values, so any double is fine there; integers sum exactly without a scale
    fsql.agg_expr(Aggregation("pickup_latitude", "max"), TRIPS)
    assert fsql.exact_units(Aggregation("trip_seconds", "sum"), TRIPS) == ("CAST(`trip_seconds` AS BIGINT)", 1)


def test_money_fields_declare_their_precision():
    assert TRIPS.field("fare").scale == 2 and TRIPS.field("trip_miles").scale == 2
    assert LABELS.field("tips").scale == 2 and LABELS.field("fare").scale == 2
    with pytest.raises(ValueError, match="scale"):
        from iceberg_schemas.sources import EventField

        EventField("n", "string", scale=2)
