"""`liveml tables create` semantics on a real pyiceberg SQL catalog in a temp dir: create, no-op, evolve."""

import dataclasses

import pyarrow as pa
import pytest
from pyiceberg.catalog import load_catalog
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType

from iceberg_schemas.registry import SchemaConflict, ensure_table, ensure_tables
from iceberg_schemas.tables import PROOF_EVENTS, TABLES

pytestmark = pytest.mark.unit


@pytest.fixture
def catalog(tmp_path):
    return load_catalog("t", type="sql", uri=f"sqlite:///{tmp_path}/c.db", warehouse=(tmp_path / "wh").as_uri())


def test_create_all_then_nothing_changes(catalog):
    first = ensure_tables(catalog)
    assert {r.action for r in first} == {"created"}
    assert {".".join(i) for ns in catalog.list_namespaces() for i in catalog.list_tables(ns)} == {
        t.identifier for t in TABLES}
    second = ensure_tables(catalog)
    assert {r.action for r in second} == {"unchanged"}


def test_partition_spec_and_properties_are_applied(catalog):
    ensure_tables(catalog)
    table = catalog.load_table("raw.trips")
    assert [f.name for f in table.spec().fields] == ["event_time_month"]
    assert table.properties["write.parquet.compression-codec"] == "zstd"
    assert table.format_version == 2


def test_new_optional_column_is_an_evolution_that_keeps_rows_and_history(catalog):
    unpartitioned = dataclasses.replace(PROOF_EVENTS, namespace="ops", name="evolve_me",
                                        partition_spec=TABLES[0].partition_spec.__class__())
    ensure_table(catalog, unpartitioned)
    table = catalog.load_table("ops.evolve_me")
    table.append(pa.Table.from_pylist([{"id": 1, "name": "a", "value": 1.0, "event_time": None},
                                       {"id": 2, "name": "b", "value": 2.0, "event_time": None}],
                                      schema=schema_to_pyarrow(table.schema())))
    snap_before = table.current_snapshot().snapshot_id
    table_uuid = table.metadata.table_uuid

    evolved = dataclasses.replace(unpartitioned, schema=Schema(
        *unpartitioned.schema.fields, NestedField(field_id=5, name="source", field_type=StringType(),
                                                  required=False)))
    result = ensure_table(catalog, evolved)
    assert result.action == "evolved" and result.added_columns == ["source"]

    table = catalog.load_table("ops.evolve_me")
    assert table.metadata.table_uuid == table_uuid  # the same table, not a re-created one
    assert [f.name for f in table.schema().fields][-1] == "source"
    rows = table.scan().to_arrow().to_pylist()
    assert sorted(r["id"] for r in rows) == [1, 2] and all(r["source"] is None for r in rows)
    assert snap_before in [s.snapshot_id for s in table.metadata.snapshots]
    assert ensure_table(catalog, evolved).action == "unchanged"


def test_new_required_column_is_refused(catalog):
    ensure_table(catalog, PROOF_EVENTS)
    bad = dataclasses.replace(PROOF_EVENTS, schema=Schema(
        *PROOF_EVENTS.schema.fields, NestedField(field_id=9, name="must", field_type=LongType(), required=True)))
    with pytest.raises(SchemaConflict, match="required"):
        ensure_table(catalog, bad)


def test_type_change_is_refused(catalog):
    ensure_table(catalog, PROOF_EVENTS)
    fields = [NestedField(f.field_id, f.name, StringType() if f.name == "value" else f.field_type, f.required)
              for f in PROOF_EVENTS.schema.fields]
    with pytest.raises(SchemaConflict, match="value"):
        ensure_table(catalog, dataclasses.replace(PROOF_EVENTS, schema=Schema(*fields)))


def test_a_changed_property_is_applied_in_place(catalog):
    ensure_table(catalog, PROOF_EVENTS)
    uuid = catalog.load_table(PROOF_EVENTS.identifier).metadata.table_uuid
    changed = dataclasses.replace(PROOF_EVENTS, properties={"write.parquet.compression-codec": "snappy"})
    result = ensure_table(catalog, changed)
    assert result.action == "evolved" and result.changed_properties == ["write.parquet.compression-codec"]
    table = catalog.load_table(PROOF_EVENTS.identifier)
    assert table.properties["write.parquet.compression-codec"] == "snappy"
    assert table.metadata.table_uuid == uuid
    assert ensure_table(catalog, changed).action == "unchanged"
