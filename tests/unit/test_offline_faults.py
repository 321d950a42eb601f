"""Issue 13, items 1-5: faults users hit in the offline store, each with its siblings, on a real pyiceberg
catalog and DuckDB. The right values come from the issue's contract (NULL where a view has nothing to offer,
the tie rule of ``iceberg_schemas.features.LATEST_ORDER``) and from the rows written by the test itself.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow as pa
import pytest
from pyiceberg.types import NestedField, StringType

from iceberg_schemas.features import FEATURE_VIEWS, SPEC_VERSION, view
from iceberg_schemas.registry import ensure_table
from iceberg_schemas.tables import TableSpec, backfill_table, table_spec, unpartitioned
from iceberg_schemas.training import TIPS
from liveml.backfill import event_range
from liveml.offline import CURRENT, OfflineStore, QueryError, parse_time
from liveml.parity import parity
from liveml.training_set import build_training_set, lineage
from tests.offline_fixtures import cli_catalog, T0, append, at, create, local_catalog

pytestmark = pytest.mark.unit

AREA_1H = view("pickup_area_1h")
D = at(3600)  # the one decision time


def _frow(v, entity, t, value, computed_at=None, source_id="s1") -> dict:
    row = {v.entity: entity, "event_time": t, "window_end": t, "spec_version": SPEC_VERSION,
           "computed_at": computed_at or t, "source_id": source_id}
    for agg, name in zip(v.aggregations, v.feature_names()):
        row[name] = int(value) if agg.is_integer else float(value)
    return row


def _one_trip(catalog, feature_ns: str = "features") -> None:
    """One label, its end event; every table declared (as `liveml tables create` leaves them), none written."""
    for name in ("labels.trips", "raw.trips"):
        create(catalog, name)
    for v in FEATURE_VIEWS:
        create(catalog, v.table if feature_ns == "features" else backfill_table(v).identifier)
    append(catalog, "labels.trips", [{"trip_id": "t1", "decision_time": D, "label_time": D + timedelta(minutes=9),
                                      "big_tipper": True}])
    append(catalog, "raw.trips", [{"trip_id": "t1", "event_type": "end", "event_time": D, "pickup_community_area": 8,
                                   "dropoff_community_area": 3, "company": "Flash Cab", "payment_type": "Cash",
                                   "fare": 10.0, "trip_miles": 1.5, "trip_seconds": 600}])


def _store(tmp_path):
    return OfflineStore(local_catalog(tmp_path), tmp_path / "duck")


def _only_row(store, table="training.tips") -> dict:
    rows = store.scan(table).to_pylist()
    assert len(rows) == 1, rows
    return rows[0]


# --- 1. a read over nothing -----------------------------------------------------------------------------

@pytest.mark.parametrize("feature_ns", ["features", "backfill"])
def test_views_never_written_read_as_null(tmp_path, feature_ns):
    """The issue's two inputs: a row of pickup_area_1h 5 minutes before the decision, the other two views
    empty; through the stream's tables and (`--source backfill`) after a backfill of pickup_area_1h only."""
    store = _store(tmp_path)
    _one_trip(store.catalog, feature_ns)
    table = AREA_1H.table if feature_ns == "features" else backfill_table(AREA_1H).identifier
    append(store.catalog, table, [_frow(AREA_1H, 8, D - timedelta(minutes=5), 7)])
    built = build_training_set(store, TIPS, source="stream" if feature_ns == "features" else "backfill")
    assert built["rows"] == 1 and built["labels"] == 1
    row = _only_row(store)
    assert row["trips_count_1h"] == 7 and row["fare_avg_1h"] == 7.0
    others = [n for v in FEATURE_VIEWS if v is not AREA_1H for n in v.feature_names()]
    assert all(row[n] is None for n in others), row
    assert built["snapshot_ids"][table] is not None
    assert sum(s is None for s in built["snapshot_ids"].values()) == 2  # the two views never written


def test_views_whose_files_are_all_pruned_read_as_null(tmp_path):
    """Every view has rows, but none within reach of the label (a year before it): no file survives pruning."""
    store = _store(tmp_path)
    _one_trip(store.catalog)
    for v in FEATURE_VIEWS:
        entity = "Flash Cab" if v.entity == "company" else 8
        append(store.catalog, v.table, [_frow(v, entity, D - timedelta(days=365), 5)])
    built = build_training_set(store, TIPS)
    row = _only_row(store)
    assert built["rows"] == 1
    assert all(row[n] is None for v in FEATURE_VIEWS for n in v.feature_names()), row


def test_every_read_path_takes_an_empty_table(tmp_path):
    """scan, sql (the DuckDB Arrow-scan failure: a timestamptz filter with another column), lineage of an
    unwritten table, parity and the backfill's event range: empty answers, never a DuckDB stack trace."""
    store = _store(tmp_path)
    create(store.catalog, "raw.trips")
    for v in FEATURE_VIEWS:
        create(store.catalog, v.table)
        create(store.catalog, backfill_table(v).identifier)
    where = "event_time >= '2015-03-02T08:00:00Z' and company = 'Flash Cab'"
    assert store.scan("raw.trips", where=where, columns=["trip_id", "event_time"]).num_rows == 0
    got = store.sql("SELECT count(*) AS n FROM raw.trips WHERE event_time >= TIMESTAMPTZ '2015-03-02 08:00:00+00' "
                    "AND company = 'Flash Cab' AND fare IN (1.0)")
    assert got.column("n").to_pylist() == [0]
    typed = store.sql("SELECT * FROM raw.trips")
    assert typed.num_rows == 0 and typed.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert event_range(store, [AREA_1H]) is None
    result = parity(store, FEATURE_VIEWS)
    assert (result["compared"], result["mismatches"]) == (0, 0)
    ensure_table(store.catalog, unpartitioned(TIPS.table_spec()))
    with pytest.raises(QueryError, match="no recorded lineage"):
        lineage(store, "training.tips")


def test_a_pinned_read_of_a_table_with_data_files_pruned_away_in_sql(tmp_path):
    """register() with a filter that prunes every file: an empty relation of the right types that a
    timestamptz predicate can be pushed into."""
    store = _store(tmp_path)
    create(store.catalog, "raw.trips")
    append(store.catalog, "raw.trips", [{"trip_id": "t1", "event_type": "end", "event_time": at(0), "fare": 1.0}])
    con = store.connect()
    store.register(con, "raw.trips", where="event_time > '2020-01-01T00:00:00Z'", view="r")
    n = con.execute("SELECT count(*) FROM r WHERE event_time >= TIMESTAMPTZ '2015-01-01 00:00:00+00' "
                    "AND fare = 1.0").fetchone()[0]
    assert n == 0


# --- 2. a pinned build never reads the future --------------------------------------------------------------

def test_a_pin_before_a_tables_first_commit_reads_it_empty(tmp_path):
    store = _store(tmp_path)
    _one_trip(store.catalog)
    pinned = store.catalog.load_table("labels.trips").current_snapshot().snapshot_id
    append(store.catalog, "labels.trips", [{"trip_id": "t0", "decision_time": D, "label_time": D,
                                            "big_tipper": False}])  # the label table moves on
    later = [_frow(AREA_1H, 8, D - timedelta(minutes=5), 42)]
    append(store.catalog, AREA_1H.table, later)  # committed after the pin
    built = build_training_set(store, TIPS, as_of_snapshot=pinned)
    assert built["snapshot_ids"][AREA_1H.table] is None
    assert _only_row(store)["trips_count_1h"] is None  # not 42
    # the lineage rebuilds it: None is "empty at the pin", not "current"
    append(store.catalog, AREA_1H.table, [_frow(AREA_1H, 8, D - timedelta(minutes=1), 43)])
    again = build_training_set(store, TIPS, snapshot_ids=lineage(store, "training.tips")["snapshot_ids"],
                               name="tips_again")
    assert again["snapshot_ids"] == built["snapshot_ids"]
    assert _only_row(store, "training.tips_again")["trips_count_1h"] is None
    # and the same pins through SQL: a None pin is empty, an absent one is current
    assert store.sql(f"SELECT count(*) AS n FROM {AREA_1H.table}",
                     {AREA_1H.table: None}).column("n").to_pylist() == [0]
    assert store.sql(f"SELECT count(*) AS n FROM {AREA_1H.table}").column("n").to_pylist() == [2]
    con = store.connect()
    store.register(con, AREA_1H.table, CURRENT, view="cur")
    assert con.execute("SELECT count(*) FROM cur").fetchone()[0] == 2


def test_cli_rebuild_takes_a_null_pin(tmp_path):
    from tests.conftest import run_cli

    config, catalog = cli_catalog(tmp_path)
    _one_trip(catalog)
    append(catalog, AREA_1H.table, [_frow(AREA_1H, 8, D - timedelta(minutes=5), 42)])
    pins = {"labels.trips": catalog.load_table("labels.trips").current_snapshot().snapshot_id,
            "raw.trips": catalog.load_table("raw.trips").current_snapshot().snapshot_id,
            **{v.table: None for v in FEATURE_VIEWS}}
    out = json.loads(run_cli(config, "training-set", "build", "--snapshot-ids", json.dumps(pins), "--json").stdout)
    assert out["snapshot_ids"] == pins and out["rows"] == 1
    row = json.loads(run_cli(config, "query", "training.tips", "--columns", "trips_count_1h", "--json").stdout)
    assert row == [{"trips_count_1h": None}]
    text = run_cli(config, "training-set", "build", "--snapshot-ids", json.dumps(pins)).stderr
    assert "read as empty" in " ".join(text.split())


# --- 3. ties: a build is a pure function of its pins ------------------------------------------------------

def _tied(store, order=(1, 2, 3)):
    """Three feature rows for one entity at one event time, committed one after another, each computed later."""
    _one_trip(store.catalog)
    t = D - timedelta(minutes=5)
    for k, value in enumerate(order):
        append(store.catalog, AREA_1H.table,
               [_frow(AREA_1H, 8, t, value, computed_at=t + timedelta(seconds=10 * (k + 1)), source_id="e1")])


@pytest.mark.parametrize("order", [(1, 2, 3), (3, 1, 2), (2, 3, 1)])
def test_ties_take_the_latest_computed_at_in_every_rebuild(tmp_path, order):
    store = _store(tmp_path)
    _tied(store, order)
    built = build_training_set(store, TIPS)
    assert _only_row(store)["trips_count_1h"] == order[-1]
    pins = built["snapshot_ids"]
    answers = set()
    for i in range(20):
        build_training_set(store, TIPS, snapshot_ids=pins, name="tips_rebuild", slice_rows=1 + i % 3)
        answers.add(_only_row(store, "training.tips_rebuild")["trips_count_1h"])
    assert answers == {order[-1]}


def test_ties_on_computed_at_fall_to_the_greatest_source_id(tmp_path):
    store = _store(tmp_path)
    _one_trip(store.catalog)
    t = D - timedelta(minutes=5)
    for value, sid in [(5, "trip-b"), (4, "trip-c"), (6, "trip-a")]:
        append(store.catalog, AREA_1H.table, [_frow(AREA_1H, 8, t, value, computed_at=t, source_id=sid)])
    build_training_set(store, TIPS)
    assert _only_row(store)["trips_count_1h"] == 4


def test_parity_pairs_duplicates_by_the_tie_rule_and_counts_them(tmp_path):
    """A stream that replayed an event holds its row twice; parity compares the latest computed one with the
    backfill's, as the training set would use it, and counts the extra row."""
    store = _store(tmp_path)
    create(store.catalog, AREA_1H.table)
    create(store.catalog, backfill_table(AREA_1H).identifier)
    t = at(60)
    append(store.catalog, AREA_1H.table, [_frow(AREA_1H, 8, t, 9, computed_at=t, source_id="e1"),
                                          _frow(AREA_1H, 8, t, 2, computed_at=t + timedelta(seconds=5),
                                                source_id="e1")])
    append(store.catalog, backfill_table(AREA_1H).identifier, [_frow(AREA_1H, 8, t, 2, source_id="e1")])
    (got,) = parity(store, [AREA_1H])["views"]
    assert (got["compared"], got["mismatches"], got["stream_duplicates"], got["backfill_duplicates"]) == (1, 0, 1, 0)


# --- 4. evolved columns -----------------------------------------------------------------------------------

def _evolve(catalog, identifier="raw.trips", column="shared_trip") -> None:
    """What `liveml tables create` does when the declaration gains an optional column."""
    spec = unpartitioned(table_spec(identifier))
    fields = [*spec.schema.fields, NestedField(max(f.field_id for f in spec.schema.fields) + 1, column,
                                               StringType(), required=False)]
    from pyiceberg.schema import Schema

    ensure_table(catalog, TableSpec(spec.namespace, spec.name, Schema(*fields), spec.partition_spec,
                                    spec.description, spec.properties))


def test_an_evolved_column_reads_the_same_on_every_path(tmp_path):
    store = _store(tmp_path)
    create(store.catalog, "raw.trips")
    old = append(store.catalog, "raw.trips", [{"trip_id": "t1", "event_type": "end", "event_time": at(0)}])
    _evolve(store.catalog)
    expected_old = [{"trip_id": "t1", "shared_trip": None}]
    assert store.scan("raw.trips", columns=["trip_id", "shared_trip"]).to_pylist() == expected_old
    assert store.scan("raw.trips").column_names == store.sql("SELECT * FROM raw.trips").column_names
    assert store.scan("raw.trips").column_names[-1] == "shared_trip"
    assert store.scan("raw.trips", where="shared_trip is null", columns=["trip_id"]).num_rows == 1
    assert store.scan("raw.trips", where="shared_trip = 'yes'").num_rows == 0
    table = store.catalog.load_table("raw.trips")
    new_schema = schema_of(table)
    table.append(pa.Table.from_pylist([{"trip_id": "t2", "event_type": "end", "event_time": at(60),
                                        "shared_trip": "yes"}], schema=new_schema))
    both = sorted(store.scan("raw.trips", columns=["trip_id", "shared_trip"]).to_pylist(), key=lambda r: r["trip_id"])
    assert both == [*expected_old, {"trip_id": "t2", "shared_trip": "yes"}]
    sql = store.sql("SELECT trip_id, shared_trip FROM raw.trips ORDER BY 1").to_pylist()
    assert sql == both
    # the snapshot from before the column: the same columns, NULL in it
    assert store.scan("raw.trips", columns=["trip_id", "shared_trip"], snapshot_id=old).to_pylist() == expected_old
    assert store.sql("SELECT trip_id, shared_trip FROM raw.trips", {"raw.trips": old}).to_pylist() == expected_old
    assert store.scan("raw.trips", snapshot_id=old).column_names == store.scan("raw.trips").column_names


def schema_of(table):
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    return schema_to_pyarrow(table.schema())


def test_cli_query_and_sql_show_an_evolved_column(tmp_path):
    from tests.conftest import run_cli

    config, catalog = cli_catalog(tmp_path)
    create(catalog, "raw.trips")
    append(catalog, "raw.trips", [{"trip_id": "t1", "event_type": "end", "event_time": at(0)}])
    _evolve(catalog)
    got = run_cli(config, "query", "raw.trips", "--columns", "trip_id,shared_trip", "--json", check=False)
    assert got.returncode == 0 and "Traceback" not in got.stderr, got.stderr
    assert json.loads(got.stdout) == [{"trip_id": "t1", "shared_trip": None}]
    sql = run_cli(config, "sql", "SELECT trip_id, shared_trip FROM raw.trips", "--json")
    assert json.loads(sql.stdout) == json.loads(got.stdout)


# --- 5. one time parser ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["2015-03-02T08:05:00Z", "2015-03-02T08:05:00+00:00", "2015-03-02T09:05:00+01:00",
                                      "2015-03-02 08:05:00", "2015-03-02T08:05:00.000Z", "1425283500000"])
def test_every_spelling_of_a_time_is_the_same_instant(tmp_path, spelling):
    store = _store(tmp_path)
    create(store.catalog, "raw.trips")
    append(store.catalog, "raw.trips", [{"trip_id": f"t{i}", "event_type": "end", "event_time": at(60 * i)}
                                        for i in range(10)])  # 08:00 ... 08:09
    assert parse_time(spelling) == T0 + timedelta(minutes=5)
    assert store.scan("raw.trips", where=f"event_time < '{spelling}'").num_rows == 5
    assert store.scan("raw.trips", where=f"event_time >= '{spelling}' and trip_id != 't9'").num_rows == 4
    assert store.scan("raw.trips", where=f"not (event_time < '{spelling}')").num_rows == 5
    assert store.scan("raw.trips", where=f"event_time in ('{spelling}', '2015-03-02T08:00:00Z')").num_rows == 2


def test_a_date_is_its_midnight_utc_and_nonsense_names_the_spellings(tmp_path):
    assert parse_time("2015-03-02") == T0 - timedelta(hours=8)
    store = _store(tmp_path)
    create(store.catalog, "raw.trips")
    with pytest.raises(QueryError, match="ISO-8601 .*Z.*epoch milliseconds"):
        store.scan("raw.trips", where="event_time < 'yesterday'")
    with pytest.raises(QueryError, match="epoch milliseconds"):
        store.scan("raw.trips", as_of="last tuesday")


# a filter's literals mean what the column's type means, as in `liveml sql` (found by a user trial)
FILTERS = ["event_time < 1425283500000", "pickup_community_area = 8.5", "pickup_community_area < 8.5",
           "pickup_community_area > 8.5", "pickup_community_area != 8.5", "pickup_community_area in (8.5, 9.0)",
           "pickup_community_area not in (8.5, 7.5)", "trip_seconds < 600.5", "pickup_community_area = 8.0",
           "not (pickup_community_area = 8.5)", "trip_seconds >= 599.5 and event_time >= '2015-03-02'"]


@pytest.fixture
def ten_trips(tmp_path):
    store = _store(tmp_path)
    create(store.catalog, "raw.trips")
    append(store.catalog, "raw.trips", [{"trip_id": f"t{i}", "event_type": "end", "event_time": at(60 * i),
                                         "pickup_community_area": 7 + i % 3, "trip_seconds": 590 + 5 * i}
                                        for i in range(10)])
    return store


@pytest.mark.parametrize("where", FILTERS)
def test_a_filter_selects_what_sql_selects(ten_trips, where):
    """pyiceberg 0.6.1 truncated ``area = 8.5`` to ``area = 8`` and could not take epoch ms for a time."""
    sql = where.replace("!=", "<>").replace("1425283500000", "make_timestamptz(1425283500000000)")
    want = sorted(r["trip_id"] for r in ten_trips.sql(f"SELECT trip_id FROM raw.trips WHERE {sql}").to_pylist())
    got = sorted(ten_trips.scan("raw.trips", where=where, columns=["trip_id"]).column("trip_id").to_pylist())
    assert got == want


@pytest.mark.parametrize("where,column", [("fare > 'abc'", "fare (double)"), ("trip_id = 5", "trip_id (string)")])
def test_a_literal_the_column_cannot_take_is_one_line_naming_the_types(ten_trips, where, column):
    with pytest.raises(QueryError, match=r"does not fit raw.trips") as err:
        ten_trips.scan("raw.trips", where=where)
    assert column in str(err.value)


def test_parity_with_a_view_never_backfilled_compares_nothing_and_says_what_to_run(tmp_path):
    """"Over the event range both cover": a side without rows covers none (it used the other side's range and
    counted every stream row as a mismatch)."""
    store = _store(tmp_path)
    create(store.catalog, AREA_1H.table)
    create(store.catalog, backfill_table(AREA_1H).identifier)
    append(store.catalog, AREA_1H.table, [_frow(AREA_1H, 8, at(60), 1), _frow(AREA_1H, 9, at(120), 2)])
    result = parity(store, [AREA_1H])
    (got,) = result["views"]
    assert (result["compared"], result["mismatches"]) == (0, 0)
    assert "liveml backfill --views pickup_area_1h" in got["note"]
    # with --from/--to the range is the user's, and the stream's rows are mismatches
    pinned = parity(store, [AREA_1H], start="2015-03-02", end="2015-03-03")
    assert (pinned["compared"], pinned["views"][0]["stream_only"]) == (2, 2)


def test_build_pins_are_exclusive(tmp_path):
    from tests.conftest import run_cli

    config, catalog = cli_catalog(tmp_path)
    _one_trip(catalog)
    got = run_cli(config, "training-set", "build", "--snapshot", "1", "--from-lineage", "training.tips", check=False)
    assert got.returncode == 6 and "not --snapshot and --from-lineage" in got.stderr and "Traceback" not in got.stderr
