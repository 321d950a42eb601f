"""Opening the Iceberg catalog with pyiceberg's own ``load_catalog``, and describing its tables.

No look-alike wrapper: callers get a real ``pyiceberg`` catalog, configured from ``liveml config``.
"""

from __future__ import annotations

from typing import Any

from pyiceberg.catalog import Catalog, load_catalog

from liveml.config import LivemlConfig
from liveml.errors import ServiceError


def open_catalog(cfg: LivemlConfig) -> Catalog:
    try:
        return load_catalog(cfg.catalog.name, **cfg.catalog_properties())
    except Exception as exc:  # sqlalchemy raises driver-specific errors
        raise ServiceError(f"the Iceberg catalog at {cfg.catalog_properties()['uri']} cannot be opened "
                           f"({type(exc).__name__}: {exc}). Run `liveml up catalog`.") from None


def describe_tables(catalog: Catalog) -> list[dict[str, Any]]:
    rows = []
    for ns in catalog.list_namespaces():
        for ident in catalog.list_tables(ns):
            name = ".".join(ident)
            table = catalog.load_table(ident)
            snap = table.current_snapshot()
            total = None
            if snap is not None and snap.summary is not None:
                total = int(snap.summary.additional_properties.get("total-records", 0))
            rows.append({"name": name, "rows": total if snap is not None else 0,
                         "snapshot_id": snap.snapshot_id if snap else None,
                         "columns": len(table.schema().fields), "location": table.location()})
    return sorted(rows, key=lambda r: r["name"])
