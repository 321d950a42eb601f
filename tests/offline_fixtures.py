"""A real pyiceberg SQL catalog in a temp dir, with the declared tables unpartitioned so pyiceberg can
append to them (pyiceberg 0.6.1 writes only unpartitioned tables; Flink writes the partitioned ones)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.io.pyarrow import schema_to_pyarrow

from iceberg_schemas.registry import ensure_table
from iceberg_schemas.tables import table_spec, unpartitioned

T0 = datetime(2015, 3, 2, 8, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def local_catalog(tmp: Path) -> Catalog:
    return load_catalog("t", type="sql", uri=f"sqlite:///{tmp}/c.db", warehouse=(tmp / "wh").as_uri())


def create(catalog: Catalog, identifier: str, namespace: str | None = None) -> str:
    spec = unpartitioned(table_spec(identifier), namespace)
    ensure_table(catalog, spec)
    return spec.identifier


def append(catalog: Catalog, identifier: str, rows: Iterable[dict[str, Any]]) -> int:
    table = catalog.load_table(identifier)
    schema = schema_to_pyarrow(table.schema())
    rows = list(rows)
    table.append(pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema))
    return catalog.load_table(identifier).current_snapshot().snapshot_id
