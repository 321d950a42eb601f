"""Make the catalog match the declarations: create what is missing, evolve what changed, never drop.

Used by `liveml tables create`. Running it again is harmless; adding an optional column to a declaration
and running it again evolves the live table in place (its data and snapshots stay).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError

from iceberg_schemas.tables import TABLES, TableSpec


class SchemaConflict(Exception):
    """A declared change cannot be applied as an evolution (a new required column, a type change)."""


@dataclass
class EnsureResult:
    table: str
    action: str  # created | evolved | unchanged
    added_columns: list[str]
    changed_properties: list[str]


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(namespace)


def ensure_table(catalog: Catalog, spec: TableSpec) -> EnsureResult:
    ensure_namespace(catalog, spec.namespace)
    try:
        table = catalog.load_table(spec.identifier)
    except NoSuchTableError:
        catalog.create_table(spec.identifier, schema=spec.schema, partition_spec=spec.partition_spec,
                             properties=spec.all_properties())
        return EnsureResult(spec.identifier, "created", [], [])

    current = {f.name: f for f in table.schema().fields}
    added = []
    for declared in spec.schema.fields:
        existing = current.get(declared.name)
        if existing is None:
            if declared.required:
                raise SchemaConflict(f"{spec.identifier}: new column {declared.name!r} is required; "
                                     "an evolution can only add optional columns")
            added.append(declared.name)
        elif existing.field_type != declared.field_type:
            raise SchemaConflict(f"{spec.identifier}: column {declared.name!r} is {existing.field_type} in the "
                                 f"catalog but {declared.field_type} in the declaration")
    props = spec.all_properties()
    changed = sorted(k for k, v in props.items() if k != "format-version" and table.properties.get(k) != v)
    if not added and not changed:
        return EnsureResult(spec.identifier, "unchanged", [], [])
    with table.transaction() as tx:
        if added:
            with tx.update_schema() as update:
                update.union_by_name(spec.schema)
        if changed:
            tx.set_properties(**{k: props[k] for k in changed})
    return EnsureResult(spec.identifier, "evolved", added, changed)


def ensure_tables(catalog: Catalog, specs: Iterable[TableSpec] = TABLES) -> list[EnsureResult]:
    return [ensure_table(catalog, spec) for spec in specs]
