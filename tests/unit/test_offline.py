"""The offline store on a real pyiceberg catalog: scans with filters, time travel, history, SQL and its errors."""

import time

import pytest

from liveml.offline import OfflineStore, QueryError, check_read_only, referenced_tables
from tests.offline_fixtures import append, at, create, local_catalog

pytestmark = pytest.mark.unit


def _trip(i: int, fare: float, company: str = "Flash Cab") -> dict:
    return {"trip_id": f"t{i}", "event_type": "end", "event_time": at(60 * i), "fare": fare, "company": company,
            "pickup_community_area": 8}


@pytest.fixture
def store(tmp_path):
    catalog = local_catalog(tmp_path)
    create(catalog, "raw.trips")
    return OfflineStore(catalog, tmp_path / "duck")


def test_scan_filters_columns_and_limit(store):
    append(store.catalog, "raw.trips", [_trip(i, fare=float(i)) for i in range(10)])
    got = store.scan("raw.trips", where="fare >= 7 and company = 'Flash Cab'", columns=["trip_id", "fare"])
    assert got.column_names == ["trip_id", "fare"]
    assert sorted(got.column("fare").to_pylist()) == [7.0, 8.0, 9.0]
    assert store.scan("raw.trips", limit=4).num_rows == 4
    # a timestamp literal in the filter
    assert store.scan("raw.trips", where=f"event_time < '{at(180).isoformat()}'").num_rows == 3


def test_time_travel_by_snapshot_and_by_time(store):
    first = append(store.catalog, "raw.trips", [_trip(i, 1.0) for i in range(5)])
    time.sleep(0.02)
    between = int(time.time() * 1000)
    time.sleep(0.02)
    second = append(store.catalog, "raw.trips", [_trip(i, 2.0) for i in range(5, 12)])
    assert store.scan("raw.trips", snapshot_id=first).num_rows == 5
    assert store.scan("raw.trips", snapshot_id=second).num_rows == 12
    assert store.scan("raw.trips", as_of=between).num_rows == 5
    assert store.scan("raw.trips").num_rows == 12
    hist = store.history("raw.trips")
    assert [h["snapshot_id"] for h in hist] == [first, second]
    assert [(h["added_rows"], h["total_rows"]) for h in hist] == [(5, 5), (7, 12)]
    assert [h["current"] for h in hist] == [False, True]
    # SQL at a pinned snapshot
    assert store.sql("SELECT count(*) AS n FROM raw.trips", {"raw.trips": first}).column("n").to_pylist() == [5]


def test_sql_over_tables_matches_pandas(store):
    rows = [_trip(i, fare=float(i % 7), company="ABC" if i % 3 else "XYZ") for i in range(40)]
    append(store.catalog, "raw.trips", rows[:25])
    append(store.catalog, "raw.trips", rows[25:])
    got = store.sql('SELECT company, avg(fare) AS fare, count(*) AS n FROM "raw".trips GROUP BY 1 ORDER BY 1')
    df = store.scan_pandas("raw.trips").groupby("company").agg(fare=("fare", "mean"), n=("fare", "size"))
    assert got.column("company").to_pylist() == list(df.index)
    assert got.column("fare").to_pylist() == pytest.approx(list(df["fare"]))
    assert got.column("n").to_pylist() == list(df["n"])


def test_empty_table_reads_as_empty_with_its_columns(store):
    assert store.scan("raw.trips").num_rows == 0
    assert store.sql("SELECT count(*) AS n FROM raw.trips").column("n").to_pylist() == [0]
    assert store.history("raw.trips") == []


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "raw.nope"}, "no table 'raw.nope'"),
    ({"name": "trips"}, "must be namespace.table"),
    ({"name": "raw.trips", "columns": ["fare", "tip"]}, "no column 'tip'"),
    ({"name": "raw.trips", "where": "fare >> 3"}, "malformed filter"),
    ({"name": "raw.trips", "where": "tip > 3"}, "does not fit raw.trips"),
    ({"name": "raw.trips", "snapshot_id": 42}, "has no snapshot 42"),
    ({"name": "raw.trips", "as_of": "2001-01-01"}, "had no snapshot at 2001-01-01"),
    ({"name": "raw.trips", "as_of": "yesterday"}, "is not a time the platform reads; use an ISO-8601 date"),
])
def test_bad_requests_are_clear_errors(store, kwargs, message):
    append(store.catalog, "raw.trips", [_trip(1, 1.0)])
    name = kwargs.pop("name")
    with pytest.raises(QueryError, match=message):
        store.scan(name, **kwargs)


@pytest.mark.parametrize("statement", [
    "INSERT INTO raw.trips (trip_id) VALUES ('x')", "DELETE FROM raw.trips", "DROP TABLE raw.trips",
    "CREATE TABLE x AS SELECT 1", "COPY raw.trips TO '/tmp/x.csv'", "SELECT 1; UPDATE raw.trips SET fare = 0",
    "ATTACH '/tmp/x.db'",
])
def test_sql_is_read_only(statement):
    with pytest.raises(QueryError, match="read-only"):
        check_read_only(statement)


def test_sql_errors_are_clear(store):
    with pytest.raises(QueryError, match="does not parse|Parser"):
        store.sql("SELEC 1")
    with pytest.raises(QueryError, match="tip"):
        store.sql("SELECT tip FROM raw.trips")


def test_table_names_are_found_quoted_or_not():
    known = ["raw.trips", "labels.trips", "features.pickup_area_1h"]
    assert referenced_tables('SELECT * FROM raw.trips r JOIN "labels"."trips" l USING (trip_id)', known) == [
        "raw.trips", "labels.trips"]
    assert referenced_tables("SELECT 'raw.tripsx' FROM features.pickup_area_1h", known) == [
        "features.pickup_area_1h"]
