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


def cli_catalog(tmp: Path) -> tuple[Path, Catalog]:
    """A config for the CLI (its own home, offline ports) and the catalog that config opens: for tests that
    write rows with pyiceberg and then run `liveml` over them."""
    from liveml.catalog import open_catalog
    from liveml.config import load_config
    from tests.conftest import OFFLINE_PORTS, write_test_config

    config = write_test_config(tmp / "home", OFFLINE_PORTS)
    cfg = load_config(config, env={})
    cfg.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.warehouse_path.mkdir(parents=True, exist_ok=True)
    return config, open_catalog(cfg)


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


def real_training_set(tmp: Path, n: int | None = None, shuffle_labels_seed: int | None = None, mutate=None):
    """A local catalog holding the real trips, their feature rows and ``training.tips``; returns
    ``(catalog, lineage)``. ``shuffle_labels_seed`` permutes the labels (a model that must not be blessed);
    ``mutate(trips_df) -> trips_df`` corrupts the real trips first (data the schema must reject)."""
    import numpy as np
    import pandas as pd

    from flink_jobs import replay as rp
    from iceberg_schemas.features import FEATURE_VIEWS, SPEC_VERSION
    from liveml.offline import OfflineStore
    from liveml.training_set import build_training_set
    from tests.reference import expected_view

    trips = rp.load_trips().sort_values("start_ms", kind="stable")
    if n:
        trips = trips.head(n)
    trips = trips.reset_index(drop=True)
    if mutate is not None:
        trips = mutate(trips.copy())
    raw, labels = rp.trip_tables(trips)
    if shuffle_labels_seed is not None:
        rng = np.random.default_rng(shuffle_labels_seed)
        labels["big_tipper"] = rng.permutation(labels["big_tipper"].to_numpy())
    catalog = local_catalog(tmp)

    def write(identifier: str, df: pd.DataFrame) -> None:
        create(catalog, identifier)
        table = catalog.load_table(identifier)
        schema = schema_to_pyarrow(table.schema())
        cols = {f.name: (df[f.name] if f.name in df else pd.Series([None] * len(df))) for f in schema}
        frame = pd.DataFrame(cols).astype(object).where(pd.DataFrame(cols).notna(), None)
        table.append(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))

    write("raw.trips", raw)
    write("labels.trips", labels)
    events = {"trips": raw.assign(event_time=raw["event_time"].astype("int64") // 10**6),
              "labels": labels.assign(label_time=labels["label_time"].astype("int64") // 10**6,
                                      big_tipper=labels["big_tipper"].astype(float))}
    for v in FEATURE_VIEWS:
        time_col = "label_time" if v.source == "labels" else "event_time"
        rows = expected_view(events[v.source], v, time_col)
        t = pd.to_datetime(np.asarray(rows["event_time_ms"], dtype="int64"), unit="ms", utc=True)
        rows = rows.assign(event_time=t, window_end=t, computed_at=t, spec_version=SPEC_VERSION)
        write(v.table, rows)
    store = OfflineStore(catalog, tmp / "duck")
    return catalog, build_training_set(store)
